"""Run the IdleScatter CUDA kernel from PyTorch (ctypes over libidlevit_scatter_cuda.so), no TensorRT.

For the GPU test and a timing against ``torch.Tensor.scatter``::

    python -m plugins.idle_scatter.cuda_kernel --batch 64      # needs a CUDA GPU and nvcc
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
from pathlib import Path

import torch

from .build import build_cuda_library

_FLOAT_BYTES = {torch.float32: 4, torch.float16: 2}


class IdleScatterKernel:
    """The kernel library loaded with ctypes; call it on CUDA tensors."""

    def __init__(self, library: str | Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        fn = self._lib.idlevitIdleScatter
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._fn = fn

    @classmethod
    def build(cls, out_dir: str | Path | None = None, arch: str | None = None) -> IdleScatterKernel:
        """Compile the library for the current GPU's architecture (or ``arch``) and load it."""
        if arch is None:
            major, minor = torch.cuda.get_device_capability()
            arch = f"{major}{minor}"
        directory = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="idle_scatter_"))
        return cls(build_cuda_library(directory, archs=(arch,)))

    def __call__(
        self, tokens: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """IdleScatter on the current stream; ``out`` may be ``tokens`` itself (in place, no copy)."""
        if tokens.dtype not in _FLOAT_BYTES or updates.dtype != tokens.dtype:
            raise TypeError(f"tokens/updates must both be float32 or float16, got {tokens.dtype}/{updates.dtype}")
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
        for t in (tokens, indices, updates):
            if not t.is_cuda or not t.is_contiguous():
                raise ValueError("inputs must be contiguous CUDA tensors")
        batch, rows, channels = tokens.shape
        kept = indices.shape[1]
        if indices.shape[0] != batch or tuple(updates.shape) != (batch, kept, channels):
            raise ValueError(f"shapes disagree: {tuple(tokens.shape)}, {tuple(indices.shape)}, {tuple(updates.shape)}")
        if out is None:
            out = torch.empty_like(tokens)
        err = self._fn(
            out.data_ptr(),
            tokens.data_ptr(),
            indices.data_ptr(),
            int(indices.dtype == torch.int64),
            updates.data_ptr(),
            batch,
            rows,
            kept,
            channels,
            _FLOAT_BYTES[tokens.dtype],
            torch.cuda.current_stream().cuda_stream,
        )
        if err != 0:
            raise RuntimeError(f"idlevitIdleScatter failed with cudaError {err}")
        return out


def torch_reference(tokens: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """The standard-op write-back: expand the row indices over C and ``Tensor.scatter`` along dim 1."""
    index = indices.long().unsqueeze(-1).expand(-1, -1, tokens.shape[2])
    return tokens.scatter(1, index, updates)


def _time_ms(fn: object, iters: int) -> float:
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(10):
        fn()  # type: ignore[operator]
    start.record()
    for _ in range(iters):
        fn()  # type: ignore[operator]
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


def benchmark(
    kernel: IdleScatterKernel,
    batch: int = 64,
    rows: int = 197,
    kept: int = 138,
    channels: int = 384,
    dtype: torch.dtype = torch.float32,
    iters: int = 200,
) -> dict[str, float]:
    """Mean milliseconds of the kernel (copy + write, and in place) and of torch scatter, deit_small shapes."""
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randn(batch, rows, channels, device="cuda", dtype=dtype, generator=g)
    updates = torch.randn(batch, kept, channels, device="cuda", dtype=dtype, generator=g)
    perm = torch.argsort(torch.rand(batch, rows - 1, device="cuda", generator=g), dim=1)[:, : kept - 1] + 1
    indices = torch.cat([torch.zeros(batch, 1, dtype=torch.int64, device="cuda"), perm], dim=1).contiguous()
    out = torch.empty_like(tokens)
    work = tokens.clone()
    return {
        "kernel_copy_ms": _time_ms(lambda: kernel(tokens, indices, updates, out=out), iters),
        "kernel_inplace_ms": _time_ms(lambda: kernel(work, indices, updates, out=work), iters),
        "torch_scatter_ms": _time_ms(lambda: torch_reference(tokens, indices, updates), iters),
    }


def main(argv: list[str] | None = None) -> int:
    """Correctness check against torch scatter, then timings at the given shape."""
    parser = argparse.ArgumentParser(prog="python -m plugins.idle_scatter.cuda_kernel", description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--kept", type=int, default=138, help="K+1 rows written (deit_small r=0.7: 138, 97, 68)")
    parser.add_argument("--fp16", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to run")
        return 1
    kernel = IdleScatterKernel.build()
    dtype = torch.float16 if args.fp16 else torch.float32
    tokens = torch.randn(args.batch, 197, 384, device="cuda", dtype=dtype)
    updates = torch.randn(args.batch, args.kept, 384, device="cuda", dtype=dtype)
    indices = torch.argsort(torch.rand(args.batch, 197, device="cuda"), dim=1)[:, : args.kept].contiguous()
    same = torch.equal(kernel(tokens, indices, updates), torch_reference(tokens, indices, updates))
    print(f"{torch.cuda.get_device_name()}: kernel == torch scatter: {same}")
    times = benchmark(kernel, batch=args.batch, kept=args.kept, dtype=dtype)
    print(", ".join(f"{k} {v:.4f}" for k, v in times.items()))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
