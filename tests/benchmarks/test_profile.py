"""benchmarks.profile: ONNX Runtime's profiler summed per op type on an exported IdleViT."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.op_profile import profile_onnx
from export.exporter import export_onnx

from ..conftest import make_model


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "tiny.onnx"
    model = make_model("deit_tiny", img_size=32, patch_size=8, num_classes=10)
    export_onnx(model, path, verify_batch=0, progress=False)
    return path


def test_profile_sees_the_idle_layer_ops(tiny_onnx: Path) -> None:
    profile = profile_onnx(tiny_onnx, batch=2, runs=2, threads=1)
    idle_layers = 9  # deit_tiny's published schedule
    assert profile.count["TopK"] == idle_layers and profile.count["ScatterElements"] == idle_layers
    assert profile.count["GatherElements"] == 2 * idle_layers  # x and norm1(x) at the kept positions
    assert profile.total_ms > 0 and "MatMul" in profile.format()
