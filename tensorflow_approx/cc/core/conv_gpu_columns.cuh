// The columns kernel: groups of at most 32 output channels (the 3-, 16- and 32-channel layers of
// small networks), which leave most lanes of a tile of 64+ channels idle and, in the direct kernel,
// quantize both operands for every lookup. Internal: included by conv_gpu.cu only.
//
// One thread per output pixel and up to 16 or 32 channels of its group (ColumnChannels), accumulated
// in registers: the input code of each tap is quantized once and serves every channel. The block holds
// the table by weight code (cols[(w << 8) | a] = LUT[(a << 8) | w]) and the filter's codes (times 256,
// the offset of their column) in shared memory: adjacent lanes take adjacent pixels of one group, so a
// lookup's weight is the same in every lane (its codes are broadcast) and the banks follow the
// activation codes, which ReLU zeros and padding make often equal (a broadcast too). Each block builds
// its shared memory itself (ColumnsShared), from the caller's table by weight code where it has one.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COLUMNS_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COLUMNS_CUH_

#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tfapprox {
namespace gpu_internal {

constexpr int kColumnThreads = 512;  // 16 warps: one block per multiprocessor, latency hidden by warps

// A thread's output channels: 16, or 32 for groups of 17-32 channels, so that each input code of a
// 32-channel group is loaded and quantized once per tap, not once per 16 channels (a 1x1 layer has
// only 16 or 32 lookups per code to spread that over).
// 32-bit sums only: the wide sums of 32 channels would not fit the registers of 512 threads.
inline int ColumnChannels(int npg, bool wide) { return !wide && npg > 16 ? 32 : 16; }

// Shared memory of a block: the transposed table, the filter codes << 8 (HWIO order), and per output
// channel its filter term of the dequantization (DequantizeTerms' filter_sum_scale * (filter_sum -
// filter_sum_offset), as a double or a float). Each block builds them itself from the table and the
// filter: no pre-pass launch, no workspace (a pre-pass writing them once per call took 5-6 us on the
// H200, most of a 1x1 layer's setup).
struct ColumnsShared {
  size_t codes_offset, terms_offset, bytes;
  ColumnsShared(int64_t filter_elements, int64_t out_depth) {
    codes_offset = static_cast<size_t>(kLutEntries) * 2;
    terms_offset = codes_offset + (static_cast<size_t>(filter_elements) * 2 + 15) / 16 * 16;
    bytes = terms_offset + static_cast<size_t>(out_depth) * sizeof(double);
  }
};

// A 16-bit load from a shared-memory address.
__device__ __forceinline__ uint32_t LoadShared16(uint32_t address) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(address));
  return v;
}

template <typename T, bool kWide, int kChannels>
__global__ void __launch_bounds__(kColumnThreads, 1)
    ColumnsConvKernel(const T* __restrict__ input, const T* __restrict__ filter, const uint16_t* __restrict__ lut,
                      const uint16_t* __restrict__ lut_by_weight, T* __restrict__ output, ColumnsShared layout,
                      GpuGeometry g, Epilogue epi) {
  using Real = typename RealOf<T>::type;
  const QuantParams qi = epi.quant->input;
  const FastQuantizer quantizer(qi);
  const DequantizeTerms<Real> deq_tensor = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  using Acc = typename std::conditional<kWide, unsigned long long, uint32_t>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* cols = reinterpret_cast<uint16_t*>(smem);
  uint16_t* codes = reinterpret_cast<uint16_t*>(smem + layout.codes_offset);
  Real* filter_terms = reinterpret_cast<Real*>(smem + layout.terms_offset);
  const uint32_t cols_address = static_cast<uint32_t>(__cvta_generic_to_shared(cols));
  // Both ways below issue a thread's loads of the table 8 vectors at a time before storing any: the table
  // is often out of L2 by the next call (a layer's outputs pass through it), and a load at a time waited
  // for memory 16 times in a row (H200: the stem 0.307 -> 0.301 ms, 2% of its call).
  constexpr int kBatch = 8;
  if (lut_by_weight != nullptr) {  // the caller's copy of it: coalesced 16-byte loads
    const uint4* src = reinterpret_cast<const uint4*>(lut_by_weight);
    uint4* dst = reinterpret_cast<uint4*>(cols);
    constexpr int kVectors = kLutEntries / 8;
    static_assert(kVectors % (kBatch * kColumnThreads) == 0, "the table's vectors come in whole batches");
    for (int i = threadIdx.x; i < kVectors; i += kBatch * kColumnThreads) {
      uint4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) v[u] = __ldg(src + i + u * kColumnThreads);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) dst[i + u * kColumnThreads] = v[u];
    }
  } else {
    // The table by weight code: cols[(w << 8) | a] = LUT[(a << 8) | w]. Item i reads LUT row a = i % 256,
    // entries w0 .. w0 + 15 (w0 = 16 * (i / 256)): one whole 32-byte sector per lane (the table is 16-byte
    // aligned); adjacent lanes take adjacent rows, so their stores of one w land on adjacent shared
    // addresses, free of bank conflicts. kBatch / 2 items per round.
    constexpr int kItems = kLutEntries / 16, kRound = kBatch / 2;
    for (int i = threadIdx.x; i < kItems; i += kRound * kColumnThreads) {
      uint4 v[kRound][2];
#pragma unroll
      for (int u = 0; u < kRound; ++u) {
        const int item = i + u * kColumnThreads;  // kItems is a multiple of kRound * kColumnThreads
        const uint4* src = reinterpret_cast<const uint4*>(lut + ((item & 255) << 8) + (item >> 8) * 16);
        v[u][0] = __ldg(src);
        v[u][1] = __ldg(src + 1);
      }
#pragma unroll
      for (int u = 0; u < kRound; ++u) {
        const int item = i + u * kColumnThreads;
        const int a = item & 255, w0 = (item >> 8) * 16;
        const uint32_t words[8] = {v[u][0].x, v[u][0].y, v[u][0].z, v[u][0].w, v[u][1].x, v[u][1].y, v[u][1].z, v[u][1].w};
#pragma unroll
        for (int k = 0; k < 16; ++k) cols[((w0 + k) << 8) | a] = static_cast<uint16_t>(words[k / 2] >> (16 * (k % 2)));
      }
    }
    static_assert(kItems % (kRound * kColumnThreads) == 0, "the table's items come in whole rounds");
  }
  {
    // The filter's codes, times 256 (the offset of their column).
    const QuantParams qf_tensor = epi.quant->filter;
    const int filter_elements = g.taps * g.out_depth;
    for (int i = threadIdx.x; i < filter_elements; i += kColumnThreads) {
      // The modulo only with per-channel ranges.
      const QuantParams qf = per_channel ? ChannelFilter(epi.quant, true, i % g.out_depth, qf_tensor) : qf_tensor;
      codes[i] = static_cast<uint16_t>(QuantizeToCode(ToFloat(filter[i]), qf) << 8);
    }
    __syncthreads();
    // Each output channel's code sum, a warp per channel (its lanes across the taps), then its filter term.
    const int lane = threadIdx.x & 31;
    for (int co = threadIdx.x / 32; co < g.out_depth; co += kColumnThreads / 32) {
      int32_t sum = 0;  // taps * 255 < 2^31: the plan takes this kernel only for taps < 2^23
      for (int t = lane; t < g.taps; t += 32) sum += codes[t * g.out_depth + co] >> 8;
      sum = __reduce_add_sync(0xffffffffu, sum);
      if (lane == 0) {
        const DequantizeTerms<Real> deq = ChannelTerms(epi.quant, per_channel, co, deq_tensor);
        filter_terms[co] = deq.FilterTerm(sum);
      }
    }
    __syncthreads();
  }
  const int chunks = (g.npg + kChannels - 1) / kChannels;
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
    const int c0 = (slice % chunks) * kChannels;
    const int nc = min(kChannels, g.npg - c0);
    const bool full = nc == kChannels;  // the thread has all its channels (every chunk but a group's last)
    const int co0 = grp * g.npg + c0;
    const int ow = p % g.out_w, oh = (p / g.out_w) % g.out_h, n = p / g.out_w / g.out_h;
    Acc acc[kChannels];
#pragma unroll
    for (int j = 0; j < kChannels; ++j) acc[j] = 0;
    long long a_sum = 0;
    int t = 0;
    // The lookups of input code a at filter row t (tap and channel) for the thread's channels.
    auto lookups = [&](uint32_t a) {
      a_sum += a;
      const uint16_t* w = codes + static_cast<int64_t>(t++) * g.out_depth + co0;
      uint32_t wc[kChannels];  // the row's filter codes << 8 for the thread's channels
      if (vec_codes) {
        // 16-byte loads (broadcast: the same in every lane), 8 codes each, instead of two-byte ones.
        uint32_t words[kChannels / 2];
#pragma unroll
        for (int q = 0; q < kChannels / 8; ++q) {
          const uint4 v = 8 * q < nc ? *reinterpret_cast<const uint4*>(w + 8 * q) : make_uint4(0, 0, 0, 0);
          words[4 * q] = v.x, words[4 * q + 1] = v.y, words[4 * q + 2] = v.z, words[4 * q + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < kChannels; ++j) wc[j] = (words[j / 2] >> (16 * (j % 2))) & 0xFFFFu;
      } else {
#pragma unroll
        for (int j = 0; j < kChannels; ++j) wc[j] = j < nc ? w[j] : 0u;
      }
      // A lookup: the entry of the activation's column at row wc[j]. Shared addresses as 32-bit integers:
      // one shift-add of the weight's offset to the column's address per lookup (from pointers, the
      // compiler added the codes first and then scaled and based the sum).
      uint32_t col_address;
      asm("add.u32 %0, %1, %2;\n" : "=r"(col_address) : "r"(cols_address), "r"(2 * a));
      auto lookup = [&](int j) { return LoadShared16(col_address + 2 * wc[j]); };
      if (full) {
        // No predicates: the lookups issue back to back. Predicated on j < nc, the compiler (at the
        // register limit) chained each lookup's add behind its load, one lookup in flight at a time.
#pragma unroll
        for (int j = 0; j < kChannels; ++j) acc[j] += lookup(j);
      } else {
#pragma unroll
        for (int j = 0; j < kChannels; ++j) {
          if (j < nc) acc[j] += lookup(j);
        }
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
                if (inside) word = quantizer.Quantize4(v0);
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
            a = quantizer.Quantize(ToFloat(input[off]));
          }
          lookups(a);
        }
      }
    }
    // DequantizeTerms in pieces: the pixel's code sum converted once (its offset, taps * the input's
    // code_shift, is every channel's: one input range) and each channel's filter term once per block.
    const Real act = deq_tensor.Act(a_sum);
    auto value = [&](int j) -> T {
      const int co = co0 + j;
      const DequantizeTerms<Real> deq = ChannelTerms(epi.quant, per_channel, co, deq_tensor);
      return FromReal<T>(deq.Combine(static_cast<int64_t>(acc[j]) - deq.acc_offset, act, filter_terms[co]));
    };
    // Each value stored as soon as it is made (holding a row of 32 outputs spilled registers).
    bool stored = false;
    if constexpr (kFloat) {
      if (vec_out) {  // nc is a multiple of 4 here (npg and c0 are)
        float4* dst = reinterpret_cast<float4*>(output + static_cast<int64_t>(p) * g.out_depth + co0);
#pragma unroll
        for (int k = 0; k < kChannels / 4; ++k) {
          if (4 * k < nc) dst[k] = make_float4(value(4 * k), value(4 * k + 1), value(4 * k + 2), value(4 * k + 3));
        }
        stored = true;
      }
    }
    if (!stored) {
#pragma unroll
      for (int j = 0; j < kChannels; ++j) {
        if (j < nc) StoreOutput(g, output, p, co0 + j, value(j));
      }
    }
    if (epi.debug_acc != nullptr) {
#pragma unroll
      for (int j = 0; j < kChannels; ++j) {  // (unrolled: acc stays in registers)
        if (j < nc) epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0 + j] = static_cast<int64_t>(acc[j]);
      }
    }
    if (epi.debug_act_sum != nullptr && c0 == 0) epi.debug_act_sum[static_cast<int64_t>(p) * g.groups + grp] = a_sum;
  }
}

}  // namespace gpu_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COLUMNS_CUH_
