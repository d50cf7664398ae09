"""The FP32 graph a reduced graph is judged against is found by what it records, and trusted by sha256 only."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from engines.precision import source_record
from idlevit.errors import ToolkitError
from idlevit.metadata import read_metadata, write_metadata
from validate import sources
from validate.sources import check_reference_graph, recorded_fp32_graph, reference_graph


def _reduced(fp32: Path, target: Path, precision: str = "fp16") -> Path:
    """A stand-in reduced graph: ``fp32``'s graph with the metadata a reduced graph carries."""
    model = onnx.load(fp32)
    meta = read_metadata(model)
    meta.precision = precision
    meta.extra = {**meta.extra, **source_record(fp32)}
    write_metadata(model, meta)
    onnx.save(model, target)
    return target


def test_the_recorded_graph_is_found_where_it_was_or_beside(digits_onnx: Path, tmp_path: Path) -> None:
    fp32 = tmp_path / "work" / "m.onnx"
    fp32.parent.mkdir()
    shutil.copy(digits_onnx, fp32)
    reduced = _reduced(fp32, tmp_path / "work" / "m_fp16_mixed.onnx")
    assert read_metadata(reduced).extra["source_onnx"] == "m.onnx"  # a name: no path of the machine that wrote it
    assert recorded_fp32_graph(reduced) == fp32.resolve()
    assert reference_graph(reduced, None, None, None) == fp32.resolve()
    # copied to another machine: the recorded path is gone, the same file lies beside the reduced graph
    device = tmp_path / "device"
    shutil.copytree(fp32.parent, device)
    shutil.rmtree(fp32.parent)
    assert recorded_fp32_graph(device / reduced.name) == device / "m.onnx"


def test_a_changed_or_missing_fp32_graph_is_refused(digits_onnx: Path, tmp_path: Path) -> None:
    fp32 = tmp_path / "m.onnx"
    shutil.copy(digits_onnx, fp32)
    reduced = _reduced(fp32, tmp_path / "m_int8.onnx", "int8")
    model = onnx.load(fp32)
    model.doc_string = "re-exported since"
    onnx.save(model, fp32)
    with pytest.raises(ToolkitError, match="changed since .*m_int8.onnx was made from it"):
        recorded_fp32_graph(reduced)
    with pytest.raises(ToolkitError, match="is not the FP32 graph .*m_int8.onnx was made from"):
        check_reference_graph(read_metadata(fp32), read_metadata(reduced), fp32, reduced)
    fp32.unlink()
    with pytest.raises(ToolkitError, match="is not there any more; pass --reference-onnx"):
        recorded_fp32_graph(reduced)


def test_the_reference_must_be_an_fp32_graph_of_the_same_model(digits_onnx: Path, tmp_path: Path) -> None:
    fp32 = tmp_path / "m.onnx"
    shutil.copy(digits_onnx, fp32)
    reduced = _reduced(fp32, tmp_path / "m_fp16_mixed.onnx")
    with pytest.raises(ToolkitError, match="is an fp16 graph; the reference must be the FP32 export"):
        check_reference_graph(read_metadata(reduced), read_metadata(reduced), reduced, reduced)
    other = read_metadata(fp32)
    other.keep_tokens = [k - 1 for k in other.keep_tokens]
    with pytest.raises(ToolkitError, match="another model .*keep_tokens"):
        check_reference_graph(other, read_metadata(reduced), fp32, reduced)
    with pytest.raises(ToolkitError, match="name two references"):
        reference_graph(reduced, fp32, "demo", None)
    assert reference_graph(fp32, None, None, None) is None  # an FP32 graph: the PyTorch model


def test_an_engine_is_judged_against_its_onnx_where_pytorch_is_missing(
    digits_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An FP32 graph with --engine: the PyTorch model where torch is installed, else the graph itself."""
    assert reference_graph(digits_onnx, None, None, "m.engine") is None
    monkeypatch.setattr(sources, "missing_torch_package", lambda: "torch")
    assert reference_graph(digits_onnx, None, None, "m.engine") == digits_onnx
    assert reference_graph(digits_onnx, None, None, None) is None  # no engine: parity needs the PyTorch model
