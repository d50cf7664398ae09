"""Agreement metrics between a reference and a backend, on numpy arrays."""

from __future__ import annotations

import numpy as np


def max_abs_error(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64)))) if reference.size else 0.0


def top1_agreement(reference_logits: np.ndarray, other_logits: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same."""
    return float(np.mean(reference_logits.argmax(-1) == other_logits.argmax(-1)))


def kept_token_agreement(reference_kept: np.ndarray, other_kept: np.ndarray) -> float:
    """Mean fraction of the reference's kept tokens that the other also kept (set semantics).

    Rows are (k+1) token positions; order does not matter (TopK order on ties is free).
    """
    ref, oth = np.sort(reference_kept, axis=-1), np.sort(other_kept, axis=-1)
    shared = [np.intersect1d(r, o, assume_unique=True).size for r, o in zip(ref, oth, strict=True)]
    return float(np.mean(shared) / reference_kept.shape[-1])
