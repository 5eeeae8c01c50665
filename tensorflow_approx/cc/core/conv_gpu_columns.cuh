// The columns kernel: groups of at most 32 output channels (the 3-, 16- and 32-channel layers of
// small networks), which leave most lanes of a tile of 64+ channels idle and, in the direct kernel,
// quantize both operands for every lookup. Internal: included by conv_gpu.cu only.
//
// One thread per output pixel and up to kColumnChannels channels of its group, accumulated in
// registers: the input code of each tap is quantized once and serves every channel. The block holds
// the table by weight code (cols[(w << 8) | a] = LUT[(a << 8) | w]) and the filter's codes (times 256,
// the offset of their column) in shared memory: adjacent lanes take adjacent pixels of one group, so a
// lookup's weight is the same in every lane (its codes are broadcast) and the banks follow the
// activation codes, which ReLU zeros and padding make often equal (a broadcast too). A prologue pass
// writes the transposed table, the filter codes and the per-channel code sums to the workspace once per
// call; every block copies the first two into shared memory.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COLUMNS_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COLUMNS_CUH_

#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tfapprox {
namespace gpu_internal {

constexpr int kColumnChannels = 16;  // output channels per thread
constexpr int kColumnThreads = 512;  // 16 warps: one block per multiprocessor, latency hidden by warps

// Workspace layout: the transposed table, the filter codes << 8 (HWIO order), per-channel code sums.
struct ColumnsWorkspace {
  size_t codes_offset, sums_offset, bytes;
  explicit ColumnsWorkspace(int64_t filter_elements, int64_t out_depth) {
    codes_offset = static_cast<size_t>(kLutEntries) * 2;
    sums_offset = codes_offset + (static_cast<size_t>(filter_elements) * 2 + 15) / 16 * 16;
    bytes = sums_offset + static_cast<size_t>(out_depth) * sizeof(int32_t);
  }
  // Shared memory of a block: the table and the filter codes.
  __host__ __device__ size_t SharedBytes() const { return sums_offset; }
};

template <typename T>
__global__ void __launch_bounds__(256) ColumnsPrologueKernel(const uint16_t* __restrict__ lut, const T* __restrict__ filter,
                                                             GpuGeometry g, const GpuQuant* quant, uint16_t* cols,
                                                             uint16_t* codes, int32_t* sums) {
  const int step = gridDim.x * blockDim.x;
  const int first = blockIdx.x * blockDim.x + threadIdx.x;
  for (int i = first; i < kLutEntries; i += step) cols[i] = __ldg(lut + (((i & 255) << 8) | (i >> 8)));
  const bool per_channel = quant->channels != 1;
  const QuantParams qf_tensor = quant->filter;
  const int filter_elements = g.taps * g.out_depth;
  for (int i = first; i < filter_elements; i += step) {
    // The modulo only with per-channel ranges.
    const QuantParams qf = per_channel ? ChannelFilter(quant, true, i % g.out_depth, qf_tensor) : qf_tensor;
    codes[i] = static_cast<uint16_t>(QuantizeToCode(ToFloat(filter[i]), qf) << 8);
  }
  // A warp per output channel, its lanes across the taps (a thread walking all taps waited for each load).
  const int lane = threadIdx.x & 31;
  for (int co = first / 32; co < g.out_depth; co += step / 32) {
    const QuantParams qf = ChannelFilter(quant, per_channel, co, qf_tensor);
    int32_t sum = 0;  // taps * 255 < 2^31: the plan takes this kernel only for taps < 2^23
    for (int t = lane; t < g.taps; t += 32) sum += QuantizeToCode(ToFloat(filter[t * g.out_depth + co]), qf);
    sum = __reduce_add_sync(0xffffffffu, sum);
    if (lane == 0) sums[co] = sum;
  }
}

template <typename T, bool kWide>
__global__ void __launch_bounds__(kColumnThreads, 1)
    ColumnsConvKernel(const T* __restrict__ input, T* __restrict__ output, const unsigned char* __restrict__ workspace,
                      ColumnsWorkspace layout, GpuGeometry g, Epilogue epi) {
  using Real = typename RealOf<T>::type;
  const QuantParams qi = epi.quant->input;
  const DequantizeTerms<Real> deq_tensor = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  using Acc = typename std::conditional<kWide, unsigned long long, uint32_t>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  {
    const uint4* src = reinterpret_cast<const uint4*>(workspace);
    uint4* dst = reinterpret_cast<uint4*>(smem);
    for (size_t i = threadIdx.x; i < layout.SharedBytes() / 16; i += blockDim.x) dst[i] = __ldg(src + i);
  }
  __syncthreads();
  const uint16_t* cols = reinterpret_cast<const uint16_t*>(smem);
  const uint16_t* codes = reinterpret_cast<const uint16_t*>(smem + layout.codes_offset);
  const int32_t* sums = reinterpret_cast<const int32_t*>(workspace + layout.sums_offset);
  const int chunks = (g.npg + kColumnChannels - 1) / kColumnChannels;
  const int64_t items = static_cast<int64_t>(g.groups) * chunks * g.pixels;
  // Rows of codes (one per tap, out_depth long) and a thread's first channel at multiples of 8 codes:
  // 16-byte aligned (the codes start at a multiple of 16 bytes), so a tap's codes load as vectors.
  const bool vec_codes = g.out_depth % 8 == 0 && g.npg % 8 == 0;
  const int in_hw = g.in_h * g.in_w;
  // float32 NHWC with groups of a multiple of 4 channels (every group's first channel then a multiple of 4
  // too): a tap's channels load as float4s, issued together before their lookups (one load latency per 16
  // channels, not one per channel, which set the pace of the 1x1 layers: a K of 16 leaves few lookups to
  // hide it behind), and a thread's output channels store as float4s (a quarter of the stores, each a
  // whole 16 bytes of a sector). Same codes, same sums, same bits.
  constexpr bool kFloat = std::is_same<T, float>::value;
  const bool vec_in = kFloat && !g.nchw && g.cg % 4 == 0 && g.in_depth % 4 == 0 &&
                      (reinterpret_cast<uintptr_t>(input) & 15) == 0;
  const bool vec_out = kFloat && !g.nchw && g.npg % 4 == 0 && g.out_depth % 4 == 0 &&
                       (reinterpret_cast<uintptr_t>(output) & 15) == 0;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int p = static_cast<int>(item % g.pixels);
    const int slice = static_cast<int>(item / g.pixels);  // grp * chunks + chunk
    const int grp = slice / chunks;
    const int c0 = (slice % chunks) * kColumnChannels;
    const int nc = min(kColumnChannels, g.npg - c0);
    const int co0 = grp * g.npg + c0;
    const int ow = p % g.out_w, oh = (p / g.out_w) % g.out_h, n = p / g.out_w / g.out_h;
    Acc acc[kColumnChannels];
#pragma unroll
    for (int j = 0; j < kColumnChannels; ++j) acc[j] = 0;
    long long a_sum = 0;
    int t = 0;
    // The lookups of input code a at filter row t (tap and channel) for the thread's channels.
    auto lookups = [&](uint32_t a) {
      a_sum += a;
      const uint16_t* w = codes + static_cast<int64_t>(t++) * g.out_depth + co0;
      uint32_t wc[kColumnChannels];  // the row's filter codes << 8 for the thread's channels
      if (vec_codes) {
        // Two 16-byte loads (broadcast: the same in every lane) instead of 16 two-byte ones, half of the
        // shared loads of a tap.
        const uint4 lo = *reinterpret_cast<const uint4*>(w);
        const uint4 hi = nc > 8 ? *reinterpret_cast<const uint4*>(w + 8) : make_uint4(0, 0, 0, 0);
        const uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int j = 0; j < kColumnChannels; ++j) wc[j] = (words[j / 2] >> (16 * (j % 2))) & 0xFFFFu;
      } else {
#pragma unroll
        for (int j = 0; j < kColumnChannels; ++j) wc[j] = j < nc ? w[j] : 0u;
      }
#pragma unroll
      for (int j = 0; j < kColumnChannels; ++j) {
        if (j < nc) acc[j] += cols[wc[j] + a];
      }
    };
    for (int kh = 0; kh < g.filter_h; ++kh) {
      const int ih = oh * g.stride_h - g.pad_top + kh * g.dil_h;
      for (int kw = 0; kw < g.filter_w; ++kw) {
        const int iw = ow * g.stride_w - g.pad_left + kw * g.dil_w;
        const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        if constexpr (kFloat) {
          if (vec_in) {
            const float4* src = inside ? reinterpret_cast<const float4*>(
                                             input + ((static_cast<int64_t>(n) * g.in_h + ih) * g.in_w + iw) * g.in_depth +
                                             grp * g.cg)
                                       : nullptr;
            const int quads = g.cg / 4;
            for (int cb = 0; cb < quads; cb += 4) {  // float4s cb .. cb + 3 of the tap's channels
              float4 v0, v1, v2, v3;                 // loaded together; then shifted down, v0 the next
              const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
              v0 = inside ? __ldg(src + cb) : zero;
              v1 = inside && cb + 1 < quads ? __ldg(src + cb + 1) : zero;
              v2 = inside && cb + 2 < quads ? __ldg(src + cb + 2) : zero;
              v3 = inside && cb + 3 < quads ? __ldg(src + cb + 3) : zero;
              // Rolled loops with one copy of the lookups each: unrolled over 16 channels, the kernel's
              // code outgrew the instruction cache (the 16-channel layer ran 1.6x slower).
#pragma unroll 1
              for (int k = min(4, quads - cb); k > 0; --k) {
                uint32_t word = qi.zero_point * 0x01010101u;
                if (inside) {
                  word = static_cast<uint32_t>(QuantizeToCode(v0.x, qi)) |
                         static_cast<uint32_t>(QuantizeToCode(v0.y, qi)) << 8 |
                         static_cast<uint32_t>(QuantizeToCode(v0.z, qi)) << 16 |
                         static_cast<uint32_t>(QuantizeToCode(v0.w, qi)) << 24;
                }
                v0 = v1, v1 = v2, v2 = v3;
#pragma unroll 1
                for (int e = 0; e < 4; ++e, word >>= 8) lookups(word & 0xFFu);
              }
            }
            continue;
          }
        }
        for (int ci = 0; ci < g.cg; ++ci) {
          const int c = grp * g.cg + ci;
          uint32_t a = qi.zero_point;
          if (inside) {
            const int64_t off = g.nchw ? (static_cast<int64_t>(n) * g.in_depth + c) * in_hw + ih * g.in_w + iw
                                       : ((static_cast<int64_t>(n) * g.in_h + ih) * g.in_w + iw) * g.in_depth + c;
            a = QuantizeToCode(ToFloat(input[off]), qi);
          }
          lookups(a);
        }
      }
    }
    T out[kColumnChannels];
#pragma unroll
    for (int j = 0; j < kColumnChannels; ++j) {
      if (j >= nc) continue;
      const int co = co0 + j;
      const DequantizeTerms<Real> deq = ChannelTerms(epi.quant, per_channel, co, deq_tensor);
      out[j] = FromReal<T>(deq(static_cast<int64_t>(acc[j]), a_sum, static_cast<int64_t>(sums[co])));
      if (epi.debug_acc != nullptr) epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co] = static_cast<int64_t>(acc[j]);
    }
    bool stored = false;
    if constexpr (kFloat) {
      if (vec_out) {  // nc is a multiple of 4 here (npg and c0 are)
        float4* dst = reinterpret_cast<float4*>(output + static_cast<int64_t>(p) * g.out_depth + co0);
#pragma unroll
        for (int k = 0; k < kColumnChannels / 4; ++k) {
          if (4 * k < nc) dst[k] = make_float4(out[4 * k], out[4 * k + 1], out[4 * k + 2], out[4 * k + 3]);
        }
        stored = true;
      }
    }
    if (!stored) {
#pragma unroll
      for (int j = 0; j < kColumnChannels; ++j) {
        if (j < nc) StoreOutput(g, output, p, co0 + j, out[j]);
      }
    }
    if (epi.debug_act_sum != nullptr && c0 == 0) epi.debug_act_sum[static_cast<int64_t>(p) * g.groups + grp] = a_sum;
  }
}

}  // namespace gpu_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COLUMNS_CUH_
