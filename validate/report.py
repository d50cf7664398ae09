"""Parity verdicts: Polygraphy's per-batch comparison results, aggregated per backend and input group.

Each (backend, input group) row aggregates its batches: the worst logit error and cosine, the
top-1 agreement over all samples, and per idle layer the kept-token counts. A row fails when
any batch's logit error breaks Polygraphy's atol/rtol rule, or an aggregate breaks its
threshold; each failure is one sentence naming the metric, the backend and the batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from polygraphy.comparator import AccuracyResults, SimpleThreshold

from idlevit.fileio import atomic_write
from idlevit.names import LOGITS

from .compare import FUNCS, SelectionResult, Thresholds
from .inputs import InputGroup


@dataclass
class LayerSelection:
    """Kept-token counts of one idle layer over a group (rows = samples)."""

    rows: int = 0
    matched: int = 0
    near_tie: int = 0
    cascade: int = 0
    mismatch: int = 0
    agreement_sum: float = 0.0  # sum over rows of the per-row agreement
    shape_note: str = ""
    example: str = ""

    def add(self, result: SelectionResult, where: str) -> None:
        self.rows += result.rows
        self.matched += result.matched
        self.near_tie += result.near_tie
        self.cascade += result.cascade
        self.mismatch += result.mismatch
        self.agreement_sum += result.agreement * result.rows
        self.shape_note = self.shape_note or result.shape_note
        if result.example and not self.example:
            self.example = f"{where}, {result.example}"

    def merge(self, other: LayerSelection) -> None:
        """Add another group's counts (for a backend's totals over all its input groups)."""
        for name in ("rows", "matched", "near_tie", "cascade", "mismatch", "agreement_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shape_note = self.shape_note or other.shape_note
        self.example = self.example or other.example

    @property
    def agreement(self) -> float:
        return self.agreement_sum / self.rows if self.rows else 1.0

    @property
    def flipped(self) -> int:
        return self.rows - self.matched

    @property
    def mismatch_rate(self) -> float:
        return self.mismatch / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        keys = ("rows", "matched", "near_tie", "cascade", "mismatch", "shape_note", "example")
        return {"agreement": self.agreement, "mismatch_rate": self.mismatch_rate} | {k: getattr(self, k) for k in keys}


@dataclass
class GroupResult:
    """One backend on one input group, aggregated over its batches."""

    backend: str
    group: InputGroup
    thresholds: Thresholds
    max_abs: float = 0.0
    max_rel: float = 0.0
    min_cosine: float = 1.0
    top1_matches: int = 0
    top1_near_tie: int = 0  # samples of another class, at a near-tie of the reference's logits
    nonfinite: int = 0  # samples whose logits hold NaN or Inf
    samples: int = 0
    tie_flipped: int = 0  # samples first flipped at a near-tie: left out of the logit error and cosine checks
    selection: dict[int, LayerSelection] = field(default_factory=dict)
    error_failed: list[str] = field(default_factory=list)  # batches whose logits broke atol and rtol
    failures: list[str] = field(default_factory=list)

    @property
    def top1_agreement(self) -> float:
        return self.top1_matches / self.samples if self.samples else 1.0

    @property
    def top1_beyond_ties(self) -> float:
        return (self.top1_matches + self.top1_near_tie) / self.samples if self.samples else 1.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "inputs": self.group.kind,
            "source": self.group.source,
            "batch": self.group.batch,
            "batches": len(self.group.feeds),
            "images": self.group.images,
            "logits": {
                "near_tie_samples_excluded": self.tie_flipped,
                "max_abs_error": self.max_abs,
                "max_rel_error": self.max_rel,
                "min_cosine_similarity": self.min_cosine,
                "top1_agreement": self.top1_agreement,
                "top1_near_tie": self.top1_near_tie,
                "nonfinite_samples": self.nonfinite,
            },
            "kept_tokens": {str(layer): sel.to_dict() for layer, sel in self.selection.items()} or None,
            "passed": self.passed,
            "failures": self.failures,
        }


def aggregate(
    accuracy: AccuracyResults, reference: str, thresholds: dict[str, Thresholds], groups: list[InputGroup]
) -> list[GroupResult]:
    """Fold per-batch results (iterations in ``groups`` order) into rows; judge each by its backend's thresholds."""
    rows = []
    for backend, limits in thresholds.items():
        per_func = [result[(reference, backend)] for result in accuracy]
        iteration = 0
        for group in groups:
            row = GroupResult(backend, group, limits)
            for batch_index in range(len(group.feeds)):
                _add_batch(row, [matches[iteration] for matches in per_func], f"batch #{batch_index}")
                iteration += 1
            _judge(row)
            rows.append(row)
    return rows


def _add_batch(row: GroupResult, matches: list[dict], where: str) -> None:
    selection, error, cosine, top1 = (matches[FUNCS.index(name)] for name in FUNCS)
    if LOGITS not in top1:
        row.failures.append(f"{row.backend} | {row.group.label}, {where}: the backend returned no '{LOGITS}'")
        return
    row.top1_matches += top1[LOGITS].matched
    row.top1_near_tie += top1[LOGITS].near_tie
    row.nonfinite += top1[LOGITS].nonfinite
    row.samples += top1[LOGITS].samples
    for name, sel in selection.items():
        layer = int(name.rsplit("_", 1)[1])
        row.selection.setdefault(layer, LayerSelection()).add(sel, where)
    row.tie_flipped += max((sel.tie_flipped for sel in selection.values()), default=0)
    result = error.get(LOGITS)
    if result is None:  # every sample of the batch flipped at a near-tie: no logits left to compare
        return
    if isinstance(result, bool):  # Polygraphy gives a bare False when shapes differ
        row.failures.append(f"{row.backend} | {row.group.label}, {where}: '{LOGITS}' is shaped unlike the reference's")
        return
    row.max_abs = max(row.max_abs, result.max_absdiff)
    row.max_rel = max(row.max_rel, result.max_reldiff)
    if not SimpleThreshold("max", row.thresholds.atol, row.thresholds.rtol).passed(result.metric_values()):
        row.error_failed.append(where)
    if LOGITS in cosine and not isinstance(cosine[LOGITS], bool):
        row.min_cosine = min(row.min_cosine, cosine[LOGITS].cosine_similarity)


def _judge(row: GroupResult) -> None:
    t = row.thresholds
    prefix = f"{row.backend} | {row.group.label}"
    if row.nonfinite:
        row.failures.append(f"{prefix}: logits are not finite (NaN or Inf) in {row.nonfinite} of {row.samples} samples")
    if row.error_failed:
        row.failures.append(
            f"{prefix}: logits differ beyond both atol {t.atol:g} and rtol {t.rtol:g} in {len(row.error_failed)} of "
            f"{len(row.group.feeds)} batches ({_few(row.error_failed)}); max abs error {row.max_abs:.3g}, "
            f"max relative error {row.max_rel:.3g}"
        )
    if row.min_cosine < t.min_cosine:
        row.failures.append(f"{prefix}: logit cosine similarity {row.min_cosine:.6f} < {t.min_cosine:g}")
    if row.samples and row.top1_beyond_ties < t.min_top1:
        differ = row.samples - row.top1_matches - row.top1_near_tie
        row.failures.append(
            f"{prefix}: top-1 agreement {row.top1_beyond_ties:.2%} beyond near-ties < {t.min_top1:.2%} "
            f"({differ} of {row.samples} samples predict another class)"
        )
    failing = {layer: sel for layer, sel in row.selection.items() if sel.mismatch_rate > t.max_mismatch}
    if failing:
        counts = ", ".join(f"{layer} ({sel.mismatch}/{sel.rows})" for layer, sel in failing.items())
        first_layer, first = next(iter(failing.items()))
        notes = [f"kept_indices_{first_layer} has {first.shape_note}"] if first.shape_note else []
        notes += [f"e.g. layer {first_layer}, {first.example}"] if first.example else []
        row.failures.append(
            f"{prefix}: kept token sets differ beyond near-ties at idle layer(s) {counts} "
            f"(mismatching/samples; allowed {t.max_mismatch:.1%})" + "".join(f"; {note}" for note in notes)
        )


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dataclass
class BackendTotals:
    """A backend's figures over every input group of a report."""

    backend: str
    passed: bool
    samples: int = 0
    top1_matches: int = 0
    top1_near_tie: int = 0
    max_abs: float = 0.0
    min_cosine: float = 1.0
    layers: dict[int, LayerSelection] = field(default_factory=dict)

    @property
    def top1_agreement(self) -> float:
        return self.top1_matches / self.samples if self.samples else 1.0


@dataclass
class ParityReport:
    """Everything a parity run measured, and its verdict."""

    setup: dict[str, Any]
    thresholds: dict[str, Thresholds]  # by backend
    rows: list[GroupResult]

    @property
    def failures(self) -> list[str]:
        return [failure for row in self.rows for failure in row.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.setup,
            "thresholds": {backend: limits.to_dict() for backend, limits in self.thresholds.items()},
            "results": [row.to_dict() for row in self.rows],
            "passed": self.passed,
            "failures": self.failures,
        }

    def backend(self, name: str) -> BackendTotals:
        """One backend's figures summed over all its input groups."""
        rows = [row for row in self.rows if row.backend == name]
        if not rows:
            raise KeyError(f"no backend {name!r} in this report (have {sorted({r.backend for r in self.rows})})")
        totals = BackendTotals(name, passed=all(row.passed for row in rows))
        for row in rows:
            totals.samples += row.samples
            totals.top1_matches += row.top1_matches
            totals.top1_near_tie += row.top1_near_tie
            totals.max_abs = max(totals.max_abs, row.max_abs)
            totals.min_cosine = min(totals.min_cosine, row.min_cosine)
            for layer, sel in row.selection.items():
                totals.layers.setdefault(layer, LayerSelection()).merge(sel)
        return totals

    def summary_lines(self) -> list[str]:
        """Per backend: top-1, logit error and verdict, then kept-token agreement per idle layer."""
        lines = []
        for name in dict.fromkeys(row.backend for row in self.rows):
            t = self.backend(name)
            lines.append(
                f"{name}: top-1 agreement {t.top1_agreement:.2%} of {t.samples} samples ({t.top1_near_tie} near-tie), "
                f"max abs logit error {t.max_abs:.2e}, min cosine {t.min_cosine:.6f}, {'PASS' if t.passed else 'FAIL'}"
            )
            if t.layers:
                lines.append(
                    "  kept-token agreement per idle layer: "
                    + ", ".join(
                        f"L{layer} {sel.agreement:.2%}"
                        + (
                            f" ({sel.near_tie} near-tie, {sel.cascade} cascade, {sel.mismatch} mismatch)"
                            if sel.flipped
                            else ""
                        )
                        for layer, sel in t.layers.items()
                    )
                )
        return lines

    def markdown(self) -> str:
        """One row per (backend, inputs, batch size); kept tokens summed over idle layers."""
        head = (
            "| backend | inputs | batch | images | max abs err | max rel err | min cosine | top-1 agree "
            "| kept-token agree (worst layer) | near-ties | cascade | mismatches | verdict |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        )
        lines = []
        for row in self.rows:
            if row.selection:
                worst_layer, worst = min(row.selection.items(), key=lambda item: item[1].agreement)
                kept = f"{worst.agreement:.2%} (L{worst_layer})"
                near, cascade, mismatch = (
                    str(sum(getattr(s, attr) for s in row.selection.values()))
                    for attr in ("near_tie", "cascade", "mismatch")
                )
            else:
                kept, near, cascade, mismatch = "n/a", "-", "-", "-"
            images = f"{row.group.images}" + (f" ({row.tie_flipped} tie-flipped)" if row.tie_flipped else "")
            top1 = f"{row.top1_agreement:.2%}" + (f" ({row.top1_near_tie} near-tie)" if row.top1_near_tie else "")
            lines.append(
                f"| {row.backend} | {row.group.kind} | {row.group.batch} | {images} | {row.max_abs:.2e} "
                f"| {row.max_rel:.2e} | {row.min_cosine:.6f} | {top1} | {kept} | {near} "
                f"| {cascade} | {mismatch} | {'PASS' if row.passed else 'FAIL'} |"
            )
        return head + "\n".join(lines) + "\n"

    def write(self, json_path: str | os.PathLike[str], markdown_path: str | os.PathLike[str]) -> None:
        with atomic_write(json_path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        with atomic_write(markdown_path, "w") as handle:
            handle.write(self.markdown())
