// Host-side test of the IdleScatter index logic: runs the kernel's __host__ __device__ functions on the CPU,
// emulating the kernel unit by unit, against a plain scalar reference. No GPU needed.
// Prints one line per check and "ALL PASSED"; exits 1 on the first failing group.
#include "idle_scatter_kernel.cuh"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

using idlevit::kSkipWrite;

namespace
{

int gFailures = 0;

void check(bool ok, char const* what)
{
    std::printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
    gFailures += ok ? 0 : 1;
}

struct Case
{
    int64_t batch, rows, keptRows, channels;
    int32_t elemBytes;
    bool negative;   // express some indices as idx - rows
    bool outOfRange; // add rows that must be skipped
};

//! Scalar reference on element granularity: copy then per-row overwrite.
template <typename IndexT>
std::vector<unsigned char> reference(Case const& c, std::vector<unsigned char> const& tokens,
    std::vector<IndexT> const& idx, std::vector<unsigned char> const& updates)
{
    std::vector<unsigned char> out = tokens;
    for (int64_t b = 0; b < c.batch; ++b)
    {
        for (int64_t j = 0; j < c.keptRows; ++j)
        {
            int64_t row = static_cast<int64_t>(idx[b * c.keptRows + j]);
            if (row < 0)
            {
                row += c.rows;
            }
            if (row < 0 || row >= c.rows)
            {
                continue;
            }
            for (int64_t ch = 0; ch < c.channels; ++ch)
            {
                std::memcpy(&out[((b * c.rows + row) * c.channels + ch) * c.elemBytes],
                    &updates[((b * c.keptRows + j) * c.channels + ch) * c.elemBytes], c.elemBytes);
            }
        }
    }
    return out;
}

//! CPU emulation of the kernel: copy, then every update unit goes where scatterDestOffset says.
template <typename IndexT>
std::vector<unsigned char> emulate(Case const& c, int32_t unitBytes, std::vector<unsigned char> const& tokens,
    std::vector<IndexT> const& idx, std::vector<unsigned char> const& updates)
{
    std::vector<unsigned char> out = tokens;
    int64_t const unitsPerRow = c.channels * c.elemBytes / unitBytes;
    int64_t const total = c.batch * c.keptRows * unitsPerRow;
    for (int64_t e = 0; e < total; ++e)
    {
        int64_t const dst = idlevit::scatterDestOffset(e, idx.data(), c.keptRows, c.rows, unitsPerRow);
        if (dst != kSkipWrite)
        {
            std::memcpy(&out[dst * unitBytes], &updates[e * unitBytes], unitBytes);
        }
    }
    return out;
}

template <typename IndexT>
bool runCase(Case const& c, std::mt19937& rng)
{
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<unsigned char> tokens(c.batch * c.rows * c.channels * c.elemBytes);
    std::vector<unsigned char> updates(c.batch * c.keptRows * c.channels * c.elemBytes);
    for (auto& v : tokens)
    {
        v = static_cast<unsigned char>(byte(rng));
    }
    for (auto& v : updates)
    {
        v = static_cast<unsigned char>(byte(rng));
    }
    // Distinct rows per image, CLS (row 0) first as IdleViT does, the rest a random subset.
    std::vector<IndexT> idx(c.batch * c.keptRows);
    for (int64_t b = 0; b < c.batch; ++b)
    {
        std::vector<int64_t> perm(c.rows - 1);
        std::iota(perm.begin(), perm.end(), 1);
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int64_t j = 0; j < c.keptRows; ++j)
        {
            int64_t row = j == 0 ? 0 : perm[j - 1];
            if (c.negative && j % 3 == 1)
            {
                row -= c.rows;
            }
            if (c.outOfRange && j % 5 == 2)
            {
                row = (j % 2 == 0) ? c.rows + j : -c.rows - 1 - j;
            }
            idx[b * c.keptRows + j] = static_cast<IndexT>(row);
        }
    }
    std::vector<unsigned char> const want = reference(c, tokens, idx, updates);
    bool ok = want != tokens || c.keptRows == 0; // the case must change something to be a test
    for (int32_t unit = 16; unit >= 1; unit /= 2)
    {
        if ((c.channels * c.elemBytes) % unit != 0)
        {
            continue;
        }
        ok = ok && emulate(c, unit, tokens, idx, updates) == want;
    }
    return ok;
}

void testResolveRow()
{
    bool ok = idlevit::resolveRow(0, 197) == 0 && idlevit::resolveRow(196, 197) == 196
        && idlevit::resolveRow(-1, 197) == 196 && idlevit::resolveRow(-197, 197) == 0
        && idlevit::resolveRow(197, 197) == kSkipWrite && idlevit::resolveRow(-198, 197) == kSkipWrite
        && idlevit::resolveRow(0, 0) == kSkipWrite;
    check(ok, "resolveRow: in range, negative wrap, out of range");
}

void testPickUnitBytes()
{
    auto const p = [](uintptr_t v) { return reinterpret_cast<void const*>(v); };
    bool ok = idlevit::pickUnitBytes(1536, p(0x1000), p(0x2000), p(0x3000)) == 16
        && idlevit::pickUnitBytes(768, p(0x1000), p(0x2008), p(0x3000)) == 8
        && idlevit::pickUnitBytes(12, p(0x1000), p(0x2000), p(0x3000)) == 4
        && idlevit::pickUnitBytes(6, p(0x1000), p(0x2000), p(0x3000)) == 2
        && idlevit::pickUnitBytes(1536, p(0x1001), p(0x2000), p(0x3000)) == 1;
    check(ok, "pickUnitBytes: widest width dividing row bytes and all addresses");
}

void testDestOffsetDirect()
{
    // B=2, R=5, K1=3, U=2: update row (b=1, j=2) with index -1 lands on row 4 of image 1.
    int64_t const idx[6] = {0, 3, 1, 0, 2, -1};
    bool ok = idlevit::scatterDestOffset(0, idx, 3, 5, 2) == 0
        && idlevit::scatterDestOffset(3, idx, 3, 5, 2) == 3 * 2 + 1
        && idlevit::scatterDestOffset(11, idx, 3, 5, 2) == (1 * 5 + 4) * 2 + 1
        && idlevit::scatterDestOffset(8, idx, 3, 5, 2) == (1 * 5 + 2) * 2 + 0;
    int32_t const bad[2] = {7, -9};
    ok = ok && idlevit::scatterDestOffset(0, bad, 2, 5, 4) == kSkipWrite
        && idlevit::scatterDestOffset(5, bad, 2, 5, 4) == kSkipWrite;
    check(ok, "scatterDestOffset: hand-computed offsets and skipped out-of-range rows");
}

} // namespace

int main()
{
    testResolveRow();
    testPickUnitBytes();
    testDestOffsetDirect();

    std::mt19937 rng(1234);
    Case const cases[] = {
        {2, 197, 138, 384, 4, false, false}, // deit_small, r=0.7 first stage, FP32
        {3, 197, 68, 384, 2, false, false},  // deit_small, third stage, FP16
        {1, 197, 97, 768, 2, true, false},   // deit_base, negative indices
        {2, 17, 9, 6, 2, true, true},        // odd row size (12 bytes), out-of-range rows skipped
        {4, 9, 5, 3, 4, false, true},        // 12-byte rows, FP32
        {2, 7, 1, 5, 2, false, false},       // only the CLS row kept, 10-byte rows
        {1, 5, 0, 8, 4, false, false},       // nothing kept: output equals tokens
    };
    int n = 0;
    for (Case const& c : cases)
    {
        char what[160];
        std::snprintf(what, sizeof(what), "emulated kernel == reference, B=%lld R=%lld K1=%lld C=%lld elem=%d (int32, int64)",
            static_cast<long long>(c.batch), static_cast<long long>(c.rows), static_cast<long long>(c.keptRows),
            static_cast<long long>(c.channels), c.elemBytes);
        check(runCase<int32_t>(c, rng) && runCase<int64_t>(c, rng), what);
        ++n;
    }
    if (gFailures != 0)
    {
        std::printf("FAILED: %d check(s)\n", gFailures);
        return 1;
    }
    std::printf("ALL PASSED (%d shape cases)\n", n);
    return 0;
}
