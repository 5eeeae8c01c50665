// The decomposed CPU kernel: a table written as c0 + alpha[a] + beta[w] + sum_r u[r][a] * v[r][w] with
// int8 u, v (tensorflow_approx/multipliers/decompose.py finds such forms) turns the lookups into one
// integer GEMM whose reduction axis is the R terms of every tap: A[p][r * K + k] = u[r][a_pk] (the
// activation codes of pixel p's patch, gathered once and translated through each term's u with byte
// permutes), B[r * K + k][co] = v[r][w_k,co]. AVX-512 VNNI's
// vpdpbusd multiplies unsigned by signed bytes, four products per 32-bit lane: A is stored as u + 128
// (unsigned), so the GEMM gives sum (u + 128) * v and 128 * sum v (a per-channel constant) is taken off
// again. The free terms are sums the kernel adds: alpha over each pixel's taps (like act_sum), beta
// over each channel's weights, c0 times the taps.
//
// Exact: every product is below 2^15 in magnitude and a 32-bit lane gains at most 4 * 255 * 128 per
// step, so 32-bit sums are exact over kChunk = 65536 reduction entries; longer reductions add chunks
// into 64-bit sums.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"

namespace tfapprox {
namespace {

constexpr int kPixelBlock = 8;     // pixels per micro-tile (8 accumulators: dpbusd's latency hidden)
constexpr int kChannelBlock = 16;  // output channels per vector of int32 sums
constexpr int kMaxVectors = 2;     // vectors of channels per micro-tile (2: each broadcast serves 32)
constexpr int64_t kChunk = 65536;  // reduction entries whose 32-bit sums are exact (see above)
constexpr int kTile = 64;          // pixels gathered at a time (a multiple of kPixelBlock)

// What a convolution needs of the filter, per group: B packed for the micro-kernel, [step][co][4] with
// a step of four reduction entries and co padded to kChannelBlock (zeros beyond), and per channel the
// constant its sums take: -128 * (sum of B, the + 128 correction) + (sum of beta over its weights) +
// taps * c0.
struct PackedFilter {
  int64_t reduction = 0;  // R * K, padded to a multiple of 4 (zeros in B)
  int64_t channels = 0;   // out_depth_per_group, padded to a multiple of kChannelBlock
  std::vector<int8_t> b;  // [groups][reduction / 4][channels][4]
  std::vector<int64_t> offset;  // [out_depth]
};

PackedFilter PackFilter(const QuantizedConv& conv, const TableDecomposition& d, const ParallelFor& parallel_for) {
  const ConvShape& s = conv.shape;
  const int64_t taps = s.taps(), groups = s.groups(), per_group = s.out_depth_per_group();
  PackedFilter f;
  f.reduction = (taps * d.terms + 3) / 4 * 4;
  f.channels = (per_group + kChannelBlock - 1) / kChannelBlock * kChannelBlock;
  f.b.assign(static_cast<size_t>(groups * f.reduction * f.channels), 0);
  f.offset.assign(static_cast<size_t>(s.out_depth), 0);
  // In parallel over blocks of kChannelBlock channels of a group, each owning its channels' entries
  // (64 contiguous bytes per step) and offsets. Serial, packing was most of a 3x3 512->512 layer's time.
  const int64_t blocks_per_group = f.channels / kChannelBlock;
  parallel_for(groups * blocks_per_group, kChannelBlock * taps * d.terms * 4, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t g = block / blocks_per_group, j0 = block % blocks_per_group * kChannelBlock;
      int8_t* group_b = f.b.data() + g * f.reduction * f.channels;
      for (int64_t j = j0; j < std::min(per_group, j0 + kChannelBlock); ++j) {
        const int64_t co = g * per_group + j;
        int64_t b_sum = 0, beta_sum = 0;
        for (int64_t k = 0; k < taps; ++k) {
          const uint8_t w = conv.filter[co * taps + k];
          beta_sum += d.beta[w];
          for (int r = 0; r < d.terms; ++r) {
            const int64_t e = r * taps + k;
            const int8_t v = d.v[r * 256 + w];
            group_b[((e / 4) * f.channels + j) * 4 + e % 4] = v;
            b_sum += v;
          }
        }
        f.offset[co] = -128 * b_sum + beta_sum + taps * d.c0;
      }
    }
  });
  return f;
}

// The codes of pixel p's patch in group g: K bytes, padded taps at the zero code.
void GatherCodes(const QuantizedConv& conv, int64_t p, int64_t g, uint8_t* codes) {
  const int64_t depth = conv.shape.filter_depth;
  WalkPatch(conv, p, g, [&](const uint8_t* in) {
    if (in != nullptr) {
      std::memcpy(codes, in, static_cast<size_t>(depth));
    } else {
      std::memset(codes, conv.input_zero_code, static_cast<size_t>(depth));
    }
    codes += depth;
  });
}

// alpha as byte planes for the vector sums: alpha[c] = base + sum_j planes[j][c] << 8j.
struct AlphaPlanes {
  AlphaPlanes() = default;
  int64_t base = 0;
  int count = 0;
  std::vector<uint8_t> planes;  // [count][256]
  explicit AlphaPlanes(const int32_t* alpha) {
    base = *std::min_element(alpha, alpha + 256);
    const int64_t top = *std::max_element(alpha, alpha + 256) - base;
    while (count < 4 && (top >> (8 * count)) != 0) ++count;
    planes.resize(static_cast<size_t>(count) * 256);
    for (int j = 0; j < count; ++j)
      for (int c = 0; c < 256; ++c) planes[j * 256 + c] = static_cast<uint8_t>((alpha[c] - base) >> (8 * j));
  }
};

// The sums over the K codes of the codes and of alpha.
void SumsPortable(const uint8_t* codes, int64_t taps, const int32_t* alpha, const AlphaPlanes&, int64_t* code_sum,
                  int64_t* alpha_sum) {
  int64_t sum = 0, alphas = 0;
  for (int64_t k = 0; k < taps; ++k) {
    sum += codes[k];
    alphas += alpha[codes[k]];
  }
  *code_sum = sum;
  *alpha_sum = alphas;
}

// A 256-byte table lookup of 64 codes: two 128-entry byte permutes, the code's top bit choosing. t0..t3
// hold the table's four 64-byte quarters (loaded once by the caller: stores through a uint8_t pointer
// may alias the table, so the compiler would reload it at every lookup).
TFAPPROX_VNNI inline __m512i Lookup256(__m512i t0, __m512i t1, __m512i t2, __m512i t3, __m512i c) {
  const __m512i low = _mm512_permutex2var_epi8(t0, c, t1);
  const __m512i high = _mm512_permutex2var_epi8(t2, c, t3);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(c), low, high);
}

// The same, 64 codes at a time: byte sums by vpsadbw against zero, alpha's through its byte planes.
TFAPPROX_VNNI void SumsVbmi(const uint8_t* codes, int64_t taps, const int32_t*, const AlphaPlanes& alpha,
                            int64_t* code_sum, int64_t* alpha_sum) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i sums = zero, plane_sums[4] = {zero, zero, zero, zero}, tables[4][4];
  for (int j = 0; j < alpha.count; ++j)
    for (int t = 0; t < 4; ++t) tables[j][t] = _mm512_loadu_si512(alpha.planes.data() + j * 256 + t * 64);
  for (int64_t k = 0; k < taps; k += 64) {
    const __mmask64 valid = taps - k >= 64 ? ~__mmask64{0} : (__mmask64{1} << (taps - k)) - 1;
    const __m512i c = _mm512_maskz_loadu_epi8(valid, codes + k);
    sums = _mm512_add_epi64(sums, _mm512_sad_epu8(c, zero));
    for (int j = 0; j < alpha.count; ++j) {
      const __m512i plane =
          _mm512_maskz_mov_epi8(valid, Lookup256(tables[j][0], tables[j][1], tables[j][2], tables[j][3], c));
      plane_sums[j] = _mm512_add_epi64(plane_sums[j], _mm512_sad_epu8(plane, zero));
    }
  }
  int64_t alphas = alpha.base * taps;
  for (int j = 0; j < alpha.count; ++j) alphas += _mm512_reduce_add_epi64(plane_sums[j]) << (8 * j);
  *code_sum = _mm512_reduce_add_epi64(sums);
  *alpha_sum = alphas;
}

// A's row from the codes: row[r * K + k] = u[r][codes[k]] + 128 (u_plus holds u + 128), padded to
// `reduction` with 128 (u = 0: adds nothing).
void TranslatePortable(const uint8_t* codes, int64_t taps, const uint8_t* u_plus, int terms, int64_t reduction,
                       uint8_t* row) {
  for (int r = 0; r < terms; ++r)
    for (int64_t k = 0; k < taps; ++k) row[r * taps + k] = u_plus[r * 256 + codes[k]];
  std::fill(row + terms * taps, row + reduction, uint8_t{128});
}

// The same, 64 codes at a time.
TFAPPROX_VNNI void TranslateVbmi(const uint8_t* codes, int64_t taps, const uint8_t* u_plus, int terms,
                                 int64_t reduction, uint8_t* row) {
  for (int r = 0; r < terms; ++r) {
    const uint8_t* table = u_plus + r * 256;
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64),
                  t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    for (int64_t k = 0; k < taps; k += 64) {
      const __mmask64 valid = taps - k >= 64 ? ~__mmask64{0} : (__mmask64{1} << (taps - k)) - 1;
      const __m512i c = _mm512_maskz_loadu_epi8(valid, codes + k);
      _mm512_mask_storeu_epi8(row + r * taps + k, valid, Lookup256(t0, t1, t2, t3, c));
    }
  }
  std::fill(row + terms * taps, row + reduction, uint8_t{128});
}

using Sums = int64_t[kPixelBlock][kMaxVectors * kChannelBlock];

// sums[i][c] += sum over the steps in [step_begin, step_end) of A[i] . B[c] for kPixelBlock rows of A
// (stride `reduction` bytes) and NV * kChannelBlock channels of B (packed as PackedFilter::b).
template <int NV>
TFAPPROX_VNNI void MicroKernelVnni(const uint8_t* a, int64_t reduction, const int8_t* b, int64_t channels,
                                   int64_t step_begin, int64_t step_end, Sums& sums) {
  __m512i acc[kPixelBlock][NV];
  for (int i = 0; i < kPixelBlock; ++i)
    for (int n = 0; n < NV; ++n) acc[i][n] = _mm512_setzero_si512();
  for (int64_t step = step_begin; step < step_end; ++step) {
    __m512i bv[NV];
    for (int n = 0; n < NV; ++n) bv[n] = _mm512_loadu_si512(b + (step * channels + n * kChannelBlock) * 4);
    for (int i = 0; i < kPixelBlock; ++i) {
      int32_t four;
      std::memcpy(&four, a + i * reduction + step * 4, 4);
      const __m512i av = _mm512_set1_epi32(four);
      for (int n = 0; n < NV; ++n) acc[i][n] = _mm512_dpbusd_epi32(acc[i][n], av, bv[n]);
    }
  }
  for (int i = 0; i < kPixelBlock; ++i) {
    for (int n = 0; n < NV; ++n) {
      alignas(64) int32_t lanes[kChannelBlock];
      _mm512_store_si512(lanes, acc[i][n]);
      for (int c = 0; c < kChannelBlock; ++c) sums[i][n * kChannelBlock + c] += lanes[c];
    }
  }
}

template <int NV>
void MicroKernelPortable(const uint8_t* a, int64_t reduction, const int8_t* b, int64_t channels,
                         int64_t step_begin, int64_t step_end, Sums& sums) {
  for (int i = 0; i < kPixelBlock; ++i) {
    for (int c = 0; c < NV * kChannelBlock; ++c) {
      int64_t sum = 0;
      for (int64_t step = step_begin; step < step_end; ++step) {
        for (int q = 0; q < 4; ++q) {
          sum += static_cast<int64_t>(a[i * reduction + step * 4 + q]) * b[(step * channels + c) * 4 + q];
        }
      }
      sums[i][c] += sum;
    }
  }
}

}  // namespace

// What DecomposedConvAccumulate needs of the filter and the decomposition, built once per convolution.
struct DecomposedPlan {
  PackedFilter filter;
  std::vector<int32_t> alpha;  // [256]
  AlphaPlanes alpha_planes;
  std::vector<uint8_t> u_plus;  // [terms][256]: u + 128
  int terms = 0;
  bool fast = false;  // the VNNI / VBMI kernels
};

// Measured on a 2-core Zen 4 (benchmarks/cpu_benchmark.py --decomposed, every layer forced through the
// decomposed kernel): with one or two terms 1.1-3.2x faster than the lookups on layers of 32+ channels
// per group and 128+ taps (3x3 7x7 512->512 with two terms, 9216 reduction entries: 1.3x); with four
// terms faster up to 2304 entries when 256+ taps share them (3x3 56x56 64->64: 1.3-1.4x), uneven at
// 4608 (28x28 128->128: 1.07x in one run, 0.7x in another), slower beyond (14x14 256->256: 0.76x) or
// with 144 taps (0.92x); even or slower with 16 channels per group, and slower on 1x1 layers of 16-64
// taps and the 3- and 1-channel stems (0.5-0.85x).
bool PreferDecomposed(const ConvShape& shape, int terms) {
  const int64_t taps = shape.taps();
  if (!HasVnni() || shape.out_depth_per_group() < 32 || taps < 128) return false;
  return terms <= 2 ? taps * terms <= 9216 : terms <= 4 && taps >= 256 && taps * terms <= 2304;
}

const char* DecomposedKernelName(bool portable) {
  return portable || !HasVnni() ? "decomposed-portable" : "avx512vnni-decomposed";
}

std::shared_ptr<const DecomposedPlan> PrepareDecomposed(const QuantizedConv& conv, const TableDecomposition& d,
                                                        const ParallelFor& parallel_for, bool portable) {
  auto plan = std::make_shared<DecomposedPlan>();
  plan->filter = PackFilter(conv, d, parallel_for);
  plan->alpha.assign(d.alpha, d.alpha + 256);
  plan->alpha_planes = AlphaPlanes(d.alpha);
  plan->terms = d.terms;
  plan->u_plus.resize(static_cast<size_t>(d.terms) * 256);
  for (size_t i = 0; i < plan->u_plus.size(); ++i) plan->u_plus[i] = static_cast<uint8_t>(d.u[i] + 128);
  plan->fast = !portable && HasVnni();
  return plan;
}

void DecomposedConvAccumulate(const QuantizedConv& conv, const DecomposedPlan& plan, int64_t pixel_begin,
                              int64_t pixel_end, const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t pixels = pixel_end - pixel_begin;
  if (pixels <= 0) return;
  const int64_t taps = s.taps(), groups = s.groups(), per_group = s.out_depth_per_group();
  const PackedFilter& f = plan.filter;
  const int64_t steps = f.reduction / 4, chunk_steps = kChunk / 4;
  const bool fast = plan.fast;
  // Micro-kernels by the vectors of channels they take (index NV - 1).
  decltype(&MicroKernelPortable<1>) kernels[kMaxVectors] = {MicroKernelPortable<1>, MicroKernelPortable<2>};
  if (fast) kernels[0] = MicroKernelVnni<1>, kernels[1] = MicroKernelVnni<2>;
  const auto translate = fast ? TranslateVbmi : TranslatePortable;
  const auto sum_codes = fast ? SumsVbmi : SumsPortable;
  const int64_t tiles = (pixels + kTile - 1) / kTile;
  parallel_for(tiles, kTile * f.reduction * f.channels * groups / 16 + 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> rows(static_cast<size_t>(kTile * f.reduction)), codes(static_cast<size_t>(taps));
    std::vector<int64_t> alpha_sums(kTile);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t first = tile * kTile, count = std::min<int64_t>(kTile, pixels - first);
      const int64_t blocks = (count + kPixelBlock - 1) / kPixelBlock;
      for (int64_t g = 0; g < groups; ++g) {
        for (int64_t i = 0; i < blocks * kPixelBlock; ++i) {
          // Rows past the tile's pixels repeat its last one: the micro-kernel keeps its full height.
          const int64_t q = first + std::min(i, count - 1);
          int64_t code_sum;
          GatherCodes(conv, pixel_begin + q, g, codes.data());
          sum_codes(codes.data(), taps, plan.alpha.data(), plan.alpha_planes, &code_sum, &alpha_sums[i]);
          translate(codes.data(), taps, plan.u_plus.data(), plan.terms, f.reduction, rows.data() + i * f.reduction);
          if (i < count) act_sum[q * groups + g] = code_sum;
        }
        const int8_t* group_b = f.b.data() + g * f.reduction * f.channels;
        for (int64_t c0 = 0; c0 < per_group;) {
          const int vectors = static_cast<int>(std::min<int64_t>(kMaxVectors, (f.channels - c0) / kChannelBlock));
          const int64_t width = vectors * kChannelBlock;
          for (int64_t block = 0; block < blocks; ++block) {
            Sums sums = {};
            for (int64_t step = 0; step < steps; step += chunk_steps) {
              kernels[vectors - 1](rows.data() + block * kPixelBlock * f.reduction, f.reduction, group_b + c0 * 4,
                                   f.channels, step, std::min(steps, step + chunk_steps), sums);
            }
            for (int i = 0; i < kPixelBlock; ++i) {
              const int64_t row = block * kPixelBlock + i;
              if (row >= count) break;
              const int64_t q = first + row;
              for (int64_t c = 0; c < width && c0 + c < per_group; ++c) {
                const int64_t co = g * per_group + c0 + c;
                acc[q * s.out_depth + co] = sums[i][c] + alpha_sums[row] + f.offset[co];
              }
            }
          }
          c0 += width;
        }
      }
    }
  });
}

void DecomposedConvAccumulate(const QuantizedConv& conv, const TableDecomposition& d, int64_t pixel_begin,
                              int64_t pixel_end, const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                              bool portable) {
  if (pixel_end <= pixel_begin) return;
  DecomposedConvAccumulate(conv, *PrepareDecomposed(conv, d, parallel_for, portable), pixel_begin, pixel_end,
                           parallel_for, acc, act_sum);
}

}  // namespace tfapprox
