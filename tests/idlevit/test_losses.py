"""Token cut loss and distillation terms on cases small enough to work out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from idlevit.errors import ToolkitError
from idlevit.losses import LossWeights, feature_distillation, idlevit_loss, kl_distillation, token_cut_loss

# Three positions: CLS (kept), token 1 (kept), token 2 (idle). Rows are query tokens, each sums to 1.
MASK = torch.tensor([[1.0, 1.0, 0.0]])
ATTN = torch.tensor(
    [
        [
            [0.5, 0.25, 0.25],
            [0.2, 0.6, 0.2],
            [0.1, 0.3, 0.6],
        ]
    ]
)
# intra: W·m = [0.5+0.25, 0.2+0.6, 0.1+0.3] = [0.75, 0.8, 0.4] against m = [1, 1, 0]
#        squared errors 0.0625, 0.04, 0.16 -> mean 0.2625 / 3 = 0.0875
INTRA = 0.0875
# inter: mass across the cut, CLS column left out:
#        row 0 (kept) -> idle column 2: 0.25; row 1 (kept) -> column 2: 0.2;
#        row 2 (idle) -> kept column 1: 0.3 (its 0.1 to CLS is not counted)
#        squares 0.0625, 0.04, 0.09 -> mean 0.1925 / 3
INTER = 0.1925 / 3


@pytest.mark.parametrize(("kind", "expected"), [("intra", INTRA), ("inter", INTER), ("both", INTRA + INTER)])
def test_cut_loss_hand_computed(kind: str, expected: float) -> None:
    assert token_cut_loss(ATTN, MASK, kind).item() == pytest.approx(expected, abs=1e-7)


def test_cut_loss_is_zero_for_a_perfect_cut() -> None:
    # Kept tokens attend only to kept tokens, the idle token only to itself: nothing crosses.
    attn = torch.tensor([[[0.5, 0.5, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]])
    assert token_cut_loss(attn, MASK, "both").item() == 0.0
    # Reading CLS from the idle token crosses no cut for "inter" (CLS column excluded) but not for "intra".
    attn_cls = torch.tensor([[[0.5, 0.5, 0.0], [0.3, 0.7, 0.0], [0.5, 0.0, 0.5]]])
    assert token_cut_loss(attn_cls, MASK, "inter").item() == 0.0
    assert token_cut_loss(attn_cls, MASK, "intra").item() == pytest.approx(0.25 / 3)


def test_cut_loss_averages_over_the_batch() -> None:
    attn = torch.cat([ATTN, torch.tensor([[[0.5, 0.5, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]])])
    mask = torch.cat([MASK, MASK])
    assert token_cut_loss(attn, mask, "both").item() == pytest.approx((INTRA + INTER) / 2, abs=1e-7)


def test_unknown_cut_loss_is_a_toolkit_error() -> None:
    with pytest.raises(ToolkitError, match="cut loss"):
        token_cut_loss(ATTN, MASK, "sideways")


def test_kl_and_feature_distillation_hand_computed() -> None:
    # Teacher probabilities [0.75, 0.25], student [0.5, 0.5]: KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    kl = kl_distillation(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert kl.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    # Orthogonal unit features after normalisation: squared differences 1 and 1 over 2 elements.
    feat = feature_distillation(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert feat.item() == pytest.approx(1.0)
    # The scale of a feature does not matter, only its direction.
    assert feature_distillation(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.3, 0.4]])).item() == pytest.approx(0.0)


def test_total_loss_weights() -> None:
    logits, labels = torch.tensor([[0.0, 0.0]]), torch.tensor([0])
    teacher = (torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, 2.0]]))
    total, terms = idlevit_loss(
        logits, torch.tensor([[3.0, 0.0]]), labels, [ATTN, ATTN], [MASK, MASK], teacher, "both", LossWeights()
    )
    ce = math.log(2.0)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    cut = 10.0 / 2 * (2 * (INTRA + INTER))  # weight 10 divided by the 2 idle layers, summed over them
    assert terms["ce"] == pytest.approx(ce, abs=1e-6)
    assert terms["kl"] == pytest.approx(5 * kl, abs=1e-5)
    assert terms["feat"] == pytest.approx(500.0, abs=1e-4)
    assert terms["cut"] == pytest.approx(cut, abs=1e-5)
    assert total.item() == pytest.approx(ce + 5 * kl + 500.0 + cut, abs=1e-4)
    # Without a teacher or with the cut loss off, those terms are absent.
    _, plain = idlevit_loss(logits, logits, labels, [ATTN], [MASK], None, "none")
    assert set(plain) == {"ce"}
