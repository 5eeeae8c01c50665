// The fast CPU kernel.
//
// Why this shape: a lookup costs a load whose address depends on two codes, so the rate is set by how
// many loads each lookup needs. A block of kPixels output pixels x kChannels output channels shares its
// loads: per tap, kPixels row offsets (activation code << 8) and kChannels weight codes feed
// kPixels * kChannels lookups whose address is one add away. The patch of each pixel is gathered once
// into row offsets (padded taps read the zero code), grouped so that each group's taps are contiguous,
// and reused by every output channel of the group. Accumulators are 64-bit registers: as cheap as 32-bit
// ones on x86-64 and free of overflow for any number of taps.
//
// Where the processor has AVX-512BW, groups with many output channels take a faster path: a whole
// table row (256 uint16, the products of one activation code with every weight code) fits in eight
// 512-bit registers, and vpermi2w looks up 32 weight codes in 64 entries of it at once; three masked
// blends on bits 6 and 7 of the codes pick among the four 64-entry quarters. Loads leave the
// critical path (8 per row, shared by 64 channels) and one pixel x 64 channels costs about 36
// instructions per tap instead of about 280. Measured 4x the scalar loop on one Zen 4 core (with
// AVX-512 VBMI, byte planes of the row do better still: see LookupPixelsVbmi). Groups
// with few output channels take the column path instead (see there), which turns the permute around.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tensorflow_approx/cc/core/conv_cpu_internal.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

using namespace cpu_internal;  // NOLINT: the pieces shared with the column path, written as if declared here

constexpr int kPixels = 4;
constexpr int kChannels = 2;

// Gathers the patch of output pixel p as row offsets, laid out [group][kh][kw][ci] (padded taps read
// the zero code), and the per-group sums of its codes.
void GatherPatch(const QuantizedConv& conv, int64_t p, uint16_t* rows, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const uint16_t zero_row = static_cast<uint16_t>(conv.input_zero_code << 8);
  for (int64_t g = 0; g < s.groups(); ++g) {
    uint16_t* out = rows + g * s.taps();
    int64_t sum = 0;
    WalkPatch(conv, p, g, [&](const uint8_t* in) {
      if (in != nullptr) {
        for (int64_t ci = 0; ci < s.filter_depth; ++ci) {
          out[ci] = static_cast<uint16_t>(in[ci] << 8);
          sum += in[ci];
        }
      } else {
        std::fill(out, out + s.filter_depth, zero_row);
        sum += int64_t{conv.input_zero_code} * s.filter_depth;
      }
      out += s.filter_depth;
    });
    act_sum[g] = sum;
  }
}

// acc[i][j] = sum_t lut[rows[i][t] + weights[j][t]] for P pixels and C channels.
template <int P, int C>
inline void LookupBlock(const uint16_t* const* rows, const uint8_t* const* weights, int64_t taps,
                        const uint16_t* lut, int64_t (&acc)[P][C]) {
  int64_t sum[P][C] = {};
  for (int64_t t = 0; t < taps; ++t) {
    uint32_t w[C];
    for (int j = 0; j < C; ++j) w[j] = weights[j][t];
    for (int i = 0; i < P; ++i) {
      const uint16_t* row = lut + rows[i][t];
      for (int j = 0; j < C; ++j) sum[i][j] += row[w[j]];
    }
  }
  for (int i = 0; i < P; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = sum[i][j];
}

constexpr int kPermuteChannels = 64;  // output channels per pass of the permute path
constexpr int kPermutePixels = 2;     // pixels sharing each tap's weight codes (2 beat 1 and 4)
static_assert(kPixels % kPermutePixels == 0, "a block splits into permute blocks");

// acc[i][co] = sum_t lut[rows[i][t] + weights[t][co]] for NP pixels and co < channels, weights
// laid out [tap][padded] with `padded` a multiple of kPermuteChannels; acc[i] points at pixel i's
// channels. The pixels share each tap's weight codes and masks, so the weight matrix streams through
// the cache once per NP pixels. Requires taps * 65535 < 2^31 (int32 lanes).
template <int NP>
TFAPPROX_AVX512BW void LookupPixelsPermute(
    const uint16_t* const* rows, const uint8_t* weights, int64_t taps, int64_t channels,
    int64_t padded, const uint16_t* lut, int64_t* const* acc) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t c0 = 0; c0 < channels; c0 += kPermuteChannels) {
    // unpacklo/hi widen words {0-3, 8-11, ...} and {4-7, 12-15, ...} of each 32-channel half:
    // sums[i][2b] and sums[i][2b + 1] hold half b in that interleaved order, undone at the store.
    __m512i sums[NP][4];
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i)
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) sums[i][k] = zero;
    const uint8_t* w = weights + c0;
    for (int64_t t = 0; t < taps; ++t, w += padded) {
      const __m512i codes[2] = {
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w))),
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32)))};
      const __mmask32 bit6[2] = {_mm512_test_epi16_mask(codes[0], _mm512_set1_epi16(64)),
                                 _mm512_test_epi16_mask(codes[1], _mm512_set1_epi16(64))};
      const __mmask32 bit7[2] = {_mm512_test_epi16_mask(codes[0], _mm512_set1_epi16(128)),
                                 _mm512_test_epi16_mask(codes[1], _mm512_set1_epi16(128))};
#pragma GCC unroll 4
      for (int i = 0; i < NP; ++i) {
        const __m512i* row = reinterpret_cast<const __m512i*>(lut + rows[i][t]);
        __m512i r[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) r[k] = _mm512_loadu_si512(row + k);
#pragma GCC unroll 2
        for (int b = 0; b < 2; ++b) {
          const __m512i q0 = _mm512_permutex2var_epi16(r[0], codes[b], r[1]);
          const __m512i q1 = _mm512_permutex2var_epi16(r[2], codes[b], r[3]);
          const __m512i q2 = _mm512_permutex2var_epi16(r[4], codes[b], r[5]);
          const __m512i q3 = _mm512_permutex2var_epi16(r[6], codes[b], r[7]);
          const __m512i v = _mm512_mask_blend_epi16(bit7[b], _mm512_mask_blend_epi16(bit6[b], q0, q1),
                                                    _mm512_mask_blend_epi16(bit6[b], q2, q3));
          sums[i][2 * b] = _mm512_add_epi32(sums[i][2 * b], _mm512_unpacklo_epi16(v, zero));
          sums[i][2 * b + 1] = _mm512_add_epi32(sums[i][2 * b + 1], _mm512_unpackhi_epi16(v, zero));
        }
      }
    }
    for (int i = 0; i < NP; ++i) {
      alignas(64) int32_t out[4][16];
      for (int k = 0; k < 4; ++k) _mm512_store_si512(out[k], sums[i][k]);
      for (int b = 0; b < 2; ++b) {
        for (int lane = 0; lane < 4; ++lane) {
          for (int k = 0; k < 8; ++k) {
            const int64_t co = c0 + 32 * b + 8 * lane + k;
            if (co < channels) acc[i][co] = out[2 * b + k / 4][4 * lane + k % 4];
          }
        }
      }
    }
  }
}

// GCC 12.2 takes the undefined pass-through operands inside its own AVX-512 intrinsics for
// uninitialized variables once inlined here (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// GatherPatch with AVX-512BW for the row paths, 32 codes at a time (the scalar loop took over a tenth
// of the time of a 3x3 64-channel layer on the VBMI row path). CopyTap keeps the intrinsics out of
// WalkPatch's lambda, which does not take the function's target.
TFAPPROX_AVX512BW int64_t CopyTap(const uint8_t* in, int64_t depth, uint8_t zero_code, uint16_t* out) {
  const __m512i zero = _mm512_setzero_si512(), padding = _mm512_set1_epi8(static_cast<char>(zero_code));
  __m512i sum = zero;
  for (int64_t ci = 0; ci < depth; ci += 32) {
    const int64_t n = depth - ci;
    const __mmask32 m = n >= 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1;
    const __m512i codes = in != nullptr ? _mm512_maskz_loadu_epi8(m, in + ci) : _mm512_maskz_mov_epi8(m, padding);
    sum = _mm512_add_epi64(sum, _mm512_sad_epu8(codes, zero));
    const __m512i row = _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(codes)), 8);
    _mm512_mask_storeu_epi16(out + ci, m, row);
  }
  return _mm512_reduce_add_epi64(sum);
}

void GatherPatchBw(const QuantizedConv& conv, int64_t p, uint16_t* rows, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  for (int64_t g = 0; g < s.groups(); ++g) {
    uint16_t* out = rows + g * s.taps();
    int64_t sum = 0;
    WalkPatch(conv, p, g, [&](const uint8_t* in) {
      sum += CopyTap(in, s.filter_depth, conv.input_zero_code, out);
      out += s.filter_depth;
    });
    act_sum[g] = sum;
  }
}

// The row path with AVX-512 VBMI (groups of more than 32 output channels): each table row split into
// byte planes, the low and the high byte of its 256 products (row a at planes + a * 512, the low
// plane first), so that vpermi2b looks up 64 weight codes at once: per pixel, tap and 64 channels, 2
// permutes per plane (the second, masked, for codes from 128, as in the column path: no blend)
// against 8 vpermi2w, 6 blends and 4 unpacks in words. The weight codes are the bytes of
// weights_by_tap as they are, and bit 7's mask is shared by the pixels of a pass. The sums of bytes go
// two per 16-bit lane (channel 2j low, 2j + 1 high), emptied into int32 every kPlaneTaps taps, as the
// column path's. Rows need no transpose (only the table's bytes deinterleaved, some microseconds per
// call). Two pixels x 128 channels per pass (25 vector registers) measured best: 1.5-2.5x the word
// kernel on Zen 4 (3x3 layers of 64 and 128 channels, 1x1 of 256), exact for any table.
constexpr int kVbmiRowPixels = 2;    // pixels sharing each tap's weight codes (2 beat 1 and 4)
constexpr int kVbmiRowVectors = 2;   // vectors of 64 channels sharing each row's loads (2 beat 1 and 4)
static_assert(kPixels % kVbmiRowPixels == 0, "a block splits into VBMI row blocks");
// Each pass streams its weights (taps x 128 bytes) through the cache once per LookupPixelsVbmi call,
// and a call used to take 2 pixels: a group's weights over the 1 MB L2 of a Zen 4 core (3x3 512 -> 512:
// 2.4 MB) streamed from L3 for every pair, pushing the byte planes (128 KB) out of L2 as well. Such
// groups go in blocks of kVbmiBlockPixels pixels (as pairs), every pair running over a block of
// kVbmiTapBlock taps before the next, so that the weights stream once per 32 pixels, the tap block's
// (64 KB per pass) read from L2 by 16 pairs. Measured on Zen 4 (2 cores, noisy, whole op, batch 8):
// 3x3 7x7 512 -> 512 5-15% faster with 32 pixels x 514 taps, in every interleaved round; 32 x 257,
// 32 x 1028, 64 x 514 and 16 x 1028 within the noise of it. At 28x28 128 -> 128 (weights 147 KB) and
// 14x14 256 -> 256 (590 KB) blocking gained nothing and may cost a little, so groups whose weights fit
// L2 (below kVbmiBlockBytes) keep blocks of kPixels over all taps, as before.
constexpr int kVbmiBlockPixels = 32;
constexpr int64_t kVbmiTapBlock = 2 * kPlaneTaps;
constexpr int64_t kVbmiBlockBytes = int64_t{1} << 20;  // taps x padded channels from which to block
static_assert(kVbmiBlockPixels % kVbmiRowPixels == 0, "a block splits into pairs");

TFAPPROX_AVX512VBMI std::vector<Line> RowPlanes(const uint16_t* lut) {
  std::vector<Line> planes(kLutEntries * 2 / sizeof(Line));
  alignas(64) uint8_t even[64];
  for (int k = 0; k < 64; ++k) even[k] = static_cast<uint8_t>(2 * k);
  const __m512i lo_index = _mm512_load_si512(even);
  const __m512i hi_index = _mm512_add_epi8(lo_index, _mm512_set1_epi8(1));
  for (int a = 0; a < 256; ++a) {
    const __m512i* row = reinterpret_cast<const __m512i*>(lut + a * 256);
    Line* out = planes.data() + a * 8;
    for (int q = 0; q < 4; ++q) {
      const __m512i v0 = _mm512_loadu_si512(row + 2 * q), v1 = _mm512_loadu_si512(row + 2 * q + 1);
      _mm512_store_si512(out[q].bytes, _mm512_permutex2var_epi8(v0, lo_index, v1));
      _mm512_store_si512(out[4 + q].bytes, _mm512_permutex2var_epi8(v0, hi_index, v1));
    }
  }
  return planes;
}

// The lookups of one pass of LookupPixelsVbmi (channels c0 .. c0 + 64 CV - 1 of NP pixels) over taps
// t0 .. t1 - 1, added to the pass's int32 totals: tot[i][v][k], channels 2j (k = 0, 1: j < 16,
// j >= 16) and 2j + 1 (k = 2, 3) of vector v, loaded at entry and stored at exit, so that a pass
// can be split into ranges of taps (any split gives the same integer sums).
template <int NP, int CV>
TFAPPROX_AVX512VBMI inline void AccumulateRowsVbmi(const uint16_t* const* rows, const uint8_t* w, int64_t t0,
                                                   int64_t t1, int64_t c0, int64_t padded,
                                                   const uint8_t* planes, __m512i* totals) {
  __m512i tot[NP][CV][4];
#pragma GCC unroll 4
  for (int i = 0; i < NP; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v)
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) tot[i][v][k] = _mm512_load_si512(totals + (i * CV + v) * 4 + k);
  for (; t0 < t1; t0 += kPlaneTaps) {
    const int64_t t_end = std::min(t1, t0 + kPlaneTaps);
    __m512i sum[NP][CV][4] = {};  // per plane: words as they are, and shifted right by 8
    const uint8_t* wt = w + t0 * padded + c0;
    for (int64_t t = t0; t < t_end; ++t, wt += padded) {
      __m512i c[CV];
      __mmask64 high[CV];
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        c[v] = _mm512_loadu_si512(wt + 64 * v);
        high[v] = _mm512_movepi8_mask(c[v]);
      }
#pragma GCC unroll 4
      for (int i = 0; i < NP; ++i) {
        const __m512i* row = reinterpret_cast<const __m512i*>(planes + 2 * int64_t{rows[i][t]});
        __m512i lo[4], hi[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          lo[q] = _mm512_load_si512(row + q);
          hi[q] = _mm512_load_si512(row + 4 + q);
        }
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) {
          __m512i l = _mm512_mask2_permutex2var_epi8(lo[0], c[v], ~high[v], lo[1]);
          __m512i h = _mm512_mask2_permutex2var_epi8(hi[0], c[v], ~high[v], hi[1]);
          l = _mm512_mask2_permutex2var_epi8(lo[2], l, high[v], lo[3]);
          h = _mm512_mask2_permutex2var_epi8(hi[2], h, high[v], hi[3]);
          sum[i][v][0] = _mm512_add_epi16(sum[i][v][0], l);
          sum[i][v][1] = _mm512_add_epi16(sum[i][v][1], _mm512_srli_epi16(l, 8));
          sum[i][v][2] = _mm512_add_epi16(sum[i][v][2], h);
          sum[i][v][3] = _mm512_add_epi16(sum[i][v][3], _mm512_srli_epi16(h, 8));
        }
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        const __m512i* s = sum[i][v];
        const __m512i plane[2][2] = {  // [parity][plane]: channels 2j, then 2j + 1
            {_mm512_sub_epi16(s[0], _mm512_slli_epi16(s[1], 8)),
             _mm512_sub_epi16(s[2], _mm512_slli_epi16(s[3], 8))},
            {s[1], s[3]}};
#pragma GCC unroll 2
        for (int parity = 0; parity < 2; ++parity) {
#pragma GCC unroll 2
          for (int half = 0; half < 2; ++half) {
            const __m512i lo = plane[parity][0], hi = plane[parity][1];
            const __m256i l = half ? _mm512_extracti64x4_epi64(lo, 1) : _mm512_castsi512_si256(lo);
            const __m256i h = half ? _mm512_extracti64x4_epi64(hi, 1) : _mm512_castsi512_si256(hi);
            const __m512i x =
                _mm512_add_epi32(_mm512_cvtepu16_epi32(l), _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 8));
            tot[i][v][2 * parity + half] = _mm512_add_epi32(tot[i][v][2 * parity + half], x);
          }
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < NP; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v)
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) _mm512_store_si512(totals + (i * CV + v) * 4 + k, tot[i][v][k]);
}

// The end of a pass: the totals of AccumulateRowsVbmi into acc[i][co], channels below `channels`.
template <int NP, int CV>
TFAPPROX_AVX512VBMI inline void StoreRowsVbmi(const __m512i* totals, int64_t c0, int64_t channels,
                                              int64_t* const* acc) {
  alignas(64) int32_t interleave[2][16];
  for (int k = 0; k < 8; ++k) {
    interleave[0][2 * k] = k, interleave[0][2 * k + 1] = 16 + k;
    interleave[1][2 * k] = 8 + k, interleave[1][2 * k + 1] = 24 + k;
  }
  const __m512i index[2] = {_mm512_load_si512(interleave[0]), _mm512_load_si512(interleave[1])};
  for (int i = 0; i < NP; ++i) {
    for (int v = 0; v < CV; ++v) {
      const __m512i* tot = totals + (i * CV + v) * 4;
      for (int k = 0; k < 4; ++k) {  // channels 16k..16k+15 of the vector: tot half k / 2
        const int64_t co = c0 + 64 * v + 16 * k;
        if (co >= channels) break;
        const __m512i x = _mm512_permutex2var_epi32(tot[k / 2], index[k % 2], tot[2 + k / 2]);
        const int64_t n = std::min<int64_t>(16, channels - co);
        const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
        _mm512_mask_storeu_epi64(acc[i] + co, static_cast<__mmask8>(m),
                                 _mm512_cvtepi32_epi64(_mm512_castsi512_si256(x)));
        _mm512_mask_storeu_epi64(acc[i] + co + 8, static_cast<__mmask8>(m >> 8),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(x, 1)));
      }
    }
  }
}

// One pass of LookupPixelsVbmi over `pairs` pairs of pixels (rows[2p], rows[2p + 1]; acc likewise),
// its taps in blocks of tap_block: every pair runs over a block before the next, so that the block's
// weights (tap_block x 64 CV bytes) are read from the cache by all pairs. totals: room for
// pairs x 2 x CV x 4 vectors.
template <int CV>
TFAPPROX_AVX512VBMI void LookupRowsVbmiPass(const uint16_t* const* rows, int pairs, const uint8_t* w,
                                            int64_t taps, int64_t tap_block, int64_t c0, int64_t channels,
                                            int64_t padded, const uint8_t* planes, int64_t* const* acc,
                                            __m512i* totals) {
  constexpr int kNP = kVbmiRowPixels, kVectors = kNP * CV * 4;
  std::fill(totals, totals + pairs * kVectors, _mm512_setzero_si512());
  for (int64_t t0 = 0; t0 < taps; t0 += tap_block) {
    const int64_t t1 = std::min(taps, t0 + tap_block);
    for (int p = 0; p < pairs; ++p) {
      AccumulateRowsVbmi<kNP, CV>(rows + kNP * p, w, t0, t1, c0, padded, planes, totals + p * kVectors);
    }
  }
  for (int p = 0; p < pairs; ++p) StoreRowsVbmi<kNP, CV>(totals + p * kVectors, c0, channels, acc + kNP * p);
}

// As LookupPixelsPermute (the same operands), from the byte planes, for `pairs` pairs of pixels (at
// most kVbmiBlockPixels pixels), in blocks of tap_block taps (see LookupRowsVbmiPass).
TFAPPROX_AVX512VBMI void LookupPixelsVbmi(const uint16_t* const* rows, int pairs, const uint8_t* weights,
                                          int64_t taps, int64_t tap_block, int64_t channels, int64_t padded,
                                          const uint8_t* planes, int64_t* const* acc) {
  alignas(64) __m512i totals[kVbmiBlockPixels * kVbmiRowVectors * 4];
  int64_t c0 = 0;
  for (; c0 + kVbmiRowVectors * kPermuteChannels <= padded; c0 += kVbmiRowVectors * kPermuteChannels) {
    LookupRowsVbmiPass<kVbmiRowVectors>(rows, pairs, weights, taps, tap_block, c0, channels, padded, planes, acc,
                                        totals);
  }
  for (; c0 < padded; c0 += kPermuteChannels) {
    LookupRowsVbmiPass<1>(rows, pairs, weights, taps, tap_block, c0, channels, padded, planes, acc, totals);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

enum class CpuPath { kColumnsVbmi, kColumns, kRowsVbmi, kRows, kPortable };

// The row permute path makes 64 channels' lookups per row: with half of that or fewer, the column
// path wastes less (measured: 32 channels 1.4x faster). With VBMI, the row kernel is at its best in
// passes of kVbmiRowVectors x 64 channels, and below that the column kernel beats it (measured on
// Zen 4, batch 128, one thread: 64 channels per group 1.2-1.25x faster at 32, 64, 288 and 576 taps,
// the 1x1 stride-2 32 -> 64 of ResNet-20 included; 96 channels 1.2-1.3x; at 128 they are even, and
// rows ahead at 64 taps): the column path up to 127 channels per group. Both sum in 32-bit lanes:
// taps * 65535 < 2^31. The byte-plane kernels of both paths need VBMI; without it, the word kernels
// (measured 1.5-2x slower on columns, 1.5-2.5x on rows), which keep the threshold of 32 channels.
CpuPath ChooseCpuPath(const ConvShape& s, CpuIsa isa) {
  if (isa == CpuIsa::kPortable || !HasAvx512Bw() || s.taps() >= 32768) return CpuPath::kPortable;
  if (isa == CpuIsa::kBest && HasAvx512Vbmi()) {
    const bool rows = s.out_depth_per_group() >= kVbmiRowVectors * kPermuteChannels;
    return rows ? CpuPath::kRowsVbmi : CpuPath::kColumnsVbmi;
  }
  return s.out_depth_per_group() > kPermuteChannels / 2 ? CpuPath::kRows : CpuPath::kColumns;
}

}  // namespace

void TransposeBytes(const uint8_t* in, int64_t rows, int64_t in_stride, int64_t c_begin, int64_t c_end,
                    uint8_t* out, int64_t out_stride) {
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kTransposeTile) {
    const int64_t c1 = std::min(c_end, c0 + kTransposeTile);
    for (int64_t r0 = 0; r0 < rows; r0 += kTransposeTile) {
      const int64_t r1 = std::min(rows, r0 + kTransposeTile);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) out[c * out_stride + r] = in[r * in_stride + c];
      }
    }
  }
}

const char* CpuKernelName(const ConvShape& shape, CpuIsa isa) {
  switch (ChooseCpuPath(shape, isa)) {
    case CpuPath::kColumnsVbmi: return "avx512vbmi-columns";
    case CpuPath::kColumns: return "avx512-columns";
    case CpuPath::kRowsVbmi: return "avx512vbmi-rows";
    case CpuPath::kRows: return "avx512-rows";
    default: return "portable";
  }
}

void CpuConvAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixel_end,
                       const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum, CpuIsa isa) {
  const ConvShape& s = conv.shape;
  const int64_t pixels = pixel_end - pixel_begin;
  if (pixels <= 0) return;
  const int64_t taps = s.taps();
  const int64_t groups = s.groups();
  const int64_t out_per_group = s.out_depth_per_group();
  const int64_t blocks = (pixels + kPixels - 1) / kPixels;
  const int64_t cost_per_block = kPixels * taps * s.out_depth + kPixels * taps * groups;

  const CpuPath path = ChooseCpuPath(s, isa);
  if (path == CpuPath::kColumnsVbmi || path == CpuPath::kColumns) {
    const bool vbmi = path == CpuPath::kColumnsVbmi;
    ColumnPathAccumulate(conv, pixel_begin, pixels, vbmi, parallel_for, acc, act_sum);
    return;
  }
  const bool vbmi_rows = path == CpuPath::kRowsVbmi;
  const bool permute = path == CpuPath::kRows || vbmi_rows;
  std::vector<Line> planes;
  if (vbmi_rows) planes = RowPlanes(conv.lut);
  const int64_t padded = (out_per_group + kPermuteChannels - 1) / kPermuteChannels * kPermuteChannels;
  std::vector<uint8_t> weights_by_tap;  // [group][tap][padded], zero beyond out_per_group
  if (permute) {
    weights_by_tap.assign(static_cast<size_t>(groups * taps * padded), 0);
    // In parallel over blocks of taps, tiled (a 3x3 512 -> 512 filter took 4 ms in a plain loop, 15%
    // of the layer at batch 8 on Zen 4, both cores).
    const int64_t tap_blocks = (taps + kTransposeTile - 1) / kTransposeTile;
    parallel_for(tap_blocks, kTransposeTile * s.out_depth * 2, [&](int64_t begin, int64_t end) {
      for (int64_t g = 0; g < groups; ++g) {
        TransposeBytes(conv.filter + g * out_per_group * taps, out_per_group, taps, begin * kTransposeTile,
                       std::min(taps, end * kTransposeTile), &weights_by_tap[g * taps * padded], padded);
      }
    });
  }

  // Blocks of kPixels pixels are handed out; the VBMI rows kernel takes up to kVbmiBlockPixels of a range
  // at once where the weights are too large for the cache, the others kPixels.
  const bool block_taps = vbmi_rows && taps * padded >= kVbmiBlockBytes;
  const int64_t step = block_taps ? kVbmiBlockPixels : kPixels;
  const int64_t tap_block = block_taps ? kVbmiTapBlock : taps;
  constexpr int kMaxStep = std::max<int>(kPixels, kVbmiBlockPixels);
  parallel_for(blocks, cost_per_block, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> patch(static_cast<size_t>(step * groups * taps));
    std::vector<int64_t> patch_sums(static_cast<size_t>(step * groups));
    const int64_t last = std::min(end * kPixels, pixels);
    for (int64_t p0 = begin * kPixels; p0 < last; p0 += step) {
      const int valid = static_cast<int>(std::min(step, last - p0));
      // A short block repeats its last pixel so the lookup loop keeps its full width: kPixels for the
      // word and scalar kernels, whole pairs for the VBMI one.
      const int width = vbmi_rows ? (valid + kVbmiRowPixels - 1) / kVbmiRowPixels * kVbmiRowPixels : kPixels;
      int64_t pixel[kMaxStep];
      for (int i = 0; i < width; ++i) {
        pixel[i] = p0 + std::min(i, valid - 1);
        if (i < valid) {
          (permute ? GatherPatchBw : GatherPatch)(conv, pixel_begin + pixel[i], &patch[i * groups * taps],
                                                  &patch_sums[i * groups]);
        } else {
          std::copy_n(&patch[(i - 1) * groups * taps], groups * taps, &patch[i * groups * taps]);
        }
      }
      for (int i = 0; i < valid; ++i) {
        std::copy_n(&patch_sums[i * groups], groups, act_sum + pixel[i] * groups);
      }
      if (permute) {
        for (int64_t g = 0; g < groups; ++g) {
          const uint16_t* rows[kMaxStep];
          int64_t* out[kMaxStep];
          for (int i = 0; i < width; ++i) {
            rows[i] = &patch[(i * groups + g) * taps];
            // A repeated last pixel (short block) writes the same values twice: harmless.
            out[i] = acc + pixel[i] * s.out_depth + g * out_per_group;
          }
          if (vbmi_rows) {
            LookupPixelsVbmi(rows, width / kVbmiRowPixels, &weights_by_tap[g * taps * padded], taps, tap_block,
                             out_per_group, padded, reinterpret_cast<const uint8_t*>(planes.data()), out);
            continue;
          }
          for (int i = 0; i < kPixels; i += kPermutePixels) {
            LookupPixelsPermute<kPermutePixels>(rows + i, &weights_by_tap[g * taps * padded], taps,
                                                out_per_group, padded, conv.lut, out + i);
          }
        }
        continue;
      }
      for (int64_t g = 0; g < groups; ++g) {
        const uint16_t* rows[kPixels];
        for (int i = 0; i < kPixels; ++i) rows[i] = &patch[(i * groups + g) * taps];
        int64_t co = g * out_per_group;
        const int64_t co_end = co + out_per_group;
        for (; co + kChannels <= co_end; co += kChannels) {
          const uint8_t* weights[kChannels];
          for (int j = 0; j < kChannels; ++j) weights[j] = conv.filter + (co + j) * taps;
          int64_t sums[kPixels][kChannels];
          LookupBlock<kPixels, kChannels>(rows, weights, taps, conv.lut, sums);
          for (int i = 0; i < valid; ++i)
            for (int j = 0; j < kChannels; ++j) acc[pixel[i] * s.out_depth + co + j] = sums[i][j];
        }
        for (; co < co_end; ++co) {
          const uint8_t* weights[1] = {conv.filter + co * taps};
          int64_t sums[kPixels][1];
          LookupBlock<kPixels, 1>(rows, weights, taps, conv.lut, sums);
          for (int i = 0; i < valid; ++i) acc[pixel[i] * s.out_depth + co] = sums[i][0];
        }
      }
    }
  });
}

}  // namespace tfapprox
