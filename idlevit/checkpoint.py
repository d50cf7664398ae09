"""Creating models and reading/writing checkpoints in the official IdleViT layout.

Official files are ``torch.save({"model": state_dict, "optimizer": ..., "epoch": ..., "args":
argparse.Namespace})``. They are pickles, so they are read with ``weights_only=True``; the one
non-tensor class official files carry (``argparse.Namespace``) is let through by an explicit
allow-list, and anything else that asks to run code is refused.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .bundled import DEMO_CHECKPOINT, DEMO_TEACHER, resolve_checkpoint_path  # noqa: F401 - re-exported
from .configs import DATA_KEYS, ArchConfig, check_data_config, get_arch, list_archs
from .errors import CheckpointError, UnsafeCheckpointError
from .fileio import atomic_write
from .model import IdleViT
from .schedule import resolve_schedule

#: Classes a checkpoint pickle may construct besides tensors and containers.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

#: Keys under which a checkpoint may hold its state dict, most specific first.
STATE_DICT_KEYS = ("model", "state_dict", "model_ema")


def create_model(
    arch: str | ArchConfig,
    keep_rate: float | None = None,
    idle_layers: Sequence[int] | None = None,
    keep_ratios: Sequence[float] | None = None,
    **overrides: Any,
) -> IdleViT:
    """Build a randomly initialised IdleViT (timm's ``create_model`` for this package).

    ``overrides`` change config fields such as ``img_size``, ``patch_size``, ``num_classes``,
    ``mean``/``std``; the schedule comes from ``keep_rate`` or the explicit lists.
    """
    cfg = get_arch(arch) if isinstance(arch, str) else arch
    cfg = cfg.with_overrides(**overrides)
    return IdleViT(cfg, resolve_schedule(cfg, keep_rate, idle_layers, keep_ratios))


#: How a ``torch.save`` file begins: a zip archive (PyTorch >= 1.6), or the legacy format's pickled magic number.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
ALLOWED = "tensors, containers and argparse.Namespace"


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file safely; return its state dict (``module.`` stripped) and the rest.

    Refused with one line each: a folder, a missing or empty file, bytes that are not a
    ``torch.save`` file, and a pickle that asks for a global outside the allow-list (named).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder, not a file; pass --ckpt PATH to a .pth file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass --ckpt PATH to a .pth file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(LEGACY_MAGIC))
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err.strerror or err}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path.name} is empty (0 bytes); download it again")
    if not (head.startswith(ZIP_MAGIC) or head == LEGACY_MAGIC):
        raise CheckpointError(
            f"{path.name} is not a PyTorch checkpoint (neither torch.save's zip format nor its legacy format); "
            "pass the .pth file the model was saved to"
        )
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says what matters
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(path, err)
        if refused:
            raise UnsafeCheckpointError(
                f"refused to load {path.name}: it asks to run {', '.join(refused)}, which is not on the "
                f"allow-list ({ALLOWED}); load only checkpoints from a trusted source, or re-save the weights "
                "as a plain state dict"
            ) from None
        raise CheckpointError(
            f"cannot read {path.name} as a PyTorch checkpoint ({_torch_reason(err)}); "
            "the file is truncated or corrupt: download it again"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {path.name} as a PyTorch checkpoint ({_first_line(err)}); "
            "the file is truncated or not a torch.save file: download it again"
        ) from None
    return split_checkpoint(obj, path.name)


def _refused_globals(path: Path, err: BaseException) -> list[str]:
    """The globals a refused pickle asked for: from torch's message, else from a scan of the archive."""
    named = re.findall(r"GLOBAL ([\w.]+)", str(err))
    if named:
        return list(dict.fromkeys(named))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only a better message is at stake; the load was refused already
        return []
    return [name for name in found if name not in {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}][:4]


def _torch_reason(err: BaseException) -> str:
    """The informative line of a weights-only refusal (torch wraps it in paragraphs of advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:") and line != "WeightsUnpickler error:":
            return line.removeprefix("WeightsUnpickler error:").strip()[:120]
    specific = [line for line in lines if "Unsupported" in line or "unsupported" in line]
    return (specific or lines or [type(err).__name__])[0][:120]


def split_checkpoint(obj: Any, name: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate the state dict from the extras of an official, wrapped or bare checkpoint."""
    extras: dict[str, Any] = {}
    state: Any = obj
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                extras = {k: v for k, v in obj.items() if k != key}
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{name} holds no state dict (expected {{'model': state_dict}} or a bare state dict of tensors)"
        )
    prefix = "module."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}, extras


def infer_arch(state: Mapping[str, torch.Tensor]) -> ArchConfig:
    """Identify the registered arch of a state dict from its tensor shapes, with its geometry.

    Embedding width, depth and stem kind pick the config; image size, patch size and class
    count are read off ``pos_embed``, the patch projection and ``head``.
    """
    if "cls_token" not in state or "pos_embed" not in state:
        raise CheckpointError("state dict has no cls_token/pos_embed; it is not a ViT checkpoint")
    check_geometry_tensors(state)
    embed = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    stem = "conv4" if "patch_embed.conv1.weight" in state else "patch"
    matches = [
        get_arch(n)
        for n in list_archs()
        if (get_arch(n).embed_dim, get_arch(n).depth, get_arch(n).stem) == (embed, depth, stem)
    ]
    if not matches:
        raise CheckpointError(
            f"no registered arch has width {embed}, depth {depth} and a {stem!r} stem; "
            f"known archs: {', '.join(list_archs())}"
        )
    return geometry_from_state(matches[0], state)


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ("," if tensor.dim() == 1 else "") + ")"


def check_geometry_tensors(state: Mapping[str, torch.Tensor]) -> None:
    """The tensors the geometry is read from have the shapes of a ViT: a (1, 1, width) CLS token, a
    (1, 1 + grid², width) position embedding, a 4-D patch projection and a head with at least one class."""
    cls_token, pos, proj = state.get("cls_token"), state.get("pos_embed"), state.get("patch_embed.proj.weight")
    head = state.get("head.weight")
    if cls_token is not None and (cls_token.dim() != 3 or cls_token.shape[:2] != (1, 1) or cls_token.shape[2] < 1):
        raise CheckpointError(f"the checkpoint's cls_token has shape {_shape(cls_token)}, not (1, 1, width)")
    if pos is not None:
        grid = math.isqrt(max(pos.shape[1] - 1, 0)) if pos.dim() == 3 else 0
        if pos.dim() != 3 or pos.shape[0] != 1 or grid < 1 or grid * grid != pos.shape[1] - 1:
            raise CheckpointError(
                f"the checkpoint's pos_embed has shape {_shape(pos)}, not (1, 1 + grid x grid patches, width)"
            )
    if proj is not None and (proj.dim() != 4 or proj.shape[-1] < 1 or proj.shape[-1] != proj.shape[-2]):
        raise CheckpointError(
            f"the checkpoint's patch_embed.proj.weight has shape {_shape(proj)}, not (width, channels, patch, patch)"
        )
    if head is not None and (head.dim() != 2 or head.shape[0] < 1):
        raise CheckpointError(
            f"the checkpoint's head.weight has shape {_shape(head)}, not (classes >= 1, width): "
            "the classifier has no classes; use a checkpoint with a trained head"
        )


def check_finite(state: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse NaN or infinite weights, naming the first tensor that holds any (an export would run, and lie)."""
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{name}: tensor {key} holds {bad} NaN or infinite value(s) of {tensor.numel()}; the weights are "
                    "corrupt (a diverged training run?): use another checkpoint"
                )


def geometry_from_state(cfg: ArchConfig, state: Mapping[str, torch.Tensor]) -> ArchConfig:
    """Override image size, patch size and class count with what the tensors say."""
    check_geometry_tensors(state)
    changes: dict[str, Any] = {}
    proj = state.get("patch_embed.proj.weight")
    if proj is not None:
        changes["patch_size"] = proj.shape[-1] * (2 if cfg.stem == "conv4" else 1)
    pos = state.get("pos_embed")
    if pos is not None:
        grid = math.isqrt(pos.shape[1] - 1)
        changes["img_size"] = grid * changes.get("patch_size", cfg.patch_size)
    head = state.get("head.weight")
    if head is not None:
        changes["num_classes"] = head.shape[0]
    return cfg.with_overrides(**changes)


def load_checkpoint(
    path: str | os.PathLike[str] | None,
    arch: str | None = None,
    keep_rate: float | None = None,
    idle_layers: Sequence[int] | None = None,
    keep_ratios: Sequence[float] | None = None,
) -> IdleViT:
    """Load an IdleViT from a checkpoint, strictly, in eval mode.

    ``path`` may be ``"demo"`` (or ``None``) for the bundled demo. The arch comes from
    ``arch``, else from the file's own ``arch`` entry, else from tensor shapes.
    Missing or unexpected keys raise one error that names them and the likely arch.
    """
    path = resolve_checkpoint_path(path)
    state, extras = read_checkpoint(path)
    check_finite(state, path.name)
    cfg = _config_for(state, extras, arch, path.name)
    model = create_model(cfg, keep_rate, idle_layers, keep_ratios)
    _load_strict(model, state, Path(path).name)
    return model.eval()


def _config_for(
    state: Mapping[str, torch.Tensor], extras: Mapping[str, Any], arch: str | None, name: str
) -> ArchConfig:
    data = extras.get("data_config", {})
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{name}: data_config is {type(data).__name__}, not a mapping of mean, std, ...")
    data_changes = check_data_config(data, name)
    recorded = extras.get("arch")
    if recorded is not None and not isinstance(recorded, str):
        raise CheckpointError(f"{name}: its arch entry is {type(recorded).__name__}, not an arch name; pass --arch")
    arch = arch or recorded
    cfg = geometry_from_state(get_arch(arch), state) if arch else infer_arch(state)
    return cfg.with_overrides(**data_changes)


def _load_strict(model: IdleViT, state: Mapping[str, torch.Tensor], name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        try:
            likely = infer_arch(state).name
        except CheckpointError:
            likely = "none of the registered archs"
        parts = [
            f"{label} {_few(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
            if keys
        ]
        raise CheckpointError(
            f"{name} does not fit arch {model.cfg.name!r} ({'; '.join(parts)}); "
            f"the checkpoint looks like {likely}: pass --arch {likely} or omit --arch"
        )
    model.load_state_dict(state, strict=True)


def save_checkpoint(model: IdleViT, path: str | os.PathLike[str], **extras: Any) -> Path:
    """Write ``{"model": state_dict, "arch": name, "data_config": ..., **extras}`` atomically."""
    cfg = model.cfg
    payload = {
        "model": model.state_dict(),
        "arch": cfg.name,
        "data_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.data_config.items() if k in DATA_KEYS
        },
        **extras,
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return Path(path)


def _few(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
