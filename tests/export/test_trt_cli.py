"""``python -m export.trt`` end to end: real TensorRT-RTX engines, the no-TensorRT path, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from engines import tensorrt
from engines.plan import DEFAULT_QUANT_PLAN
from export.exporter import export_onnx
from export.trt import build_parser, main
from idlevit.cli import run_cli
from idlevit.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_MISSING_DEPENDENCY, EXIT_SIGINT, EXIT_SIGTERM
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata, write_metadata
from idlevit.state import record_last_export

from ..conftest import make_model

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted((ROOT / "idlevit" / "assets").glob("*.pth"))
FAST = ["--opt-level", "0", "--min-batch", "1", "--opt-batch", "1", "--max-batch", "2"]
requires_rtx = pytest.mark.skipif(
    not tensorrt.is_installed("tensorrt-rtx"), reason="TensorRT-RTX is not installed (pip install -e '.[rtx]')"
)
#: A sitecustomize that makes both TensorRT modules unimportable, as on a machine without them.
HIDE_TENSORRT = """
import importlib.abc, importlib.machinery, sys
HIDDEN = ("tensorrt", "tensorrt_rtx", "tensorrt_bindings", "tensorrt_rtx_bindings", "tensorrt_libs")
class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
    def exec_module(self, module):
        pass
class _Hide(importlib.abc.MetaPathFinder):
    # a spec without an origin, whose import fails: what find_spec callers see for a missing module
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None
sys.meta_path.insert(0, _Hide())
"""


def run_trt(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export.trt", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trt-cli") / "tiny.onnx"
    export_onnx(
        make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10), path, verify_batch=0, progress=False
    )
    return path


@requires_rtx
@pytest.mark.parametrize("precision", ["--fp32", "--fp16"])
def test_deit_small_engines(deit_small_onnx: Path, precision: str, tmp_path: Path) -> None:
    engine = tmp_path / f"deit_small{precision[1:]}.engine"
    # the mixed-precision check is exercised on deit_tiny below; here it would only cost time
    result = run_trt("--onnx", str(deit_small_onnx), precision, "--out", str(engine), "--no-check", *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    sidecar = json.loads((tmp_path / (engine.name + ".json")).read_text())
    assert engine.stat().st_size > 10e6 and sidecar["engine_sha256"] == sha256_file(engine)
    assert sidecar["runtime"] == "tensorrt-rtx" and sidecar["idlevit"]["arch"] == "deit_small"
    assert sidecar["idlevit"]["idle_layers"] == list(range(3, 12)) and sidecar["source_onnx_sha256"] == sha256_file(
        deit_small_onnx
    )
    assert "equivalent command: tensorrt_rtx --onnx=" in result.stdout
    mixed = {"deit_small_fp16_mixed.onnx"} if precision == "--fp16" else set()
    assert {p.name for p in tmp_path.iterdir()} == {engine.name, engine.name + ".json", *mixed}  # no temporary file
    assert not [line for line in result.stdout.splitlines() if line.startswith("[")]  # Polygraphy's log stays quiet
    if precision == "--fp16":
        mixed = tmp_path / "deit_small_fp16_mixed.onnx"  # beside --out
        assert sidecar["precision_plan"]["method"] == "mixed-onnx" and sidecar["onnx"] == str(mixed)
        assert read_metadata(mixed).precision == "fp16"
        assert engine.stat().st_size < 0.7 * deit_small_onnx.stat().st_size  # FP16 weights
    else:
        assert sidecar["precision_plan"]["method"] == "fp32" and sidecar["onnx"] == str(deit_small_onnx)


@requires_rtx
@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGINT, EXIT_SIGINT, "interrupted (Ctrl-C)"), (signal.SIGTERM, EXIT_SIGTERM, "terminated (SIGTERM)")],
    ids=["sigint", "sigterm"],
)
def test_a_signal_during_the_build_cancels_it_and_leaves_nothing(
    deit_small_onnx: Path, tmp_path: Path, signum: int, code: int, said: str
) -> None:
    """Ctrl-C or SIGTERM a few seconds into a real build: the exit code, one stderr line, and no file at all."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "export.trt", "--onnx", str(deit_small_onnx), "--fp32", "--no-check", *FAST]
    build = subprocess.Popen(
        [*command, "--out", str(out / "deit_small.engine")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert build.stdout is not None
    shown = []
    for line in build.stdout:  # the command line is printed just before the build starts
        shown.append(line)
        if line.startswith("equivalent command:"):
            break
    time.sleep(3)
    assert build.poll() is None, "".join(shown)
    build.send_signal(signum)
    stdout, stderr = build.communicate(timeout=600)
    assert build.returncode == code, "".join(shown) + stdout + stderr
    assert stderr.splitlines() == [f"error: {said}"] and "Traceback" not in stdout
    assert not out.exists() or not list(out.iterdir())
    assert not [p.name for p in deit_small_onnx.parent.iterdir() if p.suffix in (".engine", ".json", ".tmp")]


@requires_rtx
@pytest.mark.skipif(not ASSETS, reason="the bundled demo checkpoint (idlevit/assets/*.pth) is not built yet")
def test_demo_engines(tmp_path: Path) -> None:
    onnx_path = tmp_path / "demo.onnx"
    export = subprocess.run(
        [sys.executable, "-m", "export.onnx", "--ckpt", "demo", "--out", str(onnx_path), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stderr
    for precision in ("--fp32", "--fp16"):
        engine = tmp_path / f"demo{precision[1:]}.engine"
        result = run_trt("--onnx", str(onnx_path), precision, "--out", str(engine), "--check-data", "digits", *FAST)
        assert result.returncode == 0, result.stdout + result.stderr
        assert engine.is_file() and (tmp_path / (engine.name + ".json")).is_file()


def test_without_tensorrt_writes_the_mixed_onnx_and_says_how_to_install(tiny: Path, tmp_path: Path) -> None:
    """TensorRT hidden: static checks and the mixed graph still run; exit 3 with one line; no engine."""
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_TENSORRT)
    state = tmp_path / "state"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "hide"), str(ROOT)]), "IDLEVIT_STATE_DIR": str(state)}
    record_last_export_in(state, tiny)
    result = run_trt("--fp16", "--check-batches", "1", env=env)  # no --onnx: the recorded export
    assert result.returncode == EXIT_MISSING_DEPENDENCY, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "pip install" in lines[0]
    assert (tiny.parent / "tiny_fp16_mixed.onnx").is_file()
    assert "equivalent command: trtexec --onnx=" in result.stdout and "--stronglyTyped" in result.stdout
    assert "fp16-emulated: top-1 agreement" in result.stdout
    assert "kept-token agreement per idle layer: L3" in result.stdout
    assert not list(tiny.parent.glob("*.engine"))


def record_last_export_in(state: Path, onnx_path: Path) -> None:
    """What `python -m export.onnx` records, written for a child process whose state folder is ``state``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IDLEVIT_STATE_DIR", str(state))
        record_last_export(onnx_path)


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's entry point as ``python -m export.trt`` runs it, without a new interpreter."""
    with pytest.raises(SystemExit) as done:
        run_cli(main, list(args))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_plugin_graph_is_refused_for_tensorrt_rtx(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(tiny)
    meta = read_metadata(model)
    meta.plugin = "idlevit::IdleScatter"
    write_metadata(model, meta)
    fused = tmp_path / "fused.onnx"
    onnx.save(model, fused)
    code, _, err = run_in_process(capsys, "--onnx", str(fused), "--runtime", "tensorrt-rtx", "--fp16")
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "TensorRT-RTX takes no plugins" in lines[0]
    assert not list(tmp_path.glob("*mixed*")) and not list(tmp_path.glob("*.engine"))


def test_an_unsorted_topk_fails_the_static_check(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(tiny)
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    next(a for a in topk.attribute if a.name == "sorted").i = 0
    planted = tmp_path / "unsorted.onnx"
    onnx.save(model, planted)
    code, out, err = run_in_process(
        capsys, "--onnx", str(planted), "--fp16", "--runtime", "tensorrt", "--trt-version", "10.3"
    )
    assert code == EXIT_CHECK_FAILED, out + err
    assert "topk-sorted" in out and err.count("\n") == 1 and "sorted=0" in err


def test_a_topk_k_its_metadata_does_not_record_is_refused(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """K = 4000 where the metadata records the graph's own k: not the graph the metadata describes (exit 2)."""
    from onnx import numpy_helper

    model = onnx.load(tiny)
    k = next(n for n in model.graph.node if n.op_type == "TopK").input[1]
    init = next(i for i in model.graph.initializer if i.name == k)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0 + 4000, k))
    planted = tmp_path / "k4000.onnx"
    onnx.save(model, planted)
    code, _, err = run_in_process(capsys, "--onnx", str(planted), "--fp16", "--runtime", "tensorrt")
    assert code == EXIT_BAD_INPUT, err
    assert err.count("\n") == 1 and "does not match its idlevit.* metadata" in err and "4000" in err
    assert not list(tmp_path.glob("*mixed*")) and not list(tmp_path.glob("*.engine"))


def test_help_documents_the_onnx_default() -> None:
    text = build_parser().format_help()
    assert "IDLEVIT_STATE_DIR" in text and "--max-batch" in text and "exit codes" in text


# ---- INT8 / FP8 -------------------------------------------------------------------------------
#: Fewer calibration and check images than the defaults (the whole train / test split): same graphs, less time.
QUICK_QUANT = ["--calib-images", "256", "--check-images", "128"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo, exported as `python -m export.onnx --ckpt demo` does."""
    import idlevit

    path = tmp_path_factory.mktemp("trt-quant") / "demo.onnx"
    export_onnx(idlevit.load_checkpoint("demo"), path, verify_batch=0, progress=False, checkpoint="demo")
    return path


@requires_rtx
@pytest.mark.skipif(not ASSETS, reason="the bundled demo checkpoint (idlevit/assets/*.pth) is not built yet")
def test_demo_int8_engine(demo: Path, tmp_path: Path) -> None:
    engine = tmp_path / "demo_int8.engine"
    result = run_trt("--onnx", str(demo), "--int8", "--out", str(engine), *QUICK_QUANT, *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    qdq = tmp_path / "demo_int8.onnx"  # beside --out
    assert f"wrote {qdq}: INT8 plan {DEFAULT_QUANT_PLAN}: 40 nodes quantized" in result.stdout
    assert "on 256 images of digits:train" in result.stdout
    assert "reduced: top-1 agreement" in result.stdout and "kept-token agreement per idle layer: L3" in result.stdout
    assert "PASS" in result.stdout and "fp16-emulated" not in result.stdout
    sidecar = json.loads((tmp_path / (engine.name + ".json")).read_text())
    plan = sidecar["precision_plan"]
    assert plan["precision"] == "int8" and plan["method"] == "qdq-onnx" and plan["strongly_typed"]
    assert plan["quantization"]["plan"] == DEFAULT_QUANT_PLAN and plan["quantization"]["calibration"] == "digits:train"
    assert plan["quantization"]["calibration_images"] == 256 and plan["quantization"]["calibration_method"] == "max"
    assert plan["quantization"]["excluded_nodes"] == plan["fp32_nodes"] and len(plan["fp32_nodes"]) == 90
    assert sidecar["onnx"] == str(qdq) and sidecar["onnx_sha256"] == sha256_file(qdq)
    assert sidecar["source_onnx_sha256"] == sha256_file(demo) and sidecar["builder"]["strongly_typed"]
    assert read_metadata(qdq).precision == "int8"
    assert read_metadata(qdq).extra["quantization"]["plan"] == DEFAULT_QUANT_PLAN


@requires_rtx
@pytest.mark.skipif(not ASSETS, reason="the bundled demo checkpoint (idlevit/assets/*.pth) is not built yet")
def test_demo_fp8_engine_for_ada(demo: Path, tmp_path: Path) -> None:
    engine = tmp_path / "demo_fp8.engine"
    args = ["--onnx", str(demo), "--fp8", "--out", str(engine), "--compute-capabilities", "8.9"]
    result = run_trt(*args, *QUICK_QUANT, *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    sidecar = json.loads((tmp_path / (engine.name + ".json")).read_text())
    assert sidecar["precision_plan"]["precision"] == "fp8" and sidecar["compute_capabilities"] == ["8.9"]
    assert "--computeCapabilities=8.9" in result.stdout


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--compute-capabilities", "8.6"], "which 8.6 lacks"), ([], "TensorRT-RTX's default set")],
)
def test_fp8_for_a_gpu_without_fp8_is_refused_up_front(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    out = tmp_path / "tiny_fp8.engine"
    args = ["--onnx", str(tiny), "--fp8", "--runtime", "tensorrt-rtx", "--out", str(out), *extra]
    code, _, err = run_in_process(capsys, *args)
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0]
    assert "--fp8 needs FP8 tensor cores (compute capability 8.9+)" in lines[0]
    assert not list(tmp_path.iterdir())  # refused before any calibration: nothing written


@requires_rtx
@pytest.mark.skipif(not ASSETS, reason="the bundled demo checkpoint (idlevit/assets/*.pth) is not built yet")
def test_failed_int8_check_builds_nothing(demo: Path, tmp_path: Path) -> None:
    """ModelOpt's all-in plan (residual stream and attention core quantized) flips kept tokens: exit 1, no engine."""
    engine = tmp_path / "demo_int8.engine"
    result = run_trt("--onnx", str(demo), "--int8", "--int8-plan", "all", "--out", str(engine), *QUICK_QUANT, *FAST)
    assert result.returncode == EXIT_CHECK_FAILED, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "drifts from the FP32 graph" in lines[0]
    assert "reduced: top-1 agreement" in result.stdout and "FAIL" in result.stdout
    assert (tmp_path / "demo_int8.onnx").is_file() and not engine.exists()  # kept for inspection, nothing built


def test_int8_without_modelopt_names_the_extra(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = ["modelopt", "modelopt.onnx", "modelopt.onnx.trt_utils", "modelopt.onnx.quantization"]
    for name in {*hidden, *(n for n in sys.modules if n.startswith("modelopt."))}:
        monkeypatch.setitem(sys.modules, name, None)  # `import modelopt...` raises ImportError
    out = tmp_path / "tiny_int8.engine"
    code, _, err = run_in_process(capsys, "--onnx", str(tiny), "--int8", "--runtime", "tensorrt-rtx", "--out", str(out))
    assert code == EXIT_MISSING_DEPENDENCY, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[quant]'" in lines[0]
    assert not list(tmp_path.iterdir())


def test_help_lists_the_quantization_plans() -> None:
    text = build_parser().format_help()
    assert "--int8" in text and "--fp8" in text and "--calib-data" in text and "--int8-plan" in text
    assert "gemms-inner" in text and "scoring path" in text


@pytest.mark.skipif(tensorrt.is_installed("tensorrt"), reason="plans for full TensorRT without building it")
def test_fp8_where_onnx_runtime_cannot_run_it_says_so_and_checks_what_it_can(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.engine

    monkeypatch.setattr(export.engine, "cpu_runs_fp8", lambda: False)
    out = tmp_path / "tiny_fp8.engine"
    args = ["--onnx", str(tiny), "--fp8", "--runtime", "tensorrt", "--trt-version", "10.13", "--out", str(out)]
    code, stdout, err = run_in_process(capsys, *args, "--calib-images", "8", "--no-trtcheck")
    assert code == EXIT_MISSING_DEPENDENCY, stdout + err  # full TensorRT is not installed: plan and checks only
    notes = [line for line in stdout.splitlines() if "cannot run FP8 Q/DQ on the CPU" in line]
    assert len(notes) == 1 and "the scoring path carries no Q/DQ" in notes[0]
    assert (tmp_path / "tiny_fp8.onnx").is_file() and "reduced: top-1 agreement" not in stdout


@pytest.mark.skipif(not ASSETS, reason="the bundled demo checkpoint (idlevit/assets/*.pth) is not built yet")
def test_demo_fp16_build_says_at_most_15_lines(demo: Path, tmp_path: Path) -> None:
    """Quiet by default: third-party chatter stays off the terminal, the command's own lines remain (with TensorRT
    or without, where it stops at the printed command)."""
    result = run_trt("--onnx", str(demo), "--fp16", "--out", str(tmp_path / "demo_fp16.engine"), cwd=tmp_path)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode in (0, EXIT_MISSING_DEPENDENCY), result.stdout + result.stderr
    assert len(lines) <= 15, "\n".join(lines)
    assert any(line.startswith("equivalent command:") for line in lines)
