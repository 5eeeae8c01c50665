// What the CPU and GPU OpKernels of the convolution ops share: attribute parsing, where the table comes
// from, and validation of the tensors. Every misuse becomes an InvalidArgument error naming the argument; the
// device kernels only launch.
#ifndef TENSORFLOW_APPROX_CC_KERNELS_APPROX_CONV_OP_BASE_H_
#define TENSORFLOW_APPROX_CC_KERNELS_APPROX_CONV_OP_BASE_H_

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"
#include "tensorflow_approx/cc/kernels/table_decompositions.h"

namespace tensorflow {

// A table tensor (65536 entries, checked by the caller) as the kernels hold it before any scheme's
// rearrangement: uint16 as it is (*lut points into the tensor), int16 (signed products) with 32768 added
// (*offset = 32768), float32 checked to hold integers in [0, 65535]; the last two in *converted.
inline absl::Status TableTensorLut(const Tensor& table, std::vector<uint16_t>* converted, const uint16_t** lut,
                                   int64_t* offset) {
  if (table.dtype() == DT_UINT16) {
    *lut = table.flat<uint16_t>().data();
    return absl::OkStatus();
  }
  converted->resize(tfapprox::kLutEntries);
  *lut = converted->data();
  if (table.dtype() == DT_INT16) {
    const auto values = table.flat<int16_t>();
    for (int i = 0; i < tfapprox::kLutEntries; ++i) (*converted)[i] = static_cast<uint16_t>(values(i) + 32768);
    *offset = 32768;
    return absl::OkStatus();
  }
  const auto values = table.flat<float>();
  for (int i = 0; i < tfapprox::kLutEntries; ++i) {
    const float v = values(i);
    // Written so that NaN fails the test too.
    if (!(v >= 0.f && v <= 65535.f && v == static_cast<float>(static_cast<int32_t>(v)))) {
      return absl::InvalidArgumentError(absl::StrCat("table entry ", i, " (a = ", i >> 8, ", w = ", i & 0xFF,
                                                     ") is ", v,
                                                     "; a float32 table must hold integers in [0, 65535]"));
    }
    (*converted)[i] = static_cast<uint16_t>(v);
  }
  return absl::OkStatus();
}

template <typename T>
class ApproxConv2DOpBase : public OpKernel {
 public:
  explicit ApproxConv2DOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> strides, dilations;
    std::vector<int64_t> explicit_paddings;
    std::string padding, data_format;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("explicit_paddings", &explicit_paddings));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("data_format", &data_format));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_bits", &num_bits_));
    // ApproxConv2DWithMinMaxVars names its table by a file attribute; ApproxConv2DWithTable takes it as
    // its last input.
    table_from_file_ = ctx->HasAttr("mul_map_file");
    if (table_from_file_) OP_REQUIRES_OK(ctx, ctx->GetAttr("mul_map_file", &mul_map_file_));
    // ApproxConv2DWithBatchRanges computes its four ranges itself (outputs 1-4) and takes the table as its
    // third input.
    batch_ranges_ = ctx->HasAttr("filter_per_channel");
    if (batch_ranges_) OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_per_channel", &filter_per_channel_));
    table_input_ = batch_ranges_ ? 2 : 6;
    filter_num_bits_ = -1;
    if (ctx->HasAttr("filter_num_bits")) OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_num_bits", &filter_num_bits_));
    for (const char* name : {"input_scheme", "filter_scheme"}) {
      std::string scheme = "asymmetric";
      if (ctx->HasAttr(name)) OP_REQUIRES_OK(ctx, ctx->GetAttr(name, &scheme));
      // "symmetric_narrow": symmetric without the lowest signed code (TensorFlow's narrow_range).
      (name[0] == 'i' ? input_symmetric_ : filter_symmetric_) = scheme.rfind("symmetric", 0) == 0;
      (name[0] == 'i' ? input_narrow_ : filter_narrow_) = scheme == "symmetric_narrow";
    }
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
    if (filter_num_bits_ == -1) filter_num_bits_ = num_bits_;
    OP_REQUIRES(ctx, filter_num_bits_ >= tfapprox::kMinNumBits && filter_num_bits_ <= tfapprox::kMaxNumBits,
                absl::InvalidArgumentError(absl::StrCat("filter_num_bits must be -1 or in [", tfapprox::kMinNumBits,
                                                        ", ", tfapprox::kMaxNumBits, "], got ", filter_num_bits_)));
    if (table_from_file_) {
      // A bad path fails when the kernel is made; the file is looked up again at every call.
      tfapprox::LutRef unused;
      const std::string lut_error = tfapprox::LookupMulMap(mul_map_file_, &unused);
      OP_REQUIRES(ctx, lut_error.empty(), absl::InvalidArgumentError(lut_error));
    }
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
    static const char* const kBoundNames[4] = {"input_min", "input_max", "filter_min",
                                               "filter_max"};
    // The table op takes per-channel filter ranges: vectors of the filter's out_depth values.
    const int64_t out_depth = filter.dim_size(3);
    if (batch_ranges_) {
      const TensorShape filter_range = filter_per_channel_ ? TensorShape({out_depth}) : TensorShape({});
      Tensor* bounds[4];
      for (int i = 0; i < 4; ++i) {
        OP_REQUIRES_OK(ctx, ctx->allocate_output(1 + i, i < 2 ? TensorShape({}) : filter_range, &bounds[i]));
      }
      ComputeBatchRanges(ctx, input, filter, bounds);
      if (!ctx->status().ok()) return;
    } else {
      for (int i = 0; i < 4; ++i) {
        const TensorShape& shape = ctx->input(kRangeInputs + i).shape();
        const bool per_channel = i >= 2 && !table_from_file_ && shape.dims() == 1 && shape.dim_size(0) == out_depth;
        OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(shape) || per_channel,
                    absl::InvalidArgumentError(absl::StrCat(
                        kBoundNames[i], " must be a scalar",
                        i >= 2 && !table_from_file_ ? absl::StrCat(" or a vector of the filter's ", out_depth,
                                                                   " output channels")
                                                    : "",
                        ", got shape ", shape.DebugString())));
      }
      OP_REQUIRES(ctx, ctx->input(kRangeInputs + 2).shape() == ctx->input(kRangeInputs + 3).shape(),
                  absl::InvalidArgumentError(absl::StrCat(
                      "filter_min and filter_max must have the same shape, got ",
                      ctx->input(kRangeInputs + 2).shape().DebugString(), " and ",
                      ctx->input(kRangeInputs + 3).shape().DebugString())));
    }
    const int64_t filter_ranges = RangeTensor(ctx, 2).NumElements();
    tfapprox::QuantParams input_q;
    std::vector<tfapprox::QuantParams> filter_q(filter_ranges);
    if (!RangesOnDevice()) {
      const auto bound = [&](int i, int64_t k) {
        // The batch ranges are float32 (the op's only T); given ranges have the operands' T.
        return batch_ranges_ ? RangeTensor(ctx, i).template flat<float>()(k)
                             : static_cast<float>(RangeTensor(ctx, i).template flat<T>()(k));
      };
      std::string error = tfapprox::MakeQuantParams(bound(0, 0), bound(1, 0), num_bits_, kBoundNames[0],
                                                    kBoundNames[1], &input_q, input_symmetric_, input_narrow_);
      OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));
      for (int64_t k = 0; k < filter_ranges; ++k) {
        error = tfapprox::MakeQuantParams(bound(2, k), bound(3, k), filter_num_bits_, kBoundNames[2],
                                          kBoundNames[3], &filter_q[k], filter_symmetric_, filter_narrow_);
        OP_REQUIRES(ctx, error.empty(),
                    absl::InvalidArgumentError(filter_ranges == 1 ? error
                                                                  : absl::StrCat("output channel ", k, ": ", error)));
      }
    }

    int64_t input_dims[4], filter_dims[4];
    for (int i = 0; i < 4; ++i) {
      input_dims[i] = input.dim_size(i);
      filter_dims[i] = filter.dim_size(i);
    }
    tfapprox::ConvShape shape;
    std::string error = tfapprox::ComputeConvShape(input_dims, filter_dims, attrs_, &shape);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));
    if (!table_from_file_) {
      const Tensor& table = ctx->input(table_input_);
      OP_REQUIRES(ctx, table.dims() == 1 && table.dim_size(0) == tfapprox::kLutEntries,
                  absl::InvalidArgumentError(absl::StrCat("table must have shape [", tfapprox::kLutEntries,
                                                          "], got ", table.shape().DebugString())));
    }

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
  // input_q and filter_q: the ranges' quantization, made on the host unless RangesOnDevice(); filter_q
  // holds one entry per tensor or one per output channel (its size is set either way).
  virtual void Launch(OpKernelContext* ctx, const tfapprox::ConvShape& shape, const Tensor& input,
                      const Tensor& filter, const tfapprox::QuantParams& input_q,
                      const std::vector<tfapprox::QuantParams>& filter_q, Tensor* output) = 0;
  // GPU kernels read the range inputs on the device (no host round trip per call), so Compute does not.
  virtual bool RangesOnDevice() const { return false; }
  // ApproxConv2DWithBatchRanges: writes into bounds[0..3] (the outputs input_min, input_max, filter_min,
  // filter_max, in the device's memory; filter ones of shape [out_depth] with filter_per_channel) the
  // ranges ApproxRangeWithZero gives for input and filter, or fails ctx.
  virtual void ComputeBatchRanges(OpKernelContext* ctx, const Tensor& input, const Tensor& filter,
                                  Tensor* const bounds[4]) = 0;
  // Range i of this call (0 input_min, 1 input_max, 2 filter_min, 3 filter_max): an input of the ops that
  // take their ranges, an output of ApproxConv2DWithBatchRanges (after ComputeBatchRanges).
  const Tensor& RangeTensor(OpKernelContext* ctx, int i) const {
    return batch_ranges_ ? *ctx->mutable_output(1 + i) : ctx->input(kRangeInputs + i);
  }
  bool batch_ranges() const { return batch_ranges_; }
  static constexpr int kRangeInputs = 2;  // input_min, input_max, filter_min, filter_max

  // With TFAPPROX_TRACE=FILE in the environment, appends to FILE one line per distinct call configuration
  // in this process: tab-separated key=value fields (op, device, input and filter shapes, strides,
  // padding, data format, the kernel that runs and whether it splits K), for benchmarks and users who
  // want to see what ran. Off (one cached getenv) otherwise.
  static const char* TracePath() {
    static const char* const path = std::getenv("TFAPPROX_TRACE");
    return path != nullptr && path[0] != '\0' ? path : nullptr;
  }
  static bool Tracing() { return TracePath() != nullptr; }
  void Trace(const tfapprox::ConvShape& shape, const char* device, const char* kernel, bool split_k) const {
    const auto dims = [](const std::vector<int64_t>& d) { return absl::StrJoin(d, "x"); };
    const std::string line = absl::StrCat(
        "op=", type_string(), "\tdevice=", device, "\tinput=",
        dims(shape.data_format == tfapprox::DataFormat::kNHWC
                 ? std::vector<int64_t>{shape.batch, shape.in_h, shape.in_w, shape.in_depth}
                 : std::vector<int64_t>{shape.batch, shape.in_depth, shape.in_h, shape.in_w}),
        "\tfilter=", dims({shape.filter_h, shape.filter_w, shape.filter_depth, shape.out_depth}),
        "\tstrides=", shape.stride_h, "x", shape.stride_w, "\tpadding=",
        attrs_.padding == tfapprox::Padding::kSame ? "SAME" : attrs_.padding == tfapprox::Padding::kValid ? "VALID" : "EXPLICIT",
        "\tdata_format=", shape.data_format == tfapprox::DataFormat::kNHWC ? "NHWC" : "NCHW", "\tkernel=", kernel,
        "\tsplit_k=", split_k ? 1 : 0, "\n");
    static std::mutex mu;
    static std::set<std::string>* seen = new std::set<std::string>;  // never destroyed: kernels may run at exit
    std::lock_guard<std::mutex> lock(mu);
    if (!seen->insert(line).second) return;
    if (FILE* f = std::fopen(TracePath(), "a")) {
      std::fputs(line.c_str(), f);
      std::fclose(f);
    }
  }

  int num_bits() const { return num_bits_; }
  int filter_num_bits() const { return filter_num_bits_; }
  bool input_symmetric() const { return input_symmetric_; }
  bool filter_symmetric() const { return filter_symmetric_; }
  bool input_narrow() const { return input_narrow_; }
  bool filter_narrow() const { return filter_narrow_; }
  // A symmetric operand's kernel codes are its signed codes plus 2^(b-1) (QuantParams::code_shift).
  int input_code_shift() const { return input_symmetric_ ? 1 << (num_bits_ - 1) : 0; }
  int filter_code_shift() const { return filter_symmetric_ ? 1 << (filter_num_bits_ - 1) : 0; }

  // A table in host memory as the kernels index it (PreparedTable). `lut` points into the file's cached
  // table or `owned`, which the struct keeps alive.
  struct HostLut {
    const uint16_t* lut = nullptr;
    int64_t offset = 0;          // added to every entry (32768 for a table of signed products)
    tfapprox::LutRef file;       // a file table
    std::vector<uint16_t> owned;
    // Its registered decomposition in the kernels' codes (table_decompositions.h), for any shape: each
    // device's rule decides per call whether the decomposed kernel runs.
    bool decomposed = false;
    tfapprox::KernelDecomposition decomposition;
  };

  // The table of this call: the file as it is now, or the input tensor. A float32 table is converted after
  // checking that every entry is an integer in [0, 65535]; an int16 table (signed products) is stored with
  // 32768 added to every entry, which the sums take off again exactly. With a symmetric operand the table,
  // indexed by the signed codes' bytes, is rearranged to be indexed by the kernels' codes (signed code +
  // code_shift).
  //
  // Checking, converting, rearranging and finding the decomposition cost some 100-200 us, and a program
  // calls a layer with the same table again and again (tables change by set_multiplier, between calls): the
  // result is kept for the next call while the table stays the same (the input's dtype and bytes, or the
  // file's identity) and no decomposition has been registered since. Shared with the calls still using it.
  absl::Status PreparedTable(OpKernelContext* ctx, std::shared_ptr<const HostLut>* out) const {
    const int64_t generation = tfapprox::DecompositionGeneration();
    tfapprox::LutRef file;
    if (table_from_file_) {
      const std::string error = tfapprox::LookupMulMap(mul_map_file_, &file);
      if (!error.empty()) return absl::InvalidArgumentError(error);
    }
    const Tensor* input = table_from_file_ ? nullptr : &ctx->input(table_input_);
    const absl::string_view bytes = input != nullptr ? input->tensor_data() : absl::string_view();
    {
      std::lock_guard<std::mutex> lock(prepared_mu_);
      if (prepared_ != nullptr && prepared_generation_ == generation &&
          (input == nullptr ? prepared_file_id_ == file.id
                            : prepared_dtype_ == input->dtype() && absl::string_view(prepared_bytes_) == bytes)) {
        *out = prepared_;
        return absl::OkStatus();
      }
    }
    auto host = std::make_shared<HostLut>();
    if (input == nullptr) {
      host->file = file;
      host->lut = file.lut->data();
    } else {
      TF_RETURN_IF_ERROR(TableTensorLut(*input, &host->owned, &host->lut, &host->offset));
      if (host->owned.empty()) host->owned.assign(host->lut, host->lut + tfapprox::kLutEntries);  // uint16: a copy
      host->lut = host->owned.data();
    }
    const int input_shift = input_code_shift(), filter_shift = filter_code_shift();
    host->decomposed = tfapprox::FindDecomposition(host->lut, host->offset, input_shift, filter_shift,
                                                   &host->decomposition);
    if (input_shift != 0 || filter_shift != 0) {
      // Entry (a, w) is the table's ((a - input_shift) & 0xFF, (w - filter_shift) & 0xFF): rows and
      // columns rotated.
      std::vector<uint16_t> by_codes(tfapprox::kLutEntries);
      for (int a = 0; a < 256; ++a) {
        const uint16_t* src = host->lut + (((a - input_shift) & 0xFF) << 8);
        std::rotate_copy(src, src + 256 - filter_shift, src + 256, by_codes.data() + (a << 8));
      }
      host->owned = std::move(by_codes);
      host->lut = host->owned.data();
    }
    std::lock_guard<std::mutex> lock(prepared_mu_);
    prepared_ = host;
    prepared_generation_ = generation;
    prepared_file_id_ = file.id;
    prepared_dtype_ = input != nullptr ? input->dtype() : DT_INVALID;
    prepared_bytes_.assign(bytes.data(), bytes.size());
    *out = std::move(host);
    return absl::OkStatus();
  }

 private:
  tfapprox::ConvAttrs attrs_;
  int num_bits_ = 8;
  int filter_num_bits_ = 8;
  bool input_symmetric_ = false, filter_symmetric_ = false;
  bool input_narrow_ = false, filter_narrow_ = false;
  bool table_from_file_ = true;
  bool batch_ranges_ = false, filter_per_channel_ = false;
  int table_input_ = 6;
  std::string mul_map_file_;
  // PreparedTable's last table and what identifies it.
  mutable std::mutex prepared_mu_;
  mutable std::shared_ptr<const HostLut> prepared_;
  mutable int64_t prepared_generation_ = -1;
  mutable uint64_t prepared_file_id_ = 0;
  mutable DataType prepared_dtype_ = DT_INVALID;
  mutable std::string prepared_bytes_;
};

}  // namespace tensorflow

#endif  // TENSORFLOW_APPROX_CC_KERNELS_APPROX_CONV_OP_BASE_H_
