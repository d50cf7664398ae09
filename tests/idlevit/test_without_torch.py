"""Where PyTorch is missing: the one-line exit 3, and the torch-free ways of asking for a GPU."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines import compatibility
from idlevit.cli import run_cli
from idlevit.errors import EXIT_INTERNAL, EXIT_MISSING_DEPENDENCY, TORCH_INSTALL, missing_torch_package

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["torch", "timm", "torchvision.datasets"])
def test_a_missing_pytorch_package_exits_3_in_one_line(package: str, capsys: pytest.CaptureFixture[str]) -> None:
    def main(_argv: list[str] | None) -> int:
        raise ModuleNotFoundError(f"No module named '{package}'", name=package)

    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == EXIT_MISSING_DEPENDENCY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{package.split('.')[0]} is not installed here" in err[0] and TORCH_INSTALL in err[0]


def test_another_missing_module_is_still_an_internal_error(capsys: pytest.CaptureFixture[str]) -> None:
    def main(_argv: list[str] | None) -> int:
        raise ModuleNotFoundError("No module named 'somewhere'", name="somewhere")

    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == EXIT_INTERNAL and "internal error" in capsys.readouterr().err


def test_missing_torch_package_is_found_without_importing() -> None:
    code = (
        "import sys; sys.modules['timm'] = None\n"  # an import of timm now fails, as where it is not installed
        "import importlib.util as u; u.find_spec = lambda name, *a: None if name == 'timm' else object()\n"
        "from idlevit.errors import missing_torch_package; print(missing_torch_package())\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["timm", "False"]
    assert missing_torch_package() is None  # this environment has the PyTorch side


class _FakeDriver:
    """The four CUDA driver calls current_gpu makes, answering like a driver with one 8.7 GPU (Jetson Orin)."""

    def __init__(self, devices: int = 1, init: int = 0) -> None:
        self.devices, self.init = devices, init

    def cuInit(self, _flags: int) -> int:  # noqa: N802 - the driver's names
        return self.init

    def cuDeviceGetCount(self, count: object) -> int:  # noqa: N802
        count._obj.value = self.devices  # type: ignore[attr-defined]
        return 0

    def cuDeviceGet(self, device: object, _ordinal: int) -> int:  # noqa: N802
        device._obj.value = 0  # type: ignore[attr-defined]
        return 0

    def cuDeviceGetAttribute(self, value: object, attribute: int, _device: object) -> int:  # noqa: N802
        value._obj.value = {75: 8, 76: 7}[attribute]  # type: ignore[attr-defined]
        return 0

    def cuDeviceGetName(self, name: ctypes.Array, _size: int, _device: object) -> int:  # noqa: N802
        name.value = b"Orin (nvgpu)"
        return 0


def test_current_gpu_reads_the_cuda_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compatibility, "_cuda_driver", lambda: _FakeDriver())
    assert compatibility.current_gpu() == {"name": "Orin (nvgpu)", "compute_capability": "8.7"}
    monkeypatch.setattr(compatibility, "_cuda_driver", lambda: _FakeDriver(devices=0))
    assert compatibility.current_gpu() is None
    monkeypatch.setattr(compatibility, "_cuda_driver", lambda: _FakeDriver(init=100))  # CUDA_ERROR_NO_DEVICE
    assert compatibility.current_gpu() is None
    monkeypatch.setattr(compatibility, "_cuda_driver", lambda: None)  # no driver installed
    assert compatibility.current_gpu() is None


@pytest.mark.parametrize(
    ("module", "blocked", "args"),
    [
        ("export.onnx", "timm", []),
        ("export.onnx", "torch", []),
        ("idlevit.finetune", "torchvision", ["--epochs", "1", "--quiet", "--out", "x.pth"]),
        ("validate.accuracy", "timm", ["--onnx", "m.onnx", "--ckpt", "demo", "--quiet"]),
    ],
)
def test_a_command_of_the_pytorch_side_names_what_is_missing(
    module: str, blocked: str, args: list[str], tmp_path: Path
) -> None:
    """Only one of torch, torchvision and timm missing is enough for the one-line exit 3 (never exit 70)."""
    (tmp_path / "m.onnx").write_bytes(b"")  # never read: the missing package is named first
    code = (
        f"import sys, runpy; sys.modules[{blocked!r}] = None; sys.argv = [{module!r}, *{args!r}]; "
        f"runpy.run_module({module!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == EXIT_MISSING_DEPENDENCY, result.stderr
    assert len(lines) == 1 and f"{blocked} is not installed here" in lines[0] and TORCH_INSTALL in lines[0]
