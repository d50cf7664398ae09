"""A graph optimised for ONNX Runtime: less dead work, row moves, fused ops, the scoring path untouched.

Four steps on the plain export (``python -m export.onnx``), none of which touches an idle
layer's token selection:

1. **The class token alone after the last attention** (:func:`narrow_to_class_token`): the
   head reads only the class token, so the last block's projection, MLP and write-back are
   computed for that one row.
2. **Row moves.** Each idle layer gathers its kept tokens and writes them back element by
   element (GatherElements / ScatterElements over the positions expanded to every channel), the
   contract TensorRT takes; ONNX Runtime's CPU ScatterElements runs that one element at a time
   on one thread. Here they become row copies, ``GatherND`` / ``ScatterND`` over the positions
   themselves (:func:`move_rows`): the same values to the same places.
3. **Attention.** Every block's attention core (the qkv projection and its bias, the Split into
   q, k and v, the head Reshapes and Transposes, the scale, QK^T, Softmax, the product with v and
   the merge of the heads) becomes one ``com.microsoft.Attention`` node holding the qkv weights
   (:func:`fuse_attention`), in dense and idle blocks alike (an idle block's attention runs over
   its gathered k+1 tokens). ONNX Runtime's own matcher (``FusionAttention`` of
   ``onnxruntime.transformers``) looks for three separate q, k and v projections fed by a
   LayerNormalization, which a fused-qkv ViT (and an idle block, which gathers the normalised
   tokens first) does not have, so it fuses none of them.
4. **ONNX Runtime's transformer fusions** (``onnxruntime.transformers.optimizer``, model type
   ``vit``, no ONNX Runtime session in between, so the file stays portable across CPUs and GPUs):
   the GELU of every MLP with its bias as one ``BiasGelu``. Its SkipLayerNormalization fusion
   is left off (:data:`SKIPPED_FUSIONS`): it would take over each idle layer's norm1, the head
   of the scoring path, and its CPU kernel is slower than the LayerNormalization it replaces.

The scoring path of every idle layer (norm1 -> CLS query folded into the key weights -> scores ->
TopK, :func:`engines.precision.scoring_path_nodes`) is compared node by node before and after:
any change is refused. TensorRT parses none of the ``com.microsoft`` ops, so the result is for
ONNX Runtime only; its metadata says so (``optimized_for``) and ``export.trt`` refuses it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from idlevit.errors import MissingDependencyError, ToolkitError
from plugins.idle_scatter.graph_pass import (
    RowIndex,
    WriteBack,
    dtype_in,
    match_row_index,
    match_write_back,
    static_dim,
    static_rank,
)

from .graphs import constant_value, export_like, replace_uses
from .precision import scoring_path_nodes

#: What an optimised graph's metadata names as its only runtime.
ONNXRUNTIME = "onnxruntime"
#: Domain of ONNX Runtime's contrib ops (Attention, BiasGelu, ...).
MS_DOMAIN = "com.microsoft"
#: Transformer fusions left off, and why (printed with the summary, recorded in the metadata).
SKIPPED_FUSIONS = {
    "SkipLayerNormalization": "it would fuse each idle layer's norm1, the head of the scoring path, and its CPU "
    "kernel measured slower than Add + LayerNormalization",
}


@dataclass
class Optimization:
    """What :func:`optimize_for_onnxruntime` did, as the metadata records it."""

    tool: str  # e.g. "onnxruntime 1.32.0 transformers optimizer (vit) + Attention fusion"
    fused: dict[str, int] = field(default_factory=dict)  # fused op type -> nodes in the graph
    skipped: dict[str, str] = field(default_factory=lambda: dict(SKIPPED_FUSIONS))
    row_moves: int = 0  # idle layers whose token moves became row copies (:func:`move_rows`)
    class_token_ops: int = 0  # ops that now compute the class token's row only (:func:`narrow_to_class_token`)

    def summary(self) -> str:
        done = [f"{count} {op}" for op, count in sorted(self.fused.items())]
        done += [f"{self.row_moves} idle layers' token moves as row copies"] if self.row_moves else []
        done += [f"{self.class_token_ops} ops narrowed to the class token"] if self.class_token_ops else []
        return (
            f"optimised for ONNX Runtime only ({', '.join(done) or 'nothing fused'}); TensorRT takes the plain export"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "tool": self.tool,
            "fused": dict(self.fused),
            "skipped": dict(self.skipped),
            "row_moves": self.row_moves,
            "class_token_ops": self.class_token_ops,
        }

    @classmethod
    def from_dict(cls, record: dict[str, object]) -> Optimization:
        """What :meth:`to_dict` wrote (a graph's metadata) -> the record; missing fields read as nothing done."""
        fused = record.get("fused", {})

        def count(key: str) -> int:
            value = record.get(key, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            str(record.get("tool", "")),
            dict(fused) if isinstance(fused, dict) else {},
            row_moves=count("row_moves"),
            class_token_ops=count("class_token_ops"),
        )


# ---- graph helpers ------------------------------------------------------------------------------
_STANDARD_DOMAINS = (None, "", "ai.onnx")


def _row_gather(node: gs.Node) -> RowIndex | None:
    """``node`` as a GatherElements of whole (B, N, C) token rows at an idle layer's kept positions, else None."""
    if node.op != "GatherElements" or node.domain not in _STANDARD_DOMAINS or len(node.inputs) != 2:
        return None
    data, index = node.inputs
    if int(node.attrs.get("axis", 0)) not in (1, -2) or data.shape is None or len(data.shape) != 3:
        return None
    return match_row_index(index, static_dim(data, 2))


# ---- step 1: only the class token after the last attention -------------------------------------
#: Ops that act on each token row alone (the last axis), with the inputs that carry token rows.
_UNARY_ROW_OPS = ("Erf", "Gelu", "Relu", "Sigmoid", "Tanh", "Sqrt", "Identity")
_BINARY_ROW_OPS = ("Add", "Sub", "Mul", "Div")


def _is_class_gather(node: gs.Node) -> bool:
    """``Gather(tokens, 0, axis=1)``: the class token's row of (B, N, C) tokens."""
    if node.op != "Gather" or node.domain not in _STANDARD_DOMAINS or len(node.inputs) != 2:
        return False
    if int(node.attrs.get("axis", 0)) != 1:
        return False
    index = constant_value(node.inputs[1])
    return index is not None and index.ndim == 0 and int(index) == 0 and bool(node.outputs)


def _class_token_first(kept: gs.Tensor) -> bool:
    """Whether position 0 (the class token) is always ``kept``'s first entry: TopK over scores + [inf, finite...]."""
    if len(kept.inputs) != 1 or kept.inputs[0].op != "TopK":
        return False
    top_k = kept.inputs[0]
    if top_k.outputs[1] is not kept or not int(top_k.attrs.get("largest", 1)) or not int(top_k.attrs.get("sorted", 1)):
        return False
    scores = top_k.inputs[0]
    if int(top_k.attrs.get("axis", -1)) not in (1, -1) or scores.shape is None or len(scores.shape) != 2:
        return False
    if len(scores.inputs) != 1 or scores.inputs[0].op != "Add":
        return False
    for term in scores.inputs[0].inputs:
        bias = constant_value(term)
        if bias is not None and bias.size > 1 and all(d == 1 for d in bias.shape[:-1]):
            flat = bias.reshape(-1)
            return bool(flat[0] == np.inf and np.isfinite(flat[1:]).all())
    return False


def _row_inputs(node: gs.Node, rank: int) -> list[int] | None:
    """Which inputs of ``node`` carry token rows when it acts on each row alone, else None.

    ``rank`` is the rank of ``node``'s output (>= 3, so axis 1 is not the row axis). Constants
    must broadcast along the last axis only; tensors must have the full rank and every row.
    """
    if node.domain not in _STANDARD_DOMAINS or len(node.outputs) != 1:
        return None
    if node.op == "LayerNormalization":
        axis = int(node.attrs.get("axis", -1))
        return [0] if axis in (-1, rank - 1) and all(constant_value(t) is not None for t in node.inputs[1:]) else None
    if node.op == "MatMul":
        weight = constant_value(node.inputs[1])
        return [0] if weight is not None and weight.ndim == 2 else None
    if node.op in _UNARY_ROW_OPS:
        return [0]
    if node.op not in _BINARY_ROW_OPS:
        return None
    rows = []
    for position, tensor in enumerate(node.inputs):
        value = constant_value(tensor)
        if value is not None:
            if value.ndim > 1 and any(d != 1 for d in value.shape[:-1]):
                return None  # a constant that differs between tokens
        elif static_rank(tensor) == rank and static_dim(tensor, 1) not in (None, 1):
            if static_dim(tensor, 1) != static_dim(node.outputs[0], 1):
                return None
            rows.append(position)
        else:
            return None
    return rows


def _narrow_through(gather: gs.Node, graph: gs.Graph, class_index: gs.Constant) -> bool:
    """Move one class-token Gather above the node that makes its tokens; False where that is not exact."""
    tokens = gather.inputs[0]
    readers = list(tokens.outputs)
    if len(tokens.inputs) != 1 or tokens in graph.outputs or not all(map(_is_class_gather, readers)):
        return False
    producer = tokens.inputs[0]
    rank = static_rank(tokens) or 0
    write_back = match_write_back(producer)
    row_index = write_back.row_index if write_back else _row_gather(producer)
    if row_index is not None and _class_token_first(row_index.kept):
        # row 0 of a write-back is its updates' row 0; row 0 of a row gather is its data's row 0
        source = write_back.updates if write_back else producer.inputs[0]
        gather.inputs[0] = source
        narrowed = gather.outputs[0]
    else:
        rows = _row_inputs(producer, rank) if rank >= 3 else None
        if rows is None:
            return False
        narrowed = gather.outputs[0]
        for position in rows:
            source = producer.inputs[position]
            name = f"{producer.name}_input{position}_class_token"
            row = gs.Variable(name, source.dtype, None)
            graph.nodes.append(gs.Node("Gather", f"{name}_gather", {"axis": 1}, [source, class_index], [row]))
            producer.inputs[position] = row
        if producer.op == "LayerNormalization":
            producer.attrs["axis"] = -1
        gather.outputs.clear()
        producer.outputs[0] = narrowed
    for other in readers:  # every other class-token Gather of these tokens now reads the narrowed row
        if other is not gather and other.outputs:
            replace_uses(other.outputs[0], narrowed)
            other.outputs.clear()
    return True


def narrow_to_class_token(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Compute only the class token's row after the last attention; returns the graph and the nodes narrowed.

    DeiT's head reads the class token alone (``Gather(norm(tokens), 0, axis=1)``), so after
    the last block's attention every other token's projection, MLP and write-back is dead work.
    The Gather moves up through ops that act on each row alone (LayerNormalization, MatMul by a
    weight, element-wise ops with per-channel constants), through the last write-back (the class
    token is always its first kept position: TopK over scores plus [inf, finite, ...]) and the
    last gather, until it reaches an op that mixes tokens (the attention). Each narrowed op does
    the same arithmetic on the one row; ONNX Runtime may pick another GEMM kernel for B rows
    instead of B x (K+1), so the logits agree to float rounding rather than bit for bit. A graph
    whose head reads more than the class token (LV-ViT's token labelling head) is left as it is.
    """
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    class_index = gs.Constant("class_token_index", np.array(0, np.int64))
    count = 0
    moved = True
    while moved:
        moved = False
        for gather in [node for node in graph.nodes if _is_class_gather(node)]:
            if gather.outputs and _narrow_through(gather, graph, class_index):
                graph.cleanup()
                count += 1
                moved = True
                break
    return export_like(graph, model), count


# ---- step 2: token moves as row copies ----------------------------------------------------------
def move_rows(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Every idle layer's gathers and write-back as row copies; returns the graph and the layers rewritten.

    The export moves tokens element by element: its index is the kept positions (B, K+1)
    expanded over the C channels, read by GatherElements and ScatterElements (the op contract
    TensorRT takes). ONNX Runtime's CPU ScatterElements walks that index one element at a time
    on one thread; here each move becomes a row copy, ``GatherND`` and ``ScatterND`` over
    (batch, position) pairs (B, K+1, 2), the batch numbers made once per graph from the first
    layer's positions. Copies of the same values to the same places: the logits are
    bit-identical.
    """
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    gathers: dict[str, list[gs.Node]] = {}  # index name -> its row gathers
    write_backs: dict[str, WriteBack] = {}
    indices: dict[str, RowIndex] = {}
    for node in list(graph.nodes):
        write_back = match_write_back(node)
        row_index = write_back.row_index if write_back else _row_gather(node)
        if row_index is None or not dtype_in(row_index.rows, (np.int64,)) or static_dim(row_index.rows, 1) is None:
            continue  # a K that is not static, or int32 positions: the layer keeps its element moves
        indices.setdefault(row_index.index.name, row_index)
        if write_back:
            write_backs[row_index.index.name] = write_back
        else:
            gathers.setdefault(row_index.index.name, []).append(node)
    batch_column: gs.Variable | None = None
    batch_grids: dict[int, gs.Variable] = {}  # K+1 -> (B, K+1, 1) batch numbers
    for name, row_index in indices.items():
        if batch_column is None:
            batch_column = _batch_column(graph, row_index.kept)
        kept = static_dim(row_index.rows, 1) or 0  # static: checked as the moves were collected
        if kept not in batch_grids:
            grid = gs.Variable(f"idle_rows_batch_{kept}", np.int64, None)
            shape = gs.Constant(f"idle_rows_batch_{kept}_shape", np.array([1, kept, 1], np.int64))
            graph.nodes.append(gs.Node("Expand", f"{grid.name}_expand", inputs=[batch_column, shape], outputs=[grid]))
            batch_grids[kept] = grid
        coordinates = gs.Variable(f"{name}_rows", np.int64, None)  # (B, K+1, 2): (batch, position) pairs
        graph.nodes.append(
            gs.Node("Concat", f"{name}_rows_concat", {"axis": 2}, [batch_grids[kept], row_index.rows], [coordinates])
        )
        for gather in gathers.get(name, []):
            data, output = gather.inputs[0], gather.outputs[0]
            gather.inputs.clear()
            gather.outputs.clear()
            graph.nodes.append(gs.Node("GatherND", f"{gather.name}_rows", inputs=[data, coordinates], outputs=[output]))
        write_back = write_backs.get(name)
        if write_back is None:
            continue  # a layer whose write-back was narrowed away (:func:`narrow_to_class_token`)
        scatter = write_back.scatter
        output = scatter.outputs[0]
        scatter.inputs.clear()
        scatter.outputs.clear()
        graph.nodes.append(
            gs.Node(
                "ScatterND",
                f"{scatter.name}_rows",
                inputs=[write_back.tokens, coordinates, write_back.updates],
                outputs=[output],
            )
        )
    return export_like(graph, model), len(indices)


def _batch_column(graph: gs.Graph, kept: gs.Tensor) -> gs.Variable:
    """(B, 1, 1) int64 batch numbers 0..B-1, B read from ``kept`` (B, K+1)."""
    names = ["idle_rows_shape", "idle_rows_batch_size", "idle_rows_batch_range", "idle_rows_batch_column"]
    shape, size, numbers, column = (gs.Variable(name, np.int64, None) for name in names)
    zero = gs.Constant("idle_rows_zero", np.array(0, np.int64))
    one = gs.Constant("idle_rows_one", np.array(1, np.int64))
    column_shape = gs.Constant("idle_rows_column_shape", np.array([-1, 1, 1], np.int64))
    graph.nodes += [
        gs.Node("Shape", names[0], inputs=[kept], outputs=[shape]),
        gs.Node("Gather", names[1], {"axis": 0}, [shape, zero], [size]),
        gs.Node("Range", names[2], inputs=[zero, size, one], outputs=[numbers]),
        gs.Node("Reshape", names[3], inputs=[numbers, column_shape], outputs=[column]),
    ]
    return column


# ---- step 3: Attention ------------------------------------------------------------------------
def _single_producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    if len(tensor.inputs) != 1 or tensor.inputs[0].op != op:
        return None
    return tensor.inputs[0]


def _single_reader(tensor: gs.Tensor, op: str) -> gs.Node | None:
    if len(tensor.outputs) != 1 or tensor.outputs[0].op != op:
        return None
    return tensor.outputs[0]


def _perm(node: gs.Node | None) -> list[int] | None:
    return [int(p) for p in node.attrs.get("perm", [])] if node is not None else None


def _head_split(tensor: gs.Tensor, perm: list[int]) -> tuple[gs.Node, gs.Tensor, tuple[int, int, int]] | None:
    """``Transpose(Reshape(x, [B, S, H, D]), perm)`` -> (its Reshape, x, (S, H, D)); None otherwise."""
    transpose = _single_producer(tensor, "Transpose")
    if transpose is None or _perm(transpose) != perm or len(transpose.outputs[0].outputs) != 1:
        return None
    reshape = _single_producer(transpose.inputs[0], "Reshape")
    if reshape is None:
        return None
    shape = constant_value(reshape.inputs[1])
    if shape is None or shape.size != 4 or min(shape[1:]) < 1 or len(reshape.outputs[0].outputs) != 1:
        return None  # the batch may be -1, 0 or a static size: with S, H and D fixed, any of them is the batch
    return reshape, reshape.inputs[0], (int(shape[1]), int(shape[2]), int(shape[3]))


def _qkv_projection(split: gs.Node) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """The Split's source ``MatMul(x, W) [+ b]`` -> (x, W, b); a projection without bias gets zeros (exact)."""
    source = split.inputs[0]
    if len(source.outputs) != 1:
        return None
    bias = None
    add = _single_producer(source, "Add")
    if add is not None:
        constants = [constant_value(t) for t in add.inputs]
        others = [t for t, c in zip(add.inputs, constants, strict=True) if c is None]
        bias = next((c for c in constants if c is not None), None)
        if bias is None or len(others) != 1 or len(others[0].outputs) != 1:
            return None
        source = others[0]
    matmul = _single_producer(source, "MatMul")
    if matmul is None:
        return None
    weight = constant_value(matmul.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    bias = np.zeros(weight.shape[1], dtype=weight.dtype) if bias is None else bias.reshape(-1)
    if bias.shape != (weight.shape[1],):
        return None
    return matmul.inputs[0], weight, bias


def _attention_core(softmax: gs.Node) -> tuple[gs.Tensor, np.ndarray, np.ndarray, int, float, gs.Tensor] | None:
    """Match one attention core ending at ``softmax``: (input, W_qkv, b_qkv, heads, scale, output) or None."""
    if int(softmax.attrs.get("axis", -1)) not in (-1, 3):
        return None
    scores = _single_producer(softmax.inputs[0], "MatMul")
    context = _single_reader(softmax.outputs[0], "MatMul")
    if scores is None or context is None or context.inputs[0] is not softmax.outputs[0]:
        return None
    scaled = _single_producer(scores.inputs[0], "Mul")
    if scaled is None:
        return None
    factors = [constant_value(t) for t in scaled.inputs]
    scale = next((float(c.reshape(-1)[0]) for c in factors if c is not None and c.size == 1), None)
    queries = [t for t, c in zip(scaled.inputs, factors, strict=True) if c is None]
    if scale is None or len(queries) != 1:
        return None
    q = _head_split(queries[0], [0, 2, 1, 3])
    k = _head_split(scores.inputs[1], [0, 2, 3, 1])
    v = _head_split(context.inputs[1], [0, 2, 1, 3])
    if q is None or k is None or v is None or not q[2] == k[2] == v[2]:
        return None
    tokens, heads, head_size = q[2]
    split = _single_producer(q[1], "Split")
    if split is None or [t.name for t in split.outputs] != [q[1].name, k[1].name, v[1].name]:
        return None
    axis, sizes = int(split.attrs.get("axis", 0)), constant_value(split.inputs[1]) if len(split.inputs) > 1 else None
    if axis not in (-1, 2) or sizes is None or [int(s) for s in sizes] != [heads * head_size] * 3:
        return None
    merge = _single_reader(context.outputs[0], "Transpose")
    if merge is None or _perm(merge) != [0, 2, 1, 3]:
        return None
    flat = _single_reader(merge.outputs[0], "Reshape")
    if flat is None:
        return None
    shape = constant_value(flat.inputs[1])
    if shape is None or [int(s) for s in shape[1:]] != [tokens, heads * head_size]:
        return None
    projection = _qkv_projection(split)
    if projection is None or projection[1].shape[1] != 3 * heads * head_size:
        return None
    source, weight, bias = projection
    return source, weight, bias, heads, scale, flat.outputs[0]


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Every attention core of an exported IdleViT -> one ``com.microsoft.Attention``; returns the graph and the count.

    The node takes the block's normalised tokens (an idle block's gathered k+1 tokens), the qkv
    weights (C, 3C) and bias (3C), ``num_heads`` and the graph's own ``scale``, and gives the
    merged heads (B, S, C) that the output projection reads, as the nodes it replaces did.
    """
    graph = gs.import_onnx(model)
    count = 0
    for softmax in [node for node in graph.nodes if node.op == "Softmax"]:
        match = _attention_core(softmax)
        if match is None:
            continue
        source, weight, bias, heads, scale, output = match
        name = f"{softmax.name or 'attention'}_attention"
        output.inputs.clear()  # detach the merge Reshape; cleanup() drops the core it read
        graph.nodes.append(
            gs.Node(
                "Attention",
                name=name,
                domain=MS_DOMAIN,
                attrs={"num_heads": heads, "scale": scale},
                inputs=[source, gs.Constant(f"{name}_qkv_weight", weight), gs.Constant(f"{name}_qkv_bias", bias)],
                outputs=[output],
            )
        )
        count += 1
    fused = export_like(graph, model)
    _import_ms_domain(fused)
    return fused, count


def _import_ms_domain(model: onnx.ModelProto) -> None:
    if any(node.domain == MS_DOMAIN for node in model.graph.node) and not any(
        op.domain == MS_DOMAIN for op in model.opset_import
    ):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))


# ---- step 4: ONNX Runtime's transformer fusions ---------------------------------------------------
def transformer_fusions(model: onnx.ModelProto, num_heads: int, hidden_size: int) -> onnx.ModelProto:
    """``onnxruntime.transformers.optimizer`` (model type vit, Python fusions only), without the skipped ones."""
    try:
        from onnxruntime.transformers import optimizer  # lazy: only when a graph is optimised for ONNX Runtime
        from onnxruntime.transformers.fusion_options import FusionOptions  # lazy: as above
    except ImportError:
        raise MissingDependencyError(
            "optimising for ONNX Runtime needs onnxruntime with its transformers tools (pip install onnxruntime)"
        ) from None
    props = [(p.key, p.value) for p in model.metadata_props]  # the optimiser works on the model in place
    options = FusionOptions("vit")
    options.enable_skip_layer_norm = False  # see SKIPPED_FUSIONS
    options.enable_bias_skip_layer_norm = False
    options.enable_attention = False  # step 3 fused every attention core
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            optimized = optimizer.optimize_model(
                model,
                model_type="vit",
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=options,
                opt_level=0,  # no ONNX Runtime session: the file stays free of CPU-specific rewrites
                use_gpu=False,
            )
    finally:
        quiet.setLevel(level)
    result = optimized.model
    result.ir_version = model.ir_version
    _import_ms_domain(result)
    del result.metadata_props[:]
    for key, value in props:
        result.metadata_props.add(key=key, value=value)
    return result


# ---- the step as a whole -------------------------------------------------------------------------
#: A scoring-path node as (name, op, inputs, outputs, attributes, the path nodes that feed its inputs).
NodeSignature = tuple[str, str, tuple[str, ...], tuple[str, ...], str, tuple[str, ...]]


def scoring_path_signature(model: onnx.ModelProto, names: list[str]) -> list[NodeSignature]:
    """Every node of the scoring path ``names`` (found in the plain export) as it stands in ``model``.

    Equal signatures before and after a rewrite mean that path is untouched and wired as it was (it
    starts from the residual stream, whose producer, the write-back, may change).
    """
    inside = set(names)
    producer = {output: node.name for node in model.graph.node for output in node.output if node.name in inside}
    nodes = {node.name: node for node in model.graph.node}
    signature: list[NodeSignature] = []
    for name in names:
        node = nodes.get(name)
        if node is None:
            signature.append((name, "", (), (), "", ()))  # the node is gone
            continue
        attributes = str(sorted(str(a) for a in node.attribute))
        sources = tuple(producer.get(tensor, "") for tensor in node.input)
        signature.append((name, node.op_type, tuple(node.input), tuple(node.output), attributes, sources))
    return signature


def _heads_and_width(model: onnx.ModelProto) -> tuple[int, int]:
    attention = next((n for n in model.graph.node if n.op_type == "Attention" and n.domain == MS_DOMAIN), None)
    if attention is None:
        return 0, 0
    heads = next(a.i for a in attention.attribute if a.name == "num_heads")
    weights = {t.name: t for t in model.graph.initializer}
    width = weights[attention.input[1]].dims[1] // 3 if attention.input[1] in weights else 0
    return int(heads), int(width)


def optimize_for_onnxruntime(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Optimization]:
    """The plain export -> the graph for ONNX Runtime (see the module docstring), and what was done.

    Raises :class:`ToolkitError` when the scoring path would change or a fusion found nothing to
    fuse in a graph that has attention (a graph this module does not know how to read).
    """
    import onnxruntime  # lazy: ONNX Runtime only when a graph is optimised for it

    idle_layers = sum(node.op_type == "TopK" for node in model.graph.node)
    path = scoring_path_nodes(model) if idle_layers else []  # the scoring path as the plain export has it
    before = scoring_path_signature(model, path)
    narrowed, class_token_ops = narrow_to_class_token(model)
    moved, row_moves = move_rows(narrowed)
    if row_moves != idle_layers:
        raise ToolkitError(
            f"the row-move rewrite matched {row_moves} of the graph's {idle_layers} idle layers; this is a toolkit "
            "bug, please report it (the plain export runs in ONNX Runtime as it is)"
        )
    blocks = sum(node.op_type == "Softmax" for node in moved.graph.node)
    fused, attention = fuse_attention(moved)
    if attention != blocks:
        raise ToolkitError(
            f"the Attention fusion matched {attention} of the graph's {blocks} attention blocks; this is a toolkit "
            "bug, please report it (the plain export runs in ONNX Runtime as it is)"
        )
    heads, width = _heads_and_width(fused)
    fused = transformer_fusions(fused, heads, width)
    if scoring_path_signature(fused, path) != before:
        raise ToolkitError(
            "optimising for ONNX Runtime changed an idle layer's scoring path; this is a toolkit bug, please report "
            "it (the plain export runs in ONNX Runtime as it is)"
        )
    onnx.checker.check_model(fused)  # structure and ONNX ops (ONNX Runtime's own ops are checked by ONNX Runtime)
    counts = Counter(node.op_type for node in fused.graph.node if node.domain == MS_DOMAIN)
    tool = (
        f"onnxruntime {onnxruntime.__version__}: class-token tail + row moves + Attention fusion + "
        "transformers optimizer (vit)"
    )
    record = Optimization(tool, dict(sorted(counts.items())), row_moves=row_moves, class_token_ops=class_token_ops)
    return fused, record
