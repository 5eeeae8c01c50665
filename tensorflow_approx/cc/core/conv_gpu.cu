// CUDA kernels of the op (see conv_gpu.h). Built with -fmad=false: QuantizeToCode and DequantizeTerms
// must round exactly as the CPU build (-ffp-contract=off) does, and a fused multiply-add would change a
// code or an output bit.
#include "tensorflow_approx/cc/core/conv_gpu.h"

#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "tensorflow_approx/cc/core/conv_gpu_columns.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

using namespace gpu_internal;  // NOLINT: the shared device pieces, written as if declared here

// Tiled kernels: K taps per pipeline stage (one per lane of a warp).
constexpr int kBK = 32;
constexpr int kSparseBatch = 4;  // taps per step of the sparse path
constexpr int kLutSmemBytes = kLutEntries * 2;

__device__ __forceinline__ void CopyLutToShared(const uint16_t* __restrict__ lut, uint16_t* s_lut) {
  const uint4* src = reinterpret_cast<const uint4*>(lut);
  uint4* dst = reinterpret_cast<uint4*>(s_lut);
  for (int i = threadIdx.x; i < kLutEntries / 8; i += blockDim.x) dst[i] = __ldg(src + i);
}

// N consecutive 32-bit words of shared memory in vector loads (a k row of a warp's activation row
// offsets, TM words, or of a lane's weight offsets, TN uint16).
template <int N>
__device__ __forceinline__ void LoadWords(const void* p, uint32_t (&words)[N]) {
  static_assert(N == 1 || N == 2 || N % 4 == 0, "vector loads");
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      words[4 * i] = v.x, words[4 * i + 1] = v.y, words[4 * i + 2] = v.z, words[4 * i + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    words[0] = v.x, words[1] = v.y;
  } else {
    words[0] = *reinterpret_cast<const uint32_t*>(p);
  }
}

// A split tile's workspace slot: the lookup sums [BM][BN] and the activation code sums [BM] (32-bit, 64
// with kWide), and the count of blocks that have added theirs.
__host__ __device__ constexpr size_t SplitSlotBytes(int bm, int bn, bool wide) {
  return ((static_cast<size_t>(bm) * bn + bm) * (wide ? 8 : 4) + 4 + 15) / 16 * 16;
}

// The filter's codes, once per call, for the tiled kernels: table column offsets (code << 1) in the
// filter's HWIO order, and per output channel the code sum and the sum of LUT[zp][code] (sums[out_depth
// + co]), added into zeroed sums. Threads of a warp take adjacent channels (coalesced), each a run of
// kFilterRun taps, each quantized with its channel's parameters.
constexpr int kFilterRun = 32;
template <typename T>
__global__ void __launch_bounds__(256)
    FilterCodesKernel(const T* __restrict__ filter, int taps, int out_depth, const GpuQuant* __restrict__ quant,
                      const uint16_t* __restrict__ lut, uint16_t* __restrict__ codes,
                      unsigned long long* __restrict__ sums) {
  const int zero_point = quant->input.zero_point;
  const int64_t runs = (static_cast<int64_t>(taps) + kFilterRun - 1) / kFilterRun * out_depth;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < runs;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int co = static_cast<int>(idx % out_depth);
    const int k0 = static_cast<int>(idx / out_depth) * kFilterRun;
    const QuantParams qf = quant->ChannelQuant(co).filter;
    unsigned long long code_sum = 0, row_sum = 0;
    for (int k = k0; k < min(taps, k0 + kFilterRun); ++k) {
      const int64_t i = static_cast<int64_t>(k) * out_depth + co;
      const uint32_t code = QuantizeToCode(ToFloat(filter[i]), qf);
      codes[i] = static_cast<uint16_t>(code << 1);
      code_sum += code;
      row_sum += __ldg(lut + zero_point * 256 + code);
    }
    atomicAdd(&sums[co], code_sum);
    atomicAdd(&sums[out_depth + co], row_sum);
  }
}

// Implicit GEMM: a block of NW warps computes tiles of BM = NW * TM output pixels x BN = 32 * TN output channels of
// one group over all K taps, looping over tiles (a persistent grid: the table is set up in shared memory
// once per block, not once per tile). Warp w owns pixels w * TM .. w * TM + TM - 1 and lane l channels
// l * TN .. l * TN + TN - 1. At every lookup the 32 lanes share the row operand (activation code) and
// differ in the column (weight code): the bank of a table entry then depends on the weight alone, real
// weights spread over the banks, and equal activations are a broadcast. (Splitting a warp's lanes over
// taps instead, to narrow the tile, was measured slower: lanes with different rows collide in banks.)
//
// Zero-point skipping. The block keeps in shared memory the rebased table
//   E[a][w] = LUT[a][w] - R[w] + off,  R[w] = LUT[zp][w] (zp: the activation zero point),
// with off = -min(LUT[a][w] - R[w]), when those differences span at most 65535 (true of the exact product
// and, at every zero point, of 35 of the seed's 36 EvoApprox tables; when not, R = 0 and off = 0, E is
// the table and nothing is skipped). Then sum_k LUT[a_k][w_k] = sum_k (E[a_k][w_k] - off) + sum_k R[w_k], the term of a tap whose
// activation is the zero point is E[zp][w] - off = 0, and the last sum is a per-channel constant taken
// by the filter codes pass. Activations at the zero point (ReLU zeros, padding) are often half of
// them; per k tile each warp ballots which of its pixels' taps are not at the zero point and takes the
// path with the fewest shared loads for that count: register tiles over all k rows with the lookups of
// zero-point taps skipped (masked: operand loads per k row, lookups per nonzero tap), or only the
// nonzero taps, kSparseBatch at a time so that their loads overlap (sparse: an operand load per tap and
// pixel, so it pays at low density and with 4+ channels per lane). Tables that cannot be rebased take
// the dense path: register tiles, every lookup made.
// Every processed tap adds off, which is taken off per tile; sums are modular in 32 bits (exact: the
// true sum fits when K <= 65537) or moved to 64 bits every tile (kWide; no sparse path).
//
// Split K (stream-K). With split_ws, block b takes the k tiles [b * U / G, (b + 1) * U / G) of the
// U = tiles * k_tiles units (G blocks), so every block gets the same work however few tiles there are.
// A tile that several blocks share has the workspace slot of the block holding its first k tile: each
// adds its integer sums there (the sums are modular, so order does not matter), and the last to count
// itself in on the slot's counter reads the totals and writes the output.
//
// The tiles hold activations as the byte offsets of their table rows (code << 9) and weights as byte
// offsets w << 1, so a lookup is one add and one 16-bit shared load, with no unpacking.
template <typename T, int NW, int TM, int TN, bool kWide>
__global__ void __launch_bounds__(NW * 32, 1)
    TiledConvKernel(const T* __restrict__ input, const uint16_t* __restrict__ w_codes,
                    const unsigned long long* __restrict__ w_sums, T* __restrict__ output,
                    const uint16_t* __restrict__ lut, GpuGeometry g, Epilogue epi, int m_tiles, int n_tiles,
                    ZeroSkip zero_skip,
                    unsigned char* __restrict__ split_ws) {
  constexpr int NT = NW * 32, BM = NW * TM, BN = 32 * TN, BK = kBK, U = kSparseBatch;
  // Words per k row of the activation tile: the padding puts the loader's 16-byte stores (lanes differ in
  // k) on different banks and keeps rows aligned for the vector row loads (TM words).
  constexpr int AS = BM + 4;
  constexpr int A_PER = BM * BK / NT;  // activations per loader thread, in groups of 4 pixels
  constexpr int A_GROUPS = A_PER / 4;
  constexpr int W_PER = BN * BK / NT;
  static_assert(BK == 32, "one lane per tap of a k tile (the ballots)");
  static_assert(NT % BK == 0 && NT % BN == 0 && A_GROUPS >= 1 && A_GROUPS * 4 * NT == BM * BK &&
                    W_PER * NT == BN * BK, "tiling");
  static_assert(A_PER <= 16 && W_PER <= 32, "kind masks");
  static_assert(TM == 4 || TM == 8 || TM == 16, "activation row loads");
  static_assert(TN == 2 || TN == 4 || TN == 8, "weight row loads");
  using ActSum = typename std::conditional<kWide, unsigned long long, uint32_t>::type;

  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* s_lut = reinterpret_cast<uint16_t*>(smem);                              // E
  uint32_t* s_a = reinterpret_cast<uint32_t*>(smem + kLutSmemBytes);                // [2][BK][AS]
  uint16_t* s_w = reinterpret_cast<uint16_t*>(s_a + 2 * BK * AS);                    // [2][BK][BN]
  int4* s_pix = reinterpret_cast<int4*>(s_w + 2 * BK * BN);                          // [BM]
  uint16_t* s_row = reinterpret_cast<uint16_t*>(s_pix + BM);                         // [256] R
  int* s_range = reinterpret_cast<int*>(s_row + 256);                                // min, max of LUT - R;
                                                                                     // then: last of a split tile

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  using Real = typename RealOf<T>::type;
  const QuantParams qi = epi.quant->input;
  const DequantizeTerms<Real> deq = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  const uint32_t zp = static_cast<uint32_t>(qi.zero_point);
  const uint32_t zp_row = zp << 9;
  const int in_hw = g.in_h * g.in_w;
  const int k_tiles = (g.taps + BK - 1) / BK;
  const uint32_t tail = static_cast<uint32_t>(k_tiles * BK - g.taps);  // taps past K: codes (zp, 0)
  const int total_tiles = m_tiles * n_tiles * g.groups;

  // The rebased table (see above).
  const uint4* lut16 = reinterpret_cast<const uint4*>(lut);
  for (int i = tid; i < 256; i += NT) s_row[i] = lut[zp * 256 + i];
  if (tid == 0) {
    s_range[0] = INT_MAX;
    s_range[1] = INT_MIN;
  }
  __syncthreads();
  {
    int lo = INT_MAX, hi = INT_MIN;
    for (int i = tid; i < kLutEntries / 8; i += NT) {
      const uint4 v = __ldg(lut16 + i);
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
      const int w0 = (i * 8) & 255;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int d = static_cast<int>((words[j / 2] >> (16 * (j % 2))) & 0xFFFFu) - s_row[w0 + j];
        lo = min(lo, d);
        hi = max(hi, d);
      }
    }
    lo = __reduce_min_sync(0xFFFFFFFFu, lo);
    hi = __reduce_max_sync(0xFFFFFFFFu, hi);
    if (lane == 0) {
      atomicMin(&s_range[0], lo);
      atomicMax(&s_range[1], hi);
    }
  }
  __syncthreads();
  const bool rebased = s_range[1] - s_range[0] <= 65535;  // row zp is in the table: lo <= 0 <= hi
  const uint32_t off = rebased ? static_cast<uint32_t>(-s_range[0]) : 0u;
  const bool may_mask = rebased && zero_skip != ZeroSkip::kOff;
  // With two channels per lane a sparse step has too few lookups per operand load to pay.
  const bool may_sparse = may_mask && !kWide && TN >= 4 && zero_skip != ZeroSkip::kMasked;
  __syncthreads();  // everyone has read s_range and s_row as R before R may become 0
  if (!rebased) {
    for (int i = tid; i < 256; i += NT) s_row[i] = 0;
    __syncthreads();
  }
  {
    uint4* dst = reinterpret_cast<uint4*>(s_lut);
    for (int i = tid; i < kLutEntries / 8; i += NT) {
      const uint4 v = __ldg(lut16 + i);
      uint32_t words[4] = {v.x, v.y, v.z, v.w};
      const int w0 = (i * 8) & 255;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t e0 = (words[j] & 0xFFFFu) - s_row[w0 + 2 * j] + off;
        const uint32_t e1 = (words[j] >> 16) - s_row[w0 + 2 * j + 1] + off;
        words[j] = (e0 & 0xFFFFu) | (e1 << 16);
      }
      dst[i] = make_uint4(words[0], words[1], words[2], words[3]);
    }
  }
  // (the first tile's barrier publishes the table)

  const int a_k = tid % BK, a_g0 = tid / BK;
  const int w_n = tid % BN, w_k0 = tid / BN;
  const char* lut_bytes = reinterpret_cast<const char*>(s_lut);

  // The work: whole tiles in turn, or with split_ws this block's share of the units (see above); the
  // host keeps units * gridDim.x below 2^62.
  const long long units = static_cast<long long>(total_tiles) * k_tiles;
  long long pos = split_ws != nullptr ? units * blockIdx.x / gridDim.x : 0;
  const long long end = split_ws != nullptr ? units * (blockIdx.x + 1) / gridDim.x : 0;
  int next_tile = blockIdx.x;
  for (;;) {
    int tile, kb, ke;  // k tiles [kb, ke) of this tile
    if (split_ws != nullptr) {
      if (pos >= end) break;
      tile = static_cast<int>(pos / k_tiles);
      kb = static_cast<int>(pos - static_cast<long long>(tile) * k_tiles);
      ke = static_cast<int>(min(static_cast<long long>(k_tiles), kb + (end - pos)));
      pos += ke - kb;
    } else {
      if (next_tile >= total_tiles) break;
      tile = next_tile;
      next_tile += gridDim.x;
      kb = 0;
      ke = k_tiles;
    }
    const int mt = tile % m_tiles;
    const int rest = tile / m_tiles;
    const int nt = rest % n_tiles;
    const int grp = rest / n_tiles;
    const int m0 = mt * BM, n0 = nt * BN;
    for (int i = tid; i < BM; i += NT) {
      const int p = m0 + i;
      int4 info = make_int4(0, 0, 0, 0);
      if (p < g.pixels) {
        const int ow = p % g.out_w;
        const int t = p / g.out_w;
        const int oh = t % g.out_h;
        const int n = t / g.out_h;
        const int channel0 = grp * g.cg;
        info.x = g.nchw ? (n * g.in_depth + channel0) * in_hw : n * in_hw * g.in_depth + channel0;
        info.y = oh * g.stride_h - g.pad_top;
        info.z = ow * g.stride_w - g.pad_left;
        info.w = 1;
      }
      s_pix[i] = info;
    }
    __syncthreads();  // s_pix ready; every warp is past the previous tile's epilogue

    // Loader state: this thread's tap (kh, kw, ci) of column a_k, advanced by BK per tile without a
    // division in the common case. K-fast lanes read consecutive channels of one NHWC pixel.
    const int k_first = kb * BK + a_k;
    int a_ci = k_first % g.cg, a_kw = (k_first / g.cg) % g.filter_w, a_kh = k_first / g.cg / g.filter_w;
    float a_val[A_PER];
    uint32_t a_kind = 0;  // 2 bits per activation: 1 padded, 2 none
    uint32_t w_code[W_PER];  // offsets of the weights (column w_n); 0 past K or the group's channels

    auto load_tile = [&](int k0) {
      const bool k_ok = k0 + a_k < g.taps;
      const int dh = a_kh * g.dil_h, dw = a_kw * g.dil_w;
      a_kind = 0;
#pragma unroll
      for (int i = 0; i < A_PER; ++i) {
        const int4 pix = s_pix[4 * (a_g0 + (i / 4) * (NT / BK)) + i % 4];
        const int ih = pix.y + dh, iw = pix.z + dw;
        const bool inside = static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w);
        a_val[i] = 0.f;
        if (!k_ok || !pix.w) {
          a_kind |= 2u << (2 * i);
        } else if (!inside) {
          a_kind |= 1u << (2 * i);
        } else {
          const int off_in = g.nchw ? pix.x + a_ci * in_hw + ih * g.in_w + iw
                                    : pix.x + (ih * g.in_w + iw) * g.in_depth + a_ci;
          a_val[i] = ToFloat(input[off_in]);
        }
      }
#pragma unroll
      for (int i = 0; i < W_PER; ++i) {
        const int k = k0 + w_k0 + i * (NT / BN);
        const int co = n0 + w_n;
        w_code[i] = k < g.taps && co < g.npg ? __ldg(w_codes + k * g.out_depth + grp * g.npg + co) : 0u;
      }
      a_ci += BK;
      if (a_ci >= g.cg) {
        const int q = a_ci / g.cg;
        a_ci -= q * g.cg;
        a_kw += q;
        if (a_kw >= g.filter_w) {
          a_kh += a_kw / g.filter_w;
          a_kw %= g.filter_w;
        }
      }
    };
    // Padding and missing taps are stored as the zero point: the sparse path never visits them.
    auto store_tile = [&](int buf) {
      uint32_t* a = s_a + buf * BK * AS + a_k * AS;
#pragma unroll
      for (int grp4 = 0; grp4 < A_GROUPS; ++grp4) {
        uint32_t rows[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int i = grp4 * 4 + j;
          rows[j] = (((a_kind >> (2 * i)) & 3u) == 0 ? QuantizeToCode(a_val[i], qi) : zp) << 9;
        }
        *reinterpret_cast<uint4*>(a + 4 * (a_g0 + grp4 * (NT / BK))) = make_uint4(rows[0], rows[1], rows[2], rows[3]);
      }
      uint16_t* w = s_w + buf * BK * BN;
#pragma unroll
      for (int i = 0; i < W_PER; ++i) {
        const int kl = w_k0 + i * (NT / BN);
        w[kl * BN + w_n] = static_cast<uint16_t>(w_code[i]);
      }
    };

    uint32_t acc[TM][TN];
    long long acc64[kWide ? TM : 1][kWide ? TN : 1];
    ActSum act_sum[TM];  // code sums of the warp's pixels (the same in every lane)
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      act_sum[m] = 0;
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        acc[m][n] = 0;
        if (kWide) acc64[kWide ? m : 0][kWide ? n : 0] = 0;
      }
    }

    load_tile(kb * BK);
    store_tile(0);
    __syncthreads();
    for (int kt = kb; kt < ke; ++kt) {
      const int cur = (kt - kb) & 1;
      if (kt + 1 < ke) load_tile((kt + 1) * BK);  // global loads in flight during the lookups

      const uint32_t* a_tile = s_a + cur * BK * AS + warp * TM;  // + k * AS + m
      const uint16_t* w_tile = s_w + cur * BK * BN + lane * TN;  // + k * BN + n
      // Lane k looks at tap k of the warp's pixels: which are not the zero point, and their code sums.
      uint32_t masks[TM];
      int sparse_steps = 0, nonzero = 0;
      {
        uint32_t rows[TM];
        LoadWords<TM>(a_tile + lane * AS, rows);
#pragma unroll
        for (int m = 0; m < TM; ++m) {
          masks[m] = __ballot_sync(0xFFFFFFFFu, rows[m] != zp_row);
          act_sum[m] += __reduce_add_sync(0xFFFFFFFFu, rows[m] >> 9);
          sparse_steps += (__popc(masks[m]) + U - 1) / U * U;
          nonzero += __popc(masks[m]);
        }
      }
      // The path (warp-uniform), by shared loads per lane: the masked path never makes more than the
      // dense one (and measured as fast even with no zero-point taps), the sparse one adds a load per tap
      // for its mask work.
      enum { kDensePath, kMaskedPath, kSparsePath } path = kDensePath;
      if (zero_skip == ZeroSkip::kSparse && may_sparse) {
        path = kSparsePath;
      } else if (zero_skip == ZeroSkip::kSparse || zero_skip == ZeroSkip::kMasked) {
        path = may_mask ? kMaskedPath : kDensePath;
      } else if (may_mask) {
        const int masked_cost = BK * (TM / 4 + TN / 2) + nonzero * TN;
        const int sparse_cost = may_sparse ? sparse_steps * (TN + 3) : INT_MAX;
        path = sparse_cost < masked_cost ? kSparsePath : kMaskedPath;
      }
      if (path == kSparsePath) {
#pragma unroll
        for (int m = 0; m < TM; ++m) {
          uint32_t mask = masks[m], steps = 0;
          while (mask != 0) {  // warp-uniform: U taps per step; missing ones are (zp, w), adding off
            uint32_t row[U], wv[U][TN / 2];
#pragma unroll
            for (int u = 0; u < U; ++u) {
              const int k = __ffs(mask) - 1;
              mask &= mask - 1;
              const int kk = k >= 0 ? k : 0;
              row[u] = k >= 0 ? a_tile[kk * AS + m] : zp_row;
              LoadWords<TN / 2>(w_tile + kk * BN, wv[u]);
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
              for (int n = 0; n < TN; ++n) {
                acc[m][n] += *reinterpret_cast<const uint16_t*>(lut_bytes + row[u] + ((wv[u][n / 2] >> (16 * (n % 2))) & 0xFFFFu));
              }
            steps += U;
          }
#pragma unroll
          for (int n = 0; n < TN; ++n) acc[m][n] -= steps * off;
        }
      } else {
        // Dense and masked: k rows of TM activation and TN weight operands; the masked path makes only
        // the lookups of taps not at the zero point (the others add E[zp][w] - off = 0).
        auto rows = [&](auto masked_tag) {
          constexpr bool kMasked = decltype(masked_tag)::value;
          constexpr int KU = 8;  // taps per unrolled step: the mask tests are constant-bit tests
#pragma unroll 1
          for (int k0 = 0; k0 < BK; k0 += KU) {
            uint32_t live[TM];
#pragma unroll
            for (int m = 0; m < TM; ++m) live[m] = kMasked ? masks[m] >> k0 : 0u;
#pragma unroll
            for (int k = k0; k < k0 + KU; k += 2) {
              uint32_t r[2][TM], c[2][TN];
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                uint32_t wv[TN / 2];
                LoadWords<TM>(a_tile + (k + h) * AS, r[h]);
                LoadWords<TN / 2>(w_tile + (k + h) * BN, wv);
#pragma unroll
                for (int n = 0; n < TN; ++n) c[h][n] = (wv[n / 2] >> (16 * (n % 2))) & 0xFFFFu;
              }
#pragma unroll
              for (int m = 0; m < TM; ++m) {
                if (kMasked) {
#pragma unroll
                  for (int h = 0; h < 2; ++h) {
                    if ((live[m] >> (k - k0 + h)) & 1u) {
#pragma unroll
                      for (int n = 0; n < TN; ++n)
                        acc[m][n] += *reinterpret_cast<const uint16_t*>(lut_bytes + (r[h][m] + c[h][n]));
                    }
                  }
                } else {
#pragma unroll
                  for (int n = 0; n < TN; ++n) {
                    const uint32_t l0 = *reinterpret_cast<const uint16_t*>(lut_bytes + (r[0][m] + c[0][n]));
                    const uint32_t l1 = *reinterpret_cast<const uint16_t*>(lut_bytes + (r[1][m] + c[1][n]));
                    acc[m][n] += l0 + l1;
                  }
                }
              }
            }
          }
#pragma unroll
          for (int m = 0; m < TM; ++m) {
            const uint32_t taps = kMasked ? __popc(masks[m]) : BK;
#pragma unroll
            for (int n = 0; n < TN; ++n) acc[m][n] -= taps * off;
          }
        };
        if (path == kMaskedPath) {
          rows(std::true_type());
        } else {
          rows(std::false_type());
        }
      }
      if (kWide) {
        // This tile's part of the sum is below 32 * 65535 in magnitude: move it to 64 bits.
#pragma unroll
        for (int m = 0; m < TM; ++m)
#pragma unroll
          for (int n = 0; n < TN; ++n) {
            acc64[kWide ? m : 0][kWide ? n : 0] += static_cast<int32_t>(acc[m][n]);
            acc[m][n] = 0;
          }
      }

      if (kt + 1 < ke) store_tile(cur ^ 1);  // that buffer was last read before the previous barrier
      __syncthreads();
    }

    if (kb > 0 || ke < k_tiles) {
      // A split tile: add this block's sums to the slot, and go on only if this block is the last.
      const long long first = static_cast<long long>(tile) * k_tiles;
      const int b0 = static_cast<int>(((first + 1) * gridDim.x - 1) / units);  // the block of k tile 0
      const int b1 = static_cast<int>(((first + k_tiles) * gridDim.x - 1) / units);  // of the last
      unsigned char* slot = split_ws + static_cast<size_t>(b0) * SplitSlotBytes(BM, BN, kWide);
      ActSum* ws_acc = reinterpret_cast<ActSum*>(slot);  // [BM][BN]
      ActSum* ws_act = ws_acc + BM * BN;
      unsigned int* ws_count = reinterpret_cast<unsigned int*>(ws_act + BM);
#pragma unroll
      for (int m = 0; m < TM; ++m) {
#pragma unroll
        for (int n = 0; n < TN; ++n) {
          const ActSum part = kWide ? static_cast<ActSum>(acc64[kWide ? m : 0][kWide ? n : 0]) : acc[m][n];
          atomicAdd(&ws_acc[(warp * TM + m) * BN + lane * TN + n], part);
        }
        if (lane == 0) atomicAdd(&ws_act[warp * TM + m], act_sum[m]);
      }
      __threadfence();
      __syncthreads();
      if (tid == 0) s_range[0] = atomicAdd(ws_count, 1u) == static_cast<unsigned>(b1 - b0);
      __syncthreads();
      if (!s_range[0]) continue;  // block-uniform; the next tile's first barrier orders s_range
      __threadfence();
#pragma unroll
      for (int m = 0; m < TM; ++m) {
#pragma unroll
        for (int n = 0; n < TN; ++n) {
          const ActSum total = __ldcg(&ws_acc[(warp * TM + m) * BN + lane * TN + n]);
          if (kWide) {
            acc64[kWide ? m : 0][kWide ? n : 0] = static_cast<long long>(total);
          } else {
            acc[m][n] = static_cast<uint32_t>(total);
          }
        }
        act_sum[m] = __ldcg(&ws_act[warp * TM + m]);
      }
    }

    // Taps past K were processed as (zp, 0) by the dense path: E[zp][0] - off each (0 when rebased).
    const long long tail_term = static_cast<long long>(tail) * (static_cast<long long>(s_lut[zp << 8]) - off);
    if (epi.debug_act_sum != nullptr && nt == 0 && lane == 0) {
#pragma unroll
      for (int m = 0; m < TM; ++m) {
        const int p = m0 + warp * TM + m;
        if (p < g.pixels) {
          epi.debug_act_sum[static_cast<int64_t>(p) * g.groups + grp] =
              static_cast<long long>(act_sum[m]) - static_cast<long long>(tail) * zp;
        }
      }
    }
    // Channels outer: a channel's sums and (per-channel ranges) its terms are read once per tile, not
    // once per pixel; that read is most of the epilogue of a layer with few taps (1x1).
#pragma unroll
    for (int n = 0; n < TN; ++n) {
      const int nl = lane * TN + n;
      if (n0 + nl >= g.npg) continue;
      const int co = grp * g.npg + n0 + nl;
      // R = 0 when the table is not rebased (see above).
      const long long rsum = rebased ? static_cast<long long>(__ldg(w_sums + g.out_depth + co)) : 0;
      const long long w_sum = static_cast<long long>(__ldg(w_sums + co));
      const DequantizeTerms<Real> terms = ChannelTerms(epi.quant, per_channel, co, deq);
#pragma unroll
      for (int m = 0; m < TM; ++m) {
        const int p = m0 + warp * TM + m;
        if (p >= g.pixels) continue;
        const long long a_sum = static_cast<long long>(act_sum[m]) - static_cast<long long>(tail) * zp;
        const int64_t sum =
            kWide ? acc64[kWide ? m : 0][kWide ? n : 0] + rsum - tail_term
                  : static_cast<int64_t>(acc[m][n] + static_cast<uint32_t>(rsum) - static_cast<uint32_t>(tail_term));
        StoreOutput(g, output, p, co, FromReal<T>(terms(sum, a_sum, w_sum)));
        if (epi.debug_acc != nullptr) epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co] = sum;
      }
    }
    // The next tile writes s_pix and tile buffer 0 (read last before the final barrier of the k loop).
  }
}

// One thread per output element, channels fastest (coalesced for depthwise NHWC). For layers whose
// groups have too few output channels to fill a warp's lanes with distinct weights.
template <typename T, bool kSharedLut>
__global__ void __launch_bounds__(256)
    DirectConvKernel(const T* __restrict__ input, const T* __restrict__ filter, T* __restrict__ output,
                     const uint16_t* __restrict__ lut, GpuGeometry g, Epilogue epi) {
  using Real = typename RealOf<T>::type;
  const QuantParams qi = epi.quant->input, qf_tensor = epi.quant->filter;
  const DequantizeTerms<Real> deq_tensor = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  extern __shared__ __align__(16) unsigned char smem[];
  const uint16_t* table = lut;
  if (kSharedLut) {
    uint16_t* s_lut = reinterpret_cast<uint16_t*>(smem);
    CopyLutToShared(lut, s_lut);
    __syncthreads();
    table = s_lut;
  }
  const int64_t total = static_cast<int64_t>(g.pixels) * g.out_depth;
  const int in_hw = g.in_h * g.in_w;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int co = static_cast<int>(idx % g.out_depth);
    const int p = static_cast<int>(idx / g.out_depth);
    const int grp = co / g.npg;
    const int ow = p % g.out_w;
    const int oh = (p / g.out_w) % g.out_h;
    const int n = p / g.out_w / g.out_h;
    const QuantParams qf = ChannelFilter(epi.quant, per_channel, co, qf_tensor);
    unsigned long long acc = 0;
    long long a_sum = 0, w_sum = 0;
    for (int kh = 0; kh < g.filter_h; ++kh) {
      const int ih = oh * g.stride_h - g.pad_top + kh * g.dil_h;
      for (int kw = 0; kw < g.filter_w; ++kw) {
        const int iw = ow * g.stride_w - g.pad_left + kw * g.dil_w;
        const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        for (int ci = 0; ci < g.cg; ++ci) {
          const int c = grp * g.cg + ci;
          uint32_t a = qi.zero_point;
          if (inside) {
            const int off = g.nchw ? (n * g.in_depth + c) * in_hw + ih * g.in_w + iw
                                   : ((n * g.in_h + ih) * g.in_w + iw) * g.in_depth + c;
            a = QuantizeToCode(ToFloat(input[off]), qi);
          }
          const uint32_t w =
              QuantizeToCode(ToFloat(filter[((kh * g.filter_w + kw) * g.cg + ci) * g.out_depth + co]), qf);
          acc += kSharedLut ? table[(a << 8) | w] : __ldg(table + ((a << 8) | w));
          a_sum += a;
          w_sum += w;
        }
      }
    }
    const DequantizeTerms<Real> deq = ChannelTerms(epi.quant, per_channel, co, deq_tensor);
    StoreOutput(g, output, p, co, FromReal<T>(deq(static_cast<int64_t>(acc), a_sum, w_sum)));
    if (epi.debug_acc != nullptr) epi.debug_acc[idx] = static_cast<int64_t>(acc);
    if (epi.debug_act_sum != nullptr && co % g.npg == 0) {
      epi.debug_act_sum[static_cast<int64_t>(p) * g.groups + grp] = a_sum;
    }
  }
}

// rate: a block's throughput relative to tile128x64's, from benchmarks/gpu --sweep on an H200 (3x3
// layers, realistic data; tile128x64 ~2.4 T LUT-MAC/s when every SM is busy). Sixteen warps hide the
// shared-memory latency that eight leave exposed (the table allows one block per SM); wider register
// tiles make more lookups per operand load and per mask test. Every tile gains less when K is small
// (its prologue and epilogue are paid every couple of k tiles).
//
// Every tiled kernel, once: its GpuKernel, warps per block, pixels and channels per thread, rate, rate
// when K < 256.
#define TFAPPROX_TILED_KERNELS(X)            \
  X(kTile128x64W16, 16, 8, 2, 1.68, 1.3)     \
  X(kTile128x128W16, 16, 8, 4, 2.39, 1.62)   \
  X(kTile64x128W16, 16, 4, 4, 2.13, 1.51)    \
  X(kTile128x64, 8, 16, 2, 1.0, 0.79)        \
  X(kTile64x128, 8, 8, 4, 1.47, 1.09)        \
  X(kTile64x256, 8, 8, 8, 2.17, 1.07)        \
  X(kTile32x128, 8, 4, 4, 1.34, 1.01)        \
  X(kTile64x64, 8, 8, 2, 0.95, 0.75)

struct TileConfig {
  GpuKernel kernel;
  int bm, bn;
  double rate, rate_small_k;
};
#define TFAPPROX_TILE_CONFIG(kernel, nw, tm, tn, rate, rate_small_k) \
  {GpuKernel::kernel, (nw) * (tm), 32 * (tn), rate, rate_small_k},
constexpr TileConfig kTiles[] = {TFAPPROX_TILED_KERNELS(TFAPPROX_TILE_CONFIG)};
#undef TFAPPROX_TILE_CONFIG

constexpr int TiledSmemBytes(int bm, int bn) {
  return kLutSmemBytes + 2 * kBK * (bm + 4) * 4 + 2 * kBK * bn * 2 + bm * 16 + 256 * 2 + 2 * 4;
}
constexpr int MaxTiledSmemBytes() {
  int most = 0;
  for (const TileConfig& t : kTiles) most = std::max(most, TiledSmemBytes(t.bm, t.bn));
  return most;
}
constexpr int kMaxTiledSmemBytes = MaxTiledSmemBytes();

// (DeviceInfo and GetDeviceInfo: conv_gpu_common.cuh.)

// How a tile covers a shape: blocks, k tiles, and the share of the tiles' outputs that are real.
struct TileFit {
  int64_t blocks, k_tiles;
  double fill;
};
TileFit Fit(const ConvShape& s, int bm, int bn) {
  const int64_t m_tiles = (s.out_pixels() + bm - 1) / bm;
  const int64_t n_tiles = (s.out_depth_per_group() + bn - 1) / bn;
  return {m_tiles * n_tiles * s.groups(), (s.taps() + kBK - 1) / kBK,
          static_cast<double>(s.out_pixels()) * s.out_depth_per_group() /
              (static_cast<double>(m_tiles * bm) * (n_tiles * bn))};
}

// A split layer's speed relative to whole tiles in full waves (the fixups' workspace traffic).
constexpr double kSplitEfficiency = 0.95;

// Whether K can be split for this fit: at least two k tiles, and the kernel's unit arithmetic
// (units * grid) within 64 bits.
bool CanSplit(const TileFit& f, int sms) {
  return f.k_tiles >= 2 && f.blocks * f.k_tiles < (int64_t{1} << 62) / std::max(sms, 1);
}

// What runs: the kernel, whether K is split, and the grid (persistent: at most one block per
// multiprocessor, the table leaves room for no second one). A tiled kernel's workspace holds the
// filter's codes, then their per-channel sums, then (split) one slot per block.
struct Plan {
  GpuKernel kernel = GpuKernel::kDirect;
  bool split = false;
  int64_t grid = 0;
  size_t codes_bytes = 0, sums_bytes = 0, workspace_bytes = 0;
};

bool NeedsWide(const ConvShape& s, const GpuOptions& o) { return o.force_wide || s.taps() > 65537; }  // 32-bit sums hold 65537 lookups of 65535

Plan MakePlan(const ConvShape& s, const GpuOptions& o, const DeviceInfo& dev) {
  Plan plan;
  if ((o.kernel == GpuKernel::kAuto && s.out_depth_per_group() <= 32) || o.kernel == GpuKernel::kColumns) {
    // Groups too narrow for a tile: the columns kernel where its table and filter fit in shared memory.
    // At 32 channels it beats every tile on ResNet-20's layers (H200: 1.2-2.0x, realistic and uniform
    // codes; benchmarks/gpu/README.md); at 64 the tiles win on realistic codes.
    const ColumnsShared layout(s.filter_elements(), s.out_depth);
    if (layout.bytes <= static_cast<size_t>(dev.smem_optin) && s.taps() < (int64_t{1} << 23)) {
      plan.kernel = GpuKernel::kColumns;  // (no workspace: each block builds its shared memory)
    }
    return plan;
  }
  if (dev.smem_optin < kMaxTiledSmemBytes) return plan;
  if (o.kernel == GpuKernel::kDirect) return plan;
  const int sms = std::max(dev.sms, 1);
  // Estimated speed: padding waste x the last wave's idle multiprocessors (or the split's cost) x rate.
  double best_score = -1;
  const TileConfig* best = nullptr;
  for (const TileConfig& t : kTiles) {
    if (o.kernel != GpuKernel::kAuto && o.kernel != t.kernel) continue;
    const TileFit f = Fit(s, t.bm, t.bn);
    const int64_t waves = (f.blocks + sms - 1) / sms;
    const double wave_eff = static_cast<double>(f.blocks) / static_cast<double>(waves * sms);
    const bool can_split = o.split_k != SplitK::kOff && CanSplit(f, sms);
    const bool split = can_split && (o.split_k == SplitK::kAlways || wave_eff < kSplitEfficiency);
    const double score = f.fill * (split ? kSplitEfficiency : wave_eff) *
                         (s.taps() >= 256 ? t.rate : t.rate_small_k);
    if (score > best_score + 1e-9) {
      best_score = score;
      best = &t;
      plan.split = split;
      plan.grid = split ? std::min<int64_t>(f.blocks * f.k_tiles, sms) : std::min<int64_t>(f.blocks, sms);
    }
  }
  if (best == nullptr) return Plan();  // an unknown kernel value
  plan.kernel = best->kernel;
  plan.codes_bytes = (static_cast<size_t>(s.filter_elements()) * sizeof(uint16_t) + 15) / 16 * 16;
  plan.sums_bytes = static_cast<size_t>(s.out_depth) * 2 * sizeof(unsigned long long);
  plan.workspace_bytes = plan.codes_bytes + plan.sums_bytes +
                         (plan.split ? plan.grid * SplitSlotBytes(best->bm, best->bn, NeedsWide(s, o)) : 0);
  return plan;
}

// The filter's codes and sums into the workspace (after clearing the sums and split slots), then the
// tiled kernel.
template <typename T, int NW, int TM, int TN>
std::string LaunchTiled(bool wide, ZeroSkip zero_skip, const Plan& plan, unsigned char* workspace, int sms,
                        const GpuGeometry& g, const T* input, const T* filter, T* output, const uint16_t* lut,
                        const Epilogue& epi, cudaStream_t stream) {
  constexpr int BM = NW * TM, BN = 32 * TN;
  const int64_t m_tiles = (static_cast<int64_t>(g.pixels) + BM - 1) / BM;
  const int64_t n_tiles = (g.npg + BN - 1) / BN;
  if (m_tiles * n_tiles * g.groups > INT_MAX / 2) return "convolution too large for one GPU launch";
  uint16_t* codes = reinterpret_cast<uint16_t*>(workspace);
  unsigned long long* sums = reinterpret_cast<unsigned long long*>(workspace + plan.codes_bytes);
  unsigned char* split_ws = plan.split ? workspace + plan.codes_bytes + plan.sums_bytes : nullptr;
  cudaError_t e = cudaMemsetAsync(sums, 0, plan.workspace_bytes - plan.codes_bytes, stream);
  if (e != cudaSuccess) return CudaError("cudaMemsetAsync of the workspace", e);
  const int64_t runs = (static_cast<int64_t>(g.taps) + kFilterRun - 1) / kFilterRun * g.out_depth;
  const int64_t code_blocks = std::min<int64_t>((runs + 255) / 256, int64_t{8} * std::max(sms, 1));
  FilterCodesKernel<T><<<static_cast<unsigned>(code_blocks), 256, 0, stream>>>(filter, g.taps, g.out_depth, epi.quant,
                                                                               lut, codes, sums);
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the filter codes launch", e);
  const int smem = TiledSmemBytes(BM, BN);
  auto kernel = wide ? TiledConvKernel<T, NW, TM, TN, true> : TiledConvKernel<T, NW, TM, TN, false>;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
  kernel<<<static_cast<unsigned>(plan.grid), NW * 32, smem, stream>>>(
      input, codes, sums, output, lut, g, epi, static_cast<int>(m_tiles), static_cast<int>(n_tiles), zero_skip,
      split_ws);
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the tiled convolution launch", e);
  return "";
}

// The launcher of a tiled kernel (nullptr for kDirect and unknown values).
template <typename T>
auto TiledLauncher(GpuKernel kernel) -> decltype(&LaunchTiled<T, 8, 16, 2>) {
#define TFAPPROX_TILE_CASE(name, nw, tm, tn, rate, rate_small_k) \
  case GpuKernel::name:                                          \
    return &LaunchTiled<T, nw, tm, tn>;
  switch (kernel) {
    TFAPPROX_TILED_KERNELS(TFAPPROX_TILE_CASE)
    default:
      return nullptr;
  }
#undef TFAPPROX_TILE_CASE
}

template <typename T>
std::string LaunchDirect(bool shared_lut, int sms, const GpuGeometry& g, const T* input, const T* filter,
                         T* output, const uint16_t* lut, const Epilogue& epi, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(g.pixels) * g.out_depth;
  const int threads = 256;
  // A grid-stride loop over a few waves: each block pays the 128 KB table copy once.
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t{8} * std::max(sms, 1));
  cudaError_t e;
  if (shared_lut) {
    e = cudaFuncSetAttribute(DirectConvKernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kLutSmemBytes);
    if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
    DirectConvKernel<T, true><<<static_cast<unsigned>(blocks), threads, kLutSmemBytes, stream>>>(
        input, filter, output, lut, g, epi);
  } else {
    DirectConvKernel<T, false><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(input, filter, output,
                                                                                      lut, g, epi);
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the direct convolution launch", e);
  return "";
}

template <typename T>
std::string LaunchColumns(bool wide, const DeviceInfo& dev, const ConvShape& s, const GpuGeometry& g, const T* input,
                          const T* filter, T* output, const uint16_t* lut, const uint16_t* lut_by_weight,
                          const Epilogue& epi, cudaStream_t stream) {
  const ColumnsShared layout(s.filter_elements(), s.out_depth);
  const int channels = ColumnChannels(g.npg, wide);
  const int64_t chunks = (g.npg + channels - 1) / channels;
  const int64_t items = static_cast<int64_t>(g.groups) * chunks * g.pixels;
  const int64_t blocks = std::min<int64_t>((items + kColumnThreads - 1) / kColumnThreads, std::max(dev.sms, 1));
  const auto kernel = wide ? ColumnsConvKernel<T, true, 16>
                           : (channels == 32 ? ColumnsConvKernel<T, false, 32> : ColumnsConvKernel<T, false, 16>);
  const int smem = static_cast<int>(layout.bytes);  // grows with the filter
  // smem <= dev.smem_optin: MakePlan picks this kernel only when it fits the device's most.
  // The limit is the function's, shared by every host thread that launches it (TensorFlow runs
  // independent layers from several threads): the device's most, never this call's need, so that a
  // concurrent launch with a smaller filter cannot lower it between this call's setting and launch
  // (cudaErrorLaunchOutOfResources, seen on the H200 with two evaluators on one GPU).
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin);
  if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
  kernel<<<static_cast<unsigned>(blocks), kColumnThreads, smem, stream>>>(input, filter, lut, lut_by_weight, output, layout, g,
                                                                             epi);
  e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the columns convolution launch", e);
}

}  // namespace

const char* GpuKernelName(GpuKernel kernel) {
  switch (kernel) {
    case GpuKernel::kAuto: return "auto";
    case GpuKernel::kTile128x64: return "tile128x64";
    case GpuKernel::kTile64x128: return "tile64x128";
    case GpuKernel::kTile64x256: return "tile64x256";
    case GpuKernel::kTile32x128: return "tile32x128";
    case GpuKernel::kTile64x64: return "tile64x64";
    case GpuKernel::kTile128x64W16: return "tile128x64w16";
    case GpuKernel::kTile128x128W16: return "tile128x128w16";
    case GpuKernel::kTile64x128W16: return "tile64x128w16";
    case GpuKernel::kDirect: return "direct";
    case GpuKernel::kColumns: return "columns";
    default: return "?";
  }
}

GpuPlan ChooseGpuPlan(const ConvShape& shape, const GpuOptions& options) {
  DeviceInfo dev;
  if (!GetDeviceInfo(&dev).empty()) return GpuPlan();
  const Plan plan = MakePlan(shape, options, dev);
  return {plan.kernel, plan.split};
}

size_t GpuWorkspaceBytes(const ConvShape& shape, const GpuOptions& options) {
  DeviceInfo dev;
  if (!GetDeviceInfo(&dev).empty()) return 0;
  return MakePlan(shape, options, dev).workspace_bytes;
}

template <typename T>
std::string ApproxConvGpu(const ConvShape& s, const T* input, const T* filter, const GpuQuant* quant,
                          const uint16_t* lut_device, T* output, cudaStream_t stream, const GpuOptions& options) {
  if (s.output_elements() == 0) return "";
  if (quant == nullptr || lut_device == nullptr || output == nullptr || filter == nullptr ||
      (input == nullptr && s.input_elements() > 0)) {
    return "ApproxConvGpu: null device pointer";
  }
  if (reinterpret_cast<uintptr_t>(lut_device) % 16 != 0 || reinterpret_cast<uintptr_t>(options.lut_by_weight) % 16 != 0) {
    return "ApproxConvGpu: the device table and options.lut_by_weight must be 16-byte aligned";
  }
  // Spatial terms below 2^30 keep every int32 index in the kernels far from overflow; tensors
  // themselves are below 2^31 elements by ComputeConvShape.
  const int64_t kLimit = int64_t{1} << 30;
  const int64_t spatial[] = {s.in_h, s.in_w, s.pad_top, s.pad_left, s.stride_h * s.out_h,
                             s.stride_w * s.out_w, s.dilation_h * s.filter_h, s.dilation_w * s.filter_w,
                             s.taps(), s.out_pixels()};
  for (int64_t v : spatial) {
    if (v < 0 || v >= kLimit) return "ApproxConvGpu: a spatial size or padding is too large for the GPU kernels";
  }
  const GpuGeometry g = MakeGpuGeometry(s);

  DeviceInfo dev;
  std::string error = GetDeviceInfo(&dev);
  if (!error.empty()) return error;
  const Epilogue epi{quant, options.debug_acc, options.debug_act_sum};
  if (options.kernel != GpuKernel::kAuto &&
      (static_cast<int>(options.kernel) < 0 || static_cast<int>(options.kernel) >= static_cast<int>(GpuKernel::kCount))) {
    return "ApproxConvGpu: unknown kernel choice";
  }
  const Plan plan = MakePlan(s, options, dev);
  if (plan.kernel == GpuKernel::kDirect) {
    return LaunchDirect<T>(dev.smem_optin >= kLutSmemBytes, dev.sms, g, input, filter, output, lut_device, epi,
                           stream);
  }
  if (plan.kernel == GpuKernel::kColumns) {
    return LaunchColumns<T>(NeedsWide(s, options), dev, s, g, input, filter, output, lut_device, options.lut_by_weight,
                            epi, stream);
  }
  if (options.workspace == nullptr || options.workspace_bytes < plan.workspace_bytes) {
    return "ApproxConvGpu: options.workspace must hold GpuWorkspaceBytes(shape, options) = " +
           std::to_string(plan.workspace_bytes) + " bytes of device memory";
  }
  if (reinterpret_cast<uintptr_t>(options.workspace) % 16 != 0) {
    return "ApproxConvGpu: the workspace must be 16-byte aligned";
  }
  const auto launch = TiledLauncher<T>(plan.kernel);
  if (launch == nullptr) return "ApproxConvGpu: unknown kernel choice";
  return launch(NeedsWide(s, options), options.zero_skip, plan, static_cast<unsigned char*>(options.workspace),
                dev.sms, g, input, filter, output, lut_device, epi, stream);
}

#define TFAPPROX_INSTANTIATE(T)                                                                      \
  template std::string ApproxConvGpu<T>(const ConvShape&, const T*, const T*, const GpuQuant*,      \
                                        const uint16_t*, T*, cudaStream_t, const GpuOptions&);
TFAPPROX_INSTANTIATE(float)
TFAPPROX_INSTANTIATE(double)
TFAPPROX_INSTANTIATE(__half)
TFAPPROX_INSTANTIATE(__nv_bfloat16)
#undef TFAPPROX_INSTANTIATE

namespace {
template <typename T>
std::string ApproxConvGpuAs(const ConvShape& s, const void* input, const void* filter, const GpuQuant* quant,
                            const uint16_t* lut_device, void* output, cudaStream_t stream, const GpuOptions& options) {
  return ApproxConvGpu<T>(s, static_cast<const T*>(input), static_cast<const T*>(filter), quant, lut_device,
                          static_cast<T*>(output), stream, options);
}
}  // namespace

std::string ApproxConvGpuUntyped(GpuDtype dtype, const ConvShape& s, const void* input, const void* filter,
                                 const GpuQuant* quant, const uint16_t* lut_device, void* output,
                                 cudaStream_t stream, const GpuOptions& options) {
  return WithGpuType(dtype, "ApproxConvGpuUntyped", [&](auto tag) {
    return ApproxConvGpuAs<decltype(tag)>(s, input, filter, quant, lut_device, output, stream, options);
  });
}

}  // namespace tfapprox
