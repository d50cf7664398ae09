"""IdleViT's training losses: token cut loss, distillation from a dense teacher, cross-entropy.

Loss = CE + 5 * KL(teacher || student logits) + 500 * MSE(normalised CLS features)
       + 10 / (number of idle layers) * sum of the token cut loss over idle layers.

Token cut loss of one idle layer, on ``W`` = softmax of the head-mean attention map (every
query row sums to 1, idle tokens not masked) and the 0/1 keep mask ``m`` (CLS kept):

* ``intra`` ("same cut"): ``mean_i ((W m)_i - m_i)^2``: kept tokens should send all their
  attention to kept tokens, idle tokens none.
* ``inter`` ("cut"): ``mean_i c_i^2`` with ``c_i = sum_{j >= 1, m_j != m_i} W_ij``, the mass
  row ``i`` sends across the cut; the CLS column is excluded (idle tokens may read CLS).
* ``both`` adds the two; ``none`` is zero (plain distillation, for comparison).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ToolkitError
from .recipe import CUT_LOSSES, LossWeights


def token_cut_loss(attn: Tensor, keep_mask: Tensor, kind: str = "both") -> Tensor:
    """Token cut loss of one layer: ``attn`` (B, T, T) rows summing to 1, ``keep_mask`` (B, T) 0/1."""
    if kind not in CUT_LOSSES:
        raise ToolkitError(f"unknown cut loss {kind!r}; choose one of: {', '.join(CUT_LOSSES)}")
    loss = attn.new_zeros(())
    if kind in ("intra", "both"):
        to_kept = torch.einsum("bij,bj->bi", attn, keep_mask)
        loss = loss + F.mse_loss(to_kept, keep_mask)
    if kind in ("inter", "both"):
        other_side = keep_mask[:, None, :] != keep_mask[:, :, None]  # (B, T, T): row i, column j
        crossing = (attn * other_side)[:, :, 1:].sum(-1)  # CLS column excluded
        loss = loss + crossing.pow(2).mean()
    return loss


def kl_distillation(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) of the class distributions, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.log_softmax(teacher_logits, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def feature_distillation(student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
    """MSE between the L2-normalised final CLS features of student and teacher."""
    return F.mse_loss(F.normalize(student_cls, dim=-1), F.normalize(teacher_cls, dim=-1))


def idlevit_loss(
    logits: Tensor,
    cls_feature: Tensor,
    labels: Tensor,
    attn_maps: Sequence[Tensor] = (),
    keep_masks: Sequence[Tensor] = (),
    teacher: tuple[Tensor, Tensor] | None = None,
    cut_loss: str = "both",
    weights: LossWeights = LossWeights(),
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Mapping[str, float]]:
    """Total loss and its weighted terms (for the progress bar).

    ``teacher`` is the dense teacher's ``(logits, cls_feature)``; without it the distillation
    terms are left out (a dense teacher is trained with cross-entropy alone).
    """
    total = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    terms = {"ce": total.item()}
    if teacher is not None:
        kl = weights.kl * kl_distillation(logits, teacher[0])
        feat = weights.feature * feature_distillation(cls_feature, teacher[1])
        total = total + kl + feat
        terms.update(kl=kl.item(), feat=feat.item())
    if attn_maps and cut_loss != "none":
        cut = sum(token_cut_loss(a, m, cut_loss) for a, m in zip(attn_maps, keep_masks))
        cut = weights.cut / len(attn_maps) * cut
        total = total + cut
        terms["cut"] = cut.item()
    return total, terms
