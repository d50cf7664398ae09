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
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

from .configs import MAX_BATCH
from .errors import ToolkitError, shown
from .fileio import atomic_write, find_recorded_file, read_text, sha256_file
from .metadata import ExportMetadata
from .records import record_from_dict

SIDECAR_FORMAT = 1
REBUILD = "rebuild the engine with `python -m export.trt`"
#: What a recorded sha256 is: 64 lowercase hex digits ("" where an older writer recorded none).
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
#: The graph fields a sidecar names a file in, each with its ``<field>_sha256``.
GRAPH_FIELDS = ("onnx", "source_onnx")
#: Largest dimension a profile may name (TensorRT's dims are 32-bit on every line this toolkit builds for).
MAX_DIM = 2**31 - 1


def plain_file_name(name: object) -> bool:
    """A file name with no folder in it: what the sidecar records for plugins (they sit beside the engine)."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and "\0" not in name
        and len(PurePath(name).parts) == 1
        and "/" not in name
        and "\\" not in name
    )


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
            data = json.loads(read_text(path))
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
        """What the type check cannot see: the keys readers index the dicts with, digests that are digests,
        profiles whose shapes can be built (min <= opt <= max, in range), plugins that sit beside the engine."""
        if not isinstance(self.precision_plan.get("precision"), str):
            raise ToolkitError(f"{where}: field precision_plan has no 'precision' text; {REBUILD}")
        for name in ("engine_sha256", "onnx_sha256", "source_onnx_sha256"):
            digest = getattr(self, name)
            if digest and not SHA256.match(digest):
                raise ToolkitError(f"{where}: field {name} is {shown(digest)}, not a sha256 (64 hex digits); {REBUILD}")
        for profile in self.profiles:
            for name, shapes in profile.items():
                if set(shapes) != {"min", "opt", "max"}:
                    raise ToolkitError(
                        f"{where}: profile of input {name!r} has {sorted(shapes)}, not min, opt and max; {REBUILD}"
                    )
                _check_profile(name, shapes["min"], shapes["opt"], shapes["max"], where)
        for plugin in self.plugins:
            if not plugin.get("file"):
                raise ToolkitError(f"{where}: a plugins entry has no 'file'; {REBUILD}")
            if not plain_file_name(plugin["file"]):
                raise ToolkitError(
                    f"{where}: plugin file {shown(plugin['file'])} is not a plain file name (a plugin library sits "
                    f"beside its engine); {REBUILD}"
                )
            digest = plugin.get("sha256", "")
            if digest and not SHA256.match(digest):
                raise ToolkitError(f"{where}: plugin {plugin['file']}'s sha256 is {shown(digest)}; {REBUILD}")

    def find_graph(self, which: str, sidecar_file: str | os.PathLike[str]) -> Path | None:
        """The graph the field ``which`` names (``onnx``: what TensorRT parsed, the mixed-precision graph for
        strongly typed FP16; ``source_onnx``: the exported FP32 graph), checked against ``<which>_sha256``.

        Found by :func:`idlevit.fileio.find_recorded_file`: a recorded path as it is when absolute, a relative
        one relative to the sidecar's folder (how a package records it) or to the working directory (how
        ``export.trt`` records it); then that file name beside the sidecar or in the working directory. The
        first file whose sha256 is the recorded one is returned; None when no candidate exists. A candidate
        with another sha256 (and none with the right one) is a one-line error, and so is a digest that is
        missing: a graph is trusted only by its hash.
        """
        if which not in GRAPH_FIELDS:
            raise ValueError(f"a sidecar names graphs in {GRAPH_FIELDS}, not {which!r}")
        recorded, digest = getattr(self, which), getattr(self, which + "_sha256")
        where = f"engine sidecar {os.fspath(sidecar_file)!r}"
        if not SHA256.match(digest):
            raise ToolkitError(
                f"{where} records no sha256 of its {which} ({recorded}), so it cannot be trusted; {REBUILD}"
            )
        # a package records its graphs relative to the sidecar, export.trt relative to the working directory
        lookup = find_recorded_file(recorded, digest, [Path(sidecar_file).parent, Path(".")])
        if lookup.changed is not None and lookup.found is None:
            raise ToolkitError(
                f"{os.fspath(lookup.changed)!r} is not the graph {self.engine} was built from ({which}: its sha256 is "
                f"not the sidecar's {digest[:12]}...); put that graph back, or {REBUILD}"
            )
        return lookup.found

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


def _check_profile(name: str, low: list[int], opt: list[int], high: list[int], where: str) -> None:
    """One input's optimization profile: shapes of one rank, every dim in 1..MAX_DIM (the batch in
    1..MAX_BATCH), and min <= opt <= max in every dim."""
    fix = f"; {REBUILD}"
    if not (len(low) == len(opt) == len(high)) or not low:
        raise ToolkitError(
            f"{where}: profile of input {name!r} has shapes of different ranks {low}, {opt}, {high}{fix}"
        )
    for label, shape in (("min", low), ("opt", opt), ("max", high)):
        if not all(1 <= dim <= MAX_DIM for dim in shape) or shape[0] > MAX_BATCH:
            raise ToolkitError(
                f"{where}: profile of input {name!r} has {label} shape {shown(shape)}, with a size outside "
                f"1..{MAX_DIM} or a batch above {MAX_BATCH}{fix}"
            )
    if any(not a <= b <= c for a, b, c in zip(low, opt, high)):
        raise ToolkitError(
            f"{where}: profile of input {name!r} is not min <= opt <= max in every dim (min {low}, opt {opt}, "
            f"max {high}){fix}"
        )
