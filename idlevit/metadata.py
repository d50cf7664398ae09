"""What an exported ONNX file says about itself, in ``metadata_props``.

Every later stage (precision plan, engine build, validation, benchmarks, packaging) reads the
model's facts from here, so nothing downstream asks the user again or branches on arch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from .configs import check_data_config, data_config
from .errors import ToolkitError
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
    checkpoint: str  # file name, "demo" or "random-init"
    checkpoint_sha256: str  # "" for random-init
    with_indices: bool = False
    batch: int = 0  # 0: dynamic batch
    plugin: str = ""  # "" or the fused op ("idlevit::IdleScatter") the graph uses
    precision: str = "fp32"
    checkpoint_path: str = ""  # where the checkpoint was read from (absolute; "" for the demo and random-init)
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
                f"{where}: metadata keep_tokens {self.keep_tokens} are outside 1..{self.num_tokens}; {REEXPORT}"
            )
        if self.batch < 0:
            raise ToolkitError(f"{where}: metadata field batch is {self.batch}, not >= 0; {REEXPORT}")
        check_data_config(asdict(self), f"{where}'s metadata")


def write_metadata(model: onnx.ModelProto, meta: ExportMetadata) -> None:
    """Replace the model's IdleViT metadata entries with ``meta`` (other entries are kept)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> ExportMetadata:
    """Read the metadata of a loaded model or an ONNX file (weights are not loaded for files)."""
    if isinstance(model, onnx.ModelProto):
        return ExportMetadata.from_props({p.key: p.value for p in model.metadata_props})
    proto = load_onnx(model, load_external_data=False)
    return ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, os.fspath(model))


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
        model = onnx.load(where, load_external_data=load_external_data)
    except OSError as err:
        raise ToolkitError(f"cannot read {where!r}: {err.strerror or err}; check the file's permissions") from None
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors have no common base
        raise ToolkitError(
            f"{where!r} is not an ONNX model ({type(err).__name__}); it is truncated or another kind of file: "
            "export it again with `python -m export.onnx`"
        ) from None
    if not model.graph.node:
        raise ToolkitError(f"{where!r} holds no ONNX graph (is it empty or truncated?); export it again")
    return model
