"""python -m benchmarks.latency / benchmarks.profile as a user runs them: given graphs without PyTorch, list flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.compatibility import current_gpu
from export.engine import export_engine
from export.exporter import export_onnx, optimize_file
from idlevit.cli import parse_list
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, ToolkitError

from ..conftest import make_model
from ..engines.conftest import requires_rtx

ROOT = Path(__file__).resolve().parents[2]
#: Runs a module as ``python -m`` would, in a process where torch, timm and torchvision cannot be imported.
WITHOUT_TORCH = """
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without_torch(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env_path = {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**__import__("os").environ, **env_path},
    )


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small IdleViT and its dense twin (same weights), plain and optimised for ONNX Runtime."""
    folder = tmp_path_factory.mktemp("given")
    idle = make_model("deit_tiny", img_size=32, patch_size=8, num_classes=10, depth=4, idle_layers=[1, 2, 3])
    dense = make_model("deit_tiny", img_size=32, patch_size=8, num_classes=10, depth=4, idle_layers=[])
    files = {"idle": folder / "idle.onnx", "dense": folder / "dense.onnx"}
    export_onnx(idle, files["idle"], verify_batch=0, progress=False)
    export_onnx(dense, files["dense"], verify_batch=0, progress=False)
    files["idle_ort"] = optimize_file(files["idle"], folder / "idle_ort.onnx")
    files["dense_ort"] = optimize_file(files["dense"], folder / "dense_ort.onnx")
    return files


def test_given_graphs_are_timed_without_torch(graphs: dict[str, Path], tmp_path: Path) -> None:
    listed = ",".join(str(graphs[name]) for name in ("idle", "dense", "idle_ort", "dense_ort"))
    args = ("--onnx", listed, "--batch-sizes", "1,2", "--repeats", "2", "--warmup", "0", "--quiet", "--out-dir", "out")
    result = run_without_torch("benchmarks.latency", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime-cpu idle_ort.onnx" in result.stdout and "skipped pytorch" in result.stdout
    rows = json.loads((tmp_path / "out" / "latency.json").read_text())["rows"]
    by_file = {(r["graph"], r["batch"]): r for r in rows}
    assert len(by_file) == 8
    for batch in (1, 2):  # each IdleViT against the dense graph of its own kind, plain with plain, optimised alike
        assert by_file["dense.onnx", batch]["time_ratio"] == 1.0
        assert by_file["idle.onnx", batch]["time_ratio"] > 0 and by_file["idle_ort.onnx", batch]["time_ratio"] > 0
        assert by_file["idle.onnx", batch]["time_ratio"] != by_file["idle_ort.onnx", batch]["time_ratio"]


def test_own_models_without_torch_exit_3_in_one_line(tmp_path: Path) -> None:
    result = run_without_torch("benchmarks.latency", "--repeats", "1", cwd=tmp_path)
    assert result.returncode == EXIT_MISSING_DEPENDENCY and result.stderr.count("\n") == 1
    assert "--onnx X.onnx" in result.stderr and "PyTorch" in result.stderr


def test_profile_takes_onnx_without_torch_and_warns_about_the_old_form(graphs: dict[str, Path], tmp_path: Path) -> None:
    result = run_without_torch(
        "benchmarks.profile", "--onnx", str(graphs["idle_ort"]), "--batch-size", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Attention" in result.stdout and result.stderr == ""
    old = run_without_torch("benchmarks.profile", str(graphs["idle"]), "--batch", "1", "--runs", "1", cwd=tmp_path)
    assert old.returncode == 0 and old.stderr.startswith("warning: --batch is deprecated"), old.stderr
    assert "warning: a positional model path is deprecated" in old.stderr
    assert old.stderr.count("\n") == 2 and "ScatterElements" in old.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--onnx", "missing.onnx"), "'missing.onnx' does not exist"),
        (("--ckpt", "missing.pth"), "checkpoint 'missing.pth' does not exist"),
        (("--onnx", str(ROOT / "README.md"), "--keep-rates", "0.5"), "--keep-rates shape the toolkit's own models"),
        (("--batch-sizes", "1,x"), "--batch-sizes: cannot read 'x'"),
        (("--graphs", "dynamo,fastest"), "--graphs: unknown fastest"),
        (("--backends", "onnxruntime-gpu"), "--backends: unknown onnxruntime-gpu"),
    ],
)
def test_bad_flags_and_missing_files_are_one_line_before_anything_heavy(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_without_torch("benchmarks.latency", *args, cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_lists_are_comma_separated_and_the_old_form_warns_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_list(["1,8"], "--batch-sizes", int, "1,8") == [1, 8]
    assert capsys.readouterr().err == ""
    assert parse_list(["1", "8,32"], "--batch-sizes", int, "1,8") == [1, 8, 32]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deprecated" in err and "--batch-sizes 1,8,32" in err
    assert parse_list("0.5, 0.7", "--keep-rates", float, "0.5,0.7") == [0.5, 0.7]
    with pytest.raises(ToolkitError, match="--keep-rates is empty"):
        parse_list([","], "--keep-rates", float, "0.5,0.7")


@requires_rtx
def test_a_given_engine_is_timed_where_a_gpu_is_else_exit_3(graphs: dict[str, Path], tmp_path: Path) -> None:
    engine = export_engine(  # built on the workstation (with PyTorch), timed on the device (without)
        graphs["idle"], runtime="tensorrt-rtx", out=tmp_path / "idle.engine", echo=lambda _line: None
    )
    result = run_without_torch("benchmarks.latency", "--engine", str(engine), "--repeats", "1", "--quiet", cwd=tmp_path)
    if current_gpu() is None:
        assert result.returncode == EXIT_MISSING_DEPENDENCY and result.stderr.count("\n") == 1
        assert "nothing given can run here: tensorrt: TensorRT engines need a CUDA GPU" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "tensorrt idle.engine" in result.stdout
