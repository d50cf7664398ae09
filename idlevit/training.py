"""Training-time IdleViT: the masked idle layer, and the finetuning loop with its losses.

At inference an idle layer gathers the kept tokens and attends among them only. Training
keeps the sequence whole instead (so every layer sees a fixed shape and the attention map of
all tokens is at hand for the token cut loss): idle tokens are removed from attention by a
large negative bias on their key columns, and the block's two updates are multiplied by the
0/1 keep mask, so idle tokens pass through unchanged. Kept tokens compute exactly what the
inference forward computes. Token scores and the top-k come from the same
:func:`~idlevit.model.cls_token_scores` and :func:`~idlevit.model.select_tokens` that the
reference and export forwards use, so all three keep the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .losses import idlevit_loss
from .model import IdleViT, cls_token_scores, select_tokens
from .recipe import TrainConfig

#: Added to the attention logits of idle keys: exp() of it is exactly 0 in float32 and bfloat16.
MASK_BIAS = -1e9


@dataclass
class TrainOutput:
    """What the losses need from one training forward."""

    logits: Tensor
    cls_feature: Tensor  # final-norm CLS token (B, C), before the head
    kept: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, k+1), as the reference
    keep_masks: list[Tensor] = field(default_factory=list)  # (B, N+1) 0/1, CLS kept
    attn_maps: list[Tensor] = field(default_factory=list)  # (B, N+1, N+1) softmax of the head mean


def idle_block_train(model: IdleViT, block: Block, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One idle layer over the whole sequence: (x_out, kept, keep_mask, attention map W)."""
    dim, heads = model.cfg.embed_dim, block.attn.num_heads
    xn = block.norm1(x)
    scores, keys = cls_token_scores(block, xn)
    kept = select_tokens(scores, k)
    mask = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device).scatter(1, kept, 1.0)
    weight, bias = block.attn.qkv.weight, block.attn.qkv.bias
    q = F.linear(xn, weight[:dim], None if bias is None else bias[:dim])
    v = F.linear(xn, weight[2 * dim :], None if bias is None else bias[2 * dim :])
    q, keys, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, keys, v))
    logits = torch.matmul(q * block.attn.scale, keys.transpose(-2, -1))  # (B, H, T, T)
    attn_map = torch.softmax(logits.mean(dim=1), dim=-1)
    masked = torch.softmax(logits + (1.0 - mask)[:, None, None, :] * MASK_BIAS, dim=-1)
    attn_out = block.attn.proj(torch.matmul(masked, v).transpose(1, 2).flatten(2))
    keep = mask.unsqueeze(-1)
    y = model._residual(x, attn_out * keep)
    y = model._residual(y, block.mlp(block.norm2(y)) * keep)
    return y, kept, mask, attn_map


def forward_train(model: IdleViT, images: Tensor) -> TrainOutput:
    """Training forward: masked idle layers, plus what the cut loss and distillation read."""
    plan = model.idle_plan
    out = TrainOutput(logits=images.new_empty(0), cls_feature=images.new_empty(0))
    x = model.embed(images)
    for i, block in enumerate(model.blocks):
        if i in plan:
            x, out.kept[i], mask, attn_map = idle_block_train(model, block, x, plan[i])
            out.keep_masks.append(mask)
            out.attn_maps.append(attn_map)
        else:
            x = model.dense_block(block, x)
    out.cls_feature = model.norm(x)[:, 0]
    out.logits = model.head_logits(x)
    return out


def _batches(dataset: Dataset, cfg: TrainConfig, generator: torch.Generator, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(dataset) > cfg.batch_size,  # type: ignore[arg-type]
        generator=generator,
        num_workers=workers,
    )


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (edges replicated): cheap augmentation."""
    if max_shift <= 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def fit(
    model: IdleViT,
    train_set: Dataset,
    cfg: TrainConfig,
    teacher: IdleViT | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    workers: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place; return the mean loss terms of every epoch.

    With a ``teacher`` (a dense model, frozen) the loss distils from it; idle layers of
    ``model`` add the token cut loss ``cfg.cut_loss``. With ``cfg.ema_decay`` the model ends
    with the moving average of its weights. Seeded: the same call gives the same weights on the
    same CPU type and thread count. The progress bar (``progress``) shows on a terminal only.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = _batches(train_set, cfg, generator, workers)
    steps = cfg.epochs * len(loader)
    warmup = max(1, int(cfg.warmup_epochs * len(loader)))
    from timm.optim import param_groups_weight_decay  # lazy: timm's training helpers, for training only
    from timm.utils import ModelEmaV3  # lazy: as above

    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=("cls_token", "pos_embed"))
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    # timm's moving average with its warm-up ramp: averaging damps the last steps' noise, so the
    # result depends less on the exact order of float rounding than the final iterate does
    average = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        # disable=None: tqdm turns itself off when stderr is not a terminal (no \r spam in logs)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None if progress else True)
        for images, labels in bar:
            images = random_shift(images, cfg.max_shift, generator) if isinstance(images, Tensor) else images
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, warmup, cfg)
            with _autocast(cfg.bf16, images.device):
                out = forward_train(model, images)
                target = None
                if teacher is not None:
                    with torch.no_grad():
                        t_out = forward_train(teacher, images)
                    target = (t_out.logits.float(), t_out.cls_feature.float())
            loss, terms = idlevit_loss(
                out.logits.float(),
                out.cls_feature.float(),
                labels,
                [a.float() for a in out.attn_maps],
                [m.float() for m in out.keep_masks],
                target,
                cfg.cut_loss,
                cfg.weights,
                cfg.label_smoothing,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            step += 1
            if average is not None:
                average.update(model, step=step)
            terms = {"loss": loss.item(), **terms}
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
        means = {k: v / max(1, len(loader)) for k, v in sums.items()}
        history.append(means)
        if on_epoch is not None:
            on_epoch(epoch, means)
    if average is not None:
        model.load_state_dict(average.module.state_dict())
    return history


def _autocast(enabled: bool, device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """(logits, labels) batch by batch, in dataset order, with the model's reference forward."""
    model.eval()
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield model(images), labels


def top1(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` (reference forward, eval mode) on ``dataset``."""
    correct = total = 0
    for logits, labels in predict(model, dataset, batch_size):
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(1, total)
