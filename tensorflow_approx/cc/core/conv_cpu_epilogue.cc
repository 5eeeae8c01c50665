// The CPU kernels' epilogue: the integer sums of a pixel's output channels to float32 outputs
// (DequantizeTerms' arithmetic, conv_kernels.h), 16 channels a vector where the processor has AVX-512 DQ,
// with the same float operations in the same order as the scalar form, so the same bits.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"

namespace tfapprox {

DequantizeRows::DequantizeRows(const std::vector<DequantizeTerms<float>>& terms, const int64_t* filter_sum) {
  for (size_t co = 0; co < terms.size(); ++co) {
    const DequantizeTerms<float>& t = terms[co];
    acc_scale.push_back(t.acc_scale);
    act_sum_scale.push_back(t.act_sum_scale);
    filter_term.push_back(t.FilterTerm(filter_sum[co]));
    constant.push_back(t.constant);
    acc_offset.push_back(t.acc_offset);
    act_sum_offset.push_back(t.act_sum_offset);
  }
}

namespace {

// The scalar form of DequantizeTerms::operator(), the filter's term taken from DequantizeRows.
inline float DequantizeOne(const DequantizeRows& r, int64_t co, int64_t acc, int64_t act_sum) {
  return r.acc_scale[co] * static_cast<float>(acc - r.acc_offset[co]) +
         r.act_sum_scale[co] * static_cast<float>(act_sum - r.act_sum_offset[co]) + r.filter_term[co] + r.constant[co];
}

// Channels co .. co + n - 1 of `pixels` pixels, pixel p's sums at acc + p * acc_stride, its outputs at
// out + p * out_stride and its code sum at act_sum[p * act_sum_stride]: the products and the three
// additions in DequantizeTerms' order, 16 channels a vector (vcvtqq2ps rounds as the scalar
// conversion does; a last partial vector masked, its lanes the same operations). Each vector of
// channels takes its terms into registers once for all the pixels (reloaded for each pixel, they
// cost as much as the arithmetic): callers pass a few pixels at a time, whose sums stay in cache.
TFAPPROX_AVX512DQ void DequantizeTileAvx512(const DequantizeRows& r, int64_t co, int64_t n, int64_t pixels,
                                            int64_t acc_stride, const int64_t* acc, const int64_t* act_sum,
                                            int64_t act_sum_stride, float* out, int64_t out_stride) {
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t c = co + j;
    const __mmask16 m = n - j >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __mmask8 m0 = static_cast<__mmask8>(m), m1 = static_cast<__mmask8>(m >> 8);
    const __m512 acc_scale = _mm512_maskz_loadu_ps(m, &r.acc_scale[c]);
    const __m512 act_sum_scale = _mm512_maskz_loadu_ps(m, &r.act_sum_scale[c]);
    const __m512 filter_term = _mm512_maskz_loadu_ps(m, &r.filter_term[c]);
    const __m512 constant = _mm512_maskz_loadu_ps(m, &r.constant[c]);
    const __m512i acc_offset[2] = {_mm512_maskz_loadu_epi64(m0, &r.acc_offset[c]),
                                   _mm512_maskz_loadu_epi64(m1, &r.acc_offset[c] + 8)};
    const __m512i act_sum_offset[2] = {_mm512_maskz_loadu_epi64(m0, &r.act_sum_offset[c]),
                                       _mm512_maskz_loadu_epi64(m1, &r.act_sum_offset[c] + 8)};
    for (int64_t p = 0; p < pixels; ++p) {
      const int64_t* a = acc + p * acc_stride + j;
      const __m512i act = _mm512_set1_epi64(act_sum[p * act_sum_stride]);
      const __m256 acc_lo = _mm512_cvtepi64_ps(_mm512_sub_epi64(_mm512_maskz_loadu_epi64(m0, a), acc_offset[0]));
      const __m256 acc_hi = _mm512_cvtepi64_ps(_mm512_sub_epi64(_mm512_maskz_loadu_epi64(m1, a + 8), acc_offset[1]));
      const __m256 act_lo = _mm512_cvtepi64_ps(_mm512_sub_epi64(act, act_sum_offset[0]));
      const __m256 act_hi = _mm512_cvtepi64_ps(_mm512_sub_epi64(act, act_sum_offset[1]));
      const __m512 acc_value = _mm512_insertf32x8(_mm512_castps256_ps512(acc_lo), acc_hi, 1);
      const __m512 act_value = _mm512_insertf32x8(_mm512_castps256_ps512(act_lo), act_hi, 1);
      __m512 v = _mm512_add_ps(_mm512_mul_ps(acc_scale, acc_value), _mm512_mul_ps(act_sum_scale, act_value));
      v = _mm512_add_ps(v, filter_term);
      v = _mm512_add_ps(v, constant);
      _mm512_mask_storeu_ps(out + p * out_stride + j, m, v);
    }
  }
}

constexpr int64_t kDequantizeTilePixels = 16;

}  // namespace

void DequantizeRow(const DequantizeRows& rows, int64_t co, int64_t n, const int64_t* acc, int64_t act_sum, float* out,
                   bool portable) {
  if (!portable && HasAvx512Dq()) return DequantizeTileAvx512(rows, co, n, 1, n, acc, &act_sum, 1, out, n);
  for (int64_t j = 0; j < n; ++j) out[j] = DequantizeOne(rows, co + j, acc[j], act_sum);
}

void DequantizeBlock(const DequantizeRows& rows, int64_t co, int64_t n, int64_t pixels, const int64_t* acc,
                     int64_t acc_stride, const int64_t* act_sum, float* out, int64_t out_stride, bool portable) {
  if (!portable && HasAvx512Dq()) {
    return DequantizeTileAvx512(rows, co, n, pixels, acc_stride, acc, act_sum, 1, out, out_stride);
  }
  for (int64_t p = 0; p < pixels; ++p) DequantizeRow(rows, co, n, acc + p * acc_stride, act_sum[p], out + p * out_stride, true);
}

void DequantizePixels(const DequantizeRows& rows, int64_t pixels, const int64_t* acc, const int64_t* act_sum,
                      float* out, bool portable) {
  const int64_t n = static_cast<int64_t>(rows.acc_scale.size());
  for (int64_t p = 0; p < pixels; p += kDequantizeTilePixels) {
    DequantizeBlock(rows, 0, n, std::min(kDequantizeTilePixels, pixels - p), acc + p * n, n, act_sum + p, out + p * n, n,
                    portable);
  }
}

}  // namespace tfapprox
