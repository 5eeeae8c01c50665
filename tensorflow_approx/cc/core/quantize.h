// Fake quantization exactly as TensorFlow's FakeQuantWithMinMaxVars (narrow_range = false) computes it.
// Every kernel quantizes through these two functions, so the codes agree with
// tf.quantization.fake_quant_with_min_max_vars bit for bit.
#ifndef TENSORFLOW_APPROX_CC_CORE_QUANTIZE_H_
#define TENSORFLOW_APPROX_CC_CORE_QUANTIZE_H_

#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define TFAPPROX_HOST_DEVICE __host__ __device__
#else
#define TFAPPROX_HOST_DEVICE
#endif

namespace tfapprox {

constexpr int kMinNumBits = 2;
constexpr int kMaxNumBits = 8;

struct QuantParams {
  float scale = 0.f;       // (max - min) / (2^b - 1); 0 for a zero-width range
  float quant_zero = 0.f;  // floor(-nudged_min * (2^b - 1) / (max - min) + 0.5), TensorFlow's zero code
  float nudged_min = 0.f;  // dequantized value of code 0
  float nudged_max = 0.f;  // dequantized value of the top code
  int32_t zero_point = 0;  // code of real zero (padded taps hold this code)
  int32_t quant_max = 0;   // 2^b - 1
  // Symmetric scheme: the codes above are the signed codes plus code_shift = 2^(b-1) (0 otherwise), so
  // the signed code of c is c - code_shift and its byte ((c - code_shift) & 0xFF) indexes the table.
  int32_t code_shift = 0;
};

// Computes the nudged range of [min, max] for num_bits. Returns "" on success, otherwise what is
// wrong with the arguments (named `name_min` / `name_max` / num_bits) and leaves *q unspecified.
std::string MakeQuantParams(float min, float max, int num_bits, const char* name_min,
                            const char* name_max, QuantParams* q);

// The symmetric scheme for [min, max] and num_bits: signed codes -2^(b-1)..2^(b-1) - 1, scale
// max(|min|, |max|) / (2^(b-1) - 1), zero point 0. They are TensorFlow's (asymmetric) codes on the range
// [-2^(b-1) * scale, (2^(b-1) - 1) * scale], whose zero point is 2^(b-1), less 2^(b-1): so *q is
// MakeQuantParams of that range with code_shift = 2^(b-1). Errors as MakeQuantParams.
std::string MakeSymmetricQuantParams(float min, float max, int num_bits, const char* name_min,
                                     const char* name_max, QuantParams* q);

// The code of x. Values outside the nudged range are clamped; NaN maps to code 0 here, and the kernels
// make NaN the outputs it reaches (PropagateNan).
// The float32 steps are those of TensorFlow 2.21's FakeQuantWithMinMaxVarsFunctor (a true division by
// the scale, the zero code subtracted before rounding), so codes agree with
// tf.quantization.fake_quant_with_min_max_vars bit for bit. The build passes -ffp-contract=off so that
// no step is fused.
TFAPPROX_HOST_DEVICE inline uint8_t QuantizeToCode(float x, const QuantParams& q) {
  if (q.scale == 0.f) return 0;
  float clamped = x > q.nudged_min ? x : q.nudged_min;  // NaN fails the test and becomes nudged_min
  clamped = clamped < q.nudged_max ? clamped : q.nudged_max;
  const float shifted = clamped - q.nudged_min;
  float code = shifted / q.scale - q.quant_zero + 0.5f;
#if defined(__CUDA_ARCH__)
  code = floorf(code) + q.quant_zero;
#else
  code = __builtin_floorf(code) + q.quant_zero;
#endif
  code = code < 0.f ? 0.f : code;
  code = code > static_cast<float>(q.quant_max) ? static_cast<float>(q.quant_max) : code;
  return static_cast<uint8_t>(code);
}

// codes[i] = QuantizeToCode(values[i], q) for i < n, bit for bit, 16 at a time where the processor
// has AVX-512F (the same float32 operations in the same order, so the same codes; `portable` forces the
// scalar loop, for the tests). Returns whether any value was NaN.
bool QuantizeCodes(const float* values, int64_t n, const QuantParams& q, uint8_t* codes,
                   bool portable = false);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_QUANTIZE_H_
