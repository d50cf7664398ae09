"""The exported graph: one op contract from both exporters, metadata, and ONNX Runtime against PyTorch."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import idlevit
from engines.ort import create_session
from engines.precision import scoring_path_nodes
from export import onnx as onnx_cli
from export.contract import DEFAULT_OPSET, DYNAMO, EXPORTER_OPSETS, EXPORTERS, TORCHSCRIPT
from export.exporter import FORBIDDEN_OPS, clean, default_output_path, export_checkpoint, export_onnx
from idlevit.cli import run_cli
from idlevit.errors import EXIT_BAD_INPUT, MissingDependencyError, ToolkitError
from idlevit.metadata import read_metadata
from idlevit.model import IdleViT
from plugins.idle_scatter.graph_pass import fuse_idle_scatter

from ..conftest import assert_onnx_matches_reference, make_model, run_module
from .conftest import shallow_model

#: Ops that only copy or compute shapes: the clean-up leaves none of them in either exporter's graph.
SHAPE_ARITHMETIC = {"Shape", "ConstantOfShape", "Concat", "Where", "Equal", "SplitToSequence", "SequenceAt"}
NO_OPS = {"Identity", "Cast"}


def _topk_constants(model: onnx.ModelProto) -> list[int]:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {
        o: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for o in n.output
    }
    ks = []
    for node in model.graph.node:
        if node.op_type == "TopK":
            k = init.get(node.input[1], consts.get(node.input[1]))
            assert k is not None, "TopK's k must be a constant"
            ks.append(int(np.asarray(k).reshape(-1)[0]))
    return ks


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_graph_contract(deit_small_graph: Path) -> None:
    model = onnx.load(deit_small_graph)
    ops = set(_ops(model))
    assert not ops & FORBIDDEN_OPS
    assert not ops & (SHAPE_ARITHMETIC | NO_OPS), "shape arithmetic or no-ops left after the clean-up"
    assert {"TopK", "GatherElements", "ScatterElements", "Split"} <= ops
    # k image tokens per IDLEVIT.md (r = 0.7), plus CLS, which the graph ranks first by an infinite score
    assert _topk_constants(model) == [k + 1 for k in (137, 137, 137, 96, 96, 96, 67, 67, 67)]
    for node in model.graph.node:
        if node.op_type == "TopK":
            assert {a.name: a.i for a in node.attribute}.get("sorted", 1) == 1
    # One index dtype: every integer tensor feeding the gathers and scatters is int64.
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for node in model.graph.node:
        if node.op_type in ("GatherElements", "ScatterElements"):
            assert types[node.input[1]] == onnx.TensorProto.INT64
    # Dynamic batch on every input and output, readable I/O names, every node named once.
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits", *(f"kept_indices_{i}" for i in range(3, 12))]
    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_both_exporters_give_one_graph(deit_small_graphs: Callable[[str], Path]) -> None:
    """Same ops, same count, same numbers."""
    graphs = {name: onnx.load(deit_small_graphs(name)) for name in EXPORTERS}
    counts = {name: _ops(graph) for name, graph in graphs.items()}
    assert counts[DYNAMO] == counts[TORCHSCRIPT]
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5)).numpy()
    dynamo, torchscript = (create_session(deit_small_graphs(name)).run(None, {"images": images}) for name in EXPORTERS)
    np.testing.assert_allclose(dynamo[0], torchscript[0], atol=1e-5)
    for a, b in zip(dynamo[1:], torchscript[1:], strict=True):
        np.testing.assert_array_equal(np.sort(a, axis=1), np.sort(b, axis=1))


def _node_signatures(model: onnx.ModelProto) -> list[tuple[object, ...]]:
    """Each node in graph order as what it runs: op, domain, attributes, and per input its constant's shape or None."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        (
            node.op_type,
            node.domain,
            sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute),
            [shapes.get(name) for name in node.input],
        )
        for node in model.graph.node
    ]


def test_onnxruntime_optimises_both_exporters_graphs_alike(
    deit_small_graphs: Callable[[str], Path], tmp_path: Path
) -> None:
    """After ONNX Runtime's own graph optimisation the two graphs are node for node the same, so equally fast.

    The dynamo exporter writes GELU as ``h * (0.5 * (erf + 1))``, a form ONNX Runtime does not
    fuse (five element-wise ops per MLP instead of one), and the TorchScript exporter a bias add as
    ``Add(bias, x)``; the clean-up writes each one way. Both graphs are run through the same
    optimiser (all levels, the benchmark's) and compared node by node, in order.
    """
    optimised = {}
    for name in EXPORTERS:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"{name}_ort.onnx")
        ort.InferenceSession(str(deit_small_graphs(name)), options, providers=["CPUExecutionProvider"])
        optimised[name] = onnx.load(options.optimized_model_filepath, load_external_data=False)
    counts = _ops(optimised[DYNAMO])
    assert counts["BiasGelu"] == 12 and "Erf" not in counts
    assert _node_signatures(optimised[DYNAMO]) == _node_signatures(optimised[TORCHSCRIPT])


def test_the_clean_up_writes_operands_one_way() -> None:
    """``Add(bias, x)``, ``Flatten`` and a trailing empty input become ``Add(x, bias)``, ``Reshape`` and nothing.

    The graph is TorchScript's spelling, built by hand; ONNX Runtime runs it before and after, and
    the outputs must be bit-identical (swapping the operands of + and * is exact in IEEE arithmetic).
    """
    helper = onnx.helper
    bias = numpy_helper.from_array(np.linspace(-1, 1, 4, dtype=np.float32), "bias")
    scale = numpy_helper.from_array(np.float32([3.0]), "scale")
    pads = numpy_helper.from_array(np.array([0, 1, 0, 0], dtype=np.int64), "pads")
    nodes = [
        helper.make_node("Add", ["bias", "x"], ["biased"], name="add"),
        helper.make_node("Mul", ["scale", "biased"], ["scaled"], name="mul"),
        helper.make_node("Flatten", ["scaled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Pad", ["flat", "pads", ""], ["y"], name="pad", mode="constant"),
    ]
    graph = helper.make_graph(
        nodes,
        "spelling",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [bias, scale, pads],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    cleaned = clean(model)
    by_op = {node.op_type: node for node in cleaned.graph.node}
    assert set(by_op) == {"Add", "Mul", "Reshape", "Pad"}
    constants = {t.name for t in cleaned.graph.initializer}
    assert by_op["Add"].input[1] in constants and by_op["Mul"].input[1] in constants
    assert len(by_op["Pad"].input) == 2  # data and pads: the empty optional input is gone
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    before, after = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, cleaned)
    )
    assert after.shape == (2, 13)
    np.testing.assert_array_equal(before, after)


def test_the_clean_up_folds_large_weights_without_a_word(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """deit_small's weight transposes fold to tensors over onnx-graphsurgeon's 1 MiB note: the plan, not news."""
    model = make_model("deit_small", img_size=32, patch_size=16, num_classes=10, depth=2, idle_layers=[1])
    export_onnx(model, tmp_path / "wide.onnx", verify_batch=0, progress=False)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_scoring_path_and_plugin_pass_read_the_graph(deit_small_graph: Path) -> None:
    """The precision plan finds every idle layer's scoring path by node names; the plugin pass fuses every scatter."""
    model = onnx.load(deit_small_graph)
    scoring = scoring_path_nodes(model)
    top_ks = [node.name for node in model.graph.node if node.op_type == "TopK"]
    assert set(top_ks) <= set(scoring) and len(scoring) >= 4 * len(top_ks)  # norm1, CLS query, scores, TopK
    assert fuse_idle_scatter(model)[1] == 9


def test_metadata_records_everything_downstream_needs(deit_small_graph: Path, exporter: str) -> None:
    meta = read_metadata(deit_small_graph)
    assert meta.arch == "deit_small" and meta.img_size == 224 and meta.num_tokens == 196
    assert meta.idle_layers == list(range(3, 12))
    assert meta.keep_tokens == [137, 137, 137, 96, 96, 96, 67, 67, 67]
    assert meta.opset == DEFAULT_OPSET and meta.with_indices and meta.batch == 0
    assert onnx.load(deit_small_graph, load_external_data=False).opset_import[0].version == DEFAULT_OPSET
    assert meta.mean == pytest.approx([0.485, 0.456, 0.406]) and not meta.folded_normalization
    assert meta.input_config == meta.data_config
    assert meta.toolkit_version == idlevit.__version__ and meta.checkpoint == "random-init"
    assert meta.extra["exporter"] == exporter


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_reference(deit_small: IdleViT, deit_small_graph: Path, batch: int) -> None:
    assert_onnx_matches_reference(deit_small, create_session(deit_small_graph), batch)


@pytest.mark.parametrize(
    ("exporter", "opset"), [(TORCHSCRIPT, 13), (TORCHSCRIPT, 17), (TORCHSCRIPT, 20), (DYNAMO, 20), (DYNAMO, 22)]
)
def test_opsets_export_and_run(tmp_path: Path, exporter: str, opset: int) -> None:
    model = shallow_model()
    path = tmp_path / f"opset{opset}.onnx"
    report = export_onnx(model, path, opset=opset, exporter=exporter, with_indices=True, verify_batch=2, progress=False)
    assert onnx.load(path).opset_import[0].version == opset and read_metadata(path).opset == opset
    assert report is not None and report.passed
    totals = report.backend("onnxruntime-cpu")
    assert totals.max_abs <= 1e-4 and all(sel.agreement == 1.0 for sel in totals.layers.values())
    ops = set(_ops(onnx.load(path)))
    assert not ops & (FORBIDDEN_OPS | SHAPE_ARITHMETIC | NO_OPS)


def test_an_opset_the_exporter_cannot_serve_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    model = shallow_model()
    with pytest.raises(ToolkitError, match="--exporter torchscript") as refused:
        export_onnx(model, "never-written.onnx", opset=17, exporter=DYNAMO, verify_batch=0, progress=False)
    assert "serves 18..22" in str(refused.value) and not Path("never-written.onnx").exists()
    with pytest.raises(ToolkitError, match="--exporter dynamo"):
        export_onnx(model, "never-written.onnx", opset=22, exporter=TORCHSCRIPT, verify_batch=0, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(onnx_cli.main, ["--arch", "deit_tiny", "--random-init", "--opset", "17"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: the dynamo exporter does not export opset 17") and err.count("\n") == 1
    assert set(EXPORTER_OPSETS[TORCHSCRIPT]) | set(EXPORTER_OPSETS[DYNAMO]) >= {13, 17, 18, 20, 22}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_static_batch(tmp_path: Path, exporter: str) -> None:
    path = tmp_path / "static.onnx"
    export_onnx(shallow_model(), path, batch=4, exporter=exporter, verify_batch=0, progress=False)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 32, 32]
    assert read_metadata(path).batch == 4


def test_default_exporter_works_without_torchscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose TorchScript exporter raises: --exporter torchscript is one line (exit 3), the default exports."""
    real_export = torch.onnx.export

    def export_without_torchscript(*args, **kwargs):
        if not kwargs.get("dynamo", True):
            raise RuntimeError("the TorchScript-based ONNX exporter has been removed\nsee the docs")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_without_torchscript)
    model = shallow_model()
    with pytest.raises(MissingDependencyError, match="TorchScript exporter .* failed .*has been removed.*dynamo"):
        export_onnx(model, tmp_path / "ts.onnx", exporter=TORCHSCRIPT, verify_batch=0, progress=False)
    report = export_onnx(model, tmp_path / "default.onnx", verify_batch=2, progress=False)
    assert report is not None and report.passed


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_only_known_notes_are_silenced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: str) -> None:
    """The exporters' known harmless notes are silenced; a warning from anywhere else still shows."""
    real_forward = IdleViT.forward_export

    def forward_with_a_note(self: IdleViT, images: torch.Tensor, with_indices: bool = False):
        warnings.warn("a note nobody silences", UserWarning, stacklevel=1)
        return real_forward(self, images, with_indices)

    monkeypatch.setattr(IdleViT, "forward_export", forward_with_a_note)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(shallow_model(), tmp_path / "noted.onnx", exporter=exporter, verify_batch=0, progress=False)
    messages = {str(w.message) for w in caught}
    assert messages == {"a note nobody silences"}, messages


def test_random_init_gives_the_same_weights_every_time(tmp_path: Path) -> None:
    """Two --random-init exports of one arch are one model, whatever torch's RNG held (so exporters can be compared)."""
    options = dict(arch="deit_micro", img_size=32, random_init=True, verify=False, progress=False)
    torch.manual_seed(1234)
    first = export_checkpoint(**options, out=tmp_path / "a.onnx").path
    torch.manual_seed(4321)
    second = export_checkpoint(**options, exporter="torchscript", out=tmp_path / "b.onnx").path
    weights = [{t.name: numpy_helper.to_array(t) for t in onnx.load(p).graph.initializer} for p in (first, second)]
    head = [next(w for name, w in each.items() if "head.weight" in name) for each in weights]
    np.testing.assert_array_equal(head[0], head[1])
    images = np.random.default_rng(5).standard_normal((2, 3, 32, 32), dtype=np.float32)
    logits = [create_session(p).run(None, {"images": images})[0] for p in (first, second)]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)


def test_cli_random_init_writes_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = run_module(
        "export.onnx",
        "--arch",
        "deit_tiny",
        "--random-init",
        "--img-size",
        "64",
        "--keep-rate",
        "0.5",
        "--with-indices",
        "--quiet",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "max abs logit error" in result.stdout and "kept-token agreement 100.00%" in result.stdout
    assert "dynamo exporter" in result.stdout and "graph: with index outputs kept_indices_<layer>" in result.stdout
    assert result.stderr == "", result.stderr  # no warnings, no progress bar
    meta = read_metadata(out)
    assert meta.keep_ratios[0] == 0.5 and meta.img_size == 64
    assert (tmp_path / ".idlevit" / "last_export.json").is_file()


def test_optimize_writes_a_checked_graph_for_onnxruntime_that_export_trt_refuses(tmp_path: Path) -> None:
    result = run_module("export.onnx", "--optimize", "--with-indices", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "idlevit_deit_micro_digits_ratio0.7_indices_ort.onnx"
    assert f"wrote {out.name}" in result.stdout
    done = "12 Attention, 12 BiasGelu, 9 idle layers' token moves as row copies, 17 ops narrowed to the class token"
    assert f"optimised for ONNX Runtime only ({done})" in result.stdout
    assert "kept-token agreement 100.00%" in result.stdout and "PASS" in result.stdout  # the export's own check
    meta = read_metadata(out)
    assert meta.optimized_for == "onnxruntime" and meta.extra["optimization"]["fused"]["Attention"] == 12
    assert meta.extra["optimization"]["row_moves"] == 9  # the demo's idle layers 3..11
    assert meta.extra["optimization"]["class_token_ops"] == 17  # the last block after its attention
    refused = run_module("export.trt", "--fp32", "--runtime", "tensorrt-rtx", cwd=tmp_path)  # the last export
    assert refused.returncode == EXIT_BAD_INPUT and refused.stderr.count("\n") == 1
    assert "optimised for onnxruntime only" in refused.stderr and "without --optimize" in refused.stderr
    both = run_module("export.onnx", "--optimize", "--plugin", cwd=tmp_path)
    assert both.returncode == EXIT_BAD_INPUT and "give one of them" in both.stderr


def test_default_output_names_say_what_the_graph_is() -> None:
    arch = "deit_micro"
    assert default_output_path("runs/m.pth", arch) == Path("runs/m.onnx")
    assert default_output_path("runs/m.pth", arch, with_indices=True) == Path("runs/m_indices.onnx")
    assert default_output_path("runs/m.pth", arch, plugin=True) == Path("runs/m_plugin.onnx")
    assert default_output_path("m.pth", arch, True, True, True) == Path("m_indices_plugin_pixels.onnx")
    assert default_output_path("demo", arch) == Path("idlevit_deit_micro_digits_ratio0.7.onnx")
    assert default_output_path(None, arch, fold_normalization=True) == Path("idlevit_deit_micro_random_pixels.onnx")
    # a default that would fall on the input itself gets another name
    assert default_output_path("m.onnx", arch, avoid="m.onnx") == Path("m_export.onnx")
    assert default_output_path("m_indices.pth", arch) == Path("m_indices.onnx")
    assert default_output_path("m.pth", arch, True, optimize=True) == Path("m_indices_ort.onnx")


def test_out_onto_the_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(idlevit.DEMO_CHECKPOINT.read_bytes())
    link = tmp_path / "link.onnx"
    link.symlink_to(ckpt)
    for out in (ckpt, link):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(onnx_cli.main, ["--ckpt", str(ckpt), "--out", str(out), "--quiet"])
        assert exit_info.value.code == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err and str(ckpt) in err and "input" in err
    assert ckpt.read_bytes() == idlevit.DEMO_CHECKPOINT.read_bytes()


def test_default_name_never_falls_on_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the command records its output in ./.idlevit
    ckpt = tmp_path / "m.onnx"  # a checkpoint with an unlucky suffix
    ckpt.write_bytes(idlevit.DEMO_CHECKPOINT.read_bytes())
    code = onnx_cli.main(["--ckpt", str(ckpt), "--exporter", "torchscript", "--no-verify", "--quiet"])
    assert code == 0
    assert ckpt.read_bytes() == idlevit.DEMO_CHECKPOINT.read_bytes()
    assert read_metadata(tmp_path / "m_export.onnx").checkpoint == "m.onnx"


def test_cli_help_explains_every_flag() -> None:
    result = run_module("export.onnx", "--help", cwd=Path.cwd())
    assert result.returncode == 0
    for flag in (
        "--ckpt",
        "--arch",
        "--keep-rate",
        "--idle-layers",
        "--keep-ratios",
        "--img-size",
        "--exporter",
        "--opset",
        "--static-batch",
        "--with-indices",
        "--out",
        "--random-init",
        "--plugin",
        "--fold-normalization",
        "--optimize",
    ):
        assert flag in result.stdout
    text = " ".join(result.stdout.split())
    # --out's default as it really is: the demo's ONNX goes to the working directory
    assert f"{default_output_path('demo', 'deit_micro').name} (the bundled demo)" in text
    assert "in the working directory" in text and "_indices, _plugin, _pixels" in text
    assert "18..22 with --exporter dynamo, 13..20 with --exporter torchscript" in text
