"""IdleViT: token-idling Vision Transformers, their checkpoints and schedules, and the artefact contract.

The names below load on first use (PEP 562), so that ``import idlevit.cli`` and the commands'
``--help`` do not pay for torch, and a host without PyTorch can use every name that needs none
(the demo's paths, configs, errors, I/O names, schedules).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "DEMO_CHECKPOINT": "bundled",
    "DEMO_TEACHER": "bundled",
    "create_model": "checkpoint",
    "infer_arch": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "resolve_checkpoint_path": "bundled",
    "save_checkpoint": "checkpoint",
    "ArchConfig": "configs",
    "get_arch": "configs",
    "list_archs": "configs",
    "register_arch": "configs",
    "CheckpointError": "errors",
    "ScheduleError": "errors",
    "ToolkitError": "errors",
    "UnsafeCheckpointError": "errors",
    "IdleViT": "model",
    "IMAGES": "names",
    "LOGITS": "names",
    "kept_indices_name": "names",
    "DEFAULT_KEEP_RATE": "schedule",
    "Schedule": "schedule",
    "resolve_schedule": "schedule",
}

__all__ = [
    "ArchConfig",
    "CheckpointError",
    "DEFAULT_KEEP_RATE",
    "DEMO_CHECKPOINT",
    "DEMO_TEACHER",
    "IMAGES",
    "IdleViT",
    "LOGITS",
    "Schedule",
    "ScheduleError",
    "ToolkitError",
    "UnsafeCheckpointError",
    "create_model",
    "get_arch",
    "infer_arch",
    "kept_indices_name",
    "list_archs",
    "load_checkpoint",
    "read_checkpoint",
    "register_arch",
    "resolve_checkpoint_path",
    "resolve_schedule",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from .bundled import DEMO_CHECKPOINT, DEMO_TEACHER, resolve_checkpoint_path
    from .checkpoint import create_model, infer_arch, load_checkpoint, read_checkpoint, save_checkpoint
    from .configs import ArchConfig, get_arch, list_archs, register_arch
    from .errors import CheckpointError, ScheduleError, ToolkitError, UnsafeCheckpointError
    from .model import IdleViT
    from .names import IMAGES, LOGITS, kept_indices_name
    from .schedule import DEFAULT_KEEP_RATE, Schedule, resolve_schedule


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
