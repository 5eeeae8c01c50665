#include "tensorflow_approx/cc/core/conv_kernels.h"

namespace tfapprox {

ParallelFor SerialFor() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
}

void ReferenceConvAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixel_end,
                             int64_t* acc, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t groups = s.groups();
  const int64_t out_per_group = s.out_depth_per_group();
  for (int64_t p = pixel_begin; p < pixel_end; ++p) {
    const int64_t q = p - pixel_begin;
    const int64_t ow = p % s.out_w;
    const int64_t oh = (p / s.out_w) % s.out_h;
    const int64_t n = p / (s.out_w * s.out_h);
    for (int64_t g = 0; g < groups; ++g) {
      int64_t a_sum = 0;
      for (int64_t j = 0; j < out_per_group; ++j) {
        const int64_t co = g * out_per_group + j;
        int64_t sum = 0;
        for (int64_t kh = 0; kh < s.filter_h; ++kh) {
          for (int64_t kw = 0; kw < s.filter_w; ++kw) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
            const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dilation_w;
            const bool inside = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
            for (int64_t ci = 0; ci < s.filter_depth; ++ci) {
              const int64_t c = g * s.filter_depth + ci;
              const uint32_t a = inside
                                     ? conv.input[((n * s.in_h + ih) * s.in_w + iw) * s.in_depth + c]
                                     : conv.input_zero_code;
              const uint32_t w =
                  conv.filter[((co * s.filter_h + kh) * s.filter_w + kw) * s.filter_depth + ci];
              sum += conv.lut[(a << 8) | w];
              if (j == 0) a_sum += a;
            }
          }
        }
        acc[q * s.out_depth + co] = sum;
      }
      act_sum[q * groups + g] = a_sum;
    }
  }
}

void FilterCodeSums(const QuantizedConv& conv, int64_t* filter_sum) {
  const int64_t taps = conv.shape.taps();
  for (int64_t co = 0; co < conv.shape.out_depth; ++co) {
    int64_t sum = 0;
    for (int64_t t = 0; t < taps; ++t) sum += conv.filter[co * taps + t];
    filter_sum[co] = sum;
  }
}

}  // namespace tfapprox
