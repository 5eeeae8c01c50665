// The Keras layers' batch ranges on the GPU, with the host's keys (quantize.h: RangeKey, RangeFromKeys):
// one launch after a memset of the keys. Every block max-reduces its share into the keys with atomicMax
// (integer maxima: the same keys in any order), and the last block to finish turns them into the range,
// so nothing waits for the host and one op replaces TensorFlow's four reductions and element-wise ops.
#include <algorithm>
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tfapprox {
namespace {

using gpu_internal::CudaError;

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;  // grid-stride loops: enough to fill any current GPU

// keys: pos, neg of each channel, then the count of finished blocks.
__global__ void __launch_bounds__(kThreads) RangeKernel(const float* __restrict__ x, int64_t rows, int64_t channels,
                                                        int32_t* keys, float* min, float* max) {
  if (channels == 1) {
    int32_t pos = 0, neg = 0;
    const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows; i += step) {
      const int32_t k = RangeKey(__ldg(x + i));
      pos = ::max(pos, k);
      neg = ::max(neg, k ^ kRangeKeySign);
    }
    pos = __reduce_max_sync(0xffffffffu, pos);
    neg = __reduce_max_sync(0xffffffffu, neg);
    if ((threadIdx.x & 31) == 0) {
      atomicMax(keys, pos);
      atomicMax(keys + 1, neg);
    }
  } else {
    // Threads across channels (adjacent threads read adjacent values), blocks across rows.
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      int32_t pos = 0, neg = 0;
      for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const int32_t k = RangeKey(__ldg(x + r * channels + c));
        pos = ::max(pos, k);
        neg = ::max(neg, k ^ kRangeKeySign);
      }
      atomicMax(keys + 2 * c, pos);
      atomicMax(keys + 2 * c + 1, neg);
    }
  }
  // The last block to finish writes the range (its loads after the fence see every block's maxima).
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(reinterpret_cast<unsigned*>(keys + 2 * channels), 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    RangeFromKeys(atomicOr(keys + 2 * c, 0), atomicOr(keys + 2 * c + 1, 0), min + c, max + c);
  }
}

}  // namespace

size_t GpuRangeScratchBytes(int64_t channels) { return static_cast<size_t>(2 * channels + 1) * sizeof(int32_t); }

std::string GpuRangeWithZero(const float* x, int64_t rows, int64_t channels, void* scratch, float* min, float* max,
                             cudaStream_t stream, bool scratch_zeroed) {
  if (rows < 0 || channels < 1) return "GpuRangeWithZero: rows must be >= 0 and channels >= 1";
  if ((x == nullptr && rows > 0) || scratch == nullptr || min == nullptr || max == nullptr) {
    return "GpuRangeWithZero: null device pointer";
  }
  cudaError_t e = cudaSuccess;
  if (!scratch_zeroed) {
    e = cudaMemsetAsync(scratch, 0, GpuRangeScratchBytes(channels), stream);
    if (e != cudaSuccess) return CudaError("cudaMemsetAsync of the range keys", e);
  }
  // One value per thread at least, and no more blocks than the rows for per-channel ranges.
  const int64_t per_block = channels == 1 ? kThreads : 1;
  const int64_t blocks = std::min<int64_t>(kMaxBlocks, std::max<int64_t>(1, (rows + per_block - 1) / per_block));
  RangeKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, rows, channels, static_cast<int32_t*>(scratch),
                                                                     min, max);
  e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the range launch", e);
}

}  // namespace tfapprox
