"""Fusing the idle layers' Expand + ScatterElements into idlevit::IdleScatter, and undoing it.

The fused graph runs in ONNX Runtime through the CPU reference op and must give the same bits
as the standard-op graph.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import idlevit
from export.exporter import export_onnx
from idlevit.metadata import read_metadata
from plugins.idle_scatter import DOMAIN, OP_TYPE
from plugins.idle_scatter.graph_pass import count_fused, fuse_idle_scatter, unfuse_idle_scatter
from plugins.idle_scatter.ort_op import create_session


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _run(model: onnx.ModelProto, tmp_path: Path, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return create_session(path).run(None, feeds)


def _images(batch: int, size: int = 224) -> dict[str, np.ndarray]:
    return {idlevit.IMAGES: np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)}


@pytest.fixture(scope="module")
def deit_small_models(deit_small_onnx: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    original = onnx.load(deit_small_onnx)
    fused, count = fuse_idle_scatter(original)
    assert count == len(read_metadata(original).idle_layers) == 9
    return original, fused


def test_fuses_every_idle_layer_into_a_plugin_node(deit_small_models) -> None:
    original, fused = deit_small_models
    assert _ops(original)["ScatterElements"] == 9
    assert _ops(fused)["ScatterElements"] == 0 and count_fused(fused) == 9
    # The Expand stays: the layer's three GatherElements still read it.
    assert _ops(fused)["Expand"] == _ops(original)["Expand"]
    assert _ops(fused)["GatherElements"] == _ops(original)["GatherElements"]
    producers = {o: n for n in fused.graph.node for o in n.output}
    for node in (n for n in fused.graph.node if n.op_type == OP_TYPE):
        assert node.domain == DOMAIN
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_version": b"1", "plugin_namespace": b"idlevit"}
        assert producers[node.input[1]].op_type == "TopK"  # the (B, K+1) kept rows, not the expanded index
    assert any(o.domain == DOMAIN and o.version == 1 for o in fused.opset_import)
    assert fused.metadata_props == original.metadata_props
    onnx.checker.check_model(fused, full_check=True)


@pytest.mark.parametrize("batch", [1, 8])
def test_fused_deit_small_is_bit_identical(deit_small_models, tmp_path: Path, batch: int) -> None:
    original, fused = deit_small_models
    feeds = _images(batch)
    want = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _run(fused, tmp_path, "fused", feeds)
    assert len(got) == len(want) == 10  # logits + kept indices of the 9 idle layers
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and np.array_equal(g, w)


def test_unfuse_restores_standard_ops(deit_small_models, tmp_path: Path) -> None:
    original, fused = deit_small_models
    restored, count = unfuse_idle_scatter(fused)
    assert count == 9 and count_fused(restored) == 0
    assert _ops(restored)["ScatterElements"] == 9
    assert not any(o.domain == DOMAIN for o in restored.opset_import)
    onnx.checker.check_model(restored, full_check=True)
    feeds = _images(2)
    want = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(restored.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_passes_leave_their_input_untouched(deit_small_onnx: Path) -> None:
    model = onnx.load(deit_small_onnx)
    before = model.SerializeToString()
    fused, _ = fuse_idle_scatter(model)
    assert model.SerializeToString() == before
    fused_before = fused.SerializeToString()
    unfuse_idle_scatter(fused)
    assert fused.SerializeToString() == fused_before


def test_export_with_plugin_flag_fuses_and_verifies(deit_tiny: idlevit.IdleViT, tmp_path: Path) -> None:
    path = tmp_path / "tiny_plugin.onnx"
    report = export_onnx(deit_tiny, path, plugin=True, verify_batch=2, progress=False)
    model = onnx.load(path)
    assert count_fused(model) == len(deit_tiny.schedule.idle_layers) > 0
    assert read_metadata(model).plugin == f"{DOMAIN}::{OP_TYPE}"
    assert report is not None and report.passed
    totals = report.backend("onnxruntime-cpu")
    assert totals.max_abs < 1e-4 and totals.top1_agreement == 1.0


def test_demo_model_fused_is_bit_identical(tmp_path: Path) -> None:
    if not Path(idlevit.DEMO_CHECKPOINT).is_file():
        pytest.skip(f"bundled demo checkpoint {idlevit.DEMO_CHECKPOINT} is not built in this checkout")
    model = idlevit.load_checkpoint(idlevit.DEMO_CHECKPOINT)
    path = tmp_path / "demo.onnx"
    export_onnx(model, path, verify_batch=0, progress=False)
    original = onnx.load(path)
    fused, count = fuse_idle_scatter(original)
    assert count == len(model.schedule.idle_layers)
    for batch in (1, 8):
        feeds = _images(batch, model.cfg.img_size)
        want = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        got = _run(fused, tmp_path, f"demo_fused_{batch}", feeds)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


# ---- the matcher on hand-built graphs ------------------------------------------------------------


def _write_back_graph(
    expand_shape: list[int],
    kept_shape: tuple[int, int] = (2, 3),
    channels: int = 4,
    axis: int = 1,
    reduction: str | None = None,
    share_expand: bool = False,
) -> onnx.ModelProto:
    """tokens (2, 5, C), kept (B, 3) -> Unsqueeze -> Expand(shape) -> ScatterElements -> out."""
    index_shape = [max(a, b) for a, b in zip([*kept_shape, 1], expand_shape, strict=True)]
    attrs: dict[str, Any] = {"axis": axis} | ({"reduction": reduction} if reduction else {})
    nodes = [
        helper.make_node("Unsqueeze", ["kept", "axes"], ["kept3"]),
        helper.make_node("Expand", ["kept3", "shape"], ["index"]),
        helper.make_node("ScatterElements", ["tokens", "index", "updates"], ["out"], **attrs),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 5, channels])]
    if share_expand:
        nodes.append(helper.make_node("GatherElements", ["tokens", "index"], ["gathered"], axis=1))
        outputs.append(helper.make_tensor_value_info("gathered", TensorProto.FLOAT, index_shape))
    graph = helper.make_graph(
        nodes,
        "write_back",
        [
            helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [2, 5, channels]),
            helper.make_tensor_value_info("kept", TensorProto.INT64, list(kept_shape)),
            helper.make_tensor_value_info("updates", TensorProto.FLOAT, index_shape),
        ],
        outputs,
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
            helper.make_tensor("shape", TensorProto.INT64, [3], expand_shape),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("share_expand", [False, True])
def test_fuses_hand_built_write_back(tmp_path: Path, share_expand: bool) -> None:
    model = _write_back_graph([1, 1, 4], share_expand=share_expand)
    fused, count = fuse_idle_scatter(model)
    assert count == 1
    # Unsqueeze/Expand go only when nothing else reads them.
    assert _ops(fused)["Expand"] == (1 if share_expand else 0)
    assert _ops(fused)["Unsqueeze"] == (1 if share_expand else 0)
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {
        "tokens": rng.standard_normal((2, 5, 4), dtype=np.float32),
        "kept": np.array([[0, 4, -2], [0, -1, 1]], dtype=np.int64),  # negative rows count from the end
        "updates": rng.standard_normal((2, 3, 4), dtype=np.float32),
    }
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _run(fused, tmp_path, "hand_fused", feeds)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expand_shape": [1, 1, 2], "channels": 4},  # index narrower than the row: partial-row write
        {"expand_shape": [2, 1, 4], "kept_shape": (1, 3)},  # batch axis broadcast by Expand
        {"expand_shape": [1, 1, 4], "axis": 2},  # scatter along channels
        {"expand_shape": [1, 1, 4], "reduction": "add"},  # accumulating scatter
    ],
    ids=["partial_row", "batch_broadcast", "axis2", "reduction_add"],
)
def test_leaves_non_equivalent_scatters_alone(kwargs: dict[str, Any]) -> None:
    fused, count = fuse_idle_scatter(_write_back_graph(**kwargs))
    assert count == 0 and count_fused(fused) == 0 and _ops(fused)["ScatterElements"] == 1
