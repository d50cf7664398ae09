// IdleScatter: write the K+1 updated token rows of each image back into the full token tensor.
//
//   out = tokens;  out[b, idx[b, j], :] = updates[b, j, :]   for b < B, j < K1
//
// tokens/out: (B, R, C) with R = N+1 rows, updates: (B, K1, C), idx: (B, K1) int32 or int64.
//
// The copy itself is type-agnostic (it moves bytes), so the kernel works in "units": a row of
// C elements of elemSize bytes is split into U = C * elemSize / unitBytes units of 16, 8, 4, 2 or 1
// bytes, picked as the widest width that divides the row and the alignment of all pointers.
// The index arithmetic lives in __host__ __device__ functions so the host test can check it on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace idlevit
{

//! Sentinel returned by the index functions for an update that must not be written.
constexpr int64_t kSkipWrite = -1;

//! Resolve a row index against R rows, ONNX ScatterElements style: a negative index counts from the end
//! (idx + R). Returns the row in [0, R) or kSkipWrite when the index is out of range even after wrapping
//! (the kernel then leaves that row as copied from `tokens`; it cannot raise an error).
__host__ __device__ inline int64_t resolveRow(int64_t idx, int64_t rows)
{
    int64_t const row = idx < 0 ? idx + rows : idx;
    return (row >= 0 && row < rows) ? row : kSkipWrite;
}

//! Destination offset, in units, of flat update unit `e` (e in [0, B*K1*U), updates laid out (B, K1, U)),
//! or kSkipWrite. `indices` is the (B, K1) row-index tensor.
template <typename IndexT>
__host__ __device__ inline int64_t scatterDestOffset(
    int64_t e, IndexT const* indices, int64_t keptRows, int64_t rows, int64_t unitsPerRow)
{
    int64_t const updateRow = e / unitsPerRow; // b * K1 + j
    int64_t const unit = e - updateRow * unitsPerRow;
    int64_t const b = updateRow / keptRows;
    int64_t const row = resolveRow(static_cast<int64_t>(indices[updateRow]), rows);
    if (row == kSkipWrite)
    {
        return kSkipWrite;
    }
    return (b * rows + row) * unitsPerRow + unit;
}

//! Widest unit (16, 8, 4, 2 or 1 bytes) dividing the row size in bytes and the address of every pointer.
__host__ __device__ inline int32_t pickUnitBytes(
    int64_t rowBytes, void const* out, void const* tokens, void const* updates)
{
    uintptr_t const mix = static_cast<uintptr_t>(rowBytes) | reinterpret_cast<uintptr_t>(out)
        | reinterpret_cast<uintptr_t>(tokens) | reinterpret_cast<uintptr_t>(updates);
    for (int32_t w = 16; w > 1; w /= 2)
    {
        if (mix % static_cast<uintptr_t>(w) == 0)
        {
            return w;
        }
    }
    return 1;
}

//! Problem description for one IdleScatter call.
struct IdleScatterArgs
{
    void* out;            //!< (B, R, C) output; may equal `tokens` (then no copy is made)
    void const* tokens;   //!< (B, R, C) input tokens
    void const* indices;  //!< (B, K1) row indices
    bool indicesInt64;    //!< true: int64 indices, false: int32
    void const* updates;  //!< (B, K1, C) rows to write
    int64_t batch;        //!< B
    int64_t rows;         //!< R = N + 1
    int64_t keptRows;     //!< K1 = K + 1
    int64_t channels;     //!< C
    int32_t elemBytes;    //!< 4 (FP32) or 2 (FP16)
};

//! Copy tokens to out (cudaMemcpyAsync, skipped when out == tokens) and write the kept rows, on `stream`.
//! Returns the first CUDA error (cudaSuccess when nothing went wrong; empty problems launch nothing).
cudaError_t launchIdleScatter(IdleScatterArgs const& args, cudaStream_t stream);

} // namespace idlevit
