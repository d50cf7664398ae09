"""The model being packaged, and every fact the generated files need.

An exported ONNX carries its facts in its metadata (:mod:`idlevit.metadata`); an engine in its
JSON sidecar (:mod:`idlevit.sidecar`), beside the ONNX it was built from, whose inputs and
outputs the configs describe. Everything a user can get wrong here (a missing or foreign file,
a checkpoint instead of an export, a truncated sidecar, the wrong ONNX for an engine) is one
line that says what to do. A package vouches for what it carries, so an engine is packaged only
with the digests its sidecar records: its own, its source ONNX's and the graph TensorRT parsed
(the mixed-precision graph for FP16), each file checked against its digest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from idlevit.configs import MAX_BATCH
from idlevit.errors import ToolkitError
from idlevit.fileio import read_text, sha256_file
from idlevit.metadata import ExportMetadata, load_onnx, read_metadata
from idlevit.names import IMAGES, kept_indices_name
from idlevit.sidecar import REBUILD, SHA256, EngineSidecar, sidecar_path
from idlevit.state import given_or_last_export

from ..target import RUNTIMES, TENSORRT_RTX
from .layout import KIND_ONNX, KIND_RTX, KIND_TENSORRT

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


@dataclass
class TensorSpec:
    """One graph input or output: name, ONNX element type, dims without the batch axis (-1: dynamic)."""

    name: str
    elem_type: int
    dims: list[int]


@dataclass
class EngineFacts:
    """What an engine's sidecar says about where it runs."""

    runtime: str  # "tensorrt" or "tensorrt-rtx"
    runtime_version: str
    gpu: dict[str, str] | None  # the GPU that built it (full TensorRT)
    compute_capabilities: list[str]
    sidecar: Path
    record: dict  # the sidecar as written (a package carries it with its graph paths made relative)
    built_from: Path  # the graph TensorRT parsed (the sidecar's ``onnx``): the mixed-precision graph for FP16


@dataclass
class DeploySource:
    """The model being packaged and every fact the generated files need."""

    model: Path  # the file packaged (.onnx or engine)
    kind: str  # "onnx", "tensorrt" or "tensorrt-rtx"
    graph: Path  # the ONNX whose inputs and outputs are described (an engine's source ONNX)
    meta: ExportMetadata
    precision: str  # the engine's; for an ONNX, the one device engines are built with
    max_batch: int  # 0: the graph has a static batch (meta.batch)
    opt_batch: int
    plugins: list[Path] = field(default_factory=list)  # plugin libraries an engine was built with
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    engine: EngineFacts | None = None

    @property
    def uses_plugin(self) -> bool:
        return bool(self.meta.plugin or self.plugins)

    @property
    def is_engine(self) -> bool:
        return self.engine is not None


def graph_io(onnx_path: str | os.PathLike[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a graph (external weights are not loaded); the leading batch axis is dropped."""
    graph = load_onnx(onnx_path, load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return TensorSpec(value.name, tensor.elem_type, dims[1:])

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def read_sidecar(engine: Path) -> tuple[EngineSidecar, dict]:
    """The engine's sidecar, every field checked (:meth:`EngineSidecar.read`), and the JSON it was read from."""
    path = sidecar_path(engine)
    where = f"engine sidecar {os.fspath(path)!r}"
    if not path.is_file() and not path.exists():
        raise ToolkitError(
            f"{where} is missing (an engine is packaged with the sidecar `python -m export.trt` writes beside it); "
            f"{REBUILD}, or package the ONNX instead"
        )
    sidecar = EngineSidecar.read(path)
    if sidecar.runtime not in RUNTIMES:
        raise ToolkitError(f"{where}: runtime {sidecar.runtime!r} is not one of {', '.join(RUNTIMES)}; {REBUILD}")
    return sidecar, json.loads(read_text(path))


def _profile(sidecar: EngineSidecar, meta: ExportMetadata, where: str) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine's image profile, whose images are the metadata's (3, size, size)."""
    shapes = sidecar.profiles[0].get(IMAGES) if len(sidecar.profiles) == 1 else None
    if shapes is None:
        raise ToolkitError(f"{where}: profiles hold no single {IMAGES} min/opt/max profile; {REBUILD}")
    image = [3, meta.img_size, meta.img_size]
    for key in ("min", "opt", "max"):
        if len(shapes[key]) != 4 or shapes[key][1:] != image:
            raise ToolkitError(
                f"{where}: the {IMAGES} profile's {key} shape {shapes[key]} is not (batch, 3, {meta.img_size}, "
                f"{meta.img_size}) as its idlevit record says; {REBUILD}"
            )
    return shapes["min"][0], shapes["opt"][0], shapes["max"][0]


def _digest(sidecar: EngineSidecar, field_name: str, where: str) -> str:
    """A digest the package vouches with: present and well formed."""
    digest = getattr(sidecar, field_name)
    if not SHA256.match(digest):
        raise ToolkitError(
            f"{where}: field {field_name} is {digest!r}, not a sha256, so the package cannot vouch for the file; "
            f"{REBUILD}"
        )
    return digest


def _source_onnx(engine: Path, sidecar: EngineSidecar, given: str | os.PathLike[str] | None) -> Path:
    """The ONNX the engine was built from: ``given``, else the sidecar's path, else that name beside the engine."""
    if given:
        graph = Path(given)
        if not graph.is_file():
            raise ToolkitError(f"--onnx {os.fspath(graph)!r} does not exist; pass the ONNX the engine was built from")
    else:
        found = sidecar.find_graph("source_onnx", sidecar_path(engine))
        if found is None:
            raise ToolkitError(
                f"the ONNX {engine.name} was built from ({sidecar.source_onnx}) is not here; pass it with --onnx"
            )
        graph = found
    if sha256_file(graph) != sidecar.source_onnx_sha256:
        raise ToolkitError(
            f"{os.fspath(graph)!r} is not the ONNX {engine.name} was built from (its sha256 differs from the "
            "sidecar's source_onnx_sha256); pass that ONNX with --onnx"
        )
    return graph


def _read_engine(path: Path, given_onnx: str | os.PathLike[str] | None) -> DeploySource:
    sidecar, record = read_sidecar(path)
    where = f"engine sidecar {os.fspath(sidecar_path(path))!r}"
    _digest(sidecar, "engine_sha256", where)
    _digest(sidecar, "source_onnx_sha256", where)
    _digest(sidecar, "onnx_sha256", where)
    if path.stat().st_size == 0:
        raise ToolkitError(f"engine {os.fspath(path)!r} is empty (0 bytes); {REBUILD}")
    if sha256_file(path) != sidecar.engine_sha256:
        raise ToolkitError(
            f"{path.name}'s sha256 is not the one its sidecar records: the sidecar belongs to another build; {REBUILD}"
        )
    meta = ExportMetadata(**sidecar.idlevit)  # checked whole by EngineSidecar.read
    precision = sidecar.precision_plan["precision"]
    if not precision:
        raise ToolkitError(f"{where}: precision_plan.precision is {precision!r}, not a precision name; {REBUILD}")
    _, opt, high = _profile(sidecar, meta, where)
    graph = _source_onnx(path, sidecar, given_onnx)
    if sidecar.onnx_sha256 == sidecar.source_onnx_sha256:
        built_from = graph
    else:
        found = sidecar.find_graph("onnx", sidecar_path(path))
        if found is None:
            raise ToolkitError(
                f"the graph TensorRT parsed for {path.name} ({sidecar.onnx}, for {precision}) is not here; a package "
                "carries it for engines.infer's fallback: put it beside the engine (export.trt writes it there), "
                f"or {REBUILD}"
            )
        built_from = found
    facts = EngineFacts(
        runtime=sidecar.runtime,
        runtime_version=sidecar.runtime_version,
        gpu=sidecar.gpu,
        compute_capabilities=list(sidecar.compute_capabilities),
        sidecar=sidecar_path(path),
        record=record,
        built_from=built_from,
    )
    kind = KIND_RTX if sidecar.runtime == TENSORRT_RTX else KIND_TENSORRT
    max_batch, opt_batch = (0, meta.batch) if meta.batch else (high, opt)
    plugins = [path.parent / p["file"] for p in sidecar.plugins]
    return DeploySource(path, kind, graph, meta, precision, max_batch, opt_batch, plugins, engine=facts)


def read_source(
    model: str | os.PathLike[str] | None,
    source_onnx: str | os.PathLike[str] | None = None,
    max_batch: int = 32,
    precision: str | None = None,
) -> DeploySource:
    """Facts about an ONNX file, or an engine (from its sidecar and the ONNX it was built from).

    ``model`` None: the ONNX ``python -m export.onnx`` wrote last here. ``precision`` is the one
    the device engine will be built with (an ONNX's default: its own); an engine's is fixed.
    """
    path = given_or_last_export(model, "--onnx")
    where = os.fspath(path)
    if path.is_dir():
        raise ToolkitError(f"{where!r} is a folder; pass an exported .onnx or an engine with its .json sidecar")
    if not path.is_file():
        raise ToolkitError(f"{where!r} does not exist; pass an exported .onnx or an engine with its .json sidecar")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ToolkitError(
            f"{where!r} looks like a checkpoint; export it first (`python -m export.onnx --ckpt {where}`) "
            "and package the .onnx"
        )
    if path.suffix == ".onnx":
        if source_onnx:
            raise ToolkitError("a source ONNX is for an engine (the ONNX it was built from); drop it for an ONNX")
        meta = read_metadata(path)
        if not meta.batch and not 1 <= max_batch <= MAX_BATCH:
            raise ToolkitError(f"--max-batch {max_batch} must be >= 1 and <= {MAX_BATCH}")
        batch = 0 if meta.batch else max_batch
        source = DeploySource(path, KIND_ONNX, path, meta, meta.precision, batch, min(8, batch) or meta.batch)
    elif sidecar_path(path).is_file() or path.suffix in (".engine", ".plan", ".trt"):
        source = _read_engine(path, source_onnx)
    else:
        raise ToolkitError(
            f"{where!r} is neither an exported .onnx nor an engine with its .json sidecar; package what "
            "`python -m export.onnx` or `python -m export.trt` wrote"
        )
    if precision and precision != source.precision:
        if source.is_engine:
            raise ToolkitError(f"{path.name} is a {source.precision} engine; drop --precision or rebuild it")
        source.precision = precision
    source.inputs, source.outputs = graph_io(source.graph)
    # the exporter declares the kept-index outputs with a symbolic width; TopK's static k fixes it
    widths = {kept_indices_name(layer): k + 1 for layer, k in zip(source.meta.idle_layers, source.meta.keep_tokens)}
    for spec in source.outputs:
        if spec.name in widths and spec.dims[-1:] == [-1]:
            spec.dims[-1] = widths[spec.name]
    return source
