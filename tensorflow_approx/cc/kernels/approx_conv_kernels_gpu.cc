// GPU OpKernels of the convolution ops: the shared validation of ApproxConv2DOpBase, the quantization made on
// the device, then the framework-free CUDA core (tensorflow_approx/cc/core/conv_gpu.h, and
// conv_gpu_decomposed.h for a registered decomposition) on TensorFlow's stream: NaN scan, convolution,
// NaN propagation, nothing waiting for the device. A range the host would refuse makes every output NaN
// here (the device cannot raise an error without a wait).
//
// The table stays on the host (ApproxConv2DWithTable takes it in host memory; the Keras layers keep it in
// a CPU variable): it is checked and arranged there as the CPU kernel does (a bad float32 table is an
// InvalidArgument error here too), matched against the registered decompositions, and copied to the
// device with the call's work; both are kept while the table stays the same. Built only when
// ./configure.sh found nvcc (Bazel config :using_cuda); the library still loads in a CPU-only
// TensorFlow, where this registration simply stays unused.
#if GOOGLE_CUDA

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/kernels/approx_conv_op_base.h"
#include "tensorflow_approx/cc/kernels/range_op.h"

namespace tensorflow {

template <typename T>
struct GpuDtypeOf;
template <>
struct GpuDtypeOf<float> {
  static constexpr tfapprox::GpuDtype value = tfapprox::GpuDtype::kFloat;
};
template <>
struct GpuDtypeOf<double> {
  static constexpr tfapprox::GpuDtype value = tfapprox::GpuDtype::kDouble;
};
template <>
struct GpuDtypeOf<Eigen::half> {  // same bits as __half
  static constexpr tfapprox::GpuDtype value = tfapprox::GpuDtype::kHalf;
};
template <>
struct GpuDtypeOf<bfloat16> {  // same bits as __nv_bfloat16
  static constexpr tfapprox::GpuDtype value = tfapprox::GpuDtype::kBfloat16;
};

absl::Status CudaStatus(const char* what, cudaError_t e) {
  return e == cudaSuccess ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat("ApproxConv2D: ", what, ": ", cudaGetErrorString(e)));
}

absl::Status CoreStatus(const std::string& error) {
  // CUDA failures are internal; anything else is a shape these kernels cannot take.
  if (error.empty()) return absl::OkStatus();
  return error.rfind("CUDA error", 0) == 0 ? absl::InternalError(error) : absl::InvalidArgumentError(error);
}

// The thread running Compute need not have the kernel's GPU current: makes current the GPU holding
// `device_memory` (an output of the call), for the runtime calls that follow, and names it in *device.
absl::Status SetDeviceOf(const void* device_memory, int* device) {
  cudaPointerAttributes attributes;
  const cudaError_t e = cudaPointerGetAttributes(&attributes, device_memory);
  if (e != cudaSuccess || attributes.type != cudaMemoryTypeDevice) {
    return absl::InternalError(std::string("tensorflow_approx GPU kernel: an output is not device memory: ") +
                               cudaGetErrorString(e));
  }
  *device = attributes.device;
  return CudaStatus("cudaSetDevice", cudaSetDevice(attributes.device));
}

// Copies host memory to a new device temporary on the stream. From a pageable copy of our own: the driver
// stages pageable memory before cudaMemcpyAsync returns, so the source may change as soon as this returns
// (a tensor's buffer may be pinned, which the copy would read only when the stream reaches it).
absl::Status UploadTemp(OpKernelContext* ctx, const void* src, int64_t bytes, cudaStream_t stream, Tensor* temp) {
  const std::vector<uint8_t> staged(static_cast<const uint8_t*>(src), static_cast<const uint8_t*>(src) + bytes);
  TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_UINT8, TensorShape({bytes}), temp));
  return CudaStatus("cudaMemcpyAsync", cudaMemcpyAsync(temp->flat<uint8_t>().data(), staged.data(), bytes,
                                                       cudaMemcpyHostToDevice, stream));
}

// The GPU's choice of the decomposed kernel, per call: a shape the tensor-core kernel takes and where it
// beats the lookups (GpuPreferDecomposed, measured on the H200). A decomposition
// without product terms runs as one zero term.
bool GpuDecomposedRule(const tfapprox::ConvShape& shape, int terms) {
  const int t = std::max(terms, 1);
  return tfapprox::GpuDecomposedSupports(shape, t).empty() && tfapprox::GpuPreferDecomposed(shape, t);
}

// A host decomposition on the device, in a temporary (the core's layout, GpuDecompositionPack).
absl::Status UploadDecomposition(OpKernelContext* ctx, const tfapprox::TableDecomposition& d, cudaStream_t stream,
                                 Tensor* temp, tfapprox::GpuDecomposition* out) {
  std::vector<unsigned char> packed;
  TF_RETURN_IF_ERROR(CoreStatus(tfapprox::GpuDecompositionPack(d, &packed)));
  TF_RETURN_IF_ERROR(UploadTemp(ctx, packed.data(), static_cast<int64_t>(packed.size()), stream, temp));
  *out = tfapprox::GpuDecompositionAt(d, temp->flat<uint8_t>().data());
  return absl::OkStatus();
}

// A table on the device as one call uses it: the uint16 table in the kernels' codes (lut) and the same by
// weight code (lut_by_weight, for the columns kernel: transposed once per table here, not per call), the
// offset its entries carry, and its registered decomposition (decomposed), rearranged likewise; the
// buffers keep the device memory alive.
struct TableOnDevice {
  const uint16_t* lut = nullptr;
  const uint16_t* lut_by_weight = nullptr;
  int64_t offset = 0;
  bool decomposed = false;
  tfapprox::GpuDecomposition decomposition;
  Tensor lut_buffer, decomposition_buffer;
};

template <typename T>
class ApproxConv2DGpuOp : public ApproxConv2DOpBase<T> {
 public:
  using ApproxConv2DOpBase<T>::ApproxConv2DOpBase;

 protected:
  // The call's table (PreparedTable, a file or the input) on the device, with its registered
  // decomposition: copied with the call's work when the prepared table is new, then kept for the next
  // calls while it and the device stay the same. Keeping it is safe: calls of one GPU run on one compute
  // stream, in order, so a replaced buffer is freed only after the calls queued before that read it.
  absl::Status TableOnDeviceFor(OpKernelContext* ctx, int device, cudaStream_t stream, TableOnDevice* out) {
    std::shared_ptr<const typename ApproxConv2DOpBase<T>::HostLut> host;
    TF_RETURN_IF_ERROR(this->PreparedTable(ctx, &host));
    {
      std::lock_guard<std::mutex> lock(table_mu_);
      if (cached_host_ == host && cached_device_ == device) {
        *out = cached_;
        return absl::OkStatus();
      }
    }
    TableOnDevice table;
    table.offset = host->offset;
    std::vector<uint16_t> both(2 * tfapprox::kLutEntries);  // [table | by weight]: one upload
    std::copy(host->lut, host->lut + tfapprox::kLutEntries, both.begin());
    tfapprox::LutByWeight(host->lut, both.data() + tfapprox::kLutEntries);
    TF_RETURN_IF_ERROR(UploadTemp(ctx, both.data(), static_cast<int64_t>(both.size() * sizeof(uint16_t)), stream,
                                  &table.lut_buffer));
    table.lut = reinterpret_cast<const uint16_t*>(table.lut_buffer.flat<uint8_t>().data());
    table.lut_by_weight = table.lut + tfapprox::kLutEntries;  // 128 KB on: aligned as the buffer
    if (host->decomposed) {
      TF_RETURN_IF_ERROR(UploadDecomposition(ctx, host->decomposition.view, stream, &table.decomposition_buffer,
                                             &table.decomposition));
      table.decomposed = true;
    }
    std::lock_guard<std::mutex> lock(table_mu_);
    cached_ = table;
    cached_host_ = std::move(host);
    cached_device_ = device;
    *out = table;
    return absl::OkStatus();
  }

  bool RangesOnDevice() const override { return true; }

  // Both ranges with one memset of their keys, on the stream.
  void ComputeBatchRanges(OpKernelContext* ctx, const Tensor& input, const Tensor& filter,
                          Tensor* const bounds[4]) override {
    int device = 0;
    OP_REQUIRES_OK(ctx, SetDeviceOf(bounds[0]->data(), &device));
    cudaStream_t stream = ctx->eigen_gpu_device().stream();
    const int64_t channels = bounds[2]->NumElements();  // out_depth per channel, else 1
    const size_t input_keys = tfapprox::GpuRangeScratchBytes(1);
    const size_t bytes = input_keys + (channels > 0 ? tfapprox::GpuRangeScratchBytes(channels) : 0);
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_UINT8, TensorShape({static_cast<int64_t>(bytes)}), &scratch));
    uint8_t* keys = scratch.flat<uint8_t>().data();
    OP_REQUIRES_OK(ctx, CudaStatus("cudaMemsetAsync", cudaMemsetAsync(keys, 0, bytes, stream)));
    OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::GpuRangeWithZero(
                            input.flat<float>().data(), input.NumElements(), 1, keys, bounds[0]->flat<float>().data(),
                            bounds[1]->flat<float>().data(), stream, /*scratch_zeroed=*/true)));
    if (channels == 0) return;
    OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::GpuRangeWithZero(
                            filter.flat<float>().data(), filter.NumElements() / channels, channels, keys + input_keys,
                            bounds[2]->flat<float>().data(), bounds[3]->flat<float>().data(), stream,
                            /*scratch_zeroed=*/true)));
  }

  // Notes NaN in input or filter for GpuPropagateNan. Not with batch ranges: a NaN anywhere in an operand
  // makes its computed range NaN, which the quantization refuses, so every output is NaN anyway.
  absl::Status ScanNan(tfapprox::GpuDtype dtype, const tfapprox::ConvShape& shape, const void* in, const void* filt,
                       int* flags, cudaStream_t stream) const {
    if (this->batch_ranges()) return absl::OkStatus();
    return CoreStatus(tfapprox::GpuScanNan(dtype, shape, in, filt, flags, stream));
  }

  void Launch(OpKernelContext* ctx, const tfapprox::ConvShape& shape, const Tensor& input, const Tensor& filter,
              const tfapprox::QuantParams& /*unused: ranges on the device*/,
              const std::vector<tfapprox::QuantParams>& filter_q /*its size only*/, Tensor* output) override {
    void* out = output->flat<T>().data();
    int device = 0;
    OP_REQUIRES_OK(ctx, SetDeviceOf(out, &device));
    cudaStream_t stream = ctx->eigen_gpu_device().stream();

    Tensor flags;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_INT32, TensorShape({tfapprox::kGpuFlagCount}), &flags));
    int* flag_ptr = flags.flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CudaStatus("cudaMemsetAsync", cudaMemsetAsync(flag_ptr, 0, sizeof(int32_t) * tfapprox::kGpuFlagCount, stream)));

    // The table on the device, and its registered decomposition where the GPU's rule takes it for this
    // shape.
    TableOnDevice table;
    OP_REQUIRES_OK(ctx, TableOnDeviceFor(ctx, device, stream, &table));
    const bool decomposed = table.decomposed && GpuDecomposedRule(shape, table.decomposition.terms);
    const tfapprox::GpuDecomposition& decomposition = table.decomposition;
    const uint16_t* lut = table.lut;
    const int64_t lut_offset = table.offset;  // 32768 for a table of signed products

    // The quantization, made on the device from the range tensors: the stream never waits for the host.
    // One GpuQuant per filter range: one per tensor, or one per output channel.
    constexpr tfapprox::GpuDtype dtype = GpuDtypeOf<T>::value;
    const int64_t channels = static_cast<int64_t>(filter_q.size());
    Tensor quant;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_UINT8,
                                           TensorShape({channels * static_cast<int64_t>(sizeof(tfapprox::GpuQuant))}),
                                           &quant));
    tfapprox::GpuQuant* quant_ptr = reinterpret_cast<tfapprox::GpuQuant*>(quant.flat<uint8_t>().data());
    tfapprox::GpuRanges ranges;
    ranges.input_min = this->RangeTensor(ctx, 0).data();
    ranges.input_max = this->RangeTensor(ctx, 1).data();
    ranges.filter_min = this->RangeTensor(ctx, 2).data();
    ranges.filter_max = this->RangeTensor(ctx, 3).data();
    ranges.filter_channels = static_cast<int>(channels);
    ranges.input_bits = this->num_bits();
    ranges.filter_bits = this->filter_num_bits();
    ranges.input_symmetric = this->input_symmetric();
    ranges.filter_symmetric = this->filter_symmetric();
    ranges.input_narrow = this->input_narrow();
    ranges.filter_narrow = this->filter_narrow();
    OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::GpuQuantFromRanges(dtype, ranges, shape.taps(), lut_offset, quant_ptr,
                                                                flag_ptr, stream)));

    const void* in = input.flat<T>().data();
    const void* filt = filter.flat<T>().data();
    if (decomposed) {
      // Scratch of the decomposed kernel: the codes and int8 planes of both operands, the per-pixel sums.
      Tensor workspace;
      const size_t bytes = tfapprox::GpuDecomposedWorkspaceBytes(shape, decomposition.terms);
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_UINT8, TensorShape({static_cast<int64_t>(bytes)}), &workspace));
      OP_REQUIRES_OK(ctx, ScanNan(dtype, shape, in, filt, flag_ptr, stream));
      OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::ApproxConvGpuDecomposedUntyped(
                              dtype, shape, in, filt, quant_ptr, decomposition, out, stream,
                              workspace.flat<uint8_t>().data(), bytes)));
      if (this->Tracing()) {  // after the call: its first call for a shape tunes the plan (conv_gpu_decomposed.h)
        const tfapprox::GpuDecomposedPlan plan =
            tfapprox::GpuDecomposedPlanFor(shape, decomposition.terms, dtype);
        const std::string name =
            absl::StrCat("tensor-cores-decomposed-", decomposition.terms, "-terms-",
                         tfapprox::GpuDecomposedTileName(plan.tile),
                         plan.streaming ? "-beside-streaming-" : plan.beside ? "-beside-" : "-",
                         tfapprox::GpuKOrderName(plan.k_order), plan.tuned ? "-tuned" : "-rule");
        this->Trace(shape, "GPU", name.c_str(), false);
      }
      OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::GpuPropagateNan(dtype, shape, in, filt, out, flag_ptr, stream)));
      return;
    }

    // Scratch of the tiled kernels: the filter quantized once, and the sums of split tiles (a few MB).
    tfapprox::GpuOptions options;
    options.lut_by_weight = table.lut_by_weight;
    Tensor workspace;
    const size_t workspace_bytes = tfapprox::GpuWorkspaceBytes(shape, options);
    if (workspace_bytes > 0) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_UINT8, TensorShape({static_cast<int64_t>(workspace_bytes)}),
                                             &workspace));
      options.workspace = workspace.flat<uint8_t>().data();
      options.workspace_bytes = workspace_bytes;
    }
    if (this->Tracing()) {
      const tfapprox::GpuPlan plan = tfapprox::ChooseGpuPlan(shape, options);
      this->Trace(shape, "GPU", tfapprox::GpuKernelName(plan.kernel), plan.split_k);
    }
    OP_REQUIRES_OK(ctx, ScanNan(dtype, shape, in, filt, flag_ptr, stream));
    OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::ApproxConvGpuUntyped(dtype, shape, in, filt, quant_ptr, lut, out, stream,
                                                                  options)));
    OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::GpuPropagateNan(dtype, shape, in, filt, out, flag_ptr, stream)));
  }

 private:
  std::mutex table_mu_;
  TableOnDevice cached_;  // what the last new prepared table made, for the calls below
  std::shared_ptr<const typename ApproxConv2DOpBase<T>::HostLut> cached_host_;
  int cached_device_ = -1;
};

class ApproxRangeWithZeroGpuOp : public ApproxRangeWithZeroBase {
 public:
  using ApproxRangeWithZeroBase::ApproxRangeWithZeroBase;

 protected:
  void Launch(OpKernelContext* ctx, const float* x, int64_t rows, int64_t channels, float* min,
              float* max) override {
    int device = 0;
    OP_REQUIRES_OK(ctx, SetDeviceOf(min, &device));
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_UINT8, TensorShape({static_cast<int64_t>(
                                                         tfapprox::GpuRangeScratchBytes(channels))}),
                                           &scratch));
    OP_REQUIRES_OK(ctx, CoreStatus(tfapprox::GpuRangeWithZero(x, rows, channels, scratch.flat<uint8_t>().data(),
                                                              min, max, ctx->eigen_gpu_device().stream())));
  }
};
REGISTER_KERNEL_BUILDER(Name("ApproxRangeWithZero").Device(DEVICE_GPU), ApproxRangeWithZeroGpuOp);

// The ranges in device memory (GpuQuantFromRanges reads them there: no wait for the device); the table in
// host memory (see the top of this file).
#define REGISTER_GPU(T)                                                                                        \
  REGISTER_KERNEL_BUILDER(Name("ApproxConv2DWithMinMaxVars").Device(DEVICE_GPU).TypeConstraint<T>("T"),      \
                          ApproxConv2DGpuOp<T>);                                                               \
  REGISTER_KERNEL_BUILDER(                                                                                     \
      Name("ApproxConv2DWithTable").Device(DEVICE_GPU).TypeConstraint<T>("T").HostMemory("table"),             \
      ApproxConv2DGpuOp<T>);
REGISTER_GPU(Eigen::half);
REGISTER_GPU(bfloat16);
REGISTER_GPU(float);
REGISTER_GPU(double);
#undef REGISTER_GPU
REGISTER_KERNEL_BUILDER(Name("ApproxConv2DWithBatchRanges").Device(DEVICE_GPU).HostMemory("table"),
                        ApproxConv2DGpuOp<float>);

}  // namespace tensorflow

#endif  // GOOGLE_CUDA
