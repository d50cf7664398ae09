"""CPU reference of ``idlevit::IdleScatter`` for ONNX Runtime (onnxruntime-extensions Python op).

``out = tokens.copy(); out[b, idx[b, j], :] = updates[b, j, :]``; a negative index counts from
the end (idx + R), an index outside [-R, R) writes nothing, exactly as the CUDA kernel does (ONNX
ScatterElements would reject it; IdleViT graphs never produce one). Registered for FP32
tokens/updates and INT64 indices, the types the exported graphs carry; the TensorRT plugin also
takes FP16 and INT32.

An exception raised inside an onnxruntime-extensions Python op aborts the whole process, so the
op itself never raises: on inconsistent shapes it prints the reason to stderr and returns NaNs.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnxruntime as ort

from . import DOMAIN, OP_TYPE

_REGISTERED = False


def idle_scatter_reference(tokens: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """NumPy IdleScatter: a copy of ``tokens`` (B, R, C) with rows ``indices`` (B, K1) set to ``updates``."""
    if tokens.ndim != 3 or indices.ndim != 2 or updates.ndim != 3:
        raise ValueError(
            f"IdleScatter wants tokens (B,R,C), indices (B,K1), updates (B,K1,C); got "
            f"{tokens.shape}, {indices.shape}, {updates.shape}"
        )
    batch, rows, channels = tokens.shape
    if indices.shape[0] != batch or updates.shape != (batch, indices.shape[1], channels):
        raise ValueError(f"IdleScatter shapes disagree: {tokens.shape}, {indices.shape}, {updates.shape}")
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + rows, idx)
    valid = (idx >= 0) & (idx < rows)  # rows outside [-R, R) are skipped, as in the CUDA kernel
    out = np.array(tokens, copy=True)
    b = np.broadcast_to(np.arange(batch)[:, None], idx.shape)
    out[b[valid], idx[valid]] = updates[valid]
    return out


def ort_kernel(tokens: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """The body of the ONNX Runtime op: :func:`idle_scatter_reference` that reports instead of raising."""
    try:
        return idle_scatter_reference(tokens, indices, updates)
    except ValueError as err:
        print(f"idlevit::IdleScatter: {err}; returning NaNs", file=sys.stderr)
        return np.full(tokens.shape, np.nan, dtype=tokens.dtype)


def _declare_op() -> None:
    """Declare the Python op once per process (onnxruntime-extensions keeps a global op table)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op  # lazy: optional package

    @onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_float],
        outputs=[PyCustomOpDef.dt_float],
        attrs={"plugin_version": PyCustomOpDef.dt_string, "plugin_namespace": PyCustomOpDef.dt_string},
    )
    def idle_scatter(tokens: np.ndarray, indices: np.ndarray, updates: np.ndarray, **_plugin_attrs: str) -> np.ndarray:
        return ort_kernel(tokens, indices, updates)

    _REGISTERED = True


def register_custom_ops(options: ort.SessionOptions) -> None:
    """Make ``idlevit::IdleScatter`` available to sessions created with ``options``."""
    from onnxruntime_extensions import get_library_path  # lazy: optional package

    _declare_op()
    options.register_custom_ops_library(get_library_path())


def create_session(onnx_path: str | os.PathLike[str], threads: int = 0) -> ort.InferenceSession:
    """A CPU ONNX Runtime session that can run graphs holding ``idlevit::IdleScatter``."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    register_custom_ops(options)
    return ort.InferenceSession(os.fspath(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
