"""Timing backends: the Polygraphy runners of ``validate/`` and ``engines/`` (one contract for every backend).

Each backend turns (model, its ONNX file, threads) into a runner; one that cannot run here (no
GPU, no onnxruntime-gpu, no TensorRT, no PyTorch) says why in one line instead of failing, so the
same benchmark command works on a CPU-only laptop, a GPU server and a device without PyTorch.
Runners return host arrays, so a timed ``infer`` includes finishing the device work. Nothing here
imports torch until a PyTorch runner is made.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
from polygraphy.backend.base import BaseRunner

from engines.compatibility import current_gpu
from engines.ort import cuda_usable, ort_runner
from engines.runtime import tensorrt_runner
from engines.target import TENSORRT_RTX

#: The eager reference every other backend's speed-up is measured against.
REFERENCE = "pytorch"
#: Why PyTorch rows are left out where torch is not installed.
NO_TORCH = "PyTorch is not installed here (the device side runs without it)"


@dataclass(frozen=True)
class Backend:
    """A named way to run a model: ``make(model, onnx_path, threads, max_batch)`` gives a runner.

    ``model`` is the PyTorch model (only the PyTorch backend uses it); ``onnx_path`` its export.
    """

    name: str
    make: Callable[[Any, Path, int, int], BaseRunner]
    unavailable: Callable[[], str | None]  # None when usable here, else why it is skipped


def ort_options(profile_prefix: str | None = None) -> ort.SessionOptions:
    """Session options for timing: worker threads spin during a run and stop when it returns.

    Spinning (ONNX Runtime's default) keeps the wake-up latency of every parallel op out of the
    run; by default the threads also go on spinning after it, and with several sessions (and
    PyTorch) interleaved on a few cores, a finished session's spinning steals the next one's
    cores, so the timings would measure the neighbours. ``session.force_spinning_stop`` ends
    the spinning when a run returns.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def _pytorch(model: Any, onnx_path: Path, threads: int, max_batch: int) -> BaseRunner:
    from validate.reference import TorchRunner  # lazy: torch only for PyTorch rows

    return TorchRunner(model, with_indices=False, threads=threads, name=REFERENCE)


def _onnxruntime(device: str) -> Callable[[Any, Path, int, int], BaseRunner]:
    def make(model: Any, onnx_path: Path, threads: int, max_batch: int) -> BaseRunner:
        return ort_runner(onnx_path, device, threads, ort_options, integer_kernels=True)

    return make


def _tensorrt(model: Any, onnx_path: Path, threads: int, max_batch: int) -> BaseRunner:
    """Build an FP32 engine through the library as ``python -m export.trt`` does (quietly), then load it.

    A TensorRT-RTX engine is built for this GPU's compute capability (its defaults may not include it).
    """
    from engines.builder import BuildOptions  # lazy: TensorRT is optional
    from engines.tensorrt import installed_runtimes  # lazy: as above
    from export.engine import export_engine  # lazy: as above

    gpu = current_gpu()
    rtx = installed_runtimes()[:1] == [TENSORRT_RTX]
    options = BuildOptions(
        min_batch=1,
        opt_batch=max_batch,
        max_batch=max_batch,
        compute_capabilities=[gpu["compute_capability"]] if rtx and gpu else [],
    )
    engine = export_engine(
        onnx_path, out=onnx_path.with_suffix(".engine"), options=options, trtcheck=False, echo=lambda _line: None
    )
    return tensorrt_runner(engine)


def engine_runner(engine: Path) -> BaseRunner:
    """A given engine's runner (its sidecar is checked when the runner is activated)."""
    return tensorrt_runner(engine)


def _no_torch() -> str | None:
    return None if importlib.util.find_spec("torch") is not None else NO_TORCH


def _no_cuda() -> str | None:
    return None if cuda_usable() else "needs onnxruntime-gpu and a CUDA GPU"


def _no_tensorrt() -> str | None:
    """Why the TensorRT backend cannot run here, in one line (None when it can)."""
    from engines.tensorrt import MISSING_TENSORRT, installed_runtimes  # lazy: TensorRT is optional

    if not installed_runtimes():
        return MISSING_TENSORRT
    if current_gpu() is None:
        return "TensorRT engines need a CUDA GPU and none is visible here"
    return None


BACKENDS: dict[str, Backend] = {
    REFERENCE: Backend(REFERENCE, _pytorch, _no_torch),
    "onnxruntime-cpu": Backend("onnxruntime-cpu", _onnxruntime("cpu"), lambda: None),
    "onnxruntime-cuda": Backend("onnxruntime-cuda", _onnxruntime("cuda"), _no_cuda),
    "tensorrt": Backend("tensorrt", _tensorrt, _no_tensorrt),
}
#: ONNX Runtime backends: the ones that time every graph variant and Q/DQ graphs.
ORT_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda")


def default_threads() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
