"""Fixtures of the engine tests: a small exported IdleViT and its mixed-precision graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import tensorrt
from engines.plan import FP16
from engines.precision import plan_precision, write_mixed_onnx
from engines.target import Target
from export.exporter import export_onnx

from ..conftest import make_model

requires_rtx = pytest.mark.skipif(
    not tensorrt.is_installed("tensorrt-rtx"),
    reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)",
)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deit_tiny (64 px, patch 8, 9 idle layers) with index outputs, dynamic batch."""
    path = tmp_path_factory.mktemp("engines") / "tiny.onnx"
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)
    export_onnx(model, path, with_indices=True, verify_batch=0, progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_mixed(tiny_onnx: Path) -> Path:
    """The precision plan's mixed-precision graph of ``tiny_onnx`` (scoring path FP32)."""
    import onnx

    plan = plan_precision(onnx.load(tiny_onnx), FP16, Target.parse("tensorrt-rtx"))
    return write_mixed_onnx(tiny_onnx, plan, tiny_onnx.with_name("tiny_fp16_mixed.onnx"))
