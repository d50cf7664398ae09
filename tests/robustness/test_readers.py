"""The readers and writers under the commands, field by field, in process (fast): sidecars, metadata,
the last-export record, atomic writes and the one-line error text. ``test_faults`` runs the commands
around them end to end."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import stat
from dataclasses import asdict
from pathlib import Path

import onnx
import pytest

from idlevit.cli import _message, _one_line
from idlevit.configs import check_batch, check_geometry, get_arch
from idlevit.errors import EXIT_BAD_INPUT, ToolkitError
from idlevit.failures import known_failure
from idlevit.fileio import atomic_write, refuse_overwriting_inputs, sha256_file
from idlevit.metadata import external_data_files, load_onnx, read_metadata
from idlevit.recipe import DENSE_RECIPE, STUDENT_RECIPE, TrainConfig
from idlevit.records import _describe
from idlevit.sidecar import EngineSidecar
from idlevit.state import check_recorded_path, last_export, record_last_export, state_file
from validate.presets import PRESETS, check_threshold, preset, threshold_flag

from .harness import Assets


@pytest.fixture
def sidecar(assets: Assets) -> dict:
    """The fields export.trt writes for an engine built from the demo ONNX."""
    digest = sha256_file(assets.onnx)
    return dict(
        engine="e.engine",
        engine_sha256="0" * 64,
        runtime="tensorrt-rtx",
        runtime_version="1.7.1",
        gpu=None,
        compute_capabilities=["8.6"],
        precision_plan={"precision": "fp16", "fp32_nodes": ["a"]},
        profiles=[{"images": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}}],
        builder={"optimization_level": 3},
        plugins=[{"file": "libidlevit.so", "sha256": "1" * 64}],
        onnx=os.fspath(assets.onnx),
        onnx_sha256=digest,
        source_onnx=os.fspath(assets.onnx),
        source_onnx_sha256=digest,
        idlevit=asdict(read_metadata(assets.onnx)),
        format=1,
    )


def _read(tmp_path: Path, data: object) -> EngineSidecar:
    path = tmp_path / "e.engine.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return EngineSidecar.read(path)


def test_a_whole_sidecar_reads_back(tmp_path: Path, sidecar: dict) -> None:
    read = _read(tmp_path, sidecar | {"idlevit": sidecar["idlevit"] | {"from_a_newer_toolkit": 1}})
    assert read.precision_plan["precision"] == "fp16" and read.idlevit["arch"] == "deit_micro"
    assert "from_a_newer_toolkit" not in read.idlevit  # ExportMetadata(**sidecar.idlevit) holds


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runtime": 5}, "field runtime is 5, not text"),
        ({"plugins": [1]}, "field plugins is [1], not a list of objects"),
        ({"plugins": [{"sha256": "x"}]}, "a plugins entry has no 'file'"),
        ({"profiles": [{"images": {"min": [1, 3, 32, 32]}}]}, "has ['min'], not min, opt and max"),
        ({"profiles": [{"images": {"min": "x", "opt": [1], "max": [1]}}]}, "field profiles is"),
        ({"precision_plan": {}}, "precision_plan has no 'precision' text"),
        ({"gpu": {"name": 3}}, "field gpu is {'name': 3}, not an object or null"),
        ({"idlevit": "abc"}, "field idlevit is 'abc', not an object"),
        ({"idlevit": None}, "field idlevit is None, not an object"),
        ({"format": None}, "has format None, not 1"),
        ({"engine_sha256": "xyz"}, "field engine_sha256 is 'xyz', not a sha256"),
        ({"plugins": [{"file": "../lib.so"}]}, "plugin file '../lib.so' is not a plain file name"),
        ({"plugins": [{"file": "/abs/lib.so"}]}, "is not a plain file name"),
        (
            {"profiles": [{"images": {"min": [8, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [32, 3, 32, 32]}}]},
            "is not min <= opt <= max in every dim",
        ),
        (
            {"profiles": [{"images": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [10**30, 3, 32, 32]}}]},
            "a batch above 65536",
        ),
        (
            {"profiles": [{"images": {"min": [1, 3, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}}]},
            "different ranks",
        ),
    ],
    ids=[
        "runtime",
        "plugins",
        "plugin-file",
        "profile-keys",
        "profile-type",
        "precision",
        "gpu",
        "idlevit",
        "null",
        "format",
        "digest",
        "plugin-up",
        "plugin-absolute",
        "profile-order",
        "profile-huge",
        "profile-rank",
    ],
)
def test_sidecar_fields_are_named(tmp_path: Path, sidecar: dict, change: dict, message: str) -> None:
    with pytest.raises(ToolkitError, match="rebuild the engine") as info:
        _read(tmp_path, sidecar | change)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": "abc"}, "field idlevit: field mean is 'abc', not a list of finite numbers"),
        ({"keep_tokens": [44]}, "differ in length"),
        ({"std": [0.3, 0.0, 0.3]}, "data_config std is [0.3, 0.0, 0.3]"),
        ({"num_classes": 0}, "metadata field num_classes is 0, not >= 1"),
    ],
    ids=["mean", "lengths", "std", "classes"],
)
def test_the_sidecar_metadata_is_checked_whole(tmp_path: Path, sidecar: dict, change: dict, message: str) -> None:
    with pytest.raises(ToolkitError) as info:
        _read(tmp_path, sidecar | {"idlevit": sidecar["idlevit"] | change})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"), [(b"\xff\xfe\x00\x01", "is not JSON"), (b"null", "is null, not an object")]
)
def test_unreadable_sidecars(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "e.engine.json"
    path.write_bytes(content)
    with pytest.raises(ToolkitError, match=message):
        EngineSidecar.read(path)


def test_built_from_names_both_files_and_their_digests(tmp_path: Path, sidecar: dict, assets: Assets) -> None:
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another graph")
    read = _read(tmp_path, sidecar)
    read.check_built_from(assets.onnx)  # the graph it was built from: fine
    with pytest.raises(ToolkitError) as info:
        read.check_built_from(other)
    text = str(info.value)
    assert (
        f"(sha256 {sha256_file(assets.onnx)[:12]}...), not from {other} (sha256 {sha256_file(other)[:12]}...)" in text
    )


def _edited_onnx(tmp_path: Path, assets: Assets, **fields: str | None) -> Path:
    model = onnx.load(assets.onnx, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in fields.items():
        if value is None:
            props.pop("idlevit." + key)
        else:
            props["idlevit." + key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mean": '"abc"'}, "field mean is 'abc', not a list of finite numbers"),
        ({"extra": "[1]"}, "field extra is [1], not an object"),
        ({"keep_tokens": "[44]"}, "differ in length"),
        ({"num_classes": None}, "lacks the field(s) num_classes"),
        ({"crop_pct": "0"}, "crop_pct is 0, not a number in (0, 1]"),
        ({"keep_tokens": "[45, 45, 45, 31, 31, 31, 22, 22, 22]"}, "are not int(num_tokens x ratio)"),
        ({"num_tokens": "63"}, "num_tokens 63 is not a square grid"),
        ({"idle_layers": "[3, 4, 5, 6, 7, 8, 9, 11, 10]"}, "are not increasing block indices"),
        ({"batch": "1000000000"}, "field batch is 1000000000, not in 0..65536"),
        ({"img_size": "400000"}, "img_size is 400000, above 4096"),
    ],
    ids=["mean", "extra", "lengths", "missing", "crop", "rounded-k", "grid", "layers", "batch", "size"],
)
def test_metadata_fields_are_named(tmp_path: Path, assets: Assets, fields: dict, message: str) -> None:
    with pytest.raises(ToolkitError) as info:
        read_metadata(_edited_onnx(tmp_path, assets, **fields))
    assert message in str(info.value)


def test_type_names_read_as_english() -> None:
    assert _describe(list[float]) == "a list of finite numbers"
    assert _describe(list[dict[str, str]]) == "a list of objects"
    assert _describe(dict[str, str] | None) == "an object or null"


def test_an_unwritable_state_folder_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").write_text("a file where the folder should be")
    monkeypatch.setenv("IDLEVIT_STATE_DIR", str(tmp_path / "state"))
    assert record_last_export(tmp_path / "m.onnx") is False
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "could not be recorded" in lines[0]


@pytest.mark.parametrize("content", ["[1, 2]", '{"onnx": 5}', "{", '{"other": "x"}'])
def test_a_corrupt_last_export_record_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    (tmp_path / "last_export.json").write_text(content)
    monkeypatch.setenv("IDLEVIT_STATE_DIR", str(tmp_path))
    with pytest.raises(ToolkitError, match="last-export record .* is corrupt"):
        last_export()


def test_no_last_export_record_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDLEVIT_STATE_DIR", str(tmp_path / "none"))
    assert last_export() is None


def test_a_device_is_written_in_place_never_replaced(tmp_path: Path) -> None:
    """``--report /dev/stdout`` and the like: a rename would replace the device node (as root, for everyone).
    Links to the devices stand in for them here, so that a regression replaces only a link in tmp_path."""
    (tmp_path / "null").symlink_to("/dev/null")
    (tmp_path / "full").symlink_to("/dev/full")
    with atomic_write(tmp_path / "null", "w") as handle:
        handle.write("discarded\n")
    assert (tmp_path / "null").is_symlink() and stat.S_ISCHR(os.stat(tmp_path / "null").st_mode)
    with pytest.raises(ToolkitError, match="No space left on device"), atomic_write(tmp_path / "full", "w") as handle:
        handle.write("x" * 100_000)
    assert (tmp_path / "full").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["full", "null"]


def test_a_failed_write_removes_its_temporary_file_and_the_folders_it_made(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    with pytest.raises(ToolkitError, match="cannot write"), atomic_write(target, "w") as handle:
        handle.write("partial")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "w") as handle:
        handle.write("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_checked_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "in.onnx").write_bytes(b"graph")
    (tmp_path / "out").mkdir()
    with pytest.raises(ToolkitError, match="is a folder"):
        refuse_overwriting_inputs([tmp_path / "out"], [tmp_path / "in.onnx"])
    os.link(tmp_path / "in.onnx", tmp_path / "hard.json")
    with pytest.raises(ToolkitError, match="is the input"):
        refuse_overwriting_inputs([tmp_path / "hard.json"], [tmp_path / "in.onnx"])
    refuse_overwriting_inputs([tmp_path / "new.json", None], [tmp_path / "in.onnx", None])


def test_error_lines_stay_short_and_keep_the_fix() -> None:
    line = _one_line("idle layers [" + ", ".join(map(str, range(100_000))) + "] are bad; use 3..11")
    assert len(line) <= 600 and line.endswith("are bad; use 3..11") and "[...]" in line


def test_an_error_from_a_worker_process_is_its_own_message() -> None:
    wrapped = ToolkitError(
        "Caught ToolkitError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in f\nidlevit.errors.ToolkitError: cannot read image 'a.png' (OSError: truncated)"
    )
    assert _message(wrapped) == "cannot read image 'a.png' (OSError: truncated)"
    assert _message(ToolkitError("plain")) == "plain"


# ---- issue 21: known failures of the libraries, thresholds, geometry, records, external data ----------------


class _OrtInvalidGraph(Exception):
    """Stands in for ONNX Runtime's pybind exception class of that name (recognised by module and name)."""


_OrtInvalidGraph.__module__ = "onnxruntime.capi.onnxruntime_pybind11_state"
_OrtInvalidGraph.__name__ = _OrtInvalidGraph.__qualname__ = "InvalidGraph"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (MemoryError(), "not enough memory"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"), "memory"),
        (ValueError("array is too big; `arr.size * arr.dtype.itemsize` is larger than the maximum"), "memory"),
        (OSError(errno.EFBIG, "File too large", "/tmp/x"), "File too large; raise the file-size limit"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device; free some space"),
        (FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp']"), "set TMPDIR"),
        (_OrtInvalidGraph("[ONNXRuntimeError] : 10 : INVALID_GRAPH"), "ONNX Runtime cannot run the graph"),
    ],
    ids=["memory", "torch-alloc", "numpy-alloc", "file-size", "disk-full", "no-tmp", "onnxruntime"],
)
def test_known_failures_become_one_line_with_a_fix(error: BaseException, says: str) -> None:
    found = known_failure(error)
    assert found is not None and says in str(found) and found.exit_code == EXIT_BAD_INPUT
    wrapped = RuntimeError("while running the backend")
    wrapped.__cause__ = error
    assert str(known_failure(wrapped)) == str(found)  # found through the chain too


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), KeyError("x"), FileNotFoundError(errno.ENOENT, "No such file"), ValueError("1")]
)
def test_other_exceptions_stay_internal_errors(error: BaseException) -> None:
    assert known_failure(error) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("atol", float("nan")),
        ("atol", -1.0),
        ("rtol", float("inf")),
        ("min_top1", 2.0),
        ("min_cosine", 1.5),
        ("max_mismatch", -0.1),
        ("tie_rtol", 1.0),
    ],
)
def test_a_threshold_outside_its_range_is_refused(name: str, value: float) -> None:
    with pytest.raises(ToolkitError, match=f"--{name.replace('_', '-')} "):
        check_threshold(name, value)
    with pytest.raises(ToolkitError):
        preset("fp32").with_overrides(**{name: value})
    with pytest.raises(argparse.ArgumentTypeError):
        threshold_flag(name)(repr(value))


@pytest.mark.parametrize(("name", "value"), [("atol", 0.0), ("min_top1", 1.0), ("min_cosine", -1.0), ("tie_rtol", 0.5)])
def test_a_threshold_at_the_edge_of_its_range_holds(name: str, value: float) -> None:
    assert check_threshold(name, value) == value and threshold_flag(name)(str(value)) == value


def test_every_preset_is_inside_the_ranges() -> None:
    for thresholds in PRESETS.values():
        assert thresholds.with_overrides() == thresholds


@pytest.mark.parametrize(
    ("img_size", "patch_size", "message"),
    [
        (
            30,
            16,
            "image size 30 px is not a multiple of the patch size 16 px (the patches would not cover the image); "
            "use 16 or 32",
        ),
        (
            8,
            16,
            "image size 8 px is not a multiple of the patch size 16 px (the patches would not cover the image); use 16",
        ),
        (0, 16, "image size 0 is not a size in pixels from 1 to 4096"),
        (400_000, 16, "image size 400000 is not a size in pixels"),
        (32, 0, "patch size 0 is not a size in pixels"),
    ],
)
def test_image_geometry_is_whole_patches(img_size: int, patch_size: int, message: str) -> None:
    with pytest.raises(ToolkitError) as info:
        check_geometry(img_size, patch_size, "arch x")
    assert message in str(info.value)
    with pytest.raises(ToolkitError, match="size"):
        get_arch("deit_micro").with_overrides(img_size=img_size, patch_size=patch_size)


def test_whole_patches_hold() -> None:
    check_geometry(224, 16, "arch x")
    assert get_arch("deit_micro").with_overrides(img_size=32, patch_size=4).num_tokens == 64


@pytest.mark.parametrize("value", [0, -1, 65537, 10**30, True, 1.5])
def test_a_batch_outside_its_range_is_refused(value: object) -> None:
    with pytest.raises(ToolkitError, match="is not a batch size from 1 to 65536"):
        check_batch("--batch", value)  # type: ignore[arg-type]


def test_an_empty_state_dir_is_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDLEVIT_STATE_DIR", "")
    assert state_file() == Path(".idlevit") / "last_export.json"


def test_a_record_too_large_to_be_ours_is_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "last_export.json").write_text(json.dumps({"onnx": "a" * 100_000}))
    monkeypatch.setenv("IDLEVIT_STATE_DIR", str(tmp_path))
    with pytest.raises(ToolkitError, match="is corrupt"):
        last_export()


@pytest.mark.parametrize("recorded", ["a" * 5000, "m\0.onnx", "", 5])
def test_a_recorded_path_no_system_can_open_is_refused(recorded: object) -> None:
    with pytest.raises(ToolkitError, match="is corrupt"):
        check_recorded_path(recorded)


def test_a_recorded_name_too_long_for_the_file_system_is_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "last_export.json").write_text(json.dumps({"onnx": "a" * 1000 + ".onnx"}))  # NAME_MAX is 255
    monkeypatch.setenv("IDLEVIT_STATE_DIR", str(tmp_path))
    assert last_export() is None


def _external(tmp_path: Path, assets: Assets, location: str | None = None) -> Path:
    model = onnx.load(assets.onnx)
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    if location is not None:
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, path)
    return path


def test_external_data_beside_the_graph_is_found_and_loaded(tmp_path: Path, assets: Assets) -> None:
    path = _external(tmp_path, assets)
    model = load_onnx(path, load_external_data=False)
    assert external_data_files(model, path) == [tmp_path / "m.onnx.data"]
    whole = load_onnx(path)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in whole.graph.initializer)
    assert read_metadata(path).arch == "deit_micro"


@pytest.mark.parametrize(
    ("location", "change", "message"),
    [
        ("../m.onnx.data", None, "which is not a file inside the model's folder"),
        ("/etc/passwd", None, "which is not a file inside the model's folder"),
        (None, "remove", "which is not beside it"),
        (None, "truncate", "is truncated or belongs to another export"),
    ],
    ids=["escapes", "absolute", "missing", "truncated"],
)
def test_bad_external_data_is_named(tmp_path: Path, assets: Assets, location, change, message: str) -> None:
    path = _external(tmp_path, assets, location)
    data = tmp_path / "m.onnx.data"
    if change == "remove":
        data.unlink()
    elif change == "truncate":
        os.truncate(data, 100)
    for read in (read_metadata, load_onnx):
        with pytest.raises(ToolkitError, match=re.escape(message)):
            read(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"img_size": "64"}, "images has shape (batch, 3, 32, 32), but the metadata (img_size 64"),
        ({"num_classes": "9"}, "logits has shape (batch, 10), but the metadata (img_size 32, num_classes 9"),
        ({"batch": "4"}, None),  # a symbolic batch in the graph is not a contradiction the graph can show
    ],
    ids=["img-size", "classes", "batch"],
)
def test_metadata_that_the_graph_contradicts_is_named(tmp_path: Path, assets: Assets, fields, message) -> None:
    path = _edited_onnx(tmp_path, assets, **fields)
    if message is None:
        read_metadata(path)
        return
    with pytest.raises(ToolkitError) as info:
        read_metadata(path)
    assert "does not match its idlevit.* metadata" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "--epochs 0 is not an integer"),
        ({"lr": float("nan")}, "--lr nan is not a finite number > 0"),
        ({"lr": 0.0}, "--lr 0.0 is not a finite number > 0"),
        ({"batch_size": 0}, "--batch-size 0"),
        ({"weight_decay": -1.0}, "--weight-decay -1.0"),
        ({"seed": -1}, "--seed -1"),
        ({"cut_loss": "all"}, "--cut-loss 'all' is not one of both, intra, inter, none"),
        ({"min_lr": 1.0}, "training setting min_lr 1.0 is not a finite number >= 0 and <= 0.001"),
        ({"ema_decay": 1.0}, "training setting ema_decay"),
        ({"clip_grad": float("inf")}, "training setting clip_grad"),
    ],
)
def test_training_settings_are_checked_whoever_makes_them(change: dict, message: str) -> None:
    with pytest.raises(ToolkitError) as info:
        TrainConfig(**{**{"lr": 1e-3}, **change})
    assert message in str(info.value)


def test_the_recipes_hold() -> None:
    assert DENSE_RECIPE.epochs >= 1 and STUDENT_RECIPE.lr > 0
