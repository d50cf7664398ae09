"""IdleViT: token-idling Vision Transformers, their checkpoints and schedules."""

from .checkpoint import (
    DEMO_CHECKPOINT,
    DEMO_TEACHER,
    create_model,
    infer_arch,
    load_checkpoint,
    read_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)
from .configs import ArchConfig, get_arch, list_archs, register_arch
from .errors import CheckpointError, ScheduleError, ToolkitError, UnsafeCheckpointError
from .model import IMAGES, LOGITS, IdleViT, kept_indices_name
from .schedule import DEFAULT_KEEP_RATE, Schedule, resolve_schedule

__version__ = "0.1.0"

__all__ = [
    "ArchConfig",
    "DEMO_CHECKPOINT",
    "DEMO_TEACHER",
    "resolve_checkpoint_path",
    "CheckpointError",
    "DEFAULT_KEEP_RATE",
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
    "resolve_schedule",
    "save_checkpoint",
]
