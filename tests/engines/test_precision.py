"""The precision plan: the scoring path it keeps FP32, the graph it writes, and why it matters."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import idlevit
from engines.plan import FP16, FP32
from engines.precision import (
    convert_mixed,
    emulate_fp16,
    fp16_nodes,
    node_precisions,
    plan_precision,
    scoring_path_nodes,
)
from engines.target import Target
from export.exporter import export_onnx
from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata
from validate.inputs import InputSpec
from validate.reduced import EMULATED_NAME, REDUCED_NAME, check_reduced_precision

from ..conftest import make_model


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_scoring_path_runs_from_norm1_to_topk(tiny_onnx: Path) -> None:
    model = onnx.load(tiny_onnx)
    path = set(scoring_path_nodes(model))
    by_name = {node.name: node for node in model.graph.node}
    ops = [by_name[name].op_type for name in path]
    idle_layers = read_metadata(tiny_onnx).idle_layers
    # per idle layer: one norm1, one TopK, the CLS query, its fold into the keys, its product with the tokens
    assert ops.count("TopK") == ops.count("LayerNormalization") == len(idle_layers)
    assert ops.count("MatMul") >= 3 * len(idle_layers)
    # nothing of the write-back, the gathered attention or the dense blocks
    assert not {"ScatterElements", "GatherElements", "Softmax", "Erf", "Conv"} & set(ops)
    norms = sorted(by_name[name].input[0] for name in path if by_name[name].op_type == "LayerNormalization")
    streams = sorted(n.input[0] for n in model.graph.node if n.op_type == "ScatterElements")
    assert norms == streams  # every norm1 reads exactly the stream its layer writes back into


def test_plan_per_target(tiny_onnx: Path) -> None:
    model = onnx.load(tiny_onnx)
    rtx = plan_precision(model, FP16, Target.parse("tensorrt-rtx"))
    assert rtx.method == "mixed-onnx" and rtx.strongly_typed and rtx.fp32_nodes
    trt11 = plan_precision(model, FP16, Target.parse("tensorrt-11.0"))
    assert trt11.method == "mixed-onnx"
    jetson = plan_precision(model, FP16, Target.parse("tensorrt-10.3"))
    assert jetson.method == "builder-flags" and not jetson.strongly_typed and jetson.fp32_nodes == rtx.fp32_nodes
    fp32 = plan_precision(model, FP32, Target.parse("tensorrt-rtx"))
    assert fp32.method == FP32 and not fp32.fp32_nodes
    orin = plan_precision(model, "int8", Target.parse("tensorrt-10.3"))
    assert orin.method == "qdq-onnx" and orin.strongly_typed and orin.fp32_nodes == rtx.fp32_nodes
    with pytest.raises(ToolkitError, match="TensorRT 10.0 or newer"):
        plan_precision(model, "int8", Target.parse("tensorrt-8.6"))
    with pytest.raises(ToolkitError, match="not supported yet"):
        plan_precision(model, "bf16", Target.parse("tensorrt-rtx"))


def test_mixed_graph_keeps_the_plan(tiny_onnx: Path, tiny_mixed: Path) -> None:
    mixed = onnx.load(tiny_mixed)
    types = _elem_types(mixed)
    fp32_nodes = set(scoring_path_nodes(onnx.load(tiny_onnx)))
    float_outs = {
        node.name: types.get(node.output[0])
        for node in mixed.graph.node
        if node.name in fp32_nodes and node.op_type != "TopK"
    }
    assert float_outs and all(t == onnx.TensorProto.FLOAT for t in float_outs.values()), float_outs
    topk = [node for node in mixed.graph.node if node.op_type == "TopK"]
    assert all(types[node.input[0]] == onnx.TensorProto.FLOAT for node in topk)
    counts = node_precisions(mixed)
    assert counts["float16"] > 2 * counts["float"]  # most of the network does run in FP16
    assert all(types[t.name] == onnx.TensorProto.FLOAT for t in [*mixed.graph.input, mixed.graph.output[0]])
    meta = read_metadata(tiny_mixed)
    assert meta.precision == FP16 and meta.extra["fp32_nodes"] == len(fp32_nodes)
    assert meta.extra["source_onnx"] == tiny_onnx.name  # by name: no path of the build machine
    assert meta.extra["source_onnx_sha256"] == sha256_file(tiny_onnx)


def test_scoring_path_reads_no_fp16_rounded_value(tiny_onnx: Path, tiny_mixed: Path) -> None:
    """Between two FP32 scoring-path nodes nothing is rounded to FP16 and back: each one reads its
    producer's FP32 output (or, at the layer's entry, the FP16 residual stream made FP32 once)."""
    mixed = onnx.load(tiny_mixed)
    types = _elem_types(mixed)
    producer = {out: node for node in mixed.graph.node for out in node.output}
    scoring = set(scoring_path_nodes(onnx.load(tiny_onnx)))
    round_trips = []
    for node in mixed.graph.node:
        if node.name not in scoring:
            continue
        for name in node.input:
            cast = producer.get(name)
            if cast is None or cast.op_type != "Cast":
                continue
            before = producer.get(cast.input[0])
            if before is not None and before.op_type == "Cast" and types.get(before.input[0]) == onnx.TensorProto.FLOAT:
                round_trips.append((before.input[0], node.name))
    assert not round_trips, round_trips[:3]


def test_mixed_graph_agrees_with_fp32(tiny_onnx: Path, tiny_mixed: Path) -> None:
    report = check_reduced_precision(tiny_onnx, tiny_mixed, inputs=random_inputs(2, 8))
    assert report.passed, report.failures
    result = report.backend(REDUCED_NAME)
    assert result.samples == 16 and result.top1_agreement >= 0.99
    assert list(result.layers) == read_metadata(tiny_onnx).idle_layers


def random_inputs(batches: int, batch: int) -> InputSpec:
    return InputSpec(data=None, random_batches=batches, batch_sizes=(batch,))


def _offset_models() -> tuple[idlevit.IdleViT, idlevit.IdleViT]:
    """deit_tiny, and a copy whose idle layers add a large constant to every CLS score.

    In each idle layer, query and value weights are made blind to one direction u (and both
    models share that), then the copy's norm1 bias gets a large multiple of u: it shifts every
    token's key by the same vector, so each query's scores move by one constant (softmax and
    ranks unchanged) and q and v do not move at all: ranks, selections and logits are unchanged
    in exact arithmetic (checked below). Trained ViTs carry such common components; in FP16 the
    offset eats the resolution the ranking needs.
    """
    plain = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)
    dim = plain.cfg.embed_dim
    u = torch.nn.functional.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(1)), dim=0)
    blind = torch.eye(dim) - torch.outer(u, u)
    with torch.no_grad():
        for layer in plain.idle_plan:
            weight = plain.blocks[layer].attn.qkv.weight
            weight[:dim] = weight[:dim] @ blind  # queries
            weight[2 * dim :] = weight[2 * dim :] @ blind  # values
    offset = copy.deepcopy(plain)
    with torch.no_grad():
        for layer in offset.idle_plan:
            offset.blocks[layer].norm1.bias += 1000.0 * u
    return offset, plain


def test_fp16_scoring_path_selects_worse_than_the_plan(tmp_path: Path) -> None:
    """The same converter with nothing kept FP32 flips far more kept tokens than the plan does.

    Both AutoCast graphs are judged with FP16 storage rounding emulated (ONNX Runtime's CPU
    kernels would skip the rounding of the scores), on the same 32 seeded images, against the
    FP32 graph.
    """
    model, plain = _offset_models()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(images), plain(images), atol=1e-4)  # the offset changes nothing exactly
    source = tmp_path / "offset.onnx"
    export_onnx(model, source, with_indices=True, verify_batch=0, progress=False)
    fp32 = onnx.load(source)
    scoring = scoring_path_nodes(fp32)
    plan_mixed = convert_mixed(source, scoring)
    naive_mixed = convert_mixed(source, fp32_nodes=[])
    # in the naive graph the scores are computed in FP16 (AutoCast keeps TopK and the CLS-first Add FP32 itself)
    naive_fp16 = set(fp16_nodes(naive_mixed)) & set(scoring)
    assert {n.op_type for n in naive_mixed.graph.node if n.name in naive_fp16} >= {"LayerNormalization", "MatMul"}
    plan_path = tmp_path / "offset_fp16_mixed.onnx"
    onnx.save(plan_mixed, plan_path)
    naive_emulated = emulate_fp16(fp32, fp16_nodes(naive_mixed))
    report = check_reduced_precision(source, plan_path, others={"naive": naive_emulated}, inputs=random_inputs(2, 16))
    plan, naive = report.backend(EMULATED_NAME), report.backend("naive")
    plan_flips = np.array([sel.flipped for sel in plan.layers.values()])
    naive_flips = np.array([sel.flipped for sel in naive.layers.values()])
    print(f"flipped selections per idle layer (32 samples): plan {plan_flips.tolist()}, naive {naive_flips.tolist()}")
    assert naive_flips.sum() > 4 * plan_flips.sum()
    assert all(n.agreement < p.agreement for n, p in zip(naive.layers.values(), plan.layers.values()))
    assert plan.top1_agreement > naive.top1_agreement


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA GPU",
)
def test_mixed_graph_on_cuda_keeps_the_selection(tiny_onnx: Path, tiny_mixed: Path) -> None:
    """On real FP16 kernels (CUDA provider) the plan's graph still agrees with the FP32 graph."""
    report = check_reduced_precision(tiny_onnx, tiny_mixed, inputs=random_inputs(4, 16), device="cuda")
    assert report.passed, report.failures
