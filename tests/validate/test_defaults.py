"""Parity and accuracy need no flags after an export: the last export, and the checkpoint it records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from export.exporter import export_checkpoint
from idlevit.errors import CheckpointError, ToolkitError
from idlevit.metadata import read_metadata
from idlevit.state import record_last_export
from validate import accuracy, parity
from validate.sources import recorded_checkpoint


@pytest.fixture
def exported_here(digits_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A copy of the checkpoint, exported with indices in a folder that records it as the last export."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IDLEVIT_STATE_DIR", raising=False)
    ckpt = Path(shutil.copy(digits_ckpt, tmp_path / "mine.pth"))
    result = export_checkpoint(ckpt, with_indices=True, exporter="torchscript", opset=17, verify=False, progress=False)
    assert record_last_export(result.path)
    return ckpt, result.path


def test_parity_defaults_to_the_last_export_and_its_checkpoint(
    exported_here: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, onnx_path = exported_here
    assert parity.main(["--quiet", "--num-images", "16", "--random-batches", "1", "--batch-sizes", "4"]) == 0
    out = capsys.readouterr().out
    assert f"reference: {ckpt.resolve()}" in out
    assert onnx_path.with_suffix(".parity.json").is_file()


def test_a_changed_checkpoint_is_not_taken_for_the_graphs_source(
    exported_here: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = exported_here
    with ckpt.open("ab") as handle:
        handle.write(b"\0")  # same path, other bytes: no longer the file the graph was exported from
    with pytest.raises(CheckpointError, match="changed since"):
        parity.main(["--quiet"])
    # accuracy still measures the graph, without a PyTorch row, and says why
    assert accuracy.main(["--quiet", "--limit", "32"]) == 0
    out = capsys.readouterr().out
    assert "note: no PyTorch row:" in out and "changed since" in out
    assert "| pytorch |" not in out and "| onnxruntime-cpu |" in out


def test_accuracy_has_a_pytorch_row_by_default(
    exported_here: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert accuracy.main(["--quiet", "--limit", "32"]) == 0
    out = capsys.readouterr().out
    assert "| pytorch |" in out and "| onnxruntime-cpu |" in out
    assert accuracy.main(["--quiet", "--limit", "32", "--no-pytorch"]) == 0
    assert "| pytorch |" not in capsys.readouterr().out


def test_without_an_export_the_error_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IDLEVIT_STATE_DIR", raising=False)
    for main in (parity.main, accuracy.main):
        with pytest.raises(ToolkitError, match="pass --onnx"):
            main(["--quiet"])


def test_the_metadata_records_the_checkpoint_by_name_and_it_is_found_beside_the_graph(
    exported_here: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, onnx_path = exported_here
    props = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
    assert json.loads(props["idlevit.checkpoint"]) == "mine.pth"
    assert not [key for key, value in props.items() if str(tmp_path) in value or "/" in value.replace("\\/", "")]
    # the folder copied elsewhere, the command run from a third folder: the checkpoint is found by name
    moved, elsewhere = tmp_path / "moved", tmp_path / "elsewhere"
    moved.mkdir(), elsewhere.mkdir()
    graph = Path(shutil.move(onnx_path, moved / onnx_path.name))
    monkeypatch.chdir(elsewhere)
    with pytest.raises(CheckpointError, match=r"\(mine.pth\) is neither beside it nor in the working directory"):
        recorded_checkpoint(read_metadata(graph), graph)
    shutil.move(ckpt, elsewhere / ckpt.name)  # in the working directory
    assert recorded_checkpoint(read_metadata(graph), graph) == Path("mine.pth")
    shutil.move(elsewhere / ckpt.name, moved / ckpt.name)  # beside the graph
    assert recorded_checkpoint(read_metadata(graph), graph) == moved / "mine.pth"
