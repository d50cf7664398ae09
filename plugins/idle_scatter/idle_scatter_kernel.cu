// IdleScatter CUDA kernel: tokens -> out copy, then one grid-stride kernel writing only the kept rows.
#include "idle_scatter_kernel.cuh"

#include <algorithm>

namespace idlevit
{
namespace
{

constexpr int32_t kThreads = 256;
constexpr int64_t kMaxBlocks = 4096; // grid-stride beyond this

//! Writes updates[e] to out[scatterDestOffset(e)] for every unit e of the (B, K1, U) update tensor.
template <typename UnitT, typename IndexT>
__global__ void idleScatterRowsKernel(UnitT* __restrict__ out, UnitT const* __restrict__ updates,
    IndexT const* __restrict__ indices, int64_t total, int64_t keptRows, int64_t rows, int64_t unitsPerRow)
{
    int64_t const stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride)
    {
        int64_t const dst = scatterDestOffset(e, indices, keptRows, rows, unitsPerRow);
        if (dst != kSkipWrite)
        {
            out[dst] = updates[e];
        }
    }
}

template <typename UnitT, typename IndexT>
cudaError_t launchRows(IdleScatterArgs const& a, int64_t unitsPerRow, cudaStream_t stream)
{
    int64_t const total = a.batch * a.keptRows * unitsPerRow;
    if (total == 0)
    {
        return cudaSuccess;
    }
    int64_t const blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
    idleScatterRowsKernel<UnitT, IndexT><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        static_cast<UnitT*>(a.out), static_cast<UnitT const*>(a.updates), static_cast<IndexT const*>(a.indices),
        total, a.keptRows, a.rows, unitsPerRow);
    return cudaGetLastError();
}

template <typename IndexT>
cudaError_t launchForIndex(IdleScatterArgs const& a, cudaStream_t stream)
{
    int64_t const rowBytes = a.channels * a.elemBytes;
    int32_t const unit = pickUnitBytes(rowBytes, a.out, a.tokens, a.updates);
    int64_t const unitsPerRow = rowBytes / unit;
    switch (unit)
    {
    case 16: return launchRows<uint4, IndexT>(a, unitsPerRow, stream);
    case 8: return launchRows<uint2, IndexT>(a, unitsPerRow, stream);
    case 4: return launchRows<uint32_t, IndexT>(a, unitsPerRow, stream);
    case 2: return launchRows<uint16_t, IndexT>(a, unitsPerRow, stream);
    default: return launchRows<uint8_t, IndexT>(a, unitsPerRow, stream);
    }
}

} // namespace

cudaError_t launchIdleScatter(IdleScatterArgs const& args, cudaStream_t stream)
{
    if (args.batch < 0 || args.rows < 0 || args.keptRows < 0 || args.channels < 0 || args.elemBytes <= 0)
    {
        return cudaErrorInvalidValue;
    }
    size_t const tokenBytes = static_cast<size_t>(args.batch * args.rows * args.channels * args.elemBytes);
    if (tokenBytes == 0)
    {
        return cudaSuccess;
    }
    if (args.out != args.tokens)
    {
        cudaError_t const err = cudaMemcpyAsync(args.out, args.tokens, tokenBytes, cudaMemcpyDeviceToDevice, stream);
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    return args.indicesInt64 ? launchForIndex<int64_t>(args, stream) : launchForIndex<int32_t>(args, stream);
}

} // namespace idlevit
