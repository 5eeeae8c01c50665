// Tables on the device: uploading a host table, and turning a table tensor (float32, the dtype a GPU
// variable can have, or int16, or uint16 indexed by signed codes) into the uint16 table the kernels read.
#include <cmath>
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

using gpu_internal::CudaError;

// One thread per entry of the prepared table; invalid float32 entries (NaN included) set the flag and
// become 0.
__global__ void __launch_bounds__(256) PrepareTableKernel(const void* __restrict__ table, GpuTableType type,
                                                          int input_shift, int filter_shift, uint16_t* lut,
                                                          int* invalid) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= kLutEntries) return;
  const int src = (((i >> 8) - input_shift) & 0xFF) << 8 | (((i & 0xFF) - filter_shift) & 0xFF);
  bool ok = true;
  uint16_t entry;
  if (type == GpuTableType::kUint16) {
    entry = static_cast<const uint16_t*>(table)[src];
  } else if (type == GpuTableType::kInt16) {
    entry = static_cast<uint16_t>(static_cast<const int16_t*>(table)[src] + 32768);
  } else {
    const float v = static_cast<const float*>(table)[src];
    ok = v >= 0.f && v <= 65535.f && v == truncf(v);
    entry = ok ? static_cast<uint16_t>(v) : 0;
  }
  lut[i] = entry;
  if (__any_sync(0xffffffffu, !ok) && (threadIdx.x & 31) == 0) *invalid = 1;
}

}  // namespace

std::string GpuPrepareTable(const void* table, GpuTableType type, int input_shift, int filter_shift, uint16_t* lut,
                            int* flags, cudaStream_t stream) {
  PrepareTableKernel<<<kLutEntries / 256, 256, 0, stream>>>(table, type, input_shift, filter_shift, lut,
                                                            flags + kGpuFlagInvalidTable);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the table preparation launch", e);
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
