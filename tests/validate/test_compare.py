"""Kept-token comparison on constructed outputs: set semantics, near-ties, cascades, wrong k."""

from __future__ import annotations

import numpy as np
import pytest
from polygraphy.comparator import Comparator, IterationResult, RunResults
from polygraphy.logger import G_LOGGER

from validate.compare import FUNCS, SelectionCompareFunc, Top1CompareFunc, compare_funcs
from validate.metrics import (
    CASCADE,
    MATCH,
    MISMATCH,
    NEAR_TIE,
    cascaded_selection_status,
    selection_status,
    topk_correct,
)
from validate.presets import PRESETS, preset

#: Reference scores of 8 image tokens (positions 1..8). With k = 3 the reference keeps
#: positions {1, 2, 3}; tokens 3 and 4 (positions 3, 4) sit 1e-6 apart at the k-th boundary,
#: while token 8 (position 8) scores far below it.
SCORES = np.array([9.0, 8.0, 5.000001, 5.0, 1.0, 0.5, 0.2, -3.0])
REF_ROW = np.array([0, 1, 2, 3])


def status(other: list[int], tie_rtol: float = 1e-4) -> int:
    return int(selection_status(REF_ROW[None], np.array([other]), SCORES[None], tie_rtol)[0])


def test_order_does_not_matter() -> None:
    assert status([0, 3, 1, 2]) == MATCH


def test_boundary_flip_is_a_near_tie_and_a_far_flip_is_not() -> None:
    assert status([0, 1, 2, 4]) == NEAR_TIE  # the 1e-6 gap at the boundary, well within 1e-4 x 9
    assert status([0, 1, 2, 8]) == MISMATCH  # position 8 scores -3, 8 below the dropped token
    assert status([0, 1, 2, 4], tie_rtol=0.0) == MISMATCH  # no tolerance: a flip is a flip
    assert status([0, 1, 4, 5]) == MISMATCH  # swapping in position 5 (score 1.0) is no tie


@pytest.mark.parametrize(
    "other",
    [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 1, 2], [4, 1, 2, 3], [0, 1, 2, 99]],
    ids=["k-1", "k+1", "duplicate", "no-cls", "out-of-range"],
)
def test_malformed_rows_are_mismatches(other: list[int]) -> None:
    got = np.array([other])
    assert selection_status(REF_ROW[None], got, SCORES[None], 1.0)[0] == MISMATCH


def result(name: str, **outputs: np.ndarray) -> IterationResult:
    return IterationResult(outputs, runner_name=name)


def test_near_tie_then_cascade_is_counted_apart_from_real_mismatches() -> None:
    # Two samples, idle layers 3 and 4 (k = 3 both). Sample 0 flips at the layer-3 boundary
    # (a near-tie) and then differs at layer 4 (downstream: a cascade). Sample 1 matches at
    # layer 3 and flips far from the boundary at layer 4 (a real mismatch).
    ref = result(
        "pytorch",
        kept_indices_3=np.array([[0, 1, 2, 3], [0, 1, 2, 3]]),
        token_scores_3=np.stack([SCORES, SCORES]),
        kept_indices_4=np.array([[0, 1, 2, 3], [0, 1, 2, 3]]),
        token_scores_4=np.stack([SCORES, SCORES]),
    )
    got = result(
        "backend",
        kept_indices_3=np.array([[0, 1, 2, 4], [0, 3, 2, 1]]),
        kept_indices_4=np.array([[0, 5, 6, 7], [0, 1, 2, 8]]),
    )
    limits = preset("fp32").with_overrides(tie_rtol=1e-4, max_mismatch=0.0)
    checked = SelectionCompareFunc([3, 4], {"backend": limits})(ref, got)
    layer3, layer4 = checked["kept_indices_3"], checked["kept_indices_4"]
    assert (layer3.matched, layer3.near_tie, layer3.cascade, layer3.mismatch) == (1, 1, 0, 0)
    assert (layer4.matched, layer4.near_tie, layer4.cascade, layer4.mismatch) == (0, 0, 1, 1)
    assert bool(layer3) and not bool(layer4)
    # the backend's own tolerance decides: with none, the boundary flip is a real mismatch too
    strict = SelectionCompareFunc([3, 4], {"backend": limits.with_overrides(tie_rtol=0.0)})(ref, got)
    assert (strict["kept_indices_3"].near_tie, strict["kept_indices_3"].mismatch) == (0, 1)
    assert layer3.agreement == pytest.approx((3 / 4 + 1) / 2)
    assert "sample 1" in layer4.example and "[3]" in layer4.example and "[8]" in layer4.example


def test_cascaded_status_marks_flips_after_a_samples_first_flip() -> None:
    ref, scores = np.stack([REF_ROW, REF_ROW]), np.stack([SCORES, SCORES])
    layer3 = (ref, np.array([[0, 1, 2, 4], [0, 3, 2, 1]]), scores)  # sample 0: near-tie; sample 1: match
    layer4 = (ref, np.array([[0, 5, 6, 7], [0, 1, 2, 8]]), scores)  # both flip far from the boundary
    first, second = cascaded_selection_status([layer3, layer4], tie_rtol=1e-4)
    assert first.tolist() == [NEAR_TIE, MATCH]
    assert second.tolist() == [CASCADE, MISMATCH]  # sample 0 had flipped before; sample 1 had not
    assert cascaded_selection_status([], tie_rtol=1e-4) == []


def test_layers_without_index_outputs_are_skipped() -> None:
    ref = result("pytorch", kept_indices_3=REF_ROW[None], token_scores_3=SCORES[None])
    assert SelectionCompareFunc([3], preset("fp32"))(ref, result("backend", logits=np.zeros((1, 2)))) == {}


def test_top1_agreement_counts_samples() -> None:
    ref = result("pytorch", logits=np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]))
    got = result("backend", logits=np.array([[1.0, 0.5], [1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))
    top1 = Top1CompareFunc({"backend": preset("fp32")})(ref, got)["logits"]
    assert top1.top1_agreement == 0.75 and top1.samples == 4 and not bool(top1)  # fp32 asks for 100%
    assert bool(Top1CompareFunc({"backend": preset("fp32").with_overrides(min_top1=0.75)})(ref, got)["logits"])


def test_a_top1_flip_at_a_near_tie_of_the_reference_logits_agrees() -> None:
    # sample 0: the reference's two classes are 1e-3 apart (of max |logit| 5): a near-tie at
    # tie_rtol 1e-3, not at 1e-4; sample 1: a flip across a margin of 1.
    ref = result("pytorch", logits=np.array([[5.0, 4.999], [1.0, 2.0]]))
    got = result("backend", logits=np.array([[4.999, 5.0], [2.0, 1.0]]))
    loose = Top1CompareFunc({"backend": preset("fp32").with_overrides(tie_rtol=1e-3)})(ref, got)["logits"]
    assert (loose.matched, loose.near_tie, loose.top1_beyond_ties) == (0, 1, 0.5)
    strict = Top1CompareFunc({"backend": preset("fp32").with_overrides(tie_rtol=1e-4)})(ref, got)["logits"]
    assert (strict.matched, strict.near_tie) == (0, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_fail_even_where_everything_else_agrees(bad: float) -> None:
    ref = result("pytorch", logits=np.array([[1.0, 0.0], [0.0, 1.0]]))
    got = result("backend", logits=np.array([[1.0, bad], [0.0, 1.0]]))
    top1 = Top1CompareFunc({"backend": preset("fp32").with_overrides(min_top1=0.0)})(ref, got)["logits"]
    assert top1.nonfinite == 1 and not bool(top1)


def test_topk_correct() -> None:
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 0])
    assert topk_correct(logits, labels, 1) == 1
    assert topk_correct(logits, labels, 2) == 1  # sample 2's label (0) is the lowest logit
    assert topk_correct(logits, labels, 5) == 3  # capped at the class count


def test_fp16_presets_are_looser_than_fp32() -> None:
    strict, loose = preset("fp32"), preset("FP16")
    assert loose.atol > strict.atol and loose.min_cosine < strict.min_cosine
    assert loose.max_mismatch > strict.max_mismatch and loose.tie_rtol > strict.tie_rtol
    assert set(PRESETS) >= {"fp32", "fp16", "int8"}
    with pytest.raises(Exception, match="--precision"):
        preset("fp4")


def test_logit_checks_leave_out_samples_that_flipped_at_a_near_tie() -> None:
    # Sample 0 flips at the layer-3 boundary (a near-tie) and its logits then differ by 0.5;
    # sample 1 matches everywhere and its logits differ by 1e-6; sample 2's first flip is a real
    # mismatch, and its logits differ by 0.25. Polygraphy runs the functions in order on the pair.
    kept = np.array([[0, 1, 2, 3]] * 3)
    ref = result(
        "pytorch",
        logits=np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]),
        kept_indices_3=kept,
        token_scores_3=np.stack([SCORES] * 3),
    )
    got = result(
        "backend",
        logits=np.array([[1.5, 0.0], [0.0, 1.000001], [2.25, 0.0]]),
        kept_indices_3=np.array([[0, 1, 2, 4], [0, 1, 2, 3], [0, 1, 2, 8]]),
    )
    run = RunResults([("pytorch", [ref]), ("backend", [got])])
    funcs = compare_funcs({"backend": preset("fp32")}, [3])
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        accuracy = Comparator.compare_accuracy(run, compare_func=funcs)
    by_name = {name: accuracy[FUNCS.index(name)][("pytorch", "backend")][0] for name in FUNCS}
    assert by_name["selection"]["kept_indices_3"].tie_flipped == 1
    assert by_name["logit_error"]["logits"].max_absdiff == pytest.approx(0.25)  # sample 0 left out, 2 kept
    assert by_name["top1"]["logits"].samples == 3  # top-1 still covers every sample
