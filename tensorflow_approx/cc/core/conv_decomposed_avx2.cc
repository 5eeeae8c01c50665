// The decomposed CPU kernel's AVX2 kernels: the direct path without AVX-512 (conv_decomposed.cc has the
// design; these run where BestIsa is kAvx2).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "tensorflow_approx/cc/core/conv_decomposed_internal.h"

namespace tfapprox {
namespace decomposed_internal {

// A row of n pixels' codes (codes: [n][cg]) to the AVX2 image's int16 entries (DirectImage::entry_bytes 2):
// pixel i's term r at out + i * pixel_entries + r * depth, u + 128 of each code; the pads past cg are left
// as they are (B's zeros meet them). `widen`: one term whose u + 128 is the code itself (the exact table's
// u = code - 128) and depth = cg (DirectImage::widened_codes): the codes widened, 16 at a time. With u_by_code (DirectImage's, four or more terms), 8 codes x 8
// terms at a time: a load of each code's eight entries, an 8 x 8 byte transpose (three rounds of unpacks)
// and each term's 8 entries widened and stored; one lookup per entry, they were about 30% of the 8-term
// mul8u_GS2 on ResNet-20's 16->16 layer. The rest (other counts, a pixel's last cg % 8 channels) look up
// each entry.
TFAPPROX_AVX2 void TranslateWideAvx2(const uint8_t* codes, int64_t n, int64_t cg, const uint8_t* u_plus,
                                     bool widen, const uint8_t* u_by_code, int terms, int64_t depth,
                                     int64_t pixel_entries, uint16_t* out) {
  if (widen) {  // the row's entries in one run
    int64_t k = 0;
    for (; k + 16 <= n * cg; k += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), _mm256_cvtepu8_epi16(bytes));
    }
    for (; k < n * cg; ++k) out[k] = codes[k];
    return;
  }
  int64_t c_done = 0;  // channels of each pixel done by the eight-term loop (all terms)
  if (u_by_code != nullptr) {
    c_done = cg / 8 * 8;
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* src = codes + i * cg;
      uint16_t* dst = out + i * pixel_entries;
      for (int64_t c0 = 0; c0 < c_done; c0 += 8) {
        for (int g = 0; g < (terms + 7) / 8; ++g) {
          const uint8_t* table = u_by_code + g * 256 * 8;
          __m128i q[8];  // code k's entries of terms 8g .. 8g + 7 in bytes 0..7
          for (int k = 0; k < 8; ++k) q[k] = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(table + src[c0 + k] * 8));
          // Bytes (code, term) -> (term, code): after the three rounds v[j] holds terms 2j and 2j + 1, each
          // as eight bytes of codes 0..7.
          const __m128i t0 = _mm_unpacklo_epi8(q[0], q[1]), t1 = _mm_unpacklo_epi8(q[2], q[3]);
          const __m128i t2 = _mm_unpacklo_epi8(q[4], q[5]), t3 = _mm_unpacklo_epi8(q[6], q[7]);
          const __m128i u0 = _mm_unpacklo_epi16(t0, t1), u1 = _mm_unpackhi_epi16(t0, t1);
          const __m128i u2 = _mm_unpacklo_epi16(t2, t3), u3 = _mm_unpackhi_epi16(t2, t3);
          const __m128i v[4] = {_mm_unpacklo_epi32(u0, u2), _mm_unpackhi_epi32(u0, u2), _mm_unpacklo_epi32(u1, u3),
                                _mm_unpackhi_epi32(u1, u3)};
          for (int j = 0; j < 4; ++j) {
            const int r = 8 * g + 2 * j;
            if (r >= terms) break;
            const __m256i wide = _mm256_cvtepu8_epi16(v[j]);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + r * depth + c0), _mm256_castsi256_si128(wide));
            if (r + 1 < terms) {
              _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (r + 1) * depth + c0), _mm256_extracti128_si256(wide, 1));
            }
          }
        }
      }
    }
  }
  if (c_done == cg) return;
  for (int r = 0; r < terms; ++r) {
    const uint8_t* table = u_plus + r * 256;
    for (int64_t i = 0; i < n; ++i) {
      uint16_t* dst = out + i * pixel_entries + r * depth;
      const uint8_t* src = codes + i * cg;
      for (int64_t c = c_done; c < cg; ++c) dst[c] = table[src[c]];
    }
  }
}

// SumsPortable for AVX2's image rows (n pixels of cg codes): the code sums 16 bytes at a time (vpsadbw), an
// affine alpha's sums from them (AlphaPlanes: base * cg + slope * code sum), other alphas looked up. (Per
// code with the lookups, they were a tenth of ResNet-20's 16->16 layer with the exact table.)
TFAPPROX_AVX2 void SumsAvx2(const uint8_t* codes, int64_t n, int64_t cg, const int32_t* alpha, const AlphaPlanes& planes,
                            int64_t* code_sum, int64_t* alpha_sum) {
  const bool affine = planes.count == 0;
  for (int64_t i = 0; i < n; ++i, codes += cg) {
    __m128i sixteens = _mm_setzero_si128();
    int64_t k = 0;
    for (; k + 16 <= cg; k += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k));
      sixteens = _mm_add_epi64(sixteens, _mm_sad_epu8(bytes, _mm_setzero_si128()));
    }
    int64_t sum = _mm_cvtsi128_si64(sixteens) + _mm_extract_epi64(sixteens, 1);
    for (; k < cg; ++k) sum += codes[k];
    code_sum[i] = sum;
    if (affine) {
      alpha_sum[i] = planes.base * cg + planes.slope * sum;
      continue;
    }
    int64_t alphas = 0;
    for (k = 0; k < cg; ++k) alphas += alpha[codes[k]];
    alpha_sum[i] = alphas;
  }
}

// AVX2's micro-tile (the direct path without VNNI): the sums of kPixelBlock pixels and the eight channels
// of B16 at b (a panel's chunk: b16 + c0 * reduction + chunk * 32), from the int16 image (DirectImage::
// entry_bytes 2); rows, offsets and steps as MicroKernelVnni's. A step's four entries of a pixel are one
// broadcast qword; a vector of B holds four channels' four entries; vpmaddwd leaves channel c's sum of
// entries 0-1 in lane 2c and of 2-3 in lane 2c + 1 (added at the end by vphaddd). 12 sums, two vectors of
// B and a broadcast of AVX2's 16 registers. One chunk a call, so that the caller can order chunks and
// blocks for the cache (DirectConvAccumulate). carry: where the caller splits the reduction (by spatial
// tap), the 12 sums before reduction (96 int32), taken from it first where `resume` and stored to it
// instead of reduced where `suspend` (acc then unset).
TFAPPROX_AVX2 __attribute__((always_inline)) inline void MicroChunkAvx2(const uint8_t* const* rows, const int64_t* offsets,
                                                                       int64_t segments, int64_t segment_steps,
                                                                       const int16_t* b, int64_t width,
                                                                       __m256i (&acc)[kPixelBlock], int32_t* carry,
                                                                       bool resume, bool suspend) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero, s20 = zero, s21 = zero, s30 = zero, s31 = zero,
          s40 = zero, s41 = zero, s50 = zero, s51 = zero;
  __m256i* const saved = reinterpret_cast<__m256i*>(carry);
  if (resume) {
    s00 = _mm256_load_si256(saved + 0), s01 = _mm256_load_si256(saved + 1), s10 = _mm256_load_si256(saved + 2);
    s11 = _mm256_load_si256(saved + 3), s20 = _mm256_load_si256(saved + 4), s21 = _mm256_load_si256(saved + 5);
    s30 = _mm256_load_si256(saved + 6), s31 = _mm256_load_si256(saved + 7), s40 = _mm256_load_si256(saved + 8);
    s41 = _mm256_load_si256(saved + 9), s50 = _mm256_load_si256(saved + 10), s51 = _mm256_load_si256(saved + 11);
  }
  const int16_t* bp = b;
  for (int64_t j = 0; j < segments; ++j) {
    const uint8_t *a0 = rows[0] + offsets[j], *a1 = rows[1] + offsets[j], *a2 = rows[2] + offsets[j];
    const uint8_t *a3 = rows[3] + offsets[j], *a4 = rows[4] + offsets[j], *a5 = rows[5] + offsets[j];
    for (int64_t step = 0; step < segment_steps; ++step, bp += width * 4) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 16));
#define TFAPPROX_DECOMPOSED_ROW_AVX2(i)                             \
  {                                                                 \
    long long four;                                                 \
    std::memcpy(&four, a##i + 8 * step, 8);                         \
    const __m256i av = _mm256_set1_epi64x(four);                    \
    s##i##0 = _mm256_add_epi32(s##i##0, _mm256_madd_epi16(av, b0)); \
    s##i##1 = _mm256_add_epi32(s##i##1, _mm256_madd_epi16(av, b1)); \
  }
      TFAPPROX_DECOMPOSED_ROW_AVX2(0)
      TFAPPROX_DECOMPOSED_ROW_AVX2(1)
      TFAPPROX_DECOMPOSED_ROW_AVX2(2)
      TFAPPROX_DECOMPOSED_ROW_AVX2(3)
      TFAPPROX_DECOMPOSED_ROW_AVX2(4)
      TFAPPROX_DECOMPOSED_ROW_AVX2(5)
#undef TFAPPROX_DECOMPOSED_ROW_AVX2
    }
  }
  if (suspend) {
    _mm256_store_si256(saved + 0, s00), _mm256_store_si256(saved + 1, s01), _mm256_store_si256(saved + 2, s10);
    _mm256_store_si256(saved + 3, s11), _mm256_store_si256(saved + 4, s20), _mm256_store_si256(saved + 5, s21);
    _mm256_store_si256(saved + 6, s30), _mm256_store_si256(saved + 7, s31), _mm256_store_si256(saved + 8, s40);
    _mm256_store_si256(saved + 9, s41), _mm256_store_si256(saved + 10, s50), _mm256_store_si256(saved + 11, s51);
    return;
  }
  // Per pixel its eight channels' sums in order: vphaddd gives channels 0 1 4 5 | 2 3 6 7.
  acc[0] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s00, s01), 0xD8);
  acc[1] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s10, s11), 0xD8);
  acc[2] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s20, s21), 0xD8);
  acc[3] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s30, s31), 0xD8);
  acc[4] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s40, s41), 0xD8);
  acc[5] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s50, s51), 0xD8);
}

// StoreOutputsVnni's float operations for the eight channels from `channel` (relative to the panel's c0)
// of a block's pixels, eight lanes at a time (the channels past o.width masked off).
TFAPPROX_AVX2 inline void StoreOutputsAvx2(const __m256i (&acc)[kPixelBlock], int channel, const BlockOutputs& o) {
  const DequantizeRows& r = *o.rows;
  const int64_t c = o.c0 + channel, left = o.width - channel;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(left, 8))), lane);
  const __m256 acc_scale = _mm256_maskload_ps(&r.acc_scale[c], m);
  const __m256 act_sum_scale = _mm256_maskload_ps(&r.act_sum_scale[c], m);
  const __m256 filter_term = _mm256_maskload_ps(&r.filter_term[c], m);
  const __m256 constant = _mm256_maskload_ps(&r.constant[c], m);
  const __m256i channel_add = _mm256_maskload_epi32(o.channel_add + c, m);
  const __m256i channel_act = _mm256_maskload_epi32(o.channel_act + c, m);
  for (int i = 0; i < kPixelBlock; ++i) {
    if (i >= o.pixels) break;
    const __m256i net_acc = _mm256_add_epi32(_mm256_add_epi32(acc[i], _mm256_set1_epi32(o.pixel_add[i])), channel_add);
    const __m256i act = _mm256_sub_epi32(_mm256_set1_epi32(o.act[i]), channel_act);
    __m256 v = _mm256_add_ps(_mm256_mul_ps(acc_scale, _mm256_cvtepi32_ps(net_acc)),
                             _mm256_mul_ps(act_sum_scale, _mm256_cvtepi32_ps(act)));
    v = _mm256_add_ps(v, filter_term);
    v = _mm256_add_ps(v, constant);
    _mm256_maskstore_ps(o.out[i] + c, m, v);
  }
}

// MicroKernelVnni's int64 sums (all width channels of a panel, sums set) with AVX2, chunk by chunk.
TFAPPROX_AVX2 void MicroKernelAvx2(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                   int64_t segment_steps, const int16_t* b, int64_t width, Sums& sums) {
  for (int64_t chunk = 0; chunk < width / 8; ++chunk) {
    __m256i acc[kPixelBlock];
    MicroChunkAvx2(rows, offsets, segments, segment_steps, b + chunk * 32, width, acc, nullptr, false, false);
    for (int i = 0; i < kPixelBlock; ++i) {
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i]);
      for (int c = 0; c < 8; ++c) sums[i][chunk * 8 + c] = lanes[c];
    }
  }
}
// The float32 outputs of channels chunk * 8 .. + 7 of the panel (of B at b, the panel's), as
// MicroKernelOutputsVnni's; carry, resume and suspend as MicroChunkAvx2's (no outputs where suspending).
TFAPPROX_AVX2 void MicroKernelOutputsAvx2(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                          int64_t segment_steps, const int16_t* b, int64_t width, int chunk,
                                          const BlockOutputs& outputs, int32_t* carry, bool resume, bool suspend) {
  __m256i acc[kPixelBlock];
  MicroChunkAvx2(rows, offsets, segments, segment_steps, b + chunk * 32, width, acc, carry, resume, suspend);
  if (!suspend) StoreOutputsAvx2(acc, chunk * 8, outputs);
}

}  // namespace decomposed_internal
}  // namespace tfapprox
