"""Trace an IdleViT to ONNX, clean the graph with onnx-graphsurgeon, check it, stamp metadata.

The steps follow TensorRT's ``create_onnx.py`` samples: trace -> graph-surgeon clean-up
(constant folding, shape arithmetic and split sequences removed, toposort, names) -> ONNX
checker (full) and shape inference -> metadata -> (``optimize``: the graph for ONNX Runtime only,
:mod:`engines.optimize`) -> atomic write -> a parity run of the written
file against PyTorch (:mod:`validate.judge`, FP32 thresholds), which fails the export when it
does not hold.

Two exporters trace (:mod:`export.contract`): ``torch.onnx.export(dynamo=True)`` (the default,
built on ``torch.export``) and the TorchScript tracer (``dynamo=False``), kept while torch ships
it. The clean-up gives both the same op contract. Where the dynamo exporter's time goes (CPU,
12-block demo, torch 2.14): ``torch.export`` about 4 s, the ATen decompositions and type
promotion about 4 s, building torchlib's op registry about 1 s, the translation to ONNX a
fraction of a second; the cost grows with the number of ops, hardly with the model's width. Its
own ONNX optimiser (onnxscript's rewrite rules, about 1.5 s more) is left out (``optimize=False``):
the clean-up here does what the contract needs of it in a fraction of that time.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx_graphsurgeon.logger import G_LOGGER

import idlevit
from engines.graphs import constant_value, replace_uses
from engines.optimize import ONNXRUNTIME, Optimization, optimize_for_onnxruntime
from engines.plan import FP32
from idlevit.cli import progress as progress_bar
from idlevit.errors import CheckFailed, MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write, refuse_overwriting_inputs, sha256_file
from idlevit.metadata import ExportMetadata, load_onnx, read_metadata, write_metadata
from idlevit.model import IdleViT
from idlevit.names import IMAGES, export_name
from plugins.idle_scatter import OP_TYPE as FUSED_OP
from plugins.idle_scatter.graph_pass import fuse_idle_scatter
from validate.inputs import InputSpec
from validate.judge import run_parity
from validate.report import ParityReport

from .contract import DEFAULT_EXPORTER, DEFAULT_OPSET, DYNAMO, FORBIDDEN_OPS, opset_problem

#: ``--random-init`` weights: seeded, so two exports of one arch are one model (e.g. to compare exporters).
RANDOM_INIT_SEED = 0

#: Dimension name of the dynamic batch on every graph input and output.
BATCH = "batch"

#: What the TorchScript exporter says on every export of this model, all known to be harmless here:
#: its own deprecation, the constant CLS-first score row (meant to be a constant), and a Slice it
#: leaves to the clean-up's constant folding.
_TORCHSCRIPT_NOTES = (
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function"),
    (torch.jit.TracerWarning, r"torch\.tensor results are registered as constants in the trace"),
    (UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
)


@contextlib.contextmanager
def _known_notes_silenced(notes: Sequence[tuple[type[Warning], str]]) -> Iterator[None]:
    """Ignore exactly ``notes`` (category, message regex); every other warning still shows."""
    with warnings.catch_warnings():
        for category, message in notes:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def trace(
    model: IdleViT,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    with_indices: bool = False,
    *,
    exporter: str = DEFAULT_EXPORTER,
    fold_normalization: bool = False,
) -> onnx.ModelProto:
    """Trace the export forward to an ONNX model (dynamic batch unless ``batch`` is given).

    The example batch is at least 2 so neither exporter can specialise the batch to 1. With
    ``fold_normalization`` the graph takes RGB pixels 0..255 (:meth:`IdleViT.fold_normalization`).
    """
    problem = opset_problem(exporter, opset)
    if problem:
        raise ToolkitError(problem)
    module = model.export_module(with_indices, fold_normalization=fold_normalization)
    size = model.cfg.img_size
    example = torch.randn(batch or 2, 3, size, size)
    outputs = model.output_names(with_indices)
    with torch.no_grad():
        if exporter == DYNAMO:
            return _trace_dynamo(module, example, opset, outputs, dynamic=not batch)
        return _trace_torchscript(module, example, opset, outputs, dynamic=not batch)


def _trace_dynamo(
    module: torch.nn.Module, example: torch.Tensor, opset: int, outputs: list[str], dynamic: bool
) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)`` without its optimiser, report or progress printing."""
    try:
        import onnxscript  # noqa: F401  # lazy: only to name the missing package before torch fails on it
    except ImportError:
        raise MissingDependencyError(
            "the dynamo exporter needs onnxscript (pip install onnxscript); or pass --exporter torchscript"
        ) from None
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[IMAGES],
        output_names=outputs,
        dynamic_shapes=({0: torch.export.Dim(BATCH)},) if dynamic else None,
        optimize=False,  # the clean-up does what the contract needs, faster (see the module docstring)
        verbose=False,
        report=False,
    )
    return program.model_proto


def _trace_torchscript(
    module: torch.nn.Module, example: torch.Tensor, opset: int, outputs: list[str], dynamic: bool
) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=False)``; a torch that no longer ships it gets a one-line error."""
    buffer = io.BytesIO()
    try:
        with _known_notes_silenced(_TORCHSCRIPT_NOTES):
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[IMAGES],
                output_names=outputs,
                dynamic_axes={name: {0: BATCH} for name in [IMAGES, *outputs]} if dynamic else None,
                do_constant_folding=True,
            )
    except Exception as err:  # noqa: BLE001 - whatever a torch without the TorchScript exporter raises
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise MissingDependencyError(
            f"the TorchScript exporter of torch {torch.__version__} failed ({first[:200]}); "
            f"export with the default --exporter {DYNAMO}"
        ) from None
    return onnx.load_from_string(buffer.getvalue())


# ---- clean-up ---------------------------------------------------------------------------------
def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """One op contract from either exporter (onnx-graphsurgeon), with nothing the graph does not need.

    Constants folded; no-ops dropped (Identity, a Cast to the dtype it already has, a Slice over
    the whole axis); each ``SplitToSequence`` read by ``SequenceAt`` becomes one ``Split``;
    Reshape shapes that copy the batch size from the input (Shape -> ... -> Concat) become
    constants with -1 (and ``allowzero`` goes where the shape holds no 0); chained Transposes
    become one; GELU is written in the form ONNX Runtime fuses (:func:`_canonical_gelu`); operands
    are put in one order (:func:`_canonical_operands`), so both exporters give ONNX Runtime the
    same graph; dead nodes go; nodes are sorted and every one gets a unique name (the precision
    plan finds the scoring path by name); the batch axis of every input and output is named
    ``batch``; stale intermediate shapes are dropped (the check infers them again).
    """
    model = onnx.shape_inference.infer_shapes(model)  # shapes the passes below rely on
    graph = gs.import_onnx(model)
    with _graphsurgeon_errors_only():  # its notes on folding the (large) weight transposes are expected
        graph.fold_constants().cleanup()
        _drop_no_ops(graph)
        _fuse_split_sequences(graph)
        _static_reshape_shapes(graph)
        _fuse_transposes(graph)
        _canonical_gelu(graph)
        _canonical_operands(graph)
        graph.cleanup().fold_constants().cleanup().toposort()
    _name_nodes(graph)
    _name_batch_axis(graph)
    cleaned = gs.export_onnx(graph)
    cleaned.ir_version = model.ir_version
    del cleaned.graph.value_info[:]
    return cleaned


@contextlib.contextmanager
def _graphsurgeon_errors_only() -> Iterator[None]:
    """onnx-graphsurgeon prints only errors meanwhile (its warnings here are about work meant to be done)."""
    previous = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = previous


def _is_no_op(node: gs.Node) -> bool:
    """Identity, a Cast to its input's own dtype, or a Slice that keeps every element."""
    if node.op == "Identity":
        return True
    source = node.inputs[0] if node.inputs else None
    if node.op == "Cast" and source is not None and source.dtype is not None:
        return np.dtype(source.dtype) == onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    if node.op == "Slice" and len(node.inputs) >= 3:
        starts, ends = constant_value(node.inputs[1]), constant_value(node.inputs[2])
        steps = constant_value(node.inputs[4]) if len(node.inputs) > 4 else np.ones(1, dtype=np.int64)
        whole = np.iinfo(np.int64).max // 2  # exporters write INT64_MAX (or close) for "to the end"
        return (
            starts is not None
            and ends is not None
            and steps is not None
            and bool((starts == 0).all() and (ends >= whole).all() and (steps == 1).all())
        )
    return False


def _drop_no_ops(graph: gs.Graph) -> None:
    """Route the readers of a no-op's output (:func:`_is_no_op`) to its input."""
    for node in graph.nodes:
        if not _is_no_op(node) or len(node.outputs) != 1:
            continue
        source, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs:
            continue
        replace_uses(out, source)
        node.outputs = []


def _fuse_split_sequences(graph: gs.Graph) -> None:
    """``SplitToSequence(x, split)`` read only by ``SequenceAt(seq, i)`` with constant ``i`` -> one ``Split``."""
    for node in list(graph.nodes):
        if node.op != "SplitToSequence" or len(node.inputs) != 2 or int(node.attrs.get("keepdims", 1)) != 1:
            continue
        data, split = node.inputs
        sizes, axis = constant_value(split), int(node.attrs.get("axis", 0))
        readers = list(node.outputs[0].outputs)
        positions = [constant_value(reader.inputs[1]) if reader.op == "SequenceAt" else None for reader in readers]
        if sizes is None or not readers or any(p is None or p.size != 1 for p in positions):
            continue
        if sizes.ndim == 0:  # equal chunks: the axis length must be known
            length = data.shape[axis] if data.shape is not None and len(data.shape) > abs(axis) else None
            if not isinstance(length, (int, np.integer)):
                continue
            chunk = int(sizes)
            sizes = np.array([chunk] * (int(length) // chunk) + ([int(length) % chunk] if length % chunk else []))
        sizes = sizes.astype(np.int64).reshape(-1)
        parts = [gs.Variable(f"{node.name or 'split'}_part{i}", dtype=data.dtype) for i in range(len(sizes))]
        for reader, position in zip(readers, positions, strict=True):
            index = int(position.reshape(-1)[0]) % len(sizes)
            parts[index] = reader.outputs[0]
            reader.outputs = []
        sizes_const = gs.Constant(f"{node.name or 'split'}_sizes", sizes)
        graph.nodes.append(
            gs.Node("Split", name=node.name, attrs={"axis": axis}, inputs=[data, sizes_const], outputs=parts)
        )
        node.outputs = []


def _static_reshape_shapes(graph: gs.Graph) -> None:
    """Reshape shapes ``Concat(batch, c1, c2, ...)`` whose only unknown is one 1-element piece -> ``[-1, c1, ...]``.

    With every other entry a positive constant, Reshape infers the -1 as the element count over
    their product, which is the value the removed Shape chain computed: the same tensor, exactly.
    """
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) != 2 or not node.inputs[1].inputs:
            continue
        concat = node.inputs[1].inputs[0]
        if concat.op != "Concat" or int(concat.attrs.get("axis", 0)) != 0:
            continue
        values, unknown = [], 0
        for piece in concat.inputs:
            known = constant_value(piece)
            if known is not None:
                values += [int(v) for v in known.reshape(-1)]
            elif piece.shape is not None and len(piece.shape) == 1 and piece.shape[0] == 1:
                values.append(-1)
                unknown += 1
            else:
                unknown = 2  # a piece of unknown length: leave this Reshape alone
                break
        if unknown != 1 or any(v == 0 or v < -1 for v in values):
            continue
        node.inputs[1] = gs.Constant(f"{node.name or 'reshape'}_shape", np.array(values, dtype=np.int64))
    for node in graph.nodes:  # allowzero only matters for a 0 in the shape: drop it where none can be
        shape = constant_value(node.inputs[1]) if node.op == "Reshape" and len(node.inputs) == 2 else None
        if shape is not None and (shape != 0).all():
            node.attrs.pop("allowzero", None)


def _fuse_transposes(graph: gs.Graph) -> None:
    """``Transpose(Transpose(x, p1), p2)`` -> ``Transpose(x, p1[p2])``, or ``x`` itself when that is the identity."""
    for node in graph.nodes:
        if node.op != "Transpose" or not node.inputs or len(node.inputs[0].inputs) != 1:
            continue
        first = node.inputs[0].inputs[0]
        if first.op != "Transpose" or "perm" not in first.attrs or "perm" not in node.attrs:
            continue
        perm = [int(first.attrs["perm"][i]) for i in node.attrs["perm"]]
        if perm != sorted(perm):
            node.inputs[0], node.attrs["perm"] = first.inputs[0], perm
            continue
        source, out = first.inputs[0], node.outputs[0]
        if out in graph.outputs or source in graph.inputs:
            node.inputs[0], node.attrs["perm"] = first.inputs[0], perm  # keep a node between graph I/O
            continue
        replace_uses(out, source)
        node.outputs = []


def _scalar_input(node: gs.Node) -> tuple[float | None, gs.Tensor | None]:
    """A binary node's constant one-element input and its other input, or (None, None)."""
    if len(node.inputs) != 2:
        return None, None
    for i, tensor in enumerate(node.inputs):
        value = constant_value(tensor)
        if value is not None and value.size == 1:
            return float(value.reshape(-1)[0]), node.inputs[1 - i]
    return None, None


def _producer(tensor: gs.Tensor | None, op: str) -> gs.Node | None:
    if tensor is None or len(tensor.inputs) != 1 or tensor.inputs[0].op != op:
        return None
    return tensor.inputs[0]


def _canonical_gelu(graph: gs.Graph) -> None:
    """Write the exact GELU as ``(h * (erf(h / sqrt2) + 1)) * 0.5``, the form ONNX Runtime fuses.

    The dynamo exporter writes ``h * (0.5 * (erf(h / sqrt2) + 1))``, which ONNX Runtime's
    ``GeluFusion`` does not match, so its MLP keeps five element-wise ops where the TorchScript
    graph gets one ``BiasGelu``, and the default export ran slower. Moving the halving last computes the
    same numbers: multiplying by 0.5 is exact in binary floating point (short of subnormal results).
    """
    for half in graph.nodes:
        if half.op != "Mul" or len(half.outputs) != 1 or len(half.outputs[0].outputs) != 1:
            continue
        factor, added = _scalar_input(half)
        plus_one = _producer(added, "Add")
        if factor != 0.5 or plus_one is None or _scalar_input(plus_one)[0] != 1.0:
            continue
        erf = _producer(_scalar_input(plus_one)[1], "Erf")
        divide = _producer(erf.inputs[0], "Div") if erf is not None else None
        if divide is None or abs((_scalar_input(divide)[0] or 0.0) - math.sqrt(2.0)) > 1e-6:
            continue
        source, outer = divide.inputs[0], half.outputs[0].outputs[0]
        if outer.op != "Mul" or source not in outer.inputs or half.outputs[0] not in outer.inputs:
            continue
        halving = next(t for t in half.inputs if t is not added)
        half.inputs = [source, added]
        outer.inputs = [half.outputs[0], halving]


#: Binary ops whose two inputs may swap places: the same numbers either way (IEEE + and * commute).
COMMUTATIVE_OPS = frozenset({"Add", "Mul"})


def _canonical_operands(graph: gs.Graph) -> None:
    """One spelling of what the exporters spell two ways: the constant second, Flatten as Reshape, no trailing ''.

    The TorchScript exporter writes a bias add as ``Add(bias, x)``, a ``Flatten`` where the dynamo
    exporter writes ``Reshape(x, [-1, n])``, and an empty optional input at the end of ``Pad``;
    the dynamo exporter ``Add(x, bias)``, the Reshape and nothing. Each pair computes the same
    tensor; written one way, the two exports are node for node the same graph to ONNX Runtime.
    """
    for node in graph.nodes:
        if node.op in COMMUTATIVE_OPS and len(node.inputs) == 2:
            first, second = node.inputs
            if isinstance(first, gs.Constant) and not isinstance(second, gs.Constant):
                node.inputs = [second, first]
        while node.inputs and isinstance(node.inputs[-1], gs.Variable) and not node.inputs[-1].name:
            node.inputs.pop()  # an omitted optional input: its default, as if it were not written
        if node.op == "Flatten" and len(node.inputs) == 1:
            shape, axis = node.inputs[0].shape, int(node.attrs.get("axis", 1))
            if shape is None or not 0 < axis < len(shape):
                continue
            tail = shape[axis:]
            if not all(isinstance(d, (int, np.integer)) and d > 0 for d in tail):
                continue  # a Reshape needs the flattened width as a constant
            node.op, node.attrs = "Reshape", {}
            width = int(np.prod([int(d) for d in tail]))
            node.inputs.append(gs.Constant(f"{node.name or 'flatten'}_shape", np.array([-1, width], dtype=np.int64)))


def _name_nodes(graph: gs.Graph) -> None:
    """Every node a unique, non-empty name (exporters leave some empty or repeated)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _name_batch_axis(graph: gs.Graph) -> None:
    """Call the dynamic first axis of every graph input and output ``batch`` (exporters name it s0, s77, ...)."""
    for tensor in [*graph.inputs, *graph.outputs]:
        if tensor.shape and not isinstance(tensor.shape[0], (int, np.integer)):
            tensor.shape = [BATCH, *tensor.shape[1:]]


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX checker (full) and strict shape inference; refuse graphs holding forbidden ops."""
    forbidden = sorted({n.op_type for n in model.graph.node} & FORBIDDEN_OPS)
    if forbidden:
        raise ToolkitError(f"exported graph holds forbidden ops {forbidden}; this is a toolkit bug, please report it")
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def graph_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the graph imports."""
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def build_metadata(
    model: IdleViT,
    opset: int,
    batch: int | None,
    with_indices: bool,
    checkpoint: str,
    checkpoint_sha256: str,
    folded_normalization: bool = False,
    exporter: str = DEFAULT_EXPORTER,
) -> ExportMetadata:
    cfg, schedule = model.cfg, model.schedule
    return ExportMetadata(
        arch=cfg.name,
        idle_layers=list(schedule.idle_layers),
        keep_ratios=list(schedule.keep_ratios),
        keep_tokens=list(schedule.keep_tokens(cfg.num_tokens)),
        num_tokens=cfg.num_tokens,
        img_size=cfg.img_size,
        num_classes=cfg.num_classes,
        mean=list(cfg.mean),
        std=list(cfg.std),
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        opset=opset,
        toolkit_version=idlevit.__version__,
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        with_indices=with_indices,
        batch=batch or 0,
        folded_normalization=folded_normalization,
        extra={"exporter": exporter, "torch_version": torch.__version__},
    )


def export_onnx(
    model: IdleViT,
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    with_indices: bool = False,
    plugin: bool = False,
    fold_normalization: bool = False,
    exporter: str = DEFAULT_EXPORTER,
    checkpoint: str = "random-init",
    checkpoint_sha256: str = "",
    verify_batch: int = 3,
    progress: bool = True,
    optimize: bool = False,
) -> ParityReport | None:
    """Export ``model`` to ``out``, then judge the file against the model; returns the verdict (None if skipped).

    ``exporter`` is ``"dynamo"`` (default) or ``"torchscript"`` (:mod:`export.contract`); the
    clean-up gives both the same op contract. ``optimize`` writes the graph for ONNX Runtime only
    (:func:`engines.optimize.optimize_for_onnxruntime`: its fused Attention and transformer
    fusions, the scoring path untouched), recorded in the metadata (``optimized_for``). The check
    is a parity run (ONNX Runtime on the CPU against the PyTorch reference, FP32 thresholds, on
    ``verify_batch`` seeded random images; a graph with folded normalisation gets pixels 0..255
    and the reference normalises them); when it fails, :class:`CheckFailed` names the first
    failed metric and the file, which is kept for inspection.
    """
    problem = opset_problem(exporter, opset)
    if problem:
        raise ToolkitError(problem)
    _refuse_optimize_with_plugin(optimize, plugin)
    steps = ["trace", "clean", "check", *(["optimize"] if optimize else []), "write"]
    steps += ["verify"] if verify_batch else []
    bar = progress_bar(steps, enabled=progress, desc=f"export ({exporter})", unit="step", leave=False)
    report = None
    for step in bar:
        bar.set_postfix_str(step)
        if step == "trace":
            proto = trace(model, opset, batch, with_indices, exporter=exporter, fold_normalization=fold_normalization)
        elif step == "clean":
            proto = clean(proto)
            if plugin:
                proto = _fuse_plugin(proto)
        elif step == "check":
            proto = check(proto)
            meta = build_metadata(
                model,
                graph_opset(proto),
                batch,
                with_indices,
                checkpoint,
                checkpoint_sha256,
                fold_normalization,
                exporter,
            )
            if plugin:
                meta.plugin = f"idlevit::{FUSED_OP}"
            write_metadata(proto, meta)
        elif step == "optimize":
            proto, _ = optimize_graph(proto)
        elif step == "write":
            with atomic_write(out) as handle:
                handle.write(proto.SerializeToString())
        elif step == "verify":
            report = verify_against_reference(model, out, batch or verify_batch)
    bar.close()
    return report


def optimize_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, Optimization]:
    """A plain export (its metadata written) -> the graph for ONNX Runtime only, its metadata saying so."""
    meta = read_metadata(proto)
    if meta.optimized_for or meta.plugin:
        raise ToolkitError(
            f"the graph is {'already optimised' if meta.optimized_for else 'fused for the TensorRT plugin'}; "
            "optimise a plain export (python -m export.onnx without --plugin)"
        )
    optimized, optimization = optimize_for_onnxruntime(proto)
    meta.optimized_for = ONNXRUNTIME
    meta.extra["optimization"] = optimization.to_dict()
    write_metadata(optimized, meta)
    return optimized, optimization


def optimize_file(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """An exported plain graph -> at ``out``, the graph ``export.onnx --optimize`` writes, without tracing again."""
    refuse_overwriting_inputs([out], [source])
    proto, _ = optimize_graph(load_onnx(source))
    with atomic_write(out) as handle:
        handle.write(proto.SerializeToString())
    return Path(out)


def _refuse_optimize_with_plugin(optimize: bool, plugin: bool) -> None:
    if optimize and plugin:
        raise ToolkitError("--optimize writes a graph for ONNX Runtime and --plugin one for TensorRT; give one of them")


def _fuse_plugin(proto: onnx.ModelProto) -> onnx.ModelProto:
    idle_layers = sum(node.op_type == "TopK" for node in proto.graph.node)  # one TopK per idle layer
    fused, count = fuse_idle_scatter(proto)
    if count != idle_layers:
        raise ToolkitError(f"--plugin fused {count} scatters but the graph has {idle_layers} idle layers")
    return fused


def verify_against_reference(
    model: IdleViT, onnx_path: str | os.PathLike[str], batch: int, seed: int = 0
) -> ParityReport:
    """Judge the written ONNX (ONNX Runtime, CPU) against the PyTorch model on one seeded random batch.

    FP32 thresholds (logit error, cosine, top-1, and the kept tokens when the graph exports
    them); NaN or Inf logits fail. The inputs follow the graph's metadata: normalised images, or
    pixels 0..255 for a graph with folded normalisation (the reference then normalises them
    itself). Raises :class:`CheckFailed` on the first failed metric.
    """
    inputs = InputSpec(data=None, random_batches=1, batch_sizes=(batch,), seed=seed)
    report = run_parity(onnx_path, model, inputs=inputs, precision=FP32, ort="cpu", progress=False)
    if not report.passed:
        raise CheckFailed(
            f"the exported graph does not compute the model: {report.failures[0]}; "
            f"{os.fspath(onnx_path)} is kept for inspection"
        )
    return report


def verdict_line(report: ParityReport) -> str:
    """One line for the command's output: what the export check measured."""
    row = report.rows[0]
    kept = (
        f"kept-token agreement {min(sel.agreement for sel in row.selection.values()):.2%} (worst idle layer)"
        if row.selection
        else "kept tokens not checked (export with --with-indices)"
    )
    return (
        f"ONNX Runtime vs PyTorch on {row.samples} seeded random images (FP32 thresholds): max abs logit error "
        f"{row.max_abs:.2e}, top-1 agreement {row.top1_agreement:.0%}, {kept}: {'PASS' if row.passed else 'FAIL'}"
    )


def graph_kind(
    with_indices: bool = False, plugin: bool = False, fold_normalization: bool = False, optimized: str = ""
) -> str:
    """What kind of graph an export writes, for the summary line: plain, index outputs, fused plugin, folded input,
    optimised for ONNX Runtime (``optimized``: :meth:`engines.optimize.Optimization.summary`)."""
    kinds = [optimized] if optimized else []
    if with_indices:
        kinds.append("with index outputs kept_indices_<layer>")
    if plugin:
        kinds.append(f"fused idlevit::{FUSED_OP} plugin")
    if fold_normalization:
        kinds.append("folded normalization: takes RGB pixels 0..255")
    return ", ".join(kinds) if kinds else "plain: logits only, takes normalised images"


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    path: Path
    model: IdleViT
    report: ParityReport | None  # None when the check was skipped
    seconds: float
    kind: str = ""  # :func:`graph_kind`
    exporter: str = DEFAULT_EXPORTER


def export_checkpoint(
    ckpt: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    random_init: bool = False,
    keep_rate: float | None = None,
    idle_layers: Sequence[int] | None = None,
    keep_ratios: Sequence[float] | None = None,
    img_size: int | None = None,
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    with_indices: bool = False,
    plugin: bool = False,
    fold_normalization: bool = False,
    exporter: str = DEFAULT_EXPORTER,
    verify: bool = True,
    progress: bool = True,
    optimize: bool = False,
) -> ExportResult:
    """``python -m export.onnx`` as a function: load (or create) the model, export it, judge the file.

    ``ckpt`` ``None`` or ``"demo"`` is the bundled demo; ``random_init`` builds ``arch`` with
    random weights instead. The schedule comes from ``keep_rate`` or the explicit lists. ``out``
    defaults to :func:`default_output_path`; an ``out`` that is the checkpoint is refused.
    """
    started = time.perf_counter()
    problem = opset_problem(exporter, opset)
    if problem:
        raise ToolkitError(problem)
    if batch is not None and batch < 1:
        raise ToolkitError(f"--static-batch {batch} must be >= 1 (omit it for a dynamic batch)")
    if random_init and ckpt:
        raise ToolkitError("give either --ckpt or --random-init, not both")
    _refuse_optimize_with_plugin(optimize, plugin)
    schedule = {"keep_rate": keep_rate, "idle_layers": idle_layers, "keep_ratios": keep_ratios}
    ckpt_path: Path | None = None
    if random_init:
        if not arch:
            raise ToolkitError("--random-init needs --arch (one of: " + ", ".join(idlevit.list_archs()) + ")")
        overrides = {"img_size": img_size} if img_size else {}
        with torch.random.fork_rng(devices=[]):  # the same weights on every run; the caller's RNG untouched
            torch.manual_seed(RANDOM_INIT_SEED)
            model = idlevit.create_model(arch, **schedule, **overrides).eval()
        ckpt_name, ckpt_sha = "random-init", ""
    else:
        ckpt_path = idlevit.resolve_checkpoint_path(ckpt)
        if out is not None:  # before the checkpoint is read: a refusal needs no model
            refuse_overwriting_inputs([out], [ckpt_path])
        model = idlevit.load_checkpoint(ckpt_path, arch=arch, **schedule)
        if img_size and img_size != model.cfg.img_size:
            raise ToolkitError(
                f"--img-size {img_size} differs from the checkpoint's {model.cfg.img_size} px "
                "(its position embedding fixes it); omit --img-size"
            )
        ckpt_name, ckpt_sha = ("demo" if ckpt in (None, "demo") else ckpt_path.name), sha256_file(ckpt_path)
    if out is not None:
        path = Path(out)
    else:
        source = None if random_init else (ckpt or "demo")
        path = default_output_path(
            source, model.cfg.name, with_indices, plugin, fold_normalization, avoid=ckpt_path, optimize=optimize
        )
    refuse_overwriting_inputs([path], [ckpt_path])
    report = export_onnx(
        model,
        path,
        opset=opset,
        batch=batch,
        with_indices=with_indices,
        plugin=plugin,
        fold_normalization=fold_normalization,
        exporter=exporter,
        checkpoint=ckpt_name,
        checkpoint_sha256=ckpt_sha,
        verify_batch=3 if verify else 0,
        progress=progress,
        optimize=optimize,
    )
    optimized = ""
    if optimize:
        optimized = Optimization.from_dict(read_metadata(path).extra.get("optimization", {})).summary()
    kind = graph_kind(with_indices, plugin, fold_normalization, optimized)
    return ExportResult(path, model, report, time.perf_counter() - started, kind, exporter)


def default_output_path(
    checkpoint: str | os.PathLike[str] | None,
    arch: str,
    with_indices: bool = False,
    plugin: bool = False,
    fold_normalization: bool = False,
    *,
    avoid: str | os.PathLike[str] | None = None,
    optimize: bool = False,
) -> Path:
    """Where an export goes when ``--out`` is not given.

    ``foo.pth`` -> ``foo.onnx`` beside the checkpoint; the bundled demo
    (``idlevit_deit_micro_digits_ratio0.7.onnx``) and random-init (``idlevit_<arch>_random.onnx``)
    -> the working directory. Other kinds of graph get their own names: ``<stem>_indices``,
    ``<stem>_plugin``, ``<stem>_pixels`` (folded normalisation), ``<stem>_ort`` (optimised for ONNX
    Runtime), combined in that order. A name that would be the input ``avoid`` (e.g. ``--ckpt
    m.onnx``) gets ``_export`` added.
    """
    if checkpoint is None:
        stem = Path(f"idlevit_{arch}_random")
    elif str(checkpoint) == "demo":
        stem = Path(idlevit.DEMO_CHECKPOINT.stem)
    else:
        stem = Path(checkpoint).with_suffix("")
    flags = (("indices", with_indices), ("plugin", plugin), ("pixels", fold_normalization), ("ort", optimize))
    path = stem.with_name(export_name(stem.name, [tag for tag, on in flags if on]))
    if avoid is not None and _same_path(path, Path(avoid)):
        path = path.with_name(f"{path.stem}_export.onnx")
    return path


def _same_path(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
