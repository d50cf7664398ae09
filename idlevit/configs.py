"""Architecture configs and their registry (timm style: one entry per named model).

A config says everything the model code needs to build a backbone and its default idle
schedule; nothing outside this package branches on architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import ToolkitError, shown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The preprocessing a checkpoint's ``data_config`` records (timm's keys; ``input_size`` comes from the weights).
DATA_KEYS = ("mean", "std", "crop_pct", "interpolation")
#: Resize filters timm's transforms know by name.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
#: Largest image side a model may be built for: far above any published IdleViT (224 px), low enough that
#: a mistyped size is refused before its position embedding and N x N attention are allocated.
MAX_IMG_SIZE = 4096
#: Largest batch any flag or record may name: far above what a ViT runs at once (TensorRT profiles, Triton's
#: max_batch_size, parity batches), low enough that a mistyped batch is refused before it is allocated.
MAX_BATCH = 65536
#: Most CPU threads (or data loader workers) any flag may ask for: far above the cores of any machine this runs on,
#: low enough that a mistyped count is refused before a thread pool of that size is made.
MAX_THREADS = 1024


def check_threads(flag: str, value: int, low: int = 0) -> int:
    """A thread or worker count from a flag (``--threads``, ``--workers``): an integer in ``low``..:data:`MAX_THREADS`
    (``--threads 0``: the runtime's own choice, where a command allows it)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_THREADS:
        raise ToolkitError(f"{flag} {shown(value)} is not from {low} to {MAX_THREADS} (a count of CPU threads)")
    return value


def check_batch(flag: str, value: int, low: int = 1) -> int:
    """A batch size from a flag or a record: an integer in ``low``..:data:`MAX_BATCH`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_BATCH:
        raise ToolkitError(f"{flag} {shown(value)} is not a batch size from {low} to {MAX_BATCH}")
    return value


def check_size_flag(flag: str, value: int, limit: int = MAX_IMG_SIZE) -> int:
    """A pixel count given on a command line (``--img-size``, ``--patch-size``): an integer in 1..``limit``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ToolkitError(
            f"{flag} {shown(value)} is not a size in pixels from 1 to {limit}; the image size is a multiple of "
            "the patch size (224 px with 16 px patches for the published models)"
        )
    return value


def check_geometry(img_size: int, patch_size: int, where: str) -> None:
    """The image is a whole number of patches (at least one) and at most :data:`MAX_IMG_SIZE` pixels wide."""
    check_size_flag("patch size", patch_size)
    check_size_flag("image size", img_size)
    if img_size % patch_size:
        below = img_size // patch_size * patch_size
        nearest = [size for size in (below, below + patch_size) if 0 < size <= MAX_IMG_SIZE]
        raise ToolkitError(
            f"{where}: image size {img_size} px is not a multiple of the patch size {patch_size} px (the patches "
            f"would not cover the image); use {' or '.join(map(str, nearest))}"
        )


def data_config(
    img_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float, interpolation: str
) -> dict[str, Any]:
    """Preprocessing in timm's data-config keys: the one builder for models, checkpoints, graphs and digits."""
    return {
        "input_size": (3, img_size, img_size),
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "crop_pct": float(crop_pct),
        "interpolation": interpolation,
    }


def check_data_config(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``DATA_KEYS`` present in ``values``, checked: three finite means, three positive finite stds,
    a crop in (0, 1] and a known interpolation; a bad one raises naming the field and ``where``."""
    checked: dict[str, Any] = {}
    for key in ("mean", "std"):
        if key not in values:
            continue
        value = values[key]
        numbers = list(value) if isinstance(value, (list, tuple)) else None
        if (
            numbers is None
            or len(numbers) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)
            or (key == "std" and not all(v > 0 for v in numbers))
        ):
            want = "three positive finite numbers" if key == "std" else "three finite numbers"
            raise ToolkitError(f"{where}: data_config {key} is {shown(value)}, not {want} (one per RGB channel)")
        checked[key] = tuple(float(v) for v in numbers)
    if "crop_pct" in values:
        crop = values["crop_pct"]
        if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0.0 < crop <= 1.0:
            raise ToolkitError(f"{where}: data_config crop_pct is {shown(crop)}, not a number in (0, 1]")
        checked["crop_pct"] = float(crop)
    if "interpolation" in values:
        if values["interpolation"] not in INTERPOLATIONS:
            raise ToolkitError(
                f"{where}: data_config interpolation is {shown(values['interpolation'])}, "
                f"not one of {', '.join(INTERPOLATIONS)}"
            )
        checked["interpolation"] = values["interpolation"]
    return checked


def published_keep_ratios(keep_rate: float, count: int) -> tuple[float, ...]:
    """The published pattern: ``count`` idle layers in three equal groups kept at r, r², r³."""
    group = max(1, count // 3)
    return tuple(keep_rate ** (1 + i // group) for i in range(count))


@dataclass(frozen=True)
class ArchConfig:
    """Backbone hyper-parameters plus the published default idle schedule."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    idle_layers: tuple[int, ...]
    stem: str = "patch"  # "patch": one strided conv (DeiT); "conv4": LV-ViT's 3-conv + BN stem
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    skip_lam: float = 1.0  # residual branches are divided by this (LV-ViT: 2.0)
    aux_head: bool = False  # LV-ViT's token-labelling head, max-pooled over image tokens
    img_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 224 / 256
    interpolation: str = "bicubic"
    stem_channels: int = 64

    @property
    def num_tokens(self) -> int:
        """Image tokens (CLS excluded) at this config's image and patch size."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def data_config(self) -> dict[str, Any]:
        """Preprocessing the model expects (timm's data-config keys)."""
        return data_config(self.img_size, self.mean, self.std, self.crop_pct, self.interpolation)

    def default_keep_ratios(self, keep_rate: float) -> tuple[float, ...]:
        """The published ratios over this config's default idle layers."""
        return published_keep_ratios(keep_rate, len(self.idle_layers))

    def with_overrides(self, **changes: object) -> ArchConfig:
        """Copy with image size, patch size, classes or data config changed (e.g. from a checkpoint);
        a data config change is checked (:func:`check_data_config`) on every path."""
        changes = {k: v for k, v in changes.items() if v is not None}
        changes.update(check_data_config({k: v for k, v in changes.items() if k in DATA_KEYS}, f"arch {self.name}"))
        updated = replace(self, **changes)
        if "img_size" in changes or "patch_size" in changes:
            check_geometry(updated.img_size, updated.patch_size, f"arch {self.name}")
        return updated


_ARCHS: dict[str, ArchConfig] = {}


def register_arch(cfg: ArchConfig) -> ArchConfig:
    """Add a config to the registry; names are unique."""
    if cfg.name in _ARCHS:
        raise ValueError(f"arch {cfg.name!r} is already registered")
    _ARCHS[cfg.name] = cfg
    return cfg


def list_archs() -> list[str]:
    """Registered architecture names, in registration order."""
    return list(_ARCHS)


def get_arch(name: str) -> ArchConfig:
    """Look up a config by name; unknown names raise a one-line error listing the known ones."""
    try:
        return _ARCHS[name]
    except KeyError:
        raise ToolkitError(f"unknown arch {name!r}; choose one of: {', '.join(_ARCHS)}") from None


_DEIT_IDLE = tuple(range(3, 12))

register_arch(ArchConfig("deit_tiny", 192, 12, 3, 4.0, _DEIT_IDLE))
# deit_tiny at half width: the bundled demo's size (a few MB, trains in minutes on a 2-core CPU).
register_arch(ArchConfig("deit_micro", 96, 12, 3, 4.0, _DEIT_IDLE))
register_arch(ArchConfig("deit_small", 384, 12, 6, 4.0, _DEIT_IDLE))
register_arch(ArchConfig("deit_base", 768, 12, 12, 4.0, _DEIT_IDLE))
_LVVIT = dict(stem="conv4", qkv_bias=False, norm_eps=1e-5, skip_lam=2.0, aux_head=True)
register_arch(ArchConfig("lvvit_s", 384, 16, 6, 3.0, tuple(range(4, 16)), **_LVVIT))  # type: ignore[arg-type]
register_arch(ArchConfig("lvvit_m", 512, 20, 8, 3.0, tuple(range(5, 20)), **_LVVIT))  # type: ignore[arg-type]
