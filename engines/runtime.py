"""Run a built engine: Polygraphy's ``TrtRunner``, plus the sidecar check, plugins and batches in chunks.

:class:`TrtEngineRunner` is a Polygraphy runner (``BaseRunner``), so ``validate/`` and
``benchmarks/`` drive TensorRT exactly like the PyTorch and ONNX Runtime backends. Activating it
checks the engine against this machine (:func:`check_runnable`: a CUDA GPU, the TensorRT that
built it, its compute capabilities, the engine's sha256), loads the plugin libraries its sidecar
names and activates Polygraphy's ``TrtRunner`` on it (:mod:`engines.tensorrt`, for ``tensorrt``
and ``tensorrt_rtx`` engines alike).

Contract (as every backend): ``infer({"images": float32 (B, 3, H, W)})`` returns an ordered dict
with ``"logits"`` (B, classes) and, when the graph exported them, ``"kept_indices_<layer>"``
(B, k+1) int64; ``last_inference_time()`` is the seconds ``TrtRunner`` took (its host-device
copies included). Batches larger than the profile's max run in chunks.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.names import IMAGES
from idlevit.sidecar import EngineSidecar, sidecar_path

from .compatibility import EngineMismatchError, check_compatible, require_gpu

#: Runner name of an engine in reports (validate/, benchmarks/).
TENSORRT = "tensorrt"


def check_runnable(engine_path: str | os.PathLike[str], verify_sha: bool = True) -> EngineSidecar:
    """The engine's sidecar, once it says the engine can run here; binds the TensorRT that built it.

    Without a CUDA GPU this is a :class:`~idlevit.errors.MissingDependencyError` (exit 3) before
    TensorRT loads; another TensorRT, GPU or changed engine file is an :class:`EngineMismatchError`.
    """
    from . import tensorrt as api  # lazy: TensorRT is optional

    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ToolkitError(f"engine {os.fspath(engine_path)!r} does not exist; build one with `python -m export.trt`")
    sidecar = EngineSidecar.read(sidecar_path(engine_path))
    compute_capability = require_gpu(sidecar)
    runtime = api.use_runtime(sidecar.runtime)
    check_compatible(sidecar, runtime.name, runtime.version, compute_capability)
    if verify_sha and sha256_file(engine_path) != sidecar.engine_sha256:
        raise EngineMismatchError(
            f"{engine_path.name} does not match its sidecar's sha256 (changed after the build?); rebuild it"
        )
    return sidecar


class TrtEngineRunner(BaseRunner):
    """Polygraphy's ``TrtRunner`` over an engine built by ``python -m export.trt``, checked and chunked."""

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        plugins: list[str] | None = None,
        name: str | None = None,
        verify_sha: bool = True,
    ) -> None:
        super().__init__(name=name or TENSORRT, prefix="trt-engine-runner")
        self.engine_path = Path(engine_path)
        self.plugins = plugins
        self.verify_sha = verify_sha
        self.sidecar: EngineSidecar | None = None
        self._trt: Any = None  # the active polygraphy.backend.trt.TrtRunner

    # ---- Polygraphy's runner protocol --------------------------------------------------------
    def activate_impl(self) -> None:
        from . import tensorrt as api  # lazy: TensorRT is optional

        self.sidecar = check_runnable(self.engine_path, self.verify_sha)
        plugins = self.plugins
        if plugins is None:
            plugins = [os.fspath(self.engine_path.parent / p["file"]) for p in self.sidecar.plugins]
        self._trt = api.engine_runner(self.engine_path.read_bytes(), plugins, name=f"{self.name}-trt")

    @property
    def active(self) -> Any:
        if self._trt is None:
            raise ToolkitError("the TensorRT runner is not active; use it as `with TrtEngineRunner(path) as runner:`")
        return self._trt

    def get_input_metadata_impl(self) -> Any:
        return self.active.get_input_metadata()

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        runner = self.active
        assert self.sidecar is not None
        profile = self.sidecar.profiles[0][IMAGES]
        low, high = profile["min"], profile["max"]
        images = np.ascontiguousarray(feed_dict[IMAGES], dtype=np.float32)
        if tuple(images.shape[1:]) != tuple(high[1:]):
            raise ToolkitError(f"images of shape {images.shape[1:]} do not fit the engine's {tuple(high[1:])}")
        chunks: list[dict[str, np.ndarray]] = []
        self.inference_time = 0.0
        for start in range(0, len(images), high[0]):
            chunk = images[start : start + high[0]]
            if len(chunk) < low[0]:
                raise ToolkitError(
                    f"batch {len(chunk)} is below the engine's --min-batch {low[0]}; rebuild with --min-batch 1"
                )
            outputs = runner.infer({IMAGES: chunk})
            chunks.append({name: np.array(array) for name, array in outputs.items()})  # TrtRunner reuses its buffers
            self.inference_time += runner.last_inference_time()
        return OrderedDict((name, np.concatenate([chunk[name] for chunk in chunks])) for name in chunks[0])

    def deactivate_impl(self) -> None:
        runner, self._trt = self._trt, None
        if runner is not None:
            runner.deactivate()


def tensorrt_runner(engine_path: str | os.PathLike[str]) -> TrtEngineRunner:
    """A runner over a serialized engine, named ``tensorrt``; refuses a missing file up front.

    Whether the engine can run here is checked when the runner is activated (:func:`check_runnable`).
    """
    if not Path(engine_path).is_file():
        raise ToolkitError(f"engine {os.fspath(engine_path)!r} does not exist; build one with `python -m export.trt`")
    return TrtEngineRunner(os.fspath(engine_path), name=TENSORRT)
