"""The JSON sidecar written beside every engine: what it was built from, for what, and how.

An engine file says nothing a user can read; the sidecar (``model.engine.json``) records the
runtime and version that built it, the GPU or target compute capabilities it runs on, the
precision plan, the optimization profiles, the IdleViT schedule (from the ONNX metadata) and
the sha256 of the ONNX and of the engine. The runtime checks it before loading an engine
(:func:`check_compatible`), so a mismatch is one clear sentence instead of a TensorRT crash.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write

SIDECAR_FORMAT = 1


class EngineMismatchError(ToolkitError):
    """An engine was built for another TensorRT, GPU or graph than the one at hand."""


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


@dataclass
class EngineSidecar:
    engine: str  # engine file name
    engine_sha256: str
    runtime: str  # "tensorrt" or "tensorrt-rtx"
    runtime_version: str
    gpu: dict[str, str] | None  # {"name", "compute_capability"} of the GPU that built it (full TensorRT)
    compute_capabilities: list[str]  # where the engine runs ("8.6", ...)
    precision_plan: dict[str, Any]
    profiles: list[dict[str, dict[str, list[int]]]]  # [{input: {"min", "opt", "max"}}]
    builder: dict[str, Any]  # optimization level, workspace, timing cache, strongly typed, pinned layers
    plugins: list[dict[str, str]]  # [{"file", "sha256"}]
    onnx: str  # the graph TensorRT parsed (the mixed-precision one for strongly typed FP16)
    onnx_sha256: str
    source_onnx: str  # the exported FP32 graph
    source_onnx_sha256: str
    idlevit: dict[str, Any]  # the export metadata: arch, schedule, k per layer, image size, mean/std, ...
    outputs: list[str] = field(default_factory=list)
    toolkit_version: str = ""
    built_at: str = ""
    format: int = SIDECAR_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | os.PathLike[str]) -> None:
        with atomic_write(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EngineSidecar:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ToolkitError(
                f"engine sidecar {os.fspath(path)!r} is missing; rebuild the engine with `python -m export.trt`"
            ) from None
        except ValueError as err:
            raise ToolkitError(f"engine sidecar {os.fspath(path)!r} is not JSON ({err}); rebuild the engine") from None
        if data.get("format") != SIDECAR_FORMAT:
            raise ToolkitError(f"engine sidecar {os.fspath(path)!r} has format {data.get('format')!r}; rebuild it")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def check_compatible(
    sidecar: EngineSidecar, runtime: str, runtime_version: str, gpu_compute_capability: str | None
) -> None:
    """Refuse an engine whose sidecar names another TensorRT or GPU than the running ones.

    TensorRT engines load only in the TensorRT version that built them, on a GPU of the same
    compute capability; TensorRT-RTX engines load in the same major.minor, on any of the
    compute capabilities they were built for.
    """
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
    if gpu_compute_capability is None:
        raise EngineMismatchError(f"{sidecar.engine} needs a CUDA GPU and none is visible here")
    if sidecar.compute_capabilities and gpu_compute_capability not in sidecar.compute_capabilities:
        raise EngineMismatchError(
            f"{sidecar.engine} runs on compute capability {', '.join(sidecar.compute_capabilities)} but this GPU is "
            f"{gpu_compute_capability}; {fix}"
            + (" --compute-capabilities " + gpu_compute_capability if sidecar.runtime == "tensorrt-rtx" else "")
        )


def current_gpu() -> dict[str, str] | None:
    """Name and compute capability ("8.9") of the visible CUDA GPU, or None (via torch, no TensorRT)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
