"""engines.infer: metadata-driven preprocessing, top-5 output, and the engine-to-ONNX fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torchvision import transforms

from engines.classify import load_images, open_backend
from engines.compatibility import current_gpu
from engines.infer import main
from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata
from idlevit.sidecar import EngineSidecar, sidecar_path

from ..conftest import make_model


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / "wide.jpg", folder / "gray.png"]
    Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(paths[0])
    Image.fromarray((rng.random((70, 70)) * 255).astype(np.uint8)).save(paths[1])
    return paths


def test_preprocessing_is_the_eval_transform_of_the_metadata(tiny_onnx: Path, images: list[Path]) -> None:
    """Resize the short side to size / crop_pct, center crop, normalise: written out with torchvision."""
    meta = read_metadata(tiny_onnx)
    by_hand = transforms.Compose(
        [
            transforms.Resize(int(meta.img_size / meta.crop_pct), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(meta.img_size),
            transforms.ToTensor(),
            transforms.Normalize(meta.mean, meta.std),
        ]
    )
    want = torch.stack([by_hand(Image.open(p).convert("RGB")) for p in images]).numpy()
    np.testing.assert_allclose(load_images(images, meta), want, atol=1e-5)


def test_top5_matches_the_pytorch_reference(
    tiny_onnx: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(p) for p in images] + ["--onnx", str(tiny_onnx), "--batch-size", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)  # the exported model
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(load_images(images, read_metadata(tiny_onnx)))), -1)
    for i, path in enumerate(images):
        block = out[out.index(str(path)) + 1 : out.index(str(path)) + 6]
        assert [line.split()[0] for line in block] == ["1.", "2.", "3.", "4.", "5."]
        assert int(block[0].split()[2]) == int(probs[i].argmax())
        assert float(block[0].split()[-1].rstrip("%")) == pytest.approx(100 * float(probs[i].max()), abs=0.01)


def _fake_engine(engine: Path, graph: Path, source: Path, precision: str) -> None:
    """A stand-in engine file with a sidecar that describes it and ``graph`` (the one it was "built" from)."""
    engine.write_bytes(b"serialized engine")
    EngineSidecar(
        engine=engine.name,
        engine_sha256=sha256_file(engine),
        runtime="tensorrt",
        runtime_version="10.3.0",
        gpu=None,
        compute_capabilities=[],
        precision_plan={"precision": precision},
        profiles=[],
        builder={},
        plugins=[],
        onnx=str(graph),
        onnx_sha256=sha256_file(graph) if graph.is_file() else "",
        source_onnx=str(source),
        source_onnx_sha256="",
        idlevit=json.loads(json.dumps(read_metadata(graph if graph.is_file() else source).__dict__)),
    ).write(sidecar_path(engine))


@pytest.mark.skipif(current_gpu() is not None, reason="with a GPU the engine path is tried for real")
def test_engine_that_cannot_run_falls_back_to_the_graph_it_was_built_from(
    tiny_onnx: Path, tiny_mixed: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An FP16 engine falls back to its mixed-precision graph (the sidecar's ``onnx``), not to the FP32 source."""
    engine = tmp_path / "tiny_fp16.engine"
    # the FP32 source is not needed (nor here)
    _fake_engine(engine, tiny_mixed, tmp_path / "moved_away.onnx", "fp16")
    runner, meta, backend, fallback = open_backend(engine)
    assert runner.name == "onnxruntime-cpu" and meta.num_classes == 10 and meta.precision == "fp16"
    assert backend == f"ONNX Runtime (CPU) on {tiny_mixed.name}"
    assert fallback is not None and "needs a CUDA GPU" in fallback and str(tiny_mixed) in fallback

    assert main([str(images[0]), "--engine", str(engine)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"note: {fallback}"
    assert out[1].startswith(f"ONNX Runtime (CPU) on {tiny_mixed.name}: deit_tiny IdleViT, 64 px")
    assert out[2] == str(images[0]) and out[3].split()[0] == "1."


@pytest.mark.skipif(current_gpu() is not None, reason="with a GPU the engine path is tried for real")
def test_engine_without_its_graph_exits_3(tiny_onnx: Path, tmp_path: Path) -> None:
    engine = tmp_path / "lonely.engine"
    _fake_engine(engine, tmp_path / "gone.onnx", tiny_onnx, "fp32")
    with pytest.raises(MissingDependencyError, match="gone.onnx.*is not here") as missing:
        open_backend(engine)
    assert missing.value.exit_code == 3


@pytest.mark.skipif(current_gpu() is not None, reason="with a GPU the engine path is tried for real")
def test_fallback_refuses_a_replaced_graph_or_engine(tiny_onnx: Path, images: list[Path], tmp_path: Path) -> None:
    """Only the graph the sidecar describes stands in for the engine: another graph under its name, or an
    engine file that is not the one built, is refused in one line (exit 2) before anything runs."""
    graph = tmp_path / "demo.onnx"
    shutil.copy(tiny_onnx, graph)
    engine = tmp_path / "demo_fp32.engine"
    _fake_engine(engine, graph, graph, "fp32")
    assert open_backend(engine)[2] == "ONNX Runtime (CPU) on demo.onnx"
    replaced = onnx.load(graph)
    replaced.doc_string = "another graph under the same name"
    onnx.save(replaced, graph)
    with pytest.raises(ToolkitError, match="is not the graph demo_fp32.engine was built from") as refused:
        main([str(images[0]), "--engine", str(engine)])
    assert refused.value.exit_code == 2 and not isinstance(refused.value, MissingDependencyError)
    shutil.copy(tiny_onnx, graph)
    engine.write_bytes(b"another engine")
    with pytest.raises(ToolkitError, match="does not match the sha256 its sidecar records") as refused:
        open_backend(engine)
    assert refused.value.exit_code == 2


def test_missing_image_is_a_one_line_error(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="does not exist"):
        main([str(tmp_path / "missing.jpg"), "--onnx", str(tiny_onnx)])
