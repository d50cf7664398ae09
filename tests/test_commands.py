"""Every command answers ``--help`` and usage errors before anything heavy loads, in one line for errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    "export.onnx",
    "export.trt",
    "validate.parity",
    "validate.accuracy",
    "engines.infer",
    "engines.package",
    "benchmarks.latency",
    "benchmarks.profile",
    "benchmarks.quantization",
    "idlevit.finetune",
)
#: What a command must not have loaded when it only prints its help or a usage error.
HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "polygraphy", "tensorrt", "tensorrt_rtx", "modelopt", "timm")
PROBE = """
import runpy, sys
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("LOADED", ",".join(heavy), "CODE", code, file=sys.__stdout__)
"""


def probe(module: str, *args: str) -> tuple[str, str, list[str], int]:
    source = PROBE.format(module=module, args=list(args), heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, cwd=ROOT, timeout=120)
    last = result.stdout.strip().splitlines()[-1].split()
    loaded = [m for m in last[1].split(",") if m] if last[1] != "CODE" else []
    return result.stdout, result.stderr, loaded, int(last[-1])


@pytest.mark.parametrize("module", COMMANDS)
def test_help_loads_nothing_heavy(module: str) -> None:
    out, err, loaded, code = probe(module, "--help")
    assert code == 0 and "usage:" in out and "exit codes" in out.lower(), err
    assert loaded == [], f"python -m {module} --help loaded {loaded}"


@pytest.mark.parametrize("module", COMMANDS)
def test_a_usage_error_is_one_line_with_exit_2(module: str) -> None:
    _out, err, loaded, code = probe(module, "--no-such-flag")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], err
    assert loaded == []
