// What the CPU and GPU kernels of ApproxRangeWithZero share: the attribute, the shape checks and the
// outputs. The arithmetic is the core's (quantize.h: RangeKeys / RangeFromKeys; range_gpu.cu).
#ifndef TENSORFLOW_APPROX_CC_KERNELS_RANGE_OP_H_
#define TENSORFLOW_APPROX_CC_KERNELS_RANGE_OP_H_

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {

class ApproxRangeWithZeroBase : public OpKernel {
 public:
  explicit ApproxRangeWithZeroBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("per_channel", &per_channel_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, !per_channel_ || x.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat("x must have at least one axis with per_channel, got shape ",
                                                        x.shape().DebugString())));
    const int64_t channels = per_channel_ ? x.dim_size(x.dims() - 1) : 1;
    const TensorShape range_shape = per_channel_ ? TensorShape({channels}) : TensorShape({});
    Tensor *min = nullptr, *max = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, range_shape, &min));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, range_shape, &max));
    if (channels == 0) return;
    Launch(ctx, x.flat<float>().data(), x.NumElements() / channels, channels, min->flat<float>().data(),
           max->flat<float>().data());
  }

 protected:
  // min[c], max[c] for c < channels from x's rows x channels values (min and max: the outputs' memory).
  virtual void Launch(OpKernelContext* ctx, const float* x, int64_t rows, int64_t channels, float* min,
                      float* max) = 0;

 private:
  bool per_channel_ = false;
};

}  // namespace tensorflow

#endif  // TENSORFLOW_APPROX_CC_KERNELS_RANGE_OP_H_
