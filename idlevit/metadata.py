"""What an exported ONNX file says about itself, in ``metadata_props``.

Every later stage (precision plan, engine build, validation, benchmarks, packaging) reads the
model's facts from here, so nothing downstream asks the user again or branches on arch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

import onnx

from .configs import MAX_BATCH, MAX_IMG_SIZE, check_data_config, data_config
from .errors import ToolkitError, shown
from .names import IMAGES, LOGITS
from .records import record_from_dict
from .schedule import Schedule

PREFIX = "idlevit."
REEXPORT = "export the graph again with `python -m export.onnx`"


@dataclass
class ExportMetadata:
    """Facts recorded in an exported graph. Lists/dicts are stored as JSON strings."""

    arch: str
    idle_layers: list[int]
    keep_ratios: list[float]
    keep_tokens: list[int]  # static k of every idle layer, in idle-layer order
    num_tokens: int  # image tokens N (CLS excluded)
    img_size: int
    num_classes: int
    mean: list[float]
    std: list[float]
    crop_pct: float
    interpolation: str
    opset: int
    toolkit_version: str
    checkpoint: str  # file name (never a path of the machine that exported it), "demo" or "random-init"
    checkpoint_sha256: str  # "" for random-init; with the name, how a later check finds the checkpoint
    with_indices: bool = False
    batch: int = 0  # 0: dynamic batch
    plugin: str = ""  # "" or the fused op ("idlevit::IdleScatter") the graph uses
    precision: str = "fp32"
    folded_normalization: bool = False  # True: the graph takes RGB pixels 0..255, mean/std folded into layer 1
    optimized_for: str = ""  # "" runs everywhere; "onnxruntime": holds ONNX Runtime's own ops, TensorRT cannot parse it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def schedule(self) -> Schedule:
        return Schedule(tuple(self.idle_layers), tuple(self.keep_ratios))

    @property
    def data_config(self) -> dict[str, Any]:
        """Preprocessing the *model* expects, in timm's data-config keys (as ``IdleViT.data_config``)."""
        return data_config(self.img_size, self.mean, self.std, self.crop_pct, self.interpolation)

    @property
    def input_config(self) -> dict[str, Any]:
        """Preprocessing of what the *graph* takes, in timm's data-config keys: what every feeder uses.

        The model's :attr:`data_config`, except that a graph with folded normalisation takes RGB
        pixels 0..255: mean 0 and std 1/255 (timm's ``(x - mean) / std`` on [0, 1] images then
        gives ``255 x``).
        """
        if not self.folded_normalization:
            return self.data_config
        return data_config(self.img_size, (0.0, 0.0, 0.0), (1 / 255,) * 3, self.crop_pct, self.interpolation)

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` entries: ``idlevit.<field>`` -> JSON text."""
        return {PREFIX + key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "the ONNX file") -> ExportMetadata:
        """Parse and check ``idlevit.*`` entries; a missing, non-JSON, mistyped or inconsistent field is named."""
        if not any(key.startswith(PREFIX) for key in props):
            raise ToolkitError(f"{where} carries no IdleViT metadata; export it with `python -m export.onnx`")
        values = {}
        for key, text in props.items():
            if key.startswith(PREFIX):
                try:
                    values[key[len(PREFIX) :]] = json.loads(text)
                except ValueError:
                    raise ToolkitError(
                        f"{where}: metadata field {key} is not JSON ({text[:40]!r}); {REEXPORT}"
                    ) from None
        meta = record_from_dict(cls, values, f"{where}'s IdleViT metadata", REEXPORT)
        meta.check(where)
        return meta

    def check(self, where: str) -> None:
        """The fields agree with each other (one k and one ratio per idle layer, sizes positive, data config sane)."""
        lengths = {len(self.idle_layers), len(self.keep_ratios), len(self.keep_tokens)}
        if len(lengths) != 1:
            raise ToolkitError(
                f"{where}: metadata idle_layers, keep_ratios and keep_tokens differ in length; {REEXPORT}"
            )
        for name in ("img_size", "num_classes", "num_tokens", "opset"):
            if getattr(self, name) < 1:
                raise ToolkitError(f"{where}: metadata field {name} is {getattr(self, name)}, not >= 1; {REEXPORT}")
        if any(not 1 <= k <= self.num_tokens for k in self.keep_tokens):
            raise ToolkitError(
                f"{where}: metadata keep_tokens {shown(self.keep_tokens)} are outside 1..{self.num_tokens}; {REEXPORT}"
            )
        if not 0 <= self.batch <= MAX_BATCH:
            raise ToolkitError(f"{where}: metadata field batch is {self.batch}, not in 0..{MAX_BATCH}; {REEXPORT}")
        if self.img_size > MAX_IMG_SIZE:
            raise ToolkitError(f"{where}: metadata field img_size is {self.img_size}, above {MAX_IMG_SIZE}; {REEXPORT}")
        grid = math.isqrt(self.num_tokens)
        if grid * grid != self.num_tokens or self.img_size % grid:
            raise ToolkitError(
                f"{where}: metadata num_tokens {self.num_tokens} is not a square grid of patches that divides "
                f"img_size {self.img_size}; {REEXPORT}"
            )
        if list(self.idle_layers) != sorted(set(self.idle_layers)) or any(layer < 0 for layer in self.idle_layers):
            raise ToolkitError(
                f"{where}: metadata idle_layers {shown(self.idle_layers)} are not increasing block indices; {REEXPORT}"
            )
        expected = [int(self.num_tokens * ratio) if 0 < ratio <= 1 else None for ratio in self.keep_ratios]
        if expected != list(self.keep_tokens):
            raise ToolkitError(
                f"{where}: metadata keep_tokens {shown(self.keep_tokens)} are not int(num_tokens x ratio) of its "
                f"keep_ratios {shown(self.keep_ratios)} and num_tokens {self.num_tokens}; {REEXPORT}"
            )
        check_data_config(asdict(self), f"{where}'s metadata")


def write_metadata(model: onnx.ModelProto, meta: ExportMetadata) -> None:
    """Replace the model's IdleViT metadata entries with ``meta`` (other entries are kept)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> ExportMetadata:
    """Read the metadata of a loaded model or an ONNX file (weights are not loaded for files).

    A file's graph is checked against what its metadata says it takes and gives (:func:`check_graph_io`),
    so that a renamed input or an edited image size is named here, not by ONNX Runtime later."""
    if isinstance(model, onnx.ModelProto):
        return ExportMetadata.from_props({p.key: p.value for p in model.metadata_props})
    proto = load_onnx(model, load_external_data=False)
    meta = ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, os.fspath(model))
    check_graph_io(proto.graph, meta, os.fspath(model))
    return meta


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input's or output's dims: sizes, or the symbolic name ('?' when it has none)."""
    dims: list[int | str] = []
    for dim in value.type.tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?"))
    return dims


def check_graph_io(graph: onnx.GraphProto, meta: ExportMetadata, where: str) -> None:
    """The graph takes ``images`` (B, 3, img_size, img_size) and gives ``logits`` (B, num_classes), as its
    metadata records: every feeder builds its batches from the metadata."""
    fix = "export the graph again with `python -m export.onnx`, or pass the file export wrote"
    initializers = {init.name for init in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    outputs = {v.name: v for v in graph.output}
    head = f"{where}'s graph does not match its idlevit.* metadata"
    if IMAGES not in inputs:
        raise ToolkitError(f"{head}: its inputs are {shown(sorted(inputs))}, not {IMAGES!r}; {fix}")
    if LOGITS not in outputs:
        raise ToolkitError(f"{head}: its outputs are {shown(sorted(outputs), 80)}, not {LOGITS!r} among them; {fix}")
    size, batch = meta.img_size, meta.batch or "batch"
    want_in: list[int | str] = [batch, 3, size, size]
    want_out: list[int | str] = [batch, meta.num_classes]
    for name, value, want in ((IMAGES, inputs[IMAGES], want_in), (LOGITS, outputs[LOGITS], want_out)):
        dims = _dims(value)
        fixed = [(got, expected) for got, expected in zip(dims, want) if isinstance(got, int) and got > 0]
        if len(dims) != len(want) or any(isinstance(e, int) and g != e for g, e in fixed):
            shape = "(" + ", ".join(map(str, dims)) + ")"
            expected = "(" + ", ".join(map(str, want)) + ")"
            raise ToolkitError(
                f"{head}: {name} has shape {shape}, but the metadata (img_size {size}, num_classes "
                f"{meta.num_classes}, batch {meta.batch or 'dynamic'}) gives {expected}; {fix}"
            )


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_data_files(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[Path]:
    """The files beside ``path`` that hold the model's external weights, each checked: a plain relative
    location inside the model's folder (ONNX Runtime refuses any other), present, and long enough for
    every tensor read from it. A bad one raises a one-line :class:`ToolkitError` naming it."""
    where = os.fspath(path)
    folder = Path(where).parent
    sizes: dict[str, int] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        pure = PurePath(location)
        fix = "keep the data file beside the .onnx under the name the model records, or export the graph again"
        if not location or "\0" in location or pure.is_absolute() or ".." in pure.parts:
            raise ToolkitError(
                f"{where!r} reads tensor {tensor.name!r} from external data {shown(location)}, which is not a file "
                f"inside the model's folder; {fix}"
            )
        try:
            end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        except ValueError:
            raise ToolkitError(
                f"{where!r}: tensor {tensor.name!r} has an external data offset or length that is not a number; "
                f"{REEXPORT}"
            ) from None
        sizes[location] = max(sizes.get(location, 0), end)
    files = []
    for location, needed in sizes.items():
        data = folder / location
        try:
            size = data.stat().st_size if data.is_file() else None
        except OSError:
            size = None
        if size is None:
            raise ToolkitError(
                f"{where!r} keeps its weights in {location!r}, which is not beside it ({os.fspath(data)!r} is missing "
                "or not a file); copy the data file along with the .onnx, or export the graph again"
            )
        if size < needed:
            raise ToolkitError(
                f"{where!r}'s external data {location!r} holds {size} bytes but its tensors need {needed}: the file "
                "is truncated or belongs to another export; copy it again, or export the graph again"
            )
        files.append(data)
    return files


def load_onnx(path: str | os.PathLike[str], load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with one-line errors for a missing file, a folder, and bytes that are not an ONNX model."""
    where = os.fspath(path)
    if os.path.isdir(where):
        raise ToolkitError(
            f"{where!r} is a folder, not an ONNX file; pass the .onnx file `python -m export.onnx` wrote"
        )
    if not os.path.isfile(where):
        raise ToolkitError(f"ONNX file {where!r} does not exist; export one with `python -m export.onnx`")
    try:
        model = onnx.load(where, load_external_data=False)
    except OSError as err:
        raise ToolkitError(f"cannot read {where!r}: {err.strerror or err}; check the file's permissions") from None
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors have no common base
        raise ToolkitError(
            f"{where!r} is not an ONNX model ({type(err).__name__}); it is truncated or another kind of file: "
            "export it again with `python -m export.onnx`"
        ) from None
    if not model.graph.node:
        raise ToolkitError(f"{where!r} holds no ONNX graph (is it empty or truncated?); export it again")
    if external_data_files(model, where) and load_external_data:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(where)))
        except OSError as err:
            raise ToolkitError(
                f"cannot read the external data of {where!r}: {err.strerror or err}; check the files' permissions"
            ) from None
    return model
