// GPU OpKernel: the shared validation of ApproxConv2DOpBase, then one call into the framework-free CUDA
// core (tensorflow_approx/cc/core/conv_gpu.h) on TensorFlow's stream. Built only when ./configure.sh
// found nvcc (Bazel config :using_cuda); the library still loads in a CPU-only TensorFlow, where this
// registration simply stays unused.
#if GOOGLE_CUDA

#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/kernels/approx_conv_op_base.h"

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

template <typename T>
class ApproxConv2DGpuOp : public ApproxConv2DOpBase<T> {
 public:
  explicit ApproxConv2DGpuOp(OpKernelConstruction* ctx) : ApproxConv2DOpBase<T>(ctx) {}

  ~ApproxConv2DGpuOp() override {
    if (lut_device_ != nullptr) {
      if (device_ >= 0) cudaSetDevice(device_);
      tfapprox::GpuLutFree(lut_device_);  // nothing to report to at destruction
    }
  }

 protected:
  void Launch(OpKernelContext* ctx, const tfapprox::ConvShape& shape, const Tensor& input, const Tensor& filter,
              const tfapprox::QuantParams& input_q, const tfapprox::QuantParams& filter_q,
              Tensor* output) override {
    void* out = output->flat<T>().data();
    // The thread running Compute need not have this kernel's GPU current: take it from the output.
    cudaPointerAttributes attributes;
    cudaError_t e = cudaPointerGetAttributes(&attributes, out);
    OP_REQUIRES(ctx, e == cudaSuccess && attributes.type == cudaMemoryTypeDevice,
                absl::InternalError(std::string("ApproxConv2DWithMinMaxVars: output is not device memory: ") +
                                    cudaGetErrorString(e)));
    e = cudaSetDevice(attributes.device);
    OP_REQUIRES(ctx, e == cudaSuccess, absl::InternalError(std::string("cudaSetDevice: ") + cudaGetErrorString(e)));

    const uint16_t* lut = nullptr;
    {
      // The table goes to the device once per kernel, on first use; concurrent Computes wait here.
      std::lock_guard<std::mutex> lock(mu_);
      if (lut_device_ == nullptr) {
        const std::string error = tfapprox::GpuLutUpload(this->lut()->data(), &lut_device_);
        OP_REQUIRES(ctx, error.empty(), absl::InternalError(error));
        device_ = attributes.device;
      }
      OP_REQUIRES(ctx, device_ == attributes.device,
                  absl::InternalError("ApproxConv2DWithMinMaxVars: kernel moved between GPUs"));
      lut = lut_device_;
    }
    cudaStream_t stream = ctx->eigen_gpu_device().stream();
    // Scratch of the tiled kernels: the filter quantized once, and the sums of split tiles (a few MB).
    tfapprox::GpuOptions options;
    Tensor workspace;
    const size_t workspace_bytes = tfapprox::GpuWorkspaceBytes(shape, options);
    if (workspace_bytes > 0) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_UINT8, TensorShape({static_cast<int64_t>(workspace_bytes)}),
                                             &workspace));
      options.workspace = workspace.flat<uint8_t>().data();
      options.workspace_bytes = workspace_bytes;
    }
    const std::string error = tfapprox::ApproxConvGpuUntyped(
        GpuDtypeOf<T>::value, shape, input.flat<T>().data(), filter.flat<T>().data(), input_q, filter_q, lut,
        out, stream, options);
    // CUDA failures are internal; anything else is a shape these kernels cannot take.
    OP_REQUIRES(ctx, error.empty(),
                error.rfind("CUDA error", 0) == 0 ? absl::InternalError(error) : absl::InvalidArgumentError(error));
  }

 private:
  std::mutex mu_;
  uint16_t* lut_device_ = nullptr;
  int device_ = -1;
};

#define REGISTER_GPU(T)                                              \
  REGISTER_KERNEL_BUILDER(Name("ApproxConv2DWithMinMaxVars")         \
                              .Device(DEVICE_GPU)                    \
                              .TypeConstraint<T>("T")                \
                              .HostMemory("input_min")               \
                              .HostMemory("input_max")               \
                              .HostMemory("filter_min")              \
                              .HostMemory("filter_max"),             \
                          ApproxConv2DGpuOp<T>);
REGISTER_GPU(Eigen::half);
REGISTER_GPU(bfloat16);
REGISTER_GPU(float);
REGISTER_GPU(double);
#undef REGISTER_GPU

}  // namespace tensorflow

#endif  // GOOGLE_CUDA
