// Registers the convolution ops: ApproxConv2DWithMinMaxVars (the seed's interface, the table named by a file
// attribute), ApproxConv2DWithTable (the same computation with the table as an input tensor, so a model
// carries its table and a new table needs no new kernel) and ApproxConv2DWithBatchRanges (the latter with
// its ranges computed inside); the range, table-file and decomposition ops. docs/semantics.md is the
// contract.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tensorflow {

namespace {

// Scalars; with per_channel_filter, filter_min and filter_max may instead be vectors of out_depth values.
absl::Status CheckRanges(shape_inference::InferenceContext* c, bool per_channel_filter) {
  shape_inference::ShapeHandle unused;
  for (int i = 2; i < 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  for (int i = 4; i < 6; ++i) {
    if (!per_channel_filter) {
      TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
      continue;
    }
    TF_RETURN_IF_ERROR(c->WithRankAtMost(c->input(i), 1, &unused));
    if (c->RankKnown(c->input(i)) && c->Rank(c->input(i)) == 1 && c->RankKnown(c->input(1)) &&
        c->Rank(c->input(1)) == 4) {
      shape_inference::DimensionHandle merged;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(c->input(i), 0), c->Dim(c->input(1), 3), &merged));
    }
  }
  return absl::OkStatus();
}

// What both convolution ops declare: the operands, their ranges, the output, the geometry attributes.
register_op::OpDefBuilderWrapper ConvOp(const char* name) {
  register_op::OpDefBuilderWrapper op(name);
  op.Input("input: T")
      .Input("filter: T")
      .Input("input_min: T")
      .Input("input_max: T")
      .Input("filter_min: T")
      .Input("filter_max: T")
      .Output("output: T")
      .Attr("T: {half, bfloat16, float, double}")
      .Attr("strides: list(int)")
      .Attr("num_bits: int = 8")
      .Attr("padding: {'SAME', 'VALID', 'EXPLICIT'}")
      .Attr("explicit_paddings: list(int) = []")
      .Attr("data_format: {'NHWC', 'NCHW'} = 'NHWC'")
      .Attr("dilations: list(int) = [1, 1, 1, 1]");
  return op;
}

// REGISTER_OP's own form, the common part built by ConvOp.
const InitOnStartupMarker register_file_op TF_ATTRIBUTE_UNUSED = InitOnStartupMarker{} <<
    ConvOp("ApproxConv2DWithMinMaxVars")
        .Attr("mul_map_file: string = ''")
        .SetShapeFn([](shape_inference::InferenceContext* c) {
          TF_RETURN_IF_ERROR(CheckRanges(c, /*per_channel_filter=*/false));
          return shape_inference::Conv2DShapeWithExplicitPadding(c);
        })
        .Doc(R"doc(
Conv2D whose products come from an approximate 8-bit multiplier table, after fake quantization of
input and filter with their own [min, max] ranges (FakeQuantWithMinMaxVars, narrow_range = false).

mul_map_file: "" for the exact product, otherwise a file of 65536 little-endian uint16,
  entry (a << 8) | w being the product of activation code a and weight code w. The file is read
  as it is at each call (a rewritten file is used from the next call on).
num_bits: 2..8; codes stay below 2^num_bits and index the same table.
)doc");

const InitOnStartupMarker register_table_op TF_ATTRIBUTE_UNUSED = InitOnStartupMarker{} <<
    ConvOp("ApproxConv2DWithTable")
        .Input("table: Ttable")
        .Attr("Ttable: {uint16, int16, float} = DT_UINT16")
        .Attr("filter_num_bits: int = -1")
        .Attr("input_scheme: {'asymmetric', 'symmetric', 'symmetric_narrow'} = 'asymmetric'")
        .Attr("filter_scheme: {'asymmetric', 'symmetric', 'symmetric_narrow'} = 'asymmetric'")
        .Attr("gradient: {'ste', 'table'} = 'ste'")
        .SetShapeFn([](shape_inference::InferenceContext* c) {
          TF_RETURN_IF_ERROR(CheckRanges(c, /*per_channel_filter=*/true));
          shape_inference::ShapeHandle table;
          TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 1, &table));
          shape_inference::DimensionHandle entries;
          TF_RETURN_IF_ERROR(c->WithValue(c->Dim(table, 0), tfapprox::kLutEntries, &entries));
          return shape_inference::Conv2DShapeWithExplicitPadding(c);
        })
        .Doc(R"doc(
ApproxConv2DWithMinMaxVars with the multiplier given as a tensor instead of a file.

table: 65536 products, entry (a << 8) | w being the product of activation code a and weight code
  w: uint16, int16 (signed products), or float32 holding integers in [0, 65535] (the
  dtype of the Keras layers' variable). A float32 entry that is not such an integer is an
  InvalidArgument error. The GPU kernel takes the table in host memory (keep it there, e.g. in a CPU
  variable, as the layers do; one on the GPU is copied to the host at each call, a wait for the device):
  it is checked and arranged on the host and matched against the registered decompositions.
filter_num_bits: the filter's code width (2..8); -1: num_bits.
input_scheme, filter_scheme: "asymmetric" (TensorFlow's fake quantization) or "symmetric" (signed
  codes, zero point 0, scale max(|min|, |max|) / (2^(b-1) - 1)), or "symmetric_narrow" (the same
  without the lowest code -2^(b-1), as TensorFlow's narrow_range); a signed code indexes the table by
  its two's-complement byte.
gradient: what the registered gradient computes (the forward pass ignores it): "ste", the accurate
  convolution's at the operands (straight-through), or "table", the derivatives of the table itself
  (tensorflow_approx/python/ops/table_gradient.py).
filter_min, filter_max: scalars, or vectors of the filter's out_depth values (a range per output
  channel, as fake_quant_with_min_max_vars_per_channel).
)doc");

// The layers' inference in "batch" range mode as one op: ApproxConv2DWithTable on float32 operands with the
// ranges ApproxRangeWithZero gives, computed inside (outputs 1-4), so that a layer is one op, not three.
const InitOnStartupMarker register_batch_ranges_op TF_ATTRIBUTE_UNUSED = InitOnStartupMarker{} <<
    register_op::OpDefBuilderWrapper("ApproxConv2DWithBatchRanges")
        .Input("input: float")
        .Input("filter: float")
        .Input("table: Ttable")
        .Output("output: float")
        .Output("input_min: float")
        .Output("input_max: float")
        .Output("filter_min: float")
        .Output("filter_max: float")
        .Attr("strides: list(int)")
        .Attr("num_bits: int = 8")
        .Attr("padding: {'SAME', 'VALID', 'EXPLICIT'}")
        .Attr("explicit_paddings: list(int) = []")
        .Attr("data_format: {'NHWC', 'NCHW'} = 'NHWC'")
        .Attr("dilations: list(int) = [1, 1, 1, 1]")
        .Attr("Ttable: {uint16, int16, float} = DT_UINT16")
        .Attr("filter_num_bits: int = -1")
        .Attr("input_scheme: {'asymmetric', 'symmetric', 'symmetric_narrow'} = 'asymmetric'")
        .Attr("filter_scheme: {'asymmetric', 'symmetric', 'symmetric_narrow'} = 'asymmetric'")
        .Attr("gradient: {'ste', 'table'} = 'ste'")
        .Attr("filter_per_channel: bool = false")
        .SetShapeFn([](shape_inference::InferenceContext* c) {
          shape_inference::ShapeHandle table, filter;
          TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &table));
          shape_inference::DimensionHandle entries;
          TF_RETURN_IF_ERROR(c->WithValue(c->Dim(table, 0), tfapprox::kLutEntries, &entries));
          TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &filter));
          bool per_channel = false;
          TF_RETURN_IF_ERROR(c->GetAttr("filter_per_channel", &per_channel));
          c->set_output(1, c->Scalar());
          c->set_output(2, c->Scalar());
          const shape_inference::ShapeHandle filter_range = per_channel ? c->Vector(c->Dim(filter, 3)) : c->Scalar();
          c->set_output(3, filter_range);
          c->set_output(4, filter_range);
          return shape_inference::Conv2DShapeWithExplicitPadding(c);  // sets output 0
        })
        .Doc(R"doc(
ApproxConv2DWithTable on float32 operands whose four ranges the op computes itself, as
ApproxRangeWithZero gives them: input_min, input_max of the whole input, filter_min, filter_max of the
whole filter or, with filter_per_channel, per output channel. They are also its outputs 1-4. The Keras
layers' inference in range_mode "batch": one op per layer instead of three (two range ops and the
convolution). A NaN or infinity in input or filter makes its range one the convolution refuses
(InvalidArgument on the CPU, every output NaN on the GPU), as with the three ops. The gradient is
ApproxConv2DWithTable's at the computed ranges (none for the table and the ranges).
)doc");

}  // namespace

REGISTER_OP("ApproxRegisterTableDecomposition")
    .Input("table: Ttable")
    .Input("u: int8")
    .Input("v: int8")
    .Input("alpha: int32")
    .Input("beta: int32")
    .Input("c0: int64")
    .Attr("Ttable: {uint16, int16, float}")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs)
    .Doc(R"doc(
Registers, for this process, an exact decomposition of a table (tensorflow_approx.register_decomposition
finds it): products[(a << 8) | w] = c0 + alpha[a] + beta[w] + sum_r u[r, a] * v[r, w] over its codes (the
signed products of an int16 table). It is checked on all 65536 pairs (InvalidArgument otherwise); the
CPU and GPU kernels of ApproxConv2DWithTable and ApproxConv2DWithMinMaxVars then find it by the table's
contents and run an int8 GEMM (AVX-512 VNNI; int8 tensor cores) instead of the lookups where that is
faster (TFAPPROX_TRACE says so).
)doc");

REGISTER_OP("ApproxRangeWithZero")
    .Input("x: float")
    .Output("min: float")
    .Output("max: float")
    .Attr("per_channel: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      bool per_channel = false;
      TF_RETURN_IF_ERROR(c->GetAttr("per_channel", &per_channel));
      shape_inference::ShapeHandle range = c->Scalar();
      if (per_channel) {
        shape_inference::ShapeHandle x;
        TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
        range = c->RankKnown(x) ? c->Vector(c->Dim(x, -1)) : c->Vector(c->UnknownDim());
      }
      c->set_output(0, range);
      c->set_output(1, range);
      return absl::OkStatus();
    })
    .Doc(R"doc(
The quantization range of the Keras layers' "batch" range mode in one pass: min and max of x widened to
hold 0 (min <= 0 <= max), both NaN where x holds a NaN, the same bits on the CPU and the GPU as
tf.minimum(tf.reduce_min(x), 0) and tf.maximum(tf.reduce_max(x), 0) give in value (a zero is +0; a
subnormal counts as it is, where TensorFlow's CPU reductions flush it to zero). With
per_channel, one range per index of x's last axis (a filter's output channels), over all other axes.
A range is a constant of the quantization: the op has no gradient.
)doc");

REGISTER_OP("ApproxReadMulMap")
    .Input("mul_map_file: string")
    .Output("table: uint16")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      c->set_output(0, c->Vector(tfapprox::kLutEntries));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The table of a mul_map_file as it is now ("" = the exact product), as ApproxConv2DWithMinMaxVars
reads it (same checks, same bounded cache). The path is an input, not an attribute, so one kernel
serves every path: eager calls of the file op go through this and ApproxConv2DWithTable, and a
program using thousands of table files does not keep a kernel per path.
)doc");

}  // namespace tensorflow
