"""What an exported ONNX file says about itself, in ``metadata_props``.

Every later stage (precision plan, engine build, validation, benchmarks, packaging) reads the
model's facts from here, so nothing downstream asks the user again or branches on arch.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import onnx

from idlevit.errors import ToolkitError
from idlevit.schedule import Schedule

PREFIX = "idlevit."


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def schedule(self) -> Schedule:
        return Schedule(tuple(self.idle_layers), tuple(self.keep_ratios))

    @property
    def data_config(self) -> dict[str, Any]:
        """Preprocessing the graph expects, in timm's data-config keys (as ``IdleViT.data_config``)."""
        return {
            "input_size": (3, self.img_size, self.img_size),
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` entries: ``idlevit.<field>`` -> JSON text."""
        return {PREFIX + key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ExportMetadata:
        known = {f.name for f in fields(cls)}
        values = {k[len(PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(PREFIX)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        if any(name not in values for name in required):
            raise ToolkitError("the ONNX file carries no IdleViT metadata; export it with `python -m export.onnx`")
        return cls(**{k: v for k, v in values.items() if k in known})


def write_metadata(model: onnx.ModelProto, meta: ExportMetadata) -> None:
    """Replace the model's IdleViT metadata entries with ``meta`` (other entries are kept)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> ExportMetadata:
    """Read the metadata of a loaded model or an ONNX file (weights are not loaded for files)."""
    if not isinstance(model, onnx.ModelProto):
        if not os.path.isfile(model):
            raise ToolkitError(f"ONNX file {str(model)!r} does not exist; export one with `python -m export.onnx`")
        model = onnx.load(os.fspath(model), load_external_data=False)
    return ExportMetadata.from_props({p.key: p.value for p in model.metadata_props})
