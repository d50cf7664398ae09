"""The precision plan: which nodes of an exported IdleViT stay FP32, and how a target is told.

IdleViT's trap: if reduced-precision rounding reorders the CLS-attention scores, TopK keeps
other tokens and the output drifts. The plan keeps every idle layer's **scoring path** in FP32:
the nodes between the residual stream and TopK (norm1, the CLS query folded into the key
weights, its product with every token, TopK itself). Everything else goes to the
reduced precision as the converter judges it (ModelOpt AutoCast keeps nodes whose values
overflow FP16 in FP32); graph inputs and outputs stay FP32.

How the plan reaches TensorRT depends on the target (:class:`engines.target.Target`):

* strongly typed targets (TensorRT 11.x, 10.12+, TensorRT-RTX) get a **mixed-precision ONNX**
  whose tensor types say it all (``--fp16``: AutoCast with the scoring path excluded);
* older TensorRT 10.x gets the FP32 ONNX plus ``BuilderFlag.FP16``, FP32 precision on the
  scoring-path layers and ``OBEY_PRECISION_CONSTRAINTS``;
* INT8 and FP8 are explicit quantization on every target: a Q/DQ graph (:mod:`engines.quantize`,
  scoring path without Q/DQ) built as a strongly typed network (TensorRT 10.0+, RTX).

Everything here is pure Python (onnx, onnx-graphsurgeon, ModelOpt, ONNX Runtime): it runs and is
tested without TensorRT.
"""

from __future__ import annotations

import logging
import os
import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write
from idlevit.metadata import read_metadata, write_metadata

from .plan import FP16, FP32, PRECISIONS, QUANTIZED, Method, PrecisionPlan
from .target import Target

#: Ops whose first input is the residual stream an idle layer reads and writes back.
_WRITE_BACK_OPS = ("ScatterElements", "IdleScatter")
MODELOPT_INSTALL = "pip install -e '.[fp16]' (nvidia-modelopt without its [onnx] extra, onnxslim, lief, cppimport)"


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
        return PrecisionPlan(precision, target.label, True, Method.MIXED_ONNX, fp32_nodes, converter=_autocast_label())
    return PrecisionPlan(precision, target.label, False, Method.BUILDER_FLAGS, fp32_nodes)


def mixed_onnx_path(onnx_path: str | os.PathLike[str], precision: str = FP16, out_dir: Path | None = None) -> Path:
    """``model.onnx`` -> ``model_fp16_mixed.onnx`` beside it (or in ``out_dir``)."""
    source = Path(onnx_path)
    return (out_dir or source.parent) / f"{source.stem}_{precision}_mixed.onnx"


def convert_mixed(onnx_path: str | os.PathLike[str], fp32_nodes: list[str], precision: str = FP16) -> onnx.ModelProto:
    """The mixed-precision graph: ModelOpt AutoCast with ``fp32_nodes`` excluded, I/O kept FP32.

    The IdleViT metadata is carried over with ``precision`` set and the graph's real opset.
    """
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision  # lazy: ModelOpt is optional
        from modelopt.onnx.autocast.logging_config import configure_logging  # lazy: as above
    except ImportError as err:
        raise MissingDependencyError(f"ModelOpt AutoCast is not importable ({err}); {MODELOPT_INSTALL}") from None
    meta = read_metadata(onnx_path)
    configure_logging(logging.ERROR)  # AutoCast logs every node it skips at INFO
    mixed = convert_to_mixed_precision(
        os.fspath(onnx_path),
        low_precision_type=precision,
        nodes_to_exclude=[f"^{re.escape(name)}$" for name in fp32_nodes],
        keep_io_types=True,
    )
    meta.precision = precision
    meta.opset = next(op.version for op in mixed.opset_import if op.domain in ("", "ai.onnx"))
    meta.extra = {**meta.extra, "fp32_nodes": len(fp32_nodes), "converter": _autocast_label()}
    write_metadata(mixed, meta)
    return mixed


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
    their FP32 initializers. FP16's range (overflow above 65504, subnormals) is not modelled;
    AutoCast keeps large-valued nodes in FP32 anyway.
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

    for node in [n for n in graph.nodes if n.name in nodes]:
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant):
                if tensor.values.dtype == np.float32:
                    node.inputs[i] = gs.Constant(
                        tensor.name + "_fp16", tensor.values.astype(np.float16).astype(np.float32)
                    )
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


def _autocast_label() -> str:
    return _modelopt_label("modelopt.onnx.autocast")


def quantizer_label() -> str:
    """What writes the Q/DQ graphs, with ModelOpt's version when it is installed."""
    return _modelopt_label("modelopt.onnx.quantization")


def _modelopt_label(module: str) -> str:
    try:
        return f"{module} {version('nvidia-modelopt')}"
    except Exception:  # noqa: BLE001 - a label only
        return module
