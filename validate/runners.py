"""The backends a check runs: every one a Polygraphy runner with one contract, shared with benchmarks/.

Contract: ``infer({"images": float32 (B, 3, H, W), normalised})`` returns an ordered dict with
``"logits"`` (B, classes) and, when the graph exports them, ``"kept_indices_<layer>"`` (B, k+1)
int64 with CLS (0) first; ``last_inference_time()`` is the seconds the backend itself took.

Backends: the PyTorch reference (:mod:`validate.reference`), ONNX Runtime (:mod:`engines.ort`)
and TensorRT (:mod:`engines.runtime`). Adding one is a file with a ``BaseRunner`` subclass and a
line in :func:`backend_runners`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from polygraphy.backend.base import BaseRunner
from polygraphy.logger import G_LOGGER

from engines.ort import cuda_usable, ort_runner
from engines.runtime import tensorrt_runner
from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.sidecar import EngineSidecar, sidecar_path

from .options import ORT_CHOICES


def engine_precision(engine_path: str | os.PathLike[str], onnx_path: str | os.PathLike[str]) -> str | None:
    """The precision an engine was built in, from its sidecar (None when it has none).

    Refuses an engine whose sidecar says it was built from another graph than ``onnx_path``
    (neither the exported graph nor the mixed-precision one made from it).
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    sidecar = EngineSidecar.read(path)
    sidecar.check_built_from(onnx_path)
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


@contextlib.contextmanager
def polygraphy_quiet(verbose: bool) -> Iterator[None]:
    """Polygraphy logs every comparison; keep its errors only unless asked (our report explains failures)."""
    with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL):
        yield


def resolve_devices(choice: str) -> list[str]:
    """Devices for an ``--ort`` choice: "auto" is CUDA when usable, else CPU."""
    if choice not in ORT_CHOICES:
        raise ToolkitError(f"unknown ONNX Runtime device {choice!r}; choose one of: {', '.join(ORT_CHOICES)}")
    if choice == "none":
        return []
    if choice == "auto":
        return ["cuda" if cuda_usable() else "cpu"]
    devices = ["cpu", "cuda"] if choice == "both" else [choice]
    if "cuda" in devices and not cuda_usable():
        raise MissingDependencyError(
            "ONNX Runtime on CUDA needs onnxruntime-gpu (pip install -e '.[gpu]') and a CUDA GPU; use --ort cpu here"
        )
    return devices
