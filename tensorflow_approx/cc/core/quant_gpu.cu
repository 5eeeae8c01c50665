// The quantization of a call on the device (conv_gpu.h's GpuQuant): one thread per filter range (one, or
// one per output channel) reads the ranges where they were computed and nudges them exactly as the host
// does (NudgeRange, built with -fmad=false like the rest), so the kernels that follow on the stream read
// the parameters from device memory and the host never waits for a range.
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"

namespace tfapprox {

namespace {

using gpu_internal::CudaError;
using gpu_internal::ToFloat;

template <typename T>
__global__ void QuantFromRangesKernel(const T* input_min, const T* input_max, const T* filter_min,
                                      const T* filter_max, GpuRanges r, int64_t taps, int64_t lut_offset,
                                      GpuQuant* quant, int* invalid) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= r.filter_channels) return;
  // Every thread nudges the input's range again, not only channel 0's: a few scalar operations, and it
  // keeps one kernel (no second launch or cross-thread hand-off for the shared input parameters).
  QuantParams input_q, filter_q;
  const RangeError input_error =
      NudgeRange(ToFloat(*input_min), ToFloat(*input_max), r.input_bits, r.input_symmetric, &input_q, r.input_narrow);
  const RangeError filter_error =
      NudgeRange(ToFloat(filter_min[c]), ToFloat(filter_max[c]), r.filter_bits, r.filter_symmetric, &filter_q,
                 r.filter_narrow);
  if (input_error != kRangeOk || filter_error != kRangeOk) *invalid = 1;
  quant[c] = MakeGpuQuant(input_q, filter_q, taps, lut_offset, r.filter_channels);
}

template <typename T>
std::string QuantFromRanges(const GpuRanges& r, int64_t taps, int64_t lut_offset, GpuQuant* quant, int* flags,
                            cudaStream_t stream) {
  constexpr int kThreads = 128;
  QuantFromRangesKernel<T><<<(r.filter_channels + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      static_cast<const T*>(r.input_min), static_cast<const T*>(r.input_max), static_cast<const T*>(r.filter_min),
      static_cast<const T*>(r.filter_max), r, taps, lut_offset, quant, flags + kGpuFlagInvalidRange);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the quantization parameters launch", e);
}

}  // namespace

std::string GpuQuantFromRanges(GpuDtype dtype, const GpuRanges& ranges, int64_t taps, int64_t lut_offset,
                               GpuQuant* quant, int* flags, cudaStream_t stream) {
  const bool bits_ok = ranges.input_bits >= kMinNumBits && ranges.input_bits <= kMaxNumBits &&
                       ranges.filter_bits >= kMinNumBits && ranges.filter_bits <= kMaxNumBits;
  if (!bits_ok) return "GpuQuantFromRanges: num_bits out of range";
  if (ranges.filter_channels < 1) return "GpuQuantFromRanges: filter_channels must be at least 1";
  return gpu_internal::WithGpuType(dtype, "GpuQuantFromRanges", [&](auto tag) {
    return QuantFromRanges<decltype(tag)>(ranges, taps, lut_offset, quant, flags, stream);
  });
}

}  // namespace tfapprox
