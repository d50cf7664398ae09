"""A graph optimised for ONNX Runtime: its fused Attention and transformer fusions, the scoring path untouched.

Two steps, both on the plain export (``python -m export.onnx``), both exact where they touch an
idle layer's token selection (they do not touch it):

1. **Attention.** Every block's attention core (the qkv projection and its bias, the Split into
   q, k and v, the head Reshapes and Transposes, the scale, QK^T, Softmax, the product with v and
   the merge of the heads) becomes one ``com.microsoft.Attention`` node holding the qkv weights
   (:func:`fuse_attention`), in dense and idle blocks alike (an idle block's attention runs over
   its gathered k+1 tokens). ONNX Runtime's own matcher (``FusionAttention`` of
   ``onnxruntime.transformers``) looks for three separate q, k and v projections fed by a
   LayerNormalization, which a fused-qkv ViT (and an idle block, which gathers the normalised
   tokens first) does not have, so it fuses none of them.
2. **ONNX Runtime's transformer fusions** (``onnxruntime.transformers.optimizer``, model type
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

    def summary(self) -> str:
        fused = ", ".join(f"{count} {op}" for op, count in sorted(self.fused.items())) or "nothing fused"
        return f"optimised for ONNX Runtime only ({fused}); TensorRT takes the plain export"

    def to_dict(self) -> dict[str, object]:
        return {"tool": self.tool, "fused": dict(self.fused), "skipped": dict(self.skipped)}


# ---- step 1: Attention ------------------------------------------------------------------------
def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


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
    """``Transpose(Reshape(x, [-1, S, H, D]), perm)`` -> (its Reshape, x, (S, H, D)); None otherwise."""
    transpose = _single_producer(tensor, "Transpose")
    if transpose is None or _perm(transpose) != perm or len(transpose.outputs[0].outputs) != 1:
        return None
    reshape = _single_producer(transpose.inputs[0], "Reshape")
    if reshape is None:
        return None
    shape = _constant(reshape.inputs[1])
    if shape is None or shape.size != 4 or int(shape[0]) != -1 or len(reshape.outputs[0].outputs) != 1:
        return None
    return reshape, reshape.inputs[0], (int(shape[1]), int(shape[2]), int(shape[3]))


def _qkv_projection(split: gs.Node) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """The Split's source ``MatMul(x, W) [+ b]`` -> (x, W, b); a projection without bias gets zeros (exact)."""
    source = split.inputs[0]
    if len(source.outputs) != 1:
        return None
    bias = None
    add = _single_producer(source, "Add")
    if add is not None:
        constants = [_constant(t) for t in add.inputs]
        others = [t for t, c in zip(add.inputs, constants, strict=True) if c is None]
        bias = next((c for c in constants if c is not None), None)
        if bias is None or len(others) != 1 or len(others[0].outputs) != 1:
            return None
        source = others[0]
    matmul = _single_producer(source, "MatMul")
    if matmul is None:
        return None
    weight = _constant(matmul.inputs[1])
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
    factors = [_constant(t) for t in scaled.inputs]
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
    axis, sizes = int(split.attrs.get("axis", 0)), _constant(split.inputs[1]) if len(split.inputs) > 1 else None
    if axis not in (-1, 2) or sizes is None or [int(s) for s in sizes] != [heads * head_size] * 3:
        return None
    merge = _single_reader(context.outputs[0], "Transpose")
    if merge is None or _perm(merge) != [0, 2, 1, 3]:
        return None
    flat = _single_reader(merge.outputs[0], "Reshape")
    if flat is None:
        return None
    shape = _constant(flat.inputs[1])
    if shape is None or [int(s) for s in shape] != [-1, tokens, heads * head_size]:
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
    graph.cleanup().toposort()
    fused = gs.export_onnx(graph)
    fused.ir_version = model.ir_version
    fused.metadata_props.extend(model.metadata_props)
    _import_ms_domain(fused)
    return fused, count


def _import_ms_domain(model: onnx.ModelProto) -> None:
    if any(node.domain == MS_DOMAIN for node in model.graph.node) and not any(
        op.domain == MS_DOMAIN for op in model.opset_import
    ):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))


# ---- step 2: ONNX Runtime's transformer fusions ---------------------------------------------------
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
    options.enable_attention = False  # step 1 fused every attention core
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
def scoring_path_signature(model: onnx.ModelProto) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...], str]]:
    """Every scoring-path node as (name, op, inputs, outputs, attributes): equal before and after means untouched."""
    if not any(node.op_type == "TopK" for node in model.graph.node):
        return []  # a dense graph (keep rate 1.0) selects no tokens
    wanted = set(scoring_path_nodes(model))
    return [
        (node.name, node.op_type, tuple(node.input), tuple(node.output), str(sorted(str(a) for a in node.attribute)))
        for node in model.graph.node
        if node.name in wanted
    ]


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

    before = scoring_path_signature(model)
    blocks = sum(node.op_type == "Softmax" for node in model.graph.node)
    fused, attention = fuse_attention(model)
    if attention != blocks:
        raise ToolkitError(
            f"the Attention fusion matched {attention} of the graph's {blocks} attention blocks; this is a toolkit "
            "bug, please report it (the plain export runs in ONNX Runtime as it is)"
        )
    heads, width = _heads_and_width(fused)
    fused = transformer_fusions(fused, heads, width)
    if scoring_path_signature(fused) != before:
        raise ToolkitError(
            "optimising for ONNX Runtime changed an idle layer's scoring path; this is a toolkit bug, please report "
            "it (the plain export runs in ONNX Runtime as it is)"
        )
    onnx.checker.check_model(fused)  # structure and ONNX ops (ONNX Runtime's own ops are checked by ONNX Runtime)
    counts = Counter(node.op_type for node in fused.graph.node if node.domain == MS_DOMAIN)
    tool = f"onnxruntime {onnxruntime.__version__}: Attention fusion + transformers optimizer (vit)"
    return fused, Optimization(tool, dict(sorted(counts.items())))
