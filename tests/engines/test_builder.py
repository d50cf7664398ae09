"""Real TensorRT-RTX builds on the CPU (ahead of time) through Polygraphy, parser errors, and the runtime's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from engines import tensorrt
from engines.builder import BuildOptions, build_engine, command_line
from engines.plan import FP16, FP32, Method, PrecisionPlan
from engines.precision import plan_precision, scoring_path_nodes
from engines.target import Target
from idlevit.errors import BuildError, MissingDependencyError, ToolkitError
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata
from idlevit.sidecar import sidecar_path

from .conftest import requires_rtx

pytestmark = requires_rtx
RTX = Target.parse("tensorrt-rtx")
FAST = BuildOptions(min_batch=1, opt_batch=2, max_batch=4, optimization_level=0)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_engine(tiny_mixed: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tensorrt.use_runtime("tensorrt-rtx")
    plan = plan_precision(onnx.load(tiny_onnx), FP16, RTX)
    engine = tmp_path_factory.mktemp("rtx") / "tiny_fp16.engine"
    build_engine(tiny_mixed, tiny_onnx, plan, FAST, engine, echo=print)
    return engine


def test_mixed_engine_and_sidecar(tiny_engine: Path, tiny_mixed: Path, tiny_onnx: Path) -> None:
    assert sorted(p.name for p in tiny_engine.parent.iterdir()) == [tiny_engine.name, tiny_engine.name + ".json"]
    sidecar = json.loads(sidecar_path(tiny_engine).read_text())
    assert sidecar["engine_sha256"] == sha256_file(tiny_engine)
    assert sidecar["runtime"] == "tensorrt-rtx" and sidecar["runtime_version"].startswith("1.")
    assert sidecar["compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0"]
    assert sidecar["precision_plan"]["method"] == "mixed-onnx" and sidecar["builder"]["strongly_typed"]
    assert sidecar["precision_plan"]["fp32_nodes"] == scoring_path_nodes(onnx.load(tiny_onnx))
    assert sidecar["profiles"] == [{"images": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}}]
    assert sidecar["onnx_sha256"] == sha256_file(tiny_mixed) and sidecar["source_onnx_sha256"] == sha256_file(tiny_onnx)
    meta = read_metadata(tiny_onnx)
    assert (
        sidecar["idlevit"]["idle_layers"] == meta.idle_layers and sidecar["idlevit"]["keep_tokens"] == meta.keep_tokens
    )
    assert sidecar["outputs"][0] == "logits" and len(sidecar["outputs"]) == 1 + len(meta.idle_layers)
    assert sidecar["builder"]["optimization_level"] == 0 and sidecar["builder"]["layers_pinned_fp32"] == 0


def test_config_has_the_builder_settings(tiny_onnx: Path) -> None:
    """Polygraphy's config loaders, called as the build calls them: what TensorRT-RTX is told."""
    tensorrt.use_runtime("tensorrt-rtx")
    trt = tensorrt.trt
    builder, network, _ = tensorrt.parse_onnx(tiny_onnx, strongly_typed=True)
    plan = plan_precision(onnx.load(tiny_onnx), FP32, RTX)
    options = BuildOptions(1, 2, 4, workspace_mib=256, optimization_level=2, compute_capabilities=["8.6", "12.0"])
    profile = options.profile(read_metadata(tiny_onnx))
    monitor = tensorrt.progress_monitor(lambda: False)
    config = tensorrt._create_config(plan, options, profile, monitor)(builder, network)
    assert not config.get_flag(trt.BuilderFlag.TF32)  # TensorRT-RTX turns it on by default
    assert config.profiling_verbosity == trt.ProfilingVerbosity.LAYER_NAMES_ONLY
    assert config.builder_optimization_level == 2 and config.num_optimization_profiles == 1
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 256 << 20
    capabilities = [config.get_compute_capability(i) for i in range(config.num_compute_capabilities)]
    assert capabilities == [trt.ComputeCapability.SM86, trt.ComputeCapability.SM120]
    assert config.progress_monitor is not None
    for wrong in ("9.0", "8"):
        options.compute_capabilities = [wrong]
        with pytest.raises(ToolkitError, match=r"--compute-capabilities takes MAJOR\.MINOR among .*8\.6"):
            tensorrt._create_config(plan, options, profile)


def test_one_tensorrt_per_process(tmp_path: Path) -> None:
    """Polygraphy's TensorRT backend, once loaded for tensorrt, cannot switch to TensorRT-RTX in that process."""
    code = (
        "import polygraphy.backend.trt\n"
        "from engines.tensorrt import use_runtime\n"
        "from idlevit.errors import ToolkitError\n"
        "try:\n    use_runtime('tensorrt-rtx')\nexcept ToolkitError as err:\n    print(err)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "POLYGRAPHY_USE_TENSORRT_RTX": "0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "already loaded for tensorrt" in done.stdout and "one TensorRT per process" in done.stdout


def test_strong_typing_violation_fails_with_the_parser_message(tiny_mixed: Path, tmp_path: Path) -> None:
    """An Add fed Half and Float (a Cast planted on one input) is refused by the strongly typed parser."""
    graph = gs.import_onnx(onnx.load(tiny_mixed))
    add = next(
        n
        for n in graph.nodes
        if n.op == "Add" and all(isinstance(t, gs.Variable) and t.dtype == np.float16 for t in n.inputs)
    )
    widened = gs.Variable(add.inputs[1].name + "_planted_fp32", dtype=np.float32)
    graph.nodes.append(gs.Node("Cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[add.inputs[1]], outputs=[widened]))
    add.inputs[1] = widened
    bad = tmp_path / "planted.onnx"
    model = gs.export_onnx(graph.toposort())
    model.metadata_props.extend(onnx.load(tiny_mixed, load_external_data=False).metadata_props)
    onnx.save(model, bad)
    tensorrt.use_runtime("tensorrt-rtx")
    shown: list[str] = []
    with pytest.raises(BuildError, match="same input types") as err:
        build_engine(bad, bad, plan_precision(model, FP32, RTX), FAST, tmp_path / "bad.engine", echo=shown.append)
    assert add.name in str(err.value) and "Half and Float" in str(err.value)
    assert any("parser error" in line and "Half and Float" in line for line in shown)
    assert not (tmp_path / "bad.engine").exists()


def test_parser_names_layers_after_scoring_nodes(tiny_onnx: Path) -> None:
    """Per-layer FP32 (TensorRT 10.x) finds its layers by node name; check that on the shared parser."""
    tensorrt.use_runtime("tensorrt-rtx")
    _, network, _ = tensorrt.parse_onnx(tiny_onnx, strongly_typed=True)
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    wanted = set(scoring_path_nodes(onnx.load(tiny_onnx)))
    matched = {tensorrt._layer_node(name, wanted) for name in names} - {None}
    compute = {n.name for n in onnx.load(tiny_onnx).graph.node if n.name in wanted and n.op_type not in ("Slice",)}
    assert compute <= matched, sorted(compute - matched)[:5]


def test_command_lines(tiny_onnx: Path) -> None:
    meta = read_metadata(tiny_onnx)
    jetson = PrecisionPlan(FP16, "tensorrt 10.3", False, Method.BUILDER_FLAGS, ["/TopK", "/Div"])
    line = command_line(Target.parse("tensorrt-10.3"), "m.onnx", "m.engine", jetson, FAST, meta)
    assert line.startswith("trtexec --onnx=m.onnx --saveEngine=m.engine --minShapes=images:1x3x64x64")
    assert "--fp16 --precisionConstraints=obey --layerPrecisions=/TopK:fp32,/Div:fp32" in line and "--noTF32" in line
    mixed = PrecisionPlan(FP16, "tensorrt-rtx 1.7", True, Method.MIXED_ONNX, ["/TopK"])
    rtx = command_line(RTX, "m.onnx", "m.engine", mixed, FAST, meta)
    assert rtx.startswith("tensorrt_rtx ") and "--fp16" not in rtx and "--maxShapes=images:4x3x64x64" in rtx


@pytest.mark.skipif(_cuda(), reason="checks the refusal on a machine without a CUDA GPU")
def test_runner_refuses_without_a_gpu(tiny_engine: Path) -> None:
    from engines.runtime import TrtEngineRunner, check_runnable

    with pytest.raises(MissingDependencyError, match="needs a CUDA GPU") as refused:
        check_runnable(tiny_engine)
    assert refused.value.exit_code == 3 and "tiny_fp16_mixed.onnx" in str(refused.value)
    with pytest.raises(MissingDependencyError, match="needs a CUDA GPU"):
        with TrtEngineRunner(tiny_engine):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_runner_matches_onnx_runtime_on_the_gpu(tiny_onnx: Path, tmp_path: Path) -> None:
    """Build for this GPU (TensorRT-RTX targets RTX-class compute capabilities only) and run it."""
    import torch

    from engines.ort import create_session
    from engines.runtime import TrtEngineRunner
    from validate.metrics import kept_token_agreement, top1_agreement

    major, minor = torch.cuda.get_device_capability()
    cc = f"{major}.{minor}"
    if cc not in ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1"):
        pytest.skip(f"TensorRT-RTX builds no engine for compute capability {cc} (an RTX-class GPU is needed)")
    tensorrt.use_runtime("tensorrt-rtx")
    engine = tmp_path / "tiny.engine"
    build_engine(
        tiny_onnx,
        tiny_onnx,
        plan_precision(onnx.load(tiny_onnx), FP32, RTX),
        BuildOptions(1, 4, 8, compute_capabilities=[cc]),
        engine,
    )
    images = np.random.default_rng(0).standard_normal((11, 3, 64, 64)).astype(np.float32)  # > max batch: chunks
    reference = create_session(tiny_onnx).run(None, {"images": images})
    with TrtEngineRunner(engine) as runner:
        got = runner.infer({"images": images})
    assert list(got) == ["logits", *(f"kept_indices_{layer}" for layer in read_metadata(tiny_onnx).idle_layers)]
    assert got["logits"].shape == (11, 10) and got["logits"].dtype == np.float32
    assert top1_agreement(reference[0], got["logits"]) == 1.0
    assert kept_token_agreement(reference[1], got[f"kept_indices_{read_metadata(tiny_onnx).idle_layers[0]}"]) > 0.99
