// Thin OpKernel: reads attributes and tensors, validates them into InvalidArgument errors, and calls the
// framework-free core. No arithmetic here.
#include <algorithm>
#include <memory>
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

namespace tensorflow {

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
    if (this->Tracing()) this->Trace(shape, "CPU", tfapprox::CpuKernelName(shape), false);
    typename ApproxConv2DOpBase<T>::HostLut table;
    OP_REQUIRES_OK(ctx, this->HostTable(ctx, &table));
    tfapprox::ApproxConvCpu<T>(shape, input.flat<T>().data(), filter.flat<T>().data(), input_q,
                               tfapprox::FilterQuant(filter_q.data(), static_cast<int64_t>(filter_q.size())), table.lut, parallel_for, output->flat<T>().data(),
                               tfapprox::CpuKernel::kFast, table.offset);
  }
};

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

}  // namespace tensorflow
