// Registers ApproxConv2DWithMinMaxVars with the seed's inputs and attributes.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

REGISTER_OP("ApproxConv2DWithMinMaxVars")
    .Input("input: T")
    .Input("filter: T")
    .Input("input_min: T")
    .Input("input_max: T")
    .Input("filter_min: T")
    .Input("filter_max: T")
    .Output("output: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("strides: list(int)")
    .Attr("num_bits: int = 8")
    .Attr("mul_map_file: string = ''")
    .Attr("padding: {'SAME', 'VALID', 'EXPLICIT'}")
    .Attr("explicit_paddings: list(int) = []")
    .Attr("data_format: {'NHWC', 'NCHW'} = 'NHWC'")
    .Attr("dilations: list(int) = [1, 1, 1, 1]")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      for (int i = 2; i < 6; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
      return shape_inference::Conv2DShapeWithExplicitPadding(c);
    })
    .Doc(R"doc(
Conv2D whose products come from an approximate 8-bit multiplier table, after fake quantization of
input and filter with their own [min, max] ranges (FakeQuantWithMinMaxVars, narrow_range = false).

mul_map_file: "" for the exact product, otherwise a file of 65536 little-endian uint16,
  entry (a << 8) | w being the product of activation code a and weight code w.
num_bits: 2..8; codes stay below 2^num_bits and index the same table.
)doc");

}  // namespace tensorflow
