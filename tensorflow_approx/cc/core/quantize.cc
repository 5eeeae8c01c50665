#include "tensorflow_approx/cc/core/quantize.h"

#include <cmath>
#include <sstream>

namespace tfapprox {

std::string MakeQuantParams(float min, float max, int num_bits, const char* name_min,
                            const char* name_max, QuantParams* q) {
  if (num_bits < kMinNumBits || num_bits > kMaxNumBits) {
    std::ostringstream msg;
    msg << "num_bits must be in [" << kMinNumBits << ", " << kMaxNumBits << "], got " << num_bits;
    return msg.str();
  }
  if (!std::isfinite(min) || !std::isfinite(max)) {
    std::ostringstream msg;
    msg << name_min << " and " << name_max << " must be finite, got [" << min << ", " << max << "]";
    return msg.str();
  }
  if (min > max) {
    std::ostringstream msg;
    msg << name_min << " must not exceed " << name_max << ", got " << min << " > " << max;
    return msg.str();
  }
  if (min == max && min != 0.f) {
    // TensorFlow's fake quantization turns every value into NaN on such a range (its scale is 0 and
    // zero is not in it); silent zeros would be worse. [0, 0] stays valid: every code 0, output 0.
    std::ostringstream msg;
    msg << name_min << " == " << name_max << " == " << min
        << ": a zero-width range must be [0, 0]; widen it to contain 0 (e.g. [min(" << name_min
        << ", 0), max(" << name_max << ", 0)])";
    return msg.str();
  }
  const int32_t quant_max = (1 << num_bits) - 1;
  const float quant_min_float = 0.f;
  const float quant_max_float = static_cast<float>(quant_max);
  *q = QuantParams();
  q->quant_max = quant_max;
  const float scale = (max - min) / (quant_max_float - quant_min_float);
  if (scale == 0.f) return "";  // zero-width range: every value has code 0, which dequantizes to 0
  // The same float32 steps, in the same order, as TensorFlow's Nudge().
  const float zero_point_from_min = quant_min_float - min / scale;
  int32_t zero_point;
  if (zero_point_from_min < quant_min_float) {
    zero_point = 0;
  } else if (zero_point_from_min > quant_max_float) {
    zero_point = quant_max;
  } else {
    zero_point = static_cast<int32_t>(std::round(zero_point_from_min));
  }
  const float inv_scale = (quant_max_float - quant_min_float) / (max - min);
  q->scale = scale;
  q->zero_point = zero_point;
  q->nudged_min = (quant_min_float - static_cast<float>(zero_point)) * scale;
  q->nudged_max = (quant_max_float - static_cast<float>(zero_point)) * scale;
  q->quant_zero = std::floor(-q->nudged_min * inv_scale + 0.5f);
  return "";
}

}  // namespace tfapprox
