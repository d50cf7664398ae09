"""ONNX Runtime sessions for exported graphs (CPU, or CUDA when onnxruntime-gpu and a GPU exist)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnxruntime as ort

from idlevit.errors import MissingDependencyError


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def create_session(
    onnx_path: str | os.PathLike[str],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
) -> ort.InferenceSession:
    """An inference session; graphs using the fused ``idlevit::IdleScatter`` op get its CPU reference."""
    missing = [p for p in providers if p not in available_providers()]
    if missing:
        raise MissingDependencyError(
            f"ONNX Runtime provider(s) {missing} are not available here (have {available_providers()}); "
            "install onnxruntime-gpu (pip install -e '.[gpu]') on a machine with a CUDA GPU"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    _register_custom_ops(options)
    return ort.InferenceSession(os.fspath(onnx_path), sess_options=options, providers=list(providers))


def _register_custom_ops(options: ort.SessionOptions) -> None:
    """Register the CPU reference of the toolkit's custom ops (no-op when they are unavailable)."""
    try:
        from plugins.idle_scatter.ort_op import register_custom_ops
    except ImportError:
        return
    register_custom_ops(options)
