// Fake quantization exactly as TensorFlow's FakeQuantWithMinMaxVars (narrow_range false or true) computes it.
// Every kernel quantizes through these two functions, so the codes agree with
// tf.quantization.fake_quant_with_min_max_vars bit for bit.
#ifndef TENSORFLOW_APPROX_CC_CORE_QUANTIZE_H_
#define TENSORFLOW_APPROX_CC_CORE_QUANTIZE_H_

#include <climits>
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
  float scale = 0.f;       // (max - min) / (quant_max - quant_min); 0 for a zero-width range
  // floor(-nudged_min * (quant_max - quant_min) / (max - min) + 0.5), TensorFlow's zero code counted from
  // quant_min
  float quant_zero = 0.f;
  float nudged_min = 0.f;  // dequantized value of code quant_min (0, or 1 with a narrow range)
  float nudged_max = 0.f;  // dequantized value of the top code
  int32_t zero_point = 0;  // code of real zero (padded taps hold this code)
  int32_t quant_max = 0;   // 2^b - 1
  int32_t quant_min = 0;   // the lowest code: 1 with a narrow range (nudged_min is its value), else 0
  // Symmetric scheme: the codes above are the signed codes plus code_shift = 2^(b-1) (0 otherwise), so
  // the signed code of c is c - code_shift and its byte ((c - code_shift) & 0xFF) indexes the table.
  int32_t code_shift = 0;
};

// Why a range is refused (kRangeOk: it is not). MakeQuantParams words these as errors; GPU kernels,
// which read the ranges on the device, make every output NaN instead.
enum RangeError : int { kRangeOk = 0, kRangeNotFinite, kRangeReversed, kRangeZeroWidth };

// Float32 helpers with the same roundings on the host and the device (nvcc compiles each branch for its
// own side).
#if defined(__CUDA_ARCH__)
TFAPPROX_HOST_DEVICE inline float FloorF(float x) { return floorf(x); }
TFAPPROX_HOST_DEVICE inline float RoundF(float x) { return roundf(x); }  // halfway cases away from zero
TFAPPROX_HOST_DEVICE inline bool IsFiniteF(float x) { return isfinite(x); }
#else
TFAPPROX_HOST_DEVICE inline float FloorF(float x) { return __builtin_floorf(x); }
TFAPPROX_HOST_DEVICE inline float RoundF(float x) { return __builtin_roundf(x); }  // as std::round
TFAPPROX_HOST_DEVICE inline bool IsFiniteF(float x) { return __builtin_isfinite(x); }
#endif

// The nudged range of [min, max] for num_bits (in [kMinNumBits, kMaxNumBits]), TensorFlow's Nudge() step
// for step, in float32. Symmetric: signed codes -2^(b-1)..2^(b-1) - 1, scale max(|min|, |max|) /
// (2^(b-1) - 1), zero point 0; those are TensorFlow's (asymmetric) codes on the range
// [-2^(b-1) * scale, (2^(b-1) - 1) * scale], whose zero point is 2^(b-1), less code_shift = 2^(b-1).
// narrow: TensorFlow's narrow_range, codes from 1 (quant_min) instead of 0; symmetric and narrow, the
// signed codes -(2^(b-1) - 1)..2^(b-1) - 1 on the range [-(2^(b-1) - 1) * scale, (2^(b-1) - 1) * scale].
// On an error *q is the zero-width range (every code 0).
TFAPPROX_HOST_DEVICE inline RangeError NudgeRange(float min, float max, int num_bits, bool symmetric,
                                                  QuantParams* q, bool narrow = false) {
  *q = QuantParams();
  if (!IsFiniteF(min) || !IsFiniteF(max)) return kRangeNotFinite;
  if (min > max) return kRangeReversed;
  if (symmetric) {
    // The float32 steps of tensorflow_approx/testing/reference.py's scheme_codes, in the same order.
    const float top = static_cast<float>((1 << (num_bits - 1)) - 1);
    const float abs_min = min < 0.f ? -min : min, abs_max = max < 0.f ? -max : max;
    const float step = (abs_min > abs_max ? abs_min : abs_max) / top;
    min = narrow ? -top * step : -(top + 1.f) * step;
    max = top * step;
  }
  // TensorFlow's fake quantization turns every value into NaN on [m, m] with m != 0 (its scale is 0 and
  // zero is not in it); silent zeros would be worse. [0, 0] stays valid: every code 0, output 0.
  if (min == max && min != 0.f) return kRangeZeroWidth;
  const int32_t quant_max = (1 << num_bits) - 1, quant_min = narrow ? 1 : 0;
  const float quant_min_float = static_cast<float>(quant_min);
  const float quant_max_float = static_cast<float>(quant_max);
  q->quant_max = quant_max;
  q->quant_min = quant_min;
  if (symmetric) q->code_shift = 1 << (num_bits - 1);
  const float scale = (max - min) / (quant_max_float - quant_min_float);
  if (scale == 0.f) return kRangeOk;  // zero-width range: every value has code 0, which dequantizes to 0
  // The same float32 steps, in the same order, as TensorFlow's Nudge().
  const float zero_point_from_min = quant_min_float - min / scale;
  int32_t zero_point;
  if (zero_point_from_min < quant_min_float) {
    zero_point = quant_min;
  } else if (zero_point_from_min > quant_max_float) {
    zero_point = quant_max;
  } else {
    zero_point = static_cast<int32_t>(RoundF(zero_point_from_min));
  }
  const float inv_scale = (quant_max_float - quant_min_float) / (max - min);
  q->scale = scale;
  q->zero_point = zero_point;
  // TensorFlow writes (quant_min_float - zero_point) * scale; gcc folds 0 - x into -x, which gives -0 for
  // zero point 0 where nvcc keeps +0. Written as gcc computes it (the same value, exactly, otherwise), so
  // that the host and the device agree bit for bit. (1 - zero_point is exact either way.)
  q->nudged_min = narrow ? (quant_min_float - static_cast<float>(zero_point)) * scale
                         : -(static_cast<float>(zero_point) * scale);
  q->nudged_max = (quant_max_float - static_cast<float>(zero_point)) * scale;
  q->quant_zero = FloorF(-q->nudged_min * inv_scale + 0.5f);
  return kRangeOk;
}

// NudgeRange with its refusals worded: "" on success, otherwise what is wrong with the arguments (named
// `name_min` / `name_max` / num_bits), *q then unspecified.
std::string MakeQuantParams(float min, float max, int num_bits, const char* name_min,
                            const char* name_max, QuantParams* q, bool symmetric = false, bool narrow = false);

#if defined(__CUDACC__)
// DivideByScale's two steps (below): the reciprocal of the scale after one Newton step, then x / scale
// from it (the quotient and one correction), for x and scale in [2^-40, 2^40].
__device__ __forceinline__ float ScaleReciprocal(float scale) {
  float y0;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y0) : "f"(scale));
  return __fmaf_rn(y0, __fmaf_rn(-scale, y0, 1.f), y0);
}
__device__ __forceinline__ float DivideInRange(float x, float scale, float reciprocal) {
  const float q = __fmaf_rn(reciprocal, x, 0.f);
  return __fmaf_rn(reciprocal, __fmaf_rn(-scale, q, x), q);
}

// x / scale, correctly rounded like the IEEE division the host does, for scale in [2^-40, 2^40] (else
// the division itself). nvcc's division (div.rn.f32) is a reciprocal approximation (MUFU.RCP), one Newton
// step, the quotient and one correction, all FMAs, with a check (FCHK) that sends operands it cannot vouch
// for (zero, denormal, huge or tiny ratios) to a slow subroutine: in the harness's data (inputs clamped
// low) a quarter of the warps' divisions went there, and every ReLU zero would. Here x = 0 returns x itself
// (+-0 / scale with scale > 0), and x in [2^-40, 2^40] takes the division's own FMA sequence without the
// check: there the quotient and the correction are far from underflow and overflow. Anything else divides.
// (nvcc hoists the reciprocal out of a loop over x, not its Newton step.) The GPU harness holds this to
// the division bit for bit on every float x in [2^-40, 2^40] with edge scales (DivisionChecks).
__device__ __forceinline__ float DivideByScale(float x, float scale) {
  const float y1 = ScaleReciprocal(scale);
  if (scale >= 0x1p-40f && scale <= 0x1p40f) {
    if (x >= 0x1p-40f && x <= 0x1p40f) return DivideInRange(x, scale, y1);
    if (x == 0.f) return x;
  }
  return x / scale;
}
#endif

// The code of x. Values outside the nudged range are clamped; NaN maps to code quant_min here (0, or 1
// with a narrow range; 0 for a zero-width range), and the kernels make NaN the outputs it reaches
// (PropagateNan).
// The float32 steps are those of TensorFlow 2.21's FakeQuantWithMinMaxVarsFunctor (a true division by
// the scale, the zero code subtracted before rounding), so codes agree with
// tf.quantization.fake_quant_with_min_max_vars bit for bit. The build passes -ffp-contract=off so that
// no step is fused.
// On the GPU the division is DivideByScale's: the same quotient in fewer instructions.
TFAPPROX_HOST_DEVICE inline uint8_t QuantizeToCode(float x, const QuantParams& q) {
  if (q.scale == 0.f) return 0;
  float clamped = x > q.nudged_min ? x : q.nudged_min;  // NaN fails the test and becomes nudged_min
  clamped = clamped < q.nudged_max ? clamped : q.nudged_max;
  const float shifted = clamped - q.nudged_min;
#if defined(__CUDA_ARCH__)
  float code = DivideByScale(shifted, q.scale) - q.quant_zero + 0.5f;
#else
  float code = shifted / q.scale - q.quant_zero + 0.5f;
#endif
  code = FloorF(code) + q.quant_zero;
  // The code counted from quant_min (TensorFlow's steps count from nudged_min), then made absolute.
  const float top = static_cast<float>(q.quant_max - q.quant_min);
  code = code < 0.f ? 0.f : code;
  code = code > top ? top : code;
  return static_cast<uint8_t>(static_cast<int32_t>(code) + q.quant_min);
}

#if defined(__CUDACC__)
// QuantizeToCode for many values of one QuantParams on the GPU: the same codes in about a dozen
// instructions a value where QuantizeToCode takes 30 (ncu on the decomposed kernel's input pass: quantizing
// was 60% of its instructions, the pass bound by their issue): two clamps and the subtraction, three FMAs
// of the division, two additions, one add rounding down and one integer add. What QuantizeToCode does per value
// is done here once: the scale's test for 0 and for DivideByScale's range, the reciprocal and its Newton
// step, and the test that no clamped value exceeds that range (fl(nudged_max - nudged_min) <= 2^40 bounds
// every clamped - nudged_min). Only where `applies` (a scale in [2^-18, 2^40], that bound and the top's code);
// elsewhere the caller quantizes with QuantizeToCode. The clamps are one min or max each: fmaxf(x,
// nudged_min) is QuantizeToCode's x > nudged_min ? x : nudged_min for every x (NaN: nudged_min) but where x
// and nudged_min are zeros of opposite signs, and a zero's sign cannot reach the code: the clamped value only
// enters clamped - nudged_min, which for equal values is a zero whose sign the division keeps and the
// subtraction of quant_zero and the addition of 0.5 erase; the final clamps see no NaN, and -0 and +0 convert
// alike.
struct FastQuantizer {
  QuantParams q;
  float y1 = 0.f;            // DivideByScale's reciprocal of the scale after its Newton step
  int32_t code_offset = 0;   // quant_zero + quant_min - kFloorBits (Code's last step)
  bool applies = false;

  // The bits of 1.5 * 2^23, the float that Code adds: floats in [2^23, 2^24) are the integers, so for
  // |y| < 2^22, y + 1.5 * 2^23 rounded down is 1.5 * 2^23 + floor(y) exactly, with bits kFloorBits + floor(y).
  static constexpr int32_t kFloorBits = 0x4B400000;

  __device__ explicit FastQuantizer(const QuantParams& params) : q(params) {
    // Scales from 2^-18 (not DivideByScale's 2^-40): Code then also divides shifted values below 2^-40
    // (values just above nudged_min) with DivideInRange, which is exact only from 2^-40. Its quotient there
    // is below 2^-21, and so is the true one; either gives the code quant_min (the subtraction of
    // quant_zero, an integer, and the addition of 0.5 lose it), so no test per value sends them to the
    // division. Ranges of 8 bits that narrow (widths below about 0.001) quantize with QuantizeToCode.
    if (!(q.scale >= 0x1p-18f && q.scale <= 0x1p40f) || !(q.nudged_max - q.nudged_min <= 0x1p40f)) return;
    // Unclamped's bound |quotient - quant_zero + 0.5| < 2^22: quotients up to 2^20 (shifted <= fl(nudged_max -
    // nudged_min) <= 2^20 scale, and rounding is monotone) and |quant_zero| <= 2^20. Every range of 8 bits
    // or fewer has quotients up to about 255.
    if (!(q.nudged_max - q.nudged_min <= 0x1p20f * q.scale) || !(fabsf(q.quant_zero) <= 0x1p20f)) return;
    y1 = ScaleReciprocal(q.scale);
    code_offset = static_cast<int32_t>(q.quant_zero) + q.quant_min - kFloorBits;
    // QuantizeToCode's final clamps, left out: every step from x to Unclamped's integer is monotone (the
    // clamps to the range, the subtraction, the correctly rounded division, the subtraction and addition,
    // the add rounding down), so the codes lie between those of the range's ends. The bottom's, shifted = 0,
    // is quant_min (quant_zero is an integer); the top's is tested here.
    if (Unclamped(DivideInRange(q.nudged_max - q.nudged_min, q.scale, y1)) > q.quant_max) return;
    applies = true;
  }

  // clamped - nudged_min, in [0, 2^40]: DivideInRange's dividend, its range tests on the scale and the top
  // made by `applies`.
  __device__ __forceinline__ float Shifted(float x) const {
    return fminf(fmaxf(x, q.nudged_min), q.nudged_max) - q.nudged_min;
  }
  // QuantizeToCode's steps after the division without its clamps: floor(quotient - quant_zero + 0.5) +
  // quant_zero + quant_min. The float subtraction and addition round as there; then one add rounding down
  // (kFloorBits) and an integer add, where floorf, the float clamps and the conversion took FRND and F2I
  // (quarter-rate) and four more instructions.
  __device__ __forceinline__ int32_t Unclamped(float quotient) const {
    const float y = quotient - q.quant_zero + 0.5f;
    return __float_as_int(__fadd_rd(y, 0x1.8p23f)) + code_offset;
  }

  // QuantizeToCode(x, q), where `applies`.
  __device__ __forceinline__ uint8_t Code(float x) const {
    return static_cast<uint8_t>(Unclamped(DivideInRange(Shifted(x), q.scale, y1)));
  }
  // The codes of four values packed little-endian (byte k: Code of value k), where `applies`.
  __device__ __forceinline__ uint32_t Code4(float4 v) const {
    const uint32_t c0 = Code(v.x), c1 = Code(v.y), c2 = Code(v.z), c3 = Code(v.w);
    return c0 | c1 << 8 | c2 << 16 | c3 << 24;
  }

  // QuantizeToCode(x, q) for any QuantParams: Code where `applies`, else QuantizeToCode out of line (one
  // copy of the rare path, for loops whose code size matters).
  __device__ __forceinline__ uint8_t Quantize(float x) const { return applies ? Code(x) : Fallback(x); }
  // The same for four values, packed as Code4 packs them.
  __device__ __forceinline__ uint32_t Quantize4(float4 v) const {
    if (applies) return Code4(v);
    return static_cast<uint32_t>(Fallback(v.x)) | static_cast<uint32_t>(Fallback(v.y)) << 8 |
           static_cast<uint32_t>(Fallback(v.z)) << 16 | static_cast<uint32_t>(Fallback(v.w)) << 24;
  }
  __device__ __noinline__ uint8_t Fallback(float x) const { return QuantizeToCode(x, q); }
};
#endif

// codes[i] = QuantizeToCode(values[i], q) for i < n, bit for bit, 16 at a time where the processor
// has AVX-512F (the same float32 operations in the same order, so the same codes; `portable` forces the
// scalar loop, for the tests). Returns whether any value was NaN.
bool QuantizeCodes(const float* values, int64_t n, const QuantParams& q, uint8_t* codes,
                   bool portable = false);
// The same for `runs` runs of `length` values, run j at values + j * stride, its codes at codes + j * length
// (the pixels a strided filter reads, say).
bool QuantizeRuns(const float* values, int64_t runs, int64_t length, int64_t stride, const QuantParams& q,
                  uint8_t* codes, bool portable = false);

// The ranges of the Keras layers' "batch" mode: min and max of a tensor widened to hold 0, both NaN where
// the tensor holds a NaN, +0 for a side without values beyond 0; per channel (the last axis) or for the
// whole tensor, the same bits on every device. Each value is scanned as two integer keys whose maxima give
// the range: its bits as an int32 (positive floats order as their bits, everything else falls below 0:
// the max(v, 0) side), and the same with the sign bit flipped (the -min(v, 0) side). A NaN's keys exceed
// every float's on the side of its sign bit. Integer maxima are exact and order-free: any split of the
// work, any device, gives the same keys.
template <typename To, typename From>
TFAPPROX_HOST_DEVICE inline To BitCast(From v) {  // v's bits as a To of the same size (host and device)
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To out;
  __builtin_memcpy(&out, &v, sizeof(out));
  return out;
}
TFAPPROX_HOST_DEVICE inline int32_t RangeKey(float v) { return BitCast<int32_t>(v); }
TFAPPROX_HOST_DEVICE inline float RangeKeyValue(int32_t key) { return BitCast<float>(key); }  // `key`'s float
constexpr int32_t kRangeKeySign = INT32_MIN;  // key ^ kRangeKeySign: the key of -v
constexpr int32_t kRangeKeyInf = 0x7f800000;  // keys above it are NaN's
constexpr int32_t kRangeKeyNan = 0x7fc00000;  // the quiet NaN both sides of a range with a NaN become

// The range from the largest keys of each side (both start at 0, the key of +0).
TFAPPROX_HOST_DEVICE inline void RangeFromKeys(int32_t pos, int32_t neg, float* min, float* max) {
  if (pos > kRangeKeyInf || neg > kRangeKeyInf) {
    *min = *max = RangeKeyValue(kRangeKeyNan);
    return;
  }
  *max = RangeKeyValue(pos);
  *min = neg == 0 ? 0.f : -RangeKeyValue(neg);
}

// pos[c] and neg[c] raised to the largest keys of x's values of channel c (x holds `rows` rows of
// `channels` values, row-major).
void RangeKeys(const float* x, int64_t rows, int64_t channels, int32_t* pos, int32_t* neg);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_QUANTIZE_H_
