#include "tensorflow_approx/cc/core/conv_shape.h"

#include <sstream>

namespace tfapprox {
namespace {

std::string Join(const int64_t* v, size_t n) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < n; ++i) out << (i ? ", " : "") << v[i];
  out << "]";
  return out.str();
}
std::string Join(const std::vector<int64_t>& v) { return Join(v.data(), v.size()); }

// Every dimension, stride, dilation and padding is at most this before any arithmetic on them (no
// tensor this op indexes has a larger extent, so larger values describe nothing it can compute).
// Then no intermediate of the geometry comes near 2^63 (the largest, a dilated filter extent, is
// below 2^62), and every error quotes the values as the user gave them, never a wrapped one.
constexpr int64_t kMaxExtent = kMaxTensorElements;

bool AnyAbove(const int64_t* v, size_t n, int64_t limit) {
  for (size_t i = 0; i < n; ++i) {
    if (v[i] > limit) return true;
  }
  return false;
}

// Index of H, W, C in data_format order (N is 0 in both layouts).
struct Axes {
  int h, w, c;
};
Axes AxesOf(DataFormat f) { return f == DataFormat::kNHWC ? Axes{1, 2, 3} : Axes{2, 3, 1}; }

// Output size and leading padding of one spatial dimension, as tf.nn.conv2d computes them.
std::string SpatialOutput(const char* dim, int64_t in, int64_t k, int64_t stride, int64_t dilation,
                          Padding padding, int64_t pad_before, int64_t pad_after, int64_t* out,
                          int64_t* pad_lead) {
  const int64_t effective_k = (k - 1) * dilation + 1;
  switch (padding) {
    case Padding::kSame: {
      *out = (in + stride - 1) / stride;
      const int64_t needed = (*out - 1) * stride + effective_k - in;
      *pad_lead = needed > 0 ? needed / 2 : 0;
      return "";
    }
    case Padding::kValid:
      pad_before = pad_after = 0;
      break;
    case Padding::kExplicit:
      break;
  }
  const int64_t padded = in + pad_before + pad_after;
  if (padded < effective_k) {
    std::ostringstream msg;
    msg << "filter " << dim << " (" << k;
    if (dilation > 1) msg << ", dilated by " << dilation << " to " << effective_k;
    msg << ") is larger than the padded input " << dim << " (" << padded << ")";
    return msg.str();
  }
  *out = (padded - effective_k) / stride + 1;
  *pad_lead = pad_before;
  return "";
}

}  // namespace

std::string ValidateConvAttrs(const ConvAttrs& attrs) {
  const Axes ax = AxesOf(attrs.data_format);
  if (attrs.strides.size() != 4) return "strides must have 4 elements, got " + Join(attrs.strides);
  if (attrs.dilations.size() != 4) {
    return "dilations must have 4 elements, got " + Join(attrs.dilations);
  }
  if (attrs.strides[0] != 1 || attrs.strides[ax.c] != 1) {
    return "strides in the batch and depth dimensions must be 1, got " + Join(attrs.strides);
  }
  if (attrs.strides[ax.h] < 1 || attrs.strides[ax.w] < 1) {
    return "strides must be positive, got " + Join(attrs.strides);
  }
  if (AnyAbove(attrs.strides.data(), 4, kMaxExtent)) {
    return "strides must be at most 2^31 - 1, got " + Join(attrs.strides);
  }
  if (attrs.dilations[0] != 1 || attrs.dilations[ax.c] != 1) {
    return "dilations in the batch and depth dimensions must be 1, got " + Join(attrs.dilations);
  }
  if (attrs.dilations[ax.h] < 1 || attrs.dilations[ax.w] < 1) {
    return "dilations must be positive, got " + Join(attrs.dilations);
  }
  if (AnyAbove(attrs.dilations.data(), 4, kMaxExtent)) {
    return "dilations must be at most 2^31 - 1, got " + Join(attrs.dilations);
  }
  if (attrs.padding == Padding::kExplicit) {
    const auto& p = attrs.explicit_paddings;
    if (p.size() != 8) {
      return "explicit_paddings must have 8 elements with padding EXPLICIT, got " + Join(p);
    }
    for (int64_t v : p) {
      if (v < 0) return "explicit_paddings must be non-negative, got " + Join(p);
    }
    if (p[0] != 0 || p[1] != 0 || p[2 * ax.c] != 0 || p[2 * ax.c + 1] != 0) {
      return "explicit_paddings in the batch and depth dimensions must be 0, got " + Join(p);
    }
    if (AnyAbove(p.data(), 8, kMaxExtent)) {
      return "explicit_paddings must be at most 2^31 - 1, got " + Join(p);
    }
  } else if (!attrs.explicit_paddings.empty()) {
    return "explicit_paddings must be empty unless padding is EXPLICIT, got " +
           Join(attrs.explicit_paddings);
  }
  return "";
}

std::string ComputeConvShape(const int64_t input_dims[4], const int64_t filter_dims[4],
                             const ConvAttrs& attrs, ConvShape* s) {
  std::string error = ValidateConvAttrs(attrs);
  if (!error.empty()) return error;
  const Axes ax = AxesOf(attrs.data_format);
  *s = ConvShape();
  s->data_format = attrs.data_format;
  s->batch = input_dims[0];
  s->in_h = input_dims[ax.h];
  s->in_w = input_dims[ax.w];
  s->in_depth = input_dims[ax.c];
  s->filter_h = filter_dims[0];
  s->filter_w = filter_dims[1];
  s->filter_depth = filter_dims[2];
  s->out_depth = filter_dims[3];
  for (int i = 0; i < 4; ++i) {
    if (input_dims[i] < 0) return "input has a negative dimension, shape " + Join(input_dims, 4);
  }
  // Checked one by one: an empty input (a 0 dimension) passes the element counts below whatever its
  // other dimensions, which must still be safe to compute with.
  if (AnyAbove(input_dims, 4, kMaxExtent)) {
    return "input dimensions must be at most 2^31 - 1, got shape " + Join(input_dims, 4);
  }
  if (s->filter_h < 1 || s->filter_w < 1 || s->filter_depth < 1 || s->out_depth < 1) {
    return "filter dimensions must be positive, got " + Join(filter_dims, 4);
  }
  if (AnyAbove(filter_dims, 4, kMaxExtent)) {
    return "filter dimensions must be at most 2^31 - 1, got shape " + Join(filter_dims, 4);
  }
  if (s->in_depth == 0 || s->in_depth % s->filter_depth != 0) {
    return "input depth (" + std::to_string(s->in_depth) +
           ") must be a positive multiple of the filter's input depth (" +
           std::to_string(s->filter_depth) + ")";
  }
  if (s->out_depth % s->groups() != 0) {
    return "filter's output depth (" + std::to_string(s->out_depth) +
           ") must be a multiple of the number of groups (" + std::to_string(s->groups()) + ")";
  }
  s->stride_h = attrs.strides[ax.h];
  s->stride_w = attrs.strides[ax.w];
  s->dilation_h = attrs.dilations[ax.h];
  s->dilation_w = attrs.dilations[ax.w];
  const auto& p = attrs.explicit_paddings;
  const bool exp = attrs.padding == Padding::kExplicit;
  error = SpatialOutput("height", s->in_h, s->filter_h, s->stride_h, s->dilation_h, attrs.padding,
                        exp ? p[2 * ax.h] : 0, exp ? p[2 * ax.h + 1] : 0, &s->out_h, &s->pad_top);
  if (!error.empty()) return error;
  error = SpatialOutput("width", s->in_w, s->filter_w, s->stride_w, s->dilation_w, attrs.padding,
                        exp ? p[2 * ax.w] : 0, exp ? p[2 * ax.w + 1] : 0, &s->out_w, &s->pad_left);
  if (!error.empty()) return error;
  // Each product is checked against the limit before the next factor, so nothing overflows int64.
  auto too_large = [](std::initializer_list<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims) {
      if (d == 0) return false;
      if (n > kMaxTensorElements / d) return true;
      n *= d;
    }
    return false;
  };
  if (too_large({s->batch, s->in_h, s->in_w, s->in_depth})) {
    return "input has more than 2^31 - 1 elements, the largest tensor this op indexes, shape " +
           Join(input_dims, 4);
  }
  if (too_large({s->filter_h, s->filter_w, s->filter_depth, s->out_depth})) {
    return "filter has more than 2^31 - 1 elements, the largest tensor this op indexes, shape " +
           Join(filter_dims, 4);
  }
  if (too_large({s->batch, s->out_h, s->out_w, s->out_depth})) {
    const int64_t out_nhwc[4] = {s->batch, s->out_h, s->out_w, s->out_depth};
    const int64_t out_nchw[4] = {s->batch, s->out_depth, s->out_h, s->out_w};
    return "output would have more than 2^31 - 1 elements, the largest tensor this op indexes, "
           "shape " + Join(attrs.data_format == DataFormat::kNHWC ? out_nhwc : out_nchw, 4);
  }
  return "";
}

bool SubsampledShape(const ConvShape& s, ConvShape* dense) {
  if (s.filter_h != 1 || s.filter_w != 1 || (s.stride_h == 1 && s.stride_w == 1) || s.pad_top != 0 ||
      s.pad_left != 0 || (s.out_h - 1) * s.stride_h >= s.in_h || (s.out_w - 1) * s.stride_w >= s.in_w) {
    return false;
  }
  *dense = s;
  dense->in_h = s.out_h;
  dense->in_w = s.out_w;
  dense->stride_h = dense->stride_w = 1;
  dense->dilation_h = dense->dilation_w = 1;
  return true;
}

}  // namespace tfapprox
