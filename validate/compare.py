"""Polygraphy comparison functions for IdleViT outputs, and the thresholds they are judged by.

Logit error and cosine similarity are Polygraphy's own ``SimpleCompareFunc`` (max statistic) and
``CosineSimilarityCompareFunc``, restricted to ``logits``. Two things Polygraphy has no function
for are added in its protocol (``BaseCompareFunc`` -> ``CompareResult`` checked by a
``Threshold``): top-1 agreement of the logits (a class flip at a near-tie of the reference's
logits counts as agreeing; NaN or Inf logits never do), and the kept-token check of every idle layer,
which compares index sets (TopK's order on ties is free, so Polygraphy's order-sensitive
``IndicesCompareFunc`` would flag harmless reorderings) and counts rows apart as

* ``near_tie``: the reference's own scores put the swapped tokens within the tie tolerance of
  each other at the k-th boundary, so rounding explains the flip (see
  :func:`validate.metrics.selection_status`);
* ``cascade``: the sample already flipped at an earlier idle layer, so the backend ranks
  different token states and the reference's scores no longer describe its input;
* ``mismatch``: anything else, a real selection bug.

A sample whose selection first flipped at a near-tie legitimately computes other token updates
from there on, so its logits are left out of the logit error and cosine checks
(:class:`WithoutTieFlips`); the report counts those samples. Samples whose first flip is a
mismatch stay in (their logits show the damage), and top-1 agreement covers every sample.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from polygraphy.comparator import (
    BaseCompareFunc,
    CompareResult,
    CosineSimilarityCompareFunc,
    IterationResult,
    SimpleCompareFunc,
    Threshold,
)

from idlevit.names import LOGITS, kept_indices_name, token_scores_name

from .metrics import (
    CASCADE,
    MATCH,
    MISMATCH,
    NEAR_TIE,
    cascaded_selection_status,
    kept_token_agreement,
    top1_status,
)
from .presets import Thresholds


def only(*names: str):
    """A Polygraphy ``find_output_func`` that pairs outputs by exact name, and only ``names``.

    Polygraphy's default falls back to substring and position matching, which would pair a
    reference-only output with some other backend output.
    """

    def find(name: str, _index: int, iter_result: IterationResult) -> list[str] | None:
        return [name] if name in names and name in iter_result else None

    return find


# ---- top-1 agreement -------------------------------------------------------------------
class Top1Threshold(Threshold):
    METRIC_FIELDS = ["top1_beyond_ties", "nonfinite"]

    def __init__(self, min_agreement: float) -> None:
        self.min_agreement = min_agreement

    def passed(self, metric_values: dict[str, float]) -> bool:
        return metric_values["top1_beyond_ties"] >= self.min_agreement and metric_values["nonfinite"] == 0


class Top1Result(CompareResult):
    """Arg-max classes of one batch: samples that agree, that flip at a near-tie, and non-finite rows."""

    _THRESHOLD_CLASS = Top1Threshold

    def __init__(self, status: np.ndarray, nonfinite: int, thresholds: Top1Threshold | None = None) -> None:
        super().__init__(thresholds)
        self.samples = int(status.size)
        self.matched = int(np.sum(status == MATCH))
        self.near_tie = int(np.sum(status == NEAR_TIE))
        self.nonfinite = nonfinite  # samples whose logits (backend's or reference's) hold NaN or Inf

    @property
    def top1_agreement(self) -> float:
        return self.matched / self.samples if self.samples else 1.0

    @property
    def top1_beyond_ties(self) -> float:
        """Agreement with flips at a near-tie of the reference's logits counted as agreeing."""
        return (self.matched + self.near_tie) / self.samples if self.samples else 1.0


class _PerBackend(BaseCompareFunc):
    """A comparison whose thresholds depend on the backend (the second runner of the pair)."""

    def __init__(self, thresholds: Thresholds | Mapping[str, Thresholds]) -> None:
        self.by_backend = thresholds if isinstance(thresholds, Mapping) else {}
        self.default = thresholds if isinstance(thresholds, Thresholds) else next(iter(thresholds.values()))

    def _thresholds(self, runner_name: str) -> Thresholds:
        return self.by_backend.get(runner_name, self.default)


class Top1CompareFunc(_PerBackend):
    """Arg-max agreement with the reference, near-ties by the backend's ``tie_rtol``, and finite logits.

    A sample whose logits hold NaN or Inf on either side counts as a disagreement and is
    reported apart: comparisons of non-finite values would otherwise pass silently.
    """

    _RESULT_CLASS = Top1Result

    def thresholds_for(self, output_name: str, runner_name: str = "") -> Top1Threshold:
        return Top1Threshold(self._thresholds(runner_name).min_top1)

    def __call__(self, iter_result0: IterationResult, iter_result1: IterationResult) -> OrderedDict:
        if LOGITS not in iter_result0 or LOGITS not in iter_result1:
            return OrderedDict()
        ref, got = np.asarray(iter_result0[LOGITS]), np.asarray(iter_result1[LOGITS])
        threshold = self.thresholds_for(LOGITS, iter_result1.runner_name)
        if ref.shape != got.shape:
            return OrderedDict([(LOGITS, Top1Result(np.full(ref.shape[0], MISMATCH), 0, threshold))])
        finite = np.isfinite(ref).all(-1) & np.isfinite(got).all(-1)
        status = top1_status(ref, got, self._thresholds(iter_result1.runner_name).tie_rtol)
        status = np.where(finite, status, MISMATCH)
        return OrderedDict([(LOGITS, Top1Result(status, int(np.sum(~finite)), threshold))])


# ---- kept-token selection --------------------------------------------------------------
class SelectionThreshold(Threshold):
    METRIC_FIELDS = ["mismatch_rate"]

    def __init__(self, max_mismatch: float) -> None:
        self.max_mismatch = max_mismatch

    def passed(self, metric_values: dict[str, float]) -> bool:
        return metric_values["mismatch_rate"] <= self.max_mismatch


class SelectionResult(CompareResult):
    """Kept-token check of one idle layer on one batch: row counts by verdict, and examples."""

    _THRESHOLD_CLASS = SelectionThreshold

    def __init__(
        self,
        agreement: float,
        status: np.ndarray,
        shape_note: str = "",
        example: str = "",
        thresholds: SelectionThreshold | None = None,
    ) -> None:
        super().__init__(thresholds)
        self.agreement = agreement  # mean fraction of the reference's kept tokens the backend kept
        self.rows = int(status.size)
        self.matched = int(np.sum(status == MATCH))
        self.near_tie = int(np.sum(status == NEAR_TIE))
        self.cascade = int(np.sum(status == CASCADE))
        self.mismatch = int(np.sum(status == MISMATCH))
        self.shape_note = shape_note  # set when the backend's index output has another shape
        self.example = example  # the first mismatching row, described
        self.tie_flipped = 0  # samples whose first flip, at this idle layer or an earlier one, was a near-tie

    @property
    def mismatch_rate(self) -> float:
        return self.mismatch / self.rows if self.rows else 0.0


class SelectionCompareFunc(_PerBackend):
    """Per-idle-layer kept-token agreement (set semantics) with near-tie and cascade accounting.

    Needs the reference's ``token_scores_<layer>`` (``TorchRunner(with_scores=True)``); layers the
    backend does not export indices for are skipped. The tie tolerance is the backend's.
    """

    _RESULT_CLASS = SelectionResult

    def __init__(self, idle_layers: list[int], thresholds: Thresholds | Mapping[str, Thresholds]) -> None:
        super().__init__(thresholds)
        self.idle_layers = list(idle_layers)
        self.tie_flipped: dict[str, np.ndarray] = {}  # backend -> last batch's samples first flipped at a near-tie

    def thresholds_for(self, output_name: str, runner_name: str = "") -> SelectionThreshold:
        return SelectionThreshold(self._thresholds(runner_name).max_mismatch)

    def __call__(self, iter_result0: IterationResult, iter_result1: IterationResult) -> OrderedDict:
        backend = iter_result1.runner_name
        tie_rtol = self._thresholds(backend).tie_rtol
        results: OrderedDict[str, SelectionResult] = OrderedDict()
        tie_first: np.ndarray | None = None  # samples whose first flip was a near-tie
        self.tie_flipped.pop(backend, None)
        present = [
            layer
            for layer in self.idle_layers
            if kept_indices_name(layer) in iter_result0 and kept_indices_name(layer) in iter_result1
        ]
        arrays = [
            (
                np.asarray(iter_result0[kept_indices_name(layer)]),
                np.asarray(iter_result1[kept_indices_name(layer)]),
                np.asarray(iter_result0[token_scores_name(layer)]),
            )
            for layer in present
        ]
        for layer, (ref, got, _), status in zip(present, arrays, cascaded_selection_status(arrays, tie_rtol)):
            name = kept_indices_name(layer)
            near_tie = status == NEAR_TIE  # a near-tie is always a first flip (later ones are cascades)
            tie_first = near_tie if tie_first is None else tie_first | near_tie
            shape_note = "" if got.shape == ref.shape else f"shape {tuple(got.shape)}, reference {tuple(ref.shape)}"
            agreement = kept_token_agreement(ref, got) if got.ndim == 2 and got.shape[0] == ref.shape[0] else 0.0
            example = _describe_first_mismatch(ref, got, status)
            results[name] = SelectionResult(agreement, status, shape_note, example, self.thresholds_for(name, backend))
            results[name].tie_flipped = int(tie_first.sum())
        if tie_first is not None:
            self.tie_flipped[backend] = tie_first
        return results


class WithoutTieFlips(BaseCompareFunc):
    """Runs a logits comparison on the samples whose kept tokens did not flip at a near-tie.

    ``selection`` must run first on the same pair (Polygraphy calls comparison functions in list
    order); it leaves each backend's near-tie samples of the batch behind. When every sample
    flipped at a near-tie, nothing is compared.
    """

    def __init__(self, func: BaseCompareFunc, selection: SelectionCompareFunc) -> None:
        self.func = func
        self.selection = selection

    def thresholds_for(self, output_name: str) -> Threshold:
        return self.func.thresholds_for(output_name)

    def __call__(self, iter_result0: IterationResult, iter_result1: IterationResult) -> OrderedDict:
        flipped = self.selection.tie_flipped.get(iter_result1.runner_name)
        if flipped is None or not flipped.any():
            return self.func(iter_result0, iter_result1)
        if flipped.all() or LOGITS not in iter_result0 or LOGITS not in iter_result1:
            return OrderedDict()
        keep = ~flipped
        kept0 = IterationResult({LOGITS: np.asarray(iter_result0[LOGITS])[keep]}, runner_name=iter_result0.runner_name)
        got = np.asarray(iter_result1[LOGITS])
        kept1 = IterationResult(
            {LOGITS: got[keep] if len(got) == len(keep) else got}, runner_name=iter_result1.runner_name
        )
        return self.func(kept0, kept1)


def _describe_first_mismatch(ref: np.ndarray, got: np.ndarray, status: np.ndarray) -> str:
    rows = np.flatnonzero(status == MISMATCH)
    if not rows.size or got.ndim != 2 or got.shape[0] != ref.shape[0]:
        return ""
    row = int(rows[0])
    ref_set, got_set = set(ref[row].tolist()), set(got[row].tolist())
    dropped, added = sorted(ref_set - got_set), sorted(got_set - ref_set)
    text = f"sample {row}: backend dropped positions {_few(dropped)} and kept {_few(added)} instead"
    if len(got_set) != got.shape[1]:
        text += f" (it repeats positions: {got.shape[1] - len(got_set)} duplicates)"
    return text


def _few(values: list[int], limit: int = 6) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


#: Order of :func:`compare_funcs` (the selection runs first: the logit checks leave out its near-tie flips).
FUNCS = ("selection", "logit_error", "cosine", "top1")


def compare_funcs(thresholds: Mapping[str, Thresholds], idle_layers: list[int]) -> list[BaseCompareFunc]:
    """The comparison functions of a parity run, in :data:`FUNCS` order; ``thresholds`` by backend name.

    Polygraphy's own functions take one tolerance for every pair, so they get the strictest; the
    report re-checks their metrics against each backend's thresholds (Polygraphy's ``Threshold``).
    """
    strict = Thresholds(
        atol=min(t.atol for t in thresholds.values()),
        rtol=min(t.rtol for t in thresholds.values()),
        min_cosine=max(t.min_cosine for t in thresholds.values()),
        min_top1=1.0,
        max_mismatch=0.0,
        tie_rtol=0.0,
    )
    selection = SelectionCompareFunc(idle_layers, thresholds)
    error = SimpleCompareFunc(check_error_stat="max", atol=strict.atol, rtol=strict.rtol, find_output_func=only(LOGITS))
    cosine = CosineSimilarityCompareFunc(cosine_similarity_threshold=strict.min_cosine, find_output_func=only(LOGITS))
    return [
        selection,
        WithoutTieFlips(error, selection),
        WithoutTieFlips(cosine, selection),
        Top1CompareFunc(thresholds),
    ]
