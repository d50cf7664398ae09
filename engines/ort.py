"""ONNX Runtime sessions for exported graphs (CPU, or CUDA when onnxruntime-gpu and a GPU exist)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import onnxruntime as ort
from polygraphy.backend.onnxrt import OnnxrtRunner

from idlevit.errors import MissingDependencyError

#: Execution provider of each device an ONNX Runtime runner can use.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def create_session(
    onnx_path: str | os.PathLike[str],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
    options: ort.SessionOptions | None = None,
    integer_kernels: bool = False,
) -> ort.InferenceSession:
    """An inference session; graphs using the fused ``idlevit::IdleScatter`` op get its CPU reference.

    ``options`` are a caller's base session options (e.g. profiling, thread spinning), completed here.
    A Q/DQ graph runs as written (each DequantizeLinear, then the FP32 op) unless ``integer_kernels``:
    ONNX Runtime's fused integer kernels are fast, but on CPUs without VNNI their u8 x s8 pair sums
    saturate, so their values depend on the CPU; written out, they are the quantized arithmetic itself
    (what TensorRT's INT8 computes, up to summation order) on every CPU. Checks judge that; only
    timings ask for the kernels.
    """
    missing = [p for p in providers if p not in available_providers()]
    if missing:
        raise MissingDependencyError(
            f"ONNX Runtime provider(s) {missing} are not available here (have {available_providers()}); "
            "install onnxruntime-gpu (pip install -e '.[gpu]') on a machine with a CUDA GPU"
        )
    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not integer_kernels:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    _register_custom_ops(options)
    return ort.InferenceSession(os.fspath(onnx_path), sess_options=options, providers=list(providers))


def _register_custom_ops(options: ort.SessionOptions) -> None:
    """Register the CPU reference of the toolkit's custom ops (no-op when they are unavailable)."""
    try:
        from plugins.idle_scatter.ort_op import register_custom_ops  # lazy: needs the optional onnxruntime-extensions
    except ImportError:
        return
    register_custom_ops(options)


def cuda_usable() -> bool:
    """onnxruntime-gpu is installed and a CUDA GPU is visible."""
    if PROVIDERS["cuda"] not in available_providers():
        return False
    from .compatibility import current_gpu  # lazy: asked of the CUDA driver only when onnxruntime-gpu is here

    return current_gpu() is not None


def providers_for(device: str) -> list[str]:
    """Execution providers of a device, CPU last as the fallback for ops the device lacks."""
    return [PROVIDERS[device]] + ([PROVIDERS["cpu"]] if device != "cpu" else [])


def ort_runner(
    onnx_path: str | os.PathLike[str],
    device: str = "cpu",
    threads: int = 0,
    options: Callable[[], ort.SessionOptions] | None = None,
    name: str | None = None,
    integer_kernels: bool = False,
) -> OnnxrtRunner:
    """A Polygraphy runner over :func:`create_session` (so the plugin's custom op is registered).

    Named ``onnxruntime-<device>`` unless ``name`` is given; a session is created each time the
    runner is activated, from fresh base options made by ``options`` (create_session completes the
    options it is given, and a custom-op library registered twice on one of them is refused).
    ``integer_kernels``: see :func:`create_session` (timings only).
    """
    providers = providers_for(device)

    def session() -> ort.InferenceSession:  # Polygraphy's loader: called on every activation
        return create_session(onnx_path, providers, threads, options() if options else None, integer_kernels)

    return OnnxrtRunner(session, name=name or f"onnxruntime-{device}")
