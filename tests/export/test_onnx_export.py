"""The exported graph: op contract, metadata, and ONNX Runtime against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import idlevit
from engines.ort import create_session
from export.exporter import FORBIDDEN_OPS, export_onnx
from idlevit.metadata import read_metadata

from ..conftest import assert_onnx_matches_reference, make_model, run_module


def _topk_constants(model: onnx.ModelProto) -> list[int]:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {
        o: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for o in n.output
    }
    ks = []
    for node in model.graph.node:
        if node.op_type == "TopK":
            k = init.get(node.input[1], consts.get(node.input[1]))
            assert k is not None, "TopK's k must be a constant"
            ks.append(int(np.asarray(k).reshape(-1)[0]))
    return ks


def test_graph_contract(deit_small: idlevit.IdleViT, deit_small_onnx: Path) -> None:
    model = onnx.load(deit_small_onnx)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN_OPS
    assert {"TopK", "GatherElements", "ScatterElements"} <= ops
    # k image tokens per IDLEVIT.md (r = 0.7), plus CLS, which the graph ranks first by an infinite score
    assert _topk_constants(model) == [k + 1 for k in (137, 137, 137, 96, 96, 96, 67, 67, 67)]
    for node in model.graph.node:
        if node.op_type == "TopK":
            assert {a.name: a.i for a in node.attribute}.get("sorted", 1) == 1
    # One index dtype: every integer tensor feeding the gathers and scatters is int64.
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for node in model.graph.node:
        if node.op_type in ("GatherElements", "ScatterElements"):
            assert types[node.input[1]] == onnx.TensorProto.INT64
    # Dynamic batch on every input and output.
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert [o.name for o in model.graph.output] == ["logits", *(f"kept_indices_{i}" for i in range(3, 12))]


def test_metadata_records_everything_downstream_needs(deit_small_onnx: Path) -> None:
    meta = read_metadata(deit_small_onnx)
    assert meta.arch == "deit_small" and meta.img_size == 224 and meta.num_tokens == 196
    assert meta.idle_layers == list(range(3, 12))
    assert meta.keep_tokens == [137, 137, 137, 96, 96, 96, 67, 67, 67]
    assert meta.opset == 17 and meta.with_indices and meta.batch == 0
    assert meta.mean == pytest.approx([0.485, 0.456, 0.406])
    assert meta.toolkit_version == idlevit.__version__ and meta.checkpoint == "random-init"


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_reference(deit_small: idlevit.IdleViT, deit_small_onnx: Path, batch: int) -> None:
    assert_onnx_matches_reference(deit_small, create_session(deit_small_onnx), batch)


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_opsets_export_and_run(tmp_path: Path, opset: int) -> None:
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)
    path = tmp_path / f"opset{opset}.onnx"
    report = export_onnx(model, path, opset=opset, with_indices=True, verify_batch=2, progress=False)
    assert onnx.load(path).opset_import[0].version == opset
    assert report is not None and report.passed
    totals = report.backend("onnxruntime-cpu")
    assert totals.max_abs <= 1e-4 and all(sel.agreement == 1.0 for sel in totals.layers.values())


def test_static_batch(tmp_path: Path) -> None:
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)
    path = tmp_path / "static.onnx"
    export_onnx(model, path, batch=4, verify_batch=0, progress=False)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 64, 64]


def test_cli_random_init_writes_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = run_module(
        "export.onnx",
        "--arch",
        "deit_tiny",
        "--random-init",
        "--img-size",
        "64",
        "--keep-rate",
        "0.5",
        "--with-indices",
        "--quiet",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "max abs logit error" in result.stdout and "kept-token agreement 100.00%" in result.stdout
    meta = read_metadata(out)
    assert meta.keep_ratios[0] == 0.5 and meta.img_size == 64
    assert (tmp_path / ".idlevit" / "last_export.json").is_file()


def test_cli_help_explains_every_flag() -> None:
    result = run_module("export.onnx", "--help", cwd=Path.cwd())
    assert result.returncode == 0
    for flag in (
        "--ckpt",
        "--arch",
        "--keep-rate",
        "--idle-layers",
        "--keep-ratios",
        "--img-size",
        "--opset",
        "--batch",
        "--with-indices",
        "--out",
        "--random-init",
        "--plugin",
    ):
        assert flag in result.stdout
