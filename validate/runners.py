"""Every backend is a Polygraphy runner with one contract, shared by validate/ and benchmarks/.

Contract: ``infer({"images": float32 (B, 3, H, W), normalised})`` returns an ordered dict with
``"logits"`` (B, classes) and, when the graph exports them, ``"kept_indices_<layer>"`` (B, k+1)
int64 with CLS (0) first; ``last_inference_time()`` is the seconds the backend itself took.

Backends: the PyTorch reference (:mod:`validate.reference`), ONNX Runtime (:mod:`validate.ort`)
and TensorRT (``engines.runtime.TrtEngineRunner``, imported only when an engine is given).
Adding one is a file with a ``BaseRunner`` subclass and a line in :func:`backend_runners`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from polygraphy.backend.base import BaseRunner

from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import sha256_file

from .ort import ORT_CHOICES, ort_runner, resolve_devices

TENSORRT = "tensorrt"


def tensorrt_runner(engine_path: str | os.PathLike[str]) -> BaseRunner:
    """``engines.runtime.TrtEngineRunner`` for a serialized engine, named ``tensorrt``."""
    if not Path(engine_path).is_file():
        raise ToolkitError(f"engine {os.fspath(engine_path)!r} does not exist; build one with `python -m export.trt`")
    try:
        from engines.runtime import TrtEngineRunner
    except ImportError as err:
        raise MissingDependencyError(
            f"the TensorRT runner cannot be loaded ({err}); install TensorRT (pip install -e '.[trt]') "
            "on a machine with a CUDA GPU, or leave out --engine"
        ) from None
    return TrtEngineRunner(os.fspath(engine_path), name=TENSORRT)


def engine_precision(engine_path: str | os.PathLike[str], onnx_path: str | os.PathLike[str]) -> str | None:
    """The precision an engine was built in, from its sidecar (None when it has none).

    Refuses an engine whose sidecar says it was built from another graph than ``onnx_path``
    (neither the exported graph nor the mixed-precision one made from it).
    """
    from engines.sidecar import EngineSidecar, sidecar_path  # plain JSON: no TensorRT import

    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    sidecar = EngineSidecar.read(path)
    if sha256_file(onnx_path) not in (sidecar.source_onnx_sha256, sidecar.onnx_sha256):
        raise ToolkitError(
            f"engine {Path(engine_path).name} was built from {sidecar.source_onnx!r}, not from "
            f"{os.fspath(onnx_path)!r} (sha256 differs); pass the ONNX the engine was built from"
        )
    precision = sidecar.precision_plan.get("precision")
    return str(precision) if precision else None


def backend_runners(
    onnx_path: str | os.PathLike[str] | None,
    engine_path: str | os.PathLike[str] | None = None,
    ort: str = "auto",
    threads: int = 0,
) -> list[BaseRunner]:
    """The deployed backends to check: ONNX Runtime on the ``ort`` device(s), TensorRT when an engine is given."""
    if threads < 0:
        raise ToolkitError(f"--threads {threads} must be >= 0 (0: the runtime's own choice)")
    runners: list[BaseRunner] = []
    if onnx_path is not None:
        runners += [ort_runner(onnx_path, device, threads) for device in resolve_devices(ort)]
    if engine_path is not None:
        runners.append(tensorrt_runner(engine_path))
    if not runners:
        raise ToolkitError(
            "no backend to run: give --onnx (ONNX Runtime) and/or --engine (TensorRT), not --ort none alone"
        )
    return runners


def add_backend_arguments(group: argparse._ArgumentGroup) -> None:
    """``--engine``, ``--ort`` and ``--threads``, as every command that runs backends takes them."""
    group.add_argument("--engine", default=None, help="TensorRT engine built from the ONNX (needs TensorRT and a GPU)")
    group.add_argument(
        "--ort",
        choices=ORT_CHOICES,
        default="auto",
        help="ONNX Runtime device: auto (CUDA when onnxruntime-gpu and a GPU exist, else CPU), cpu, cuda, "
        "both, or none (engine only) (default auto)",
    )
    group.add_argument(
        "--threads", type=int, default=0, help="CPU threads of ONNX Runtime and PyTorch (default: their own choice)"
    )
