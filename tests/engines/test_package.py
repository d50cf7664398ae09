"""engines.package: Triton entry, DeepStream nvinfer config and DEPLOY.md, checked against their specs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from engines.package import deepstream_preprocessing, main, read_deepstream_config, read_source, write_package
from export.exporter import export_onnx
from idlevit.errors import ToolkitError
from idlevit.metadata import read_metadata, write_metadata
from idlevit.sidecar import EngineSidecar, sidecar_path

from ..conftest import make_model

#: What nvinfer needs from a full-frame classifier's [property] group (DeepStream's Gst-nvinfer
#: config reference and its sample configs): the model, preprocessing, labels, batch, precision,
#: the classifier's mandatory keys (network-type, classifier-threshold) and its identity/mode.
NVINFER_CLASSIFIER_KEYS = {
    "net-scale-factor",
    "offsets",
    "model-color-format",
    "labelfile-path",
    "batch-size",
    "network-mode",
    "network-type",
    "classifier-threshold",
    "process-mode",
    "gie-unique-id",
}
NVINFER_MODEL_KEYS = {"onnx-file", "model-engine-file"}  # one of them


def triton_model_config():
    """Triton's own ``ModelConfig`` message (tritonclient ships the generated module; tests/run.sh installs it).

    Loaded by file path: ``tritonclient.grpc``'s package init needs grpcio, the message module does not.
    """
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (tests/run.sh installs it with --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_triton(path: Path):
    pb2 = triton_model_config()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


@pytest.fixture(scope="module")
def onnx_package(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("package") / "deploy"
    assert main([str(tiny_onnx), "--out", str(out), "--max-batch", "16"]) == 0
    return out


def test_triton_config_is_a_valid_model_config_with_the_graph_io(onnx_package: Path, tiny_onnx: Path) -> None:
    config, pb2 = parse_triton(onnx_package / "triton" / "tiny" / "config.pbtxt")
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)  # what was exported
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [("images", [3, 64, 64], pb2.TYPE_FP32)]
    want = [("logits", [10], pb2.TYPE_FP32)] + [
        (f"kept_indices_{layer}", [k + 1], pb2.TYPE_INT64) for layer, k in model.idle_plan.items()
    ]
    assert [(o.name, list(o.dims), o.data_type) for o in config.output] == want
    assert (onnx_package / "triton" / "tiny" / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert len((onnx_package / "triton" / "tiny" / "labels.txt").read_text().split()) == 10


def test_deepstream_config_has_every_key_nvinfer_needs(onnx_package: Path) -> None:
    config_path = onnx_package / "deepstream" / "config_infer_idlevit.txt"
    props = read_deepstream_config(config_path.read_text())
    assert NVINFER_CLASSIFIER_KEYS <= props.keys(), NVINFER_CLASSIFIER_KEYS - props.keys()
    assert len(NVINFER_MODEL_KEYS & props.keys()) == 1
    assert props["network-type"] == "1" and props["network-mode"] == "0"  # classifier, FP32
    assert "custom-lib-path" not in props  # no plugin in this graph
    model = (config_path.parent / props["onnx-file"]).resolve()
    assert model == (onnx_package / "triton" / "tiny" / "1" / "model.onnx").resolve()  # relative to the config
    labels = (config_path.parent / props["labelfile-path"]).read_text().strip().split(";")
    assert labels == [f"class_{i}" for i in range(10)]


def test_deepstream_preprocessing_matches_timm_normalisation(tiny_onnx: Path) -> None:
    """nvinfer's y = scale * (x - offset) against timm's (x/255 - mean) / std, on 0..255 pixels."""
    meta = read_metadata(tiny_onnx)
    scale, offsets, error = deepstream_preprocessing(meta)
    pixels = np.arange(256, dtype=np.float64)
    for c in range(3):
        timm = (pixels / 255 - meta.mean[c]) / meta.std[c]
        nvinfer = scale * (pixels - offsets[c])
        assert np.allclose(nvinfer, timm * meta.std[c] / np.mean(meta.std), atol=1e-9)
        assert np.max(np.abs(nvinfer - timm)) <= error * np.max(np.abs(timm)) + 1e-9
    assert error < 0.015  # ImageNet's std differs by at most 1.3% from its mean


def test_deploy_md_gives_the_jetson_rebuild_command(onnx_package: Path) -> None:
    text = (onnx_package / "DEPLOY.md").read_text()
    assert "trtexec --onnx=tiny.onnx" in text
    assert "--minShapes=images:1x3x64x64" in text and "--maxShapes=images:16x3x64x64" in text


def test_fp16_package_uses_network_mode_2_and_the_builder_flag_path(tiny_onnx: Path, tmp_path: Path) -> None:
    source = read_source(tiny_onnx, precision="fp16")
    write_package(source, tmp_path)
    props = read_deepstream_config((tmp_path / "deepstream" / "config_infer_idlevit.txt").read_text())
    assert props["network-mode"] == "2"
    deploy = (tmp_path / "DEPLOY.md").read_text()
    assert "--fp16 --precisionConstraints=obey --layerPrecisions=" in deploy
    top_k = next(n.name for n in onnx.load(str(tiny_onnx), load_external_data=False).graph.node if n.op_type == "TopK")
    assert f"{top_k}:fp32" in deploy  # the scoring path stays FP32


def fake_engine(folder: Path, onnx_path: Path, precision: str, plugins: list[str]) -> Path:
    """An engine file with the sidecar ``python -m export.trt`` writes (no TensorRT needed to package)."""
    engine = folder / "tiny_fp16.engine"
    engine.write_bytes(b"serialized engine")
    for name in plugins:
        (folder / name).write_bytes(b"\x7fELF")
    EngineSidecar(
        engine=engine.name,
        engine_sha256="",
        runtime="tensorrt",
        runtime_version="10.3.0",
        gpu={"name": "Orin", "compute_capability": "8.7"},
        compute_capabilities=["8.7"],
        precision_plan={"precision": precision},
        profiles=[{"images": {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [8, 3, 64, 64]}}],
        builder={},
        plugins=[{"file": name, "sha256": ""} for name in plugins],
        onnx=str(onnx_path),
        onnx_sha256="",
        source_onnx=str(onnx_path),
        source_onnx_sha256="",
        idlevit=json.loads(json.dumps(read_metadata(onnx_path).__dict__)),
    ).write(sidecar_path(engine))
    return engine


def test_engine_package_is_a_tensorrt_plan_with_the_plugin(tiny_onnx: Path, tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "fp16", ["libidlevit_plugins.so"])
    out = tmp_path / "deploy"
    assert main([str(engine), "--out", str(out), "--plugin-lib", "/opt/idlevit/libidlevit_plugins_static.so"]) == 0
    config, _ = parse_triton(out / "triton" / "tiny_fp16" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert (out / "triton" / "tiny_fp16" / "1" / "model.plan").read_bytes() == b"serialized engine"
    props = read_deepstream_config((out / "deepstream" / "config_infer_idlevit.txt").read_text())
    assert props["network-mode"] == "2" and props["model-engine-file"].endswith("model.plan")
    assert props["custom-lib-path"] == "/opt/idlevit/libidlevit_plugins_static.so"
    assert (out / tiny_onnx.name).is_file()  # the ONNX travels along for the rebuild on the device


def test_plugin_onnx_cannot_go_to_tritons_onnxruntime_backend(tiny_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    meta = read_metadata(model)
    meta.plugin = "idlevit::IdleScatter"
    write_metadata(model, meta)
    onnx.save(model, str(tmp_path / "plugin.onnx"))
    with pytest.raises(ToolkitError, match="ONNX Runtime backend"):
        main([str(tmp_path / "plugin.onnx"), "--out", str(tmp_path / "deploy")])


def test_static_batch_graph_gets_max_batch_size_0_and_full_dims(tmp_path: Path) -> None:
    model = make_model("deit_tiny", img_size=32, patch_size=8, num_classes=5)
    export_onnx(model, tmp_path / "static.onnx", batch=2, verify_batch=0, progress=False)
    write_package(read_source(tmp_path / "static.onnx"), tmp_path / "deploy")
    config, _ = parse_triton(tmp_path / "deploy" / "triton" / "static" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, 32, 32] and list(config.output[0].dims) == [2, 5]


def test_labels_must_match_the_class_count(tiny_onnx: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(ToolkitError, match="2 names but the model has 10"):
        main([str(tiny_onnx), "--out", str(tmp_path / "deploy"), "--labels", str(tmp_path / "labels.txt")])
