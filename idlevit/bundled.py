"""The bundled demo's files, and how ``--ckpt`` names a checkpoint: plain paths, no PyTorch.

A deployment host resolves ``--ckpt demo`` and the checkpoint an export records without
loading torch (``idlevit.checkpoint`` re-exports these for the PyTorch side).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError

#: The bundled demo: deit_micro (deit_tiny at half width) IdleViT, keep rate 0.7, finetuned on
#: scikit-learn's digits, and its dense teacher.
DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "idlevit_deit_micro_digits_ratio0.7.pth"
DEMO_TEACHER = Path(__file__).parent / "assets" / "deit_micro_digits_dense.pth"


def resolve_checkpoint_path(ckpt: str | os.PathLike[str] | None) -> Path:
    """``None`` or ``"demo"`` -> the bundled demo checkpoint; anything else is a path."""
    if ckpt is None or str(ckpt) == "demo":
        if not DEMO_CHECKPOINT.is_file():
            raise CheckpointError(
                f"the bundled demo checkpoint is missing ({DEMO_CHECKPOINT.name}); reinstall the package "
                "or rebuild it with `python -m idlevit.finetune --recipe demo`"
            )
        return DEMO_CHECKPOINT
    return Path(ckpt)
