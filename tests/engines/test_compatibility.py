"""The sidecar round-trips, and a mismatched TensorRT or GPU is refused with a clear message."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from engines.compatibility import EngineMismatchError, check_compatible
from idlevit.errors import EXIT_MISSING_DEPENDENCY, MissingDependencyError, ToolkitError
from idlevit.metadata import ExportMetadata
from idlevit.sidecar import EngineSidecar, sidecar_path

#: What export.trt records from the ONNX: a deit_tiny at 64 px with two idle layers.
METADATA = ExportMetadata(
    arch="deit_tiny",
    idle_layers=[3, 4],
    keep_ratios=[0.7, 0.7],
    keep_tokens=[44, 44],
    num_tokens=64,
    img_size=64,
    num_classes=10,
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
    crop_pct=0.875,
    interpolation="bicubic",
    opset=17,
    toolkit_version="0.1.0",
    checkpoint="random-init",
    checkpoint_sha256="",
)


def _sidecar(runtime: str = "tensorrt", version: str = "10.13.0.35", ccs: tuple[str, ...] = ("8.9",)) -> EngineSidecar:
    return EngineSidecar(
        engine="m.engine",
        engine_sha256="0" * 64,
        runtime=runtime,
        runtime_version=version,
        gpu=None,
        compute_capabilities=list(ccs),
        precision_plan={"precision": "fp16"},
        profiles=[{"images": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}}],
        builder={},
        plugins=[],
        onnx="m.onnx",
        onnx_sha256="1" * 64,
        source_onnx="m.onnx",
        source_onnx_sha256="1" * 64,
        idlevit=asdict(METADATA),
    )


def test_round_trip(tmp_path: Path) -> None:
    path = sidecar_path(tmp_path / "m.engine")
    assert path.name == "m.engine.json"
    _sidecar().write(path)
    assert EngineSidecar.read(path) == _sidecar()


def test_missing_or_broken_sidecar(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="missing"):
        EngineSidecar.read(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ToolkitError, match="not JSON"):
        EngineSidecar.read(tmp_path / "bad.json")


def test_matching_engine_is_accepted() -> None:
    check_compatible(_sidecar(), "tensorrt", "10.13.0.35", "8.9")
    check_compatible(_sidecar("tensorrt-rtx", "1.7.1.116", ("8.6", "8.9")), "tensorrt-rtx", "1.7.0.0", "8.6")


@pytest.mark.parametrize(
    ("sidecar", "runtime", "version", "cc", "message"),
    [
        (_sidecar(), "tensorrt-rtx", "1.7.1", "8.9", "built with tensorrt but this is tensorrt-rtx"),
        (_sidecar(), "tensorrt", "10.12.0.36", "8.9", "TensorRT 10.13.0.35 but this is 10.12.0.36"),
        (_sidecar(), "tensorrt", "10.13.0.35", "9.0", "runs on compute capability 8.9 but this GPU is 9.0"),
        (_sidecar("tensorrt-rtx", "1.7.1"), "tensorrt-rtx", "1.8.0", "8.9", "TensorRT-RTX 1.7.1 but this is 1.8.0"),
    ],
)
def test_mismatches_are_refused(sidecar, runtime, version, cc, message) -> None:
    with pytest.raises(EngineMismatchError, match=message):
        check_compatible(sidecar, runtime, version, cc)


def test_no_gpu_is_a_missing_dependency() -> None:
    """Without a CUDA GPU no engine runs, whichever TensorRT built it: exit 3, naming the graph to run instead."""
    for sidecar in (_sidecar(), _sidecar("tensorrt-rtx", "1.7.1", ("8.6",))):
        with pytest.raises(MissingDependencyError, match="needs a CUDA GPU and none is visible here") as refused:
            check_compatible(sidecar, "tensorrt", "10.13.0.35", None)
        assert refused.value.exit_code == EXIT_MISSING_DEPENDENCY and "m.onnx" in str(refused.value)
