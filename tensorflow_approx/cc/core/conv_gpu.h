// The op on an NVIDIA GPU: raw device pointers, a ConvShape and a stream; no TensorFlow header, so the
// same code is checked and timed by benchmarks/gpu/ on a machine without TensorFlow.
//
// Per call: the filter is quantized once into the workspace (codes and per-channel sums, a small
// pass), then one fused launch: the input is quantized while the patches are gathered (implicit GEMM,
// no im2col buffer), the 128 KB table sits in shared memory, the lookups accumulate in 32-bit integers
// (64-bit when K * 65535 could pass 2^32), the activation code sums for the correction terms are taken
// in the same pass, and the output is written once in the op's data format. (Groups of up to 32
// channels take the columns kernel, whose blocks each quantize the filter themselves, and depthwise
// ones where it does not fit a direct kernel that quantizes both operands itself: neither needs a
// workspace.)
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_H_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_H_

#include <cuda_runtime_api.h>
#if defined(__CUDACC__)
// The 16-bit types are needed only by nvcc-compiled callers of the typed entry point; host-only
// callers (the TensorFlow glue) use ApproxConvGpuUntyped and need no CUDA math headers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include <cstddef>
#include <cstdint>
#include <string>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tfapprox {

// Kernel selection. kAuto picks by shape; the others exist so that the harness can hold every kernel
// to the reference on the same shapes.
enum class GpuKernel : int {
  kAuto = -1,
  kTile128x64 = 0,  // pixels x output channels per block
  kTile64x128 = 1,
  kTile64x256 = 2,
  kTile32x128 = 3,
  kTile64x64 = 4,
  kTile128x64W16 = 5,  // 16 warps per block (the others have 8)
  kTile128x128W16 = 6,
  kTile64x128W16 = 7,
  kDirect = 8,         // one thread per output: where nothing else fits
  kColumns = 9,        // one thread per pixel and 16 or 32 channels of a group: groups of <= 32 channels
  kCount = 10,
};

// Whether the tiled kernels skip the lookups of activations at the zero point (conv_gpu.cu says how).
// kAuto decides per warp and k tile by counting them; the others force one path where the table allows
// skipping (kSparse needs four channels per lane and 32-bit sums, else it takes the masked path), for
// the checks and timings.
enum class ZeroSkip : int { kAuto, kOff, kSparse, kMasked };

// Whether a tiled kernel splits the K taps of output tiles between blocks (stream-K: every block takes
// an equal share of all tiles' k tiles, and the blocks that share a tile add their integer sums in a
// workspace, the last one writing the output). kAuto splits when whole tiles would leave multiprocessors
// idle in the last wave (small layers); the others exist for the checks and timings.
enum class SplitK : int { kAuto, kOff, kAlways };

struct GpuOptions {
  GpuKernel kernel = GpuKernel::kAuto;
  ZeroSkip zero_skip = ZeroSkip::kAuto;
  SplitK split_k = SplitK::kAuto;
  bool force_wide = false;  // 64-bit accumulation even where 32 bits suffice (tests the wide path)
  // Scratch device memory of GpuWorkspaceBytes(shape, options) bytes, 16-byte aligned, needed when that
  // is not 0 (the tiled kernels): the filter's codes, quantized once per call, and the sums of split
  // tiles. Each call writes it on its stream; calls in flight at once need their own.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Optional: LutByWeight of the call's table in device memory, 16-byte aligned. The columns kernel's
  // blocks then copy it into shared memory; without it each block transposes the table itself, which
  // costs the whole call some microseconds (made once per table, as the op keeps it with its table).
  const uint16_t* lut_by_weight = nullptr;
  // Device buffers (optional): the integer sums as ReferenceConvAccumulate lays them out over all
  // pixels, acc[p * out_depth + co] and act_sum[p * groups + g].
  int64_t* debug_acc = nullptr;
  int64_t* debug_act_sum = nullptr;
};

// The quantization of one call as every kernel reads it, in device memory: made there from the range
// tensors by GpuQuantFromRanges, so that no range travels to the host and the stream never waits for
// one (or made on the host by MakeGpuQuant and copied, as the harness does).
//
// Per-tensor filter ranges: one GpuQuant, channels = 1. Per-output-channel ranges: out_depth of them,
// entry co with channel co's filter parameters and terms and channels = out_depth (the input
// parameters are the same in every entry); kernels read entry ChannelQuant(co).
struct GpuQuant {
  QuantParams input, filter;
  DequantizeTerms<float> terms_float;    // outputs of float, half and bfloat16 calls
  DequantizeTerms<double> terms_double;  // of double calls
  int32_t channels = 1;                  // entries of the call: 1, or out_depth

  // The entry of output channel co (this one, per tensor).
  TFAPPROX_HOST_DEVICE const GpuQuant& ChannelQuant(int64_t co) const { return channels == 1 ? *this : this[co]; }
};

// lut_offset: added to every table entry (32768 for a table of signed products, else 0); channels: the
// entries of the call (1 per tensor).
TFAPPROX_HOST_DEVICE inline GpuQuant MakeGpuQuant(const QuantParams& input_q, const QuantParams& filter_q,
                                                  int64_t taps, int64_t lut_offset, int32_t channels = 1) {
  GpuQuant quant;
  quant.input = input_q;
  quant.filter = filter_q;
  quant.terms_float = DequantizeTerms<float>(input_q, filter_q, taps);
  quant.terms_double = DequantizeTerms<double>(input_q, filter_q, taps);
  quant.terms_float.acc_offset = quant.terms_double.acc_offset = lut_offset * taps;
  quant.channels = channels;
  return quant;
}

// The four range tensors of a call (device memory, of the call's element type) and its scheme.
struct GpuRanges {
  const void* input_min = nullptr;
  const void* input_max = nullptr;
  const void* filter_min = nullptr;  // filter_channels elements each: 1, or out_depth (per output channel)
  const void* filter_max = nullptr;
  int filter_channels = 1;
  int input_bits = 8, filter_bits = 8;  // in [kMinNumBits, kMaxNumBits]
  bool input_symmetric = false, filter_symmetric = false;
  bool input_narrow = false, filter_narrow = false;  // symmetric without the lowest code
};

enum class GpuDtype { kFloat, kDouble, kHalf, kBfloat16 };

// Writes MakeGpuQuant of NudgeRange's parameters for `ranges` into quant[0 .. filter_channels - 1]
// (device memory) on the stream. A range NudgeRange refuses sets flags[kGpuFlagInvalidRange]
// (GpuPropagateNan then makes every output NaN) and quantizes with the zero-width range.
std::string GpuQuantFromRanges(GpuDtype dtype, const GpuRanges& ranges, int64_t taps, int64_t lut_offset,
                               GpuQuant* quant, int* flags, cudaStream_t stream);

// Runs the op on `stream`. T is float, double, __half or __nv_bfloat16 (Eigen::half and
// tensorflow::bfloat16 have the same bits). input is NHWC or NCHW as shape.data_format says, filter
// HWIO, quant the call's quantization (its quant->channels entries) and lut_device the 65536-entry table, both in device memory,
// output in the input's data format. Returns "" when the work was queued, otherwise what went wrong (a
// CUDA error, a shape this device cannot run); never aborts. The shape must come from ComputeConvShape.
template <typename T>
std::string ApproxConvGpu(const ConvShape& shape, const T* input, const T* filter, const GpuQuant* quant,
                          const uint16_t* lut_device, T* output, cudaStream_t stream,
                          const GpuOptions& options = GpuOptions());

// The same on untyped memory, for callers compiled against other CUDA headers (the TensorFlow glue sees
// the CUDA headers bundled with TensorFlow): only plain pointers and cudaStream_t cross this boundary.
std::string ApproxConvGpuUntyped(GpuDtype dtype, const ConvShape& shape, const void* input, const void* filter,
                                 const GpuQuant* quant, const uint16_t* lut_device, void* output, cudaStream_t stream,
                                 const GpuOptions& options = GpuOptions());

// The workspace a call with these options needs on the current device (0: none; a few MB at most
// beyond 2 bytes per filter element).
size_t GpuWorkspaceBytes(const ConvShape& shape, const GpuOptions& options = GpuOptions());

// What a call with these options runs for this shape on the current device (kernel kAuto resolved).
struct GpuPlan {
  GpuKernel kernel = GpuKernel::kDirect;
  bool split_k = false;
};
GpuPlan ChooseGpuPlan(const ConvShape& shape, const GpuOptions& options = GpuOptions());
const char* GpuKernelName(GpuKernel kernel);

// The Keras layers' batch range of x (quantize.h's RangeKeys / RangeFromKeys, the host's bits): x holds
// `rows` rows of `channels` float32 values; min[c] and max[c] (device memory) get channel c's min and max
// widened to hold 0, NaN both where a value is NaN. `scratch` holds GpuRangeScratchBytes(channels) bytes of
// device memory, which this zeroes first unless the caller did (scratch_zeroed: one memset for several
// ranges). Launches on `stream`; never waits.
size_t GpuRangeScratchBytes(int64_t channels);
std::string GpuRangeWithZero(const float* x, int64_t rows, int64_t channels, void* scratch, float* min, float* max,
                             cudaStream_t stream, bool scratch_zeroed = false);

// Special values, handled around ApproxConvGpu without waiting for the device: kGpuFlagCount device
// ints, zeroed by the caller before the first of these calls of an op call.
enum : int {
  kGpuFlagInputNan = 0,
  kGpuFlagFilterNan = 1,
  kGpuFlagInvalidRange = 2,
  kGpuFlagCount = 3
};

// Before the convolution: notes in flags whether input or filter hold a NaN.
std::string GpuScanNan(GpuDtype dtype, const ConvShape& shape, const void* input, const void* filter, int* flags,
                       cudaStream_t stream);
// After it: makes NaN the outputs that a NaN reaches (as PropagateNan on the CPU), or every output when a
// range was invalid. Returns at once on the device when no flag is set.
std::string GpuPropagateNan(GpuDtype dtype, const ConvShape& shape, const void* input, const void* filter,
                            void* output, const int* flags, cudaStream_t stream);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_H_
