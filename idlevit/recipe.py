"""What a training run is made of, without loading torch: loss weights, optimisation settings, the demo recipe.

``python -m idlevit.finetune`` reads its defaults from here before anything heavy loads;
:mod:`idlevit.training` runs them.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

from .configs import MAX_BATCH
from .errors import ToolkitError, shown

#: Token cut loss terms (:func:`idlevit.losses.token_cut_loss`); ``none`` turns it off.
CUT_LOSSES = ("both", "intra", "inter", "none")


#: The flag of ``python -m idlevit.finetune`` that sets a :class:`TrainConfig` field, for error messages.
FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "max_shift": "--max-shift",
    "seed": "--seed",
    "cut_loss": "--cut-loss",
}
#: Most epochs a run may ask for: far beyond any recipe (the published one is 30).
MAX_EPOCHS = 100_000
MAX_SEED = 2**63 - 1


def _refuse(name: str, value: object, want: str) -> None:
    raise ToolkitError(f"{FLAGS.get(name, 'training setting ' + name)} {shown(value)} is not {want}")


def _number(name: str, value: object, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """A finite number in [low, high] ((low, high] when ``low_open``)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low < value if low_open else low <= value)
        and value <= high
    )
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        _refuse(name, value, f"a finite number {bound}" + ("" if math.isinf(high) else f" and <= {high:g}"))


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _refuse(name, value, f"an integer from {low} to {high}")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the published recipe; the cut weight is divided by the idle-layer count."""

    kl: float = 5.0
    feature: float = 500.0
    cut: float = 10.0

    def __post_init__(self) -> None:
        for name in ("kl", "feature", "cut"):
            _number(f"loss weight {name}", getattr(self, name), 0.0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (AdamW, linear warm-up then cosine, per step)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float | None = 1.0
    cut_loss: str = "both"
    seed: int = 0
    max_shift: int = 0  # random translation in pixels (tensor datasets only), 0 = none
    bf16: bool = False  # bfloat16 autocast for matmuls (weights and updates stay float32)
    label_smoothing: float = 0.0  # of the cross-entropy term
    ema_decay: float = 0.0  # > 0: the trained model ends with this exponential moving average of its weights
    weights: LossWeights = LossWeights()

    def __post_init__(self) -> None:
        """Every setting in range, whoever made it (flags, a recipe, a test): a NaN learning rate or zero
        epochs would train nothing (or diverge) and still write a checkpoint."""
        _integer("epochs", self.epochs, 1, MAX_EPOCHS)
        _integer("batch_size", self.batch_size, 1, MAX_BATCH)
        _number("lr", self.lr, 0.0, low_open=True)
        _number("min_lr", self.min_lr, 0.0, self.lr)
        _number("weight_decay", self.weight_decay, 0.0)
        _number("warmup_epochs", self.warmup_epochs, 0.0)
        if self.clip_grad is not None:
            _number("clip_grad", self.clip_grad, 0.0, low_open=True)
        if self.cut_loss not in CUT_LOSSES:
            _refuse("cut_loss", self.cut_loss, "one of " + ", ".join(CUT_LOSSES))
        _integer("seed", self.seed, 0, MAX_SEED)
        _integer("max_shift", self.max_shift, 0, 64)
        _number("label_smoothing", self.label_smoothing, 0.0, 0.99)
        _number("ema_decay", self.ema_decay, 0.0, 0.9999)


#: The demo recipe (and the defaults of this command): a dense teacher from scratch, then the
#: IdleViT student finetuned from it with distillation and the token cut loss. Label smoothing
#: and a moving average of the weights make the outcome depend less on float rounding (CPU
#: type, thread count) and seed.
DENSE_RECIPE = TrainConfig(
    epochs=40, batch_size=32, lr=1e-3, warmup_epochs=1.0, max_shift=2, label_smoothing=0.1, ema_decay=0.995
)
STUDENT_RECIPE = TrainConfig(epochs=6, batch_size=32, lr=2e-4, warmup_epochs=0.25, max_shift=2, ema_decay=0.99)
DEMO_ARCH, DEMO_IMG_SIZE, DEMO_PATCH_SIZE = "deit_micro", 32, 4


def train_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """``base`` with what ``python -m idlevit.finetune``'s flags change, every value checked."""
    changes = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "max_shift": args.max_shift,
    }
    changed = {k: v for k, v in changes.items() if v is not None}
    if "lr" in changed and math.isfinite(changed["lr"]) and changed["lr"] > 0:
        changed["min_lr"] = min(base.min_lr, changed["lr"])  # the cosine's floor stays below a smaller peak
    return replace(base, **changed, cut_loss=args.cut_loss, seed=args.seed, bf16=args.bf16 or base.bf16)
