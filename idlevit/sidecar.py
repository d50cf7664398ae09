"""The JSON sidecar written beside every engine: what it was built from, for what, and how.

An engine file says nothing a user can read; the sidecar (``model.engine.json``) records the
runtime and version that built it, the GPU or target compute capabilities it runs on, the
precision plan, the optimization profiles, the IdleViT schedule (from the ONNX metadata) and
the sha256 of the ONNX and of the engine. This is its schema; ``engines.compatibility``
checks it before an engine is loaded, so a mismatch is one clear sentence instead of a
TensorRT crash.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ToolkitError
from .fileio import atomic_write

SIDECAR_FORMAT = 1


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
