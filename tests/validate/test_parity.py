"""validate.parity end to end: a faithful export passes; a wrong weight, a wrong k or a wrong fold fails, readably."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from PIL import Image
from polygraphy.comparator import IndicesCompareFunc, IterationResult

import idlevit
from engines.ort import create_session
from export.exporter import export_onnx
from idlevit.cli import run_cli
from idlevit.data import normalize
from idlevit.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_MISSING_DEPENDENCY, EXIT_OK, ToolkitError
from idlevit.fileio import sha256_file
from idlevit.images import EvalTransform
from idlevit.metadata import read_metadata
from idlevit.sidecar import EngineSidecar, sidecar_path
from validate import parity
from validate.evaluate import measure_accuracy
from validate.inputs import InputSpec, parity_inputs

#: Small, fast runs: 8 real digits and one random batch per size, at batch 1 and 4.
FAST = ["--num-images", "8", "--random-batches", "1", "--batch-sizes", "1,4", "--threads", "1", "--quiet"]


def run(ckpt: Path, onnx_path: Path, report: Path, *extra: str) -> tuple[int, dict]:
    code = parity.main(["--ckpt", str(ckpt), "--onnx", str(onnx_path), "--report", str(report), *FAST, *extra])
    return code, json.loads(report.read_text())


def save_edited(graph: gs.Graph, source: Path, out: Path) -> Path:
    """Write an edited graph, keeping the source's metadata (the exporter's record of the model)."""
    model = gs.export_onnx(graph.cleanup().toposort())
    model.metadata_props.extend(onnx.load(source, load_external_data=False).metadata_props)
    for value in model.graph.value_info:  # stale shapes would contradict the edit
        value.type.tensor_type.ClearField("shape")
    onnx.save(model, out)
    return out


def kept_topk(graph: gs.Graph, layer: int) -> gs.Node:
    """An idle layer's TopK, whose indices (CLS first) are the output kept_indices_<layer>."""
    topk = graph.tensors()[f"kept_indices_{layer}"].inputs[0]
    assert topk.op == "TopK"
    return topk


def test_faithful_export_passes_with_every_metric(digits_ckpt: Path, digits_onnx: Path, tmp_path: Path) -> None:
    code, report = run(digits_ckpt, digits_onnx, tmp_path / "ok.json")
    assert code == EXIT_OK, report["failures"]
    rows = report["results"]
    assert {(r["inputs"], r["batch"]) for r in rows} == {("real", 1), ("real", 4), ("random", 1), ("random", 4)}
    for row in rows:
        assert row["passed"] and row["images"] == (8 if row["inputs"] == "real" else row["batch"])
        assert row["logits"]["max_abs_error"] < 1e-4 and row["logits"]["top1_agreement"] == 1.0
        assert row["logits"]["min_cosine_similarity"] > 0.99999
        assert set(row["kept_tokens"]) == {str(layer) for layer in range(3, 12)}
        assert all(layer["agreement"] == 1.0 and layer["mismatch"] == 0 for layer in row["kept_tokens"].values())
    markdown = (tmp_path / "ok.md").read_text()
    assert markdown.count("| onnxruntime-cpu |") == 4 and "PASS" in markdown


def test_perturbed_weight_fails_with_a_readable_explanation(
    digits_ckpt: Path, digits_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = gs.import_onnx(onnx.load(digits_onnx))
    # the first MLP expansion (192 -> 768) is block 0's fc1; one of its weights is moved by 1.0
    fc1 = next(
        t
        for n in graph.nodes
        if n.op == "MatMul"
        for t in n.inputs
        if isinstance(t, gs.Constant) and t.values.shape == (192, 768)
    )
    fc1.values = fc1.values.copy()
    fc1.values[7, 11] += 1.0
    broken = save_edited(graph, digits_onnx, tmp_path / "perturbed.onnx")

    code, report = run(digits_ckpt, broken, tmp_path / "perturbed.json")
    assert code == EXIT_CHECK_FAILED
    err = capsys.readouterr().err
    assert "FAILED" in err
    assert "onnxruntime-cpu | real inputs (digits:test) at batch size 1: logits differ beyond both atol" in err
    assert not report["passed"]
    assert all(row["logits"]["max_abs_error"] > 1e-3 for row in report["results"])


def test_swapping_two_kept_tokens_order_passes(digits_ckpt: Path, digits_onnx: Path, tmp_path: Path) -> None:
    graph = gs.import_onnx(onnx.load(digits_onnx))
    topk = kept_topk(graph, 3)
    k1 = read_metadata(digits_onnx).keep_tokens[0] + 1
    order = np.arange(k1, dtype=np.int64)
    order[[1, 2]] = order[[2, 1]]  # the two highest-scoring image tokens trade places
    kept = topk.outputs[1]
    unordered = gs.Variable("kept_unswapped_3", dtype=np.int64)
    topk.outputs = [topk.outputs[0], unordered]
    graph.nodes.append(
        gs.Node("Gather", inputs=[unordered, gs.Constant("swap_order", order)], outputs=[kept], attrs={"axis": 1})
    )
    swapped = save_edited(graph, digits_onnx, tmp_path / "swapped.onnx")

    # The edit really reorders the output (an order-sensitive check, Polygraphy's indices compare, fails it) ...
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    original = create_session(digits_onnx).run(["kept_indices_3"], {"images": images})[0]
    reordered = create_session(swapped).run(["kept_indices_3"], {"images": images})[0]
    assert not np.array_equal(original, reordered)
    assert np.array_equal(np.sort(original, axis=1), np.sort(reordered, axis=1))
    as_result = lambda arr, name: IterationResult({"kept_indices_3": arr}, runner_name=name)  # noqa: E731
    assert not IndicesCompareFunc()(as_result(original, "a"), as_result(reordered, "b"))["kept_indices_3"]

    # ... and the set semantics of parity accept it.
    code, report = run(digits_ckpt, swapped, tmp_path / "swapped.json")
    assert code == EXIT_OK, report["failures"]
    assert all(row["kept_tokens"]["3"]["matched"] == row["kept_tokens"]["3"]["rows"] for row in report["results"])


def set_wrong_k(graph: gs.Graph, layer: int, wrong_k: int) -> int:
    """Give an idle layer's TopK another k; returns the right one.

    Static token counts the export wrote for that layer (head-split Reshapes of k+1 tokens) follow
    the new k, so the graph still runs and only the selection is wrong, as with a real bug.
    """
    topk = kept_topk(graph, layer)
    k = int(topk.inputs[1].values.reshape(-1)[0]) - 1  # TopK keeps CLS and k image tokens
    topk.inputs[1] = gs.Constant(f"wrong_k_{layer}", np.array([wrong_k + 1], dtype=np.int64))
    pending, seen = list(topk.outputs[1].outputs), set()
    while pending:  # the layer's nodes: downstream of its indices, up to its write-back
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        shape = node.inputs[1] if node.op == "Reshape" else None
        if isinstance(shape, gs.Constant) and shape.values.size > 1 and shape.values[1] == k + 1:
            values = shape.values.copy()
            values[1] = wrong_k + 1
            node.inputs[1] = gs.Constant(f"{shape.name}_wrong_k", values)
        if node.op != "ScatterElements":
            pending += [consumer for out in node.outputs for consumer in out.outputs]
    return k


def test_wrong_topk_k_fails_the_selection_check(
    digits_ckpt: Path, digits_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = gs.import_onnx(onnx.load(digits_onnx))
    k = set_wrong_k(graph, 6, read_metadata(digits_onnx).keep_tokens[3] - 1) + 1
    assert k - 1 == read_metadata(digits_onnx).keep_tokens[3]
    broken = save_edited(graph, digits_onnx, tmp_path / "wrong_k.onnx")

    code, report = run(digits_ckpt, broken, tmp_path / "wrong_k.json")
    assert code == EXIT_CHECK_FAILED
    err = capsys.readouterr().err
    assert "kept token sets differ beyond near-ties at idle layer(s) 6 (8/8) (mismatching/samples" in err
    assert f"kept_indices_6 has shape (1, {k - 1}), reference (1, {k})" in err
    for row in report["results"]:
        layers = row["kept_tokens"]
        assert all(layers[str(layer)]["mismatch"] == 0 for layer in (3, 4, 5))  # upstream layers are fine
        assert layers["6"]["mismatch"] == layers["6"]["rows"]  # no wrong-k row passes as a near-tie


def test_bad_inputs_exit_2(
    digits_ckpt: Path, digits_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ToolkitError) as missing:
        parity.main(["--ckpt", str(digits_ckpt), "--onnx", str(tmp_path / "absent.onnx")])
    assert missing.value.exit_code == EXIT_BAD_INPUT and "does not exist" in str(missing.value)

    bare = onnx.load(digits_onnx)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ToolkitError, match="no IdleViT metadata"):
        parity.main(["--ckpt", str(digits_ckpt), "--onnx", str(tmp_path / "bare.onnx")])

    other = torch.load(digits_ckpt, weights_only=True)
    other["model"]["head.weight"] = other["model"]["head.weight"][:5]
    other["model"]["head.bias"] = other["model"]["head.bias"][:5]
    torch.save(other, tmp_path / "five_classes.pth")
    with pytest.raises(ToolkitError, match="records") as wrong:
        parity.main(["--ckpt", str(tmp_path / "five_classes.pth"), "--onnx", str(digits_onnx), *FAST])
    assert wrong.value.exit_code == EXIT_BAD_INPUT

    with pytest.raises(SystemExit) as usage:  # a usage error: refused as the arguments parse
        parity.main(["--ckpt", str(digits_ckpt), "--onnx", str(digits_onnx), "--batch-sizes", "0,2"])
    assert usage.value.code == EXIT_BAD_INPUT and "--batch-sizes 0 is not a batch size" in capsys.readouterr().err


def test_cli_exit_code_and_help(digits_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(parity.main, ["--ckpt", str(digits_ckpt), "--onnx", str(tmp_path / "x.onnx")])
    assert exit_info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    helped = parity.build_parser().format_help()
    for flag in ("--ckpt", "--onnx", "--engine", "--batch-sizes", "--atol", "--tie-rtol", "--max-mismatch", "fp16"):
        assert flag in helped


def fake_engine(tmp_path: Path, onnx_path: Path, precision: str = "fp16") -> Path:
    """An engine file with a sidecar as export.trt writes it (the engine bytes are never parsed here)."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    sha = sha256_file(onnx_path)
    EngineSidecar(
        engine=engine.name,
        engine_sha256=sha256_file(engine),
        runtime="tensorrt",
        runtime_version="10.0.0",
        gpu=None,
        compute_capabilities=[],
        precision_plan={"precision": precision},
        profiles=[],
        builder={},
        plugins=[],
        onnx=onnx_path.name,
        onnx_sha256=sha,
        source_onnx=onnx_path.name,
        source_onnx_sha256=sha,
        idlevit=asdict(read_metadata(onnx_path)),
    ).write(sidecar_path(engine))
    return engine


def test_engine_from_another_graph_is_refused(digits_ckpt: Path, digits_onnx: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    model = onnx.load(digits_onnx)
    model.doc_string = "exported again"  # same model, other bytes: another sha256
    onnx.save(model, other)
    engine = fake_engine(tmp_path, other)
    with pytest.raises(ToolkitError, match="pass the ONNX the engine was built from") as refused:
        parity.main(["--ckpt", str(digits_ckpt), "--onnx", str(digits_onnx), "--engine", str(engine), *FAST])
    assert refused.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present, where TensorRT may be installed")
def test_engine_without_tensorrt_exits_3(digits_ckpt: Path, digits_onnx: Path, tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, digits_onnx)
    with pytest.raises(ToolkitError, match="TensorRT") as missing:
        parity.main(["--ckpt", str(digits_ckpt), "--onnx", str(digits_onnx), "--engine", str(engine), *FAST])
    assert missing.value.exit_code == EXIT_MISSING_DEPENDENCY


# ---- graphs with folded normalisation: pixels 0..255 in, the reference normalises them ------------------
@pytest.fixture(scope="module")
def digits_folded_onnx(digits_model: idlevit.IdleViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("folded") / "digits_tiny_indices_pixels.onnx"
    export_onnx(
        digits_model,
        path,
        with_indices=True,
        fold_normalization=True,
        verify_batch=0,
        progress=False,
        checkpoint="digits_tiny.pth",
    )
    return path


def test_folded_graph_passes_on_pixels(digits_ckpt: Path, digits_folded_onnx: Path, tmp_path: Path) -> None:
    code, report = run(digits_ckpt, digits_folded_onnx, tmp_path / "folded.json")
    assert code == EXIT_OK, report["failures"]
    sources = {group["kind"]: group["source"] for group in report["inputs"]}
    assert sources["random"].startswith("uniform [0.00, 255.00]")
    for row in report["results"]:
        assert row["logits"]["max_abs_error"] < 1e-4 and row["logits"]["top1_agreement"] == 1.0
        assert all(layer["agreement"] == 1.0 for layer in row["kept_tokens"].values())


def test_folded_inputs_are_the_plain_inputs_in_pixels(digits_folded_onnx: Path, digits_onnx: Path) -> None:
    """Real and random parity inputs, accuracy and engines.infer all feed a folded graph pixels 0..255."""
    folded, plain = read_metadata(digits_folded_onnx), read_metadata(digits_onnx)
    spec = InputSpec(num_images=4, random_batches=1, batch_sizes=(4,))
    (real_px, random_px), (real, _) = parity_inputs(folded, spec), parity_inputs(plain, spec)
    pixels = real_px.feeds[0]["images"]
    assert pixels.min() >= 0.0 and 200.0 < pixels.max() <= 255.0 + 1e-3
    as_plain = normalize(torch.from_numpy(pixels) / 255, plain.mean, plain.std).numpy()
    np.testing.assert_allclose(as_plain, real.feeds[0]["images"], atol=1e-5)
    assert random_px.feeds[0]["images"].min() >= 0.0 and random_px.feeds[0]["images"].max() <= 255.0
    transform = EvalTransform(folded.input_config)  # engines.infer's preprocessing
    image = Image.fromarray(np.full((40, 40, 3), (255, 128, 0), dtype=np.uint8))
    np.testing.assert_allclose(transform(image)[:, 16, 16], [255.0, 128.0, 0.0], atol=1e-3)


def test_folded_graph_scores_what_the_plain_graph_scores(
    digits_ckpt: Path, digits_folded_onnx: Path, digits_onnx: Path
) -> None:
    def top1(onnx_path: Path) -> dict[str, int]:
        rows, _, _ = measure_accuracy(onnx_path, digits_ckpt, limit=64, threads=1, ort="cpu", progress=False)
        return {row.backend: row.top1_correct for row in rows}

    folded, plain = top1(digits_folded_onnx), top1(digits_onnx)
    assert folded == plain and set(folded) == {"pytorch", "onnxruntime-cpu"} and folded["pytorch"] > 32


def test_wrong_fold_fails_parity(digits_ckpt: Path, digits_folded_onnx: Path, tmp_path: Path) -> None:
    """A folded graph whose first layer lost its 1/255 (weights 255 times too large) fails on the logits."""
    graph = gs.import_onnx(onnx.load(digits_folded_onnx))
    conv = next(node for node in graph.nodes if node.op == "Conv")
    weight = conv.inputs[1]
    weight.values = weight.values * 255.0
    broken = save_edited(graph, digits_folded_onnx, tmp_path / "unscaled.onnx")
    code, report = run(digits_ckpt, broken, tmp_path / "unscaled.json")
    assert code == EXIT_CHECK_FAILED and not report["passed"]
    assert any("logits differ" in failure for failure in report["failures"])
