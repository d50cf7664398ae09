"""The graph for ONNX Runtime: fused Attention and BiasGelu, the scoring path untouched, the same numbers."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines import optimize
from engines.optimize import MS_DOMAIN, fuse_attention, optimize_for_onnxruntime, scoring_path_signature
from engines.ort import create_session
from engines.precision import scoring_path_nodes
from export.exporter import export_onnx
from idlevit.errors import ToolkitError

from ..conftest import make_model


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in model.graph.node)


def _export(tmp_path: Path, name: str, arch: str = "deit_tiny", **kwargs) -> Path:
    """A small model, exported plain with its kept indices (4 blocks: a dense one, then 3 idle ones)."""
    options = dict(img_size=32, patch_size=8, num_classes=10, depth=4, idle_layers=[1, 2, 3])
    model = make_model(arch, **{**options, "keep_ratios": [0.7, 0.5, 0.3], **kwargs})
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, with_indices=True, verify_batch=0, progress=False)
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


def test_optimised_graph_keeps_the_scoring_path_and_skips_skip_layer_norm(plain: Path) -> None:
    model = onnx.load(plain)
    optimized, record = optimize_for_onnxruntime(model)
    assert record.fused == {"Attention": 4, "BiasGelu": 4}
    assert "SkipLayerNormalization" not in _ops(optimized) and "SkipLayerNormalization" in record.skipped
    assert scoring_path_signature(optimized) == scoring_path_signature(model) != []
    assert {p.key: p.value for p in optimized.metadata_props} == {p.key: p.value for p in model.metadata_props}
    onnx.checker.check_model(optimized)


def test_a_fusion_that_touches_the_scoring_path_is_refused(plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformer fusion that rewrote an idle layer's norm1 (as SkipLayerNormalization would) stops the step."""
    real = optimize.transformer_fusions

    def fusing_norm1(model: onnx.ModelProto, heads: int, width: int) -> onnx.ModelProto:
        result = real(model, heads, width)
        scoring = set(scoring_path_nodes(result))
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
