// The geometry of one convolution, resolved from the op's attributes and tensor shapes.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_SHAPE_H_
#define TENSORFLOW_APPROX_CC_CORE_CONV_SHAPE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tfapprox {

enum class DataFormat { kNHWC, kNCHW };
enum class Padding { kSame, kValid, kExplicit };

// The op's attributes, as given (strides, dilations and explicit_paddings in data_format order).
struct ConvAttrs {
  std::vector<int64_t> strides;
  std::vector<int64_t> dilations;
  Padding padding = Padding::kValid;
  std::vector<int64_t> explicit_paddings;  // 8 values, (before, after) per dimension
  DataFormat data_format = DataFormat::kNHWC;
};

struct ConvShape {
  int64_t batch = 0, in_h = 0, in_w = 0, in_depth = 0;
  int64_t filter_h = 0, filter_w = 0, filter_depth = 0, out_depth = 0;  // filter is HWIO
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0;  // bottom/right padding follows from out_h/out_w
  int64_t out_h = 0, out_w = 0;
  DataFormat data_format = DataFormat::kNHWC;

  int64_t groups() const { return in_depth / filter_depth; }
  int64_t out_depth_per_group() const { return out_depth / groups(); }
  int64_t taps() const { return filter_h * filter_w * filter_depth; }  // K: products per output
  int64_t out_pixels() const { return batch * out_h * out_w; }
  int64_t input_elements() const { return batch * in_h * in_w * in_depth; }
  int64_t filter_elements() const { return filter_h * filter_w * filter_depth * out_depth; }
  int64_t output_elements() const { return out_pixels() * out_depth; }
  int64_t lut_macs() const { return output_elements() * taps(); }
};

// A strided 1x1 filter that reads no padding reads input pixel (oh * stride_h, ow * stride_w) alone for
// output pixel (oh, ow): the same convolution as a 1x1 filter at strides 1 over those pixels (an out_h x
// out_w picture per image). True, with that convolution's shape in *dense, where s is such a filter.
bool SubsampledShape(const ConvShape& s, ConvShape* dense);

// Largest element count of any tensor the kernels index (int32 indices on the GPU).
constexpr int64_t kMaxTensorElements = (int64_t{1} << 31) - 1;

// Validates attributes against the shapes and resolves the geometry. input_dims are in data_format
// order, filter_dims HWIO. Every dimension, stride, dilation and explicit padding must be at most
// kMaxTensorElements (larger ones are rejected before any arithmetic, so nothing overflows).
// Returns "" on success, otherwise a message naming the offending argument and quoting its values
// as given.
std::string ValidateConvAttrs(const ConvAttrs& attrs);
std::string ComputeConvShape(const int64_t input_dims[4], const int64_t filter_dims[4],
                             const ConvAttrs& attrs, ConvShape* shape);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_SHAPE_H_
