"""INT8/FP8 Q/DQ graphs: the GEMMs each plan picks, the scoring path left FP32, calibration, the presets' verdicts.

ModelOpt really quantizes here (ONNX Runtime's CPU calibrates), on the bundled demo where
selection means something, so the tests see the same graphs ``python -m export.trt --int8``
writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx.numpy_helper import to_array
from PIL import Image

import idlevit
from engines.plan import (
    ATTENTION,
    BLOCK_GEMMS,
    DEFAULT_QUANT_PLAN,
    FP8,
    INT8,
    QUANT_PLANS,
    Method,
    PrecisionPlan,
)
from engines.precision import scoring_path_nodes
from engines.quantize import (
    block_gemms,
    calibration_images,
    check_scoring_path_unquantized,
    plan_nodes,
    quantize_onnx,
    quantized_nodes,
    quantized_onnx_path,
    recorded_quantization,
)
from export.exporter import export_onnx
from idlevit.errors import ToolkitError
from idlevit.metadata import read_metadata
from validate.inputs import InputSpec
from validate.reduced import REDUCED_NAME, check_reduced_precision

#: Calibration images of the test graphs (the command's default is the whole train split).
CALIB = 256
#: The digits test split, as the export.trt check and the sweep judge it.
TEST_SPLIT = InputSpec(data="digits", num_images=450, random_batches=0, batch_sizes=(50,))


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quant") / "demo.onnx"
    model = idlevit.load_checkpoint("demo")
    export_onnx(model, path, with_indices=True, verify_batch=0, progress=False, checkpoint="demo")
    return path


@pytest.fixture(scope="module")
def demo_calibration(demo_onnx: Path) -> tuple[np.ndarray, str]:
    return calibration_images(read_metadata(demo_onnx), count=CALIB)


@pytest.fixture(scope="module")
def demo_int8(demo_onnx: Path, demo_calibration: tuple[np.ndarray, str]) -> Path:
    """The default plan's INT8 graph of the demo."""
    images, where = demo_calibration
    model, _ = quantize_onnx(demo_onnx, INT8, DEFAULT_QUANT_PLAN, images=images, calibration=where)
    path = quantized_onnx_path(demo_onnx, INT8)
    onnx.save(model, path)
    return path


def test_block_gemms_are_found_by_structure(tiny_onnx: Path) -> None:
    model = onnx.load(tiny_onnx)
    gemms = block_gemms(model, 12, scoring_path_nodes(model))
    assert [g.role for g in gemms if g.block == 0] == ["qkv", ATTENTION, ATTENTION, "proj", "fc1", "fc2"]
    assert len(gemms) == 12 * 6 and {g.block for g in gemms} == set(range(12))
    # the weights agree with the roles: qkv C x 3C, proj C x C, fc1 C x 4C, fc2 4C x C (deit_tiny: C = 192)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    by_name = {node.name: node for node in model.graph.node}
    expected = {"qkv": (192, 576), "proj": (192, 192), "fc1": (192, 768), "fc2": (768, 192)}
    for gemm in gemms:
        if gemm.role in BLOCK_GEMMS:
            assert shapes[by_name[gemm.node].input[1]] == expected[gemm.role], gemm


def test_plans_pick_their_gemms(tiny_onnx: Path) -> None:
    model, meta = onnx.load(tiny_onnx), read_metadata(tiny_onnx)
    counts = {name: len(plan_nodes(model, meta, plan) or []) for name, plan in QUANT_PLANS.items()}
    assert counts == {
        "all": 0,  # ModelOpt's own placement
        "gemms": 48,
        "gemms-attn": 72,
        "mlp-proj": 36,
        "mlp": 24,
        "gemms-dense-mlp-idle": 3 * 4 + 9 * 2,
        "gemms-inner": 10 * 4,
    }
    assert plan_nodes(model, meta, QUANT_PLANS["all"]) is None
    scoring = set(scoring_path_nodes(model))
    assert not any(scoring & set(plan_nodes(model, meta, plan) or []) for plan in QUANT_PLANS.values())


def test_calibration_images_digits_and_folder(demo_onnx: Path, tmp_path: Path) -> None:
    meta = read_metadata(demo_onnx)
    images, where = calibration_images(meta)
    assert images.shape == (1347, 3, 32, 32) and where == "digits:train"  # default: the whole train split
    few, _ = calibration_images(meta, count=10, seed=0)
    again, _ = calibration_images(meta, count=10, seed=0)
    other, _ = calibration_images(meta, count=10, seed=1)
    np.testing.assert_array_equal(few, again)
    assert not np.array_equal(few, other)
    # an ImageFolder (ROOT/train when present), read with the graph's preprocessing
    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((40, 40, 3), 60 * i + (cls == "b") * 30, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "train" / cls / f"{i}.png")
    folder, where = calibration_images(meta, tmp_path / "data")
    assert folder.shape == (6, 3, 32, 32) and where == str(tmp_path / "data")
    expected = sorted((v / 255 - meta.mean[0]) / meta.std[0] for v in (0, 30, 60, 90, 120, 150))  # the metadata's
    np.testing.assert_allclose(np.sort(folder[:, 0, 16, 16]), expected, atol=1e-2)
    with pytest.raises(ToolkitError, match="must be >= 1"):
        calibration_images(meta, count=0)


def test_int8_graph_keeps_the_scoring_path_fp32(demo_onnx: Path, demo_int8: Path) -> None:
    fp32, q = onnx.load(demo_onnx), onnx.load(demo_int8)
    scoring = scoring_path_nodes(fp32)
    check_scoring_path_unquantized(q, scoring)
    quantized = set(quantized_nodes(q))
    meta = read_metadata(demo_onnx)
    assert quantized == set(plan_nodes(fp32, meta, QUANT_PLANS[DEFAULT_QUANT_PLAN]) or [])
    # the scoring nodes read exactly what they read in the FP32 graph, and their weights are still FP32
    inits = {init.name: init for init in q.graph.initializer}
    by_name = {node.name: node for node in q.graph.node}
    fp32_inits = {init.name: init for init in fp32.graph.initializer}
    for name in scoring:
        node = next(n for n in fp32.graph.node if n.name == name)
        for got, want in zip(by_name[name].input, node.input, strict=True):
            if got != want:  # ModelOpt gives each consumer of a shared constant its own copy
                np.testing.assert_array_equal(to_array(inits[got]), to_array(fp32_inits[want]))
        weights = [inits[i] for i in node.input if i in inits and inits[i].data_type != onnx.TensorProto.INT64]
        assert all(w.data_type == onnx.TensorProto.FLOAT for w in weights), name
    # weights are stored quantized (INT8 initializers behind a DequantizeLinear), activations per tensor
    dq_weights = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(dq_weights) == len(quantized)
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq_weights)
    assert demo_int8.stat().st_size < 0.5 * demo_onnx.stat().st_size
    q_meta = read_metadata(q)
    record = recorded_quantization(q_meta)
    assert q_meta.precision == INT8 and q_meta.opset == 19 and q_meta.idle_layers == meta.idle_layers
    assert record is not None and record.plan == DEFAULT_QUANT_PLAN and record.calibration == "digits:train"
    assert record.calibration_images == CALIB and record.excluded_nodes == scoring
    assert record.quantized_nodes == len(quantized) and record.quantizer.startswith("modelopt.onnx.quantization")


def test_a_qdq_planted_on_the_scoring_path_is_caught(demo_onnx: Path, demo_int8: Path) -> None:
    q = onnx.load(demo_int8)
    scoring = scoring_path_nodes(onnx.load(demo_onnx))
    graph = gs.import_onnx(q)
    target = next(node for node in graph.nodes if node.name == scoring[1])  # the first node after norm1
    tensor = target.inputs[0]
    scale, zero = gs.Constant("s", np.array(0.05, np.float32)), gs.Constant("z", np.array(0, np.int8))
    quantized, restored = gs.Variable("planted_q", dtype=np.int8), gs.Variable("planted_dq", dtype=np.float32)
    graph.nodes += [
        gs.Node("QuantizeLinear", inputs=[tensor, scale, zero], outputs=[quantized]),
        gs.Node("DequantizeLinear", inputs=[quantized, scale, zero], outputs=[restored]),
    ]
    target.inputs[0] = restored
    planted = gs.export_onnx(graph.toposort())
    with pytest.raises(ToolkitError, match="quantized scoring-path nodes"):
        check_scoring_path_unquantized(planted, scoring)
    with pytest.raises(ToolkitError, match="lost scoring-path nodes"):
        check_scoring_path_unquantized(q, [*scoring, "/not/there"])


def test_int8_preset_passes_the_default_plan_and_fails_quantizing_everything(
    demo_onnx: Path, demo_int8: Path, demo_calibration: tuple[np.ndarray, str], tmp_path: Path
) -> None:
    """Measured on the digits test split: the default plan keeps the selection, ModelOpt's all-in plan does not."""
    images, where = demo_calibration
    everything, _ = quantize_onnx(demo_onnx, INT8, "all", images=images, calibration=where)
    report = check_reduced_precision(demo_onnx, demo_int8, inputs=TEST_SPLIT, others={"all": everything})
    good, bad = report.backend(REDUCED_NAME), report.backend("all")
    assert good.passed, report.failures
    assert not bad.passed and any("kept token sets differ" in f for f in report.failures)
    assert min(s.agreement for s in good.layers.values()) >= 0.97  # the acceptance target, as sets
    assert min(s.agreement for s in bad.layers.values()) < 0.97
    assert report.setup["precision"] == {REDUCED_NAME: INT8, "all": INT8}


def test_fp8_graph_runs_on_the_cpu_and_is_judged_by_its_preset(
    demo_onnx: Path, demo_calibration: tuple[np.ndarray, str], tmp_path: Path
) -> None:
    images, where = demo_calibration
    model, record = quantize_onnx(demo_onnx, FP8, DEFAULT_QUANT_PLAN, images=images, calibration=where)
    path = tmp_path / "demo_fp8.onnx"
    onnx.save(model, path)
    inits = {init.name: init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT8E4M3FN in inits.values()
    check_scoring_path_unquantized(model, scoring_path_nodes(onnx.load(demo_onnx)))
    report = check_reduced_precision(demo_onnx, path, inputs=TEST_SPLIT)
    assert report.setup["precision"] == {REDUCED_NAME: FP8} and report.passed, report.failures


def test_unknown_plan_and_method_are_one_line(demo_onnx: Path) -> None:
    images = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ToolkitError, match="unknown quantization plan 'fast'"):
        quantize_onnx(demo_onnx, INT8, "fast", images=images)
    with pytest.raises(ToolkitError, match="unknown calibration method"):
        quantize_onnx(demo_onnx, INT8, "gemms", images=images, method="percentile")
    with pytest.raises(ToolkitError, match="not a quantized one"):
        quantize_onnx(demo_onnx, "fp16", "gemms", images=images)


def test_qdq_plan_summary_and_sidecar_record() -> None:
    plan = PrecisionPlan(INT8, "tensorrt 10.3", True, Method.QDQ_ONNX, ["a", "b"], quantization={"plan": "gemms"})
    assert plan.needs_qdq_onnx and not plan.needs_mixed_onnx
    assert "INT8 Q/DQ graph (plan gemms" in plan.summary() and "2 scoring-path nodes" in plan.summary()
    assert plan.to_dict()["method"] == "qdq-onnx" and plan.to_dict()["quantization"] == {"plan": "gemms"}


def test_a_quantized_graph_is_not_quantized_again(demo_int8: Path) -> None:
    with pytest.raises(ToolkitError, match="already an? int8 graph"):
        quantize_onnx(demo_int8, INT8, "gemms", images=np.zeros((2, 3, 32, 32), np.float32))
