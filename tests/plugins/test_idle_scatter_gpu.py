"""The IdleScatter CUDA kernel on a GPU against ``torch.Tensor.scatter`` (bitwise: both only copy)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plugins.idle_scatter import build

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc not found"),
]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory):  # -> IdleScatterKernel
    from plugins.idle_scatter.cuda_kernel import IdleScatterKernel

    return IdleScatterKernel.build(Path(tmp_path_factory.mktemp("cuda")))


def _inputs(batch: int, rows: int, kept: int, channels: int, dtype: torch.dtype, index_dtype: torch.dtype):
    g = torch.Generator(device="cuda").manual_seed(batch * 1000 + kept)
    tokens = torch.randn(batch, rows, channels, device="cuda", dtype=dtype, generator=g)
    updates = torch.randn(batch, kept, channels, device="cuda", dtype=dtype, generator=g)
    rest = torch.argsort(torch.rand(batch, rows - 1, device="cuda", generator=g), dim=1)[:, : kept - 1] + 1
    indices = torch.cat([torch.zeros(batch, 1, dtype=torch.int64, device="cuda"), rest], dim=1)
    return tokens, indices.to(index_dtype).contiguous(), updates


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize(
    "shape",
    [(64, 197, 138, 384), (8, 197, 68, 384), (3, 197, 97, 768), (5, 17, 9, 6), (2, 9, 5, 3)],
    ids=["deit_small_b64", "deit_small_k67", "deit_base", "odd_row_fp16", "odd_row_12b"],
)
def test_kernel_matches_torch_scatter(
    kernel, shape: tuple[int, int, int, int], dtype: torch.dtype, index_dtype: torch.dtype
) -> None:
    from plugins.idle_scatter.cuda_kernel import torch_reference

    batch, rows, kept, channels = shape
    tokens, indices, updates = _inputs(batch, rows, kept, channels, dtype, index_dtype)
    want = torch_reference(tokens, indices, updates)
    got = kernel(tokens, indices, updates)
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    in_place = tokens.clone()
    kernel(in_place, indices, updates, out=in_place)
    torch.cuda.synchronize()
    assert torch.equal(in_place, want)


def test_kernel_handles_negative_indices_and_unaligned_rows(kernel) -> None:
    from plugins.idle_scatter.cuda_kernel import torch_reference

    tokens, indices, updates = _inputs(4, 197, 97, 384, torch.float16, torch.int64)
    negative = torch.where(indices % 2 == 1, indices - 197, indices)
    # An offset view makes the token pointers 2-byte aligned only: the kernel must fall back to narrow units.
    storage = torch.empty(tokens.numel() + 1, device="cuda", dtype=torch.float16)
    shifted = storage[1:].view_as(tokens)
    shifted.copy_(tokens)
    got = kernel(shifted, negative.contiguous(), updates)
    torch.cuda.synchronize()
    assert torch.equal(got, torch_reference(tokens, indices, updates))
