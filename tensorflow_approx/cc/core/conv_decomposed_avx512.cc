// The decomposed CPU kernel's VBMI, VNNI and AMX kernels (conv_decomposed.cc has the design; these run
// where BestIsa is kVnni, AMX's where UsesAmx).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tensorflow_approx/cc/core/conv_decomposed_internal.h"

namespace tfapprox {
namespace decomposed_internal {

// Taps of exactly kBytes bytes: copies of a constant size, which the compiler turns into vector moves.
template <int kBytes>
inline void CopyFixedTaps(const uint8_t* const* taps, int64_t count, uint8_t zero_code, uint8_t* codes) {
  uint8_t zeros[kBytes];
  std::memset(zeros, zero_code, kBytes);
  for (int64_t t = 0; t < count; ++t, codes += kBytes) std::memcpy(codes, taps[t] != nullptr ? taps[t] : zeros, kBytes);
}

// The mask of a vector's first n bytes (all 64 from n = 64 on).
TFAPPROX_VNNI inline __mmask64 FirstBytes(int64_t n) { return n >= 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1; }

// The same 64 bytes at a time (memcpy of a tap's few dozen bytes was a libc call each, 7% of a
// 32-channel layer's time with one term): masked loads, whole stores, whose bytes past the tap the
// next tap's overwrite (AVX-512 masked stores are slow on Zen 4). Writes up to 63 bytes past the K codes.
TFAPPROX_VNNI void CopyTapsAvx512(const uint8_t* const* taps, int64_t count, int64_t depth, uint8_t zero_code,
                                  uint8_t* codes) {
  // Taps of 16 or 32 bytes (16 or 32 channels a group): moves of their size. A 64-byte store at a tap's
  // 16- or 32-byte offset splits across two cache lines three times in four, or every other time.
  if (depth == 16) return CopyFixedTaps<16>(taps, count, zero_code, codes);
  if (depth == 32) return CopyFixedTaps<32>(taps, count, zero_code, codes);
  const __m512i zero = _mm512_set1_epi8(static_cast<char>(zero_code));
  for (int64_t t = 0; t < count; ++t, codes += depth) {
    for (int64_t c = 0; c < depth; c += 64) {
      const __mmask64 valid = FirstBytes(depth - c);
      _mm512_storeu_si512(codes + c, taps[t] != nullptr ? _mm512_maskz_loadu_epi8(valid, taps[t] + c) : zero);
    }
  }
}

// A 256-byte table lookup of 64 codes: two 128-entry byte permutes, the code's top bit choosing. t0..t3
// hold the table's four 64-byte quarters (loaded once by the caller: stores through a uint8_t pointer
// may alias the table, so the compiler would reload it at every lookup).
TFAPPROX_VNNI inline __m512i Lookup256(__m512i t0, __m512i t1, __m512i t2, __m512i t3, __m512i c) {
  const __m512i low = _mm512_permutex2var_epi8(t0, c, t1);
  const __m512i high = _mm512_permutex2var_epi8(t2, c, t3);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(c), low, high);
}

// B's bytes of one term for a block of 16 channels: `count` consecutive codes (a multiple of 4) of each
// channel's filter row (rows: the first channel's, row_stride bytes apart), packed as consecutive steps:
// a step's 16 x 4 codes by one gather of 4 bytes per channel, translated through the term's v by
// byte permutes, stored as one vector. A byte at a time, packing a 3x3 512->512 layer's 8 terms took
// 10 ms, half as long as its GEMM; this way 3.5 ms.
TFAPPROX_VNNI void PackTermVbmi(const uint8_t* rows, int64_t row_stride, int64_t count, const int8_t* v, int64_t width,
                                int8_t* lanes) {
  const __m512i t0 = _mm512_loadu_si512(v), t1 = _mm512_loadu_si512(v + 64), t2 = _mm512_loadu_si512(v + 128),
                t3 = _mm512_loadu_si512(v + 192);
  const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(row_stride)));
  for (int64_t k = 0; k < count; k += 4, lanes += width * 4) {
    const __m512i codes = _mm512_i32gather_epi32(index, rows + k, 1);
    _mm512_storeu_si512(lanes, Lookup256(t0, t1, t2, t3, codes));
  }
}

// Quarter t of alpha's byte plane j (zero for planes past the count: never read).
TFAPPROX_VNNI inline __m512i PlaneQuarter(const AlphaPlanes& alpha, int j, int t) {
  return j < alpha.count ? _mm512_loadu_si512(alpha.planes.data() + j * 256 + t * 64) : _mm512_setzero_si512();
}

// The same as SumsPortable, 64 codes at a time: byte sums by vpsadbw against zero, alpha's through its
// byte planes. The planes' tables and sums are named variables, not arrays indexed by the plane: GCC
// kept such arrays of vectors in memory, and the loop-carried sums then waited on stores and reloads.
// A tile's pixels in one call, the tables loaded once (per pixel, the loads and the planes' checks and
// reductions weighed on K = 288 codes: five vectors), the planes' sums reduced together.
TFAPPROX_VNNI void SumsVbmi(const uint8_t* codes, int64_t n, int64_t taps, const int32_t*, const AlphaPlanes& alpha,
                            int64_t* code_sum, int64_t* alpha_sum) {
  const __m512i zero = _mm512_setzero_si512();
  const int count = alpha.count;
  const __m512i t00 = PlaneQuarter(alpha, 0, 0), t01 = PlaneQuarter(alpha, 0, 1),
                t02 = PlaneQuarter(alpha, 0, 2), t03 = PlaneQuarter(alpha, 0, 3);
  const __m512i t10 = PlaneQuarter(alpha, 1, 0), t11 = PlaneQuarter(alpha, 1, 1),
                t12 = PlaneQuarter(alpha, 1, 2), t13 = PlaneQuarter(alpha, 1, 3);
  const __m512i t20 = PlaneQuarter(alpha, 2, 0), t21 = PlaneQuarter(alpha, 2, 1),
                t22 = PlaneQuarter(alpha, 2, 2), t23 = PlaneQuarter(alpha, 2, 3);
  const __m512i t30 = PlaneQuarter(alpha, 3, 0), t31 = PlaneQuarter(alpha, 3, 1),
                t32 = PlaneQuarter(alpha, 3, 2), t33 = PlaneQuarter(alpha, 3, 3);
  for (int64_t i = 0; i < n; ++i, codes += taps) {
    __m512i sums = zero, p0 = zero, p1 = zero, p2 = zero, p3 = zero;
    for (int64_t k = 0; k < taps; k += 64) {
      const __mmask64 valid = FirstBytes(taps - k);
      const __m512i c = _mm512_maskz_loadu_epi8(valid, codes + k);
      sums = _mm512_add_epi64(sums, _mm512_sad_epu8(c, zero));
      if (count > 0)
        p0 = _mm512_add_epi64(p0, _mm512_sad_epu8(_mm512_maskz_mov_epi8(valid, Lookup256(t00, t01, t02, t03, c)), zero));
      if (count > 1)
        p1 = _mm512_add_epi64(p1, _mm512_sad_epu8(_mm512_maskz_mov_epi8(valid, Lookup256(t10, t11, t12, t13, c)), zero));
      if (count > 2)
        p2 = _mm512_add_epi64(p2, _mm512_sad_epu8(_mm512_maskz_mov_epi8(valid, Lookup256(t20, t21, t22, t23, c)), zero));
      if (count > 3)
        p3 = _mm512_add_epi64(p3, _mm512_sad_epu8(_mm512_maskz_mov_epi8(valid, Lookup256(t30, t31, t32, t33, c)), zero));
    }
    // The planes' sums, each shifted to its byte, in one vector: one reduction for all of them.
    const __m512i planes = _mm512_add_epi64(
        _mm512_add_epi64(p0, _mm512_slli_epi64(p1, 8)), _mm512_add_epi64(_mm512_slli_epi64(p2, 16), _mm512_slli_epi64(p3, 24)));
    code_sum[i] = _mm512_reduce_add_epi64(sums);
    alpha_sum[i] = alpha.base * taps + alpha.slope * code_sum[i] + (count > 0 ? _mm512_reduce_add_epi64(planes) : 0);
  }
}

// The int64 sums of each w-byte pixel (w = 4, 8 or 16) of a vector, in qword lanes: *lo the first 8 pixels
// (4 for w = 16), *hi pixels 8..15 (w = 4; else 0). 4-byte pixels by vpdpbusd against ones, wider ones by
// vpsadbw (a qword per 8 bytes; a 16-byte pixel's two added and the pixels' sums packed low).
TFAPPROX_VNNI inline void PixelSums(int64_t w, __m512i bytes, __m512i* lo, __m512i* hi) {
  const __m512i zero = _mm512_setzero_si512();
  *hi = zero;
  if (w == 4) {
    const __m512i d = _mm512_dpbusd_epi32(zero, bytes, _mm512_set1_epi8(1));
    *lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(d));
    *hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(d, 1));
    return;
  }
  const __m512i q = _mm512_sad_epu8(bytes, zero);
  *lo = w == 8 ? q : _mm512_maskz_compress_epi64(0x55, _mm512_add_epi64(q, _mm512_shuffle_epi32(q, _MM_PERM_BADC)));
}

// Byte 4p + k of a row of 3-code (2-, 1-code) pixels spread to 4 bytes: code k of pixel p (k < cg), and
// the bytes that hold codes.
struct Spread {
  alignas(64) uint8_t index[64];
  __mmask64 keep = 0;
  explicit Spread(int cg) {
    for (int b = 0; b < 64; ++b) {
      index[b] = static_cast<uint8_t>(b % 4 < cg ? b / 4 * cg + b % 4 : 0);
      if (b % 4 < cg) keep |= __mmask64{1} << b;
    }
  }
};
const Spread kSpreads[4] = {Spread(0), Spread(1), Spread(2), Spread(3)};

// The first `count` W-byte pixels of v (W = 4, 8 or 16) to dst every `stride` bytes, straight from its
// 128-bit lanes. Through a 64-byte buffer and a copy per pixel, every copy's load waited on the buffer's
// store (store forwarding fails from a 64-byte store to the smaller loads): a third of NarrowPixelsVbmi's
// time with 7 terms on a 16-channel layer.
template <int W>
TFAPPROX_VNNI inline void StorePixels(__m512i v, int64_t count, int64_t stride, uint8_t* dst) {
  constexpr int kPerLane = 16 / W;
  const __m128i lanes[4] = {_mm512_castsi512_si128(v), _mm512_extracti32x4_epi32(v, 1),
                            _mm512_extracti32x4_epi32(v, 2), _mm512_extracti32x4_epi32(v, 3)};
  for (int64_t p = 0; p < count; ++p, dst += stride) {
    const __m128i lane = lanes[p / kPerLane];
    if (W == 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), lane);
    } else if (W == 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), p % 2 == 0 ? lane : _mm_unpackhi_epi64(lane, lane));
    } else {
      const int64_t k = p % 4;
      const __m128i moved = k == 0   ? lane
                            : k == 1 ? _mm_srli_si128(lane, 4)
                            : k == 2 ? _mm_srli_si128(lane, 8)
                                     : _mm_srli_si128(lane, 12);
      const int32_t four = _mm_cvtsi128_si32(moved);
      std::memcpy(dst, &four, 4);
    }
  }
}

// Pixels of at most 16 codes, several to a vector: a row of n pixels' codes (codes: [n][cg], contiguous) to
// their direct image bytes (pixel i's term r at out + i * terms * w + r * w, w = DirectDepth: TranslateVbmi's
// bytes, its pads past cg unspecified) and sums (SumsVbmi's). Pixel by pixel, a vector's masked load,
// lookups and store per term and two reductions for 3 or 16 codes were 16% of ResNet-20's stem.
TFAPPROX_VNNI void NarrowPixelsVbmi(const uint8_t* codes, int64_t n, int64_t cg, const uint8_t* u_plus, int terms,
                                    const AlphaPlanes& alpha, uint8_t* out, int64_t* code_sum, int64_t* alpha_sum) {
  const int64_t w = cg <= 4 ? 4 : cg, per = 64 / w, pixel_bytes = terms * w;
  const Spread& spread = kSpreads[cg < 4 ? cg : 0];
  const __m512i spread_index = _mm512_load_si512(spread.index);
  const __m512i base = _mm512_set1_epi64(alpha.base * cg), slope = _mm512_set1_epi64(alpha.slope);
  for (int64_t i = 0; i < n; i += per) {
    const int64_t count = std::min(per, n - i);
    __m512i c = _mm512_maskz_loadu_epi8(FirstBytes(count * cg), codes + i * cg);
    if (cg < 4) c = _mm512_maskz_permutexvar_epi8(spread.keep, spread_index, c);
    // The sums: alpha's as SumsVbmi's, base * cg + slope * code sum + its planes' sums shifted to their bytes
    // (|slope| < 2^32 / 255, since 255 * slope is a difference of int32: vpmuldq is exact).
    __m512i code_lo, code_hi, planes_lo = _mm512_setzero_si512(), planes_hi = _mm512_setzero_si512();
    PixelSums(w, c, &code_lo, &code_hi);
    for (int j = 0; j < alpha.count; ++j) {
      const uint8_t* plane = alpha.planes.data() + j * 256;
      const __m512i looked = Lookup256(_mm512_loadu_si512(plane), _mm512_loadu_si512(plane + 64),
                                       _mm512_loadu_si512(plane + 128), _mm512_loadu_si512(plane + 192), c);
      __m512i lo, hi;
      PixelSums(w, cg < 4 ? _mm512_maskz_mov_epi8(spread.keep, looked) : looked, &lo, &hi);  // (pads: code 0)
      planes_lo = _mm512_add_epi64(planes_lo, _mm512_slli_epi64(lo, 8 * j));
      planes_hi = _mm512_add_epi64(planes_hi, _mm512_slli_epi64(hi, 8 * j));
    }
    const __mmask8 lo_mask = static_cast<__mmask8>(FirstBytes(std::min<int64_t>(count, 8)));
    _mm512_mask_storeu_epi64(code_sum + i, lo_mask, code_lo);
    _mm512_mask_storeu_epi64(alpha_sum + i, lo_mask,
                             _mm512_add_epi64(_mm512_add_epi64(base, _mm512_mul_epi32(code_lo, slope)), planes_lo));
    if (count > 8) {
      const __mmask8 hi_mask = static_cast<__mmask8>(FirstBytes(count - 8));
      _mm512_mask_storeu_epi64(code_sum + i + 8, hi_mask, code_hi);
      _mm512_mask_storeu_epi64(alpha_sum + i + 8, hi_mask,
                               _mm512_add_epi64(_mm512_add_epi64(base, _mm512_mul_epi32(code_hi, slope)), planes_hi));
    }
    for (int r = 0; r < terms; ++r) {
      const uint8_t* table = u_plus + r * 256;
      const __m512i v = Lookup256(_mm512_loadu_si512(table), _mm512_loadu_si512(table + 64),
                                  _mm512_loadu_si512(table + 128), _mm512_loadu_si512(table + 192), c);
      if (terms == 1) {  // the pixels' bytes are contiguous
        _mm512_mask_storeu_epi8(out + i * w, FirstBytes(count * w), v);
        continue;
      }
      uint8_t* dst = out + i * pixel_bytes + r * w;
      if (w == 16) {
        StorePixels<16>(v, count, pixel_bytes, dst);
      } else if (w == 8) {
        StorePixels<8>(v, count, pixel_bytes, dst);
      } else {
        StorePixels<4>(v, count, pixel_bytes, dst);
      }
    }
  }
}

// The same, 64 codes at a time, a term's table loaded once for all n pixels.
TFAPPROX_VNNI void TranslateVbmi(const uint8_t* codes, int64_t n, int64_t taps, const uint8_t* u_plus, int terms,
                                 int64_t term_stride, int64_t reduction, uint8_t* rows) {
  for (int r = 0; r < terms; ++r) {
    const uint8_t* table = u_plus + r * 256;
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64),
                  t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < taps; k += 64) {
        const __mmask64 valid = FirstBytes(taps - k);
        const __m512i c = _mm512_maskz_loadu_epi8(valid, codes + i * taps + k);
        _mm512_mask_storeu_epi8(rows + i * reduction + r * term_stride + k, valid, Lookup256(t0, t1, t2, t3, c));
      }
    }
  }
  // The row's end past the last term: one masked store where it is at most 64 bytes (a std::fill of a
  // byte or three per pixel was a memset call each, 3% of ResNet-20's stem).
  const int64_t pad_begin = (terms - 1) * term_stride + taps, pad = reduction - pad_begin;
  if (pad <= 0) return;
  if (pad <= 64) {
    const __mmask64 valid = FirstBytes(pad);
    const __m512i fill = _mm512_set1_epi8(static_cast<char>(128));
    for (int64_t i = 0; i < n; ++i) _mm512_mask_storeu_epi8(rows + i * reduction + pad_begin, valid, fill);
    return;
  }
  for (int64_t i = 0; i < n; ++i) std::fill(rows + i * reduction + pad_begin, rows + (i + 1) * reduction, uint8_t{128});
}

// sums[i][c] (= for `first`, else +=) the dot products of A's row i and B's channel c for kPixelBlock rows
// of A and the NV * kChannelBlock channels of a panel of B (packed as PackedFilter::b, `width` channels a
// step, from b on), over `segments` runs of `segment_steps` steps (four reduction entries each): run j of
// row i starts at rows[i] + offsets[j]. The gather path passes one run of each row of its gathered tile;
// the direct path one run per spatial tap, each starting at the tap's pixel in the padded image (rows[i]:
// output pixel i's pixel at tap (0, 0), so that a block's pixels may lie on two output rows). With
// `first` the caller need not zero sums (its memset was 5% of a 64-channel layer).
//
// The 24 accumulators are named variables, not an array: GCC at -O2 (the build's) keeps an array of
// vectors in memory even once its loops are unrolled, every vpdpbusd then waiting on a store and a
// reload (the 8 x 2 kernel this replaced ran at a fraction of vpdpbusd's rate for that reason).
//
// With `outputs` (the direct path's float32 outputs, where their integers fit in int32: see
// DirectConvAccumulate) the tile's outputs are written from its int32 sums in registers
// (StoreOutputsVnni) instead of its int64 sums.
template <int NV>
TFAPPROX_VNNI inline void StoreOutputsVnni(const __m512i (&acc)[kPixelBlock][kMaxVectors], const BlockOutputs& o);

static_assert(kPixelBlock == 6 && kMaxVectors == 4, "MicroKernelVnni spells out a 6 x 4 tile");
// The tile's sums go to `outputs` (StoreOutputsVnni), else to int32 `sum_rows` (a row per pixel: set with
// `first`, else added to), else to `sums`.
template <int NV>
TFAPPROX_VNNI __attribute__((always_inline)) inline void MicroTileVnni(
    const uint8_t* const* rows, const int64_t* offsets, int64_t segments, int64_t segment_steps, const int8_t* b,
    int64_t width, bool first, Sums* sums, const BlockOutputs* outputs, int32_t* const* sum_rows = nullptr) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i s00 = zero, s01 = zero, s02 = zero, s03 = zero, s10 = zero, s11 = zero, s12 = zero, s13 = zero,
          s20 = zero, s21 = zero, s22 = zero, s23 = zero, s30 = zero, s31 = zero, s32 = zero, s33 = zero,
          s40 = zero, s41 = zero, s42 = zero, s43 = zero, s50 = zero, s51 = zero, s52 = zero, s53 = zero;
  const int8_t* bp = b;
  for (int64_t j = 0; j < segments; ++j) {
    const uint8_t *a0 = rows[0] + offsets[j], *a1 = rows[1] + offsets[j], *a2 = rows[2] + offsets[j];
    const uint8_t *a3 = rows[3] + offsets[j], *a4 = rows[4] + offsets[j], *a5 = rows[5] + offsets[j];
    for (int64_t step = 0; step < segment_steps; ++step, bp += width * 4) {
      const __m512i b0 = _mm512_loadu_si512(bp);
      const __m512i b1 = NV > 1 ? _mm512_loadu_si512(bp + 64) : zero;
      const __m512i b2 = NV > 2 ? _mm512_loadu_si512(bp + 128) : zero;
      const __m512i b3 = NV > 3 ? _mm512_loadu_si512(bp + 192) : zero;
#define TFAPPROX_DECOMPOSED_ROW(i)                                            \
  {                                                                           \
    int32_t four;                                                             \
    std::memcpy(&four, a##i + 4 * step, 4);                                   \
    const __m512i av = _mm512_set1_epi32(four);                               \
    s##i##0 = _mm512_dpbusd_epi32(s##i##0, av, b0);                           \
    if (NV > 1) s##i##1 = _mm512_dpbusd_epi32(s##i##1, av, b1);               \
    if (NV > 2) s##i##2 = _mm512_dpbusd_epi32(s##i##2, av, b2);               \
    if (NV > 3) s##i##3 = _mm512_dpbusd_epi32(s##i##3, av, b3);               \
  }
      TFAPPROX_DECOMPOSED_ROW(0)
      TFAPPROX_DECOMPOSED_ROW(1)
      TFAPPROX_DECOMPOSED_ROW(2)
      TFAPPROX_DECOMPOSED_ROW(3)
      TFAPPROX_DECOMPOSED_ROW(4)
      TFAPPROX_DECOMPOSED_ROW(5)
#undef TFAPPROX_DECOMPOSED_ROW
    }
  }
  const __m512i acc[kPixelBlock][kMaxVectors] = {{s00, s01, s02, s03}, {s10, s11, s12, s13},
                                                 {s20, s21, s22, s23}, {s30, s31, s32, s33},
                                                 {s40, s41, s42, s43}, {s50, s51, s52, s53}};
  if (outputs != nullptr) return StoreOutputsVnni<NV>(acc, *outputs);
  if (sum_rows != nullptr) {
    for (int i = 0; i < kPixelBlock; ++i) {
      for (int n = 0; n < NV; ++n) {
        int32_t* const row = sum_rows[i] + n * kChannelBlock;
        _mm512_storeu_si512(row, first ? acc[i][n] : _mm512_add_epi32(_mm512_loadu_si512(row), acc[i][n]));
      }
    }
    return;
  }
  for (int i = 0; i < kPixelBlock; ++i) {
    for (int n = 0; n < NV; ++n) {
      alignas(64) int32_t lanes[kChannelBlock];
      _mm512_store_si512(lanes, acc[i][n]);
      if (first) {
        for (int c = 0; c < kChannelBlock; ++c) (*sums)[i][n * kChannelBlock + c] = lanes[c];
      } else {
        for (int c = 0; c < kChannelBlock; ++c) (*sums)[i][n * kChannelBlock + c] += lanes[c];
      }
    }
  }
}

template <int NV>
TFAPPROX_VNNI void MicroKernelVnni(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                   int64_t segment_steps, const int8_t* b, int64_t width, bool first, Sums& sums) {
  MicroTileVnni<NV>(rows, offsets, segments, segment_steps, b, width, first, &sums, nullptr);
}
template <int NV>
TFAPPROX_VNNI void MicroKernelOutputsVnni(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                          int64_t segment_steps, const int8_t* b, int64_t width,
                                          const BlockOutputs& outputs) {
  MicroTileVnni<NV>(rows, offsets, segments, segment_steps, b, width, true, nullptr, &outputs);
}

template <int NV>
TFAPPROX_VNNI void MicroKernelRowsVnni(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                       int64_t segment_steps, const int8_t* b, int64_t width, bool first,
                                       int32_t* const* sum_rows) {
  MicroTileVnni<NV>(rows, offsets, segments, segment_steps, b, width, first, nullptr, nullptr, sum_rows);
}

const MicroKernel kVnniKernels[kMaxVectors] = {MicroKernelVnni<1>, MicroKernelVnni<2>, MicroKernelVnni<3>,
                                               MicroKernelVnni<4>};
const MicroKernelOutputs kVnniOutputKernels[kMaxVectors] = {MicroKernelOutputsVnni<1>, MicroKernelOutputsVnni<2>,
                                                            MicroKernelOutputsVnni<3>, MicroKernelOutputsVnni<4>};
const MicroKernelRows kVnniRowKernels[kMaxVectors] = {MicroKernelRowsVnni<1>, MicroKernelRowsVnni<2>,
                                                      MicroKernelRowsVnni<3>, MicroKernelRowsVnni<4>};

template <int NV>
TFAPPROX_VNNI inline void StoreOutputsVnni(const __m512i (&acc)[kPixelBlock][kMaxVectors], const BlockOutputs& o) {
  const DequantizeRows& r = *o.rows;
  for (int n = 0; n < NV; ++n) {
    const int64_t c = o.c0 + n * kChannelBlock, left = o.width - n * kChannelBlock;
    if (left <= 0) break;
    const __mmask16 m = left >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << left) - 1);
    const __m512 acc_scale = _mm512_maskz_loadu_ps(m, &r.acc_scale[c]);
    const __m512 act_sum_scale = _mm512_maskz_loadu_ps(m, &r.act_sum_scale[c]);
    const __m512 filter_term = _mm512_maskz_loadu_ps(m, &r.filter_term[c]);
    const __m512 constant = _mm512_maskz_loadu_ps(m, &r.constant[c]);
    const __m512i channel_add = _mm512_maskz_loadu_epi32(m, o.channel_add + c);
    const __m512i channel_act = _mm512_maskz_loadu_epi32(m, o.channel_act + c);
    for (int i = 0; i < kPixelBlock; ++i) {
      if (i >= o.pixels) break;
      const __m512i net_acc =
          _mm512_add_epi32(_mm512_add_epi32(acc[i][n], _mm512_set1_epi32(o.pixel_add[i])), channel_add);
      const __m512i act = _mm512_sub_epi32(_mm512_set1_epi32(o.act[i]), channel_act);
      __m512 v = _mm512_add_ps(_mm512_mul_ps(acc_scale, _mm512_cvtepi32_ps(net_acc)),
                               _mm512_mul_ps(act_sum_scale, _mm512_cvtepi32_ps(act)));
      v = _mm512_add_ps(v, filter_term);
      v = _mm512_add_ps(v, constant);
      _mm512_mask_storeu_ps(o.out[i] + c, m, v);
    }
  }
}

// AMX (Sapphire Rapids on): the direct path's GEMM on the tile unit. One tdpbusd multiplies a tile of 16
// rows of 64 unsigned bytes (A: 16 pixels, 64 reduction entries) by one of 16 rows of 16 x 4 signed bytes
// (B: 16 steps of 16 channels, as PackedFilter's panels hold them, 4 * width bytes apart) into 16 x 16
// int32 sums, vpdpbusd's arithmetic (no saturation), 16384 products where vpdpbusd does 64. A tile's rows
// lie a constant stride apart: at strides 1 (along the width; UsesAmx) consecutive pixels of the padded
// image, so the tiles are loaded straight from the image for a range of pixels that covers the tile's (the
// image's pixels between two output rows give sums that are dropped). B's runs are padded to whole tiles
// (PackFilter's `amx`).
static_assert(kPanel == 4 * kAmxRows, "a panel in AMX tiles");

// Every tile 16 rows of 64 bytes (palette 1). A thread's tile configuration is its own: set at the start of
// each parallel part that uses the tiles and released at its end.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
TFAPPROX_AMX void ConfigureAmx() {
  AmxConfig config;
  for (int t = 0; t < 8; ++t) config.colsb[t] = kAmxBytes, config.rows[t] = kAmxRows;
  _tile_loadconfig(&config);
}
TFAPPROX_AMX void ReleaseAmx() { _tile_release(); }

// c (row r at r * kPanel, int32) = pixel_blocks blocks of 16 rows of A (block k's row r at blocks[k] + r *
// a_stride) times a panel of B (b: PackFilter's with `amx`, NB * 16 channels), over `runs` runs of run_tiles
// tiles: run j of a row starts offsets[j] past it. Four sums tiles at a time (tiles 0-3), of PB = 4 / NB
// blocks of 16 pixels (up to 3 blocks past pixel_blocks are computed: blocks, c and A must have them): with
// one block of 16 channels and one of pixels, each tdpbusd waited for the previous one's sums. A's and B's tiles
// alternate between two registers each (4-5 and 6-7), so that a load need not wait for the tdpbusd before
// it; a tile needed again in the same step is not loaded again. (GCC's tile intrinsics take the tile's
// number as a literal, hence the cases spelled out.)
// The reduction is taken kAmxSliceSteps tiles at a time over all the blocks, the sums stored to c and loaded
// back between slices: every block of the call then reads a slice's share of B (NB KB a step, 512 KB for
// 64 channels) from L2, where over the whole reduction each block read the panel from beyond L2 once it was
// over L2's 2 MB (3x3 7x7 512->512 with 8 terms: 2.4 MB, read once per block of 16 pixels; the call on two
// cores of a Sapphire Rapids 34.5-38.4 ms before, 26.7-28.0 with slices; slices of 64 tiles ran as fast, of
// 32 or 256 and more slower; docs/decomposition.md, "Slices of the reduction").
constexpr int64_t kAmxSliceSteps = 128;
template <int NB>
TFAPPROX_AMX void AmxPanel(const uint8_t* const* blocks, int64_t a_stride, const int64_t* offsets, int64_t runs,
                           int64_t run_tiles, int64_t pixel_blocks, const int8_t* b, int32_t* c) {
  constexpr int PB = NB == 1 ? 4 : NB == 2 ? 2 : 1, kSums = PB * NB;
  constexpr int64_t kBStride = NB * kAmxRows * 4;  // a step of the panel: NB * 16 channels x 4 bytes
  constexpr int64_t kCStride = kPanel * 4;         // a row of c
  // Sums tile i's first row and channel in c.
  constexpr auto at = [](int i) { return (i / NB) * kAmxRows * kPanel + (i % NB) * kAmxRows; };
  const int64_t steps = runs * run_tiles;
  const int64_t slices = std::max<int64_t>(1, (steps + kAmxSliceSteps - 1) / kAmxSliceSteps);
  for (int64_t slice = 0; slice < slices; ++slice) {
    const int64_t first = slice * kAmxSliceSteps, last = std::min(steps, first + kAmxSliceSteps);
    for (int64_t block = 0; block < pixel_blocks; block += PB) {
      const uint8_t* const a0 = blocks[block];
      const uint8_t* const a1 = PB > 1 ? blocks[block + 1] : nullptr;
      const uint8_t* const a2 = PB > 2 ? blocks[block + 2] : nullptr;
      const uint8_t* const a3 = PB > 3 ? blocks[block + 3] : nullptr;
      int32_t* const cp = c + block * kAmxRows * kPanel;
      if (first == 0) {
        _tile_zero(0);
        if (kSums > 1) _tile_zero(1);
        if (kSums > 2) _tile_zero(2);
        if (kSums > 3) _tile_zero(3);
      } else {
        _tile_loadd(0, cp + at(0), kCStride);
        if (kSums > 1) _tile_loadd(1, cp + at(1), kCStride);
        if (kSums > 2) _tile_loadd(2, cp + at(2), kCStride);
        if (kSums > 3) _tile_loadd(3, cp + at(3), kCStride);
      }
      // Step `step` is tile t of run j.
      int64_t j = run_tiles > 0 ? first / run_tiles : 0, t = first - j * run_tiles;
      const int8_t* bp = b + first * kAmxRows * kBStride;
      for (int64_t step = first; step < last; ++step, bp += kAmxRows * kBStride) {
        const int64_t k = offsets[j] + t * kAmxBytes;  // the tile's first byte in each row
        if (++t == run_tiles) t = 0, ++j;
        if (NB == 1) {
          _tile_loadd(4, a0 + k, a_stride);
          _tile_loadd(6, bp, kBStride);
          _tile_dpbusd(0, 4, 6);
          _tile_loadd(5, a1 + k, a_stride);
          _tile_dpbusd(1, 5, 6);
          _tile_loadd(4, a2 + k, a_stride);
          _tile_dpbusd(2, 4, 6);
          _tile_loadd(5, a3 + k, a_stride);
          _tile_dpbusd(3, 5, 6);
        } else if (NB == 2) {
          _tile_loadd(4, a0 + k, a_stride);
          _tile_loadd(6, bp, kBStride);
          _tile_dpbusd(0, 4, 6);
          _tile_loadd(7, bp + 64, kBStride);
          _tile_dpbusd(1, 4, 7);
          _tile_loadd(5, a1 + k, a_stride);
          _tile_dpbusd(2, 5, 6);
          _tile_dpbusd(3, 5, 7);
        } else {
          _tile_loadd(4, a0 + k, a_stride);
          _tile_loadd(6, bp, kBStride);
          _tile_dpbusd(0, 4, 6);
          _tile_loadd(7, bp + 64, kBStride);
          _tile_dpbusd(1, 4, 7);
          _tile_loadd(6, bp + 128, kBStride);
          _tile_dpbusd(2, 4, 6);
          if (NB > 3) {
            _tile_loadd(7, bp + 192, kBStride);
            _tile_dpbusd(3, 4, 7);
          }
        }
      }
      _tile_stored(0, cp + at(0), kCStride);
      if (kSums > 1) _tile_stored(1, cp + at(1), kCStride);
      if (kSums > 2) _tile_stored(2, cp + at(2), kCStride);
      if (kSums > 3) _tile_stored(3, cp + at(3), kCStride);
    }
  }
}
const AmxPanelKernel kAmxPanels[kMaxVectors] = {AmxPanel<1>, AmxPanel<2>, AmxPanel<3>, AmxPanel<4>};

// MicroKernelOutputsVnni's outputs for one block of kPixelBlock pixels from int32 sums (rows: each pixel's
// row of them): AmxPanel's, or MicroKernelRowsVnni's added up over slices of the reduction.
template <int NV>
TFAPPROX_VNNI void SumRowsOutputs(const int32_t* const* rows, const BlockOutputs& outputs) {
  __m512i acc[kPixelBlock][kMaxVectors];
  for (int i = 0; i < kPixelBlock; ++i)
    for (int n = 0; n < kMaxVectors; ++n) acc[i][n] = n < NV ? _mm512_loadu_si512(rows[i] + n * 16) : __m512i{};
  StoreOutputsVnni<NV>(acc, outputs);
}
const SumRowsOutputKernel kSumRowsOutputs[kMaxVectors] = {SumRowsOutputs<1>, SumRowsOutputs<2>, SumRowsOutputs<3>,
                                                          SumRowsOutputs<4>};

// The same, 8 at a time. Written as a scalar loop in the tile loop, where the compiler could not keep
// its operands in registers (acc may alias them), this took more time than the GEMM on 64-channel layers.
TFAPPROX_VNNI void WriteSumsAvx512(const int64_t* sums, int64_t alpha_sum, const int64_t* offset, int64_t n,
                                   int64_t* out) {
  const __m512i alpha = _mm512_set1_epi64(alpha_sum);
  for (int64_t c = 0; c < n; c += 8) {
    const __mmask8 valid = n - c >= 8 ? __mmask8{0xff} : static_cast<__mmask8>((1u << (n - c)) - 1);
    const __m512i sum = _mm512_add_epi64(_mm512_maskz_loadu_epi64(valid, sums + c), alpha);
    _mm512_mask_storeu_epi64(out + c, valid, _mm512_add_epi64(sum, _mm512_maskz_loadu_epi64(valid, offset + c)));
  }
}

// out[c] = sum of rows[j][c] over j < count, for c < n (AddRowsPortable's), 8 at a time.
TFAPPROX_VNNI void AddRowsAvx512(const int64_t* const* rows, int64_t count, int64_t n, int64_t* out) {
  for (int64_t c = 0; c < n; c += 8) {
    const __mmask8 valid = static_cast<__mmask8>(n - c >= 8 ? 0xff : (1u << (n - c)) - 1);
    __m512i sum = _mm512_maskz_loadu_epi64(valid, rows[0] + c);
    for (int64_t j = 1; j < count; ++j) sum = _mm512_add_epi64(sum, _mm512_maskz_loadu_epi64(valid, rows[j] + c));
    _mm512_mask_storeu_epi64(out + c, valid, sum);
  }
}

}  // namespace decomposed_internal
}  // namespace tfapprox
