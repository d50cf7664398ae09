"""engines.package on disk: packages never eat edits, never escape their folder, never overwrite an input,
and every failure is one line with the documented exit code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.sidecar import sidecar_path

from .deploy_support import fake_engine, one_line_error, run

MANIFEST = ".idlevit-package.json"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model(tiny_onnx: Path, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, path)
    return path


@pytest.fixture
def package(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "deploy"
    code, _, err = run(["--onnx", str(model), "--out", str(out)], capsys)
    assert code == 0, err
    return out


# ---- overwriting ------------------------------------------------------------------------------------
def test_a_non_empty_folder_is_refused_without_force(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    code, _, err = run(["--onnx", str(model), "--out", str(out)], capsys)
    assert code == 2 and "--force" in one_line_error(err)
    assert snapshot(out) == {"notes.txt": b"my notes\n"}


def test_a_second_run_without_force_changes_nothing(package: Path, model: Path, capsys) -> None:
    before = snapshot(package)
    code, _, err = run(["--onnx", str(model), "--out", str(package)], capsys)
    assert code == 2 and "not empty" in one_line_error(err)
    assert snapshot(package) == before


def test_force_replaces_only_unedited_files_of_the_earlier_package(package: Path, model: Path, capsys) -> None:
    config = package / "triton" / "tiny" / "config.pbtxt"
    edited = config.read_text().replace("count: 1", "count: 2")
    config.write_text(edited)
    (package / "notes.txt").write_text("mine\n")  # foreign, and not a file the package writes
    stale_guide = (package / "DEPLOY.md").read_text()
    code, out, _ = run(["--onnx", str(model), "--out", str(package), "--force", "--max-batch", "4"], capsys)
    assert code == 0
    assert config.read_text() == edited  # the edit survives
    assert (package / "notes.txt").read_text() == "mine\n"
    assert (package / "DEPLOY.md").read_text() != stale_guide  # unedited: replaced (max batch 4 now)
    assert "kept      triton/tiny/config.pbtxt (edited since engines.package wrote it" in out
    assert "replaced  DEPLOY.md" in out and "notes.txt" not in out
    manifest = json.loads((package / MANIFEST).read_text())["files"]
    assert "triton/tiny/config.pbtxt" not in manifest  # the user's now: kept on every later run too
    code, out, _ = run(["--onnx", str(model), "--out", str(package), "--force"], capsys)
    assert code == 0 and config.read_text() == edited
    assert "kept      triton/tiny/config.pbtxt (not written by engines.package" in out


def test_force_keeps_a_foreign_file_where_the_package_would_write(package: Path, model: Path, capsys) -> None:
    labels = package / "deepstream" / "labels.txt"
    manifest = json.loads((package / MANIFEST).read_text())
    del manifest["files"]["deepstream/labels.txt"]  # as if the user had put it there
    (package / MANIFEST).write_text(json.dumps(manifest))
    labels.write_text("cat;dog\n")
    code, stdout, _ = run(["--onnx", str(model), "--out", str(package), "--force"], capsys)
    assert code == 0 and labels.read_text() == "cat;dog\n"
    assert "kept      deepstream/labels.txt (not written by engines.package" in stdout
    assert (package / "triton" / "tiny" / "config.pbtxt").is_file()


def test_force_never_writes_into_a_folder_that_holds_no_package(model: Path, tmp_path: Path, capsys) -> None:
    """A package is replaced whole (built beside, renamed into place): a folder of something else, such as a
    home or a shared temporary folder, is refused even with --force, and left as it was."""
    out = tmp_path / "mine"
    (out / "deepstream").mkdir(parents=True)
    (out / "deepstream" / "labels.txt").write_text("cat;dog\n")
    inode = out.stat().st_ino
    code, _, err = run(["--onnx", str(model), "--out", str(out), "--force"], capsys)
    assert code == 2 and "holds no package" in one_line_error(err)
    assert snapshot(out) == {"deepstream/labels.txt": b"cat;dog\n"} and out.stat().st_ino == inode
    # the folder of the input itself
    code, _, err = run(["--onnx", str(model), "--out", str(tmp_path), "--force"], capsys)
    assert code == 2 and "holds no package" in one_line_error(err)


def test_force_removes_what_the_earlier_package_no_longer_has(package: Path, model: Path, capsys) -> None:
    old_entry = package / "triton" / "tiny"
    (old_entry / "labels.txt").write_text("edited\n")
    code, out, _ = run(["--onnx", str(model), "--out", str(package), "--force", "--name", "renamed"], capsys)
    assert code == 0
    assert (package / "triton" / "renamed" / "config.pbtxt").is_file()
    assert not (old_entry / "config.pbtxt").exists() and not (old_entry / "1").exists()
    assert (old_entry / "labels.txt").read_text() == "edited\n"  # edited: kept
    assert "removed   triton/tiny/config.pbtxt" in out and "kept      triton/tiny/labels.txt" in out


def _fail_at_the_third_file(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[str]:
    """Make the package's third file fail to write with ``error``; returns the files written before it."""
    from engines.deploy import writer

    real_write, written = writer._write_into, []

    def write_then_fail(staging: Path, item, shown: Path) -> None:
        if len(written) == 2:
            raise error
        real_write(staging, item, shown)
        written.append(item.path)

    monkeypatch.setattr(writer, "_write_into", write_then_fail)
    return written


def test_an_interrupted_first_run_leaves_nothing(model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    written = _fail_at_the_third_file(monkeypatch, KeyboardInterrupt())
    out = tmp_path / "new" / "deploy"
    code, _, err = run(["--onnx", str(model), "--out", str(out)], capsys)
    assert code == 130 and len(written) == 2 and one_line_error(err) == "error: interrupted (Ctrl-C)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no package, no hidden folder, no parent


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), ToolkitError("cannot write x: No space left on device")], ids=["ctrl-c", "disk-full"]
)
def test_an_interrupted_or_failed_forced_run_leaves_the_earlier_package(
    package: Path, model: Path, monkeypatch, capsys, error: BaseException
) -> None:
    (package / "notes.txt").write_text("mine\n")
    before = snapshot(package)
    beside = sorted(p.name for p in package.parent.iterdir())
    _fail_at_the_third_file(monkeypatch, error)
    code, _, err = run(["--onnx", str(model), "--out", str(package), "--force", "--max-batch", "4"], capsys)
    assert code == (130 if isinstance(error, KeyboardInterrupt) else 2) and one_line_error(err)
    assert snapshot(package) == before and sorted(p.name for p in package.parent.iterdir()) == beside


def test_a_forced_run_replaces_the_folder_whole(package: Path, model: Path, capsys) -> None:
    """What a forced run leaves: the new files, the user's files (the same inodes: linked, not copied), the
    user's links as links, and nothing beside the folder."""
    (package / "notes.txt").write_text("mine\n")
    (package / "mine").mkdir()
    (package / "link.txt").symlink_to("notes.txt")
    inode = (package / "notes.txt").stat().st_ino
    beside = sorted(p.name for p in package.parent.iterdir())
    code, out, _ = run(["--onnx", str(model), "--out", str(package), "--force", "--max-batch", "4"], capsys)
    assert code == 0, out
    assert (package / "notes.txt").stat().st_ino == inode and (package / "mine").is_dir()
    assert (package / "link.txt").is_symlink() and os.readlink(package / "link.txt") == "notes.txt"
    assert "max_batch_size: 4" in (package / "triton" / "tiny" / "config.pbtxt").read_text()
    assert sorted(p.name for p in package.parent.iterdir()) == beside


def test_removing_stale_files_never_follows_a_link_out(package: Path, model: Path, tmp_path: Path, capsys) -> None:
    """The earlier manifest names ``old/victim.txt`` and ``old`` is now a link to a folder outside: the file
    outside is not the package's (it is reached through a link), so it stays, and so does the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep me\n")
    (package / "old").symlink_to(outside, target_is_directory=True)
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["files"]["old/victim.txt"] = sha256_file(outside / "victim.txt")
    (package / MANIFEST).write_text(json.dumps(manifest))
    code, out, _ = run(["--onnx", str(model), "--out", str(package), "--force"], capsys)
    assert code == 0 and (outside / "victim.txt").read_text() == "keep me\n"
    assert (package / "old").is_symlink() and "kept      old/victim.txt" in out


def test_an_input_the_earlier_package_wrote_is_not_removed(package: Path, model: Path, capsys) -> None:
    """Packaging the earlier package's own ONNX into it under another name would drop (remove) the input."""
    inside = package / "triton" / "tiny" / "1" / "model.onnx"
    before = snapshot(package)
    code, _, err = run(["--onnx", str(inside), "--out", str(package), "--force", "--name", "other"], capsys)
    assert code == 2 and "is an input of this run" in one_line_error(err)
    assert snapshot(package) == before


def test_a_linked_folder_does_not_lead_writes_outside(package: Path, model: Path, tmp_path: Path, capsys) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(package / "triton")
    (package / "triton").symlink_to(outside, target_is_directory=True)
    code, stdout, _ = run(["--onnx", str(model), "--out", str(package), "--force"], capsys)
    assert code == 0 and list(outside.iterdir()) == []
    assert "kept      triton/tiny/config.pbtxt (not written by engines.package" in stdout
    assert (package / "triton").is_symlink() and (package / "deepstream" / "config_infer_idlevit.txt").is_file()


def test_a_manifest_cannot_point_outside_the_package(package: Path, model: Path, tmp_path: Path, capsys) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["files"]["../victim.txt"] = manifest["files"]["DEPLOY.md"]
    (package / MANIFEST).write_text(json.dumps(manifest))
    code, _, err = run(["--onnx", str(model), "--out", str(package), "--force"], capsys)
    assert code == 2 and "manifest" in one_line_error(err)
    assert victim.read_text() == "keep me\n"


def test_a_corrupt_manifest_is_one_line(package: Path, model: Path, capsys) -> None:
    (package / MANIFEST).write_text("{not json")
    code, _, err = run(["--onnx", str(model), "--out", str(package), "--force"], capsys)
    assert code == 2 and "manifest" in one_line_error(err)


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", "a\\b", "", "tiny model"])
def test_name_is_a_plain_name(name: str, model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "deep" / "er" / "deploy"
    code, _, err = run(["--onnx", str(model), "--out", str(out), "--name", name], capsys)
    assert code == 2 and "--name" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # nothing written anywhere


def test_a_dotted_name_is_fine(model: Path, tmp_path: Path, capsys) -> None:
    code, _, _ = run(["--onnx", str(model), "--out", str(tmp_path / "d"), "--name", "idlevit_deit-s.r0.7"], capsys)
    assert code == 0 and (tmp_path / "d" / "triton" / "idlevit_deit-s.r0.7" / "config.pbtxt").is_file()


def test_no_input_is_overwritten(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    onnx_path = folder / "tiny.onnx"
    shutil.copy(tiny_onnx, onnx_path)
    engine = fake_engine(folder, onnx_path, "fp16")
    before = snapshot(folder)
    # the engine's package would copy tiny.onnx to <out>/tiny.onnx: here that is the input itself
    code, _, err = run(["--engine", str(engine), "--out", str(folder), "--force"], capsys)
    assert code == 2 and "inputs are never overwritten" in one_line_error(err)
    assert snapshot(folder) == before


# ---- failures: one line, exit 2 -----------------------------------------------------------------------
def _sidecar_edit(engine: Path, edit) -> None:
    path = sidecar_path(engine)
    data = json.loads(path.read_text())
    path.write_text(edit(data) if callable(edit) else edit)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("{truncated", "not JSON"),
        ("[1, 2]", "is a list, not an object"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "profiles"}), "lacks the field(s) profiles"),
        (lambda d: json.dumps({**d, "runtime_version": 10}), "field runtime_version"),
        (lambda d: json.dumps({**d, "idlevit": {**d["idlevit"], "img_size": "big"}}), "field img_size"),
        (lambda d: json.dumps({**d, "idlevit": {"arch": "deit_tiny"}}), "lacks the field(s)"),
        (lambda d: json.dumps({**d, "profiles": [{"images": {"min": [1]}}]}), "not min, opt and max"),
        (lambda d: json.dumps({**d, "precision_plan": {}}), "precision_plan has no 'precision'"),
        (lambda d: json.dumps({**d, "runtime": "openvino"}), "runtime 'openvino'"),
        (lambda d: json.dumps({**d, "format": 99}), "format 99"),
        (lambda d: json.dumps({**d, "engine_sha256": "0" * 64}), "sidecar belongs to another build"),
        (lambda d: json.dumps({**d, "source_onnx_sha256": "0" * 64}), "is not the graph tiny_fp16.engine was built"),
    ],
    ids=[
        "truncated",
        "list",
        "missing-field",
        "mistyped",
        "mistyped-meta",
        "missing-meta",
        "profile",
        "precision",
        "runtime",
        "format",
        "engine-sha",
        "onnx-sha",
    ],
)
def test_a_broken_sidecar_is_one_line(edit, expected: str, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "fp16")
    _sidecar_edit(engine, edit)
    code, _, err = run(["--engine", str(engine), "--out", str(tmp_path / "deploy")], capsys)
    assert code == 2 and expected in one_line_error(err)
    assert not (tmp_path / "deploy").exists()


def test_an_engine_without_its_sidecar_is_one_line(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "fp16")
    sidecar_path(engine).unlink()
    code, _, err = run(["--engine", str(engine), "--out", str(tmp_path / "deploy")], capsys)
    assert code == 2 and "sidecar" in one_line_error(err)


def test_missing_foreign_and_wrong_models_are_one_line(tmp_path: Path, capsys) -> None:
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(foreign))
    (tmp_path / "model.pth").write_bytes(b"PK")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "notes.md").write_text("hi")
    cases = {
        "missing.onnx": "does not exist",
        "foreign.onnx": "no IdleViT metadata",
        "junk.onnx": "not an ONNX model",
        "model.pth": "export it first",
        "notes.md": "neither an exported .onnx nor an engine",
        ".": "is a folder",
    }
    for name, expected in cases.items():
        code, _, err = run(["--onnx", str(tmp_path / name), "--out", str(tmp_path / "deploy")], capsys)
        assert code == 2 and expected in one_line_error(err), (name, err)
    assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read --labels"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"\n  \n", "holds no class names"),
        (b"a\nb\n", "2 names but the model has 10"),
        ("".join(f"n{i};x\n" for i in range(10)).encode(), "contains ';'"),
        ("folder", "is a folder"),
    ],
    ids=["missing", "binary", "empty", "count", "semicolon", "folder"],
)
def test_a_bad_labels_file_is_one_line(content, expected: str, model: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.txt"
    if content == "folder":
        labels.mkdir()
    elif content is not None:
        labels.write_bytes(content)
    code, _, err = run(["--onnx", str(model), "--out", str(tmp_path / "deploy"), "--labels", str(labels)], capsys)
    assert code == 2 and expected in one_line_error(err)
    assert not (tmp_path / "deploy").exists()


def test_an_unwritable_folder_is_one_line(model: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run(["--onnx", str(model), "--out", str(blocker / "deploy")], capsys)
    assert code == 2 and "writable" in one_line_error(err)
    code, _, err = run(["--onnx", str(model), "--out", str(blocker)], capsys)
    assert code == 2 and "is a file" in one_line_error(err)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max-batch", "0"], "--max-batch 0 must be >= 1"),
        (["--ds-batch-size", "0"], "--ds-batch-size 0 must be >= 1"),
        (["--ds-batch-size", "64"], "exceeds the model's largest batch 32"),
        (["--plugin-lib", "x.so"], "--plugin-lib is for graphs"),
        (["--precision", "int4"], "invalid choice"),
        (["--model", "x.onnx"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_one_line(flags: list[str], expected: str, model: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(["--onnx", str(model), "--out", str(tmp_path / "deploy"), *flags], capsys)
    assert code == 2 and expected in one_line_error(err)
    assert not (tmp_path / "deploy").exists()


def test_an_engine_keeps_its_precision(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "fp16")
    code, _, err = run(["--engine", str(engine), "--out", str(tmp_path / "d"), "--precision", "fp32"], capsys)
    assert code == 2 and "is a fp16 engine" in one_line_error(err)
    code, _, err = run(["--engine", str(engine), "--out", str(tmp_path / "d"), "--ds-batch-size", "9"], capsys)
    assert code == 2 and "largest batch 8" in one_line_error(err)
