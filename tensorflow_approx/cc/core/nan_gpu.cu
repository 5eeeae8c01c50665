// NaN on the GPU, as PropagateNan does it on the CPU (docs/semantics.md): a scan notes whether input or
// filter hold a NaN, and a pass after the convolution makes NaN the outputs they reach. Both read the
// flags on the device, so nothing waits for the host; with no NaN the second pass ends at once.
#include <algorithm>
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"

namespace tfapprox {
namespace {

using namespace gpu_internal;  // NOLINT

constexpr int kThreads = 256;
constexpr int kBlocks = 1024;  // grid-stride loops: enough to fill any current GPU

// No more blocks than elements need: both passes run at every call, and small calls should not pay
// for a full grid.
inline int Blocks(int64_t elements) {
  return static_cast<int>(std::min<int64_t>(kBlocks, std::max<int64_t>(1, (elements + kThreads - 1) / kThreads)));
}

template <typename T>
__device__ __forceinline__ bool IsNan(T x) {
  const float v = ToFloat(x);
  return v != v;
}

// The NaN the CPU kernels write, static_cast<T>(a float quiet NaN), bit for bit: CUDA's float-to-half
// conversions would give another payload (0x7fff) where Eigen's keep the float's (0x7e00, 0x7fc0).
template <typename T>
__device__ __forceinline__ T CpuNan() {
  return FromReal<T>(static_cast<typename RealOf<T>::type>(__int_as_float(0x7fc00000)));
}
template <>
__device__ __forceinline__ __half CpuNan<__half>() {
  return __ushort_as_half(0x7e00);
}
template <>
__device__ __forceinline__ __nv_bfloat16 CpuNan<__nv_bfloat16>() {
  return __ushort_as_bfloat16(0x7fc0);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ScanNanKernel(const T* __restrict__ input, int64_t input_size,
                                                           const T* __restrict__ filter, int64_t filter_size,
                                                           int* flags) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  bool in_nan = false, filter_nan = false;
  for (int64_t i = first; i < input_size; i += step) in_nan |= IsNan(input[i]);
  for (int64_t i = first; i < filter_size; i += step) filter_nan |= IsNan(filter[i]);
  const bool lane0 = (threadIdx.x & 31) == 0;
  if (__any_sync(0xffffffffu, in_nan) && lane0) flags[kGpuFlagInputNan] = 1;
  if (__any_sync(0xffffffffu, filter_nan) && lane0) flags[kGpuFlagFilterNan] = 1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) PropagateNanKernel(GpuGeometry g, const T* __restrict__ input,
                                                                const T* __restrict__ filter, T* output,
                                                                const int* flags) {
  const bool input_nan = flags[kGpuFlagInputNan] != 0, filter_nan = flags[kGpuFlagFilterNan] != 0;
  const bool all_nan = flags[kGpuFlagInvalidRange] != 0;
  if (!input_nan && !filter_nan && !all_nan) return;
  const T nan = CpuNan<T>();
  const int64_t total = static_cast<int64_t>(g.pixels) * g.out_depth;
  const int hw = g.out_h * g.out_w;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int p = static_cast<int>(idx / g.out_depth), co = static_cast<int>(idx % g.out_depth);
    bool nan_out = all_nan;
    for (int t = 0; filter_nan && !nan_out && t < g.taps; ++t) nan_out = IsNan(filter[static_cast<int64_t>(t) * g.out_depth + co]);
    if (input_nan && !nan_out) {
      const int n = p / hw, oh = (p % hw) / g.out_w, ow = p % g.out_w, group = co / g.npg;
      for (int kh = 0; kh < g.filter_h && !nan_out; ++kh) {
        const int ih = oh * g.stride_h - g.pad_top + kh * g.dil_h;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int kw = 0; kw < g.filter_w && !nan_out; ++kw) {
          const int iw = ow * g.stride_w - g.pad_left + kw * g.dil_w;
          if (iw < 0 || iw >= g.in_w) continue;
          for (int ci = group * g.cg; ci < (group + 1) * g.cg && !nan_out; ++ci) {
            const int64_t off = g.nchw ? ((static_cast<int64_t>(n) * g.in_depth + ci) * g.in_h + ih) * g.in_w + iw
                                       : ((static_cast<int64_t>(n) * g.in_h + ih) * g.in_w + iw) * g.in_depth + ci;
            nan_out = IsNan(input[off]);
          }
        }
      }
    }
    if (nan_out) StoreOutput(g, output, p, co, nan);
  }
}

template <typename T>
std::string ScanNan(const ConvShape& s, const void* input, const void* filter, int* flags, cudaStream_t stream) {
  ScanNanKernel<T><<<Blocks(std::max(s.input_elements(), s.filter_elements())), kThreads, 0, stream>>>(static_cast<const T*>(input), s.input_elements(),
                                                     static_cast<const T*>(filter), s.filter_elements(), flags);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the NaN scan launch", e);
}

template <typename T>
std::string PropagateNan(const ConvShape& s, const void* input, const void* filter, void* output, const int* flags,
                         cudaStream_t stream) {
  PropagateNanKernel<T><<<Blocks(s.output_elements()), kThreads, 0, stream>>>(MakeGpuGeometry(s), static_cast<const T*>(input),
                                                          static_cast<const T*>(filter), static_cast<T*>(output),
                                                          flags);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the NaN propagation launch", e);
}

}  // namespace

std::string GpuScanNan(GpuDtype dtype, const ConvShape& s, const void* input, const void* filter, int* flags,
                       cudaStream_t stream) {
  return WithGpuType(dtype, "GpuScanNan",
                     [&](auto tag) { return ScanNan<decltype(tag)>(s, input, filter, flags, stream); });
}

std::string GpuPropagateNan(GpuDtype dtype, const ConvShape& s, const void* input, const void* filter, void* output,
                            const int* flags, cudaStream_t stream) {
  if (s.output_elements() == 0) return "";
  return WithGpuType(dtype, "GpuPropagateNan",
                     [&](auto tag) { return PropagateNan<decltype(tag)>(s, input, filter, output, flags, stream); });
}

}  // namespace tfapprox
