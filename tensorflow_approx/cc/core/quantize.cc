#include "tensorflow_approx/cc/core/quantize.h"

#include "tensorflow_approx/cc/core/cpu_features.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace tfapprox {

std::string MakeQuantParams(float min, float max, int num_bits, const char* name_min,
                            const char* name_max, QuantParams* q, bool symmetric, bool narrow) {
  std::ostringstream msg;
  if (num_bits < kMinNumBits || num_bits > kMaxNumBits) {
    msg << "num_bits must be in [" << kMinNumBits << ", " << kMaxNumBits << "], got " << num_bits;
    return msg.str();
  }
  switch (NudgeRange(min, max, num_bits, symmetric, q, narrow)) {
    case kRangeOk:
      return "";
    case kRangeNotFinite:
      msg << name_min << " and " << name_max << " must be finite, got [" << min << ", " << max << "]";
      break;
    case kRangeReversed:
      msg << name_min << " must not exceed " << name_max << ", got " << min << " > " << max;
      break;
    case kRangeZeroWidth:
      msg << name_min << " == " << name_max << " == " << min
          << ": a zero-width range must be [0, 0]; widen it to contain 0 (e.g. [min(" << name_min
          << ", 0), max(" << name_max << ", 0)])";
      break;
  }
  return msg.str();
}

namespace {

bool QuantizeRunsScalar(const float* values, int64_t runs, int64_t length, int64_t stride, const QuantParams& q,
                        uint8_t* codes) {
  bool nan = false;
  for (int64_t j = 0; j < runs; ++j, values += stride, codes += length) {
    for (int64_t i = 0; i < length; ++i) {
      nan |= values[i] != values[i];
      codes[i] = QuantizeToCode(values[i], q);
    }
  }
  return nan;
}

// QuantizeToCode's steps on 16 lanes. max_ps(x, lo) is x > lo ? x : lo (NaN gives lo, as the scalar
// test does) and min_ps(c, hi) is c < hi ? c : hi: the same selections, the same roundings. A run's last
// partial vector is masked (its other lanes load 0 and store nothing), so a short run costs a vector,
// not a scalar loop.
__attribute__((target("avx512f"))) bool QuantizeRunsAvx512(const float* values, int64_t runs, int64_t length,
                                                           int64_t stride, const QuantParams& q, uint8_t* codes) {
  const __m512 lo = _mm512_set1_ps(q.nudged_min), hi = _mm512_set1_ps(q.nudged_max);
  const __m512 scale = _mm512_set1_ps(q.scale), zero = _mm512_set1_ps(q.quant_zero);
  const __m512 half = _mm512_set1_ps(0.5f), top = _mm512_set1_ps(static_cast<float>(q.quant_max - q.quant_min));
  const __m512i quant_min = _mm512_set1_epi32(q.quant_min);
  __mmask16 nan = 0;
  for (int64_t j = 0; j < runs; ++j, values += stride, codes += length) {
    for (int64_t i = 0; i < length; i += 16) {
      const __mmask16 valid = length - i >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (length - i)) - 1);
      const __m512 x = _mm512_maskz_loadu_ps(valid, values + i);
      nan |= _mm512_mask_cmp_ps_mask(valid, x, x, _CMP_UNORD_Q);
      const __m512 clamped = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
      __m512 code = _mm512_add_ps(_mm512_sub_ps(_mm512_div_ps(_mm512_sub_ps(clamped, lo), scale), zero), half);
      code = _mm512_add_ps(_mm512_roundscale_ps(code, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), zero);
      code = _mm512_min_ps(_mm512_max_ps(code, _mm512_setzero_ps()), top);
      const __m512i absolute = _mm512_add_epi32(_mm512_cvttps_epi32(code), quant_min);
      _mm512_mask_cvtepi32_storeu_epi8(codes + i, valid, absolute);
    }
  }
  return nan != 0;
}

// The same steps on 8 lanes with AVX2 (without AVX-512: a Zen 3, say, where the scalar loop was a sixth of
// a decomposed ResNet-20 layer's time). A run's last values past a whole vector take the scalar steps.
__attribute__((target("avx2"))) bool QuantizeRunsAvx2(const float* values, int64_t runs, int64_t length,
                                                      int64_t stride, const QuantParams& q, uint8_t* codes) {
  const __m256 lo = _mm256_set1_ps(q.nudged_min), hi = _mm256_set1_ps(q.nudged_max);
  const __m256 scale = _mm256_set1_ps(q.scale), zero = _mm256_set1_ps(q.quant_zero);
  const __m256 half = _mm256_set1_ps(0.5f), top = _mm256_set1_ps(static_cast<float>(q.quant_max - q.quant_min));
  const __m256i quant_min = _mm256_set1_epi32(q.quant_min);
  int nan = 0;
  for (int64_t j = 0; j < runs; ++j, values += stride, codes += length) {
    int64_t i = 0;
    for (; i + 8 <= length; i += 8) {
      const __m256 x = _mm256_loadu_ps(values + i);
      nan |= _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
      const __m256 clamped = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
      __m256 code = _mm256_add_ps(_mm256_sub_ps(_mm256_div_ps(_mm256_sub_ps(clamped, lo), scale), zero), half);
      code = _mm256_add_ps(_mm256_round_ps(code, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), zero);
      code = _mm256_min_ps(_mm256_max_ps(code, _mm256_setzero_ps()), top);
      const __m256i absolute = _mm256_add_epi32(_mm256_cvttps_epi32(code), quant_min);
      const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(absolute), _mm256_extracti128_si256(absolute, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(words, words));
    }
    for (; i < length; ++i) {
      nan |= values[i] != values[i];
      codes[i] = QuantizeToCode(values[i], q);
    }
  }
  return nan != 0;
}

}  // namespace

bool QuantizeRuns(const float* values, int64_t runs, int64_t length, int64_t stride, const QuantParams& q,
                  uint8_t* codes, bool portable) {
  const bool avx512 = HasAvx512F(), avx2 = HasAvx2();
  // A zero-width range has no division to vectorize: every code is 0.
  if (portable || !(avx512 || avx2) || q.scale == 0.f) return QuantizeRunsScalar(values, runs, length, stride, q, codes);
  if (avx512) return QuantizeRunsAvx512(values, runs, length, stride, q, codes);
  return QuantizeRunsAvx2(values, runs, length, stride, q, codes);
}

bool QuantizeCodes(const float* values, int64_t n, const QuantParams& q, uint8_t* codes, bool portable) {
  return QuantizeRuns(values, 1, n, n, q, codes, portable);
}

void RangeKeys(const float* x, int64_t rows, int64_t channels, int32_t* pos, int32_t* neg) {
  if (channels == 1) {
    // Lane-wise maxima over blocks of 16 (the compiler vectorizes the inner loop), then across the lanes.
    int32_t p[16] = {}, n[16] = {};
    int64_t i = 0;
    for (; i + 16 <= rows; i += 16) {
      for (int l = 0; l < 16; ++l) {
        const int32_t k = RangeKey(x[i + l]);
        p[l] = std::max(p[l], k);
        n[l] = std::max(n[l], k ^ kRangeKeySign);
      }
    }
    for (; i < rows; ++i) {
      const int32_t k = RangeKey(x[i]);
      p[0] = std::max(p[0], k);
      n[0] = std::max(n[0], k ^ kRangeKeySign);
    }
    for (int l = 0; l < 16; ++l) {
      pos[0] = std::max(pos[0], p[l]);
      neg[0] = std::max(neg[0], n[l]);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const int32_t k = RangeKey(row[c]);
      pos[c] = std::max(pos[c], k);
      neg[c] = std::max(neg[c], k ^ kRangeKeySign);
    }
  }
}

}  // namespace tfapprox
