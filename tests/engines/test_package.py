"""engines.package: Triton entry, DeepStream config and DEPLOY.md per kind of model, checked against their specs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from engines import tensorrt
from engines.builder import BuildOptions, build_engine
from engines.deploy.deepstream import preprocessing, read_deepstream_config
from engines.deploy.source import read_source
from engines.deploy.writer import write_package
from engines.package import main
from engines.plan import FP16, FP32
from engines.precision import plan_precision
from engines.target import Target
from export.exporter import export_onnx
from idlevit.errors import ToolkitError
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata, write_metadata
from idlevit.sidecar import EngineSidecar, sidecar_path

from ..conftest import make_model, run_module
from .conftest import requires_rtx
from .deploy_support import assert_deploy_paths_exist, fake_engine, parse_triton, run

ROOT = Path(__file__).resolve().parents[2]
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
DS_CONFIG = Path("deepstream") / "config_infer_idlevit.txt"


def ds_props(package: Path) -> dict[str, str]:
    return read_deepstream_config((package / DS_CONFIG).read_text())


def save_engine_target(package: Path) -> str:
    """The engine path the guide's trtexec line writes."""
    found = re.findall(r"--saveEngine=(\S+)", (package / "DEPLOY.md").read_text())
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def onnx_package(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("package") / "deploy"
    assert main([str(tiny_onnx), "--out", str(out), "--max-batch", "16"]) == 0
    return out


@pytest.fixture(scope="module")
def fp16_package(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("package") / "deploy"
    assert main([str(tiny_onnx), "--out", str(out), "--precision", "fp16"]) == 0
    return out


@pytest.fixture(scope="module")
def engine_package(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    engine = fake_engine(folder, tiny_onnx, "fp16", ("libidlevit_plugins.so",))
    out = folder / "deploy"
    assert main([str(engine), "--out", str(out), "--plugin-lib", "/opt/idlevit/libidlevit_plugins_static.so"]) == 0
    return out


@pytest.fixture(scope="module")
def rtx_engine(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real TensorRT-RTX engine (FP32), built on this CPU."""
    if not tensorrt.is_installed("tensorrt-rtx"):
        pytest.skip("TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")
    tensorrt.use_runtime("tensorrt-rtx")
    plan = plan_precision(onnx.load(tiny_onnx), FP32, Target.parse("tensorrt-rtx"))
    engine = tmp_path_factory.mktemp("rtx") / "tiny_fp32.engine"
    build_engine(tiny_onnx, tiny_onnx, plan, BuildOptions(1, 2, 4, optimization_level=0), engine, echo=print)
    return engine


@pytest.fixture(scope="module")
def rtx_package(rtx_engine: Path) -> Path:
    out = rtx_engine.parent / "deploy"
    assert main([str(rtx_engine), "--out", str(out)]) == 0
    return out


# ---- ONNX --------------------------------------------------------------------------------------
def test_triton_config_is_a_valid_model_config_with_the_graph_io(onnx_package: Path, tiny_onnx: Path) -> None:
    config, pb2 = parse_triton(onnx_package / "triton" / "tiny" / "config.pbtxt")
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)  # what was exported
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [8]
    assert [(i.name, list(i.dims), i.data_type, i.format) for i in config.input] == [
        ("images", [3, 64, 64], pb2.TYPE_FP32, pb2.ModelInput.FORMAT_NCHW)
    ]
    want = [("logits", [10], pb2.TYPE_FP32)] + [
        (f"kept_indices_{layer}", [k + 1], pb2.TYPE_INT64) for layer, k in model.idle_plan.items()
    ]
    assert [(o.name, list(o.dims), o.data_type) for o in config.output] == want
    assert config.output[0].label_filename == "labels.txt"
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_AUTO)]
    assert (onnx_package / "triton" / "tiny" / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (onnx_package / "triton" / "tiny" / "labels.txt").read_text().split() == [f"class_{i}" for i in range(10)]


def test_deepstream_config_has_every_key_nvinfer_needs(onnx_package: Path) -> None:
    props = ds_props(onnx_package)
    assert NVINFER_CLASSIFIER_KEYS <= props.keys(), NVINFER_CLASSIFIER_KEYS - props.keys()
    assert len(NVINFER_MODEL_KEYS & props.keys()) == 1
    assert props["network-type"] == "1" and props["network-mode"] == "0"  # classifier, FP32
    assert "custom-lib-path" not in props  # no plugin in this graph
    config_dir = (onnx_package / DS_CONFIG).parent
    model = (config_dir / props["onnx-file"]).resolve()  # FP32: nvinfer builds its engine from the ONNX
    assert model == (onnx_package / "triton" / "tiny" / "1" / "model.onnx").resolve()  # relative to the config
    labels = (config_dir / props["labelfile-path"]).read_text().strip().split(";")
    assert labels == [f"class_{i}" for i in range(10)]


def test_onnx_deploy_md_names_only_files_of_the_package(onnx_package: Path) -> None:
    named, created = assert_deploy_paths_exist(onnx_package)
    assert "triton/tiny/1/model.onnx" in named and "deepstream/config_infer_idlevit.txt" in named
    assert created == {"tiny_fp32.plan"}
    text = (onnx_package / "DEPLOY.md").read_text()
    assert "trtexec --onnx=triton/tiny/1/model.onnx" in text
    assert "--minShapes=images:1x3x64x64" in text and "--maxShapes=images:16x3x64x64" in text
    # the ONNX Runtime entry is never told to take an engine
    assert "model.plan" not in text and "onnxruntime_onnx" in text


def test_fp16_onnx_package_loads_the_pinned_engine_in_deepstream(fp16_package: Path, tiny_onnx: Path) -> None:
    props = ds_props(fp16_package)
    assert props["network-mode"] == "2" and "onnx-file" not in props  # nvinfer's own FP16 build pins nothing
    engine = save_engine_target(fp16_package)
    assert (fp16_package / DS_CONFIG).parent.joinpath(props["model-engine-file"]).resolve() == (
        fp16_package / engine
    ).resolve()
    deploy = (fp16_package / "DEPLOY.md").read_text()
    assert "--fp16 --precisionConstraints=obey --layerPrecisions=" in deploy
    top_k = next(n.name for n in onnx.load(str(tiny_onnx), load_external_data=False).graph.node if n.op_type == "TopK")
    assert f"{top_k}:fp32" in deploy  # the scoring path stays FP32
    config, _ = parse_triton(fp16_package / "triton" / "tiny" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx"  # Triton still runs the ONNX itself
    assert_deploy_paths_exist(fp16_package)


# ---- preprocessing -------------------------------------------------------------------------------
def test_deepstream_preprocessing_matches_timm_normalisation(tiny_onnx: Path) -> None:
    """nvinfer's y = scale * (x - offset) against timm's (x/255 - mean) / std, on 0..255 pixels."""
    meta = read_metadata(tiny_onnx)
    pre = preprocessing(meta)
    pixels = np.arange(256, dtype=np.float64)
    for c in range(3):
        timm = (pixels / 255 - meta.mean[c]) / meta.std[c]
        nvinfer = pre.net_scale_factor * (pixels - pre.offsets[c])
        assert np.allclose(nvinfer, timm * (1 + pre.channel_errors[c]), atol=1e-9)
    assert 0.013 < pre.max_error < 0.014  # ImageNet's std: 0.229 is 1.3% above the mean std 0.226
    assert not pre.exact and not pre.folded


def test_unequal_std_is_reported_with_its_error_and_the_fix(onnx_package: Path, tiny_onnx: Path, tmp_path, capsys):
    code, out, _ = run(["--onnx", str(tiny_onnx), "--out", str(tmp_path / "deploy")], capsys)
    assert code == 0
    for text in (out, (tmp_path / "deploy" / "DEPLOY.md").read_text()):
        assert "off by up to 1.3% per channel" in text and "--fold-normalization" in text


def _with_meta(tiny_onnx: Path, path: Path, **fields) -> Path:
    model = onnx.load(str(tiny_onnx))
    meta = read_metadata(model)
    for key, value in fields.items():
        setattr(meta, key, value)
    write_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def test_folded_normalization_gets_an_exact_deepstream_input(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    folded = _with_meta(tiny_onnx, tmp_path / "folded.onnx", folded_normalization=True)
    code, out, _ = run(["--onnx", str(folded), "--out", str(tmp_path / "deploy")], capsys)
    assert code == 0 and "approximate" not in out
    props = ds_props(tmp_path / "deploy")
    assert float(props["net-scale-factor"]) == 1.0
    assert [float(o) for o in props["offsets"].split(";")] == [0.0, 0.0, 0.0]
    deploy = (tmp_path / "deploy" / "DEPLOY.md").read_text()
    assert "exact" in deploy and "0..255" in deploy and "off by" not in deploy and "0.0%" not in deploy


def test_equal_stds_are_exact_without_a_zero_percent_claim(tiny_onnx: Path, tmp_path: Path) -> None:
    same = _with_meta(tiny_onnx, tmp_path / "gray.onnx", std=[0.3768] * 3, mean=[0.3062] * 3)
    write_package(read_source(same), tmp_path / "deploy")
    props = ds_props(tmp_path / "deploy")
    assert float(props["net-scale-factor"]) == pytest.approx(1 / (255 * 0.3768))
    deploy = (tmp_path / "deploy" / "DEPLOY.md").read_text()
    assert "DeepStream input is exact" in deploy and "%" not in deploy


# ---- engines --------------------------------------------------------------------------------------
def test_tensorrt_engine_package_is_a_tensorrt_plan_with_the_plugin(engine_package: Path, tiny_onnx: Path) -> None:
    config, pb2 = parse_triton(engine_package / "triton" / "tiny_fp16" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert [g.kind for g in config.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
    plan = engine_package / "triton" / "tiny_fp16" / "1" / "model.plan"
    assert plan.read_bytes() == b"serialized engine fp16"
    props = ds_props(engine_package)
    assert props["network-mode"] == "2"
    assert ((engine_package / DS_CONFIG).parent / props["model-engine-file"]).resolve() == plan.resolve()
    assert props["custom-lib-path"] == "/opt/idlevit/libidlevit_plugins_static.so"
    assert (engine_package / tiny_onnx.name).read_bytes() == tiny_onnx.read_bytes()  # for device rebuilds
    assert (engine_package / "plugins" / "CMakeLists.txt").is_file()  # DEPLOY.md builds the plugin from these


def test_tensorrt_engine_deploy_md_rebuilds_into_the_file_both_configs_read(engine_package: Path) -> None:
    named, created = assert_deploy_paths_exist(engine_package)
    assert save_engine_target(engine_package) == "triton/tiny_fp16/1/model.plan"
    text = (engine_package / "DEPLOY.md").read_text()
    assert "TensorRT 10.3.0 on Orin (compute capability 8.7)" in text
    assert "--dynamicPlugins=build/libidlevit_plugins.so" in text
    assert "plugins=$PWD/build/libidlevit_plugins_static.so" in text  # Triton dlopens the self-registering one
    assert "cmake -S plugins -B build" in text and "plugins/README.md" in named


def test_rtx_engine_package_holds_what_runs_it_and_says_what_the_others_need(
    rtx_package: Path, rtx_engine: Path, tiny_onnx: Path
) -> None:
    files = sorted(p.relative_to(rtx_package).as_posix() for p in rtx_package.rglob("*") if p.is_file())
    assert files == sorted(
        [".idlevit-package.json", "DEPLOY.md", "labels.txt", "tiny.onnx", rtx_engine.name, rtx_engine.name + ".json"]
    )  # no Triton entry and no DeepStream config: neither can load a TensorRT-RTX engine
    assert (rtx_package / rtx_engine.name).read_bytes() == rtx_engine.read_bytes()
    assert (rtx_package / "tiny.onnx").read_bytes() == tiny_onnx.read_bytes()
    text = (rtx_package / "DEPLOY.md").read_text()
    assert f"python -m engines.infer --engine {rtx_engine.name}" in text
    assert "Triton (`tensorrt_plan`), DeepStream (nvinfer) and Jetson" in text and "trtexec --onnx=tiny.onnx" in text
    assert "--saveEngine=tiny_fp32.plan" in text and "fp32_fp32" not in text  # the engine's stem is the model's
    assert_deploy_paths_exist(rtx_package)
    for folder in {rtx_engine.parent, tiny_onnx.parent}:  # no path of the machine that built it travels along
        assert not [p.name for p in rtx_package.rglob("*") if p.is_file() and os.fsencode(folder) in p.read_bytes()]


def test_the_packaged_rtx_engine_still_opens_with_its_sidecar(rtx_package: Path, rtx_engine: Path) -> None:
    source = read_source(rtx_package / rtx_engine.name)  # the sidecar's engine sha256 matches the copied bytes
    assert source.kind == "tensorrt-rtx" and source.model.read_bytes() == rtx_engine.read_bytes()


def test_plugin_onnx_cannot_go_to_tritons_onnxruntime_backend(tiny_onnx: Path, tmp_path: Path) -> None:
    plugin = _with_meta(tiny_onnx, tmp_path / "plugin.onnx", plugin="idlevit::IdleScatter")
    with pytest.raises(ToolkitError, match="ONNX Runtime backend"):
        main([str(plugin), "--out", str(tmp_path / "deploy")])
    assert not (tmp_path / "deploy").exists()


def test_static_batch_graph_gets_max_batch_size_0_and_full_dims(tmp_path: Path) -> None:
    model = make_model("deit_tiny", img_size=32, patch_size=8, num_classes=5)
    export_onnx(model, tmp_path / "static.onnx", batch=2, verify_batch=0, progress=False)
    write_package(read_source(tmp_path / "static.onnx"), tmp_path / "deploy", ds_batch_size=2)
    config, _ = parse_triton(tmp_path / "deploy" / "triton" / "static" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, 32, 32] and list(config.output[0].dims) == [2, 5]
    assert not config.input[0].format  # FORMAT_NCHW would need three dims beside the batch axis
    assert "--minShapes=images:2x3x32x32" in (tmp_path / "deploy" / "DEPLOY.md").read_text()


# ---- network-mode per precision ------------------------------------------------------------------
def test_int8_engine_gets_network_mode_1(tiny_onnx: Path, tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "int8", name="tiny_int8.engine")
    main([str(engine), "--out", str(tmp_path / "deploy")])
    assert ds_props(tmp_path / "deploy")["network-mode"] == "1"
    assert_deploy_paths_exist(tmp_path / "deploy")


def test_fp8_engine_gets_no_deepstream_config_and_says_why(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "fp8", name="tiny_fp8.engine")
    code, out, _ = run(["--engine", str(engine), "--out", str(tmp_path / "deploy")], capsys)
    assert code == 0 and not (tmp_path / "deploy" / "deepstream").exists()
    config, _ = parse_triton(tmp_path / "deploy" / "triton" / "tiny_fp8" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    for text in (out, (tmp_path / "deploy" / "DEPLOY.md").read_text()):
        assert "no FP8 network-mode" in text
    assert_deploy_paths_exist(tmp_path / "deploy")


# ---- default model and command line ----------------------------------------------------------------
def test_no_model_packages_the_last_export(tiny_onnx: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from idlevit.state import record_last_export

    monkeypatch.setenv("IDLEVIT_STATE_DIR", str(tmp_path / "state"))
    code, _, err = run(["--out", str(tmp_path / "none")], capsys)
    assert code == 2 and "python -m export.onnx" in err and not (tmp_path / "none").exists()
    model = tmp_path / "exported.onnx"
    shutil.copy(tiny_onnx, model)
    record_last_export(model)
    code, out, _ = run([], capsys)
    assert code == 0 and (tmp_path / "exported_deploy" / "triton" / "exported" / "1" / "model.onnx").is_file()
    assert "onnx package of exported.onnx" in out


def test_help_loads_neither_onnx_nor_torch() -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['engines.package', '--help']\n"
        "try:\n    runpy.run_module('engines.package', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('onnx', 'torch', 'tensorrt_rtx', 'google.protobuf') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "--engine" in result.stdout and "--onnx" in result.stdout and "--force" in result.stdout


def test_the_engine_source_onnx_is_named_by_onnx(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    engine = fake_engine(tmp_path, tiny_onnx, "fp16")
    moved = tmp_path / "elsewhere.onnx"
    shutil.copy(tiny_onnx, moved)
    sidecar = sidecar_path(engine)
    sidecar.write_text(sidecar.read_text().replace(str(tiny_onnx), "/gone/tiny.onnx"))
    code, _, err = run(["--engine", str(engine), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "pass it with --onnx" in err
    code, _, _ = run(["--engine", str(engine), "--onnx", str(moved), "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and (tmp_path / "b" / "elsewhere.onnx").read_bytes() == tiny_onnx.read_bytes()
    code, _, err = run([str(engine), "--source-onnx", str(moved), "--out", str(tmp_path / "c")], capsys)
    assert code == 0 and err.count("warning:") == 2 and "write --engine" in err and "write --onnx" in err


def test_labels_file_names_the_classes(tiny_onnx: Path, tmp_path: Path) -> None:
    names = [f"chiffre {i} (é)" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n\n", encoding="utf-8")
    main([str(tiny_onnx), "--out", str(tmp_path / "deploy"), "--labels", str(tmp_path / "labels.txt")])
    triton_labels = tmp_path / "deploy" / "triton" / "tiny" / "labels.txt"
    assert triton_labels.read_text(encoding="utf-8").splitlines() == names
    assert (tmp_path / "deploy" / "deepstream" / "labels.txt").read_text(encoding="utf-8") == ";".join(names) + "\n"
    assert "placeholders" not in (tmp_path / "deploy" / "DEPLOY.md").read_text()


def test_sha256_of_the_copied_model_is_in_the_manifest(onnx_package: Path, tiny_onnx: Path) -> None:
    import json

    files = json.loads((onnx_package / ".idlevit-package.json").read_text())["files"]
    assert files["triton/tiny/1/model.onnx"] == sha256_file(tiny_onnx)
    assert set(files) == {p.relative_to(onnx_package).as_posix() for p in onnx_package.rglob("*") if p.is_file()} - {
        ".idlevit-package.json"
    }


# ---- a package is self-contained: engines.infer runs from it after the build folder is gone ------------------


@requires_rtx
def test_an_fp16_package_runs_its_fallback_after_the_build_folder_is_gone(
    tiny_onnx: Path, tiny_mixed: Path, tmp_path: Path, capsys
) -> None:
    """An FP16 TensorRT-RTX engine (built here, from its mixed-precision graph), packaged, then its build folder
    deleted: ``engines.infer --engine pkg/<engine>`` from another folder cannot run the engine on this CPU and runs
    the graph it was built from, which the package carries and its sidecar names relative to itself."""
    build = tmp_path / "build"
    build.mkdir()
    source, mixed = build / "tiny.onnx", build / "tiny_fp16_mixed.onnx"
    shutil.copy(tiny_onnx, source)
    shutil.copy(tiny_mixed, mixed)
    tensorrt.use_runtime("tensorrt-rtx")
    plan = plan_precision(onnx.load(source), FP16, Target.parse("tensorrt-rtx"))
    engine = build / "tiny_fp16.engine"
    build_engine(mixed, source, plan, BuildOptions(1, 2, 4, optimization_level=0), engine, echo=lambda _: None)
    package = tmp_path / "pkg"
    code, out, err = run(["--engine", str(engine), "--out", str(package)], capsys)
    assert code == 0, err
    shutil.rmtree(build)

    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert files == sorted(
        [".idlevit-package.json", "DEPLOY.md", "labels.txt", "tiny.onnx", "tiny_fp16_mixed.onnx", engine.name]
        + [engine.name + ".json"]
    )
    sidecar = EngineSidecar.read(package / (engine.name + ".json"))
    assert (sidecar.onnx, sidecar.source_onnx) == ("tiny_fp16_mixed.onnx", "tiny.onnx")  # relative to the sidecar
    assert sidecar.onnx_sha256 == sha256_file(package / "tiny_fp16_mixed.onnx") == sha256_file(tiny_mixed)
    assert "runs\n`tiny_fp16_mixed.onnx`, the graph the engine was built from" in (package / "DEPLOY.md").read_text()
    assert_deploy_paths_exist(package)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = elsewhere / "x.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
    fallback = run_module("engines.infer", "--engine", f"../pkg/{engine.name}", "x.png", cwd=elsewhere)
    direct = run_module("engines.infer", "--onnx", "../pkg/tiny_fp16_mixed.onnx", "x.png", cwd=elsewhere)
    assert fallback.returncode == 0 and direct.returncode == 0, fallback.stderr + direct.stderr
    lines = fallback.stdout.splitlines()
    assert lines[0].startswith("note: ") and "tiny_fp16_mixed.onnx" in lines[0] and "ONNX Runtime" in lines[0]
    assert lines[-6:] == direct.stdout.splitlines()[-6:]  # the image and its top-5: the packaged graph's own
