"""The ONNX Runtime CPU reference of idlevit::IdleScatter against a plain loop and ScatterElements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from plugins.idle_scatter import DOMAIN, OP_TYPE
from plugins.idle_scatter.ort_op import create_session, idle_scatter_reference, ort_kernel


def _loop_reference(tokens: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """Scalar loop: negative rows wrap once, rows outside [-R, R) are skipped."""
    out = tokens.copy()
    rows = tokens.shape[1]
    for b in range(tokens.shape[0]):
        for j in range(indices.shape[1]):
            row = int(indices[b, j])
            row = row + rows if row < 0 else row
            if 0 <= row < rows:
                out[b, row, :] = updates[b, j, :]
    return out


def _case(seed: int, batch: int = 3, rows: int = 197, kept: int = 138, channels: int = 16):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((batch, rows, channels), dtype=np.float32)
    updates = rng.standard_normal((batch, kept, channels), dtype=np.float32)
    idx = np.stack([np.concatenate([[0], rng.permutation(np.arange(1, rows))[: kept - 1]]) for _ in range(batch)])
    return tokens, idx.astype(np.int64), updates


def test_reference_matches_loop_with_negative_indices() -> None:
    tokens, idx, updates = _case(0)
    idx[:, 1::3] -= tokens.shape[1]
    got = idle_scatter_reference(tokens, idx, updates)
    assert np.array_equal(got, _loop_reference(tokens, idx, updates))
    assert not np.array_equal(got, tokens)


def test_reference_skips_out_of_range_rows_like_the_kernel() -> None:
    tokens, idx, updates = _case(1, rows=9, kept=4)
    idx[0, 1], idx[1, 2] = 9, -10
    got = idle_scatter_reference(tokens, idx, updates)
    assert np.array_equal(got, _loop_reference(tokens, idx, updates))
    changed_rows = (got != tokens).any(axis=2).sum(axis=1)
    assert changed_rows.tolist() == [3, 3, 4]  # 4 kept rows per image; images 0 and 1 lose one


def test_shape_errors_raise_in_python_and_give_nans_in_the_op(capsys: pytest.CaptureFixture[str]) -> None:
    tokens, idx, updates = _case(1, rows=9, kept=4)
    with pytest.raises(ValueError, match="disagree"):
        idle_scatter_reference(tokens, idx[:, :3], updates)
    out = ort_kernel(tokens, idx[:, :3], updates)
    assert out.shape == tokens.shape and np.isnan(out).all()
    assert "disagree" in capsys.readouterr().err


def _single_op_model(op: str) -> onnx.ModelProto:
    """tokens, kept, updates -> one IdleScatter node, or the standard Unsqueeze/Expand/ScatterElements."""
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["B", 197, 16]),
        helper.make_tensor_value_info("kept", TensorProto.INT64, ["B", 138]),
        helper.make_tensor_value_info("updates", TensorProto.FLOAT, ["B", 138, 16]),
    ]
    if op == OP_TYPE:
        nodes = [
            helper.make_node(
                OP_TYPE,
                ["tokens", "kept", "updates"],
                ["out"],
                domain=DOMAIN,
                plugin_version="1",
                plugin_namespace=DOMAIN,
            )
        ]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    else:
        nodes = [
            helper.make_node("Unsqueeze", ["kept", "axes"], ["kept3"]),
            helper.make_node("Shape", ["updates"], ["shape"]),
            helper.make_node("Expand", ["kept3", "shape"], ["index"]),
            helper.make_node("ScatterElements", ["tokens", "index", "updates"], ["out"], axis=1),
        ]
        opsets = [helper.make_opsetid("", 17)]
    graph = helper.make_graph(
        nodes,
        op,
        inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 197, 16])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [2])] if op != OP_TYPE else [],
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def test_ort_op_equals_scatter_elements(tmp_path: Path) -> None:
    fused, standard = tmp_path / "fused.onnx", tmp_path / "standard.onnx"
    onnx.save(_single_op_model(OP_TYPE), fused)
    onnx.save(_single_op_model("ScatterElements"), standard)
    for seed, batch in ((2, 1), (3, 8)):
        tokens, idx, updates = _case(seed, batch=batch)
        feeds = {"tokens": tokens, "kept": idx, "updates": updates}
        got = create_session(fused).run(None, feeds)[0]
        want = create_session(standard).run(None, feeds)[0]
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert np.array_equal(got, _loop_reference(tokens, idx, updates))


def test_ort_op_skips_out_of_range_rows(tmp_path: Path) -> None:
    path = tmp_path / "fused.onnx"
    onnx.save(_single_op_model(OP_TYPE), path)
    tokens, idx, updates = _case(4, batch=1)
    idx[0, 5] = 197
    got = create_session(path).run(None, {"tokens": tokens, "kept": idx, "updates": updates})[0]
    assert np.array_equal(got, _loop_reference(tokens, idx, updates))
