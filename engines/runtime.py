"""Run a built engine: load it (with its plugins), check its sidecar, execute with dynamic batch.

:class:`TrtEngineRunner` is a Polygraphy runner (``BaseRunner``), so ``validate/`` and
``benchmarks/`` drive TensorRT exactly like the PyTorch and ONNX Runtime backends. Polygraphy's
own ``TrtRunner`` imports the ``tensorrt`` module only; this one goes through
:mod:`engines.tensorrt_api`, so it runs ``tensorrt`` and ``tensorrt_rtx`` engines alike.

Contract (as every backend): ``infer({"images": float32 (B, 3, H, W)})`` returns an ordered dict
with ``"logits"`` (B, classes) and, when the graph exported them, ``"kept_indices_<layer>"``
(B, k+1) int64; ``last_inference_time()`` is the seconds the engine took (device sync
included, host copies excluded). Batches larger than the profile's max run in chunks.
Device buffers and the CUDA stream are torch's (no other CUDA binding needed).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.names import IMAGES
from idlevit.sidecar import EngineSidecar, sidecar_path

from .compatibility import EngineMismatchError, check_compatible, current_gpu

#: Runner name of an engine in reports (validate/, benchmarks/).
TENSORRT = "tensorrt"


@dataclass
class _Active:
    """What an active runner holds: the engine, its execution context, the CUDA stream."""

    loaded: Any  # engines.tensorrt_api.LoadedEngine
    context: Any  # an IExecutionContext of the bound TensorRT
    stream: Any  # torch.cuda.Stream


def load_checked(engine_path: str | os.PathLike[str], plugins: list[str] | None = None, verify_sha: bool = True):
    """Read the sidecar, check it against the running TensorRT and GPU, deserialize the engine.

    Returns ``(sidecar, engines.tensorrt_api.LoadedEngine)``. ``plugins`` defaults to the
    libraries next to the engine that the sidecar names.
    """
    from . import tensorrt_api as api  # lazy: TensorRT is optional

    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ToolkitError(f"engine {os.fspath(engine_path)!r} does not exist; build one with `python -m export.trt`")
    sidecar = EngineSidecar.read(sidecar_path(engine_path))
    runtime = api.use_runtime(sidecar.runtime)
    gpu = current_gpu()
    check_compatible(sidecar, runtime.name, runtime.version, gpu["compute_capability"] if gpu else None)
    if verify_sha and sha256_file(engine_path) != sidecar.engine_sha256:
        raise EngineMismatchError(
            f"{engine_path.name} does not match its sidecar's sha256 (changed after the build?); rebuild it"
        )
    if plugins is None:
        plugins = [os.fspath(engine_path.parent / p["file"]) for p in sidecar.plugins]
    return sidecar, api.deserialize(engine_path.read_bytes(), plugins)


class TrtEngineRunner(BaseRunner):
    """Polygraphy runner over a serialized engine built by ``python -m export.trt``."""

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
        self._active: _Active | None = None

    # ---- Polygraphy's runner protocol --------------------------------------------------------
    def activate_impl(self) -> None:
        import torch  # lazy: CUDA buffers only once an engine runs

        self.sidecar, loaded = load_checked(self.engine_path, self.plugins, self.verify_sha)
        self._active = _Active(loaded, loaded.create_context(), torch.cuda.Stream())

    @property
    def active(self) -> _Active:
        if self._active is None:
            raise ToolkitError("the TensorRT runner is not active; use it as `with TrtEngineRunner(path) as runner:`")
        return self._active

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for tensor in self.active.loaded.io_tensors:
            if tensor.is_input:
                shape = tuple("batch" if d < 0 else d for d in tensor.shape)
                meta.add(tensor.name, DataType.from_dtype(tensor.dtype), shape)
        return meta

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        images = np.ascontiguousarray(feed_dict[IMAGES], dtype=np.float32)
        max_batch = self.active.loaded.profile_shape(IMAGES)[2][0]
        chunks = [self._run(images[i : i + max_batch]) for i in range(0, len(images), max_batch)]
        self.inference_time = sum(seconds for _, seconds in chunks)
        return OrderedDict((name, np.concatenate([out[name] for out, _ in chunks])) for name in chunks[0][0])

    def deactivate_impl(self) -> None:
        self._active = None

    # ---- one chunk -----------------------------------------------------------------------------
    def _run(self, images: np.ndarray) -> tuple[OrderedDict[str, np.ndarray], float]:
        import torch  # lazy: CUDA buffers only once an engine runs

        from . import tensorrt_api as api  # lazy: TensorRT is optional

        active = self.active
        low, _, high = active.loaded.profile_shape(IMAGES)
        if tuple(images.shape[1:]) != tuple(high[1:]):
            raise ToolkitError(f"images of shape {images.shape[1:]} do not fit the engine's {tuple(high[1:])}")
        if len(images) < low[0]:
            raise ToolkitError(
                f"batch {len(images)} is below the engine's --min-batch {low[0]}; rebuild with --min-batch 1"
            )
        device = torch.device("cuda")
        inputs = {IMAGES: torch.from_numpy(images).to(device)}
        shapes = api.output_shapes(active.loaded, active.context, {IMAGES: tuple(images.shape)})
        dtypes = {t.name: t.dtype for t in active.loaded.io_tensors}
        outputs = {
            name: torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtypes[name])).dtype, device=device)
            for name, shape in shapes.items()
        }
        addresses = {name: tensor.data_ptr() for name, tensor in {**inputs, **outputs}.items()}
        torch.cuda.current_stream().synchronize()  # the input copy is done before the engine reads it
        start = time.perf_counter()
        api.execute(active.context, addresses, active.stream.cuda_stream)
        active.stream.synchronize()
        seconds = time.perf_counter() - start
        return OrderedDict((name, tensor.cpu().numpy()) for name, tensor in outputs.items()), seconds


def tensorrt_runner(engine_path: str | os.PathLike[str]) -> TrtEngineRunner:
    """A runner over a serialized engine, named ``tensorrt``; refuses a missing file up front."""
    if not Path(engine_path).is_file():
        raise ToolkitError(f"engine {os.fspath(engine_path)!r} does not exist; build one with `python -m export.trt`")
    return TrtEngineRunner(os.fspath(engine_path), name=TENSORRT)
