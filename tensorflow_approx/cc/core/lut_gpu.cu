// Tables on the device: uploading a host table (a table tensor is checked and arranged on the host, by
// the op's GPU kernel, and copied with the call's work).
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {

using gpu_internal::CudaError;

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
