"""The FP32 graph as the reference: the reduced-precision check, and parity where PyTorch is not installed.

Before an engine is built from a reduced-precision graph (``--fp16``'s mixed-precision ONNX),
that graph runs in ONNX Runtime beside the FP32 graph it came from, on the same real and
seeded random images, and the one judge (:mod:`validate.judge`) compares them with the preset
of the reduced precision: logit error and cosine, top-1 agreement, and the kept tokens of every
idle layer with near-tie and cascade accounting. The FP32 graph matches PyTorch to ~1e-6
(``python -m validate.parity`` checks that side against the checkpoint), so it stands in for
the model here.

Two probe copies make the selection check possible for any export: each exposes every idle
layer's kept positions (``kept_indices_<layer>``), and the reference also exposes the scores
TopK ranks (``token_scores_<layer>``). ONNX Runtime's CPU kernels compute many FP16 ops in
FP32 and skip the rounding, so an FP16 graph is also judged with FP16 storage rounding
emulated (:func:`engines.precision.emulate_fp16`). INT8 and FP8 Q/DQ graphs (:mod:`engines.quantize`)
need no emulation: ONNX Runtime computes their QuantizeLinear / DequantizeLinear exactly (INT8 with
integer kernels, FP8 by rounding to E4M3 and back), so the check sees the quantization a GPU
applies, judged by the preset of the graph's precision. An ONNX Runtime that cannot run FP8 Q/DQ
on the CPU (:func:`cpu_runs_fp8`) leaves an FP8 graph to its static checks.

:func:`run_graph_parity` is ``python -m validate.parity`` with this reference: a reduced graph
against the FP32 graph it was made from, or an engine against its FP32 ONNX. It needs no PyTorch,
so a deployment host checks what it builds and runs.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from polygraphy.backend.base import BaseRunner

from engines.ort import ort_runner
from engines.plan import FP16
from engines.precision import emulate_fp16, fp16_nodes
from engines.runtime import TENSORRT, tensorrt_runner
from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.metadata import load_onnx, read_metadata
from idlevit.names import kept_indices_name, token_scores_name

from .inputs import InputGroup, InputSpec, parity_inputs
from .judge import compare_runners, group_setup
from .presets import Thresholds, preset
from .report import GroupResult, ParityReport
from .runners import engine_precision, polygraphy_quiet, resolve_devices
from .sources import check_reference_graph

#: Runner names in the report: the FP32 graph, the reduced graph as ONNX Runtime's kernels run it,
#: and the reduced graph with FP16 storage rounding emulated.
REFERENCE_NAME, REDUCED_NAME, EMULATED_NAME = "fp32", "reduced", "fp16-emulated"
#: The check's default inputs: 16 real images when a dataset is named, two seeded random batches of 8.
CHECK_INPUTS = InputSpec(data=None, num_images=16, random_batches=2, batch_sizes=(8,))


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


@functools.lru_cache(maxsize=1)
def cpu_runs_fp8() -> bool:
    """Whether this ONNX Runtime runs FP8 (E4M3) QuantizeLinear / DequantizeLinear on the CPU."""
    import onnxruntime as ort  # lazy: asked only for FP8 graphs

    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
    scale = onnx.helper.make_tensor("scale", onnx.TensorProto.FLOAT, [], [1.0])
    nodes = [
        onnx.helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        onnx.helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "fp8_probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [zero, scale],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"x": np.array([1.0, 3.3], dtype=np.float32)})
    except Exception:  # noqa: BLE001 - any refusal means: not supported here
        return False
    return bool(out[1] == 3.25)  # E4M3 keeps 3 mantissa bits: 3.3 rounds to 3.25


def judge_against_graph(
    fp32: onnx.ModelProto,
    idle_layers: Sequence[int],
    candidates: Mapping[str, tuple[onnx.ModelProto, str]],
    runners: Sequence[BaseRunner],
    thresholds: Mapping[str, Thresholds],
    groups: Sequence[InputGroup],
    *,
    device: str = "cpu",
    threads: int = 0,
    progress: bool = False,
    verbose: bool = False,
) -> list[GroupResult]:
    """The one judge with the FP32 graph in ONNX Runtime as the reference.

    The reference runs a probe copy of ``fp32`` that exposes every idle layer's kept positions and
    scores (on ``device``); each candidate graph (name -> (model, device)) runs as a probe copy that
    exposes its kept positions; ``runners`` (a TensorRT engine) run as they are.
    """
    layers = list(idle_layers)
    with tempfile.TemporaryDirectory(prefix="idlevit-graph-reference-") as tmp:
        reference_path = Path(tmp, "reference.onnx")
        onnx.save(probe_copy(fp32, layers, with_scores=True), reference_path)
        backends = []
        for i, (name, (model, on)) in enumerate(candidates.items()):
            path = Path(tmp, f"candidate{i}.onnx")
            onnx.save(probe_copy(model, layers, with_scores=False), path)
            backends.append(ort_runner(path, on, threads, name=name))
        backends += list(runners)
        reference = ort_runner(reference_path, device, threads, name=REFERENCE_NAME)
        return compare_runners(reference, backends, thresholds, layers, groups, progress=progress, verbose=verbose)


def check_reduced_precision(
    fp32_onnx: str | os.PathLike[str],
    reduced_onnx: str | os.PathLike[str],
    *,
    inputs: InputSpec = CHECK_INPUTS,
    others: Mapping[str, str | os.PathLike[str] | onnx.ModelProto] | None = None,
    precision: str | None = None,
    overrides: Mapping[str, float | None] | None = None,
    device: str = "cpu",
    threads: int = 0,
    progress: bool = False,
) -> ParityReport:
    """Judge ``reduced_onnx`` (and ``others``, by name) against ``fp32_onnx`` on the same inputs.

    The preset is the reduced graph's precision (its metadata, or ``precision``), with
    ``overrides`` on top; an FP16 graph is also judged with FP16 rounding emulated. ``others``
    may be ONNX paths or in-memory models (e.g. a graph under study).
    """
    meta = read_metadata(reduced_onnx)
    layers = list(meta.idle_layers)
    precision = precision or meta.precision
    limits = preset(precision).with_overrides(**(overrides or {}))
    fp32 = load_onnx(fp32_onnx)
    reduced = load_onnx(reduced_onnx)
    candidates: dict[str, tuple[onnx.ModelProto, str]] = {REDUCED_NAME: (reduced, device)}
    if precision == FP16:
        candidates[EMULATED_NAME] = (emulate_fp16(fp32, fp16_nodes(reduced)), device)
    for name, other in (others or {}).items():
        candidates[name] = (other if isinstance(other, onnx.ModelProto) else load_onnx(other), device)
    with polygraphy_quiet(False):
        groups = parity_inputs(meta, inputs)
    thresholds = {name: limits for name in candidates}
    rows = judge_against_graph(
        fp32, layers, candidates, [], thresholds, groups, device=device, threads=threads, progress=progress
    )
    setup = {
        "onnx": os.fspath(reduced_onnx),
        "onnx_sha256": sha256_file(reduced_onnx),
        "reference_onnx": os.fspath(fp32_onnx),
        "arch": meta.arch,
        "precision": {name: precision for name in candidates},
        "reference": REFERENCE_NAME,
        "backends": list(candidates),
        "device": device,
        "idle_layers": layers,
        "keep_tokens": list(meta.keep_tokens),
        "kept_indices_checked": layers,
        "inputs": [group_setup(group) for group in groups],
    }
    if "quantization" in meta.extra:
        setup["quantization"] = meta.extra["quantization"]
    return ParityReport(setup, thresholds, rows)


def run_graph_parity(
    onnx_path: str | os.PathLike[str],
    reference_onnx: str | os.PathLike[str],
    engine: str | os.PathLike[str] | None = None,
    *,
    inputs: InputSpec = InputSpec(),
    precision: str | None = None,
    overrides: Mapping[str, float | None] | None = None,
    ort: str = "auto",
    threads: int = 0,
    progress: bool = True,
    verbose: bool = False,
) -> ParityReport:
    """Parity with the FP32 graph ``reference_onnx`` in ONNX Runtime as the reference, no PyTorch needed.

    The backends are ``onnx_path`` in ONNX Runtime (on the ``ort`` devices; left out when it is the
    reference itself, "engine vs its ONNX") with its kept tokens exposed whatever it exports, an FP16
    graph also with FP16 storage rounding emulated, and the engine in TensorRT. Each is judged by
    the preset of its precision, as :func:`validate.judge.run_parity` judges them.
    """
    meta = read_metadata(onnx_path)
    reference_meta = read_metadata(reference_onnx)
    check_reference_graph(reference_meta, meta, reference_onnx, onnx_path)
    fp32 = load_onnx(reference_onnx)
    candidates: dict[str, tuple[onnx.ModelProto, str]] = {}
    if not same_file(onnx_path, reference_onnx):
        graph = load_onnx(onnx_path)
        for device in resolve_devices(ort):
            candidates[f"onnxruntime-{device}"] = (graph, device)
        if meta.precision == FP16 and candidates:
            candidates[EMULATED_NAME] = (emulate_fp16(fp32, fp16_nodes(graph)), "cpu")
    runners = [tensorrt_runner(engine)] if engine is not None else []
    if not candidates and not runners:
        raise ToolkitError(
            f"nothing to compare with {os.fspath(reference_onnx)}: it is the graph under test; pass --engine, "
            "or a reduced-precision graph with --onnx"
        )
    precisions = {name: precision or (FP16 if name == EMULATED_NAME else meta.precision) for name in candidates}
    if engine is not None:
        precisions[TENSORRT] = precision or engine_precision(engine, onnx_path) or meta.precision
    thresholds = {name: preset(p).with_overrides(**(overrides or {})) for name, p in precisions.items()}
    with polygraphy_quiet(verbose):
        groups = parity_inputs(meta, inputs)
    rows = judge_against_graph(
        fp32,
        meta.idle_layers,
        candidates,
        runners,
        thresholds,
        groups,
        threads=threads,
        progress=progress,
        verbose=verbose,
    )
    setup = {
        "onnx": os.fspath(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "reference_onnx": os.fspath(reference_onnx),
        "reference_onnx_sha256": sha256_file(reference_onnx),
        "engine": None if engine is None else os.fspath(engine),
        "arch": meta.arch,
        "precision": precisions,
        "reference": REFERENCE_NAME,
        "backends": list(precisions),
        "idle_layers": list(meta.idle_layers),
        "keep_tokens": list(meta.keep_tokens),
        "kept_indices_checked": list(meta.idle_layers),
        "inputs": [group_setup(group) for group in groups],
    }
    return ParityReport(setup, thresholds, rows)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).resolve() == Path(b).resolve()
