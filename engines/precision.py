"""The precision plan: which nodes of an exported IdleViT stay FP32, and how a target is told.

IdleViT's trap: if reduced-precision rounding reorders the CLS-attention scores, TopK keeps
other tokens and the output drifts. The plan keeps every idle layer's **scoring path** in FP32:
the nodes between the residual stream and TopK (norm1, the CLS query folded into the key
weights, its product with every token, TopK itself). Everything else goes to the
reduced precision (ONNX Runtime's FP16 converter keeps the ops it has no FP16 rule for, such as
TopK, in FP32); graph inputs and outputs stay FP32.

How the plan reaches TensorRT depends on the target (:class:`engines.target.Target`):

* strongly typed targets (TensorRT 11.x, 10.12+, TensorRT-RTX) get a **mixed-precision ONNX**
  whose tensor types say it all (``--fp16``: ONNX Runtime's FP16 converter with the scoring path blocked);
* older TensorRT 10.x gets the FP32 ONNX plus ``BuilderFlag.FP16``, FP32 precision on the
  scoring-path layers and ``OBEY_PRECISION_CONSTRAINTS``;
* INT8 and FP8 are explicit quantization on every target: a Q/DQ graph (:mod:`engines.quantize`,
  scoring path without Q/DQ) built as a strongly typed network (TensorRT 10.0+, RTX).

Everything here is pure Python (onnx, onnx-graphsurgeon, ONNX Runtime; ModelOpt only for Q/DQ
graphs, in :mod:`engines.quantize`): it runs and is tested without TensorRT and, but for Q/DQ
graph writing, without PyTorch.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write, sha256_file
from idlevit.metadata import load_onnx, read_metadata, write_metadata
from idlevit.names import reduced_graph_name

from .graphs import export_like, replace_uses
from .plan import FP16, FP32, PRECISIONS, QUANTIZED, Method, PrecisionPlan
from .target import Target

#: Ops whose first input is the residual stream an idle layer reads and writes back.
_WRITE_BACK_OPS = ("ScatterElements", "IdleScatter")
ORT_INSTALL = "pip install onnxruntime (its wheel ships onnxruntime.transformers.float16)"


def scoring_path_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute each idle layer's token scores, TopK included.

    Walks back from every TopK through non-constant inputs and stops at the residual stream
    (the tensor the layer writes back into with ScatterElements / IdleScatter), so norm1 is
    included whether it is one LayerNormalization node or its decomposition (opset < 17).
    """
    graph = gs.import_onnx(model)
    stream = {node.inputs[0].name for node in graph.nodes if node.op in _WRITE_BACK_OPS and node.inputs}
    top_ks = [node for node in graph.nodes if node.op == "TopK"]
    if not top_ks:
        raise ToolkitError(
            "the graph has no TopK node, so no idle layer; export an IdleViT with `python -m export.onnx`"
        )
    if not stream:
        raise ToolkitError(
            "the graph writes no tokens back (no ScatterElements / IdleScatter); is it an IdleViT export?"
        )
    names: dict[str, None] = {}
    pending = list(top_ks)
    while pending:
        node = pending.pop()
        if node.name in names:
            continue
        if not node.name:
            raise ToolkitError("a scoring-path node has no name; re-export the graph with `python -m export.onnx`")
        names[node.name] = None
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) or tensor.name in stream:
                continue
            pending.extend(tensor.inputs)
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    return sorted(names, key=order.__getitem__)


def plan_precision(model: onnx.ModelProto, precision: str, target: Target) -> PrecisionPlan:
    """Decide how ``model`` is built for ``target`` at ``precision`` (no TensorRT needed)."""
    if precision not in PRECISIONS:
        raise ToolkitError(f"precision {precision!r} is not supported yet; choose one of: {', '.join(PRECISIONS)}")
    if precision == FP32:
        return PrecisionPlan(FP32, target.label, target.strongly_typed, Method.FP32)
    fp32_nodes = scoring_path_nodes(model)
    if precision in QUANTIZED:
        if not target.builds_strongly_typed:
            raise ToolkitError(
                f"{precision.upper()} Q/DQ graphs build as strongly typed networks, which {target.label} cannot build; "
                "use TensorRT 10.0 or newer (--trt-version)"
            )
        return PrecisionPlan(precision, target.label, True, Method.QDQ_ONNX, fp32_nodes, converter=quantizer_label())
    if target.strongly_typed:
        converter = mixed_converter_label()
        return PrecisionPlan(precision, target.label, True, Method.MIXED_ONNX, fp32_nodes, converter=converter)
    return PrecisionPlan(precision, target.label, False, Method.BUILDER_FLAGS, fp32_nodes)


def mixed_onnx_path(onnx_path: str | os.PathLike[str], precision: str = FP16, out_dir: Path | None = None) -> Path:
    """``model.onnx`` -> ``model_fp16_mixed.onnx`` beside it (or in ``out_dir``)."""
    source = Path(onnx_path)
    return (out_dir or source.parent) / reduced_graph_name(source.stem, precision)


def convert_mixed(onnx_path: str | os.PathLike[str], fp32_nodes: list[str], precision: str = FP16) -> onnx.ModelProto:
    """The mixed-precision graph: ONNX Runtime's FP16 converter with ``fp32_nodes`` kept FP32, I/O kept FP32.

    ``onnxruntime.transformers.float16`` ships inside the onnxruntime wheel and needs no PyTorch,
    so the same graph is written on a workstation and on a deployment host. The converter feeds
    each blocked node through a Cast to FP16 and back when its producer is blocked too; those
    round trips would round the scoring path to FP16 between its FP32 nodes, so they are removed
    (:func:`drop_fp16_round_trips`). Ops the converter always keeps FP32 (its default block
    list: TopK, Min, Max, ...) stay FP32. The IdleViT metadata is carried over with ``precision``
    set, the graph's real opset and the FP32 graph it came from (path and sha256).
    """
    if precision != FP16:
        raise ToolkitError(f"precision {precision!r} has no mixed-precision converter; use --fp16")
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16  # lazy: ONNX Runtime's own converter
    except ImportError as err:
        raise MissingDependencyError(f"ONNX Runtime's FP16 converter does not import ({err}); {ORT_INSTALL}") from None
    meta = read_metadata(onnx_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about every initializer value it clamps to FP16's range
        logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
        mixed = convert_float_to_float16(
            load_onnx(onnx_path), keep_io_types=True, node_block_list=list(fp32_nodes), disable_shape_infer=False
        )
    mixed = drop_fp16_round_trips(mixed)
    meta.precision = precision
    meta.opset = next(op.version for op in mixed.opset_import if op.domain in ("", "ai.onnx"))
    meta.extra = {
        **meta.extra,
        "fp32_nodes": len(fp32_nodes),
        "converter": mixed_converter_label(),
        **source_record(onnx_path),
    }
    write_metadata(mixed, meta)
    return mixed


def drop_fp16_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove every ``Cast(to=FP32)(Cast(to=FP16)(x))`` of an FP32 ``x``: its readers read ``x`` itself.

    Such a pair only rounds ``x`` to FP16 (between two nodes that are both kept FP32); the first
    Cast stays where something else reads its FP16 output.
    """
    types = _elem_types(model)
    graph = gs.import_onnx(model)
    outputs = {tensor.name for tensor in graph.outputs}
    for node in graph.nodes:
        if node.op != "Cast" or node.attrs.get("to") != onnx.TensorProto.FLOAT or node.outputs[0].name in outputs:
            continue
        middle = node.inputs[0]
        first = middle.inputs[0] if len(middle.inputs) == 1 else None
        if first is None or first.op != "Cast" or first.attrs.get("to") != onnx.TensorProto.FLOAT16:
            continue
        source = first.inputs[0]
        if types.get(source.name) != onnx.TensorProto.FLOAT:
            continue
        replace_uses(node.outputs[0], source)
        node.outputs.clear()
    return export_like(graph, model)


def source_record(onnx_path: str | os.PathLike[str]) -> dict[str, str]:
    """What a reduced-precision graph records of the FP32 graph it was made from: its file name and sha256 (no
    path of the machine that wrote it; :func:`validate.sources.recorded_fp32_graph` finds it by name)."""
    return {"source_onnx": Path(onnx_path).name, "source_onnx_sha256": sha256_file(onnx_path)}


def write_mixed_onnx(onnx_path: str | os.PathLike[str], plan: PrecisionPlan, out: str | os.PathLike[str]) -> Path:
    """Convert and write the plan's mixed-precision ONNX atomically; returns its path."""
    if not plan.needs_mixed_onnx:
        raise ToolkitError(f"the {plan.method} plan builds from the FP32 ONNX; no mixed-precision graph to write")
    mixed = convert_mixed(onnx_path, plan.fp32_nodes, plan.precision)
    with atomic_write(out) as handle:
        handle.write(mixed.SerializeToString())
    return Path(out)


def fp16_nodes(mixed: onnx.ModelProto) -> set[str]:
    """Names of the nodes a mixed-precision graph computes in FP16 (their first float output is FP16)."""
    types = _elem_types(mixed)
    names = set()
    for node in mixed.graph.node:
        elem = next((types[o] for o in node.output if types.get(o) in _FLOAT_TYPES), None)
        if elem == onnx.TensorProto.FLOAT16 and node.op_type != "Cast":
            names.add(node.name)
    return names


def emulate_fp16(fp32: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """The FP32 graph with FP16 storage rounding made explicit on ``nodes`` (FP32 compute, FP16 storage).

    ONNX Runtime's CPU kernels compute many FP16 ops in FP32 behind inserted Casts and then drop
    Cast pairs, so an FP16 tensor between two such ops (the scores before TopK among them) is
    never rounded: a mixed graph looks better on the CPU than on FP16 hardware. This graph
    rounds every float input and output of ``nodes`` to FP16's 11-bit significand with
    Veltkamp's split (``p = 8193 v; v16 = p - (p - v)``), which no optimizer removes, and rounds
    their FP32 initializers. FP16's range (overflow above 65504, subnormals) is not modelled.
    """
    meta = read_metadata(fp32)
    graph = gs.import_onnx(fp32)
    factor = gs.Constant("fp16_emulation_split", np.array(8193.0, dtype=np.float32))
    rounded: dict[str, gs.Variable] = {}
    outputs = {tensor.name for tensor in graph.outputs}

    def round_tensor(tensor: gs.Variable) -> gs.Variable:
        if tensor.name not in rounded:
            p, d = (gs.Variable(f"{tensor.name}_fp16_{s}", dtype=np.float32) for s in ("p", "d"))
            out = gs.Variable(f"{tensor.name}_fp16", dtype=np.float32, shape=tensor.shape)
            graph.nodes += [
                gs.Node("Mul", inputs=[tensor, factor], outputs=[p]),
                gs.Node("Sub", inputs=[p, tensor], outputs=[d]),
                gs.Node("Sub", inputs=[p, d], outputs=[out]),
            ]
            rounded[tensor.name] = out
        return rounded[tensor.name]

    constants: dict[str, gs.Constant] = {}  # one rounded copy per constant, however many nodes read it
    for node in [n for n in graph.nodes if n.name in nodes]:
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant):
                if tensor.values.dtype == np.float32:
                    if tensor.name not in constants:
                        rounded_values = tensor.values.astype(np.float16).astype(np.float32)
                        constants[tensor.name] = gs.Constant(tensor.name + "_fp16", rounded_values)
                    node.inputs[i] = constants[tensor.name]
            elif tensor.dtype == np.float32:
                node.inputs[i] = round_tensor(tensor)
        for i, tensor in enumerate(node.outputs):
            if tensor.dtype == np.float32 and tensor.name not in outputs:
                exact = gs.Variable(tensor.name + "_exact", dtype=np.float32, shape=tensor.shape)
                node.outputs[i] = exact
                graph.nodes.append(gs.Node("Identity", inputs=[round_tensor(exact)], outputs=[tensor]))
    graph.cleanup().toposort()
    emulated = gs.export_onnx(graph)
    emulated.ir_version = fp32.ir_version
    write_metadata(emulated, meta)
    return emulated


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def node_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """Count of float nodes by the element type of their first float output (after shape inference)."""
    types = _elem_types(model)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        elem = next((types[o] for o in node.output if types.get(o) in _FLOAT_TYPES), None)
        if elem is not None:
            key = onnx.TensorProto.DataType.Name(elem).lower()
            counts[key] = counts.get(key, 0) + 1
    return counts


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def mixed_converter_label() -> str:
    """What writes the mixed-precision graphs, with ONNX Runtime's version."""
    try:
        return f"onnxruntime.transformers.float16 {version('onnxruntime')}"
    except Exception:  # noqa: BLE001 - a label only
        return "onnxruntime.transformers.float16"


def quantizer_label() -> str:
    """What writes the Q/DQ graphs, with ModelOpt's version when it is installed."""
    return _modelopt_label("modelopt.onnx.quantization")


def _modelopt_label(module: str) -> str:
    try:
        return f"{module} {version('nvidia-modelopt')}"
    except Exception:  # noqa: BLE001 - a label only
        return module
