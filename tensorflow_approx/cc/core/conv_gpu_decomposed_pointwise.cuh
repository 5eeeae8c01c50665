// The pointwise tiles (pw128x256, pw64x256): the decomposed GEMM of a 1x1 convolution (one group, no
// padding) in one launch that reads the input itself. Internal: included by conv_gpu_decomposed.cu only,
// whose top comment explains the decomposition.
//
// Why: a 1x1 filter reads each input pixel's slice once, so the planes route writes `terms` bytes a channel
// (205 MB for 1x1 56x56 64->256 with 16 terms) only for the GEMM to read them once. Here a block quantizes
// its pixels' inputs into codes in shared memory and looks A's entries up from them straight into the
// registers that wgmma takes A from (m64n256k32, A in registers, B by TMA): the planes are never written.
//
// K order: channel-major, term-minor. A's row for pixel p is [c][r] = u[r][code(p, c)], r < R (R = terms
// rounded up to 4; terms past the decomposition's are 0), so that a thread's 4-byte A register (4
// consecutive k) is one channel's 4 consecutive terms: one 32-bit load from a table of R bytes a code. The
// filter's planes are written in the same order for this tile (PointwiseFilterPlanesKernel).
//
// Exact: the same products as the planes route's (K reordered, zero terms added), int32 sums modulo 2^32
// as every tile's; the free terms and the epilogue are the GEMM tiles'.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_POINTWISE_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_POINTWISE_CUH_

#include "tensorflow_approx/cc/core/conv_gpu_decomposed_gemm.cuh"

namespace tfapprox {
namespace decomposed_internal {

constexpr int kPointwiseBN = 256;           // output channels a block (wgmma's widest n)
constexpr int kPointwiseBK = 64;            // K bytes a stage (64-byte swizzle, as the k64 tiles)
constexpr int kPointwiseStages = 4;         // B's stages: two loads in flight, one stage's wgmma in flight

struct PointwiseArgs {
  const int32_t* alpha;  // the decomposition's [256]
  const int8_t* u;       // [terms][256]
  int terms;
  const unsigned long long* channel_sums;  // [2][out_depth], as GemmArgs'
  long long taps_c0;
  int n_tiles, k_tiles;
  bool pair_stores, narrow_sums;
};

// Shared memory of a block (Real: the epilogue's type, float or double).
template <int kWarpgroups, typename Real>
constexpr int PointwiseSmemBytes() {
  constexpr int bm = 64 * kWarpgroups;
  return 1024 +                                                           // rounding the stages up to 1024 bytes
         kPointwiseStages * kPointwiseBN * kPointwiseBK +                 // B's stages
         bm * (kPointwiseMaxChannels + 4) +                               // the codes, rows of cg + 4 bytes
         256 * kPointwiseMaxTerms +                                       // the A table, [code][R]
         256 * static_cast<int>(sizeof(int32_t)) +                        // alpha by code
         bm * 3 * static_cast<int>(sizeof(long long)) +                   // a row's alpha sum, code sum term, input
         kPointwiseBN * static_cast<int>(sizeof(ChannelEpilogue<Real>)) +  // the tile's channels' epilogue terms
         kPointwiseStages * static_cast<int>(sizeof(uint64_t));           // B's mbarriers
}

// Persistent blocks, each taking tiles blockIdx.x, + gridDim.x, ...: a tile is 64 * kWarpgroups pixels x
// kPointwiseBN output channels over all of K; warpgroup wg computes rows 64 wg .. 64 wg + 63. What a block
// sets up once (the tables, the mbarriers) and per channel tile (the channels' epilogue terms) is not
// redone per tile (H200, 1x1 56x56 64->256 with 16 terms: a block a tile 6.1 T, persistent 7.0 T; the rest
// of the way to 16.3 T was the epilogue's code length, below). B by TMA (one thread issuing, an
// mbarrier a stage, the stages counted across tiles for the phases); A looked up into registers a stage
// ahead, double-buffered (a stage's registers are read until its wgmma completes, one WgmmaWait later).
template <typename T, int kWarpgroups>
__global__ void __launch_bounds__(kWarpgroups * 128, 2 / kWarpgroups)
    DecomposedPointwiseKernel(PointwiseArgs args, GpuGeometry g, Epilogue epi, const T* __restrict__ input,
                              T* __restrict__ output, const __grid_constant__ CUtensorMap b_map) {
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  return;  // no wgmma in this device pass; never launched there (WgmmaAvailable)
#else
  constexpr int BM = 64 * kWarpgroups, BN = kPointwiseBN, BK = kPointwiseBK, STAGES = kPointwiseStages;
  constexpr int kThreads = kWarpgroups * 128;
  constexpr int kPrefetch = STAGES - 2;  // loads in flight ahead of the stage multiplied (one more in wgmma)
  using Real = typename RealOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (SharedAddress(smem_raw) & 1023)) & 1023);
  unsigned char* s_b = smem;                                           // [STAGES][BN][BK], swizzled
  ChannelEpilogue<Real>* s_channel = reinterpret_cast<ChannelEpilogue<Real>*>(s_b + STAGES * BN * BK);  // [BN]
  long long* s_alpha = reinterpret_cast<long long*>(s_channel + BN);  // [BM]
  Real* s_act = reinterpret_cast<Real*>(s_alpha + BM);                // [BM]
  long long* s_input = reinterpret_cast<long long*>(s_act + BM);      // [BM]: a row's input pixel (-1: none)
  uint64_t* s_bar = reinterpret_cast<uint64_t*>(s_input + BM);        // [STAGES]
  int32_t* s_alpha_of = reinterpret_cast<int32_t*>(s_bar + STAGES);   // [256]
  uint8_t* s_table = reinterpret_cast<uint8_t*>(s_alpha_of + 256);    // [256][R]
  uint8_t* s_codes = s_table + 256 * kPointwiseMaxTerms;             // [BM][cg + 4]
  const int row_bytes = g.cg + 4;  // rows 4 bytes past a multiple of 16: a warp's 8 rows on 8 banks

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int R = PointwiseTerms(args.terms);
  const int quad_shift = R == 4 ? 0 : R == 8 ? 1 : R == 12 ? -1 : 2;  // log2(R / 4); -1: R = 12, divide
  const int tiles = (g.pixels + BM - 1) / BM * args.n_tiles;

  // Once a block: the mbarriers, the tables (u by code, R bytes a code with zeros past the terms; alpha).
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) MbarrierInit(SharedAddress(s_bar + s), 1);
  }
  for (int i = tid; i < 256 * R; i += kThreads) {
    const int code = i / R, r = i - code * R;
    s_table[i] = r < args.terms ? static_cast<uint8_t>(__ldg(args.u + r * 256 + code)) : 0;
  }
  for (int i = tid; i < 256; i += kThreads) s_alpha_of[i] = __ldg(args.alpha + i);

  const FastQuantizer fast(epi.quant->input);
  const DequantizeTerms<Real> deq = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  GemmArgs channel_args;  // what MakeChannelEpilogue reads
  channel_args.channel_sums = args.channel_sums;
  channel_args.taps_c0 = args.taps_c0;
  const int out_hw = g.out_h * g.out_w, in_hw = g.in_h * g.in_w;
  auto input_pixel = [&](int p) {  // output pixel p's input pixel, n * in_hw + ih * in_w + iw
    const int n = p / out_hw, rest = p - n * out_hw;
    const int oh = rest / g.out_w, ow = rest - oh * g.out_w;
    return static_cast<int64_t>(n) * in_hw + static_cast<int64_t>(oh) * g.stride_h * g.in_w +
           static_cast<int64_t>(ow) * g.stride_w;
  };
  const bool vector_loads = std::is_same<T, float>::value && !g.nchw && (reinterpret_cast<uintptr_t>(input) & 15) == 0;

  // A's registers of stage kt: k step ks (32 bytes), register e: rows g (+ 8 for odd e), K quads
  // 16 kt + 8 ks + t (+ 4 for e >= 2); quad q is channel q / (R / 4), terms 4 (q % (R / 4)) .. + 3.
  const int group_id = lane >> 2, in_group = lane & 3;
  const int row0 = (warp >> 2) * 64 + (warp & 3) * 16 + group_id;
  const uint8_t* codes_row0 = s_codes + row0 * row_bytes;
  const uint8_t* codes_row1 = codes_row0 + 8 * row_bytes;
  auto look_up = [&](int kt, uint32_t (&a)[2][4]) {
#pragma unroll
    for (int ks = 0; ks < 2; ++ks)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int q = kt * 16 + ks * 8 + in_group + hi * 4;
        int c, tq;
        if (quad_shift >= 0) {
          c = q >> quad_shift;
          tq = q - (c << quad_shift);
        } else {
          c = q / 3;
          tq = q - 3 * c;
        }
        const int offset = 4 * tq;
        a[ks][2 * hi] = *reinterpret_cast<const uint32_t*>(s_table + codes_row0[c] * R + offset);
        a[ks][2 * hi + 1] = *reinterpret_cast<const uint32_t*>(s_table + codes_row1[c] * R + offset);
      }
  };

  int done = 0;  // stages multiplied by this block before the tile's: stage kt of the tile is done + kt
  int channel_tile = -1;  // the channel tile whose epilogue terms s_channel holds
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int nt_index = tile % args.n_tiles, mt_index = tile / args.n_tiles;
    const int m0 = mt_index * BM, n0 = nt_index * BN;
    // Everyone is done with the last tile (its epilogue read s_channel, s_alpha, s_act; its stages' wgmma
    // have completed): B's first stages may load, the shared arrays be rewritten. (The first time: the
    // mbarriers' initialization.)
    __syncthreads();
    auto load_b = [&](int kt) {
      const int slot = (done + kt) % STAGES;
      const uint32_t bar = SharedAddress(s_bar + slot);
      MbarrierArriveExpectTx(bar, BN * BK);
      TmaLoadTile2d(SharedAddress(s_b + slot * BN * BK), &b_map, bar, kt * BK, n0);
    };
    if (tid == 0) {
      for (int kt = 0; kt < kPrefetch && kt < args.k_tiles; ++kt) load_b(kt);
    }
    if (nt_index != channel_tile) {
      for (int i = tid; i < BN; i += kThreads) {
        if (n0 + i < g.out_depth) s_channel[i] = MakeChannelEpilogue(channel_args, g, epi, per_channel, n0 + i, deq);
      }
      channel_tile = nt_index;
    }

    // The tile's codes: row i is output pixel m0 + i; rows past the last pixel get code 0 (no outputs
    // stored). Each row's input pixel first (two divisions a row, not a float). Float NHWC: kLoads 16-byte
    // loads issued before any is quantized (one at a time, each load's round trip was the block's wait).
    for (int i = tid; i < BM; i += kThreads) s_input[i] = m0 + i < g.pixels ? input_pixel(m0 + i) : -1;
    __syncthreads();
    if (vector_loads) {
      constexpr int kLoads = 8;
      const int quads_a_row = g.cg / 4, quads = BM * quads_a_row;
      for (int i0 = tid; i0 < quads; i0 += kLoads * kThreads) {
        float4 v[kLoads];
#pragma unroll
        for (int k = 0; k < kLoads; ++k) {
          const int i = i0 + k * kThreads;
          const int row = i / quads_a_row, c = (i - row * quads_a_row) * 4;
          v[k] = make_float4(0.f, 0.f, 0.f, 0.f);
          const long long pix = i < quads ? s_input[row] : -1;
          if (pix >= 0) v[k] = __ldg(reinterpret_cast<const float4*>(input + pix * g.cg + c));
        }
#pragma unroll
        for (int k = 0; k < kLoads; ++k) {
          const int i = i0 + k * kThreads;
          const int row = i / quads_a_row, c = (i - row * quads_a_row) * 4;
          if (i < quads) *reinterpret_cast<uint32_t*>(s_codes + row * row_bytes + c) = fast.Quantize4(v[k]);
        }
      }
    } else {
      for (int i = tid; i < BM * g.cg; i += kThreads) {
        const int row = i / g.cg, c = i - row * g.cg;
        const int64_t pix = s_input[row];
        uint8_t code = 0;
        if (pix >= 0) {
          const int64_t src = g.nchw ? (pix / in_hw * g.cg + c) * in_hw + pix % in_hw : pix * g.cg + c;
          code = fast.Quantize(ToFloat(input[src]));
        }
        s_codes[row * row_bytes + c] = code;
      }
    }
    __syncthreads();
    // A row's free terms: alpha and the codes summed over its channels (the GEMM tiles' s_alpha and s_act).
    for (int i = tid; i < BM; i += kThreads) {
      long long alpha_sum = 0, code_sum = 0;
      for (int c = 0; c < g.cg; c += 4) {
        const uint32_t word = *reinterpret_cast<const uint32_t*>(s_codes + i * row_bytes + c);
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int code = (word >> (8 * b)) & 255;
          alpha_sum += s_alpha_of[code];
          code_sum += code;
        }
      }
      s_alpha[i] = alpha_sum;
      s_act[i] = deq.Act(code_sum);
      if (epi.debug_act_sum != nullptr && nt_index == 0 && m0 + i < g.pixels) epi.debug_act_sum[m0 + i] = code_sum;
    }
    // (The main loop's first barrier orders these and s_channel before the epilogue.)

    int acc[32][4];
#pragma unroll
    for (int j = 0; j < 32; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] = 0;
    uint32_t a_even[2][4], a_odd[2][4];  // stages kt even / odd
    auto stage = [&](int kt, const uint32_t (&a)[2][4]) {
      const int slot = (done + kt) % STAGES;
      MbarrierWait(SharedAddress(s_bar + slot), ((done + kt) / STAGES) & 1);  // B of stage kt has landed
      // Every warpgroup has waited for stage kt - 2's wgmma (the last WgmmaWait<1>): its slot, which stage
      // kt + kPrefetch's load takes, is free. (The first: the codes of every thread, for look_up.)
      __syncthreads();
      if (tid == 0 && kt + kPrefetch < args.k_tiles) load_b(kt + kPrefetch);
      WgmmaFenceAccumulators(acc);
      WgmmaFence();  // A's registers, written by this thread, before the wgmma that read them
      const uint32_t b_base = SharedAddress(s_b + slot * BN * BK);
      WgmmaS8(acc, a[0], WgmmaDescriptor<BK>(b_base));
      WgmmaS8(acc, a[1], WgmmaDescriptor<BK>(b_base + 32));
      WgmmaCommit();
    };
    // Stage kt's wgmma run while stage kt + 1's registers are looked up: after WgmmaWait<1>, which leaves
    // only stage kt's in flight, so the registers written (stage kt - 1's) are no longer read. The first
    // look-up waits for the codes (the barrier in the first stage comes after it).
    __syncthreads();
    look_up(0, a_even);
    for (int kt = 0; kt < args.k_tiles; kt += 2) {
      stage(kt, a_even);
      WgmmaWait<1>();
      if (kt + 1 >= args.k_tiles) break;
      look_up(kt + 1, a_odd);
      stage(kt + 1, a_odd);
      WgmmaWait<1>();
      if (kt + 2 < args.k_tiles) look_up(kt + 2, a_even);
    }
    WgmmaWait<0>();
    WgmmaFenceAccumulators(acc);
    done += args.k_tiles;

    // Epilogue: the GEMM tiles' (acc + alpha sum + beta sum + taps * c0, then the dequantization), for n8
    // block j's channels n0 + 8j + 2t, + 1 of rows row0 and row0 + 8. The common case unrolled (its
    // accumulators stay in registers): 32-bit sums, pair stores, the tile's channels inside the layer whole
    // n8 blocks. The rest (debug sums, 64-bit sums, other channel counts, element stores) from a copy of the
    // accumulators in local memory, one loop body: unrolled, both cases made the kernel's code so long that
    // fetching it was most of its stalls (ncu on 1x1 56x56 64->256: "no instruction" 8 of 13 cycles a warp
    // between issues).
    const int tile_channels = min(BN, g.out_depth - n0);
    if (args.narrow_sums && args.pair_stores && epi.debug_acc == nullptr && tile_channels % 8 == 0) {
      T* out_row[2];
      bool row_ok[2];
      int row_alpha[2];
      Real row_act[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = row0 + 8 * half, p = m0 + row;
        row_ok[half] = p < g.pixels;
        out_row[half] = output + static_cast<int64_t>(row_ok[half] ? p : 0) * g.out_depth + n0 + 2 * in_group;
        row_alpha[half] = static_cast<int>(s_alpha[row]);
        row_act[half] = s_act[row];
      }
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        if (8 * j >= tile_channels) break;  // (uniform)
        const ChannelEpilogue<Real> ch0 = s_channel[8 * j + 2 * in_group];
        const ChannelEpilogue<Real> ch1 = s_channel[8 * j + 2 * in_group + 1];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const T v0 = NarrowOutput<T>(acc[j][2 * half], row_alpha[half], row_act[half], ch0);
          const T v1 = NarrowOutput<T>(acc[j][2 * half + 1], row_alpha[half], row_act[half], ch1);
          if (row_ok[half]) StorePair(out_row[half] + 8 * j, v0, v1);
        }
      }
      continue;
    }
    int spilled[32][4];
#pragma unroll
    for (int j = 0; j < 32; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) spilled[j][e] = acc[j][e];
#pragma unroll 1
    for (int j = 0; j < 32; ++j) {
      const int c0 = 8 * j + 2 * in_group, co0 = n0 + c0;
      if (co0 >= g.out_depth) break;
      const bool second = co0 + 1 < g.out_depth;
#pragma unroll 1
      for (int e = 0; e < 4; ++e) {
        if (e % 2 == 1 && !second) continue;
        const int row = row0 + 8 * (e / 2), p = m0 + row, co = co0 + e % 2;
        if (p >= g.pixels) continue;
        const ChannelEpilogue<Real>& ch = s_channel[c0 + e % 2];
        const int64_t net = static_cast<int64_t>(spilled[j][e]) + s_alpha[row] + ch.net_offset;
        StoreOutput(g, output, p, co, FromReal<T>(ch.terms.Combine(net, s_act[row], ch.filter_term)));
        if (epi.debug_acc != nullptr) {
          epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co] = net + ch.terms.acc_offset;
        }
      }
    }
  }
#endif
}

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_POINTWISE_CUH_
