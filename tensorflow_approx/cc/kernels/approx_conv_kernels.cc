// Thin OpKernel: reads attributes and tensors, validates them into InvalidArgument errors, and calls the
// framework-free core. No arithmetic here.
#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/util/work_sharder.h"
#include "tensorflow_approx/cc/core/approx_conv_cpu.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"
#include "tensorflow_approx/cc/kernels/approx_conv_op_base.h"
#include "tensorflow_approx/cc/kernels/range_op.h"

namespace tensorflow {

namespace {

// ApproxRangeWithZero's ranges of x (rows x channels values, channels >= 1) into min[c], max[c]: shards of
// rows on TensorFlow's CPU threads, each with its own keys, merged after (maxima: any split gives the same
// keys).
void CpuRangeWithZero(OpKernelContext* ctx, const float* x, int64_t rows, int64_t channels, float* min, float* max) {
  std::vector<int32_t> pos(channels, 0), neg(channels, 0);
  std::mutex mu;
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  Shard(workers->num_threads, workers->workers, rows, channels, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> p(channels, 0), n(channels, 0);
    tfapprox::RangeKeys(x + begin * channels, end - begin, channels, p.data(), n.data());
    std::lock_guard<std::mutex> lock(mu);
    for (int64_t c = 0; c < channels; ++c) {
      pos[c] = std::max(pos[c], p[c]);
      neg[c] = std::max(neg[c], n[c]);
    }
  });
  for (int64_t c = 0; c < channels; ++c) tfapprox::RangeFromKeys(pos[c], neg[c], min + c, max + c);
}

}  // namespace

template <typename T>
class ApproxConv2DCpuOp : public ApproxConv2DOpBase<T> {
 public:
  using ApproxConv2DOpBase<T>::ApproxConv2DOpBase;

 protected:
  void Launch(OpKernelContext* ctx, const tfapprox::ConvShape& shape, const Tensor& input,
              const Tensor& filter, const tfapprox::QuantParams& input_q,
              const std::vector<tfapprox::QuantParams>& filter_q, Tensor* output) override {
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tfapprox::ParallelFor parallel_for =
        [workers](int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
          Shard(workers->num_threads, workers->workers, total, cost, fn);
        };
    std::shared_ptr<const typename ApproxConv2DOpBase<T>::HostLut> table;
    OP_REQUIRES_OK(ctx, this->PreparedTable(ctx, &table));
    // UseDecomposed (PreferDecomposed) decides for this shape.
    const tfapprox::TableDecomposition* decomposition = table->decomposed ? &table->decomposition.view : nullptr;
    if (this->Tracing()) {
      this->Trace(shape, "CPU",
                  tfapprox::UseDecomposed(shape, decomposition)
                      ? tfapprox::DecomposedKernelName(tfapprox::FastKernelShape(shape), decomposition->terms)
                      : tfapprox::CpuKernelName(tfapprox::FastKernelShape(shape)),
                  false);
    }
    tfapprox::ApproxConvCpu<T>(shape, input.flat<T>().data(), filter.flat<T>().data(), input_q,
                               tfapprox::FilterQuant(filter_q.data(), static_cast<int64_t>(filter_q.size())),
                               table->lut, parallel_for, output->flat<T>().data(), tfapprox::CpuKernel::kFast,
                               table->offset, decomposition);
  }

  void ComputeBatchRanges(OpKernelContext* ctx, const Tensor& input, const Tensor& filter,
                          Tensor* const bounds[4]) override {
    CpuRangeWithZero(ctx, input.flat<float>().data(), input.NumElements(), 1, bounds[0]->flat<float>().data(),
                     bounds[1]->flat<float>().data());
    const int64_t channels = bounds[2]->NumElements();  // out_depth per channel, else 1
    if (channels == 0) return;
    CpuRangeWithZero(ctx, filter.flat<float>().data(), filter.NumElements() / channels, channels,
                     bounds[2]->flat<float>().data(), bounds[3]->flat<float>().data());
  }
};

class ApproxRangeWithZeroCpuOp : public ApproxRangeWithZeroBase {
 public:
  using ApproxRangeWithZeroBase::ApproxRangeWithZeroBase;

 protected:
  void Launch(OpKernelContext* ctx, const float* x, int64_t rows, int64_t channels, float* min,
              float* max) override {
    CpuRangeWithZero(ctx, x, rows, channels, min, max);
  }
};
REGISTER_KERNEL_BUILDER(Name("ApproxRangeWithZero").Device(DEVICE_CPU), ApproxRangeWithZeroCpuOp);

class ApproxReadMulMapOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& path = ctx->input(0);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(path.shape()),
                absl::InvalidArgumentError(absl::StrCat("mul_map_file must be a scalar string, got shape ",
                                                        path.shape().DebugString())));
    tfapprox::LutRef table;
    const std::string error = tfapprox::LookupMulMap(std::string(path.scalar<tstring>()()), &table);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({tfapprox::kLutEntries}), &output));
    std::copy(table.lut->begin(), table.lut->end(), output->flat<uint16_t>().data());
  }
};
REGISTER_KERNEL_BUILDER(Name("ApproxReadMulMap").Device(DEVICE_CPU), ApproxReadMulMapOp);

class ApproxRegisterTableDecompositionOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor &table = ctx->input(0), &u = ctx->input(1), &v = ctx->input(2), &alpha = ctx->input(3),
                 &beta = ctx->input(4), &c0 = ctx->input(5);
    OP_REQUIRES(ctx, table.dims() == 1 && table.NumElements() == tfapprox::kLutEntries,
                absl::InvalidArgumentError(absl::StrCat("table must have shape [65536], got ",
                                                        table.shape().DebugString())));
    OP_REQUIRES(ctx, u.dims() == 2 && u.dim_size(1) == 256 && u.shape() == v.shape() && u.dim_size(0) <= 64,
                absl::InvalidArgumentError(absl::StrCat("u and v must have the same shape [terms <= 64, 256], got ",
                                                        u.shape().DebugString(), " and ", v.shape().DebugString())));
    OP_REQUIRES(ctx, alpha.NumElements() == 256 && beta.NumElements() == 256 && c0.NumElements() == 1,
                absl::InvalidArgumentError("alpha and beta must have 256 elements and c0 one"));
    std::vector<uint16_t> converted;
    const uint16_t* lut = nullptr;
    int64_t offset = 0;
    OP_REQUIRES_OK(ctx, TableTensorLut(table, &converted, &lut, &offset));
    const std::string error = tfapprox::RegisterDecomposition(
        lut, offset, static_cast<int>(u.dim_size(0)), u.flat<int8_t>().data(), v.flat<int8_t>().data(),
        alpha.flat<int32_t>().data(), beta.flat<int32_t>().data(), c0.flat<int64_t>()(0));
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError("ApproxRegisterTableDecomposition: " + error));
  }
};
REGISTER_KERNEL_BUILDER(Name("ApproxRegisterTableDecomposition").Device(DEVICE_CPU),
                        ApproxRegisterTableDecompositionOp);

#define REGISTER_CPU(T)                                                                       \
  REGISTER_KERNEL_BUILDER(                                                                    \
      Name("ApproxConv2DWithMinMaxVars").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
      ApproxConv2DCpuOp<T>);                                                                  \
  REGISTER_KERNEL_BUILDER(                                                                    \
      Name("ApproxConv2DWithTable").Device(DEVICE_CPU).TypeConstraint<T>("T"),                \
      ApproxConv2DCpuOp<T>);
REGISTER_CPU(Eigen::half);
REGISTER_CPU(bfloat16);
REGISTER_CPU(float);
REGISTER_CPU(double);
#undef REGISTER_CPU
REGISTER_KERNEL_BUILDER(Name("ApproxConv2DWithBatchRanges").Device(DEVICE_CPU), ApproxConv2DCpuOp<float>);

}  // namespace tensorflow
