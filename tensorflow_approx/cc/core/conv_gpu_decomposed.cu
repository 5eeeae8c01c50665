// The decomposed convolution on the tensor cores (see conv_gpu_decomposed.h). Built, like conv_gpu.cu,
// with -fmad=false: the codes (QuantizeToCode) and the outputs (DequantizeTerms) must round exactly as
// the CPU build and the lookup kernels do.
//
// The GEMM. For output pixel p, output channel co of group grp and spatial tap t = (kh, kw):
//   A[p][t, r, ci] = u[r][a(p, t, ci)]     (a: the input code at the tap, the zero point if padded)
//   B[t, r, ci][co] = v[r][w(t, ci, co)]
// and acc[p][co] = sum_k A[p][k] B[k][co] + sum_taps alpha[a] + sum_taps beta[w] + taps * c0.
// A is never built as a matrix: a pre-pass writes, per input pixel and group, the slice
// [r][ci] of u values (slice_bytes = terms * cg rounded up to 16 bytes, zeros after the last term),
// the "planes"; the GEMM gathers, for each pixel of its tile and each 16-byte chunk of a K tile, the
// chunk of the pixel's tap from the planes (cp.async straight into shared memory). A padded tap reads a
// slice of the zero point's u values (one per group, after the pixels' slices): padding is the zero
// point's code, whose u is not 0 in general. The filter's planes are B, [co][K] (K-contiguous: the
// "col" operand of mma.sync.m16n8k32.row.col), K padded with zeros to whole K tiles.
// The free terms are per pixel (sum of alpha over the patch, like act_sum: from per input pixel sums
// of the pre-pass) and per channel (sum of beta, from a filter pass, plus taps * c0).
//
// Exact: int32 tensor-core sums hold taps * terms <= kGpuDecomposedMaxReduction products of at most
// 16384 in magnitude (GpuDecomposedSupports refuses more); zero padding adds nothing; the free terms
// and the epilogue are in int64.
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"

#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>
#include <vector>

#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/conv_kernels.h"

namespace tfapprox {
namespace {

using namespace gpu_internal;  // NOLINT: the shared device pieces, written as if declared here

constexpr int kChunk = 16;         // bytes per cp.async and per ldmatrix row
constexpr int kBK = 64;            // K bytes per pipeline stage: two mma k steps of 32
constexpr int kChunksPerRow = kBK / kChunk;
constexpr int kStages = 4;         // cp.async pipeline depth (loads of 3 stages in flight during the mma)
constexpr int kPrepThreads = 256;  // threads per block of the pre-passes

// ---------------------------------------------------------------------------------------------------
// Workspace layout (offsets 16-byte aligned, so the planes take 16-byte copies).
struct Layout {
  int64_t in_pixels = 0;    // batch * in_h * in_w
  int64_t items = 0;        // in_pixels * groups: the (pixel, group) slices of the planes
  int slice_bytes = 0;      // terms * cg rounded up to kChunk
  int slice_chunks = 0;
  int64_t k_chunks = 0;     // spatial taps * slice_chunks: K in chunks
  int64_t k_padded = 0;     // K bytes rounded up to kBK: a filter row of the B planes
  size_t codes = 0;         // uint8 [in_pixels][in_depth]: the input codes (NHWC)
  size_t planes = 0;        // int8 [items + groups][slice_bytes]: u planes, then the zero point's
  size_t alpha_sums = 0;    // int64 [items]: sum over the group's channels of alpha[code]
  size_t code_sums = 0;     // int32 [items]: sum of the codes (<= cg * 255 < 2^31 within the K limit)
  size_t filter = 0;        // int8 [out_depth][k_padded]: v planes
  size_t channel_sums = 0;  // uint64 [2][out_depth]: beta sums, then filter code sums (modular adds)
  size_t filter_codes = 0;  // uint8 [out_depth][taps]: the filter codes, K-contiguous (fused filter pass)
  size_t bytes = 0;
};

size_t Align16(size_t x) { return (x + 15) / 16 * 16; }

Layout MakeLayout(const ConvShape& s, int terms) {
  Layout l;
  l.in_pixels = s.batch * s.in_h * s.in_w;
  l.items = l.in_pixels * s.groups();
  l.slice_bytes = static_cast<int>((static_cast<int64_t>(terms) * s.filter_depth + kChunk - 1) / kChunk * kChunk);
  l.slice_chunks = l.slice_bytes / kChunk;
  l.k_chunks = s.filter_h * s.filter_w * l.slice_chunks;
  l.k_padded = (l.k_chunks * kChunk + kBK - 1) / kBK * kBK;
  size_t at = 0;
  l.codes = at;
  at = Align16(at + static_cast<size_t>(s.input_elements()));
  l.planes = at;
  at = Align16(at + static_cast<size_t>(l.items + s.groups()) * l.slice_bytes);
  l.alpha_sums = at;
  at = Align16(at + static_cast<size_t>(l.items) * sizeof(int64_t));
  l.code_sums = at;
  at = Align16(at + static_cast<size_t>(l.items) * sizeof(int32_t));
  l.filter = at;
  at = Align16(at + static_cast<size_t>(s.out_depth) * l.k_padded);
  l.channel_sums = at;
  at = Align16(at + static_cast<size_t>(s.out_depth) * 2 * sizeof(unsigned long long));
  l.filter_codes = at;
  at = Align16(at + static_cast<size_t>(s.filter_elements()));
  l.bytes = at;
  return l;
}

// ---------------------------------------------------------------------------------------------------
// Pre-passes.

// The input codes in NHWC order whatever the data format: one thread per element, coalesced writes
// (and reads, for NHWC).
template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    InputCodesKernel(const T* __restrict__ input, GpuGeometry g, int64_t elements, const GpuQuant* __restrict__ quant,
                     uint8_t* __restrict__ codes) {
  const QuantParams qi = quant->input;
  const int64_t hw = static_cast<int64_t>(g.in_h) * g.in_w;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elements;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t src = i;
    if (g.nchw) {
      const int64_t c = i % g.in_depth, nhw = i / g.in_depth;
      src = (nhw / hw * g.in_depth + c) * hw + nhw % hw;
    }
    codes[i] = QuantizeToCode(ToFloat(input[src]), qi);
  }
}

// The u planes and the per-(pixel, group) sums: one warp per slice. Lane j writes chunks j, j + 32, ...
// (entry e of a slice is term e / cg, channel e % cg; entries past terms * cg are 0), then the lanes
// sum alpha and the codes over the group's channels. Slices items .. items + groups - 1 are the zero
// point's (every code zp; no sums). u and alpha sit in shared memory: every entry is a lookup.
__global__ void __launch_bounds__(kPrepThreads)
    InputPlanesKernel(const uint8_t* __restrict__ codes, GpuGeometry g, Layout l, GpuDecomposition d,
                      const GpuQuant* __restrict__ quant, int8_t* __restrict__ planes,
                      long long* __restrict__ alpha_sums, int32_t* __restrict__ code_sums) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s_alpha = reinterpret_cast<int32_t*>(smem);
  int8_t* s_u = reinterpret_cast<int8_t*>(smem + 256 * sizeof(int32_t));
  for (int i = threadIdx.x; i < 256; i += blockDim.x) s_alpha[i] = d.alpha[i];
  for (int i = threadIdx.x; i < d.terms * 256; i += blockDim.x) s_u[i] = d.u[i];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int zp = quant->input.zero_point;
  const int used = d.terms * g.cg;  // entries of a slice that are not padding
  const int64_t slices = l.items + g.groups;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; item < slices;
       item += warps) {
    const bool zero_point_slice = item >= l.items;
    const int grp = static_cast<int>(item % g.groups);
    const uint8_t* in = zero_point_slice ? codes : codes + (item / g.groups) * g.in_depth + static_cast<int64_t>(grp) * g.cg;
    int8_t* out = planes + item * l.slice_bytes;
    for (int j = lane; j < l.slice_chunks; j += 32) {
      const int e0 = j * kChunk;
      int r = e0 / g.cg, ci = e0 - r * g.cg;
      uint32_t words[4] = {0, 0, 0, 0};
#pragma unroll
      for (int b = 0; b < kChunk; ++b) {
        if (e0 + b < used) {
          const int code = zero_point_slice ? zp : in[ci];
          words[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(s_u[r * 256 + code])) << (8 * (b % 4));
          if (++ci == g.cg) ci = 0, ++r;
        }
      }
      *reinterpret_cast<uint4*>(out + j * kChunk) = make_uint4(words[0], words[1], words[2], words[3]);
    }
    if (zero_point_slice) continue;  // warp-uniform
    long long alpha_sum = 0;
    int code_sum = 0;
    for (int ci = lane; ci < g.cg; ci += 32) {
      const int code = in[ci];
      alpha_sum += s_alpha[code];
      code_sum += code;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      alpha_sum += __shfl_xor_sync(0xFFFFFFFFu, alpha_sum, offset);
      code_sum += __shfl_xor_sync(0xFFFFFFFFu, code_sum, offset);
    }
    if (lane == 0) {
      alpha_sums[item] = alpha_sum;
      code_sums[item] = code_sum;
    }
  }
}

// The input pass in one launch (the default; InputCodesKernel + InputPlanesKernel remain for slices too
// wide to stage, and as GpuDecomposedOptions::separate_prepasses). The separate planes kernel gives a
// whole warp to one slice, of which only slice_chunks lanes work (4 of 32 for 64 channels and one term),
// each with 16 byte loads from global memory in a row, and the codes make a round trip through global
// memory. Here a block takes `per_block` consecutive slices, whose input elements are consecutive in
// NHWC order (element (pixel * groups + grp) * cg + ci): (1) every thread quantizes elements of them
// into shared memory (coalesced reads); (2) groups of `lanes` lanes (a power of two <= 32) sum alpha
// and the codes of a slice from shared memory; (3) every thread writes whole 16-byte chunks of the
// block's planes, which are consecutive too (coalesced stores, every lane busy). The same integer
// results as the separate kernels: the same codes (QuantizeToCode), entries, sums. Block 0 also zeroes
// the per-channel sums that FilterSumsKernel adds into (it runs after this launch on the stream), which
// saves the memset.
constexpr int kInputCodesPerBlock = 8192;  // codes a block of the fused input pass stages (bytes)

// Four codes packed little-endian in a word (byte b: the code of entry b) -> their table entries packed
// the same way.
__device__ __forceinline__ uint32_t LookupBytes(const uint8_t* table, uint32_t codes) {
  return static_cast<uint32_t>(table[codes & 0xFF]) | static_cast<uint32_t>(table[(codes >> 8) & 0xFF]) << 8 |
         static_cast<uint32_t>(table[(codes >> 16) & 0xFF]) << 16 | static_cast<uint32_t>(table[codes >> 24]) << 24;
}

template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    InputPassKernel(const T* __restrict__ input, GpuGeometry g, Layout l, GpuDecomposition d,
                    const GpuQuant* __restrict__ quant, int per_block, int lanes, int8_t* __restrict__ planes,
                    long long* __restrict__ alpha_sums, int32_t* __restrict__ code_sums,
                    unsigned long long* __restrict__ channel_sums) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s_alpha = reinterpret_cast<int32_t*>(smem);
  int8_t* s_u = reinterpret_cast<int8_t*>(smem + 256 * sizeof(int32_t));
  uint8_t* s_codes = reinterpret_cast<uint8_t*>(smem + 256 * sizeof(int32_t) + d.terms * 256);  // [per_block][cg]
  const int tid = threadIdx.x;
  for (int i = tid; i < 256; i += blockDim.x) s_alpha[i] = d.alpha[i];
  for (int i = tid; i < d.terms * 256; i += blockDim.x) s_u[i] = d.u[i];
  if (blockIdx.x == 0) {
    for (int i = tid; i < 2 * g.out_depth; i += blockDim.x) channel_sums[i] = 0;
  }
  const int64_t slices = l.items + g.groups;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block;  // the block's first slice
  const int count = static_cast<int>(min(static_cast<int64_t>(per_block), slices - first));
  // Slices of input pixels; the rest (the last `groups` slices of all) are the zero point's.
  const int real = static_cast<int>(max(int64_t{0}, min(static_cast<int64_t>(count), l.items - first)));
  const QuantParams qi = quant->input;
  const uint8_t zp = static_cast<uint8_t>(qi.zero_point);

  // (1) The codes of the block's slices.
  {
    const int n = count * g.cg, real_n = real * g.cg;
    const int64_t base = first * g.cg;  // element index (NHWC order) of the block's first code
    const int64_t hw = static_cast<int64_t>(g.in_h) * g.in_w;
    if (std::is_same<T, float>::value && !g.nchw && g.cg % 4 == 0 &&
        (reinterpret_cast<uintptr_t>(input) & 15) == 0) {
      // Four codes per 16-byte load (base and real_n are multiples of 4 here, the input 16-byte aligned):
      // four times the bytes in flight per load, and the index arithmetic once per four codes. The pass
      // is bound by its loads' latency, not by bandwidth, with one float per load.
      const float4* src = reinterpret_cast<const float4*>(input + base);
      uint32_t* dst = reinterpret_cast<uint32_t*>(s_codes);
      const int n4 = n / 4, real4 = real_n / 4;  // n is a multiple of 4 too (count * cg)
#pragma unroll 4
      for (int e = tid; e < n4; e += blockDim.x) {
        uint32_t word = zp * 0x01010101u;
        if (e < real4) {
          const float4 v = __ldg(src + e);
          word = static_cast<uint32_t>(QuantizeToCode(v.x, qi)) | static_cast<uint32_t>(QuantizeToCode(v.y, qi)) << 8 |
                 static_cast<uint32_t>(QuantizeToCode(v.z, qi)) << 16 |
                 static_cast<uint32_t>(QuantizeToCode(v.w, qi)) << 24;
        }
        dst[e] = word;
      }
    } else {
#pragma unroll 4
      for (int e = tid; e < n; e += blockDim.x) {  // (unrolled: several loads in flight per thread)
        uint8_t code = zp;
        if (e < real_n) {
          const int64_t i = base + e;
          int64_t src = i;
          if (g.nchw) {
            const int64_t c = i % g.in_depth, nhw = i / g.in_depth;
            src = (nhw / hw * g.in_depth + c) * hw + nhw % hw;
          }
          code = QuantizeToCode(ToFloat(input[src]), qi);
        }
        s_codes[e] = code;
      }
    }
  }
  __syncthreads();

  // (2) The sums of the input pixels' slices: `lanes` lanes per slice, 32 / lanes slices per warp and
  // round. Every lane of a warp runs the same rounds (the shuffles need all of them); the xor offsets
  // stay below `lanes`, inside the slice's aligned group of lanes.
  {
    const int lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const int per_warp = 32 / lanes;
    const int sub = lane / lanes, li = lane - sub * lanes;
    for (int round = warp * per_warp; round < real; round += warps * per_warp) {
      const int item = round + sub;
      long long alpha_sum = 0;
      int code_sum = 0;
      if (item < real) {
        const uint8_t* in = s_codes + item * g.cg;
        for (int ci = li; ci < g.cg; ci += lanes) {
          const int code = in[ci];
          alpha_sum += s_alpha[code];
          code_sum += code;
        }
      }
      for (int offset = lanes / 2; offset > 0; offset /= 2) {
        alpha_sum += __shfl_xor_sync(0xFFFFFFFFu, alpha_sum, offset);
        code_sum += __shfl_xor_sync(0xFFFFFFFFu, code_sum, offset);
      }
      if (li == 0 && item < real) {
        alpha_sums[first + item] = alpha_sum;
        code_sums[first + item] = code_sum;
      }
    }
  }

  // (3) The planes of the block's slices (entry e of a slice: term e / cg, channel e % cg; entries past
  // terms * cg are 0), chunk q of the block at chunk q of its region.
  {
    const int used = d.terms * g.cg;
    const int chunks = count * l.slice_chunks;
    int8_t* out = planes + first * l.slice_bytes;
    if (g.cg % kChunk == 0) {
      // Whole chunks of one term and 16 consecutive channels (entry e0 = j * 16 is a multiple of 16, so is
      // cg): the codes are one aligned 16-byte read (s_codes and item * cg + ci are multiples of 16), the
      // entries u[r][code] byte for byte in the same order as below.
      for (int q = tid; q < chunks; q += blockDim.x) {
        const int item = q / l.slice_chunks, j = q - item * l.slice_chunks;
        const int e0 = j * kChunk;
        uint4 words = make_uint4(0, 0, 0, 0);
        if (e0 < used) {
          const int r = e0 / g.cg, ci = e0 - r * g.cg;
          const uint4 c = *reinterpret_cast<const uint4*>(s_codes + item * g.cg + ci);
          const uint8_t* u = reinterpret_cast<const uint8_t*>(s_u) + r * 256;
          words = make_uint4(LookupBytes(u, c.x), LookupBytes(u, c.y), LookupBytes(u, c.z), LookupBytes(u, c.w));
        }
        *reinterpret_cast<uint4*>(out + static_cast<int64_t>(q) * kChunk) = words;
      }
      return;
    }
    for (int q = tid; q < chunks; q += blockDim.x) {
      const int item = q / l.slice_chunks, j = q - item * l.slice_chunks;
      const uint8_t* in = s_codes + item * g.cg;
      const int e0 = j * kChunk;
      int r = e0 / g.cg, ci = e0 - r * g.cg;
      uint32_t words[4] = {0, 0, 0, 0};
#pragma unroll
      for (int b = 0; b < kChunk; ++b) {
        if (e0 + b < used) {
          words[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(s_u[r * 256 + in[ci]])) << (8 * (b % 4));
          if (++ci == g.cg) ci = 0, ++r;
        }
      }
      *reinterpret_cast<uint4*>(out + static_cast<int64_t>(q) * kChunk) =
          make_uint4(words[0], words[1], words[2], words[3]);
    }
  }
}

// The v planes of the filter: one thread per 16-byte chunk of B ([co][k_padded], chunks of a row
// adjacent: coalesced writes), each weight quantized with its channel's parameters. Chunks past K and
// entries past terms * cg of a slice are 0.
template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    FilterPlanesKernel(const T* __restrict__ filter, GpuGeometry g, Layout l, GpuDecomposition d,
                       const GpuQuant* __restrict__ quant, int8_t* __restrict__ b_planes) {
  const int64_t row_chunks = l.k_padded / kChunk;
  const int64_t total = row_chunks * g.out_depth;
  const int used = d.terms * g.cg;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int co = static_cast<int>(i / row_chunks);
    const int64_t q = i - static_cast<int64_t>(co) * row_chunks;
    uint32_t words[4] = {0, 0, 0, 0};
    if (q < l.k_chunks) {
      const QuantParams qf = quant->ChannelQuant(co).filter;
      const int tap = static_cast<int>(q / l.slice_chunks);  // spatial tap kh * filter_w + kw
      const int e0 = static_cast<int>(q - static_cast<int64_t>(tap) * l.slice_chunks) * kChunk;
      int r = e0 / g.cg, ci = e0 - r * g.cg;
#pragma unroll
      for (int b = 0; b < kChunk; ++b) {
        if (e0 + b < used) {
          const int64_t w_index = (static_cast<int64_t>(tap) * g.cg + ci) * g.out_depth + co;  // HWIO
          const uint32_t code = QuantizeToCode(ToFloat(filter[w_index]), qf);
          words[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(__ldg(d.v + r * 256 + code))) << (8 * (b % 4));
          if (++ci == g.cg) ci = 0, ++r;
        }
      }
    }
    *reinterpret_cast<uint4*>(b_planes + i * kChunk) = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// Per output channel: the sum of beta over its weights and the sum of its codes, added into zeroed
// sums (modular 64-bit adds: a negative beta sum comes out right as int64). Threads of a warp take
// adjacent channels (coalesced HWIO reads), each a run of kFilterRun taps. With codes_out (the fused
// path) it also writes every weight's code, K-contiguous per channel ([co][taps]: a thread's run is 32
// consecutive bytes), so that FilterPlanesFromCodesKernel quantizes nothing: each weight is quantized
// once per call instead of once per term, and read coalesced instead of with a stride of out_depth.
constexpr int kFilterRun = 32;
template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    FilterSumsKernel(const T* __restrict__ filter, GpuGeometry g, GpuDecomposition d,
                     const GpuQuant* __restrict__ quant, unsigned long long* __restrict__ sums,
                     uint8_t* __restrict__ codes_out) {
  const int64_t runs = (static_cast<int64_t>(g.taps) + kFilterRun - 1) / kFilterRun * g.out_depth;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < runs;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int co = static_cast<int>(idx % g.out_depth);
    const int k0 = static_cast<int>(idx / g.out_depth) * kFilterRun;
    const QuantParams qf = quant->ChannelQuant(co).filter;
    long long beta_sum = 0, code_sum = 0;
    for (int k = k0; k < min(g.taps, k0 + kFilterRun); ++k) {
      const uint32_t code = QuantizeToCode(ToFloat(filter[static_cast<int64_t>(k) * g.out_depth + co]), qf);
      beta_sum += __ldg(d.beta + code);
      code_sum += code;
      if (codes_out != nullptr) codes_out[static_cast<int64_t>(co) * g.taps + k] = static_cast<uint8_t>(code);
    }
    atomicAdd(&sums[co], static_cast<unsigned long long>(beta_sum));
    atomicAdd(&sums[g.out_depth + co], static_cast<unsigned long long>(code_sum));
  }
}

// The v planes of the filter from the codes FilterSumsKernel wrote: FilterPlanesKernel's chunks and
// entries, with each entry's code read from the channel's K-contiguous codes (adjacent threads read
// adjacent bytes) and v from shared memory.
__global__ void __launch_bounds__(kPrepThreads)
    FilterPlanesFromCodesKernel(const uint8_t* __restrict__ f_codes, GpuGeometry g, Layout l, GpuDecomposition d,
                                int8_t* __restrict__ b_planes) {
  extern __shared__ __align__(16) unsigned char smem[];
  int8_t* s_v = reinterpret_cast<int8_t*>(smem);  // [terms][256]
  for (int i = threadIdx.x; i < d.terms * 256; i += blockDim.x) s_v[i] = d.v[i];
  __syncthreads();
  const int64_t row_chunks = l.k_padded / kChunk;
  const int64_t total = row_chunks * g.out_depth;
  const int used = d.terms * g.cg;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int co = static_cast<int>(i / row_chunks);
    const int64_t q = i - static_cast<int64_t>(co) * row_chunks;
    uint32_t words[4] = {0, 0, 0, 0};
    if (q < l.k_chunks) {
      const int tap = static_cast<int>(q / l.slice_chunks);  // spatial tap kh * filter_w + kw
      const int e0 = static_cast<int>(q - static_cast<int64_t>(tap) * l.slice_chunks) * kChunk;
      const uint8_t* codes = f_codes + static_cast<int64_t>(co) * g.taps + static_cast<int64_t>(tap) * g.cg;
      if (g.cg % kChunk == 0) {
        // As in InputPassKernel: one term, 16 consecutive channels, one aligned 16-byte read (f_codes is
        // 16-byte aligned, taps and tap * cg + ci are multiples of 16).
        if (e0 < used) {
          const int r = e0 / g.cg, ci = e0 - r * g.cg;
          const uint4 c = __ldg(reinterpret_cast<const uint4*>(codes + ci));
          const uint8_t* v = reinterpret_cast<const uint8_t*>(s_v) + r * 256;
          words[0] = LookupBytes(v, c.x), words[1] = LookupBytes(v, c.y);
          words[2] = LookupBytes(v, c.z), words[3] = LookupBytes(v, c.w);
        }
        *reinterpret_cast<uint4*>(b_planes + i * kChunk) = make_uint4(words[0], words[1], words[2], words[3]);
        continue;
      }
      int r = e0 / g.cg, ci = e0 - r * g.cg;
#pragma unroll
      for (int b = 0; b < kChunk; ++b) {
        if (e0 + b < used) {
          words[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(s_v[r * 256 + codes[ci]])) << (8 * (b % 4));
          if (++ci == g.cg) ci = 0, ++r;
        }
      }
    }
    *reinterpret_cast<uint4*>(b_planes + i * kChunk) = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core pieces, as PTX (sm_80+): asynchronous 16-byte copies, ldmatrix, the int8 mma.

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory without passing through registers; fill = false writes 16 zero
// bytes instead (src-size 0: the source is not read).
__device__ __forceinline__ void CopyChunkAsync(uint32_t dst, const void* src, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)),
               "r"(fill ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CommitCopies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most `kPending` committed groups of this thread's copies are still in flight.
template <int kPending>
__device__ __forceinline__ void WaitCopies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8 x 8 matrices of 16-bit elements (here: 8 rows x 16 bytes each), lanes 8m .. 8m + 7 giving the
// row addresses of matrix m; register m of lane l gets row l / 4, bytes 4 * (l % 4) .. + 3 of matrix m.
__device__ __forceinline__ void LoadMatrices(uint32_t address, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// acc += A (16 x 32 int8, row-major fragment) * B (32 x 8 int8, column-major fragment), int32 sums.
// Fragments (PTX ISA, mma.m16n8k32 with .s8), with g = lane / 4 and t = lane % 4:
//   a[0]: row g,     k 4t .. 4t + 3     a[1]: row g + 8, k 4t .. 4t + 3
//   a[2]: row g,     k 16 + 4t .. + 3   a[3]: row g + 8, k 16 + 4t .. + 3
//   b[0]: column g,  k 4t .. 4t + 3     b[1]: column g,  k 16 + 4t .. + 3
//   acc[0], acc[1]: row g, columns 2t, 2t + 1;  acc[2], acc[3]: row g + 8, the same columns.
__device__ __forceinline__ void MmaInt8(int (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A stage holds rows (pixels of A, channels of B) of kBK = 64 bytes, four 16-byte chunks. Chunk c of row
// r is stored at chunk c ^ ((r / 2) % 4): the eight rows an ldmatrix phase reads (8 consecutive rows,
// one logical chunk) then fall on eight different 16-byte bank groups, where unswizzled rows two apart
// would share them (64-byte rows: 4-way conflicts).
__device__ __forceinline__ int StageOffset(int row, int chunk) {
  return row * kBK + ((chunk ^ ((row >> 1) & 3)) << 4);
}

// ---------------------------------------------------------------------------------------------------
// The implicit GEMM. A block computes a BM x BN tile (pixels x output channels of one group) over the
// whole K; warps are arranged WARPS_M x WARPS_N, each owning (BM / WARPS_M) x (BN / WARPS_N) outputs as
// MT x NT mma tiles of 16 x 8. kStages-deep cp.async pipeline: the copies of the next stages are in
// flight while the tensor cores work on the current one.
struct GemmArgs {
  const int8_t* planes;
  const int8_t* b_planes;
  const long long* alpha_sums;
  const int32_t* code_sums;
  const unsigned long long* channel_sums;  // [2][out_depth]
  const int32_t* alpha;                    // the decomposition's, for the zero point of padded taps
  long long taps_c0;                       // taps * c0
  Layout l;
  int m_tiles, n_tiles, k_tiles;
  bool pair_stores;  // NHWC, even npg, output aligned to two elements (see the epilogue)
};

// Two adjacent outputs as one aligned store (the caller checked the alignment): the first at the lower
// address, as two scalar stores would put them.
__device__ __forceinline__ void StorePair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void StorePair(double* p, double a, double b) {
  *reinterpret_cast<double2*>(p) = make_double2(a, b);
}
__device__ __forceinline__ void StorePair(__half* p, __half a, __half b) {
  *reinterpret_cast<__half2*>(p) = __halves2half2(a, b);
}
__device__ __forceinline__ void StorePair(__nv_bfloat16* p, __nv_bfloat16 a, __nv_bfloat16 b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __halves2bfloat162(a, b);
}

template <int BM, int BN>
constexpr int GemmSmemBytes() {
  return kStages * (BM + BN) * kBK + BM * static_cast<int>(sizeof(int4)) + BM * 2 * static_cast<int>(sizeof(long long));
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, bool kLdmatrix>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32)
    DecomposedGemmKernel(GemmArgs args, GpuGeometry g, Epilogue epi, T* __restrict__ output) {
  constexpr int NT_THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  constexpr int A_CHUNKS = BM * kChunksPerRow / NT_THREADS;  // per thread per stage
  constexpr int B_CHUNKS = BN * kChunksPerRow / NT_THREADS;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles of whole 16 x 16 (ldmatrix x4 of B: two n8 tiles)");
  static_assert(A_CHUNKS >= 1 && A_CHUNKS * NT_THREADS == BM * kChunksPerRow, "A loader");
  static_assert(B_CHUNKS >= 1 && B_CHUNKS * NT_THREADS == BN * kChunksPerRow, "B loader");
  using Real = typename RealOf<T>::type;

  // (Dynamic shared memory starts at offset 0 of the block's: aligned for 16-byte copies and ldmatrix,
  // and rows of a stage start on 64-byte boundaries, which the swizzle's bank reasoning assumes.)
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* s_a = smem;                                       // [kStages][BM][kBK]
  unsigned char* s_b = s_a + kStages * BM * kBK;                   // [kStages][BN][kBK]
  int4* s_pix = reinterpret_cast<int4*>(s_b + kStages * BN * kBK);  // [BM]
  long long* s_alpha = reinterpret_cast<long long*>(s_pix + BM);   // [BM]: alpha summed over the patch
  long long* s_codes = s_alpha + BM;                               // [BM]: codes summed over the patch

  const Layout& l = args.l;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
  const int tile = blockIdx.x;
  const int mt_index = tile % args.m_tiles;
  const int rest = tile / args.m_tiles;
  const int nt_index = rest % args.n_tiles;
  const int grp = rest / args.n_tiles;
  const int m0 = mt_index * BM, n0 = nt_index * BN;
  const int in_hw = g.in_h * g.in_w;

  // Pixel p of the tile: (first input pixel of its image, top row, left column, valid).
  for (int i = tid; i < BM; i += NT_THREADS) {
    const int p = m0 + i;
    int4 info = make_int4(0, 0, 0, 0);
    if (p < g.pixels) {
      const int ow = p % g.out_w, t = p / g.out_w;
      const int oh = t % g.out_h, n = t / g.out_h;
      info = make_int4(n * in_hw, oh * g.stride_h - g.pad_top, ow * g.stride_w - g.pad_left, 1);
    }
    s_pix[i] = info;
  }
  __syncthreads();

  const int8_t* zero_point_slice = args.planes + (l.items + grp) * l.slice_bytes;
  // The loaders' fixed parts. Copy idx = tid + i * NT_THREADS of a stage is chunk idx % kChunksPerRow of
  // row idx / kChunksPerRow; NT_THREADS being a multiple of kChunksPerRow, a thread's chunk column is
  // the same in every copy and every stage, and its rows are fixed: their pixels (A) and filter rows
  // (B) are taken once, into registers.
  static_assert(NT_THREADS % kChunksPerRow == 0, "a thread's chunk column is fixed");
  constexpr int kRowsPerPass = NT_THREADS / kChunksPerRow;
  const int load_col = tid % kChunksPerRow, load_row = tid / kChunksPerRow;
  int4 a_pix[A_CHUNKS];
#pragma unroll
  for (int i = 0; i < A_CHUNKS; ++i) a_pix[i] = s_pix[load_row + i * kRowsPerPass];
  const int8_t* b_src[B_CHUNKS];
#pragma unroll
  for (int i = 0; i < B_CHUNKS; ++i) {
    const int channel = n0 + load_row + i * kRowsPerPass;  // within the group
    b_src[i] = channel < g.npg
                   ? args.b_planes + static_cast<int64_t>(grp * g.npg + channel) * l.k_padded + load_col * kChunk
                   : nullptr;
  }
  // Where the thread's A chunk of the next stage to load lies in K: chunk a_kc of K, chunk a_j of
  // spatial tap (a_kh, a_kw)'s slice. Stages are loaded in order (kt = 0, 1, 2, ...: the prologue's, then
  // the main loop's kt + kStages - 1), so each load steps it by kChunksPerRow chunks, with no division
  // (the earlier loader divided a 64-bit chunk index per copy and stage, most of a stage's instructions).
  const int k_chunks = static_cast<int>(l.k_chunks);  // K bytes < 2^31 (the reduction limit)
  int a_kc = load_col;
  int a_j = load_col % l.slice_chunks;
  int a_kh = (load_col / l.slice_chunks) / g.filter_w;
  int a_kw = (load_col / l.slice_chunks) - a_kh * g.filter_w;
  // Stage `slot` <- K tile kt: A chunk c of pixel row r is chunk j of spatial tap `tap` of the pixel's
  // patch; B chunk c of channel row r is bytes kt * kBK + 16c of that channel's filter row.
  auto load_stage = [&](int slot, int kt) {
    const uint32_t a_base = SharedAddress(s_a + slot * BM * kBK);
    const bool k_inside = a_kc < k_chunks;
    const int dh = a_kh * g.dil_h, dw = a_kw * g.dil_w;
#pragma unroll
    for (int i = 0; i < A_CHUNKS; ++i) {
      const int row = load_row + i * kRowsPerPass;
      const int4 pix = a_pix[i];
      const int8_t* src = args.planes;
      bool fill = false;
      if (pix.w && k_inside) {
        const int ih = pix.y + dh, iw = pix.z + dw;
        const bool inside = static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w);
        const int8_t* slice =
            inside ? args.planes + (static_cast<int64_t>(pix.x + ih * g.in_w + iw) * g.groups + grp) * l.slice_bytes
                   : zero_point_slice;
        src = slice + a_j * kChunk;
        fill = true;
      }
      CopyChunkAsync(a_base + StageOffset(row, load_col), src, fill);
    }
    // Step to the next stage's chunk: kChunksPerRow chunks on, across as many slice ends as it passes
    // (slices of fewer than kChunksPerRow chunks: several).
    a_kc += kChunksPerRow;
    a_j += kChunksPerRow;
    while (a_j >= l.slice_chunks) {
      a_j -= l.slice_chunks;
      if (++a_kw == g.filter_w) a_kw = 0, ++a_kh;
    }
    const uint32_t b_base = SharedAddress(s_b + slot * BN * kBK);
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) {
      const int row = load_row + i * kRowsPerPass;
      const bool fill = b_src[i] != nullptr;
      CopyChunkAsync(b_base + StageOffset(row, load_col), fill ? b_src[i] + static_cast<int64_t>(kt) * kBK : args.b_planes,
                     fill);
    }
  };

  // The first kStages - 1 stages in flight (a group per stage, empty past K, so that the count of
  // groups stays uniform for WaitCopies).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < args.k_tiles) load_stage(s, s);
    CommitCopies();
  }

  // Meanwhile the free terms of the tile's pixels: alpha and the codes over the patch, a padded tap
  // counting cg zero-point codes. (Read in the epilogue, after the main loop's barriers.)
  {
    const int zp = epi.quant->input.zero_point;
    const long long pad_alpha = static_cast<long long>(g.cg) * __ldg(args.alpha + zp);
    const long long pad_codes = static_cast<long long>(g.cg) * zp;
    for (int i = tid; i < BM; i += NT_THREADS) {
      const int4 pix = s_pix[i];
      long long alpha_sum = 0, code_sum = 0;
      if (pix.w) {
        for (int kh = 0; kh < g.filter_h; ++kh) {
          const int ih = pix.y + kh * g.dil_h;
          for (int kw = 0; kw < g.filter_w; ++kw) {
            const int iw = pix.z + kw * g.dil_w;
            if (static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) &&
                static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w)) {
              const int64_t item = static_cast<int64_t>(pix.x + ih * g.in_w + iw) * g.groups + grp;
              alpha_sum += __ldg(args.alpha_sums + item);
              code_sum += __ldg(args.code_sums + item);
            } else {
              alpha_sum += pad_alpha;
              code_sum += pad_codes;
            }
          }
        }
        if (epi.debug_act_sum != nullptr && nt_index == 0) {
          epi.debug_act_sum[static_cast<int64_t>(m0 + i) * g.groups + grp] = code_sum;
        }
      }
      s_alpha[i] = alpha_sum;
      s_codes[i] = code_sum;
    }
  }

  int acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0;

  const int group_id = lane >> 2, in_group = lane & 3;  // the fragments' g and t
  const int matrix = lane >> 3, matrix_row = lane & 7;   // ldmatrix: which matrix and row lane gives
  for (int kt = 0; kt < args.k_tiles; ++kt) {
    WaitCopies<kStages - 2>();  // this thread's copies of stage kt have landed...
    __syncthreads();            // ...and everyone's; everyone is also done with stage kt - 1
    if (kt + kStages - 1 < args.k_tiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
    CommitCopies();

    const unsigned char* a_stage = s_a + (kt % kStages) * BM * kBK;
    const unsigned char* b_stage = s_b + (kt % kStages) * BN * kBK;
#pragma unroll
    for (int ks = 0; ks < kBK / 32; ++ks) {
      uint32_t a[MT][4], b[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row0 = warp_m * WM + mt * 16;
        if (kLdmatrix) {
          // Matrices 0..3: rows +0 / +8 (bit 0 of m) x k bytes +0 / +16 (bit 1): a[0..3] in order.
          LoadMatrices(SharedAddress(a_stage + StageOffset(row0 + (matrix & 1) * 8 + matrix_row, 2 * ks + (matrix >> 1))),
                       a[mt]);
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int row = row0 + group_id + (i & 1) * 8;
            a[mt][i] = *reinterpret_cast<const uint32_t*>(a_stage + StageOffset(row, 2 * ks + (i >> 1)) + 4 * in_group);
          }
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        const int row0 = warp_n * WN + np * 16;
        if (kLdmatrix) {
          // Matrices 0..3: channels +0 / +8 (bit 1 of m) x k bytes +0 / +16 (bit 0): b[2np][0..1],
          // b[2np + 1][0..1].
          uint32_t r[4];
          LoadMatrices(SharedAddress(b_stage + StageOffset(row0 + (matrix >> 1) * 8 + matrix_row, 2 * ks + (matrix & 1))),
                       r);
          b[2 * np][0] = r[0], b[2 * np][1] = r[1], b[2 * np + 1][0] = r[2], b[2 * np + 1][1] = r[3];
        } else {
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              const int row = row0 + h * 8 + group_id;
              b[2 * np + h][i] = *reinterpret_cast<const uint32_t*>(b_stage + StageOffset(row, 2 * ks + i) + 4 * in_group);
            }
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) MmaInt8(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
    }
  }
  WaitCopies<0>();  // only empty groups remain; nothing may be in flight when the block exits
  __syncthreads();  // s_alpha and s_codes of every thread (the loop's barriers order them too, K >= 1)

  // Epilogue: acc + the pixel's alpha sum + the channel's beta sum and taps * c0 are the lookups' sums;
  // then the lookup kernels' dequantization, channel by channel.
  const DequantizeTerms<Real> deq = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  // A lane's outputs come in pairs of adjacent channels (2t, 2t + 1 of an n8 tile). In NHWC with an even
  // npg (so an even co and out_depth) and an output aligned to two elements, a pair is one aligned
  // 2-element store: a warp's store then fills 8 whole 32-byte sectors (float; 16-byte halves of them
  // for half types) instead of touching 8 sectors twice at half use, with half the store instructions.
  const bool pair_stores = args.pair_stores;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int channel0 = n0 + warp_n * WN + nt * 8 + 2 * in_group;  // even
    if (channel0 >= g.npg) continue;
    const bool second = channel0 + 1 < g.npg;
    const int co0 = grp * g.npg + channel0;
    long long channel_term[2] = {0, 0}, w_sum[2] = {0, 0};
    DequantizeTerms<Real> terms[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (e == 1 && !second) break;
      channel_term[e] = static_cast<long long>(__ldg(args.channel_sums + co0 + e)) + args.taps_c0;
      w_sum[e] = static_cast<long long>(__ldg(args.channel_sums + g.out_depth + co0 + e));
      terms[e] = ChannelTerms(epi.quant, per_channel, co0 + e, deq);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp_m * WM + mt * 16 + group_id + half * 8;
        const int p = m0 + row;
        if (p >= g.pixels) continue;
        const int64_t sum0 = static_cast<int64_t>(acc[mt][nt][2 * half]) + s_alpha[row] + channel_term[0];
        const T v0 = FromReal<T>(terms[0](sum0, s_codes[row], w_sum[0]));
        if (!second) {
          StoreOutput(g, output, p, co0, v0);
          if (epi.debug_acc != nullptr) epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0] = sum0;
          continue;
        }
        const int64_t sum1 = static_cast<int64_t>(acc[mt][nt][2 * half + 1]) + s_alpha[row] + channel_term[1];
        const T v1 = FromReal<T>(terms[1](sum1, s_codes[row], w_sum[1]));
        if (pair_stores) {
          StorePair(output + static_cast<int64_t>(p) * g.out_depth + co0, v0, v1);
        } else {
          StoreOutput(g, output, p, co0, v0);
          StoreOutput(g, output, p, co0 + 1, v1);
        }
        if (epi.debug_acc != nullptr) {
          epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0] = sum0;
          epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0 + 1] = sum1;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

// Every tile once: its enum, the block tile, the warps, and a throughput guess relative to 128 x 128
// (to be measured with the harness's --decomposed-only timings; it only matters when two tiles fit a
// shape about equally well).
#define TFAPPROX_DECOMPOSED_TILES(X)        \
  X(kTile128x128, 128, 128, 2, 4, 1.0)      \
  X(kTile64x64, 64, 64, 2, 2, 0.7)          \
  X(kTile128x32, 128, 32, 4, 1, 0.55)

struct TileConfig {
  GpuDecomposedTile tile;
  int bm, bn;
  double rate;
};
#define TFAPPROX_TILE_CONFIG(tile, bm, bn, wm, wn, rate) {GpuDecomposedTile::tile, bm, bn, rate},
constexpr TileConfig kTiles[] = {TFAPPROX_DECOMPOSED_TILES(TFAPPROX_TILE_CONFIG)};
#undef TFAPPROX_TILE_CONFIG

// Estimated speed of a tile on a shape: the share of its outputs that are real x the share of the
// last wave's block slots that are busy (two blocks per multiprocessor) x its rate.
GpuDecomposedTile ChooseTile(const ConvShape& s, int sms) {
  double best_score = -1;
  GpuDecomposedTile best = GpuDecomposedTile::kTile128x128;
  for (const TileConfig& t : kTiles) {
    const int64_t m_tiles = (s.out_pixels() + t.bm - 1) / t.bm;
    const int64_t n_tiles = (s.out_depth_per_group() + t.bn - 1) / t.bn;
    const int64_t blocks = m_tiles * n_tiles * s.groups();
    const int64_t slots = 2 * static_cast<int64_t>(std::max(sms, 1));
    const int64_t waves = (blocks + slots - 1) / slots;
    const double fill = static_cast<double>(s.out_pixels()) * s.out_depth_per_group() /
                        (static_cast<double>(m_tiles * t.bm) * static_cast<double>(n_tiles * t.bn));
    const double score = fill * static_cast<double>(blocks) / static_cast<double>(waves * slots) * t.rate;
    if (score > best_score + 1e-9) {
      best_score = score;
      best = t.tile;
    }
  }
  return best;
}

unsigned PrepBlocks(int64_t work, int sms) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work + kPrepThreads - 1) / kPrepThreads, int64_t{8} * std::max(sms, 1))));
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N>
std::string LaunchGemm(bool ldmatrix, const GemmArgs& base, const GpuGeometry& g, const Epilogue& epi, T* output,
                       cudaStream_t stream) {
  GemmArgs args = base;
  const int64_t m_tiles = (static_cast<int64_t>(g.pixels) + BM - 1) / BM;
  const int64_t n_tiles = (static_cast<int64_t>(g.npg) + BN - 1) / BN;
  const int64_t blocks = m_tiles * n_tiles * g.groups;
  if (blocks > INT_MAX) return "ApproxConvGpuDecomposed: convolution too large for one GPU launch";
  const int64_t k_tiles = args.l.k_padded / kBK;
  if (k_tiles > INT_MAX) return "ApproxConvGpuDecomposed: K too large";
  args.m_tiles = static_cast<int>(m_tiles);
  args.n_tiles = static_cast<int>(n_tiles);
  args.k_tiles = static_cast<int>(k_tiles);
  constexpr int smem = GemmSmemBytes<BM, BN>();
  auto kernel = ldmatrix ? DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, true>
                         : DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, false>;
  // A constant per kernel (unlike the columns kernel's), so concurrent callers set the same value.
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
  kernel<<<static_cast<unsigned>(blocks), WARPS_M * WARPS_N * 32, smem, stream>>>(args, g, epi, output);
  e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the decomposed GEMM launch", e);
}

template <typename T>
std::string LaunchTile(GpuDecomposedTile tile, bool ldmatrix, const GemmArgs& args, const GpuGeometry& g,
                       const Epilogue& epi, T* output, cudaStream_t stream) {
#define TFAPPROX_TILE_CASE(name, bm, bn, wm, wn, rate) \
  case GpuDecomposedTile::name:                        \
    return LaunchGemm<T, bm, bn, wm, wn>(ldmatrix, args, g, epi, output, stream);
  switch (tile) {
    TFAPPROX_DECOMPOSED_TILES(TFAPPROX_TILE_CASE)
    default:
      return "ApproxConvGpuDecomposed: unknown tile";
  }
#undef TFAPPROX_TILE_CASE
}

}  // namespace

const char* GpuDecomposedTileName(GpuDecomposedTile tile) {
  switch (tile) {
    case GpuDecomposedTile::kAuto: return "auto";
    case GpuDecomposedTile::kTile128x128: return "mma128x128";
    case GpuDecomposedTile::kTile64x64: return "mma64x64";
    case GpuDecomposedTile::kTile128x32: return "mma128x32";
    default: return "?";
  }
}

const char* GpuDecomposedPhaseName(int phase) {
  static const char* const kNames[kGpuDecomposedPhases] = {"memset",       "in codes",      "in planes",
                                                           "flt sums",     "flt planes",    "gemm"};
  return phase >= 0 && phase < kGpuDecomposedPhases ? kNames[phase] : "?";
}

// The auto-choice. Figures: the H200 run of commit 9cbe7cd (benchmarks/gpu/gpu_harness.cu
// --decomposed-only, float32 NHWC, groups 1, every call timed whole, G LUT-MAC/s), as speedups over the
// lookups (ApproxConvGpu kAuto) for 1 / 4 / 8 / 16 terms, with K = taps * in_channels_per_group and
// m = LUT-MACs per input element (= out_pixels * out_depth * K / input elements: how much GEMM work there
// is per unit of the input pass, which grows with terms and is paid for every input pixel, also those a
// stride skips):
//   3x3 56x56 64->64    K  576  m  576   5.80 3.80 2.52 1.39
//   3x3 28x28 128->128  K 1152  m 1152   6.88 3.67 2.43 1.36
//   3x3 14x14 256->256  K 2304  m 2304  10.06 4.19 2.31 1.23
//   3x3 7x7 512->512    K 4608  m 4608   8.83 3.03 1.62 0.84   (3136 pixels: the GEMM is the cost)
//   1x1 56x56 64->256   K   64  m  256   1.27 1.15 1.02 0.77
//   R20 32x32 3->16     K   27  m  144   0.46 0.36 0.30 0.24
//   R20 32x32 16->16    K  144  m  144   1.38 1.19 0.93 0.55
//   R20 16x16 32->32    K  288  m  288   3.97 2.97 2.10 1.29
//   R20 8x8 64->64      K  576  m  576   4.43 2.38 1.84 1.05
//   R20 3x3 s2 16->32   K  144  m   72   0.87 0.83 0.72 0.45
//   R20 1x1 s2 16->32   K   16  m    8   0.24 0.24 0.22 0.14
//   R20 1x1 s2 32->64   K   32  m   16   0.27 0.26 0.25 0.17
// The rule keeps to rows measured at least about 1.2x faster (a margin for run-to-run noise and for
// shapes between the rows); a decomposition's terms are rounded up to the next measured count (1, 4, 8,
// 16: more terms are never faster):
//   1 term:      K >= 64  and m >= 144   (slowest picked row 1.27x: 1x1 56x56 64->256)
//   2-4 terms:   K >= 288 and m >= 144   (slowest picked 2.38x; R20 16->16 at 1.19x left out)
//   5-8 terms:   K >= 288 and m >= 144   (slowest picked 1.62x)
//   9-16 terms:  288 <= K <= 2304, m >= 144 and output maps of at least 14x14 (slowest picked 1.23x; the
//                7x7 layer's 0.84x and R20 8x8's 1.05x left out)
//   more terms:  never (not measured).
// And only inside what the figures cover: groups 1 (grouped and depthwise layers were not measured; their
// K is small anyway), NHWC (NCHW adds a transposing input pass to both kernels, not measured), and calls of
// at least 2e9 LUT-MACs (the smallest measured rows are 2.36e9; in small calls the fixed costs, launches
// above all, weigh more, and the decomposed path has more launches). Stride and dilation enter through m
// and the output size. These are the figures of the first kernel version; faster versions only widen the
// region where the decomposed kernel wins, so the rule stays conservative until it is re-derived from a
// new run (the harness's "auto" column and its "wrong pick" count check it against each run).
bool GpuPreferDecomposed(const ConvShape& s, int terms) {
  if (!GpuDecomposedSupports(s, terms).empty()) return false;
  if (terms > 16 || s.groups() != 1 || s.data_format != DataFormat::kNHWC) return false;
  if (s.lut_macs() < int64_t{2000000000}) return false;
  const int64_t k = s.taps();
  const int64_t input_elements = s.input_elements();
  if (input_elements <= 0) return false;
  const double m = static_cast<double>(s.lut_macs()) / static_cast<double>(input_elements);
  if (m < 144) return false;
  if (terms == 1) return k >= 64;
  if (terms <= 8) return k >= 288;
  return k >= 288 && k <= 2304 && s.out_h >= 14 && s.out_w >= 14;
}

std::string GpuDecomposedSupports(const ConvShape& s, int terms) {
  if (terms < 1 || terms > kGpuDecomposedMaxTerms) {
    return "ApproxConvGpuDecomposed: " + std::to_string(terms) + " terms (1 to " +
           std::to_string(kGpuDecomposedMaxTerms) + " are supported)";
  }
  if (s.taps() * terms > kGpuDecomposedMaxReduction) {
    return "ApproxConvGpuDecomposed: taps * terms = " + std::to_string(s.taps() * terms) +
           " products per output could overflow the int32 tensor-core sums (at most " +
           std::to_string(kGpuDecomposedMaxReduction) + ")";
  }
  // As ApproxConvGpu: spatial terms below 2^30 keep the kernels' int32 index arithmetic far from overflow.
  const int64_t kLimit = int64_t{1} << 30;
  const int64_t spatial[] = {s.in_h, s.in_w, s.pad_top, s.pad_left, s.stride_h * s.out_h,
                             s.stride_w * s.out_w, s.dilation_h * s.filter_h, s.dilation_w * s.filter_w,
                             s.taps(), s.out_pixels(), s.batch * s.in_h * s.in_w};
  for (int64_t v : spatial) {
    if (v < 0 || v >= kLimit) return "ApproxConvGpuDecomposed: a spatial size or padding is too large";
  }
  return "";
}

size_t GpuDecomposedWorkspaceBytes(const ConvShape& shape, int terms) {
  return MakeLayout(shape, std::max(terms, 1)).bytes;
}

GpuDecomposedTile ChooseGpuDecomposedTile(const ConvShape& shape, int /*terms*/) {
  DeviceInfo dev;
  if (!GetDeviceInfo(&dev).empty()) return GpuDecomposedTile::kTile128x128;
  return ChooseTile(shape, dev.sms);
}

std::string GpuDecompositionPack(const TableDecomposition& host, std::vector<unsigned char>* bytes) {
  if (host.terms < 0 || host.terms > kGpuDecomposedMaxTerms) {
    return "GpuDecompositionPack: " + std::to_string(host.terms) + " terms (0 to " +
           std::to_string(kGpuDecomposedMaxTerms) + " are supported)";
  }
  if (host.alpha == nullptr || host.beta == nullptr || (host.terms > 0 && (host.u == nullptr || host.v == nullptr))) {
    return "GpuDecompositionPack: null host array";
  }
  // alpha, beta (int32, aligned at the start), then u and v. No terms: one zero term.
  const int terms = std::max(host.terms, 1);
  bytes->assign(2 * 256 * sizeof(int32_t) + 2 * static_cast<size_t>(terms) * 256, 0);
  std::copy(host.alpha, host.alpha + 256, reinterpret_cast<int32_t*>(bytes->data()));
  std::copy(host.beta, host.beta + 256, reinterpret_cast<int32_t*>(bytes->data()) + 256);
  int8_t* u = reinterpret_cast<int8_t*>(bytes->data() + 2 * 256 * sizeof(int32_t));
  if (host.terms > 0) {
    std::copy(host.u, host.u + host.terms * 256, u);
    std::copy(host.v, host.v + host.terms * 256, u + terms * 256);
  }
  return "";
}

GpuDecomposition GpuDecompositionAt(const TableDecomposition& host, const void* device_bytes) {
  const unsigned char* base = static_cast<const unsigned char*>(device_bytes);
  GpuDecomposition device;
  device.terms = std::max(host.terms, 1);
  device.alpha = reinterpret_cast<const int32_t*>(base);
  device.beta = reinterpret_cast<const int32_t*>(base) + 256;
  device.u = reinterpret_cast<const int8_t*>(base + 2 * 256 * sizeof(int32_t));
  device.v = device.u + device.terms * 256;
  device.c0 = host.c0;
  return device;
}

std::string GpuDecompositionUpload(const TableDecomposition& host, GpuDecomposition* device) {
  if (device == nullptr) return "GpuDecompositionUpload: null output";
  *device = GpuDecomposition();
  std::vector<unsigned char> staging;
  const std::string error = GpuDecompositionPack(host, &staging);
  if (!error.empty()) return error;
  void* memory = nullptr;
  cudaError_t e = cudaMalloc(&memory, staging.size());
  if (e != cudaSuccess) return CudaError("cudaMalloc of a decomposition", e);
  e = cudaMemcpy(memory, staging.data(), staging.size(), cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaFree(memory);
    return CudaError("cudaMemcpy of a decomposition", e);
  }
  *device = GpuDecompositionAt(host, memory);
  return "";
}

std::string GpuDecompositionFree(GpuDecomposition* device) {
  if (device == nullptr || device->alpha == nullptr) return "";
  const cudaError_t e = cudaFree(const_cast<int32_t*>(device->alpha));  // the allocation's start
  *device = GpuDecomposition();
  return e == cudaSuccess ? "" : CudaError("cudaFree of a decomposition", e);
}

template <typename T>
std::string ApproxConvGpuDecomposed(const ConvShape& s, const T* input, const T* filter, const GpuQuant* quant,
                                    const GpuDecomposition& d, T* output, cudaStream_t stream, void* workspace,
                                    size_t workspace_bytes, const GpuDecomposedOptions& options) {
  if (s.output_elements() == 0) return "";
  std::string error = GpuDecomposedSupports(s, d.terms);
  if (!error.empty()) return error;
  if (quant == nullptr || output == nullptr || filter == nullptr || (input == nullptr && s.input_elements() > 0) ||
      d.u == nullptr || d.v == nullptr || d.alpha == nullptr || d.beta == nullptr) {
    return "ApproxConvGpuDecomposed: null device pointer";
  }
  const Layout l = MakeLayout(s, d.terms);
  if (workspace == nullptr || workspace_bytes < l.bytes) {
    return "ApproxConvGpuDecomposed: the workspace must hold GpuDecomposedWorkspaceBytes(shape, terms) = " +
           std::to_string(l.bytes) + " bytes of device memory";
  }
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return "ApproxConvGpuDecomposed: the workspace must be 16-byte aligned";
  }
  if (options.tile != GpuDecomposedTile::kAuto &&
      (static_cast<int>(options.tile) < 0 || static_cast<int>(options.tile) >= static_cast<int>(GpuDecomposedTile::kCount))) {
    return "ApproxConvGpuDecomposed: unknown tile";
  }
  DeviceInfo dev;
  error = GetDeviceInfo(&dev);
  if (!error.empty()) return error;
  const GpuGeometry g = MakeGpuGeometry(s);
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  uint8_t* codes = ws + l.codes;
  int8_t* planes = reinterpret_cast<int8_t*>(ws + l.planes);
  long long* alpha_sums = reinterpret_cast<long long*>(ws + l.alpha_sums);
  int32_t* code_sums = reinterpret_cast<int32_t*>(ws + l.code_sums);
  int8_t* b_planes = reinterpret_cast<int8_t*>(ws + l.filter);
  unsigned long long* channel_sums = reinterpret_cast<unsigned long long*>(ws + l.channel_sums);

  uint8_t* filter_codes = ws + l.filter_codes;

  // The phase events (a test hook): event 0 before the first launch, event i + 1 after phase i.
  auto mark = [&](int event) -> std::string {
    if (options.phase_events == nullptr) return "";
    const cudaError_t r = cudaEventRecord(options.phase_events[event], stream);
    return r == cudaSuccess ? "" : CudaError("cudaEventRecord of a phase event", r);
  };
  if (!(error = mark(0)).empty()) return error;
  cudaError_t e = cudaSuccess;
  // The fused input pass stages a block's codes in shared memory: slices of at most kInputCodesPerBlock
  // channels (every layer of a real network; the reduction-limit tests have wider ones).
  const bool fused = !options.separate_prepasses && s.filter_depth <= kInputCodesPerBlock;
  const int64_t slices = l.items + s.groups();
  if (!fused) {
    e = cudaMemsetAsync(channel_sums, 0, static_cast<size_t>(s.out_depth) * 2 * sizeof(unsigned long long), stream);
    if (e != cudaSuccess) return CudaError("cudaMemsetAsync of the workspace", e);
  }
  if (!(error = mark(1)).empty()) return error;
  if (!fused && s.input_elements() > 0) {
    InputCodesKernel<T><<<PrepBlocks(s.input_elements(), dev.sms), kPrepThreads, 0, stream>>>(
        input, g, s.input_elements(), quant, codes);
    e = cudaGetLastError();
    if (e != cudaSuccess) return CudaError("the input codes launch", e);
  }
  if (!(error = mark(2)).empty()) return error;
  if (fused) {
    const int per_block = static_cast<int>(kInputCodesPerBlock / s.filter_depth);  // >= 1
    int lanes = 1;  // lanes per slice for its sums: the largest power of two <= min(cg, 32)
    while (lanes < 32 && 2 * lanes <= s.filter_depth) lanes *= 2;
    const int64_t blocks = (slices + per_block - 1) / per_block;
    if (blocks > INT_MAX) return "ApproxConvGpuDecomposed: input too large for one GPU launch";
    const size_t smem = 256 * sizeof(int32_t) + static_cast<size_t>(d.terms) * 256 +
                        static_cast<size_t>(per_block) * static_cast<size_t>(s.filter_depth);  // < 48 KB
    InputPassKernel<T><<<static_cast<unsigned>(blocks), kPrepThreads, smem, stream>>>(
        input, g, l, d, quant, per_block, lanes, planes, alpha_sums, code_sums, channel_sums);
    e = cudaGetLastError();
    if (e != cudaSuccess) return CudaError("the input pass launch", e);
  } else {
    // A warp per slice (the zero point's slices are always there).
    const size_t planes_smem = 256 * sizeof(int32_t) + static_cast<size_t>(d.terms) * 256;
    InputPlanesKernel<<<PrepBlocks(slices * 32, dev.sms), kPrepThreads, planes_smem, stream>>>(
        codes, g, l, d, quant, planes, alpha_sums, code_sums);
    e = cudaGetLastError();
    if (e != cudaSuccess) return CudaError("the input planes launch", e);
  }
  if (!(error = mark(3)).empty()) return error;
  // The filter sums (and, fused, its codes) before its planes: FilterPlanesFromCodesKernel reads the codes.
  const int64_t runs = (s.taps() + kFilterRun - 1) / kFilterRun * s.out_depth;
  FilterSumsKernel<T><<<PrepBlocks(runs, dev.sms), kPrepThreads, 0, stream>>>(filter, g, d, quant, channel_sums,
                                                                              fused ? filter_codes : nullptr);
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the filter sums launch", e);
  if (!(error = mark(4)).empty()) return error;
  const int64_t b_chunks = l.k_padded / kChunk * s.out_depth;
  if (fused) {
    FilterPlanesFromCodesKernel<<<PrepBlocks(b_chunks, dev.sms), kPrepThreads, static_cast<size_t>(d.terms) * 256,
                                  stream>>>(filter_codes, g, l, d, b_planes);
  } else {
    FilterPlanesKernel<T><<<PrepBlocks(b_chunks, dev.sms), kPrepThreads, 0, stream>>>(filter, g, l, d, quant, b_planes);
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the filter planes launch", e);
  if (!(error = mark(5)).empty()) return error;

  GemmArgs args;
  args.planes = planes;
  args.b_planes = b_planes;
  args.alpha_sums = alpha_sums;
  args.code_sums = code_sums;
  args.channel_sums = channel_sums;
  args.alpha = d.alpha;
  args.taps_c0 = static_cast<long long>(s.taps()) * d.c0;
  args.l = l;
  args.m_tiles = args.n_tiles = args.k_tiles = 0;  // set by LaunchGemm for its tile
  const GpuDecomposedTile tile = options.tile == GpuDecomposedTile::kAuto ? ChooseTile(s, dev.sms) : options.tile;
  args.pair_stores = s.data_format == DataFormat::kNHWC && s.out_depth_per_group() % 2 == 0 &&
                     reinterpret_cast<uintptr_t>(output) % (2 * sizeof(T)) == 0;
  const Epilogue epi{quant, options.debug_acc, options.debug_act_sum};
  error = LaunchTile<T>(tile, !options.plain_fragment_loads, args, g, epi, output, stream);
  if (!error.empty()) return error;
  return mark(6);
}

#define TFAPPROX_INSTANTIATE(T)                                                                                  \
  template std::string ApproxConvGpuDecomposed<T>(const ConvShape&, const T*, const T*, const GpuQuant*,         \
                                                  const GpuDecomposition&, T*, cudaStream_t, void*, size_t,      \
                                                  const GpuDecomposedOptions&);
TFAPPROX_INSTANTIATE(float)
TFAPPROX_INSTANTIATE(double)
TFAPPROX_INSTANTIATE(__half)
TFAPPROX_INSTANTIATE(__nv_bfloat16)
#undef TFAPPROX_INSTANTIATE

std::string ApproxConvGpuDecomposedUntyped(GpuDtype dtype, const ConvShape& s, const void* input, const void* filter,
                                           const GpuQuant* quant, const GpuDecomposition& d, void* output,
                                           cudaStream_t stream, void* workspace, size_t workspace_bytes) {
  return WithGpuType(dtype, "ApproxConvGpuDecomposedUntyped", [&](auto tag) {
    using T = decltype(tag);
    return ApproxConvGpuDecomposed<T>(s, static_cast<const T*>(input), static_cast<const T*>(filter), quant, d,
                                      static_cast<T*>(output), stream, workspace, workspace_bytes);
  });
}

}  // namespace tfapprox
