// The decomposed kernel's workspace layout and its pre-passes (the input's codes, u planes and sums; the
// filter's v planes and sums): what the implicit GEMM (conv_gpu_decomposed_gemm.cuh) reads. Internal:
// included by conv_gpu_decomposed.cu only, whose top comment explains the decomposition.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_PREPASSES_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_PREPASSES_CUH_

#include <cstdint>
#include <string>
#include <type_traits>

#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"

namespace tfapprox {
namespace decomposed_internal {

using namespace gpu_internal;  // NOLINT: the shared device pieces, written as if declared here

constexpr int kChunk = 16;         // bytes per cp.async and per ldmatrix row
constexpr int kMaxBK = 128;        // K bytes per pipeline stage of the widest GEMM tile (B's rows are padded to it)
constexpr int kPrepThreads = 256;  // threads per block of the pre-passes
// Codes a block of the fused input pass stages (bytes): it takes kInputCodesPerBlock / cg slices (InputPassBlock).
constexpr int kInputCodesPerBlock = 8192;

// Words of Layout::ready before the per-chunk flags: the filter blocks done, the input blocks done.
constexpr int kReadyFilterBlocks = 0, kReadyInputChunks = 1, kReadyChunks = 2;

// The pointwise tiles (conv_gpu_decomposed_pointwise.cuh): where they take a shape, and their filter planes.
constexpr int kPointwiseMaxChannels = 256;  // input channels: a block's codes sit in shared memory
constexpr int kPointwiseMaxTerms = 16;

// Terms a code's row of the A table holds: whole 4-byte registers.
__host__ __device__ inline int PointwiseTerms(int terms) { return (terms + 3) / 4 * 4; }

// "" where the pointwise tiles take the shape, else why not.
inline std::string PointwiseFits(const ConvShape& s, int terms) {
  if (s.filter_h != 1 || s.filter_w != 1) return "ApproxConvGpuDecomposed: the pointwise tile takes 1x1 filters only";
  if (s.groups() != 1) return "ApproxConvGpuDecomposed: the pointwise tile takes one group only";
  // (Padding at the bottom or right shows as outputs whose input pixel lies past the input.)
  if (s.pad_top != 0 || s.pad_left != 0 || (s.out_h - 1) * s.stride_h >= s.in_h ||
      (s.out_w - 1) * s.stride_w >= s.in_w) {
    return "ApproxConvGpuDecomposed: the pointwise tile takes no padding";
  }
  if (s.in_depth < 16 || s.in_depth % 16 != 0 || s.in_depth > kPointwiseMaxChannels) {
    return "ApproxConvGpuDecomposed: the pointwise tile takes 16 to " + std::to_string(kPointwiseMaxChannels) +
           " input channels, a multiple of 16";
  }
  if (terms > kPointwiseMaxTerms) {
    return "ApproxConvGpuDecomposed: the pointwise tile takes at most " + std::to_string(kPointwiseMaxTerms) + " terms";
  }
  return "";
}

// Bytes of the filter's planes in the pointwise order ([out_depth][in_depth * PointwiseTerms]), where the
// tile takes the shape; else 0 (Layout::pointwise_filter).
inline int64_t PointwiseFilterBytes(const ConvShape& s, int terms) {
  return PointwiseFits(s, terms).empty() ? s.out_depth * s.in_depth * PointwiseTerms(terms) : 0;
}

// ---------------------------------------------------------------------------------------------------
// Workspace layout (offsets 16-byte aligned, so the planes take 16-byte copies).
struct Layout {
  int64_t in_pixels = 0;    // batch * in_h * in_w
  int64_t items = 0;        // in_pixels * groups: the (pixel, group) slices of the planes
  int slice_bytes = 0;      // terms * cg rounded up to kChunk
  int slice_chunks = 0;
  int64_t k_chunks = 0;     // spatial taps * slice_chunks: K in chunks
  int64_t k_padded = 0;     // K bytes rounded up to kMaxBK: a filter row of the B planes
  size_t codes = 0;         // uint8 [in_pixels][in_depth]: the input codes (NHWC)
  size_t planes = 0;        // int8 [items + groups][slice_bytes]: u planes, then the zero point's
  size_t alpha_sums = 0;    // int64 [items]: sum over the group's channels of alpha[code]
  size_t code_sums = 0;     // int32 [items]: sum of the codes (<= cg * 255 < 2^31 within the K limit)
  size_t filter = 0;        // int8 [out_depth][k_padded]: v planes
  size_t channel_sums = 0;  // uint64 [2][out_depth]: beta sums, then filter code sums (modular adds)
  size_t filter_codes = 0;  // uint8 [out_depth][taps]: the filter codes, K-contiguous (FilterSumsKernel)
  size_t pointwise_filter = 0;  // int8: the pointwise tiles' B (PointwiseFilterBytes; none where they do not fit)
  // The fused pre-pass's progress, which the halo GEMM launched beside it waits on (WaitHaloInputs).
  int64_t input_slices = 0;  // slices a block of the fused input pass takes (0: no fused pass for this shape)
  int64_t input_blocks = 0;  // its blocks: (items + groups) / input_slices rounded up
  size_t ready = 0;          // uint32 [kReadyChunks + input_blocks]
  size_t bytes = 0;
};

inline size_t Align16(size_t x) { return (x + 15) / 16 * 16; }

inline Layout MakeLayout(const ConvShape& s, int terms) {
  Layout l;
  l.in_pixels = s.batch * s.in_h * s.in_w;
  l.items = l.in_pixels * s.groups();
  l.slice_bytes = static_cast<int>((static_cast<int64_t>(terms) * s.filter_depth + kChunk - 1) / kChunk * kChunk);
  l.slice_chunks = l.slice_bytes / kChunk;
  l.k_chunks = s.filter_h * s.filter_w * l.slice_chunks;
  l.k_padded = (l.k_chunks * kChunk + kMaxBK - 1) / kMaxBK * kMaxBK;
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
  l.pointwise_filter = at;
  at = Align16(at + static_cast<size_t>(PointwiseFilterBytes(s, terms)));
  if (s.filter_depth >= 1 && s.filter_depth <= kInputCodesPerBlock) {
    l.input_slices = kInputCodesPerBlock / s.filter_depth;
    l.input_blocks = (l.items + s.groups() + l.input_slices - 1) / l.input_slices;
  }
  l.ready = at;
  at = Align16(at + static_cast<size_t>(kReadyChunks + l.input_blocks) * sizeof(uint32_t));
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
// results as the separate kernels: the same codes (QuantizeToCode), entries, sums. Run by
// PrepassKernel's blocks from filter_blocks on (InputPassBlock: `block` is the block's index among them).

// Four codes packed little-endian in a word (byte b: the code of entry b) -> their table entries packed
// the same way.
__device__ __forceinline__ uint32_t LookupBytes(const uint8_t* table, uint32_t codes) {
  return static_cast<uint32_t>(table[codes & 0xFF]) | static_cast<uint32_t>(table[(codes >> 8) & 0xFF]) << 8 |
         static_cast<uint32_t>(table[(codes >> 16) & 0xFF]) << 16 | static_cast<uint32_t>(table[codes >> 24]) << 24;
}
// A chunk of 16 codes -> a chunk of their 16 table entries (a term's u or v: a chunk of its planes).
__device__ __forceinline__ uint4 LookupChunk(const uint8_t* table, uint4 codes) {
  return make_uint4(LookupBytes(table, codes.x), LookupBytes(table, codes.y), LookupBytes(table, codes.z),
                    LookupBytes(table, codes.w));
}
// The same where the table is the code shifted into int8 (entry c - 128, the exact product's u and v): the
// codes with their top bits flipped.
__device__ __forceinline__ uint4 ShiftedChunk(uint4 codes) {
  constexpr uint32_t kTop = 0x80808080u;
  return make_uint4(codes.x ^ kTop, codes.y ^ kTop, codes.z ^ kTop, codes.w ^ kTop);
}

// The exact product's forms, which the pre-passes take without lookups: whether entry i of a free-term
// table (alpha or beta) lies on the line through its first two (then a sum of entries is the first entry
// times their count plus the slope times the sum of their codes), and whether entry i of a term's table
// (u or v) is the code shifted into int8 (ShiftedChunk). A block tests every entry and agrees at a barrier.
__device__ __forceinline__ long long FreeTermSlope(const int32_t* table) {
  return static_cast<long long>(table[1]) - table[0];
}
__device__ __forceinline__ bool OnFreeTermLine(const int32_t* table, int i) {
  return table[i] == table[0] + i * FreeTermSlope(table);
}
__device__ __forceinline__ bool ShiftedEntry(const int8_t* table, int i) {
  return table[i] == static_cast<int8_t>(i - 128);
}

// With two or more terms the planes are written a quad of terms at a time: a term table (u or v, [terms]
// [256] int8) as quad words, word quad * 256 + code holding the entries of terms 4 quad .. 4 quad + 3 in
// bytes 0..3 (0 past terms), so that one 32-bit lookup gives a code's entries of four terms: a quarter of
// the shared-memory lookups of one byte per entry, which bound the pre-pass with many terms (ncu, 16 terms
// on 56x56 64->64: 92% of the memory pipes' throughput, 20% of DRAM's; its input pass 245 -> 93 us).
// Filled by the block's threads (`tid` of `threads`) into (terms + 3) / 4 * 1024 bytes.
__device__ __forceinline__ void FillQuadWords(const int8_t* __restrict__ table, int terms, uint32_t* words, int tid,
                                              int threads) {
  for (int i = tid; i < (terms + 3) / 4 * 256; i += threads) {
    const int quad = i >> 8, code = i & 255;
    uint32_t word = 0;
    for (int k = 0; k < 4 && 4 * quad + k < terms; ++k) {
      word |= static_cast<uint32_t>(static_cast<uint8_t>(table[(4 * quad + k) * 256 + code])) << (8 * k);
    }
    words[i] = word;
  }
}
// 16 codes (16 channels) -> the chunks of a quad's four terms (`quad_words`: its 256 words): chunk k holds
// term k's entries of the 16 channels in order. The 16 words looked up hold the four terms' entries
// channel by channel; a 4 x 4 byte transpose per 4 channels turns them term by term.
__device__ __forceinline__ void LookupQuadChunks(const uint32_t* quad_words, uint4 codes, uint4 (&chunks)[4]) {
  const uint32_t code_words[4] = {codes.x, codes.y, codes.z, codes.w};
  uint32_t term_words[4][4];  // [term in the quad][4 channels]
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t w = code_words[j];
    const uint32_t e0 = quad_words[w & 0xFF], e1 = quad_words[(w >> 8) & 0xFF];
    const uint32_t e2 = quad_words[(w >> 16) & 0xFF], e3 = quad_words[w >> 24];
    // e_i: channel 4j + i's entries of terms 0..3 in bytes 0..3.
    const uint32_t lo01 = __byte_perm(e0, e1, 0x5140), lo23 = __byte_perm(e2, e3, 0x5140);
    const uint32_t hi01 = __byte_perm(e0, e1, 0x7362), hi23 = __byte_perm(e2, e3, 0x7362);
    term_words[0][j] = __byte_perm(lo01, lo23, 0x5410);
    term_words[1][j] = __byte_perm(lo01, lo23, 0x7632);
    term_words[2][j] = __byte_perm(hi01, hi23, 0x5410);
    term_words[3][j] = __byte_perm(hi01, hi23, 0x7632);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) chunks[k] = make_uint4(term_words[k][0], term_words[k][1], term_words[k][2], term_words[k][3]);
}

// Whether the input pass's planes take pair stores (InputPassBlock, PrepassKernel<T, true>): slices of 16
// channels and whole quads of terms. The host picks the kernel build by it; the kernel also needs an even
// number of units in its block.
__host__ __device__ inline bool PairStoresApply(int cg, int terms) { return cg == kChunk && terms % 4 == 0; }

// v from the lane whose index differs in bit `mask` (every lane of the warp takes part).
__device__ __forceinline__ uint4 ShuffleXor(uint4 v, int mask) {
  return make_uint4(__shfl_xor_sync(0xFFFFFFFFu, v.x, mask), __shfl_xor_sync(0xFFFFFFFFu, v.y, mask),
                    __shfl_xor_sync(0xFFFFFFFFu, v.z, mask), __shfl_xor_sync(0xFFFFFFFFu, v.w, mask));
}

// `pass(chunk)` runs the pass over chunk `chunk` of per_block slices; each(pass) calls it for the block's
// one chunk, or (PrepassKernel beside the halo GEMM) for several chunks in turn after one set-up.
// kStreaming: float32 NHWC input read evict-first (ld.global.cs), for the streaming build (TunedPlan::streaming).
template <typename T, bool kPairStores, bool kStreaming, typename Each>
__device__ void InputPassBlock(const T* __restrict__ input, const GpuGeometry& g, const Layout& l,
                               const GpuDecomposition& d, const GpuQuant* __restrict__ quant, int per_block,
                               int lanes, int8_t* __restrict__ planes, long long* __restrict__ alpha_sums,
                               int32_t* __restrict__ code_sums, Each each) {
  extern __shared__ __align__(16) unsigned char smem[];
  // alpha widened to int64 once here, not at each of its lookups (the sums are int64).
  long long* s_alpha = reinterpret_cast<long long*>(smem);
  // u as bytes, [terms][256]; or, where the planes are written a quad of terms at a time (step 3), as
  // quad words (FillQuadWords). quads * 1024 bytes hold either.
  const bool quad_words = g.cg % kChunk == 0 && d.terms >= 2;
  const int quads = (d.terms + 3) / 4;
  int8_t* s_u = reinterpret_cast<int8_t*>(smem + 256 * sizeof(long long));
  uint32_t* s_u4 = reinterpret_cast<uint32_t*>(s_u);
  uint8_t* s_codes = reinterpret_cast<uint8_t*>(smem + 256 * sizeof(long long) + quads * 1024);  // [per_block][cg]
  const int tid = threadIdx.x;
  // Whether alpha is affine in the code and whether, with one term, u is the shifted code (OnFreeTermLine,
  // ShiftedEntry: the exact product's forms). Then step (2) sums the codes alone and step (3) flips bits
  // instead of looking entries up: after quantizing, those lookups were most of the pass's instructions
  // (ncu, exact table on 28x28 128->128). The block agrees at the barrier after step (1).
  const long long alpha0 = d.alpha[0], slope = FreeTermSlope(d.alpha);
  bool affine = true, shifted_u = d.terms == 1;
  for (int i = tid; i < 256; i += blockDim.x) {
    s_alpha[i] = d.alpha[i];
    affine = affine && OnFreeTermLine(d.alpha, i);
    shifted_u = shifted_u && ShiftedEntry(d.u, i);
  }
  if (quad_words) {
    FillQuadWords(d.u, d.terms, s_u4, tid, blockDim.x);
  } else {
    for (int i = tid; i < d.terms * 256; i += blockDim.x) s_u[i] = d.u[i];
  }
  each([&](int chunk) {
    const int64_t slices = l.items + g.groups;
    const int64_t first = static_cast<int64_t>(chunk) * per_block;  // the chunk's first slice
    const int count = static_cast<int>(min(static_cast<int64_t>(per_block), slices - first));
    // Slices of input pixels; the rest (the last `groups` slices of all) are the zero point's.
    const int real = static_cast<int>(max(int64_t{0}, min(static_cast<int64_t>(count), l.items - first)));
    const QuantParams qi = quant->input;
    const uint8_t zp = static_cast<uint8_t>(qi.zero_point);

    // (1) The codes of the chunk's slices, with FastQuantizer where it applies (quantize: the code of one
    // value, quantize4: of four, packed; either way the same).
    const FastQuantizer fast(qi);
    const auto codes_pass = [&](auto quantize, auto quantize4) {
      const int n = count * g.cg, real_n = real * g.cg;
      const int64_t base = first * g.cg;  // element index (NHWC order) of the block's first code
      const int64_t hw = static_cast<int64_t>(g.in_h) * g.in_w;
      if (std::is_same<T, float>::value && !g.nchw && g.cg % 4 == 0 &&
          (reinterpret_cast<uintptr_t>(input) & 15) == 0) {
        // Four codes per 16-byte load (base and real_n are multiples of 4 here, the input 16-byte aligned):
        // four times the bytes in flight per load, and the index arithmetic once per four codes. The pass
        // is bound by its loads' latency, not by bandwidth, with one float per load. A thread issues
        // kLoads loads before it quantizes any of their values: written as one loop with `#pragma unroll`,
        // nvcc kept each load next to its use (ncu: one load in flight a thread).
        constexpr int kLoads = 4;
        const float4* src = reinterpret_cast<const float4*>(input + base);
        uint32_t* dst = reinterpret_cast<uint32_t*>(s_codes);
        const int n4 = n / 4, real4 = real_n / 4;  // n is a multiple of 4 too (count * cg)
        for (int e0 = tid; e0 < n4; e0 += kLoads * kPrepThreads) {
          float4 v[kLoads];
#pragma unroll
          for (int k = 0; k < kLoads; ++k) {
            const int e = e0 + k * kPrepThreads;
            if constexpr (kStreaming) {
              if (e < real4) v[k] = __ldcs(src + e);
            } else {
              if (e < real4) v[k] = __ldg(src + e);
            }
          }
#pragma unroll
          for (int k = 0; k < kLoads; ++k) {
            const int e = e0 + k * kPrepThreads;
            if (e >= n4) break;
            dst[e] = e < real4 ? quantize4(v[k]) : zp * 0x01010101u;
          }
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
            code = static_cast<uint8_t>(quantize(ToFloat(input[src])));
          }
          s_codes[e] = code;
        }
      }
    };
    if (fast.applies) {
      codes_pass([&](float x) { return fast.Code(x); }, [&](float4 v) { return fast.Code4(v); });
    } else {
      const auto quantize = [&](float x) { return static_cast<uint32_t>(QuantizeToCode(x, qi)); };
      codes_pass(quantize, [&](float4 v) {
        return quantize(v.x) | quantize(v.y) << 8 | quantize(v.z) << 16 | quantize(v.w) << 24;
      });
    }
    affine = __syncthreads_and(affine);
    shifted_u = __syncthreads_and(shifted_u);

    // (2) The sums of the input pixels' slices: `lanes` lanes per slice, 32 / lanes slices per warp and
    // round. Every lane of a warp runs the same rounds (the shuffles need all of them); the xor offsets
    // stay below `lanes`, inside the slice's aligned group of lanes. With cg a multiple of 4 a lane reads
    // the codes four at a time, as 32-bit words (aligned: s_codes and item * cg are multiples of 4), and
    // sums them with one dp4a; the host gives a slice few enough lanes that each reads several words (a
    // shuffle round costs as much as a word, and was most of the pass with one code per lane and 32 lanes
    // per slice). Integer sums: the same in any order. With an affine alpha its sum is alpha[0] cg + slope
    // times the code sum (kLookups false), else entry by entry.
    const auto sums_pass = [&](auto lookups_tag) {
      constexpr bool kLookups = decltype(lookups_tag)::value;
      const int lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
      const int per_warp = 32 / lanes;
      const int sub = lane / lanes, li = lane - sub * lanes;
      const bool words = g.cg % 4 == 0;
      for (int round = warp * per_warp; round < real; round += warps * per_warp) {
        const int item = round + sub;
        long long alpha_sum = 0;
        int code_sum = 0;
        if (item < real && words) {
          // With a power of two of words per slice, the lane groups of a warp start their slices at words
          // spread over the banks (a rotation of the slice: the same words, the same sums): unrotated, slices
          // wps words apart meet on a few banks (4-way conflicts for 16 to 128 channels; none rotated; other
          // widths gain nothing from this rotation).
          const uint32_t* in = reinterpret_cast<const uint32_t*>(s_codes + item * g.cg);
          const int wps = g.cg / 4, rotate = (wps & (wps - 1)) == 0 ? sub * lanes * wps / 32 : 0;  // < wps
          for (int k = li; k < wps; k += lanes) {
            const int w = k + rotate < wps ? k + rotate : k + rotate - wps;
            const uint32_t c = in[w];
            if (kLookups) {
              alpha_sum += s_alpha[c & 0xFF] + s_alpha[(c >> 8) & 0xFF] + s_alpha[(c >> 16) & 0xFF] + s_alpha[c >> 24];
            }
            code_sum = static_cast<int>(__dp4a(c, 0x01010101u, static_cast<unsigned>(code_sum)));
          }
        } else if (item < real) {
          const uint8_t* in = s_codes + item * g.cg;
          for (int ci = li; ci < g.cg; ci += lanes) {
            const int code = in[ci];
            if (kLookups) alpha_sum += s_alpha[code];
            code_sum += code;
          }
        }
        for (int offset = lanes / 2; offset > 0; offset /= 2) {
          if (kLookups) alpha_sum += __shfl_xor_sync(0xFFFFFFFFu, alpha_sum, offset);
          code_sum += __shfl_xor_sync(0xFFFFFFFFu, code_sum, offset);
        }
        if (li == 0 && item < real) {
          alpha_sums[first + item] = kLookups ? alpha_sum : alpha0 * g.cg + slope * code_sum;
          code_sums[first + item] = code_sum;
        }
      }
    };
    if (affine) {
      sums_pass(std::false_type());
    } else {
      sums_pass(std::true_type());
    }

    // (3) The planes of the block's slices (entry e of a slice: term e / cg, channel e % cg; entries past
    // terms * cg are 0), chunk q of the block at chunk q of its region.
    {
      const int used = d.terms * g.cg;
      const int chunks = count * l.slice_chunks;
      if (quad_words) {
        // Whole chunks of one term and 16 consecutive channels (cg is a multiple of 16, slice_bytes = terms *
        // cg: no chunk is padding). A thread's unit is 16 channels x a quad of terms (LookupQuadChunks): the
        // 16 codes are one aligned 16-byte read (s_codes and item * cg + 16 c are multiples of 16). Units
        // u = tid, tid + kPrepThreads, ...: its slice `item`, quad and channel chunk c step by fixed amounts
        // (no division per unit by a runtime value).
        const int cc = g.cg / kChunk, per_slice = quads * cc, units = count * per_slice;
        const int step_item = kPrepThreads / per_slice, step_rest = kPrepThreads - step_item * per_slice;
        const int step_quad = step_rest / cc, step_c = step_rest - step_quad * cc;
        int item = tid / per_slice, rest = tid - item * per_slice;
        int quad = rest / cc, c = rest - quad * cc;
        // With cg = 16 and whole quads (terms a multiple of 4) a unit's four chunks are 64 contiguous bytes and
        // consecutive units are adjacent: stored as they are, each store instruction writes 16 bytes at a
        // 64-byte stride, half sectors (ncu: the 16-term pass on ResNet-20's 16->16 at 78% of L2's throughput,
        // DRAM 36%). There the two lanes of a pair (units u and u + 1: 128 contiguous bytes) swap two chunks
        // each, so that every store writes 32 contiguous bytes per pair: whole sectors. The warp's lanes then
        // run the loop together (the shuffles need all of them; a pair is both in or both out, units being
        // even), and units past the block's are neither looked up nor stored.
        // (Only in the kernel built for it, PrepassKernel<T, true>: its shuffles cost the other layers' pass
        // registers, 3-8% of its time, when both paths shared one kernel.)
        const int lane = tid & 31;
        const bool pair_stores = kPairStores && PairStoresApply(g.cg, d.terms) && units % 2 == 0;
        for (int u0 = pair_stores ? tid - lane : tid; u0 < units; u0 += kPrepThreads) {
          const int unit = pair_stores ? u0 + lane : u0;
          const bool active = unit < units;
          uint4 chunks[4] = {};
          if (active) {
            LookupQuadChunks(s_u4 + quad * 256, *reinterpret_cast<const uint4*>(s_codes + item * g.cg + c * kChunk),
                             chunks);
          }
          int8_t* dst = planes + (first + item) * l.slice_bytes + 4 * quad * g.cg + c * kChunk;
          if (pair_stores) {
            // The even lane keeps its chunks 0 and 2 and gets the odd lane's 0 and 2; the odd lane keeps 1 and 3
            // and gets the even lane's 1 and 3. Store s of the pair: bytes 32 s .. 32 s + 31 of its 128.
            const bool odd = (lane & 1) != 0;
            const uint4 got1 = ShuffleXor(odd ? chunks[0] : chunks[1], 1);
            const uint4 got2 = ShuffleXor(odd ? chunks[2] : chunks[3], 1);
            if (active) {
              int8_t* pair = dst - (odd ? 64 - 16 : 0);  // the pair's first byte, plus 16 for the odd lane
              *reinterpret_cast<uint4*>(pair) = odd ? got1 : chunks[0];
              *reinterpret_cast<uint4*>(pair + 32) = odd ? got2 : chunks[2];
              *reinterpret_cast<uint4*>(pair + 64) = odd ? chunks[1] : got1;
              *reinterpret_cast<uint4*>(pair + 96) = odd ? chunks[3] : got2;
            }
          } else {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (4 * quad + k < d.terms) *reinterpret_cast<uint4*>(dst + k * g.cg) = chunks[k];
            }
          }
          item += step_item, quad += step_quad, c += step_c;
          if (c >= cc) c -= cc, ++quad;
          if (quad >= quads) quad -= quads, ++item;
        }
        return;
      }
      // A thread's chunks q = tid, tid + kPrepThreads, ...: its slice `item` and chunk j in the slice step by
      // fixed amounts, not a division of q per chunk by a runtime value (nor, with cg a multiple of 16, of
      // the chunk's first entry: together most of the fast path's instructions).
      uint4* out = reinterpret_cast<uint4*>(planes + first * l.slice_bytes);
      const int step_item = kPrepThreads / l.slice_chunks, step_j = kPrepThreads - step_item * l.slice_chunks;
      int item = tid / l.slice_chunks, j = tid - item * l.slice_chunks;
      if (g.cg % kChunk == 0) {
        // One term (else quad_words): whole chunks of 16 consecutive channels (entry e0 = j * 16 is a
        // multiple of 16, so is cg; slice_bytes = cg, so no chunk is padding): the codes are one aligned
        // 16-byte read (s_codes and item * cg + ci are multiples of 16), the entries u[code] byte for byte
        // in the same order as below.
        // With u shifted (above) an entry is its code with the top bit flipped.
        for (int q = tid; q < chunks; q += kPrepThreads) {
          const uint4 c = *reinterpret_cast<const uint4*>(s_codes + item * g.cg + j * kChunk);
          out[q] = shifted_u ? ShiftedChunk(c) : LookupChunk(reinterpret_cast<const uint8_t*>(s_u), c);
          item += step_item, j += step_j;
          if (j >= l.slice_chunks) j -= l.slice_chunks, ++item;
        }
        return;
      }
      for (int q = tid; q < chunks; q += kPrepThreads) {
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
        out[q] = make_uint4(words[0], words[1], words[2], words[3]);
        item += step_item, j += step_j;
        if (j >= l.slice_chunks) j -= l.slice_chunks, ++item;
      }
    }
  });
}

// Per output channel: the sum of beta over its weights and the sum of its codes, added into zeroed
// sums (modular 64-bit adds: a negative beta sum comes out right as int64, and the adds may come in any
// order). A block takes a tile of FilterSumsChannels adjacent channels (adjacent threads: coalesced HWIO
// reads) x rows * kFilterRun taps; a thread's kFilterRun taps are loaded together (kFilterRun = 32 in a
// row, one load after the other, made the kernel a 20 us latency chain on a grid of a few blocks), the
// block's partial sums meet in shared memory, one atomic per channel and block. It also writes every
// weight's code, K-contiguous per channel ([co][taps], staged so that a channel's taps of the tile are
// consecutive bytes), so that FilterPlanesKernel quantizes nothing: each weight is quantized once per
// call instead of once per term, and read coalesced instead of with a stride of out_depth. FilterSumsBlock
// is block `block` of the FilterSumsBlocks(g) blocks: of FilterSumsKernel (the separate pre-passes) or of
// PrepassKernel's first ones.
//
// With b_planes (PrepassKernel, where FilterPlanesInline holds) it writes the tile's v planes itself
// instead of the codes, and FilterPlanesKernel is not launched: with cg and the tile's taps multiples of
// 16, every aligned 16 taps of the tile are 16 consecutive channels of one spatial tap, a chunk of each
// term's slice, whose entries are FilterPlanesKernel's for the same codes (its cg % 16 path: term r,
// channels ci .. ci + 15, no padding inside a slice); the blocks of the first tap tile also zero their
// channels' rows past K (to k_padded). v then sits in the launch's dynamic shared memory (the input pass's:
// more than (terms + 3) / 4 * 1024 bytes).
// kFilterRun 8 (it was 4): a block's fixed work (its v table, the channel's quantization, the sums'
// meeting, the atomics) was most of the filter blocks' instructions, 115 a weight on 7x7 512->512 (ncu);
// H200, `--decomposed-phases --seed 1370`, two rounds, 4 / 8 / 16: 14x14 256->256 exact input pass
// 18.6-18.7 / 14.1-14.2 / 14.7-15.1 us, 7x7 512->512 with 16 terms 53.6 / 48.1-48.8 / 43.3, 28x28
// 128->128 exact 20.6-20.8 / 21.2-21.5 / 25.2-25.4 (16: fewer, longer blocks), the rest within 1 us.
constexpr int kFilterRun = 8;
__host__ __device__ inline int FilterSumsChannels(int out_depth) { return out_depth < 32 ? out_depth : 32; }
__host__ __device__ inline int FilterSumsTileTaps(int out_depth) {
  return kPrepThreads / FilterSumsChannels(out_depth) * kFilterRun;
}
inline bool FilterPlanesInline(const GpuGeometry& g) {
  return g.cg % kChunk == 0 && FilterSumsTileTaps(g.out_depth) % kChunk == 0;
}
// The grid: at most one block per weight (< 2^31), at least one (no taps: sums of 0).
inline int64_t FilterSumsBlocks(const GpuGeometry& g) {
  const int channels = FilterSumsChannels(g.out_depth), tile_taps = FilterSumsTileTaps(g.out_depth);
  const int64_t blocks =
      static_cast<int64_t>((g.out_depth + channels - 1) / channels) * ((g.taps + tile_taps - 1) / tile_taps);
  return blocks > 1 ? blocks : 1;
}

template <typename T>
__device__ void FilterSumsBlock(int block, const T* __restrict__ filter, const GpuGeometry& g, const Layout& l,
                                const GpuDecomposition& d, const GpuQuant* __restrict__ quant,
                                unsigned long long* __restrict__ sums, uint8_t* __restrict__ codes_out,
                                int8_t* __restrict__ b_planes) {
  __shared__ long long s_beta[kPrepThreads], s_code[kPrepThreads];
  __shared__ __align__(16) uint8_t s_codes[kPrepThreads * kFilterRun];  // [channel][tap of the tile]
  extern __shared__ __align__(16) unsigned char smem[];
  uint8_t* s_v = smem;  // with b_planes only: [terms][256], or quad words (FillQuadWords) for 2+ terms
  const int channels = FilterSumsChannels(g.out_depth), rows = kPrepThreads / channels;
  const int tile_taps = FilterSumsTileTaps(g.out_depth);
  const int channel_tiles = (g.out_depth + channels - 1) / channels;
  const int c0 = (block % channel_tiles) * channels;
  const int k0 = (block / channel_tiles) * tile_taps;
  const int tid = threadIdx.x, c = tid % channels, row = tid / channels, co = c0 + c;
  if (b_planes != nullptr) {  // (cg is a multiple of 16: FilterPlanesInline)
    if (d.terms >= 2) {
      FillQuadWords(d.v, d.terms, reinterpret_cast<uint32_t*>(s_v), tid, kPrepThreads);
    } else {
      for (int i = tid; i < d.terms * 256; i += kPrepThreads) s_v[i] = static_cast<uint8_t>(d.v[i]);
    }
  }
  const bool active = row < rows && co < g.out_depth;
  // Taps k0 + row + j * rows: a warp's loads of one j are adjacent channels of one or more taps. Issued
  // before the tables below are tested, whose barriers they then overlap.
  float x[kFilterRun];
#pragma unroll
  for (int j = 0; j < kFilterRun; ++j) {
    const int k = k0 + row + j * rows;
    x[j] = active && k < g.taps ? ToFloat(filter[static_cast<int64_t>(k) * g.out_depth + co]) : 0.f;
  }
  // beta and v tested like the input pass's alpha and u (OnFreeTermLine, ShiftedEntry): with an affine beta
  // a thread's beta sum is beta[0] times its taps plus the slope times its code sum, and with one term whose
  // v is the shifted code the planes are ShiftedChunk's; else beta is looked up in shared memory (a global
  // load per weight, waited for before its sum, until it was staged).
  static_assert(kPrepThreads == 256, "one beta entry a thread");
  __shared__ int s_beta_table[256];
  const long long beta0 = d.beta[0], beta_slope = FreeTermSlope(d.beta);
  s_beta_table[tid] = d.beta[tid];
  const bool beta_affine = __syncthreads_and(OnFreeTermLine(d.beta, tid));
  const bool shifted_v = __syncthreads_and(d.terms == 1 && ShiftedEntry(d.v, tid));
  long long beta_sum = 0, code_sum = 0;
  if (active) {
    const QuantParams qf = quant->ChannelQuant(co).filter;
    const FastQuantizer fast(qf);
    int taps = 0;
#pragma unroll
    for (int j = 0; j < kFilterRun; ++j) {
      if (k0 + row + j * rows < g.taps) {
        const uint32_t code = fast.Quantize(x[j]);
        if (!beta_affine) beta_sum += s_beta_table[code];
        code_sum += code;
        ++taps;
        s_codes[c * tile_taps + row + j * rows] = static_cast<uint8_t>(code);
      }
    }
    if (beta_affine) beta_sum = beta0 * taps + beta_slope * code_sum;
  }
  s_beta[tid] = beta_sum;
  s_code[tid] = code_sum;
  __syncthreads();
  if (tid < channels && co < g.out_depth) {
    for (int r = 1; r < rows; ++r) {
      beta_sum += s_beta[r * channels + tid];
      code_sum += s_code[r * channels + tid];
    }
    // The sums start at zero (ZeroSumsKernel, the launch before; where PrepassKernel was launched beside it,
    // this waits for it; elsewhere it returns at once).
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    atomicAdd(&sums[co], static_cast<unsigned long long>(beta_sum));
    atomicAdd(&sums[g.out_depth + co], static_cast<unsigned long long>(code_sum));
  }
  const int taps_here = min(tile_taps, g.taps - k0);
  if (b_planes == nullptr) {
    for (int i = tid; i < channels * tile_taps; i += kPrepThreads) {
      const int ci = i / tile_taps, kk = i - ci * tile_taps;
      if (kk < taps_here && c0 + ci < g.out_depth) {
        codes_out[static_cast<int64_t>(c0 + ci) * g.taps + k0 + kk] = s_codes[i];
      }
    }
    return;
  }
  // The planes: chunk (channel ci of the tile, 16 taps kk.. of the tile, term r), the runs of 16 taps
  // adjacent in i: of one spatial tap, they are adjacent in B too (whole 32-byte sectors per pair of
  // lanes). taps_here is a multiple of 16 (taps = spatial taps * cg and k0 are), so a chunk is all inside
  // K or all past it.
  const int runs = tile_taps / kChunk;
  if (d.terms >= 2) {
    // A quad of terms at a time (LookupQuadChunks on the quad words of v).
    const int quads = (d.terms + 3) / 4;
    for (int i = tid; i < channels * runs * quads; i += kPrepThreads) {
      const int run = i % runs, quad = i / runs % quads, ci = i / runs / quads;
      const int kk = run * kChunk, t = k0 + kk;
      if (kk >= taps_here || c0 + ci >= g.out_depth) continue;
      const int spatial = t / g.cg, channel = t - spatial * g.cg;
      uint4 chunks[4];
      LookupQuadChunks(reinterpret_cast<const uint32_t*>(s_v) + quad * 256,
                       *reinterpret_cast<const uint4*>(s_codes + ci * tile_taps + kk), chunks);
      int8_t* dst = b_planes + static_cast<int64_t>(c0 + ci) * l.k_padded + static_cast<int64_t>(spatial) * l.slice_bytes +
                    4 * quad * g.cg + channel;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (4 * quad + k < d.terms) *reinterpret_cast<uint4*>(dst + k * g.cg) = chunks[k];
      }
    }
  } else {
    for (int i = tid; i < channels * runs * d.terms; i += kPrepThreads) {
      const int run = i % runs, r = i / runs % d.terms, ci = i / runs / d.terms;
      const int kk = run * kChunk, t = k0 + kk;
      if (kk >= taps_here || c0 + ci >= g.out_depth) continue;
      const int spatial = t / g.cg, channel = t - spatial * g.cg;
      const uint4 codes = *reinterpret_cast<const uint4*>(s_codes + ci * tile_taps + kk);
      const uint8_t* v = s_v + r * 256;
      *reinterpret_cast<uint4*>(b_planes + static_cast<int64_t>(c0 + ci) * l.k_padded +
                                static_cast<int64_t>(spatial) * l.slice_bytes + r * g.cg + channel) =
          shifted_v ? ShiftedChunk(codes) : LookupChunk(v, codes);
    }
  }
  if (k0 == 0) {
    const int pad_chunks = static_cast<int>(l.k_padded / kChunk - l.k_chunks);  // < kMaxBK / kChunk
    for (int i = tid; i < channels * pad_chunks; i += kPrepThreads) {
      const int ci = i / pad_chunks, q = static_cast<int>(l.k_chunks) + i % pad_chunks;
      if (c0 + ci < g.out_depth) {
        *reinterpret_cast<uint4*>(b_planes + static_cast<int64_t>(c0 + ci) * l.k_padded + q * kChunk) =
            make_uint4(0, 0, 0, 0);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    FilterSumsKernel(const T* __restrict__ filter, GpuGeometry g, GpuDecomposition d,
                     const GpuQuant* __restrict__ quant, unsigned long long* __restrict__ sums,
                     uint8_t* __restrict__ codes_out) {
  FilterSumsBlock<T>(static_cast<int>(blockIdx.x), filter, g, Layout(), d, quant, sums, codes_out, nullptr);
}

// Zeroes the per-channel sums that the filter blocks add into and the words of Layout::ready, first letting
// the pre-pass after it launch (programmatic dependent launch): the input pass's blocks, which do not read
// the sums, then run beside it; the filter blocks wait for it (griddepcontrol.wait) before their atomics,
// the input blocks before they mark their chunk ready. As a memset, it was a launch of its own that every
// call waited for (2.1-3.7 us a call on the H200).
__global__ void __launch_bounds__(kPrepThreads)
    ZeroSumsKernel(unsigned long long* __restrict__ sums, int count, uint32_t* __restrict__ ready, int ready_count) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < count + ready_count; i += stride) {
    if (i < count) {
      sums[i] = 0;
    } else {
      ready[i - count] = 0;
    }
  }
}

// The default pre-pass launch: blocks [0, filter_blocks) the filter's codes and sums (FilterSumsBlock; its
// planes too where b_planes is given, see there), the rest the fused input pass (InputPassBlock). Neither
// reads what the other writes (the one the filter, beta, v and the sums, which ZeroSumsKernel zeroes; the
// other the input, u and alpha), so they share a launch: the filter's few blocks, a latency chain of
// loads and atomics that took launches of their own after the input pass (sums 7 us and planes 5 us of
// 133 on 56x56 64->64, one term), run beside the input pass's many. They come first so that they start
// in the first wave. (Every block holds both roles' static shared memory, 5 KB.) kPairStores: the input
// pass's whole-sector stores for 16-channel slices of whole quads of terms (InputPassBlock).
//
// kBeside: the GEMM after it is the halo GEMM, launched beside it (programmatic dependent launch,
// DecomposedHaloKernel<..., true>), which reads a chunk of the planes once the pre-pass has marked it
// ready in Layout::ready (zeroed by ZeroSumsKernel; WaitHaloInputs). The input blocks let the GEMM launch
// as they start (griddepcontrol.launch_dependents), the filter blocks once they are done (past their wait
// for ZeroSumsKernel); the input blocks are persistent (kBesideInputBlocksPerSm a multiprocessor where the
// plan is not tuned; tuning also times kBesideInputBlocksMax, the count the kernel is built for), each
// taking chunks in InputChunk's order after one set-up and marking each. So the GEMM's
// blocks start as soon as the multiprocessors have room, where they waited for the whole pre-pass and a
// launch gap. H200, --decomposed-only (seeds 1721-1728, G LUT-MAC/s,
// exact table, in the run with the serial launches): 56x56 64->64 95.3 T against 91.5-91.9 T, 1x1 56x56
// 64->256 29.1 T against 27.8-28.3 T, ResNet-20's 3x3 s2 16->32 17.9 T against 16.9-17.3 T, the rest within
// the runs' spread; with a block per chunk (not persistent) the s2 layer lost 15% and with 2-3 blocks a
// multiprocessor 56x56 gained nothing. Five a multiprocessor once the quantizing took fewer instructions
// (H200, seeds 2601-2603, three rounds, G LUT-MAC/s): 56x56 64->64 97.8-98.4 T against 94.4-96.4 T with
// four, but 1x1 56x56 64->256 28.7-29.0 T against 29.4-29.8 T and ResNet-20's 1x1 s2 16->32 2.14-2.18 T
// against 2.25-2.28 T; so the tuning times both.
constexpr int kBesideInputBlocksPerSm = 4;
constexpr int kBesideInputBlocksMax = 5;
__device__ __forceinline__ void StoreRelaxed(uint32_t* p, uint32_t v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t LoadAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// The chunks of Layout::input_slices slices that hold the zero point's slices (the last `groups`):
// first .. last. (Not Layout fields: with them there, nvcc compiled the input pass differently.)
struct ZeroChunks {
  int first, last;
};
inline ZeroChunks ZeroChunksOf(const Layout& l, int groups) {
  return {static_cast<int>(l.items / l.input_slices), static_cast<int>((l.items + groups - 1) / l.input_slices)};
}
// The chunk of slices that the input pass beside the halo GEMM takes as its `index`-th: the zero point's
// chunks first, which padded taps read everywhere, then the others in order.
__device__ __forceinline__ int InputChunk(ZeroChunks z, int index) {
  const int zeros = z.last - z.first + 1;
  return index < zeros ? z.first + index : index - zeros;
}

// kStreaming (beside the halo GEMM only): the input read evict-first (InputPassBlock), with the GEMM's outputs
// stored so (DecomposedHaloKernel's kStreaming).
template <typename T, bool kPairStores, bool kBeside, bool kStreaming = false>
__global__ void __launch_bounds__(kPrepThreads, kBeside ? kBesideInputBlocksMax : 6)
    PrepassKernel(const T* __restrict__ input, const T* __restrict__ filter, GpuGeometry g, Layout l,
                  GpuDecomposition d, const GpuQuant* __restrict__ quant, int per_block, int lanes,
                  int filter_blocks, int8_t* __restrict__ planes, long long* __restrict__ alpha_sums,
                  int32_t* __restrict__ code_sums, unsigned long long* __restrict__ channel_sums,
                  uint8_t* __restrict__ filter_codes, int8_t* __restrict__ b_planes, uint32_t* __restrict__ ready,
                  ZeroChunks zero_chunks) {
  const int block = static_cast<int>(blockIdx.x);
  if (block < filter_blocks) {
    FilterSumsBlock<T>(block, filter, g, l, d, quant, channel_sums, filter_codes, b_planes);
    if (!kBeside) return;
    __syncthreads();  // (past the wait for ZeroSumsKernel, and every thread's planes stored)
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    if (threadIdx.x == 0) {
      __threadfence();  // the block's sums and planes before the count (cumulative over the barrier)
      atomicAdd(ready + kReadyFilterBlocks, 1u);
    }
    return;
  }
  if (!kBeside) {
    InputPassBlock<T, kPairStores, false>(input, g, l, d, quant, per_block, lanes, planes, alpha_sums, code_sums,
                                          [&](auto pass) { pass(block - filter_blocks); });
    return;
  }
  // Beside the halo GEMM: persistent input blocks, which take the chunks block, block + their count, ...
  // (InputChunk's order) after one set-up, and mark each ready.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  InputPassBlock<T, kPairStores, kStreaming>(input, g, l, d, quant, per_block, lanes, planes, alpha_sums, code_sums,
                                             [&](auto pass) {
    const int input_grid = static_cast<int>(gridDim.x) - filter_blocks;
    for (int b = block - filter_blocks; b < l.input_blocks; b += input_grid) {
      const int chunk = InputChunk(zero_chunks, b);
      pass(chunk);
      __syncthreads();  // every thread's stores of the chunk (and its codes read before the next's land)
      if (threadIdx.x == 0) {
        asm volatile("griddepcontrol.wait;\n" ::: "memory");  // ZeroSumsKernel's zeros before the marks
        __threadfence();
        StoreRelaxed(ready + kReadyChunks + chunk, 1u);
        atomicAdd(ready + kReadyInputChunks, 1u);
      }
    }
  });
}

// The v planes of the filter from the codes FilterSumsKernel wrote: one thread per 16-byte chunk of B
// ([co][k_padded], chunks of a row adjacent: coalesced writes), each entry's code read from the
// channel's K-contiguous codes (adjacent threads read adjacent bytes) and v from shared memory. Chunks
// past K and entries past terms * cg of a slice are 0.
__global__ void __launch_bounds__(kPrepThreads)
    FilterPlanesKernel(const uint8_t* __restrict__ f_codes, GpuGeometry g, Layout l, GpuDecomposition d,
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
        // As in InputPassBlock: one term, 16 consecutive channels, one aligned 16-byte read (f_codes is
        // 16-byte aligned, taps and tap * cg + ci are multiples of 16).
        uint4 chunk = make_uint4(0, 0, 0, 0);
        if (e0 < used) {
          const int r = e0 / g.cg, ci = e0 - r * g.cg;
          chunk = LookupChunk(reinterpret_cast<const uint8_t*>(s_v) + r * 256,
                              __ldg(reinterpret_cast<const uint4*>(codes + ci)));
        }
        *reinterpret_cast<uint4*>(b_planes + i * kChunk) = chunk;
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

// B for the pointwise tiles: b[co][c * R + r] = v[r][code(co, c)] (0 for r >= terms), from the codes
// FilterSumsKernel wrote ([co][c] for a 1x1 filter of one group). One thread a 4-byte word, v read through
// the read-only cache (a filter is small: staging v in shared memory first cost each block a chain of
// dependent loads, most of the launch's 10 us).
__global__ void __launch_bounds__(kPrepThreads)
    PointwiseFilterPlanesKernel(const uint8_t* __restrict__ f_codes, GpuGeometry g, GpuDecomposition d,
                                int8_t* __restrict__ b_planes) {
  const int quads = PointwiseTerms(d.terms) / 4;
  const int64_t words = static_cast<int64_t>(g.out_depth) * g.cg * quads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t entry = i / quads;  // co * cg + c
    const int r0 = static_cast<int>(i - entry * quads) * 4;
    const int code = __ldg(f_codes + entry);
    uint32_t word = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      if (r0 + b < d.terms) word |= static_cast<uint32_t>(static_cast<uint8_t>(__ldg(d.v + (r0 + b) * 256 + code))) << (8 * b);
    }
    reinterpret_cast<uint32_t*>(b_planes)[i] = word;
  }
}

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_PREPASSES_CUH_
