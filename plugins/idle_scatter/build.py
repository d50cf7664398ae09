"""Build helpers for the IdleScatter CUDA/C++ sources (nvcc directly, or the CMake project in plugins/).

Used by the tests and by :mod:`.cuda_kernel`; each function returns the path it built and raises
:class:`idlevit.errors.BuildError` (exit 4) with the compiler's output when a step fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from idlevit.errors import BuildError

from . import SOURCE_DIR

PLUGINS_DIR = SOURCE_DIR.parent
KERNEL_SOURCE = SOURCE_DIR / "idle_scatter_kernel.cu"
CAPI_SOURCE = SOURCE_DIR / "idle_scatter_capi.cu"
HOST_TEST_SOURCE = SOURCE_DIR / "test_idle_scatter_host.cu"
#: Architectures compiled by default: Ampere and Hopper (CUDA 13 supports sm_75 and newer).
DEFAULT_ARCHS = ("80", "90")


def find_nvcc() -> str | None:
    """nvcc from PATH, else from $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def tensorrt_include_dir(tensorrt_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory holding NvInferRuntime.h under ``tensorrt_dir`` (default $TENSORRT_DIR), or None."""
    root = tensorrt_dir or os.environ.get("TENSORRT_DIR")
    if not root:
        return None
    for candidate in (Path(root) / "include", Path(root)):
        if (candidate / "NvInferRuntime.h").is_file():
            return candidate
    return None


def _run(cmd: Sequence[str], cwd: Path | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda); install the CUDA toolkit or set CUDA_HOME")
    return nvcc


def _gencode(archs: Sequence[str]) -> list[str]:
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def compile_kernel_object(out_dir: Path, archs: Sequence[str] = DEFAULT_ARCHS) -> Path:
    """``nvcc -c`` the kernel for ``archs`` (compile only; no GPU, no TensorRT)."""
    out = Path(out_dir) / "idle_scatter_kernel.o"
    _run([_nvcc(), "-std=c++17", "-O3", "-Xcompiler=-fPIC", *_gencode(archs), "-c", str(KERNEL_SOURCE), "-o", str(out)])
    return out


def build_host_test(out_dir: Path) -> Path:
    """Compile the host-side index test (runs on the CPU)."""
    out = Path(out_dir) / "test_idle_scatter_host"
    _run([_nvcc(), "-std=c++17", "-O2", str(HOST_TEST_SOURCE), "-o", str(out)])
    return out


def build_cuda_library(out_dir: Path, archs: Sequence[str] = DEFAULT_ARCHS) -> Path:
    """``libidlevit_scatter_cuda.so``: the kernel behind the C entry point ``idlevitIdleScatter``."""
    out = Path(out_dir) / "libidlevit_scatter_cuda.so"
    _run(
        [
            _nvcc(),
            "-std=c++17",
            "-O3",
            "-shared",
            "-Xcompiler=-fPIC,-fvisibility=hidden",
            "-cudart=static",
            *_gencode(archs),
            str(KERNEL_SOURCE),
            str(CAPI_SOURCE),
            "-o",
            str(out),
        ]
    )
    return out


def cmake_build(
    build_dir: Path,
    tensorrt_dir: str | os.PathLike[str] | None = None,
    archs: Sequence[str] = DEFAULT_ARCHS[:1],
    kernel_only: bool = False,
    jobs: int = 2,
) -> Path:
    """Configure and build plugins/CMakeLists.txt, then run its CTest tests; returns ``build_dir``."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError("cmake not found; install CMake 3.18 or newer")
    args = [
        cmake,
        "-S",
        str(PLUGINS_DIR),
        "-B",
        str(build_dir),
        f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}",
        f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
        f"-DIDLEVIT_KERNEL_ONLY={'ON' if kernel_only else 'OFF'}",
    ]
    if tensorrt_dir:
        args.append(f"-DTENSORRT_DIR={tensorrt_dir}")
    _run(args)
    _run([cmake, "--build", str(build_dir), "-j", str(jobs)])
    ctest = shutil.which("ctest")
    if ctest is not None:
        _run([ctest, "--test-dir", str(build_dir), "--output-on-failure"])
    return Path(build_dir)
