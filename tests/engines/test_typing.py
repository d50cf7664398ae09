"""mypy checks every TensorRT call in engines/ against tensorrt-stubs (TensorRT 10.13's API).

tensorrt-stubs installs ``tensorrt/__init__.pyi`` without a ``py.typed`` marker and with five
unparsable signatures (parameters named ``in``, a required parameter after defaults), so the
test copies the stubs, repairs those lines, and points mypy at the copy.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_IMPORTS = ("torch", "onnx", "onnx_graphsurgeon", "onnxruntime", "polygraphy", "modelopt", "trtcheck", "timm")


def _stub_files() -> list[Path]:
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        return []
    return [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".pyi")]


def _repair(line: str) -> str:
    """Make one generated stub signature parse: rename ``in`` parameters, default trailing ones."""
    try:
        ast.parse(line.strip() + "\n    ...")
        return line
    except SyntaxError:
        pass
    line = re.sub(r"([(,] ?)in:", r"\1in_:", line)
    head, sep, tail = line.partition("(")
    params, close, rest = tail.rpartition(")")
    fixed, seen_default = [], False
    for param in params.split(", "):
        seen_default = seen_default or "=" in param
        fixed.append(param + " = ..." if seen_default and "=" not in param and ":" in param else param)
    return head + sep + ", ".join(fixed) + close + rest


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = _stub_files()
    if not files:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    stubs = tmp_path_factory.mktemp("trt-stubs")
    for path in files:
        package = path.parent.name
        (stubs / package).mkdir(exist_ok=True)
        lines = path.read_text().splitlines()
        (stubs / package / path.name).write_text(
            "\n".join(_repair(x) if x.lstrip().startswith("def ") else x for x in lines)
        )
    (stubs / "tensorrt_libs.pyi").write_text("")
    config = stubs / "mypy.ini"
    sections = "".join(f"[mypy-{m}.*]\nfollow_imports = skip\nignore_missing_imports = True\n" for m in SKIPPED_IMPORTS)
    config.write_text(
        f"[mypy]\npython_version = 3.11\nmypy_path = {stubs}\nfollow_imports = silent\nignore_missing_imports = True\n"
        f"check_untyped_defs = True\ncache_dir = {stubs / '.cache'}\n"
        "[mypy-tensorrt.*]\nignore_errors = True\n[mypy-tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-tensorrt]\nignore_errors = True\n[mypy-tensorrt_bindings]\nignore_errors = True\n" + sections
    )
    return config


def _mypy(config: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_engines_type_check_against_tensorrt_stubs(mypy_config: Path) -> None:
    result = _mypy(mypy_config, ROOT / "engines")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("good", "planted", "expected"),
    [
        ("config.clear_flag(trt.BuilderFlag.TF32)", 'config.clear_flag("TF32")', '"clear_flag" of "IBuilderConfig"'),
        ("layer.set_output_type(j, trt.float32)", "layer.set_output_type(j, float)", '"set_output_type"'),
        ("step_complete(self, phase_name: str, step: int) -> bool:", "step_complete(self) -> bool:", "step_complete"),
    ],
    ids=["config-flag", "layer-output-type", "progress-monitor"],
)
def test_a_planted_api_misuse_fails(mypy_config: Path, tmp_path: Path, good: str, planted: str, expected: str) -> None:
    """The TensorRT calls of engines/tensorrt.py (the rest is Polygraphy, untyped) are checked for real."""
    source = (ROOT / "engines" / "tensorrt.py").read_text()
    assert source.count(good) == 1
    copy = tmp_path / "engines_planted" / "tensorrt.py"
    copy.parent.mkdir()
    shutil.copy(ROOT / "engines" / "__init__.py", copy.parent / "__init__.py")
    copy.write_text(source.replace(good, planted))
    result = _mypy(mypy_config, copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout
