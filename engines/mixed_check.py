"""Check a mixed-precision ONNX against its FP32 source in ONNX Runtime (CPU), through ``validate/``.

The FP32 graph is the reference (it matches PyTorch to ~1e-6; ``python -m validate.parity``
checks that side). Both graphs are run through Polygraphy's ``Comparator`` with the comparison
functions of :mod:`validate.compare`: logit error, top-1 agreement and, per idle layer, the
kept-token sets with near-ties and cascades counted apart. Two probe copies make that possible
for any export: each exposes every idle layer's kept positions (``kept_indices_<layer>``), and
the reference also exposes the scores TopK ranks (``token_scores_<layer>``), which the near-tie
accounting needs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from polygraphy.comparator import Comparator

from export.metadata import read_metadata
from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.model import kept_indices_name

#: Names of the two sides in the report.
REFERENCE_NAME, MIXED_NAME = "onnxruntime-fp32", "onnxruntime-mixed"


def probe_copy(model: onnx.ModelProto, idle_layers: Sequence[int], with_scores: bool) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs each idle layer's kept positions (and scores).

    Kept positions are the (B, k+1) tensor the layer gathers with (CLS 0 first): the Concat fed
    by TopK's indices (+1). Scores are TopK's input, cast to FP32 when the graph computes them
    in another type.
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
            kept = _kept_positions(top_k)
            kept.name = name
            kept.dtype = np.int64
            graph.outputs.append(kept)
        if with_scores:
            scores = top_k.inputs[0]
            out = gs.Variable(f"token_scores_{layer}", dtype=np.float32)
            graph.nodes.append(gs.Node("Cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[scores], outputs=[out]))
            graph.outputs.append(out)
    probe = gs.export_onnx(graph)
    probe.ir_version = model.ir_version
    return probe


def _kept_positions(top_k: gs.Node) -> gs.Variable:
    """Follow TopK's indices through element-wise ops to the Concat that prepends the CLS position."""
    tensor = top_k.outputs[1]
    for _ in range(4):
        consumers = [node for node in tensor.outputs if node.op in ("Add", "Cast", "Concat")]
        if not consumers:
            break
        node = consumers[0]
        if node.op == "Concat":
            return node.outputs[0]
        tensor = node.outputs[0]
    raise ToolkitError(f"cannot find the kept positions after {top_k.name}; re-export with `python -m export.onnx`")


def check_mixed_onnx(
    fp32_onnx: str | os.PathLike[str],
    mixed_onnx: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    num_images: int = 16,
    random_batches: int = 2,
    batch: int = 8,
    seed: int = 0,
    threads: int = 0,
    precision: str | None = None,
):
    """Run both graphs on real (``data``: ``"digits"`` or an ImageFolder) and seeded random inputs.

    Returns :class:`validate.report.ParityReport` judged by ``precision``'s preset thresholds
    (default: the mixed graph's recorded precision).
    """
    from validate.compare import compare_funcs, preset
    from validate.inputs import parity_inputs
    from validate.ort import ort_runner
    from validate.parity import polygraphy_quiet
    from validate.report import ParityReport, aggregate

    meta = read_metadata(mixed_onnx)
    layers = list(meta.idle_layers)
    precision = precision or meta.precision
    thresholds = preset(precision)
    with tempfile.TemporaryDirectory(prefix="idlevit-mixed-check-") as tmp:
        ref_path, mixed_path = Path(tmp, "reference.onnx"), Path(tmp, "mixed.onnx")
        onnx.save(probe_copy(onnx.load(os.fspath(fp32_onnx)), layers, with_scores=True), ref_path)
        onnx.save(probe_copy(onnx.load(os.fspath(mixed_onnx)), layers, with_scores=False), mixed_path)
        reference, mixed = ort_runner(ref_path, "cpu", threads), ort_runner(mixed_path, "cpu", threads)
        reference.name, mixed.name = REFERENCE_NAME, MIXED_NAME
        with polygraphy_quiet(False):
            groups = parity_inputs(meta, data, "test", num_images if data else 0, random_batches, [batch], seed)
            feeds = [feed for group in groups for feed in group.feeds]
            stream = Comparator.run([reference, mixed], data_loader=feeds)
            accuracy = Comparator.compare_accuracy(
                stream, comparisons=[(0, 1)], compare_func=compare_funcs(thresholds, layers)
            )
    rows = aggregate(accuracy, REFERENCE_NAME, [MIXED_NAME], groups, thresholds, layers)
    setup = {
        "onnx": os.fspath(mixed_onnx),
        "onnx_sha256": sha256_file(mixed_onnx),
        "reference_onnx": os.fspath(fp32_onnx),
        "reference": REFERENCE_NAME,
        "backends": [MIXED_NAME],
        "arch": meta.arch,
        "precision": precision,
        "idle_layers": layers,
        "keep_tokens": list(meta.keep_tokens),
        "inputs": [{"kind": g.kind, "source": g.source, "batch": g.batch, "images": g.images} for g in groups],
    }
    return ParityReport(setup, thresholds, rows)


def per_layer_lines(report) -> list[str]:
    """Kept-token agreement of every idle layer, per input group (the Markdown table shows the worst)."""
    lines = []
    for row in report.rows:
        cells = [
            f"L{layer} {sel.agreement:.2%}"
            + (f" ({sel.near_tie} near-tie, {sel.mismatch} mismatch)" if sel.near_tie or sel.mismatch else "")
            for layer, sel in row.selection.items()
        ]
        lines.append(f"{row.group.kind} inputs, batch {row.group.batch}: " + ", ".join(cells))
    return lines
