// What the CPU and GPU OpKernels share: attribute parsing, the table, and validation of the tensors.
// Every misuse becomes an InvalidArgument error naming the argument; the device kernels only launch.
#ifndef TENSORFLOW_APPROX_CC_KERNELS_APPROX_CONV_OP_BASE_H_
#define TENSORFLOW_APPROX_CC_KERNELS_APPROX_CONV_OP_BASE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tensorflow {

template <typename T>
class ApproxConv2DOpBase : public OpKernel {
 public:
  explicit ApproxConv2DOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> strides, dilations;
    std::vector<int64_t> explicit_paddings;
    std::string padding, data_format, mul_map_file;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("explicit_paddings", &explicit_paddings));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("data_format", &data_format));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_bits", &num_bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mul_map_file", &mul_map_file));
    attrs_.strides.assign(strides.begin(), strides.end());
    attrs_.dilations.assign(dilations.begin(), dilations.end());
    attrs_.explicit_paddings = explicit_paddings;
    attrs_.padding = padding == "SAME"    ? tfapprox::Padding::kSame
                     : padding == "VALID" ? tfapprox::Padding::kValid
                                          : tfapprox::Padding::kExplicit;
    attrs_.data_format =
        data_format == "NCHW" ? tfapprox::DataFormat::kNCHW : tfapprox::DataFormat::kNHWC;
    const std::string attr_error = tfapprox::ValidateConvAttrs(attrs_);
    OP_REQUIRES(ctx, attr_error.empty(), absl::InvalidArgumentError(attr_error));
    OP_REQUIRES(ctx, num_bits_ >= tfapprox::kMinNumBits && num_bits_ <= tfapprox::kMaxNumBits,
                absl::InvalidArgumentError(absl::StrCat("num_bits must be in [", tfapprox::kMinNumBits, ", ",
                                        tfapprox::kMaxNumBits, "], got ", num_bits_)));
    // Loaded once per kernel; immutable afterwards, so concurrent Compute calls share it freely.
    const std::string lut_error = tfapprox::LoadMulMap(mul_map_file, &lut_);
    OP_REQUIRES(ctx, lut_error.empty(), absl::InvalidArgumentError(lut_error));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& filter = ctx->input(1);
    OP_REQUIRES(ctx, input.dims() == 4,
                absl::InvalidArgumentError(absl::StrCat("input must be 4-dimensional, got shape ",
                                        input.shape().DebugString())));
    OP_REQUIRES(ctx, filter.dims() == 4,
                absl::InvalidArgumentError(absl::StrCat("filter must be 4-dimensional [height, width, in_depth, "
                                        "out_depth], got shape ",
                                        filter.shape().DebugString())));
    float bounds[4];
    static const char* const kBoundNames[4] = {"input_min", "input_max", "filter_min",
                                               "filter_max"};
    for (int i = 0; i < 4; ++i) {
      const Tensor& bound = ctx->input(2 + i);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(bound.shape()),
                  absl::InvalidArgumentError(absl::StrCat(kBoundNames[i], " must be a scalar, got shape ",
                                          bound.shape().DebugString())));
      bounds[i] = static_cast<float>(bound.scalar<T>()());
    }
    tfapprox::QuantParams input_q, filter_q;
    std::string error = tfapprox::MakeQuantParams(bounds[0], bounds[1], num_bits_, kBoundNames[0],
                                                  kBoundNames[1], &input_q);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));
    error = tfapprox::MakeQuantParams(bounds[2], bounds[3], num_bits_, kBoundNames[2],
                                      kBoundNames[3], &filter_q);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));

    int64_t input_dims[4], filter_dims[4];
    for (int i = 0; i < 4; ++i) {
      input_dims[i] = input.dim_size(i);
      filter_dims[i] = filter.dim_size(i);
    }
    tfapprox::ConvShape shape;
    error = tfapprox::ComputeConvShape(input_dims, filter_dims, attrs_, &shape);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));

    TensorShape out_shape;
    if (shape.data_format == tfapprox::DataFormat::kNHWC) {
      out_shape = TensorShape({shape.batch, shape.out_h, shape.out_w, shape.out_depth});
    } else {
      out_shape = TensorShape({shape.batch, shape.out_depth, shape.out_h, shape.out_w});
    }
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &output));
    if (shape.output_elements() == 0) return;
    Launch(ctx, shape, input, filter, input_q, filter_q, output);
  }

 protected:
  virtual void Launch(OpKernelContext* ctx, const tfapprox::ConvShape& shape, const Tensor& input,
                      const Tensor& filter, const tfapprox::QuantParams& input_q,
                      const tfapprox::QuantParams& filter_q, Tensor* output) = 0;
  const tfapprox::Lut* lut() const { return lut_.get(); }

 private:
  tfapprox::ConvAttrs attrs_;
  int num_bits_ = 8;
  std::shared_ptr<const tfapprox::Lut> lut_;
};

}  // namespace tensorflow

#endif  // TENSORFLOW_APPROX_CC_KERNELS_APPROX_CONV_OP_BASE_H_
