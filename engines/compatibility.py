"""Whether an engine can run here: its sidecar against the visible GPU and the running TensorRT."""

from __future__ import annotations

import ctypes

from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.sidecar import EngineSidecar


class EngineMismatchError(ToolkitError):
    """An engine was built for another TensorRT, GPU or graph than the one at hand."""


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def check_compatible(
    sidecar: EngineSidecar, runtime: str, runtime_version: str, gpu_compute_capability: str | None
) -> None:
    """Refuse an engine whose sidecar names another TensorRT or GPU than the running ones.

    TensorRT engines load only in the TensorRT version that built them, on a GPU of the same
    compute capability; TensorRT-RTX engines load in the same major.minor, on any of the
    compute capabilities they were built for. No GPU at all is a missing dependency (exit 3).
    """
    if gpu_compute_capability is None:
        raise no_gpu(sidecar)
    fix = "rebuild it here with `python -m export.trt`"
    if sidecar.runtime != runtime:
        raise EngineMismatchError(f"{sidecar.engine} was built with {sidecar.runtime} but this is {runtime}; {fix}")
    if sidecar.runtime == "tensorrt-rtx":
        if _major_minor(sidecar.runtime_version) != _major_minor(runtime_version):
            raise EngineMismatchError(
                f"{sidecar.engine} was built with TensorRT-RTX {sidecar.runtime_version} but this is "
                f"{runtime_version}; {fix}"
            )
    elif sidecar.runtime_version != runtime_version:
        raise EngineMismatchError(
            f"{sidecar.engine} was built with TensorRT {sidecar.runtime_version} but this is {runtime_version}; {fix}"
        )
    if sidecar.compute_capabilities and gpu_compute_capability not in sidecar.compute_capabilities:
        raise EngineMismatchError(
            f"{sidecar.engine} runs on compute capability {', '.join(sidecar.compute_capabilities)} but this GPU is "
            f"{gpu_compute_capability}; {fix}"
            + (" --compute-capabilities " + gpu_compute_capability if sidecar.runtime == "tensorrt-rtx" else "")
        )


def no_gpu(sidecar: EngineSidecar) -> MissingDependencyError:
    """Running an engine needs a CUDA GPU (exit 3 without one)."""
    return MissingDependencyError(
        f"TensorRT engine {sidecar.engine} needs a CUDA GPU and none is visible here; run it on a machine with an "
        f"NVIDIA GPU, or run the graph it was built from ({sidecar.onnx}) in ONNX Runtime"
    )


def require_gpu(sidecar: EngineSidecar) -> str:
    """The visible GPU's compute capability; :func:`no_gpu`'s error without one (asked before TensorRT loads)."""
    gpu = current_gpu()
    if gpu is None:
        raise no_gpu(sidecar)
    return gpu["compute_capability"]


def current_gpu() -> dict[str, str] | None:
    """Name and compute capability ("8.9") of the first visible CUDA GPU, or None.

    Asked of the CUDA driver itself (``libcuda``, through ctypes), so neither TensorRT nor PyTorch
    is loaded to answer; ``CUDA_VISIBLE_DEVICES`` applies as everywhere. No driver, no GPU or a
    driver that fails to initialise all mean: none here.
    """
    driver = _cuda_driver()
    if driver is None:
        return None
    count, device, major, minor = (ctypes.c_int(0) for _ in range(4))
    name = ctypes.create_string_buffer(256)
    try:
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return None
        if driver.cuDeviceGet(ctypes.byref(device), 0) != 0:
            return None
        for value, attribute in ((major, _CC_MAJOR), (minor, _CC_MINOR)):
            if driver.cuDeviceGetAttribute(ctypes.byref(value), attribute, device) != 0:
                return None
        driver.cuDeviceGetName(name, len(name), device)
    except (AttributeError, OSError):  # a stub or broken libcuda
        return None
    return {"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}


#: ``CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`` / ``_MINOR`` of the CUDA driver API.
_CC_MAJOR, _CC_MINOR = 75, 76


def _cuda_driver() -> ctypes.CDLL | None:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None
