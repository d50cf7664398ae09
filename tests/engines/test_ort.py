"""ONNX Runtime sessions run a Q/DQ graph as written, so a check's verdict does not depend on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engines.ort import create_session, ort_runner

SCALE_X, SCALE_W = 0.05, 0.01


def _qdq_matmul(path: Path, weights: np.ndarray) -> None:
    """``DQ(Q(x)) @ DQ(w)``: int8 activations and weights, as ModelOpt writes a quantized GEMM."""
    inits = [
        numpy_helper.from_array(weights, "w_q"),
        numpy_helper.from_array(np.array(SCALE_X, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(np.array(SCALE_W, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, weights.shape[1]])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_qdq_graph_computes_the_quantized_arithmetic_exactly(tmp_path: Path) -> None:
    """Large activations against weights of the opposite sign: pair sums beyond int16, where CPUs without
    VNNI saturate in ONNX Runtime's fused u8 x s8 kernels. Written out, the result is the integer product
    (exact in float32 at this size) times the two scales."""
    rng = np.random.default_rng(0)
    weights = np.full((64, 8), -127, np.int8)
    weights[:, 1::2] = rng.integers(-127, 128, (64, 4), dtype=np.int8)
    x = np.full((4, 64), 127 * SCALE_X, np.float32)
    x[1:] = rng.uniform(-127 * SCALE_X, 127 * SCALE_X, (3, 64)).astype(np.float32)
    _qdq_matmul(tmp_path / "qdq.onnx", weights)

    (got,) = create_session(tmp_path / "qdq.onnx", threads=1).run(None, {"x": x})

    x_int = np.clip(np.round(x / SCALE_X), -128, 127).astype(np.int64)
    expected = (x_int @ weights.astype(np.int64)) * (np.float64(np.float32(SCALE_X)) * np.float32(SCALE_W))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_an_ort_runner_with_base_options_runs_again_after_reactivation(tmp_path: Path) -> None:
    """Benchmarks rebuild every session between rounds: each activation needs options of its own.

    ``create_session`` completes the options it gets (config entries, the custom-op library), and
    ONNX Runtime refuses a library registered twice on one options object.
    """
    rng = np.random.default_rng(1)
    weights = rng.integers(-127, 128, size=(8, 3), dtype=np.int8)
    _qdq_matmul(tmp_path / "qdq.onnx", weights)
    made: list[ort.SessionOptions] = []

    def options() -> ort.SessionOptions:
        made.append(ort.SessionOptions())
        made[-1].add_session_config_entry("session.intra_op.allow_spinning", "0")
        return made[-1]

    runner = ort_runner(tmp_path / "qdq.onnx", "cpu", threads=1, options=options)
    x = rng.uniform(-2, 2, size=(4, 8)).astype(np.float32)
    outputs = []
    for _ in range(3):
        with runner:
            outputs.append(runner.infer({"x": x})["y"])
    assert len(made) == 3 and all(np.array_equal(out, outputs[0]) for out in outputs)
    assert made[0].get_session_config_entry("session.intra_op.allow_spinning") == "0"
