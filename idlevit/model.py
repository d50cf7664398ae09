"""IdleViT: a ViT whose idle layers update only the top-k tokens by CLS attention.

One module, two forwards over the same weights:

* :meth:`IdleViT.forward` is the **reference**: eager PyTorch, the inference semantics of the
  published model (advanced indexing, in-place write-back). It is the ground truth.
* :meth:`IdleViT.forward_export` is the **export** forward: the same maths written with
  ops that trace to a clean, batch-dynamic ONNX graph: TopK with a static k, GatherElements
  and ScatterElements over one int64 index tensor per idle layer, no in-place writes.

The backbone is made of timm's ``Block`` (so checkpoint keys are timm's) and timm's
``PatchEmbed`` or LV-ViT's convolution stem (:mod:`idlevit.stem`).
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .configs import ArchConfig
from .names import LOGITS, kept_indices_name
from .schedule import Schedule
from .stem import ConvStem, fold_pixel_normalization


def cls_token_scores(block: Block, xn: Tensor) -> tuple[Tensor, Tensor]:
    """Score every image token by the CLS query, averaged over heads; also return all keys.

    The head-mean of per-head dot products equals the full-width dot product divided by the
    head count, so one (B, 1, C) x (B, C, N) product gives the (B, N) scores. The CLS column is
    excluded. Keys are computed once for all tokens and reused by the attention.
    """
    dim = block.attn.qkv.in_features  # a Python int: weight slices fold to constants on export
    weight, bias = block.attn.qkv.weight, block.attn.qkv.bias
    q_cls = F.linear(xn[:, :1], weight[:dim], None if bias is None else bias[:dim])
    keys = F.linear(xn, weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
    scores = torch.matmul(q_cls, keys[:, 1:].transpose(1, 2)).flatten(1) / block.attn.num_heads
    return scores, keys


def cls_ranking_scores(block: Block, xn: Tensor) -> Tensor:
    """Scores of all N+1 tokens (B, N+1) that rank image tokens as :func:`cls_token_scores` does.

    The export's scoring. ``q_cls . (W_k x + b_k) = (q_cls W_k) . x + q_cls . b_k``: the CLS
    query is folded into the key weights once (C x C per image), so ranking N tokens costs
    N x C instead of the N x C x C key projection; keys are then computed for the kept tokens
    only. The ``q_cls . b_k`` term and the 1/heads of the head mean are the same for every
    token of an image, so they are left out: in exact arithmetic they cannot reorder tokens.
    Column 0 (CLS) is kept so that no copy of the image tokens is sliced out.
    """
    dim = block.attn.qkv.in_features  # a Python int: weight slices fold to constants on export
    weight, bias = block.attn.qkv.weight, block.attn.qkv.bias
    q_cls = F.linear(xn[:, :1], weight[:dim], None if bias is None else bias[:dim])
    return torch.matmul(torch.matmul(q_cls, weight[dim : 2 * dim]), xn.transpose(1, 2)).flatten(1)


def select_tokens(scores: Tensor, k: int) -> Tensor:
    """Kept token positions (B, k+1), int64: CLS (0) first, then the top-k image tokens (+1)."""
    top = torch.topk(scores, k, dim=1, largest=True, sorted=True).indices + 1
    return torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)


def select_tokens_with_cls(scores: Tensor, k: int) -> Tensor:
    """:func:`select_tokens` from scores of all N+1 tokens: one TopK(k+1), CLS first.

    An infinite score on column 0 puts CLS first and the top-k image tokens after it in
    descending order, already as token positions, with no shift or concatenation.
    """
    cls_first = torch.tensor([math.inf] + [0.0] * (scores.shape[1] - 1), dtype=scores.dtype, device=scores.device)
    return torch.topk(scores + cls_first, k + 1, dim=1, largest=True, sorted=True).indices


def kept_attention(block: Block, q: Tensor, k: Tensor, v: Tensor, tokens: int | None = None) -> Tensor:
    """Softmax attention among the kept tokens; q, k, v are (B, K+1, C); returns proj output.

    Written with plain MatMul/Softmax (not ``scaled_dot_product_attention``) so it exports at
    every opset from 13 on. The export passes ``tokens`` (K+1, a Python int): head splits then
    trace to Reshapes with constant shapes instead of Shape/Slice/Concat chains on the batch.
    """
    heads, head_dim = block.attn.num_heads, block.attn.head_dim
    if tokens is None:
        q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))
    else:
        q, k, v = (t.reshape(-1, tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(torch.matmul(q * block.attn.scale, k.transpose(-2, -1)), dim=-1)
    out = torch.matmul(attn, v).transpose(1, 2)
    out = out.flatten(2) if tokens is None else out.reshape(-1, tokens, heads * head_dim)
    return block.attn.proj(out)


class IdleViT(nn.Module):
    """Vision Transformer with token-idle layers (IdleViT), DeiT or LV-ViT backbone."""

    def __init__(self, cfg: ArchConfig, schedule: Schedule) -> None:
        super().__init__()
        self.cfg = cfg
        self.schedule = schedule.validate(cfg.depth, cfg.num_tokens)
        dim = cfg.embed_dim
        norm = functools.partial(nn.LayerNorm, eps=cfg.norm_eps)
        if cfg.stem == "conv4":
            self.patch_embed: nn.Module = ConvStem(cfg.img_size, cfg.patch_size, dim, cfg.stem_channels)
        else:
            self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, norm_layer=norm) for _ in range(cfg.depth)
        )
        self.norm = norm(dim)
        self.head = nn.Linear(dim, cfg.num_classes)
        self.aux_head = nn.Linear(dim, cfg.num_classes) if cfg.aux_head else None
        # set by fold_normalization when the first layer pads: pixels + offset before it (export forward only)
        self.register_buffer("pixel_offset", None, persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal init as timm's ViT does (tests and ``--random-init`` rely on it)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---- pieces shared by both forwards -------------------------------------------------
    @property
    def idle_plan(self) -> dict[int, int]:
        """Block index -> static k (image tokens kept) for every idle layer."""
        ks = self.schedule.keep_tokens(self.cfg.num_tokens)
        return dict(zip(self.schedule.idle_layers, ks))

    def _residual(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + (branch if self.cfg.skip_lam == 1.0 else branch / self.cfg.skip_lam)

    def embed(self, images: Tensor) -> Tensor:
        """Patch tokens with CLS prepended and position embedding added: (B, N+1, C)."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def dense_block(self, block: Block, x: Tensor) -> Tensor:
        """An ordinary ViT block (with LV-ViT's residual scaling where configured)."""
        x = self._residual(x, block.attn(block.norm1(x)))
        return self._residual(x, block.mlp(block.norm2(x)))

    def head_logits(self, x: Tensor) -> Tensor:
        """Classifier on the final norm; LV-ViT adds half the max-pooled aux head over image tokens."""
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if self.aux_head is not None:
            logits = logits + 0.5 * self.aux_head(x[:, 1:]).max(dim=1).values
        return logits

    # ---- reference forward --------------------------------------------------------------
    def idle_block_reference(self, block: Block, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """One idle layer, as the published inference code computes it (eager, in-place)."""
        xn = block.norm1(x)
        scores, _ = cls_token_scores(block, xn)
        kept = select_tokens(scores, k)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        q, keys, v = block.attn.qkv(xn[rows, kept]).chunk(3, dim=-1)
        y = self._residual(x[rows, kept], kept_attention(block, q, keys, v))
        y = self._residual(y, block.mlp(block.norm2(y)))
        out = x.clone()
        out[rows, kept] = y
        return out, kept

    def forward_with_indices(self, images: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Reference logits and the kept token positions (B, k+1) of every idle layer."""
        plan = self.idle_plan
        x = self.embed(images)
        kept_by_layer: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks):
            if i in plan:
                x, kept_by_layer[i] = self.idle_block_reference(block, x, plan[i])
            else:
                x = self.dense_block(block, x)
        return self.head_logits(x), kept_by_layer

    def forward(self, images: Tensor) -> Tensor:
        """Reference logits (B, num_classes)."""
        return self.forward_with_indices(images)[0]

    # ---- export forward -----------------------------------------------------------------
    def first_conv(self) -> nn.Conv2d:
        """The convolution that reads the image: the patch projection (DeiT) or the stem's conv1 (LV-ViT)."""
        return self.patch_embed.conv1 if isinstance(self.patch_embed, ConvStem) else self.patch_embed.proj

    def embed_export(self, images: Tensor) -> Tensor:
        """:meth:`embed` written without shape arithmetic on the batch.

        Patch features are reshaped with static sizes, and CLS enters as a zero row padded in
        front of the patch tokens plus a constant (CLS token + its position embedding), so no
        Shape/Expand chain copies the batch size: the same sums as :meth:`embed` (``0 + a = a``).
        """
        if self.pixel_offset is not None:  # normalisation folded into a padded first layer
            images = images + self.pixel_offset
        if isinstance(self.patch_embed, ConvStem):
            features = self.patch_embed.feature_map(images)
        else:
            features = self.patch_embed.proj(images)  # timm's PatchEmbed without its (identity) norm
        x = features.reshape(-1, self.cfg.embed_dim, self.cfg.num_tokens).transpose(1, 2)
        cls_and_positions = torch.cat([self.cls_token + self.pos_embed[:, :1], self.pos_embed[:, 1:]], dim=1)
        return F.pad(x, (0, 0, 1, 0)) + cls_and_positions

    def dense_block_export(self, block: Block, x: Tensor) -> Tensor:
        """:meth:`dense_block` with the attention written out, so every opset can express it.

        Static split sizes and token counts keep shape arithmetic out of the graph.
        """
        q, keys, v = block.attn.qkv(block.norm1(x)).split(self.cfg.embed_dim, dim=-1)
        x = self._residual(x, kept_attention(block, q, keys, v, self.cfg.num_tokens + 1))
        return self._residual(x, block.mlp(block.norm2(x)))

    def idle_block_export(self, block: Block, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """One idle layer with TopK + GatherElements + ScatterElements and one int64 index.

        Tokens are ranked without projecting the keys of all tokens
        (:func:`cls_ranking_scores`); q, k and v are computed for the kept tokens only.
        """
        dim = self.cfg.embed_dim
        xn = block.norm1(x)
        kept = select_tokens_with_cls(cls_ranking_scores(block, xn), k)
        index = kept.unsqueeze(-1).expand(-1, -1, dim)
        q, keys, v = block.attn.qkv(torch.gather(xn, 1, index)).split(dim, dim=-1)
        attn_out = kept_attention(block, q, keys, v, k + 1)
        y = self._residual(torch.gather(x, 1, index), attn_out)
        y = self._residual(y, block.mlp(block.norm2(y)))
        return torch.scatter(x, 1, index, y), kept

    def forward_export(self, images: Tensor, with_indices: bool = False) -> tuple[Tensor, ...]:
        """Export forward: ``(logits,)`` or ``(logits, kept_3, kept_4, ...)`` in idle-layer order."""
        plan = self.idle_plan
        x = self.embed_export(images)
        kept_all: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if i in plan:
                x, kept = self.idle_block_export(block, x, plan[i])
                kept_all.append(kept)
            else:
                x = self.dense_block_export(block, x)
        logits = self.head_logits(x)
        return (logits, *kept_all) if with_indices else (logits,)

    def output_names(self, with_indices: bool = False) -> list[str]:
        """Graph output names matching :meth:`forward_export`."""
        names = [LOGITS]
        if with_indices:
            names += [kept_indices_name(layer) for layer in self.schedule.idle_layers]
        return names

    def fold_normalization(self, mean_into_bias: bool | None = None) -> None:
        """Fold the input normalisation (``cfg.mean``/``cfg.std``) into the first layer, in place.

        The model then takes RGB pixels 0..255 (what DeepStream's nvinfer feeds with
        ``net-scale-factor=1`` and zero offsets): exact for DeiT's unpadded patch projection; LV-ViT's
        padded conv1 gets the scale only, and the mean is subtracted from the pixels in front of it
        (:func:`idlevit.stem.fold_pixel_normalization`; ``mean_into_bias`` overrides that choice).
        Meant for an export copy (:meth:`export_module`); the reference forward is unchanged.
        """
        offset = fold_pixel_normalization(self.first_conv(), self.cfg.mean, self.cfg.std, mean_into_bias)
        self.pixel_offset = offset

    def export_module(self, with_indices: bool = False, fold_normalization: bool = False) -> nn.Module:
        """A copy ready to trace: eval mode, BatchNorm folded (and the normalisation, if asked),
        forward = :meth:`forward_export`."""
        model = copy.deepcopy(self).eval()
        if isinstance(model.patch_embed, ConvStem):
            model.patch_embed.fold_batchnorm()
        if fold_normalization:
            model.fold_normalization()
        return _ExportForward(model, with_indices).eval()

    @property
    def data_config(self) -> dict[str, object]:
        """Preprocessing the model expects (timm's data-config keys)."""
        return self.cfg.data_config


class _ExportForward(nn.Module):
    """Wraps a model so that ``forward`` is its export forward (what the tracer records)."""

    def __init__(self, model: IdleViT, with_indices: bool) -> None:
        super().__init__()
        self.model = model
        self.with_indices = with_indices

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.model.forward_export(images, self.with_indices)
