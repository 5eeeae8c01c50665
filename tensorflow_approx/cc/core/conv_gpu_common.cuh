// Device-side pieces shared by the CUDA files of the core (conv_gpu.cu, conv_gpu_decomposed.cu, nan_gpu.cu,
// quant_gpu.cu, range_gpu.cu and the .cuh files they include): element conversions that round as the CPU
// build does, the geometry in 32-bit integers, the output store in either data format, CUDA error
// messages, the device's sizes. Internal: included only by those.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COMMON_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <string>
#include <type_traits>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/conv_shape.h"

namespace tfapprox {
namespace gpu_internal {

template <typename T>
struct RealOf {
  using type = float;
};
template <>
struct RealOf<double> {
  using type = double;
};

// Conversions as the CPU pipeline's static_casts do them (round to nearest even).
__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(double x) { return __double2float_rn(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromReal(typename RealOf<T>::type x);
template <>
__device__ __forceinline__ float FromReal<float>(float x) { return x; }
template <>
__device__ __forceinline__ double FromReal<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half FromReal<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromReal<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The geometry in 32-bit integers: every tensor has fewer than 2^31 elements (ComputeConvShape) and
// the host checks the spatial terms below 2^30, so no index computed from these overflows.
struct GpuGeometry {
  int in_h, in_w, in_depth, filter_h, filter_w, cg, out_depth, npg, groups;
  int stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, out_h, out_w;
  int taps, pixels;
  bool nchw;
};

// What the convolution kernels need beyond the geometry: the call's quantization in device memory (the
// per-tensor entry read once per block; with per-channel ranges, a channel's entry read once per tile in
// the tiled kernel, once per output in the direct and columns kernels) and the optional debug outputs.
struct Epilogue {
  const GpuQuant* quant;
  int64_t* debug_acc;
  int64_t* debug_act_sum;
};

template <typename Real>
__device__ __forceinline__ DequantizeTerms<Real> TermsOf(const GpuQuant* q);
template <>
__device__ __forceinline__ DequantizeTerms<float> TermsOf<float>(const GpuQuant* q) { return q->terms_float; }
template <>
__device__ __forceinline__ DequantizeTerms<double> TermsOf<double>(const GpuQuant* q) { return q->terms_double; }

// Output channel co's dequantization terms and filter parameters: read from its own entry with per-channel
// ranges, else the per-tensor value the kernel hoisted (no load; entry co exists only per channel).
template <typename Real>
__device__ __forceinline__ DequantizeTerms<Real> ChannelTerms(const GpuQuant* q, bool per_channel, int co,
                                                             const DequantizeTerms<Real>& tensor_terms) {
  return per_channel ? TermsOf<Real>(q + co) : tensor_terms;
}
__device__ __forceinline__ QuantParams ChannelFilter(const GpuQuant* q, bool per_channel, int co,
                                                     const QuantParams& tensor_filter) {
  return per_channel ? q[co].filter : tensor_filter;
}

template <typename T>
__device__ __forceinline__ void StoreOutput(const GpuGeometry& g, T* output, int p, int co, T value) {
  if (!g.nchw) {
    output[static_cast<int64_t>(p) * g.out_depth + co] = value;
  } else {
    const int hw = g.out_h * g.out_w;
    const int n = p / hw;
    output[(static_cast<int64_t>(n) * g.out_depth + co) * hw + (p - n * hw)] = value;
  }
}

inline GpuGeometry MakeGpuGeometry(const ConvShape& s) {
  GpuGeometry g;
  g.in_h = static_cast<int>(s.in_h);
  g.in_w = static_cast<int>(s.in_w);
  g.in_depth = static_cast<int>(s.in_depth);
  g.filter_h = static_cast<int>(s.filter_h);
  g.filter_w = static_cast<int>(s.filter_w);
  g.cg = static_cast<int>(s.filter_depth);
  g.out_depth = static_cast<int>(s.out_depth);
  g.npg = static_cast<int>(s.out_depth_per_group());
  g.groups = static_cast<int>(s.groups());
  g.stride_h = static_cast<int>(s.stride_h);
  g.stride_w = static_cast<int>(s.stride_w);
  g.dil_h = static_cast<int>(s.dilation_h);
  g.dil_w = static_cast<int>(s.dilation_w);
  g.pad_top = static_cast<int>(s.pad_top);
  g.pad_left = static_cast<int>(s.pad_left);
  g.out_h = static_cast<int>(s.out_h);
  g.out_w = static_cast<int>(s.out_w);
  g.taps = static_cast<int>(s.taps());
  g.pixels = static_cast<int>(s.out_pixels());
  g.nchw = s.data_format == DataFormat::kNCHW;
  return g;
}

inline std::string CudaError(const char* what, cudaError_t e) {
  return std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
         ")";
}

// The current device (its ordinal), its multiprocessors and opt-in shared memory per block (what the plans
// size grids and tiles by).
struct DeviceInfo {
  int ordinal = 0;
  int sms = 0;
  int smem_optin = 0;
  int l2_bytes = 0;
};

inline std::string GetDeviceInfo(DeviceInfo* info) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaError("cudaGetDevice", e);
  info->ordinal = device;
  e = cudaDeviceGetAttribute(&info->sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return CudaError("cudaDeviceGetAttribute", e);
  e = cudaDeviceGetAttribute(&info->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return CudaError("cudaDeviceGetAttribute", e);
  e = cudaDeviceGetAttribute(&info->l2_bytes, cudaDevAttrL2CacheSize, device);
  if (e != cudaSuccess) return CudaError("cudaDeviceGetAttribute", e);
  return "";
}

// The GpuDtype of T (WithGpuType's inverse).
template <typename T>
constexpr GpuDtype GpuDtypeOf() {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "a GpuDtype element type");
  return std::is_same<T, float>::value    ? GpuDtype::kFloat
         : std::is_same<T, double>::value ? GpuDtype::kDouble
         : std::is_same<T, __half>::value ? GpuDtype::kHalf
                                          : GpuDtype::kBfloat16;
}

// f(T{}) for the element type `dtype` names (the untyped entry points' one dispatch); `what` names the
// entry point in the error for an unknown type.
template <typename F>
std::string WithGpuType(GpuDtype dtype, const char* what, F&& f) {
  switch (dtype) {
    case GpuDtype::kFloat: return f(float{});
    case GpuDtype::kDouble: return f(double{});
    case GpuDtype::kHalf: return f(__half{});
    case GpuDtype::kBfloat16: return f(__nv_bfloat16{});
  }
  return std::string(what) + ": unknown element type";
}

}  // namespace gpu_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_COMMON_CUH_
