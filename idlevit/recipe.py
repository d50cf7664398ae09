"""What a training run is made of, without loading torch: loss weights, optimisation settings, the demo recipe.

``python -m idlevit.finetune`` reads its defaults from here before anything heavy loads;
:mod:`idlevit.training` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Token cut loss terms (:func:`idlevit.losses.token_cut_loss`); ``none`` turns it off.
CUT_LOSSES = ("both", "intra", "inter", "none")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the published recipe; the cut weight is divided by the idle-layer count."""

    kl: float = 5.0
    feature: float = 500.0
    cut: float = 10.0


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


#: The demo recipe (and the defaults of this command): a dense teacher from scratch, then the
#: IdleViT student finetuned from it with distillation and the token cut loss. Label smoothing
#: and a moving average of the weights make the outcome depend less on float rounding (CPU
#: type, thread count) and seed.
DENSE_RECIPE = TrainConfig(
    epochs=40, batch_size=32, lr=1e-3, warmup_epochs=1.0, max_shift=2, label_smoothing=0.1, ema_decay=0.995
)
STUDENT_RECIPE = TrainConfig(epochs=6, batch_size=32, lr=2e-4, warmup_epochs=0.25, max_shift=2, ema_decay=0.99)
DEMO_ARCH, DEMO_IMG_SIZE, DEMO_PATCH_SIZE = "deit_micro", 32, 4
