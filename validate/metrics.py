"""Agreement metrics between a reference and a backend, on numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Per-row verdicts of :func:`top1_status` and :func:`selection_status`; CASCADE (set by callers that follow a sample
#: through the idle layers) marks a flip downstream of an earlier flip of the same sample.
MATCH, NEAR_TIE, MISMATCH, CASCADE = 0, 1, 2, 3


def max_abs_error(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64)))) if reference.size else 0.0


def top1_agreement(reference_logits: np.ndarray, other_logits: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same."""
    return float(np.mean(reference_logits.argmax(-1) == other_logits.argmax(-1)))


def top1_status(reference_logits: np.ndarray, other_logits: np.ndarray, tie_rtol: float) -> np.ndarray:
    """Per-sample verdict (MATCH, NEAR_TIE or MISMATCH) of a backend's arg-max class.

    A different class is a NEAR_TIE when the reference's own logits put it within
    ``tie_rtol * max|logit|`` of the reference's best: rounding explains that flip. The same
    rule as :func:`selection_status`, on logits instead of token scores.
    """
    best, chosen = reference_logits.argmax(-1), other_logits.argmax(-1)
    rows = np.arange(reference_logits.shape[0])
    margin = reference_logits[rows, best] - reference_logits[rows, chosen]
    near = margin <= tie_rtol * np.abs(reference_logits).max(-1)
    return np.where(best == chosen, MATCH, np.where(near, NEAR_TIE, MISMATCH)).astype(np.int64)


def kept_token_agreement(reference_kept: np.ndarray, other_kept: np.ndarray) -> float:
    """Mean fraction of the reference's kept tokens that the other also kept (set semantics).

    Rows are (k+1) token positions; order does not matter (TopK order on ties is free).
    """
    ref, oth = np.sort(reference_kept, axis=-1), np.sort(other_kept, axis=-1)
    shared = [np.intersect1d(r, o, assume_unique=True).size for r, o in zip(ref, oth, strict=True)]
    return float(np.mean(shared) / reference_kept.shape[-1])


def selection_status(
    reference_kept: np.ndarray, other_kept: np.ndarray, reference_scores: np.ndarray, tie_rtol: float
) -> np.ndarray:
    """Per-row verdict (MATCH, NEAR_TIE or MISMATCH) of a backend's kept tokens against the reference.

    Rows are kept token positions (CLS 0 plus k image tokens), compared as sets. A row whose set
    differs is a NEAR_TIE when the flip is explained by rounding: the backend kept the same number
    of distinct tokens, CLS included, and every token it swapped in scores, by the reference's own
    scores (B, N image tokens), within ``tie_rtol * max|score|`` of every token it swapped out.
    Anything else (a token swapped in far below the k-th boundary, a wrong k, a duplicate, a
    missing CLS) is a MISMATCH.
    """
    status = np.full(reference_kept.shape[0], MISMATCH, dtype=np.int64)
    if other_kept.ndim != 2 or other_kept.shape[0] != reference_kept.shape[0]:
        return status
    for row, (ref, oth, scores) in enumerate(zip(reference_kept, other_kept, reference_scores, strict=True)):
        ref_set, oth_set = set(ref.tolist()), set(oth.tolist())
        if ref_set == oth_set and len(oth) == len(ref):
            status[row] = MATCH
            continue
        if len(oth_set) != len(oth) or len(oth) != len(ref) or 0 not in oth_set:
            continue
        swapped_out = [pos - 1 for pos in ref_set - oth_set]
        swapped_in = [pos - 1 for pos in oth_set - ref_set]
        if not all(0 <= pos < scores.shape[0] for pos in swapped_in):
            continue
        margin = scores[swapped_out].max() - scores[swapped_in].min()
        if margin <= tie_rtol * np.abs(scores).max():
            status[row] = NEAR_TIE
    return status


def cascaded_selection_status(
    layers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], tie_rtol: float
) -> list[np.ndarray]:
    """:func:`selection_status` of each idle layer in order, following every sample through them.

    ``layers`` holds one (reference kept, other kept, reference scores) triple per idle layer,
    first layer first. A sample's flips after its first one are CASCADE: that layer saw other
    token states, which the reference's scores no longer describe.
    """
    statuses: list[np.ndarray] = []
    flipped_before: np.ndarray | None = None
    for reference_kept, other_kept, reference_scores in layers:
        status = selection_status(reference_kept, other_kept, reference_scores, tie_rtol)
        if flipped_before is None:
            flipped_before = np.zeros(status.shape[0], dtype=bool)
        status = np.where((status != MATCH) & flipped_before, CASCADE, status)
        flipped_before |= status != MATCH
        statuses.append(status)
    return statuses


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Samples whose label is among the ``k`` highest logits (``k`` capped at the class count)."""
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return int(np.sum(np.any(top == labels[:, None], axis=-1)))
