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

from .errors import ToolkitError, shown
from .fileio import atomic_write, sha256_file
from .metadata import ExportMetadata
from .records import record_from_dict

SIDECAR_FORMAT = 1
REBUILD = "rebuild the engine with `python -m export.trt`"


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
        """Read and check a sidecar: every field of its type (named when not), the IdleViT metadata whole."""
        where = f"engine sidecar {os.fspath(path)!r}"
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ToolkitError(f"{where} is missing; {REBUILD}") from None
        except OSError as err:
            raise ToolkitError(f"cannot read {where}: {err.strerror or err}; {REBUILD}") from None
        except ValueError as err:  # UnicodeDecodeError included
            raise ToolkitError(f"{where} is not JSON ({shown(err, 80)}); {REBUILD}") from None
        if isinstance(data, dict) and data.get("format") != SIDECAR_FORMAT:
            raise ToolkitError(
                f"{where} has format {shown(data.get('format'), 80)}, not {SIDECAR_FORMAT} (another toolkit version?); "
                f"{REBUILD}"
            )
        sidecar = record_from_dict(cls, data, where, REBUILD)
        meta = record_from_dict(ExportMetadata, sidecar.idlevit, f"{where}, field idlevit", REBUILD)
        meta.check(f"{where}, field idlevit")
        sidecar.idlevit = asdict(meta)  # known fields only: ExportMetadata(**sidecar.idlevit) holds
        sidecar._check_fields(where)
        return sidecar

    def _check_fields(self, where: str) -> None:
        """What the type check cannot see: the keys readers index the dicts with."""
        if not isinstance(self.precision_plan.get("precision"), str):
            raise ToolkitError(f"{where}: field precision_plan has no 'precision' text; {REBUILD}")
        for profile in self.profiles:
            for name, shapes in profile.items():
                if set(shapes) != {"min", "opt", "max"}:
                    raise ToolkitError(
                        f"{where}: profile of input {name!r} has {sorted(shapes)}, not min, opt and max; {REBUILD}"
                    )
        for plugin in self.plugins:
            if not plugin.get("file"):
                raise ToolkitError(f"{where}: a plugins entry has no 'file'; {REBUILD}")

    def check_built_from(self, onnx_path: str | os.PathLike[str]) -> None:
        """Refuse an ONNX that is not the graph this engine was built from (nor its mixed-precision graph),
        naming both files and their sha256 prefixes."""
        digest = sha256_file(onnx_path)
        if digest in (self.source_onnx_sha256, self.onnx_sha256):
            return
        given, built = Path(onnx_path), Path(self.source_onnx)
        fix = "pass the ONNX the engine was built from, or rebuild the engine from this one with `python -m export.trt`"
        if given.resolve() == built.resolve() or (given.name == built.name and not built.is_file()):
            raise ToolkitError(
                f"{os.fspath(onnx_path)} changed after engine {self.engine} was built from it: sha256 "
                f"{digest[:12]}... now, {self.source_onnx_sha256[:12]}... at the build; {fix}"
            )
        raise ToolkitError(
            f"engine {self.engine} was built from {self.source_onnx} (sha256 {self.source_onnx_sha256[:12]}...), "
            f"not from {os.fspath(onnx_path)} (sha256 {digest[:12]}...); {fix}"
        )
