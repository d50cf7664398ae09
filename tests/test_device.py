"""The device side in a fresh venv made with the device install line (no PyTorch), on artefacts made with PyTorch.

A Jetson-like host has TensorRT, ONNX Runtime, onnx and Polygraphy but no torch. Here a venv gets
``pip install '<repo>[rtx]'`` (the base install is the device set; TensorRT-RTX stands in for the
host's TensorRT and builds ahead of time without a GPU), ``import torch`` must fail in it, and the
device commands run there on what the full environment made: the bundled demo's ONNX, its
``--with-indices`` export and an INT8 Q/DQ graph written with ModelOpt. Results are compared with
the same commands run with PyTorch installed. The venv is built once per run (a minute or two).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from engines import tensorrt
from idlevit.errors import EXIT_CHECK_FAILED, EXIT_MISSING_DEPENDENCY, EXIT_OK
from idlevit.images import digits_split

ROOT = Path(__file__).resolve().parents[1]
DEMO = "idlevit_deit_micro_digits_ratio0.7"
#: What a checkout may hold besides the sources: not copied into the tree the device venv installs from.
BUILD_LEFTOVERS = (".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.onnx", "*.engine", ".idlevit")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not tensorrt.is_installed("tensorrt-rtx"), reason="tests/run.sh installs TensorRT-RTX"),
]


@dataclass
class Device:
    """The device venv's interpreter and a folder of artefacts copied from the workstation."""

    python: Path
    folder: Path

    def run(self, module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        """``python -m module args`` in the device venv, as a user there types it (no PYTHONPATH)."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "IDLEVIT_STATE_DIR")}
        return subprocess.run(
            [str(self.python), "-m", module, *args],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _workstation_run(folder: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=folder, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{module} {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def make_workstation_artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the full environment makes: the demo's ONNX, its --with-indices export, an INT8 graph (ModelOpt), a PNG."""
    folder = tmp_path_factory.mktemp("workstation")
    _workstation_run(folder, "export.onnx")
    _workstation_run(folder, "export.onnx", "--with-indices")
    _workstation_run(
        folder, "export.trt", "--onnx", f"{DEMO}.onnx", "--int8", "--no-check", "--runtime", "tensorrt-rtx"
    )
    images, _ = digits_split("test", 32)
    Image.fromarray((images[7].transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / "digit.png")
    return folder


def make_device(workstation: Path, tmp_path_factory: pytest.TempPathFactory) -> Device:
    """A fresh venv with the device install line, and the workstation's artefacts copied beside it."""
    venv = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    source = tmp_path_factory.mktemp("device-source") / "idlevit-deploy"  # the build writes build/ beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{source}[rtx]"], capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, f"the device install failed:\n{install.stdout[-2000:]}\n{install.stderr[-4000:]}"
    folder = tmp_path_factory.mktemp("device")
    for name in (f"{DEMO}.onnx", f"{DEMO}_indices.onnx", f"{DEMO}_int8.onnx", "digit.png"):
        shutil.copy(workstation / name, folder / name)
    return Device(python, folder)


def _ok(result: subprocess.CompletedProcess[str], code: int = EXIT_OK) -> str:
    assert result.returncode == code, f"exited {result.returncode}, not {code}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def _one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    _ok(result, code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def check_the_device_venv_has_no_pytorch(device: Device) -> None:
    for package in ("torch", "timm", "torchvision", "modelopt"):
        probe = subprocess.run([str(device.python), "-c", f"import {package}"], capture_output=True, text=True)
        assert probe.returncode != 0 and f"No module named '{package}'" in probe.stderr, package


def check_export_trt_builds_fp16_and_the_workstations_int8_graph(device: Device) -> None:
    """--fp16 writes, checks and builds the mixed graph; the INT8 Q/DQ graph made with ModelOpt builds as it is
    (checked against the FP32 graph it records), with or without --int8; quantizing here exits 3."""
    out = _ok(device.run("export.trt", "--onnx", f"{DEMO}.onnx", "--fp16", "--runtime", "tensorrt-rtx"))
    assert "reduced: top-1 agreement" in out and (device.folder / f"{DEMO}_fp16.engine").is_file()
    assert (device.folder / f"{DEMO}_fp16_mixed.onnx").is_file()
    for extra in ([], ["--int8", "--out", "again_int8.engine"]):
        out = _ok(device.run("export.trt", "--onnx", f"{DEMO}_int8.onnx", "--runtime", "tensorrt-rtx", *extra))
        assert "is already an INT8 graph: built as it is" in out and "reduced: top-1 agreement" in out
    assert (device.folder / f"{DEMO}_int8.engine").is_file() and (device.folder / "again_int8.engine").is_file()
    error = _one_error_line(
        device.run("export.trt", "--onnx", f"{DEMO}.onnx", "--int8", "--runtime", "tensorrt-rtx"),
        EXIT_MISSING_DEPENDENCY,
    )
    assert "pip install -e '.[quant]'" in error and "--onnx" in error


def _perturbed(source: Path, target: Path) -> None:
    """``source`` with the classifier head's weights scaled by 1.5: the same metadata, other logits."""
    model = onnx.load(source)
    head = max(
        (init for init in model.graph.initializer if len(init.dims) == 2 and 10 in init.dims),
        key=lambda init: list(model.graph.initializer).index(init),
    )
    values = numpy_helper.to_array(head)
    head.CopyFrom(numpy_helper.from_array((values.astype(np.float32) * 1.5).astype(values.dtype), head.name))
    onnx.save(model, target)


def check_parity_of_reduced_graphs_against_the_fp32_onnx(device: Device) -> None:
    """The FP16 mixed graph and the INT8 graph pass against the FP32 graph they record; a perturbed one fails."""
    if not (device.folder / f"{DEMO}_fp16_mixed.onnx").is_file():
        _ok(device.run("export.trt", "--onnx", f"{DEMO}.onnx", "--fp16", "--runtime", "tensorrt-rtx"))
    for graph in (f"{DEMO}_fp16_mixed.onnx", f"{DEMO}_int8.onnx"):
        out = _ok(device.run("validate.parity", "--onnx", graph, "--quiet"))
        assert f"against the FP32 graph {DEMO}.onnx" in out and "PASSED" in out
    _perturbed(device.folder / f"{DEMO}_fp16_mixed.onnx", device.folder / "perturbed_fp16_mixed.onnx")
    failed = device.run("validate.parity", "--onnx", "perturbed_fp16_mixed.onnx", "--quiet")
    _ok(failed, EXIT_CHECK_FAILED)
    assert "FAILED" in failed.stderr


def check_parity_against_pytorch_says_it_needs_torch(device: Device) -> None:
    error = _one_error_line(
        device.run("validate.parity", "--onnx", f"{DEMO}_indices.onnx", "--quiet"), EXIT_MISSING_DEPENDENCY
    )
    assert "needs PyTorch" in error and "pip install -e '.[torch]'" in error


def _top1_rows(stdout: str) -> dict[str, str]:
    rows = [line.split("|") for line in stdout.splitlines() if line.startswith("| ") and "%" in line]
    return {cells[1].strip(): cells[3].strip() for cells in rows}


def check_accuracy_on_digits_matches_the_pytorch_environment(device: Device, workstation: Path) -> None:
    with_torch = _top1_rows(
        _workstation_run(workstation, "validate.accuracy", "--onnx", f"{DEMO}.onnx", "--quiet").stdout
    )
    out = _ok(device.run("validate.accuracy", "--onnx", f"{DEMO}.onnx", "--data", "digits", "--quiet"))
    assert "no PyTorch row: torch is not installed" in out
    here = _top1_rows(out)
    assert set(here) == {"onnxruntime-cpu"} and set(with_torch) == {"pytorch", "onnxruntime-cpu"}
    assert here["onnxruntime-cpu"] == with_torch["pytorch"] == with_torch["onnxruntime-cpu"]


def _predictions(stdout: str) -> list[str]:
    """The top-5 lines engines.infer prints (class and probability)."""
    return [line.strip() for line in stdout.splitlines() if line.strip()[:2] in {"1.", "2.", "3.", "4.", "5."}]


def check_infer_on_a_png_matches_the_pytorch_environment(device: Device, workstation: Path) -> None:
    with_torch = _predictions(
        _workstation_run(workstation, "engines.infer", "--onnx", f"{DEMO}.onnx", "digit.png").stdout
    )
    here = _predictions(_ok(device.run("engines.infer", "--onnx", f"{DEMO}.onnx", "digit.png")))
    assert len(here) == 5 and here == with_torch


def check_infer_runs_an_engine_as_its_checked_graph_without_a_gpu(device: Device) -> None:
    engine = device.folder / f"{DEMO}_fp16.engine"
    if not engine.is_file():
        _ok(device.run("export.trt", "--onnx", f"{DEMO}.onnx", "--fp16", "--runtime", "tensorrt-rtx"))
    out = _ok(device.run("engines.infer", "--engine", engine.name, "digit.png"))
    note = next(line for line in out.splitlines() if line.startswith("note: "))
    assert "needs a CUDA GPU" in note and f"running the graph it was built from instead, {DEMO}_fp16_mixed.onnx" in note
    assert len(_predictions(out)) == 5


def check_commands_that_need_torch_say_so(device: Device) -> None:
    for module, *args in (
        ("export.onnx",),
        ("idlevit.finetune", "--epochs", "1", "--out", "t.pth"),
        ("validate.accuracy", "--onnx", f"{DEMO}.onnx", "--ckpt", "demo", "--quiet"),
    ):
        error = _one_error_line(device.run(module, *args), EXIT_MISSING_DEPENDENCY)
        assert "PyTorch" in error and "pip install -e '.[torch]'" in error, (module, error)


def check_latency_and_profile_time_a_given_graph(device: Device) -> None:
    quick = ("--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--quiet", "--out-dir", "latency")
    out = _ok(device.run("benchmarks.latency", "--onnx", f"{DEMO}.onnx", *quick))
    assert f"onnxruntime-cpu {DEMO}.onnx" in out and "skipped pytorch" in out
    assert (device.folder / "latency" / "latency.json").is_file()
    error = _one_error_line(device.run("benchmarks.latency", *quick), EXIT_MISSING_DEPENDENCY)
    assert "--onnx X.onnx" in error and "pip install -e '.[torch]'" in error
    assert "ScatterElements" in _ok(device.run("benchmarks.profile", "--onnx", f"{DEMO}.onnx", "--batch-size", "1"))


def test_device_side_without_pytorch(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One test, so that a run builds the venv once whatever the number of pytest workers."""
    workstation = make_workstation_artefacts(tmp_path_factory)
    device = make_device(workstation, tmp_path_factory)
    check_the_device_venv_has_no_pytorch(device)
    check_export_trt_builds_fp16_and_the_workstations_int8_graph(device)
    check_parity_of_reduced_graphs_against_the_fp32_onnx(device)
    check_parity_against_pytorch_says_it_needs_torch(device)
    check_accuracy_on_digits_matches_the_pytorch_environment(device, workstation)
    check_infer_on_a_png_matches_the_pytorch_environment(device, workstation)
    check_infer_runs_an_engine_as_its_checked_graph_without_a_gpu(device)
    check_commands_that_need_torch_say_so(device)
    check_latency_and_profile_time_a_given_graph(device)
    # ---- to come with the package work -------------------------------------------------------------
    # `engines.package` of the FP16 engine, then `engines.infer --engine <package>/<engine>` with the
    # build folder removed: add it here, run with `device.run` like the checks above.
