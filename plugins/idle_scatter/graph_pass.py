"""Graph passes between the standard-op token write-back and the fused ``idlevit::IdleScatter`` op.

Every idle layer writes its K+1 updated rows back with::

    kept (B, K+1) int64 -> Unsqueeze(axes=[-1]) -> Expand(shape=[1, 1, C]) -> index (B, K+1, C)
    out = ScatterElements(tokens (B, N+1, C), index, updates (B, K+1, C), axis=1)

:func:`fuse_idle_scatter` turns that into ``IdleScatter(tokens, kept, updates)`` (domain ``idlevit``,
attributes ``plugin_version="1"``, ``plugin_namespace="idlevit"`` for TensorRT's ONNX parser); the
Unsqueeze/Expand stay while anything else (the layer's GatherElements) reads them.
:func:`unfuse_idle_scatter` restores standard ops. Both leave their input model untouched.

CLI: ``python -m plugins.idle_scatter.graph_pass in.onnx out.onnx [--unfuse]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import DOMAIN, OP_TYPE, PLUGIN_VERSION

_FLOATS = (np.float32, np.float16)
_INDEX_TYPES = (np.int64, np.int32)


@dataclass
class RowIndex:
    """An idle layer's token index: its kept positions ``kept`` (B, K+1) expanded over all C channels."""

    kept: gs.Tensor  # (B, K+1) int kept token positions
    rows: gs.Tensor  # kept unsqueezed, (B, K+1, 1): the Expand's input
    index: gs.Tensor  # rows expanded over the channels, (B, K+1, C): what GatherElements / ScatterElements read


@dataclass
class WriteBack:
    """One idle layer's token write-back, matched: ``scatter`` writes ``updates`` into ``tokens`` at ``kept``."""

    scatter: gs.Node
    tokens: gs.Tensor  # (B, N+1, C) float
    updates: gs.Tensor  # (B, K+1, C)
    row_index: RowIndex

    @property
    def kept(self) -> gs.Tensor:
        return self.row_index.kept


def _const_values(tensor: gs.Tensor) -> np.ndarray | None:
    """Values of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return None if value is None else np.asarray(value.values)
    return None


def static_dim(tensor: gs.Tensor, axis: int) -> int | None:
    """Static size of ``tensor`` along ``axis``, or None when unknown or symbolic."""
    shape = tensor.shape
    if shape is None or axis >= len(shape) or not isinstance(shape[axis], (int, np.integer)):
        return None
    return int(shape[axis])


def static_rank(tensor: gs.Tensor) -> int | None:
    """Rank of ``tensor``, or None when its shape is unknown."""
    return None if tensor.shape is None else len(tensor.shape)


def dtype_in(tensor: gs.Tensor, allowed: tuple[type, ...]) -> bool:
    """Whether ``tensor``'s (known) element type is one of ``allowed``."""
    return tensor.dtype is not None and np.dtype(tensor.dtype) in [np.dtype(t) for t in allowed]


def _unsqueeze_axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:  # opset < 13
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) == 2:
        values = _const_values(node.inputs[1])
        return None if values is None else [int(a) for a in values.reshape(-1)]
    return None


def match_row_index(index: gs.Tensor, channels: int | None) -> RowIndex | None:
    """``index`` as ``Expand(Unsqueeze(kept, axes=[-1]), [1|B, 1|K+1, C])`` over ``channels`` channels, else None.

    Only kept[b, j] broadcast along the channels, over the full row width: no broadcast of the
    batch or row axes, and as many channels as the tokens have (else a gather or scatter over it
    would move part of each row).
    """
    if channels is None or len(index.inputs) != 1 or index.inputs[0].op != "Expand":
        return None
    expand = index.inputs[0]
    shape = _const_values(expand.inputs[1])
    unsq_out = expand.inputs[0]
    if shape is None or shape.shape != (3,) or len(unsq_out.inputs) != 1 or unsq_out.inputs[0].op != "Unsqueeze":
        return None
    unsqueeze = unsq_out.inputs[0]
    kept = unsqueeze.inputs[0]
    if static_rank(kept) != 2 or not dtype_in(kept, _INDEX_TYPES) or _unsqueeze_axes(unsqueeze) not in ([2], [-1]):
        return None
    if int(shape[2]) != channels:
        return None
    for axis in (0, 1):
        if int(shape[axis]) != 1 and int(shape[axis]) != static_dim(kept, axis):
            return None
    return RowIndex(kept, unsq_out, index)


def match_write_back(node: gs.Node) -> WriteBack | None:
    """The write-back pattern ending in ``node``, when fusing it is provably equivalent."""
    if node.op != "ScatterElements" or node.domain not in (None, "", "ai.onnx") or len(node.inputs) != 3:
        return None
    tokens, index, updates = node.inputs
    if static_rank(tokens) != 3 or not dtype_in(tokens, _FLOATS):
        return None
    if int(node.attrs.get("axis", 0)) not in (1, -2) or node.attrs.get("reduction", "none") != "none":
        return None
    row_index = match_row_index(index, static_dim(tokens, 2))
    return None if row_index is None else WriteBack(node, tokens, updates, row_index)


def _finish(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph``, keep ``source``'s model-level fields, fix the ``idlevit`` opset import."""
    graph.cleanup().toposort()
    uses_domain = any(n.domain == DOMAIN for n in graph.nodes)
    model = gs.export_onnx(graph)
    model.ir_version = source.ir_version
    model.producer_name, model.producer_version = source.producer_name, source.producer_version
    model.domain, model.model_version, model.doc_string = source.domain, source.model_version, source.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    others = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(others)
    if uses_domain:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, int(PLUGIN_VERSION)))
    return model


def fuse_idle_scatter(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace every idle layer's Unsqueeze -> Expand -> ScatterElements with one IdleScatter node.

    Returns the new model and the number of fused write-backs. Shapes are inferred first so the
    pattern checks (row width, broadcast axes) can be made; ScatterElements that do not match
    provably are left alone.
    """
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    matches = [m for m in (match_write_back(node) for node in graph.nodes) if m is not None]
    for i, match in enumerate(matches):
        output = match.scatter.outputs[0]
        match.scatter.inputs.clear()
        match.scatter.outputs.clear()
        graph.nodes.append(
            gs.Node(
                op=OP_TYPE,
                name=f"{OP_TYPE}_{i}",
                domain=DOMAIN,
                attrs={"plugin_version": PLUGIN_VERSION, "plugin_namespace": DOMAIN},
                inputs=[match.tokens, match.kept, match.updates],
                outputs=[output],
            )
        )
    return _finish(graph, model), len(matches)


def unfuse_idle_scatter(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every IdleScatter node back into Unsqueeze -> Expand(Shape(updates)) -> ScatterElements.

    Returns the new model and the number of restored nodes. The restored graph computes the same
    values; it differs from the original export only in taking the Expand shape from ``updates``.
    """
    graph = gs.import_onnx(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    fused = [n for n in graph.nodes if n.op == OP_TYPE and n.domain == DOMAIN]
    for i, node in enumerate(fused):
        tokens, kept, updates = node.inputs
        output = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        prefix = f"{OP_TYPE}_unfused_{i}"
        unsq = gs.Variable(f"{prefix}/index_unsqueezed", dtype=kept.dtype)
        axes = gs.Constant(f"{prefix}/axes", np.array([2], dtype=np.int64))
        if opset >= 13:
            graph.nodes.append(gs.Node("Unsqueeze", f"{prefix}/Unsqueeze", inputs=[kept, axes], outputs=[unsq]))
        else:
            graph.nodes.append(
                gs.Node("Unsqueeze", f"{prefix}/Unsqueeze", attrs={"axes": [2]}, inputs=[kept], outputs=[unsq])
            )
        shape = gs.Variable(f"{prefix}/updates_shape", dtype=np.int64)
        graph.nodes.append(gs.Node("Shape", f"{prefix}/Shape", inputs=[updates], outputs=[shape]))
        index = gs.Variable(f"{prefix}/index", dtype=kept.dtype)
        graph.nodes.append(gs.Node("Expand", f"{prefix}/Expand", inputs=[unsq, shape], outputs=[index]))
        graph.nodes.append(
            gs.Node(
                "ScatterElements",
                f"{prefix}/ScatterElements",
                attrs={"axis": 1},
                inputs=[tokens, index, updates],
                outputs=[output],
            )
        )
    return _finish(graph, model), len(fused)


def count_fused(model: onnx.ModelProto) -> int:
    """Number of IdleScatter nodes in ``model``."""
    return sum(1 for n in model.graph.node if n.op_type == OP_TYPE and n.domain == DOMAIN)


def main(argv: list[str] | None = None) -> int:
    """CLI: fuse (default) or unfuse an ONNX file; never overwrites the input in place."""
    parser = argparse.ArgumentParser(prog="python -m plugins.idle_scatter.graph_pass", description=__doc__)
    parser.add_argument("input", help="ONNX file to read")
    parser.add_argument("output", help="ONNX file to write (must differ from input)")
    parser.add_argument("--unfuse", action="store_true", help="restore standard ops instead of fusing")
    args = parser.parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        print("error: output must differ from input", file=sys.stderr)
        return 2
    model = onnx.load(args.input)
    result, count = (unfuse_idle_scatter if args.unfuse else fuse_idle_scatter)(model)
    tmp = args.output + ".tmp"
    onnx.save(result, tmp)
    os.replace(tmp, args.output)
    print(f"{'unfused' if args.unfuse else 'fused'} {count} IdleScatter write-back(s) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
