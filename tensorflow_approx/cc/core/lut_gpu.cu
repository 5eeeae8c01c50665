// Tables on the device: uploading a host table, and turning a float32 table tensor (the dtype a GPU
// variable can have) into the uint16 table the kernels read.
#include <cmath>
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

using gpu_internal::CudaError;

// Entries that are not integers in [0, 65535] (NaN included) set the flag and become 0.
__global__ void __launch_bounds__(256) LutFromFloatKernel(const float* __restrict__ table, uint16_t* lut,
                                                          int* invalid) {
  bool bad = false;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < kLutEntries; i += gridDim.x * blockDim.x) {
    const float v = table[i];
    const bool ok = v >= 0.f && v <= 65535.f && v == truncf(v);
    bad |= !ok;
    lut[i] = ok ? static_cast<uint16_t>(v) : 0;
  }
  if (__any_sync(0xffffffffu, bad) && (threadIdx.x & 31) == 0) *invalid = 1;
}

}  // namespace

std::string GpuLutFromFloat(const float* table, uint16_t* lut, int* flags, cudaStream_t stream) {
  LutFromFloatKernel<<<kLutEntries / 256 / 4, 256, 0, stream>>>(table, lut, flags + kGpuFlagInvalidTable);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the table conversion launch", e);
}

std::string GpuLutUpload(const uint16_t* host_lut, uint16_t** device_lut) {
  *device_lut = nullptr;
  void* ptr = nullptr;
  cudaError_t e = cudaMalloc(&ptr, kLutFileBytes);
  if (e != cudaSuccess) return CudaError("cudaMalloc of the table", e);
  e = cudaMemcpy(ptr, host_lut, kLutFileBytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaFree(ptr);
    return CudaError("cudaMemcpy of the table", e);
  }
  *device_lut = static_cast<uint16_t*>(ptr);
  return "";
}

std::string GpuLutFree(uint16_t* device_lut) {
  if (device_lut == nullptr) return "";
  const cudaError_t e = cudaFree(device_lut);
  return e == cudaSuccess ? "" : CudaError("cudaFree of the table", e);
}

}  // namespace tfapprox
