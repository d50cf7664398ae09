// Plain C entry point to the IdleScatter kernel, for loading the kernel without TensorRT (ctypes GPU test).
#include "idle_scatter_kernel.cuh"

//! Runs IdleScatter on device pointers; `stream` is a cudaStream_t (nullptr: legacy default stream).
//! Returns the cudaError_t value (0 on success).
extern "C" __attribute__((visibility("default"))) int idlevitIdleScatter(void* out, void const* tokens,
    void const* indices, int indicesInt64, void const* updates, int64_t batch, int64_t rows, int64_t keptRows,
    int64_t channels, int elemBytes, void* stream)
{
    idlevit::IdleScatterArgs const args{
        out, tokens, indices, indicesInt64 != 0, updates, batch, rows, keptRows, channels, elemBytes};
    return static_cast<int>(idlevit::launchIdleScatter(args, static_cast<cudaStream_t>(stream)));
}
