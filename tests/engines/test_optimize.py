"""The graph for ONNX Runtime: fused Attention and BiasGelu, the scoring path untouched, the same numbers."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines import optimize
from engines.optimize import (
    MS_DOMAIN,
    Optimization,
    fuse_attention,
    move_rows,
    narrow_to_class_token,
    optimize_for_onnxruntime,
    scoring_path_signature,
)
from engines.ort import create_session
from engines.precision import scoring_path_nodes
from export.exporter import export_onnx
from idlevit.errors import ToolkitError

from ..conftest import make_model


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in model.graph.node)


def _export(tmp_path: Path, name: str, arch: str = "deit_tiny", batch: int | None = None, **kwargs) -> Path:
    """A small model, exported plain with its kept indices (4 blocks: a dense one, then 3 idle ones)."""
    options = dict(img_size=32, patch_size=8, num_classes=10, depth=4, idle_layers=[1, 2, 3])
    model = make_model(arch, **{**options, "keep_ratios": [0.7, 0.5, 0.3], **kwargs})
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, batch=batch, with_indices=True, verify_batch=0, progress=False)
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("optimize"), "deit")


def _run(model: onnx.ModelProto | Path, tmp_path: Path, images: np.ndarray) -> list[np.ndarray]:
    path = model if isinstance(model, Path) else tmp_path / "candidate.onnx"
    if not isinstance(model, Path):
        onnx.save(model, path)
    return create_session(path).run(None, {"images": images})


def test_every_attention_core_becomes_one_attention_node(plain: Path, tmp_path: Path) -> None:
    model = onnx.load(plain)
    fused, count = fuse_attention(model)
    ops = _ops(fused)
    assert count == 4 == ops["Attention"]  # every block, dense and idle alike
    assert not {"Softmax", "Split"} & set(ops) and ops["Transpose"] < _ops(model)["Transpose"]
    assert {node.domain for node in fused.graph.node if node.op_type == "Attention"} == {MS_DOMAIN}
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    expected, got = _run(plain, tmp_path, images), _run(fused, tmp_path, images)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    for a, b in zip(expected[1:], got[1:], strict=True):  # kept token positions, CLS first
        np.testing.assert_array_equal(a, b)


def _images(seed: int, batch: int, size: int = 32) -> np.ndarray:
    """Random images at different scales, so that each image keeps its own tokens."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    return (images * rng.uniform(0.2, 3.0, (batch, 1, 1, 1))).astype(np.float32)


def test_token_moves_become_row_copies_with_bit_identical_results(plain: Path, tmp_path: Path) -> None:
    """GatherND / ScatterND over (batch, position) pairs: the same values to the same places, every image its own."""
    model = onnx.load(plain)
    moved, count = move_rows(model)
    ops = _ops(moved)
    assert count == 3 == ops["ScatterND"] and ops["GatherND"] == 2 * 3  # tokens and norm1(tokens) per idle layer
    assert not {"GatherElements", "ScatterElements"} & set(ops)
    assert ops["Expand"] == 3  # the batch numbers, one per distinct K; no index expanded over the channels
    onnx.checker.check_model(moved, full_check=True)
    images = _images(2, 5)
    expected, got = _run(plain, tmp_path, images), _run(moved, tmp_path, images)
    assert any((expected[1][0] != row).any() for row in expected[1][1:])  # images keep different tokens
    for a, b in zip(expected, got, strict=True):  # logits and kept positions: bit for bit
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_run(plain, tmp_path, images[:1]), _run(moved, tmp_path, images[:1]), strict=True):
        np.testing.assert_array_equal(a, b)  # batch 1 as well


def test_only_the_class_token_is_computed_after_the_last_attention(plain: Path, tmp_path: Path) -> None:
    """The last block's projection, MLP and write-back run on the class token alone; the numbers hold."""
    model = onnx.load(plain)
    narrowed, count = narrow_to_class_token(model)
    ops, before = _ops(narrowed), _ops(model)
    assert ops["ScatterElements"] == before["ScatterElements"] - 1  # the last idle layer writes nothing back
    assert ops["GatherElements"] == before["GatherElements"] - 1  # nor gathers its residual tokens
    # final norm, write-back, the two residual Adds, both biases, the MLP's two MatMuls and GELU (Div, Erf, Add,
    # two Muls), norm2, the attention's projection and its bias, and the residual gather
    assert count == 17
    inferred = onnx.shape_inference.infer_shapes(narrowed)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    row_matmuls = [n.name for n in narrowed.graph.node if n.op_type == "MatMul" and ranks.get(n.input[0]) == 2]
    assert len(row_matmuls) == 3  # the last block's projection and both MLP layers take (B, C): one row per image
    onnx.checker.check_model(narrowed, full_check=True)
    images = _images(3, 4)
    expected, got = _run(plain, tmp_path, images), _run(narrowed, tmp_path, images)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(expected[1:], got[1:], strict=True):  # kept positions: untouched
        np.testing.assert_array_equal(a, b)


def test_the_write_back_is_kept_unless_the_class_token_is_provably_first(plain: Path) -> None:
    """Without the infinite class-token score, TopK may rank another token first: the write-back stays."""
    model = onnx.load(plain)
    top_ks = [n for n in model.graph.node if n.op_type == "TopK"]
    adds = {n.output[0]: n for n in model.graph.node if n.op_type == "Add"}
    weights = {t.name: t for t in model.graph.initializer}
    bias = next(weights[name] for name in adds[top_ks[-1].input[0]].input if name in weights)
    values = onnx.numpy_helper.to_array(bias).copy()
    assert values.reshape(-1)[0] == np.inf  # the export's class-token score
    values.reshape(-1)[0] = 1e4
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    narrowed, count = narrow_to_class_token(model)
    assert _ops(narrowed)["ScatterElements"] == _ops(model)["ScatterElements"] and count == 1  # the final norm only


def test_a_head_that_reads_every_token_is_left_alone(tmp_path: Path) -> None:
    """LV-ViT's token-labelling head reads all tokens after the last block: nothing is dead, nothing narrows."""
    plain = _export(tmp_path, "lvvit", arch="lvvit_s", img_size=64, patch_size=16)
    model = onnx.load(plain)
    narrowed, count = narrow_to_class_token(model)
    assert _ops(narrowed) == _ops(model) and count == 0


def test_optimised_graph_keeps_the_scoring_path_and_skips_skip_layer_norm(plain: Path) -> None:
    model = onnx.load(plain)
    optimized, record = optimize_for_onnxruntime(model)
    assert record.fused == {"Attention": 4, "BiasGelu": 4} and record.row_moves == 3 and record.class_token_ops == 17
    assert Optimization.from_dict(record.to_dict()) == record  # as the metadata carries it
    assert not {"GatherElements", "ScatterElements"} & set(_ops(optimized))
    assert "SkipLayerNormalization" not in _ops(optimized) and "SkipLayerNormalization" in record.skipped
    path = scoring_path_nodes(model)  # found in the plain export, as optimize_for_onnxruntime does
    assert scoring_path_signature(optimized, path) == scoring_path_signature(model, path) != []
    assert {p.key: p.value for p in optimized.metadata_props} == {p.key: p.value for p in model.metadata_props}
    onnx.checker.check_model(optimized)


def test_a_fusion_that_touches_the_scoring_path_is_refused(plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformer fusion that rewrote an idle layer's norm1 (as SkipLayerNormalization would) stops the step."""
    real = optimize.transformer_fusions
    scoring = set(scoring_path_nodes(onnx.load(plain)))

    def fusing_norm1(model: onnx.ModelProto, heads: int, width: int) -> onnx.ModelProto:
        result = real(model, heads, width)
        norm1 = next(n for n in result.graph.node if n.op_type == "LayerNormalization" and n.name in scoring)
        norm1.op_type, norm1.domain = "SkipLayerNormalization", MS_DOMAIN  # what that fusion would write
        return result

    monkeypatch.setattr(optimize, "transformer_fusions", fusing_norm1)
    with pytest.raises(ToolkitError, match="changed an idle layer's scoring path"):
        optimize_for_onnxruntime(onnx.load(plain))


def test_a_graph_whose_attention_does_not_match_is_refused(plain: Path) -> None:
    model = onnx.load(plain)
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    softmax.attribute[0].i = 2  # softmax over another axis: not an attention core this step knows
    with pytest.raises(ToolkitError, match="matched 3 of the graph's 4 attention blocks"):
        optimize_for_onnxruntime(model)


def test_lvvit_without_qkv_bias_fuses_with_a_zero_bias(tmp_path: Path) -> None:
    """LV-ViT's qkv has no bias and its branches are halved: Attention gets zeros (exact), the numbers hold."""
    plain = _export(tmp_path, "lvvit", arch="lvvit_s", img_size=64, patch_size=16)
    optimized, record = optimize_for_onnxruntime(onnx.load(plain))
    assert record.fused["Attention"] == 4
    images = np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)
    expected, got = _run(plain, tmp_path, images), _run(optimized, tmp_path, images)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    for a, b in zip(expected[1:], got[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_static_batch_graph_is_optimised_too(tmp_path: Path) -> None:
    """``--static-batch`` writes the batch size into the head Reshapes; the Attention fusion takes it."""
    plain = _export(tmp_path, "static", batch=2)
    optimized, record = optimize_for_onnxruntime(onnx.load(plain))
    assert record.fused["Attention"] == 4 and record.row_moves == 3
    images = _images(4, 2)
    expected, got = _run(plain, tmp_path, images), _run(optimized, tmp_path, images)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    for a, b in zip(expected[1:], got[1:], strict=True):
        np.testing.assert_array_equal(a, b)
