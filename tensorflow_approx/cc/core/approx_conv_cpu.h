// The whole op on the CPU, for any element type T: quantize, accumulate with the chosen integer kernel,
// dequantize. Header-only because T may be a framework type (Eigen::half, bfloat16) that the core does
// not name; anything static_cast-able to and from float works.
#ifndef TENSORFLOW_APPROX_CC_CORE_APPROX_CONV_CPU_H_
#define TENSORFLOW_APPROX_CC_CORE_APPROX_CONV_CPU_H_

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/quantize.h"
#include "tensorflow_approx/cc/core/uninitialized_vector.h"

namespace tfapprox {

enum class CpuKernel { kReference, kFast };

// Accumulators per pass: 2 MB of int64, so the epilogue reads them back from cache and the buffer
// stays small whatever the batch size.
constexpr int64_t kAccumulatorElementsPerPass = int64_t{1} << 18;

// NaN propagates as in fake quantization followed by a float convolution (docs/semantics.md): a NaN in
// the filter makes its output channel NaN everywhere (every output multiplies every filter tap), a NaN
// in the input makes NaN the outputs of its group whose window holds it. Runs only when a NaN was seen:
// input_nan marks the NaN inputs in the codes' NHWC layout, so the kernels' patch walk finds them.
template <typename T>
void PropagateNan(const ConvShape& s, const std::vector<uint8_t>& input_nan, const std::vector<uint8_t>& filter_nan,
                  const ParallelFor& parallel_for, T* output) {
  const T nan = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
  const int64_t out_hw = s.out_h * s.out_w;
  const bool nhwc = s.data_format == DataFormat::kNHWC;
  const int64_t channel_stride = nhwc ? 1 : out_hw;
  const int64_t out_per_group = s.out_depth_per_group();
  QuantizedConv marks;
  marks.shape = s;
  marks.input = input_nan.data();
  parallel_for(s.out_pixels(), s.taps() * s.groups(), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* out = nhwc ? output + p * s.out_depth : output + (p / out_hw) * s.out_depth * out_hw + p % out_hw;
      for (int64_t g = 0; g < s.groups(); ++g) {
        bool window_nan = false;
        WalkPatch(marks, p, g, [&](const uint8_t* in) {
          for (int64_t ci = 0; in != nullptr && ci < s.filter_depth; ++ci) window_nan |= in[ci] != 0;
        });
        for (int64_t co = g * out_per_group; co < (g + 1) * out_per_group; ++co) {
          if (window_nan || filter_nan[co]) out[co * channel_stride] = nan;
        }
      }
    }
  });
}

// The filter's quantization: one QuantParams for the whole tensor (what a QuantParams converts to), or
// one per output channel (count == out_depth). Every channel has the same scheme and code width, so the
// same code_shift; scales and zero points differ.
struct FilterQuant {
  FilterQuant(const QuantParams& q) : params(&q), count(1) {}  // NOLINT: per tensor, implicitly
  FilterQuant(const QuantParams* channels, int64_t n) : params(channels), count(n) {}
  const QuantParams& of(int64_t co) const { return params[count == 1 ? 0 : co]; }
  const QuantParams* params;
  int64_t count;
};

// The convolution the fast kernels run for `given`: itself, or for a strided 1x1 filter that reads no
// padding the same at strides 1 over the pixels it reads (SubsampledShape), so that only those are
// quantized and translated (ResNet-20's 1x1 stride-2 projections quantized four times the pixels they
// read: 13% of the layer).
inline ConvShape FastKernelShape(const ConvShape& given) {
  ConvShape dense;
  return SubsampledShape(given, &dense) ? dense : given;
}

// Whether the fast kernel takes the decomposed kernel for this convolution (FastKernelShape's) with
// decomposition d (null: none).
inline bool UseDecomposed(const ConvShape& s, const TableDecomposition* d) {
  return d != nullptr && PreferDecomposed(FastKernelShape(s), d->terms);
}

// decomposition: the table's, when it has one (table_decompositions.h); the fast kernel then takes the
// decomposed kernel where PreferDecomposed says it is faster (UseDecomposed).
template <typename T>
void ApproxConvCpu(const ConvShape& given, const T* input, const T* filter, const QuantParams& input_q,
                   const FilterQuant& filter_q, const uint16_t* lut, const ParallelFor& parallel_for,
                   T* output, CpuKernel kernel = CpuKernel::kFast, int64_t lut_offset = 0,
                   const TableDecomposition* decomposition = nullptr) {
  using Real = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  if (given.output_elements() == 0) return;
  // The convolution the kernels run (the reference kernel: the given one).
  const ConvShape s = kernel == CpuKernel::kReference ? given : FastKernelShape(given);
  const bool subsampled = s.stride_h != given.stride_h || s.stride_w != given.stride_w;
  // The given input's pixel (n * in_h + ih) * in_w + iw that pixel nhw of s's input is.
  const auto given_pixel = [&](int64_t nhw) {
    if (!subsampled) return nhw;
    const int64_t n = nhw / (s.in_h * s.in_w), oh = nhw / s.in_w % s.in_h, ow = nhw % s.in_w;
    return (n * given.in_h + oh * given.stride_h) * given.in_w + ow * given.stride_w;
  };

  const bool decomposed = kernel != CpuKernel::kReference && UseDecomposed(s, decomposition);
  // float32 NHWC on the decomposed kernel's direct path: its image quantizes each input row as it builds
  // it (quantize_row), so the whole input is not quantized first, in a parallel region of its own.
  const bool rows_into_image = std::is_same<T, float>::value && s.data_format == DataFormat::kNHWC && decomposed &&
                               DecomposedBuildsImage(s, decomposition->terms);
  std::atomic<bool> input_nan{false};
  const InputRows quantize_row = [&](int64_t r, uint8_t* codes) {
    const float* in = reinterpret_cast<const float*>(input);
    const bool nan = subsampled ? QuantizeRuns(in + given_pixel(r * s.in_w) * s.in_depth, s.in_w, s.in_depth,
                                               given.stride_w * s.in_depth, input_q, codes)
                                : QuantizeCodes(in + r * s.in_w * s.in_depth, s.in_w * s.in_depth, input_q, codes);
    if (nan) input_nan = true;
  };
  // Input codes in NHWC whatever the data format (every one written below), unless the image takes them.
  UninitializedVector<uint8_t> input_codes(rows_into_image ? 0 : static_cast<size_t>(s.input_elements()));
  const int64_t hw = given.in_h * given.in_w;  // the given input's pixels per image
  if (rows_into_image) {
    // (the decomposed plan's image quantizes them below)
  } else if (std::is_same<T, float>::value && s.data_format == DataFormat::kNHWC && !subsampled) {
    // The common case, vectorized: codes in the input's own order.
    const float* in = reinterpret_cast<const float*>(input);
    parallel_for(s.input_elements(), 8, [&](int64_t begin, int64_t end) {
      if (QuantizeCodes(in + begin, end - begin, input_q, &input_codes[begin])) input_nan = true;
    });
  } else if (std::is_same<T, float>::value && s.data_format == DataFormat::kNHWC) {
    // The same a row of read pixels at a time: a pixel's channels are contiguous, stride_w pixels apart.
    const int64_t row = s.in_w * s.in_depth;
    parallel_for(s.batch * s.in_h, row * 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) quantize_row(r, &input_codes[r * row]);
    });
  } else {
    parallel_for(s.batch * s.in_h * s.in_w, s.in_depth * 8, [&](int64_t begin, int64_t end) {
      bool nan = false;
      for (int64_t nhw = begin; nhw < end; ++nhw) {
        uint8_t* out = &input_codes[nhw * s.in_depth];
        const int64_t src = given_pixel(nhw), n = src / hw, pos = src % hw;
        const T* in = s.data_format == DataFormat::kNHWC ? input + src * s.in_depth : input + n * s.in_depth * hw + pos;
        const int64_t stride = s.data_format == DataFormat::kNHWC ? 1 : hw;
        for (int64_t c = 0; c < s.in_depth; ++c) {
          const float v = static_cast<float>(in[c * stride]);
          nan |= v != v;
          out[c] = QuantizeToCode(v, input_q);
        }
      }
      if (nan) input_nan = true;
    });
  }

  // Filter codes as [out_depth][filter_h][filter_w][filter_depth] from HWIO: quantized in HWIO order (a
  // tap's channels contiguous; float32 with one range vectorized as the input), then transposed in tiles.
  // Quantizing straight into the transposed order wrote a new cache line at every element: 6 ms of each
  // core's time for a 3x3 512 -> 512 filter, a fifth of the layer at batch 8 on Zen 4.
  const int64_t taps = s.taps();
  std::vector<uint8_t> filter_codes(static_cast<size_t>(s.filter_elements()));
  std::vector<uint8_t> filter_nan(static_cast<size_t>(s.out_depth), 0);
  std::atomic<bool> any_filter_nan{false};
  {
    std::vector<uint8_t> hwio_codes(static_cast<size_t>(s.filter_elements()));
    parallel_for(taps, s.out_depth * 8, [&](int64_t t_begin, int64_t t_end) {
      const int64_t begin = t_begin * s.out_depth, n = (t_end - t_begin) * s.out_depth;
      if (std::is_same<T, float>::value && filter_q.count == 1) {
        const float* f = reinterpret_cast<const float*>(filter);
        if (QuantizeCodes(f + begin, n, filter_q.of(0), &hwio_codes[begin])) any_filter_nan = true;
        return;
      }
      bool nan = false;
      for (int64_t i = begin; i < begin + n; ++i) {
        const float v = static_cast<float>(filter[i]);
        nan |= v != v;
        hwio_codes[i] = QuantizeToCode(v, filter_q.of(i % s.out_depth));
      }
      if (nan) any_filter_nan = true;
    });
    if (any_filter_nan) {  // rare: the channels holding a NaN
      for (int64_t i = 0; i < s.filter_elements(); ++i) {
        const float v = static_cast<float>(filter[i]);
        if (v != v) filter_nan[i % s.out_depth] = 1;
      }
    }
    parallel_for((s.out_depth + kTransposeTile - 1) / kTransposeTile, taps * kTransposeTile * 2,
                 [&](int64_t begin, int64_t end) {
                   TransposeBytes(hwio_codes.data(), taps, s.out_depth, begin * kTransposeTile,
                                  std::min(s.out_depth, end * kTransposeTile), filter_codes.data(), taps);
    });
  }

  QuantizedConv conv;
  conv.shape = s;
  conv.input = rows_into_image ? nullptr : input_codes.data();
  conv.filter = filter_codes.data();
  conv.input_zero_code = static_cast<uint8_t>(input_q.zero_point);
  conv.lut = lut;
  std::vector<int64_t> filter_sum(static_cast<size_t>(s.out_depth));
  FilterCodeSums(conv, filter_sum.data());
  std::vector<DequantizeTerms<Real>> dequantize;  // per output channel
  dequantize.reserve(static_cast<size_t>(s.out_depth));
  for (int64_t co = 0; co < s.out_depth; ++co) {
    dequantize.emplace_back(input_q, filter_q.of(co), taps);
    dequantize.back().acc_offset = lut_offset * taps;  // every entry of an offset table carries lut_offset
  }
  const int64_t groups = s.groups();
  const int64_t pixels = s.out_pixels();
  const int64_t out_hw = s.out_h * s.out_w;
  const int64_t out_per_group = s.out_depth_per_group();
  // float32 NHWC: a pixel's channels are contiguous, dequantized a vector at a time (the same bits).
  std::unique_ptr<DequantizeRows> rows;
  if constexpr (std::is_same<T, float>::value) {
    if (s.data_format == DataFormat::kNHWC) rows.reset(new DequantizeRows(dequantize, filter_sum.data()));
  }
  const bool row_outputs = rows != nullptr && groups == 1;  // outputs a pixel's row of channels at a time
  // The decomposed kernel's plan, built once for every pass: the packed filter and, on its direct path, the
  // input's image (its rows quantized as it goes where rows_into_image). With row_outputs the direct path
  // writes the outputs and runs in one pass (below): whole images, which it builds one at a time.
  std::shared_ptr<const DecomposedPlan> plan;
  if (decomposed) {
    plan = PrepareDecomposed(conv, *decomposition, parallel_for, false, rows_into_image ? &quantize_row : nullptr,
                             row_outputs);
  }
  // The int64 sums, unless the decomposed kernel writes the outputs itself (its direct path with rows): 2
  // MB zeroed a call that nothing read (with the image's and the input codes' zeroing, 8-15% of ResNet-20's
  // small layers on the decomposed kernel; docs/decomposition.md).
  const bool outputs_direct = plan != nullptr && row_outputs && DecomposedWritesOutputs(*plan);
  // Passes of pixels whose int64 sums fit the accumulators; where the kernel writes the outputs itself (no
  // sums kept) one pass: one parallel region, where ResNet-20's 32x32 layers at N=64 took four, each
  // waking the pool's threads (docs/decomposition.md, "Fewer parallel regions").
  const int64_t pass = outputs_direct ? pixels : std::max<int64_t>(1, kAccumulatorElementsPerPass / s.out_depth);
  std::vector<int64_t> acc(outputs_direct ? 0 : static_cast<size_t>(std::min(pass, pixels) * s.out_depth));
  std::vector<int64_t> act_sum(outputs_direct ? 0 : static_cast<size_t>(std::min(pass, pixels) * groups));
  for (int64_t begin = 0; begin < pixels; begin += pass) {
    const int64_t end = std::min(pixels, begin + pass);
    if (kernel == CpuKernel::kReference) {
      ReferenceConvAccumulate(conv, begin, end, acc.data(), act_sum.data());
    } else if (plan != nullptr) {
      // float32 NHWC with one group: the decomposed kernel's direct path writes the outputs itself.
      FloatOutputs outputs;
      if constexpr (std::is_same<T, float>::value) {
        if (row_outputs) outputs = FloatOutputs{rows.get(), output + begin * s.out_depth};
      }
      if (DecomposedConvAccumulate(conv, *plan, begin, end, parallel_for, acc.data(), act_sum.data(),
                                   outputs.rows != nullptr ? &outputs : nullptr)) {
        continue;
      }
    } else {
      CpuConvAccumulate(conv, begin, end, parallel_for, acc.data(), act_sum.data());
    }
    parallel_for(end - begin, s.out_depth * 4, [&](int64_t q_begin, int64_t q_end) {
      if constexpr (std::is_same<T, float>::value) {
        if (row_outputs) {
          DequantizePixels(*rows, q_end - q_begin, &acc[q_begin * s.out_depth], &act_sum[q_begin],
                           output + (begin + q_begin) * s.out_depth);
          return;
        }
      }
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t p = begin + q;
        // NCHW writes channel planes: element (n, co, p % out_hw).
        T* out = s.data_format == DataFormat::kNHWC ? output + p * s.out_depth
                                                     : output + (p / out_hw) * s.out_depth * out_hw + p % out_hw;
        const int64_t channel_stride = s.data_format == DataFormat::kNHWC ? 1 : out_hw;
        if constexpr (std::is_same<T, float>::value) {
          if (rows != nullptr) {
            for (int64_t g = 0; g < groups; ++g) {
              const int64_t co = g * out_per_group;
              DequantizeRow(*rows, co, out_per_group, &acc[q * s.out_depth + co], act_sum[q * groups + g], out + co);
            }
            continue;
          }
        }
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t a = act_sum[q * groups + g];
          for (int64_t co = g * out_per_group; co < (g + 1) * out_per_group; ++co) {
            out[co * channel_stride] = static_cast<T>(dequantize[co](acc[q * s.out_depth + co], a, filter_sum[co]));
          }
        }
      }
    });
  }
  if (input_nan || any_filter_nan) {
    std::vector<uint8_t> input_nan_marks(static_cast<size_t>(s.input_elements()), 0);
    if (input_nan) {
      for (int64_t i = 0; i < s.input_elements(); ++i) {
        // Element i of the NHWC codes: channel c of the given input's pixel `src` (NHWC or NCHW).
        const int64_t c = i % s.in_depth, src = given_pixel(i / s.in_depth);
        const float v = static_cast<float>(s.data_format == DataFormat::kNHWC
                                               ? input[src * s.in_depth + c]
                                               : input[(src / hw * s.in_depth + c) * hw + src % hw]);
        input_nan_marks[i] = v != v;
      }
    }
    PropagateNan(s, input_nan_marks, filter_nan, parallel_for, output);
  }
}

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_APPROX_CONV_CPU_H_
