"""Check a mixed-precision ONNX against its FP32 source in ONNX Runtime (CPU).

The FP32 graph is the reference (it matches PyTorch to ~1e-6; ``python -m validate.parity``
checks that side against the checkpoint). Both graphs run through Polygraphy's ``Comparator``
on the same inputs; the verdict uses the metrics of :mod:`validate.metrics`: max logit error,
top-1 agreement and, per idle layer, the kept-token sets, with a flip counted as a near-tie
when the reference's own scores put the swapped tokens within ``tie_rtol`` of each other, and
as a cascade when the sample already flipped at an earlier idle layer (the candidate then ranks
other token states, which the reference's scores no longer describe).
Two probe copies make that possible for any export: each exposes every idle layer's kept
positions (``kept_indices_<layer>``), and the reference also exposes the scores TopK ranks
(``token_scores_<layer>``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, DataLoader
from polygraphy.datatype import DataType
from polygraphy.logger import G_LOGGER

from export.metadata import ExportMetadata, read_metadata
from idlevit.errors import ToolkitError
from idlevit.model import IMAGES, LOGITS, kept_indices_name
from validate.metrics import (
    CASCADE,
    MATCH,
    MISMATCH,
    NEAR_TIE,
    cascaded_selection_status,
    kept_token_agreement,
    max_abs_error,
    top1_agreement,
)
from validate.ort import create_session, providers_for
from validate.reference import token_scores_name

#: Names of the sides in the report: the FP32 graph, the mixed graph as ONNX Runtime's kernels run
#: it, and the mixed graph with FP16 storage rounding emulated (see engines.precision.emulate_fp16).
REFERENCE_NAME, MIXED_NAME, EMULATED_NAME = "fp32", "mixed", "mixed-fp16-emulated"


@dataclass(frozen=True)
class MixedThresholds:
    """What the mixed graph must reach against the FP32 graph (FP16 defaults, as validate's fp16 preset)."""

    min_top1: float = 0.98
    max_mismatch: float = 0.02  # fraction of samples per idle layer whose kept set differs beyond a near-tie
    tie_rtol: float = 1e-2  # near-tie tolerance, relative to the row's max |score|


@dataclass
class LayerAgreement:
    rows: int = 0
    matched: int = 0
    near_tie: int = 0
    cascade: int = 0  # flipped after an earlier idle layer flipped for the same sample
    mismatch: int = 0
    agreement_sum: float = 0.0

    @property
    def agreement(self) -> float:
        return self.agreement_sum / self.rows if self.rows else 1.0

    @property
    def flipped(self) -> int:
        return self.rows - self.matched


@dataclass
class CandidateResult:
    """One candidate graph against the reference, over all inputs."""

    name: str
    samples: int = 0
    top1_matches: int = 0
    top1_near_tie: int = 0  # other class, but within tie_rtol of the reference's best logit
    max_abs: float = 0.0
    layers: dict[int, LayerAgreement] = field(default_factory=dict)

    @property
    def top1_agreement(self) -> float:
        return self.top1_matches / self.samples if self.samples else 1.0

    @property
    def top1_beyond_ties(self) -> float:
        """Top-1 agreement counting near-tie disagreements as agreement (what the threshold judges)."""
        return (self.top1_matches + self.top1_near_tie) / self.samples if self.samples else 1.0

    def failures(self, t: MixedThresholds) -> list[str]:
        out = []
        if self.top1_beyond_ties < t.min_top1:
            out.append(f"{self.name}: top-1 agreement {self.top1_beyond_ties:.2%} beyond near-ties < {t.min_top1:.2%}")
        for layer, sel in self.layers.items():
            if sel.rows and sel.mismatch / sel.rows > t.max_mismatch:
                out.append(
                    f"{self.name}: idle layer {layer}: {sel.mismatch} of {sel.rows} samples keep another token set "
                    f"beyond a near-tie (> {t.max_mismatch:.1%})"
                )
        return out


@dataclass
class MixedCheckReport:
    inputs: str
    thresholds: MixedThresholds
    results: dict[str, CandidateResult]

    @property
    def failures(self) -> list[str]:
        return [f for result in self.results.values() for f in result.failures(self.thresholds)]

    @property
    def passed(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        """A summary per candidate, then its kept-token agreement per idle layer."""
        out = [f"inputs: {self.inputs}"]
        for r in self.results.values():
            out.append(
                f"{r.name}: top-1 agreement {r.top1_agreement:.2%} of {r.samples} samples "
                f"({r.top1_near_tie} near-tie), max abs logit error {r.max_abs:.2e}, "
                f"{'PASS' if not r.failures(self.thresholds) else 'FAIL'}"
            )
            out.append(
                "  kept-token agreement per idle layer: "
                + ", ".join(
                    f"L{layer} {sel.agreement:.2%}"
                    + (
                        f" ({sel.near_tie} near-tie, {sel.cascade} cascade, {sel.mismatch} mismatch)"
                        if sel.flipped
                        else ""
                    )
                    for layer, sel in r.layers.items()
                )
            )
        return out


def probe_copy(model: onnx.ModelProto, idle_layers: Sequence[int], with_scores: bool) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs each idle layer's kept positions (and scores).

    Kept positions are TopK's indices, the (B, k+1) tensor the layer gathers with (CLS 0 first).
    Scores are TopK's input without its CLS column (B, N), cast to FP32.
    """
    graph = gs.import_onnx(model)
    top_ks = [node for node in graph.nodes if node.op == "TopK"]
    if len(top_ks) != len(idle_layers):
        raise ToolkitError(
            f"the graph has {len(top_ks)} TopK nodes but its metadata lists {len(idle_layers)} idle layers"
        )
    present = {tensor.name for tensor in graph.outputs}
    for layer, top_k in zip(idle_layers, top_ks, strict=True):
        name = kept_indices_name(layer)
        if name not in present:
            kept = top_k.outputs[1]
            kept.name, kept.dtype = name, np.int64
            graph.outputs.append(kept)
        if with_scores:
            scores = graph.layer(
                op="Cast",
                attrs={"to": onnx.TensorProto.FLOAT},
                inputs=[top_k.inputs[0]],
                outputs=[gs.Variable(f"{token_scores_name(layer)}_with_cls", dtype=np.float32)],
            )[0]
            bounds = (1, 2**62, 1)  # starts, ends, axes: columns 1.. (the image tokens)
            image_tokens = [
                gs.Constant(f"{name}_slice{i}", np.array([v], dtype=np.int64)) for i, v in enumerate(bounds)
            ]
            out = gs.Variable(token_scores_name(layer), dtype=np.float32)
            graph.layer(op="Slice", inputs=[scores, *image_tokens], outputs=[out])
            graph.outputs.append(out)
    probe = gs.export_onnx(graph)
    probe.ir_version = model.ir_version
    return probe


def check_inputs(
    meta: ExportMetadata,
    data: str | os.PathLike[str] | None,
    num_images: int,
    random_batches: int,
    batch: int,
    seed: int = 0,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Feed dicts: real test images (``"digits"`` or an ImageFolder), then seeded uniform random batches.

    Random values span what pixels in [0, 1] become under the recorded mean/std.
    """
    feeds: list[dict[str, np.ndarray]] = []
    parts = []
    if data is not None and num_images > 0:
        from idlevit.data import load_dataset

        dataset = load_dataset(data, "test", meta.data_config)
        picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(num_images, len(dataset))).round().astype(int))
        images = torch.stack([dataset[int(i)][0] for i in picks]).numpy().astype(np.float32)
        feeds += [{IMAGES: images[i : i + batch]} for i in range(0, len(images), batch)]
        parts.append(f"{len(images)} real images ({os.fspath(data)}:test)")
    if random_batches > 0:
        low = min((0.0 - m) / s for m, s in zip(meta.mean, meta.std))
        high = max((1.0 - m) / s for m, s in zip(meta.mean, meta.std))
        shape = (batch, 3, meta.img_size, meta.img_size)
        loader = DataLoader(
            seed=seed,
            iterations=random_batches,
            input_metadata=TensorMetadata().add(IMAGES, DataType.FLOAT32, shape),
            val_range=(low, high),
        )
        feeds += [dict(feed) for feed in loader]
        parts.append(f"{random_batches * batch} seeded random images (uniform [{low:.2f}, {high:.2f}], seed {seed})")
    if not feeds:
        raise ToolkitError("no inputs for the mixed-precision check: give --check-data or --check-batches > 0")
    return feeds, ", ".join(parts)


def check_mixed_onnx(
    fp32_onnx: str | os.PathLike[str],
    mixed_onnx: str | os.PathLike[str],
    *,
    others: dict[str, str | os.PathLike[str] | onnx.ModelProto] | None = None,
    emulate: bool = True,
    data: str | os.PathLike[str] | None = None,
    num_images: int = 16,
    random_batches: int = 2,
    batch: int = 8,
    seed: int = 0,
    threads: int = 0,
    device: str = "cpu",
    thresholds: MixedThresholds | None = None,
) -> MixedCheckReport:
    """Run the FP32 graph and the mixed graph (plus ``others``, by name) on the same inputs.

    With ``emulate`` the mixed graph also runs with FP16 storage rounding emulated in FP32
    (:func:`engines.precision.emulate_fp16`), because ONNX Runtime's CPU kernels skip much of
    FP16's rounding; ``others`` may be ONNX paths or in-memory models.
    """
    from .precision import emulate_fp16, fp16_nodes

    meta = read_metadata(mixed_onnx)
    layers = list(meta.idle_layers)
    thresholds = thresholds or MixedThresholds()
    fp32 = onnx.load(os.fspath(fp32_onnx))
    candidates: dict[str, onnx.ModelProto] = {MIXED_NAME: onnx.load(os.fspath(mixed_onnx))}
    if emulate:
        candidates[EMULATED_NAME] = emulate_fp16(fp32, fp16_nodes(candidates[MIXED_NAME]))
    for name, other in (others or {}).items():
        candidates[name] = other if isinstance(other, onnx.ModelProto) else onnx.load(os.fspath(other))
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        feeds, described = check_inputs(meta, data, num_images, random_batches, batch, seed)
    with tempfile.TemporaryDirectory(prefix="idlevit-mixed-check-") as tmp:
        paths = {REFERENCE_NAME: Path(tmp, "reference.onnx")}
        onnx.save(probe_copy(fp32, layers, with_scores=True), paths[REFERENCE_NAME])
        for i, (name, model) in enumerate(candidates.items()):
            paths[name] = Path(tmp, f"candidate{i}.onnx")
            onnx.save(probe_copy(model, layers, with_scores=False), paths[name])
        providers = providers_for(device)
        runners = [OnnxrtRunner(_session_builder(path, providers, threads), name=name) for name, path in paths.items()]
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            results = Comparator.run(runners, data_loader=feeds)
    reference = results[REFERENCE_NAME]
    report = MixedCheckReport(described, thresholds, {})
    for name in candidates:
        result = report.results.setdefault(name, CandidateResult(name))
        for ref, got in zip(reference, results[name], strict=True):
            _add_batch(result, ref, got, layers, thresholds.tie_rtol)
    return report


def _session_builder(path: Path, providers: list[str], threads: int):
    return lambda: create_session(path, providers, threads)


def _add_batch(result: CandidateResult, ref, got, layers: list[int], tie_rtol: float) -> None:
    samples = int(ref[LOGITS].shape[0])
    result.samples += samples
    best, chosen = ref[LOGITS].argmax(-1), got[LOGITS].argmax(-1)
    rows = np.arange(samples)
    margin = ref[LOGITS][rows, best] - ref[LOGITS][rows, chosen]
    near = (best != chosen) & (margin <= tie_rtol * np.abs(ref[LOGITS]).max(-1))
    result.top1_matches += round(top1_agreement(ref[LOGITS], got[LOGITS]) * samples)
    result.top1_near_tie += int(np.sum(near))
    result.max_abs = max(result.max_abs, max_abs_error(ref[LOGITS], got[LOGITS]))
    names = [kept_indices_name(layer) for layer in layers]
    arrays = [(ref[name], got[name], ref[token_scores_name(layer)]) for name, layer in zip(names, layers)]
    for layer, name, status in zip(layers, names, cascaded_selection_status(arrays, tie_rtol)):
        sel = result.layers.setdefault(layer, LayerAgreement())
        sel.rows += samples
        sel.matched += int(np.sum(status == MATCH))
        sel.near_tie += int(np.sum(status == NEAR_TIE))
        sel.cascade += int(np.sum(status == CASCADE))
        sel.mismatch += int(np.sum(status == MISMATCH))
        sel.agreement_sum += kept_token_agreement(ref[name], got[name]) * samples
