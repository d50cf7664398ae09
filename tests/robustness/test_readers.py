"""The readers and writers under the commands, field by field, in process (fast): sidecars, metadata,
the last-export record, atomic writes and the one-line error text. ``test_faults`` runs the commands
around them end to end."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import onnx
import pytest

from idlevit.cli import _message, _one_line
from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write, refuse_overwriting_inputs, sha256_file
from idlevit.metadata import read_metadata
from idlevit.records import _describe
from idlevit.sidecar import EngineSidecar
from idlevit.state import last_export, record_last_export

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
    ],
    ids=["mean", "extra", "lengths", "missing", "crop"],
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
