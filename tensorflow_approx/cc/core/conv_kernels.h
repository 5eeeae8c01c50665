// The integer heart of the op: sums of table lookups over each output's taps. Every kernel (reference,
// CPU, GPU) computes exactly these integers; the float output follows from them by Dequantize().
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_KERNELS_H_
#define TENSORFLOW_APPROX_CC_CORE_CONV_KERNELS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tfapprox {

// One convolution on codes. Layouts are fixed whatever the op's data_format:
//   input  [batch][in_h][in_w][in_depth]                    (NHWC codes)
//   filter [out_depth][filter_h][filter_w][filter_depth]    (one contiguous row of K taps per output channel)
// A kernel computes the output pixels p = (n * out_h + oh) * out_w + ow in [pixel_begin, pixel_end)
// (so callers can bound their buffers), indexed from pixel_begin (q = p - pixel_begin):
//   acc[q * out_depth + co]   = sum over taps of lut[(a << 8) | w]
//   act_sum[q * groups + g]   = sum over taps of a            (the input codes seen by group g)
// Padded taps read the code input_zero_code.
struct QuantizedConv {
  ConvShape shape;
  const uint8_t* input = nullptr;
  const uint8_t* filter = nullptr;
  uint8_t input_zero_code = 0;
  const uint16_t* lut = nullptr;
};

// Walks the taps of the patch of the output pixel in image n at (oh, ow), in group g, in the filter's
// [kh][kw][ci] order: emit(codes) with the filter_depth input codes of each tap inside the input,
// emit(nullptr) for a padded tap.
template <typename Emit>
inline void WalkPatch(const QuantizedConv& conv, int64_t n, int64_t oh, int64_t ow, int64_t g, Emit&& emit) {
  // The shape's fields in locals and the image's and row's offsets out of the inner loop: read through
  // `conv` at every tap (emit's stores may alias it, as far as the compiler knows) and recomputed from n,
  // this walk was 29% of a 16-channel decomposed call (perf, 3x3 16->16).
  const ConvShape& s = conv.shape;
  const int64_t filter_h = s.filter_h, filter_w = s.filter_w, in_h = s.in_h, in_w = s.in_w, depth = s.in_depth;
  const int64_t dil_h = s.dilation_h, dil_w = s.dilation_w;
  const int64_t ih0 = oh * s.stride_h - s.pad_top, iw0 = ow * s.stride_w - s.pad_left;
  const uint8_t* image = conv.input + n * in_h * in_w * depth + g * s.filter_depth;
  for (int64_t kh = 0; kh < filter_h; ++kh) {
    const int64_t ih = ih0 + kh * dil_h;
    const bool row_inside = ih >= 0 && ih < in_h;
    const int64_t row = ih * in_w;
    for (int64_t kw = 0; kw < filter_w; ++kw) {
      const int64_t iw = iw0 + kw * dil_w;
      emit(row_inside && iw >= 0 && iw < in_w ? image + (row + iw) * depth : nullptr);
    }
  }
}

// The same for output pixel p = (n * out_h + oh) * out_w + ow.
template <typename Emit>
inline void WalkPatch(const QuantizedConv& conv, int64_t p, int64_t g, Emit&& emit) {
  const ConvShape& s = conv.shape;
  WalkPatch(conv, p / (s.out_w * s.out_h), (p / s.out_w) % s.out_h, p % s.out_w, g, emit);
}

// Runs fn(begin, end) over disjoint ranges covering [0, total), possibly in parallel; cost_per_unit is a
// rough count of cycles per unit, for sharding. The TensorFlow glue passes its intra-op thread pool.
using ParallelFor = std::function<void(int64_t total, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& fn)>;
ParallelFor SerialFor();

// out[c * out_stride + r] = in[r * in_stride + c] for r < rows and c_begin <= c < c_end: a byte matrix
// transposed in tiles of 64 x 64, so that reads and writes both stay in a few cache lines (element by
// element, one side writes or reads a new line at every step: milliseconds for a filter of megabytes).
// Callers split the columns among threads, in multiples of kTransposeTile.
constexpr int64_t kTransposeTile = 64;
void TransposeBytes(const uint8_t* in, int64_t rows, int64_t in_stride, int64_t c_begin, int64_t c_end,
                    uint8_t* out, int64_t out_stride);

// Obviously right: one loop per index of the definition. The yardstick for every fast kernel.
void ReferenceConvAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixel_end,
                             int64_t* acc, int64_t* act_sum);

// Which instructions the fast CPU kernel may use: kBest the best the processor has (checked at run time:
// AVX-512BW table permutes, with VBMI the column path's byte-plane kernel and the row path's VBMI
// kernel), kAvx512Bw no VBMI (the column path's word kernel and the row path's permute kernel, for
// processors without it), kPortable plain C++ (the tests run all three).
enum class CpuIsa { kBest, kAvx512Bw, kPortable };

// The fast CPU kernel: lookups over a gathered patch, parallel over output pixels.
void CpuConvAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixel_end,
                       const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                       CpuIsa isa = CpuIsa::kBest);

// What CpuConvAccumulate runs for this shape: "avx512vbmi-columns", "avx512-columns", "avx512vbmi-rows",
// "avx512-rows" or "portable".
const char* CpuKernelName(const ConvShape& shape, CpuIsa isa = CpuIsa::kBest);

// A table as an exact sum of int8 products (the form of tensorflow_approx/multipliers/decompose.py), in
// the kernels' codes: lut[(a << 8) | w] = c0 + alpha[a] + beta[w] + sum over r < terms of
// u[r * 256 + a] * v[r * 256 + w], for every pair (a table of signed products as the kernels hold it:
// 32768 added, in c0).
struct TableDecomposition {
  int terms = 0;
  const int8_t* u = nullptr;       // [terms][256]
  const int8_t* v = nullptr;       // [terms][256]
  const int32_t* alpha = nullptr;  // [256]
  const int32_t* beta = nullptr;   // [256]
  int64_t c0 = 0;
};

// acc and act_sum exactly as ReferenceConvAccumulate gives them for a conv.lut that `d` decomposes,
// from an int8 GEMM over taps x terms (AVX-512 VNNI where the processor has it, else AVX2 with int16 products
// for one group; `portable` forces plain C++, for the tests). conv.lut is not read.
void DecomposedConvAccumulate(const QuantizedConv& conv, const TableDecomposition& d, int64_t pixel_begin,
                              int64_t pixel_end, const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                              bool portable = false);
// The same in two steps, for callers that accumulate a convolution in several pixel ranges: the plan
// (the packed filter and the decomposition's tables, built in parallel) depends on conv.shape,
// conv.filter, `d` and, where the direct path applies (ungrouped: the input translated once into a padded
// image), the codes conv.input holds; it serves every range of that convolution, and
// for another conv.input the image is built again per call. `d` need not outlive it.
struct DecomposedPlan;
struct DequantizeRows;
// A source of input codes, one row of an image at a time: row n * in_h + ih's in_w * in_depth codes (NHWC)
// to `codes`. The direct path's image can take its codes this way as it builds each row, where the caller
// would otherwise quantize the whole input first (one parallel region and one pass over the codes less).
using InputRows = std::function<void(int64_t row, uint8_t* codes)>;
// Whether PrepareDecomposed builds the direct path's image for this shape and count of terms (and would
// then take its codes from `rows`).
bool DecomposedBuildsImage(const ConvShape& shape, int terms, bool portable = false);
// rows: where given (and DecomposedBuildsImage), the image's codes come from it and conv.input is not
// read; it must outlive the plan's calls, which read it for a conv.input equal to the one the plan was built
// with (null, say). whole_images: the caller's ranges will be whole images (pixel_begin and pixel_end
// multiples of out_h * out_w); then, from 16 images, the image is not built here but in each call, one
// input image at a time beside its GEMM, in one parallel region (other ranges still work, slower).
std::shared_ptr<const DecomposedPlan> PrepareDecomposed(const QuantizedConv& conv, const TableDecomposition& d,
                                                        const ParallelFor& parallel_for, bool portable = false,
                                                        const InputRows* rows = nullptr, bool whole_images = false);
// With `outputs` (float32 NHWC, one group), the direct path dequantizes each block's sums as it finishes
// them (DequantizeBlock) into outputs->out (pixel pixel_begin's outputs first) and writes no acc: the
// int64 sums of a 16->16 layer were 8 MB written and read again per call. Returns whether it did; then
// acc and act_sum are neither read nor written (each pixel's code sum is kept per tile), else both hold
// the sums as without `outputs`.
struct FloatOutputs {
  const DequantizeRows* rows = nullptr;
  float* out = nullptr;
};
bool DecomposedConvAccumulate(const QuantizedConv& conv, const DecomposedPlan& plan, int64_t pixel_begin,
                              int64_t pixel_end, const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                              const FloatOutputs* outputs = nullptr);
// Whether DecomposedConvAccumulate with `outputs` writes them itself for this plan (the direct path): then
// it neither reads nor writes acc and act_sum, which may be null.
bool DecomposedWritesOutputs(const DecomposedPlan& plan);
// The decomposed kernel that runs this shape with this many terms: "amx-decomposed" (the direct path's GEMM
// on AMX tiles), "avx512vnni-decomposed", "avx2-decomposed" (no AVX-512: the direct path with int16
// products) or "decomposed-portable".
const char* DecomposedKernelName(const ConvShape& shape, int terms, bool portable = false);
// Whether the decomposed kernel beats the lookups on this shape with this many terms (it needs VNNI, or AVX2
// for one group).
bool PreferDecomposed(const ConvShape& shape, int terms);

// sum over taps of the filter codes of each output channel (the same for every output pixel).
void FilterCodeSums(const QuantizedConv& conv, int64_t* filter_sum);

// The output value from the integer sums (docs/semantics.md):
//   out = s1*s2*acc + s1*m2*act_sum + s2*m1*filter_sum + K*m1*m2
// evaluated in Real (double for T = double, float otherwise) from the float32 ranges; with the offsets
// below for signed tables and symmetric operands (0 otherwise, the same numbers as that formula).
template <typename Real>
struct DequantizeTerms {
  Real acc_scale = 0, act_sum_scale = 0, filter_sum_scale = 0, constant = 0;
  // Taken off the integer sums, exactly, before they are scaled. acc: a table of signed products is
  // stored as uint16 with 32768 added to every entry. act_sum / filter_sum: a symmetric operand's sums
  // are of its codes, which are the signed codes plus code_shift.
  int64_t acc_offset = 0, act_sum_offset = 0, filter_sum_offset = 0;

  DequantizeTerms() = default;
  // ShiftedMin: the value of kernel code code_shift (the kernels' sums are of codes, the table's of
  // signed codes: code - code_shift). With codes from 0: nudged_min, the value of code 0, plus
  // code_shift steps (exact for a symmetric range, whose nudged_min is -2^(b-1) steps). With a narrow
  // range's codes from 1, nudged_min is -(2^(b-1) - 1) steps, rounded: the steps from the zero point
  // instead, so that a symmetric narrow range's is exactly 0 too.
  TFAPPROX_HOST_DEVICE DequantizeTerms(const QuantParams& in, const QuantParams& filter, int64_t taps)
      : acc_scale(Real(in.scale) * Real(filter.scale)),
        act_sum_scale(Real(in.scale) * ShiftedMin(filter)),
        filter_sum_scale(Real(filter.scale) * ShiftedMin(in)),
        constant(Real(taps) * ShiftedMin(in) * ShiftedMin(filter)),
        act_sum_offset(taps * in.code_shift),
        filter_sum_offset(taps * filter.code_shift) {}

  TFAPPROX_HOST_DEVICE static Real ShiftedMin(const QuantParams& q) {
    if (q.quant_min != 0) return Real(q.code_shift - q.zero_point) * Real(q.scale);
    return Real(q.nudged_min) + Real(q.code_shift) * Real(q.scale);
  }

  TFAPPROX_HOST_DEVICE Real operator()(int64_t acc, int64_t act_sum, int64_t filter_sum) const {
    return Combine(acc - acc_offset, Act(act_sum), FilterTerm(filter_sum));
  }

  // operator() in pieces, for kernels that convert a pixel's code sum once for all its channels (Act) and
  // take a channel's filter term once for all its pixels (FilterTerm): Combine(acc - acc_offset,
  // Act(act_sum), FilterTerm(filter_sum)) is operator(), the same operations in the same order,
  // ((A + B) + C) + D with no fused multiply-add (the builds forbid contraction): the same bits.
  TFAPPROX_HOST_DEVICE Real Act(int64_t act_sum) const { return Real(act_sum - act_sum_offset); }
  TFAPPROX_HOST_DEVICE Real FilterTerm(int64_t filter_sum) const {
    return filter_sum_scale * Real(filter_sum - filter_sum_offset);
  }
  // net_acc: an int64_t, or an int holding the same value (Real of either is the same).
  template <typename Int>
  TFAPPROX_HOST_DEVICE Real Combine(Int net_acc, Real act, Real filter_term) const {
    return acc_scale * Real(net_acc) + act_sum_scale * act + filter_term + constant;
  }
};

// The float32 terms of a call's output channels, one array per term (DequantizeTerms<float> of channel co
// at index co), so that a pixel's row of channels is dequantized a vector at a time.
struct DequantizeRows {
  std::vector<float> acc_scale, act_sum_scale, filter_term, constant;
  std::vector<int64_t> acc_offset, act_sum_offset;
  // filter_sum[co]: the channel's filter code sum (its term, DequantizeTerms::FilterTerm, is the same for
  // every pixel: computed once here).
  DequantizeRows(const std::vector<DequantizeTerms<float>>& terms, const int64_t* filter_sum);
};

// out[j] = terms[co + j](acc[j], act_sum, filter_sum[co + j]) for j < n, the same float operations in the
// same order (so the same bits): 16 channels at a time with AVX-512 DQ, else one at a time. `portable`
// forces the scalar loop, for the tests.
void DequantizeRow(const DequantizeRows& rows, int64_t co, int64_t n, const int64_t* acc, int64_t act_sum, float* out,
                   bool portable = false);
// DequantizeRow for `pixels` consecutive pixels of a one-group convolution: pixel p's channels at
// acc + p * out_depth and out + p * out_depth, its activation code sum act_sum[p].
void DequantizePixels(const DequantizeRows& rows, int64_t pixels, const int64_t* acc, const int64_t* act_sum,
                      float* out, bool portable = false);
// DequantizeRow for channels co .. co + n - 1 of `pixels` pixels, pixel p's sums at acc + p * acc_stride,
// its code sum act_sum[p], its outputs at out + p * out_stride.
void DequantizeBlock(const DequantizeRows& rows, int64_t co, int64_t n, int64_t pixels, const int64_t* acc,
                     int64_t acc_stride, const int64_t* act_sum, float* out, int64_t out_stride, bool portable = false);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_KERNELS_H_
