// GPU harness without TensorFlow: holds the CUDA kernels of tensorflow_approx/cc/core/conv_gpu.cu to the
// CPU reference of the core (exactly, on the integer sums and on the output bits), then times them on
// the five layers of shared/design/performance.md against a texture-memory baseline in the same run. The
// device's quantization parameters (GpuQuantFromRanges) and batch ranges (GpuRangeWithZero) are held to
// the host's too.
//
//   gpu_harness [--tables DIR] [--cases N] [--seed S] [--runs R] [--no-bench] [--sweep]
//               [--decomposed-only | --lookups-only] [--decomposed-cases N] [--decomposed-phases]
//               [--decomposed-tiles] [--decomposed-orders] [--decomposed-batches]
//               [--profile LAYER [--kernel K | --terms N [--tile T]]]
//
// The decomposed tensor-core kernel (conv_gpu_decomposed.cu) is checked too (--decomposed-cases random
// cases, default 300, with random decompositions, the exact product and DIR/NAME.decomp files from
// export_decompositions.py: sums and outputs against the CPU reference and the lookups, then the outputs
// again without the debug sums, as the op calls it) and timed in a table of its own after the lookups' timings;
// --decomposed-only runs only its checks and its tables (the timings, with GpuPreferDecomposed's picks,
// then each launch's time for 1 and 16 terms, fused and separate input passes); --decomposed-phases runs
// only the per-launch table; --decomposed-tiles runs only a table of every GEMM tile's rate on the
// benchmark layers for 1, 5 and 16 terms and of default calls (whose first tunes the plan), each call's
// outputs held bit for bit to the lookups' (the tuned plan's tile marked; the rule's pick summed up against
// the fastest tile below it); --decomposed-orders runs only a table of both K orders (GpuKOrder) on every benchmark layer
// with a 3x3 filter for 4, 8 and 16 terms, checked the same way (ChooseGpuKOrder's pick marked);
// --decomposed-batches runs only a table of the decomposed kernel against the lookups on the benchmark
// layers at smaller batches (GpuPreferDecomposed's picks marked), checked the same way;
// --lookups-only leaves the decomposed kernel out.
//
// Exit status 0 only when every check passed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "tensorflow_approx/cc/core/approx_conv_cpu.h"
#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"

using namespace tfapprox;

namespace {

#define CUDA_OR_DIE(call)                                                                       \
  do {                                                                                          \
    cudaError_t e_ = (call);                                                                    \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)

// Device buffer that frees itself.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n) : count(n) { CUDA_OR_DIE(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T))); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void Upload(const std::vector<T>& v) { CUDA_OR_DIE(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> Download() const {
    std::vector<T> v(count);
    CUDA_OR_DIE(cudaMemcpy(v.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void Poison(int byte) { CUDA_OR_DIE(cudaMemset(ptr, byte, std::max<size_t>(count, 1) * sizeof(T))); }
};

template <typename T>
T FromDouble(double x) {
  return static_cast<T>(static_cast<float>(x));
}
template <>
double FromDouble<double>(double x) {
  return x;
}
template <typename T>
const char* TypeName();
template <> const char* TypeName<float>() { return "float"; }
template <> const char* TypeName<double>() { return "double"; }
template <> const char* TypeName<__half>() { return "half"; }
template <> const char* TypeName<__nv_bfloat16>() { return "bfloat16"; }
template <typename T>
GpuDtype DtypeOf();
template <> GpuDtype DtypeOf<float>() { return GpuDtype::kFloat; }
template <> GpuDtype DtypeOf<double>() { return GpuDtype::kDouble; }
template <> GpuDtype DtypeOf<__half>() { return GpuDtype::kHalf; }
template <> GpuDtype DtypeOf<__nv_bfloat16>() { return GpuDtype::kBfloat16; }

// The codes exactly as ApproxConvCpu lays them out for the reference.
template <typename T>
void HostCodes(const ConvShape& s, const std::vector<T>& input, const std::vector<T>& filter, const QuantParams& qi,
               const FilterQuant& qf, std::vector<uint8_t>* in_codes, std::vector<uint8_t>* flt_codes) {
  in_codes->resize(s.input_elements());
  const int64_t hw = s.in_h * s.in_w;
  for (int64_t nhw = 0; nhw < s.batch * hw; ++nhw) {
    for (int64_t c = 0; c < s.in_depth; ++c) {
      const T x = s.data_format == DataFormat::kNHWC ? input[nhw * s.in_depth + c]
                                                      : input[(nhw / hw * s.in_depth + c) * hw + nhw % hw];
      (*in_codes)[nhw * s.in_depth + c] = QuantizeToCode(static_cast<float>(x), qi);
    }
  }
  const int64_t taps = s.taps();
  flt_codes->resize(s.filter_elements());
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t co = 0; co < s.out_depth; ++co)
      (*flt_codes)[co * taps + t] = QuantizeToCode(static_cast<float>(filter[t * s.out_depth + co]), qf.of(co));
}

struct Counts {
  int cases = 0, failures = 0;
  int64_t outputs_checked = 0;
  int per_kernel[static_cast<int>(GpuKernel::kCount)] = {};
  int per_type[4] = {};
  int wide = 0;
  int split = 0;        // cases whose K was split between blocks
  int per_channel = 0;  // cases with a filter range per output channel
  int decomposed = 0;   // cases of the decomposed tensor-core kernel (ApproxConvGpuDecomposed)
  int per_tile[static_cast<int>(GpuDecomposedTile::kCount)] = {};  // those cases by the tile they ran

  void Add(const GpuPlan& plan, int64_t outputs) {
    ++cases;
    ++per_kernel[static_cast<int>(plan.kernel)];
    split += plan.split_k;
    outputs_checked += outputs;
  }
};

// A call's quantization in device memory, made on the host (GpuQuantFromRanges, which the op uses, is
// held to this by QuantFromRangesChecks): one entry per tensor, or one per output channel.
struct DeviceQuant : DeviceBuffer<GpuQuant> {
  DeviceQuant(const QuantParams& qi, const FilterQuant& qf, int64_t taps, int64_t lut_offset = 0)
      : DeviceBuffer<GpuQuant>(static_cast<size_t>(qf.count)) {
    std::vector<GpuQuant> entries;
    for (int64_t c = 0; c < qf.count; ++c) {
      entries.push_back(MakeGpuQuant(qi, qf.params[c], taps, lut_offset, static_cast<int32_t>(qf.count)));
    }
    Upload(entries);
  }
};

// A table on the device as the op keeps it: the table and beside it the same by weight code
// (GpuOptions::lut_by_weight, which the columns kernel's blocks copy instead of transposing the table).
struct DeviceTable {
  DeviceBuffer<uint16_t> lut{kLutEntries}, by_weight{kLutEntries};
  explicit DeviceTable(const Lut& table) {
    lut.Upload(std::vector<uint16_t>(table.begin(), table.end()));
    std::vector<uint16_t> transposed(kLutEntries);
    LutByWeight(table.data(), transposed.data());
    by_weight.Upload(transposed);
  }
  void Attach(GpuOptions* options) const { options->lut_by_weight = by_weight.ptr; }
};

// The workspace a call with `options` needs on this shape, attached to them.
struct Workspace : DeviceBuffer<uint8_t> {
  Workspace(const ConvShape& s, GpuOptions* options) : DeviceBuffer<uint8_t>(GpuWorkspaceBytes(s, *options)) {
    Attach(options);
  }
  void Attach(GpuOptions* options) const {
    options->workspace = ptr;
    options->workspace_bytes = count;
  }
};

// Runs one case on the GPU and the CPU and compares acc, act_sum and output bits. Returns "" or what
// differs; min_acc (if given) receives the smallest reference sum.
// Output bits equal. One exception: the GPU writes NaN as TensorFlow's CPU kernels do (Eigen: half
// 0x7e00, bfloat16 0x7fc0), while this harness's host __half / __nv_bfloat16 turn a float NaN into
// 0x7fff; a reference NaN is matched by exactly the GPU's pattern (so an unwritten, poisoned 0xffff
// element still fails).
template <typename T>
bool SameOutputBits(const T& gpu, const T& ref) {
  if (std::memcmp(&gpu, &ref, sizeof(T)) == 0) return true;
  if (sizeof(T) != 2 || !std::isnan(static_cast<float>(ref))) return false;
  uint16_t bits;
  std::memcpy(&bits, &gpu, 2);
  return bits == (std::is_same<T, __half>::value ? 0x7e00 : 0x7fc0);
}

// "" or the first index where the integer sums differ.
std::string FirstSumDifference(const char* what, const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(got[i]) + ", reference " +
             std::to_string(want[i]);
    }
  }
  return "";
}

// The CPU reference of one case: its integer sums, as ReferenceConvAccumulate lays them out, and outputs.
template <typename T>
struct Reference {
  std::vector<int64_t> acc, act;
  std::vector<T> out;
};

template <typename T>
Reference<T> ReferenceOf(const ConvShape& s, const std::vector<T>& input, const std::vector<T>& filter,
                         const QuantParams& qi, const FilterQuant& qf, const Lut& lut) {
  std::vector<uint8_t> in_codes, flt_codes;
  HostCodes(s, input, filter, qi, qf, &in_codes, &flt_codes);
  QuantizedConv conv;
  conv.shape = s;
  conv.input = in_codes.data();
  conv.filter = flt_codes.data();
  conv.input_zero_code = static_cast<uint8_t>(qi.zero_point);
  conv.lut = lut.data();
  Reference<T> ref;
  ref.acc.resize(s.output_elements());
  ref.act.resize(s.out_pixels() * s.groups());
  ReferenceConvAccumulate(conv, 0, s.out_pixels(), ref.acc.data(), ref.act.data());
  ref.out.resize(s.output_elements());
  ApproxConvCpu<T>(s, input.data(), filter.data(), qi, qf, lut.data(), SerialFor(), ref.out.data(),
                   CpuKernel::kReference);
  return ref;
}

// "" or the first output whose bits differ from the reference's.
template <typename T>
std::string FirstOutputDifference(const std::vector<T>& out, const std::vector<T>& ref_out) {
  if (std::memcmp(out.data(), ref_out.data(), out.size() * sizeof(T)) == 0) return "";
  for (size_t i = 0; i < out.size(); ++i) {
    if (!SameOutputBits(out[i], ref_out[i])) {
      return "output[" + std::to_string(i) + "] = " + std::to_string(static_cast<double>(out[i])) + ", reference " +
             std::to_string(static_cast<double>(ref_out[i])) + " (bits differ)";
    }
  }
  return "";
}

// Once the queued work is done: "" or the first difference of the device's integer sums and outputs
// from the reference (*out: the outputs, downloaded).
template <typename T>
std::string DifferenceFromReference(const DeviceBuffer<int64_t>& d_acc, const DeviceBuffer<int64_t>& d_act,
                                    const DeviceBuffer<T>& d_out, const Reference<T>& ref, std::vector<T>* out) {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return std::string("kernel failed: ") + cudaGetErrorString(e);
  std::string err = FirstSumDifference("acc", d_acc.Download(), ref.acc);
  if (err.empty()) err = FirstSumDifference("act_sum", d_act.Download(), ref.act);
  *out = d_out.Download();
  return err.empty() ? FirstOutputDifference(*out, ref.out) : err;
}

template <typename T>
std::string CheckOne(const ConvShape& s, const std::vector<T>& input, const std::vector<T>& filter,
                     const QuantParams& qi, const FilterQuant& qf, const Lut& lut, const GpuOptions& base_opts,
                     GpuPlan* used, int64_t* min_acc = nullptr) {
  const Reference<T> ref = ReferenceOf(s, input, filter, qi, qf, lut);
  if (min_acc != nullptr) *min_acc = *std::min_element(ref.acc.begin(), ref.acc.end());

  DeviceBuffer<T> d_in(input.size()), d_flt(filter.size()), d_out(s.output_elements());
  DeviceBuffer<int64_t> d_acc(ref.acc.size()), d_act(ref.act.size());
  const DeviceTable d_table(lut);
  d_in.Upload(input);
  d_flt.Upload(filter);
  d_out.Poison(0xFF);  // NaN in every float type: an unwritten element cannot match
  d_acc.Poison(0xA5);
  d_act.Poison(0xA5);
  GpuOptions opts = base_opts;
  opts.debug_acc = d_acc.ptr;
  opts.debug_act_sum = d_act.ptr;
  // Half of the cases (by the parity of the output's size) give the columns kernel the table by weight
  // code, as the op does; the others leave its blocks to transpose the table themselves.
  if (s.output_elements() % 2 == 0) d_table.Attach(&opts);
  *used = ChooseGpuPlan(s, opts);
  // The workspace, poisoned: the call must clear what it uses.
  Workspace d_ws(s, &opts);
  d_ws.Poison(0xA5);
  // NaN as the op's GPU kernel makes it, around the convolution (ApproxConvCpu does it inside).
  DeviceBuffer<int> d_flags(kGpuFlagCount);
  d_flags.Poison(0);
  std::string err = GpuScanNan(DtypeOf<T>(), s, d_in.ptr, d_flt.ptr, d_flags.ptr, 0);
  if (!err.empty()) return "GpuScanNan failed: " + err;
  const DeviceQuant d_q(qi, qf, s.taps());
  err = ApproxConvGpu<T>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_table.lut.ptr, d_out.ptr, 0, opts);
  if (!err.empty()) return "ApproxConvGpu failed: " + err;
  err = GpuPropagateNan(DtypeOf<T>(), s, d_in.ptr, d_flt.ptr, d_out.ptr, d_flags.ptr, 0);
  if (!err.empty()) return "GpuPropagateNan failed: " + err;
  std::vector<T> out;
  return DifferenceFromReference(d_acc, d_act, d_out, ref, &out);
}

struct Tables {
  std::vector<std::string> names;
  std::vector<std::shared_ptr<const Lut>> luts;
};

Tables LoadTables(const std::string& dir) {
  Tables t;
  t.names.push_back("exact");
  t.luts.push_back(ExactLut());
  // mul8u_JQQ: the one seed table that some zero points leave un-rebased (no skipping; see conv_gpu.cu).
  for (const char* name : {"mul8u_L40", "mul8u_2AC", "mul8u_7C1", "mul8u_CK5", "mul8u_ZFB", "mul8u_JQQ"}) {
    std::shared_ptr<const Lut> lut;
    const std::string path = dir + "/" + name + ".bin";
    const std::string err = LoadLutFile(path, &lut);
    if (err.empty()) {
      t.names.push_back(name);
      t.luts.push_back(lut);
    } else {
      std::printf("table %s not loaded: %s\n", name, err.c_str());
    }
  }
  return t;
}

std::shared_ptr<const Lut> RandomLut(std::mt19937_64& rng, int lo, int hi) {
  auto lut = std::make_shared<Lut>();
  std::uniform_int_distribution<int> d(lo, hi);
  for (auto& v : *lut) v = static_cast<uint16_t>(d(rng));
  return lut;
}

// CheckOne, counted, and reported if it fails (the first ten failures). Returns whether it passed.
template <typename T>
bool CheckCase(const ConvShape& s, const std::vector<T>& input, const std::vector<T>& filter,
               const QuantParams& qi, const FilterQuant& qf, const Lut& lut, const GpuOptions& opts,
               Counts* counts, const std::string& label, int64_t* min_acc = nullptr) {
  GpuPlan used;
  const std::string err = CheckOne<T>(s, input, filter, qi, qf, lut, opts, &used, min_acc);
  counts->Add(used, s.output_elements());
  if (!err.empty()) {
    ++counts->failures;
    if (counts->failures <= 10) {
      static const char* kSkipNames[] = {"skip auto", "skip off", "skip sparse", "skip masked"};
      std::printf("FAIL %s [%s, %s%s, %s%s]: %s\n", label.c_str(), TypeName<T>(), GpuKernelName(used.kernel),
                  used.split_k ? " split-k" : "", kSkipNames[static_cast<int>(opts.zero_skip)],
                  opts.force_wide ? ", wide" : "", err.c_str());
    }
    return false;
  }
  return true;
}

// Random input and filter values: real zeros (the zero point) in a share that moves the tiled kernels
// between their sparse and dense paths; a few extreme values and NaN on top.
template <typename T>
void DrawData(std::mt19937_64& rng, const ConvShape& s, float in_lo, float in_hi, float f_lo, float f_hi,
              std::vector<T>* input, std::vector<T>* filter) {
  std::uniform_real_distribution<double> u(0, 1);
  const double zeros = std::vector<double>{0.05, 0.3, 0.6, 0.9}[std::uniform_int_distribution<int>(0, 3)(rng)];
  auto draw = [&](double lo, double hi) -> double {
    double r = u(rng);
    if (r < zeros) return 0.0;
    r = 0.3 + 0.7 * u(rng);
    if (r < 0.31) return r < 0.305 ? -1e30 : 1e30;
    if (r < 0.312) return std::nan("");
    const double margin = 0.1 * (hi - lo) + 0.1;
    return lo - margin + u(rng) * (hi - lo + 2 * margin);
  };
  input->assign(static_cast<size_t>(s.input_elements()), T());
  filter->assign(static_cast<size_t>(s.filter_elements()), T());
  for (auto& x : *input) x = FromDouble<T>(draw(in_lo, in_hi));
  for (auto& x : *filter) x = FromDouble<T>(draw(f_lo, f_hi));
}

template <typename T>
bool RandomCaseT(std::mt19937_64& rng, const ConvShape& s, const QuantParams& qi, const FilterQuant& qf,
                 const Lut& lut, const GpuOptions& opts, float in_lo, float in_hi, float f_lo, float f_hi,
                 Counts* counts, const std::string& label) {
  std::vector<T> input, filter;
  DrawData(rng, s, in_lo, in_hi, f_lo, f_hi, &input, &filter);
  return CheckCase<T>(s, input, filter, qi, qf, lut, opts, counts, label);
}

// A random quantization for a case of shape s: the element type (unless forced), code width, ranges
// (asymmetric, one-sided or zero-width, rounded through the type as the op reads them), schemes per
// operand, and a quarter of the time a filter range per output channel.
struct RandomQuant {
  int type = 0;  // 0 float, 1 double, 2 half, 3 bfloat16
  int bits = 8;
  float in_lo = 0, in_hi = 0, f_lo = 0, f_hi = 0;
  bool in_sym = false, in_narrow = false, f_sym = false, f_narrow = false;
  QuantParams qi, qf;
  std::vector<QuantParams> channel_q;  // empty: per tensor

  FilterQuant Filter() const {
    return channel_q.empty() ? FilterQuant(qf) : FilterQuant(channel_q.data(), static_cast<int64_t>(channel_q.size()));
  }
  // "asym/sym-narrow" and the like.
  std::string Schemes() const {
    const char* kNames[] = {"asym", "sym", "sym-narrow"};
    return std::string(kNames[in_sym + in_narrow]) + "/" + kNames[f_sym + f_narrow];
  }
};

// False when a drawn range was refused (the caller draws another case); a drawn case with per-channel
// ranges is counted.
bool DrawQuant(std::mt19937_64& rng, const ConvShape& s, int forced_type, Counts* counts, RandomQuant* q) {
  auto ri = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  q->bits = ri(0, 2) == 0 ? ri(2, 7) : 8;
  // Ranges: asymmetric, one-sided, or zero-width, rounded through T as the op reads them.
  std::uniform_real_distribution<float> uf(-3.f, 3.f);
  auto range = [&](float* lo, float* hi) {
    const int k = ri(0, 9);
    if (k == 0) {
      *lo = *hi = 0.f;
    } else if (k == 1) {
      *lo = 0.f;
      *hi = std::fabs(uf(rng)) + 0.01f;
    } else {
      float a = uf(rng), b = uf(rng);
      if (a > b) std::swap(a, b);
      *lo = a;
      *hi = b + 0.01f;
    }
  };
  range(&q->in_lo, &q->in_hi);
  range(&q->f_lo, &q->f_hi);
  q->type = forced_type >= 0 ? forced_type : ri(0, 3);
  auto round_t = [&](float x) -> float {
    switch (q->type) {
      case 2: return static_cast<float>(__half(x));
      case 3: return static_cast<float>(__nv_bfloat16(x));
      default: return x;
    }
  };
  q->in_lo = round_t(q->in_lo), q->in_hi = round_t(q->in_hi), q->f_lo = round_t(q->f_lo), q->f_hi = round_t(q->f_hi);
  if (q->in_lo > q->in_hi) std::swap(q->in_lo, q->in_hi);
  if (q->f_lo > q->f_hi) std::swap(q->f_lo, q->f_hi);
  // Schemes per operand: asymmetric mostly, else symmetric or symmetric with a narrow range.
  auto scheme = [&](bool* symmetric, bool* narrow) {
    const int k = ri(0, 5);
    *symmetric = k >= 4;
    *narrow = k == 5;
  };
  scheme(&q->in_sym, &q->in_narrow);
  scheme(&q->f_sym, &q->f_narrow);
  if (!MakeQuantParams(q->in_lo, q->in_hi, q->bits, "input_min", "input_max", &q->qi, q->in_sym, q->in_narrow).empty()) {
    return false;
  }
  if (!MakeQuantParams(q->f_lo, q->f_hi, q->bits, "filter_min", "filter_max", &q->qf, q->f_sym, q->f_narrow).empty()) {
    return false;
  }
  // A quarter of the cases: a filter range per output channel, each drawn as the tensor's was.
  q->channel_q.clear();
  if (ri(0, 3) == 0) {
    q->channel_q.resize(static_cast<size_t>(s.out_depth));
    for (QuantParams& c : q->channel_q) {
      float lo, hi;
      range(&lo, &hi);
      lo = round_t(lo), hi = round_t(hi);
      if (lo > hi) std::swap(lo, hi);
      if (!MakeQuantParams(lo, hi, q->bits, "filter_min", "filter_max", &c, q->f_sym, q->f_narrow).empty()) return false;
    }
    ++counts->per_channel;
  }
  return true;
}

// The ConvShape of drawn geometry (input NHWC sizes, filter HWIO sizes, strides, dilations), its padding
// drawn here (SAME 4 in 10, VALID 3, explicit 3 with 0-3 per side) unless `valid` forces VALID; false
// where that geometry has no shape, no output, or more than max_macs LUT-MACs (the CPU reference's budget).
bool DrawnShape(std::mt19937_64& rng, bool nchw, const int64_t (&input)[4], const int64_t (&filter)[4], int sh, int sw,
                int dh, int dw, bool valid, int64_t max_macs, ConvShape* s) {
  auto ri = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  ConvAttrs attrs;
  attrs.data_format = nchw ? DataFormat::kNCHW : DataFormat::kNHWC;
  const int pk = ri(0, 9);
  attrs.padding = valid || (pk >= 4 && pk < 7) ? Padding::kValid : pk < 4 ? Padding::kSame : Padding::kExplicit;
  attrs.strides = nchw ? std::vector<int64_t>{1, 1, sh, sw} : std::vector<int64_t>{1, sh, sw, 1};
  attrs.dilations = nchw ? std::vector<int64_t>{1, 1, dh, dw} : std::vector<int64_t>{1, dh, dw, 1};
  if (attrs.padding == Padding::kExplicit) {
    const int t = ri(0, 3), b = ri(0, 3), l = ri(0, 3), r = ri(0, 3);
    attrs.explicit_paddings = nchw ? std::vector<int64_t>{0, 0, 0, 0, t, b, l, r}
                                   : std::vector<int64_t>{0, 0, t, b, l, r, 0, 0};
  }
  const int64_t in_nchw[4] = {input[0], input[3], input[1], input[2]};
  return ComputeConvShape(nchw ? in_nchw : input, filter, attrs, s).empty() && s->output_elements() > 0 &&
         s->lut_macs() <= max_macs;
}

// One random shape, attributes, type, table and kernel; false when the attributes were invalid.
bool RandomCase(std::mt19937_64& rng, const Tables& tables, Counts* counts, int forced_type = -1,
                GpuKernel forced_kernel = GpuKernel::kAuto) {
  auto ri = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const bool nchw = ri(0, 1);
  int groups, cg, npg;
  const int gk = ri(0, 9);
  if (gk < 5) {
    groups = 1;
  } else if (gk < 8) {
    groups = ri(2, 4);
  } else {
    groups = ri(2, 40);  // depthwise-like
  }
  cg = gk >= 8 ? 1 : ri(1, 40);
  const int nk = ri(0, 9);
  npg = nk < 3 ? ri(1, 8) : nk < 8 ? ri(16, 140) : ri(140, 300);
  const int sh = ri(1, 3), sw = ri(1, 3), dh = ri(1, 2), dw = ri(1, 2);
  const int batch = ri(1, 3), in_h = ri(1, 14), in_w = ri(1, 14);
  int fh = ri(1, 4), fw = ri(1, 4);
  const bool whole = ri(0, 9) == 0;  // a filter covering the whole input (VALID)
  if (whole) {
    fh = in_h;
    fw = in_w;
  }
  const int64_t in_dims[4] = {batch, in_h, in_w, groups * cg};
  const int64_t f_dims[4] = {fh, fw, cg, groups * npg};
  ConvShape s;
  if (!DrawnShape(rng, nchw, in_dims, f_dims, sh, sw, dh, dw, whole, 6000000, &s)) return false;

  RandomQuant q;
  if (!DrawQuant(rng, s, forced_type, counts, &q)) return false;
  const FilterQuant filter_q = q.Filter();
  const int type = q.type;

  std::shared_ptr<const Lut> lut;
  std::string table_name;
  const int tk = ri(0, 9);
  if (tk < 3) {
    lut = RandomLut(rng, 0, 65535);
    table_name = "random";
  } else {
    const int i = ri(0, static_cast<int>(tables.luts.size()) - 1);
    lut = tables.luts[i];
    table_name = tables.names[i];
  }
  GpuOptions opts;
  opts.kernel = forced_kernel;
  if (forced_kernel == GpuKernel::kAuto && ri(0, 2) == 0) {
    opts.kernel = static_cast<GpuKernel>(ri(0, static_cast<int>(GpuKernel::kCount) - 1));
  }
  opts.zero_skip = static_cast<ZeroSkip>(ri(0, 3));
  opts.split_k = static_cast<SplitK>(ri(0, 2));
  opts.force_wide = ri(0, 4) == 0;
  if (opts.force_wide) ++counts->wide;
  char label[256];
  std::snprintf(label, sizeof(label), "%s N%d %dx%dx%d g%d f%dx%dx%dx%d s%d,%d d%d,%d pad%d,%d b%d %s%s %s",
                nchw ? "NCHW" : "NHWC", batch, in_h, in_w, groups * cg, groups, fh, fw, cg, groups * npg, sh, sw, dh,
                dw, static_cast<int>(s.pad_top), static_cast<int>(s.pad_left), q.bits, table_name.c_str(), q.channel_q.empty() ? "" : " per-channel",
                q.Schemes().c_str());
  ++counts->per_type[type];
  switch (type) {
    case 0: return RandomCaseT<float>(rng, s, q.qi, filter_q, *lut, opts, q.in_lo, q.in_hi, q.f_lo, q.f_hi, counts, label) || true;
    case 1: return RandomCaseT<double>(rng, s, q.qi, filter_q, *lut, opts, q.in_lo, q.in_hi, q.f_lo, q.f_hi, counts, label) || true;
    case 2: return RandomCaseT<__half>(rng, s, q.qi, filter_q, *lut, opts, q.in_lo, q.in_hi, q.f_lo, q.f_hi, counts, label) || true;
    default: return RandomCaseT<__nv_bfloat16>(rng, s, q.qi, filter_q, *lut, opts, q.in_lo, q.in_hi, q.f_lo, q.f_hi, counts, label) || true;
  }
}

// K past 65537 with large table entries: 32-bit sums would wrap, so this holds the wide path to the
// reference on the shapes that need it.
void WideCases(std::mt19937_64& rng, Counts* counts) {
  const auto lut = RandomLut(rng, 60000, 65535);
  struct Case {
    int64_t in[4], f[4];
  } cases[] = {{{2, 1, 2, 66000}, {1, 1, 66000, 40}}, {{1, 3, 3, 7400}, {3, 3, 7400, 33}}, {{1, 2, 2, 70000}, {1, 1, 70000, 3}}};
  for (const Case& c : cases) {
    ConvAttrs attrs;
    attrs.strides = {1, 1, 1, 1};
    attrs.dilations = {1, 1, 1, 1};
    attrs.padding = Padding::kSame;
    ConvShape s;
    const std::string err = ComputeConvShape(c.in, c.f, attrs, &s);
    if (!err.empty()) {
      std::printf("FAIL wide case shape: %s\n", err.c_str());
      ++counts->failures;
      continue;
    }
    QuantParams qi, qf;
    MakeQuantParams(-1.f, 1.f, 8, "a", "b", &qi);
    MakeQuantParams(-1.f, 1.f, 8, "a", "b", &qf);
    ++counts->wide;
    RandomCaseT<float>(rng, s, qi, qf, *lut, GpuOptions(), -1.f, 1.f, -1.f, 1.f, counts, "wide K=" + std::to_string(s.taps()));
  }
}

// A table for sums past 2^32 in the kernels' own 64-bit accumulators: every entry near 65535 but
// row zp (the activation zero point), which is below 100. With `rebased` the kernels' rebased table
// E = LUT - LUT[zp][w] (conv_gpu.cu) stays near 65535 off row zp, so the lookups themselves carry
// the sum, not the per-channel sums of row zp (as they do with a table near 65535 everywhere,
// WideCases). Without, LUT[zp][1] = 65535 too: the differences LUT - LUT[zp][w] span
// 65535 - (-250) > 65535, so the kernels take the table as it is (R = 0, no skipping).
std::shared_ptr<const Lut> LargeSumLut(int zp, bool rebased) {
  auto lut = std::make_shared<Lut>();
  for (int a = 0; a < 256; ++a)
    for (int w = 0; w < 256; ++w)
      (*lut)[(a << 8) | w] =
          static_cast<uint16_t>(a == zp ? (5 * w) % 100 : 65535 - (7 * a + 13 * w) % 251);
  if (!rebased) (*lut)[(zp << 8) | 1] = 65535;
  return lut;
}

// Sums past 2^32 on every path that takes them: each tiled kernel (64-bit accumulation, as
// K > 65537), whole tiles and K split, every zero-point skipping mode (the sparse one falls back to
// masked), the rebased and the plain table, and the direct kernel; float and double. Codes are the
// values (ranges [0, 255]: scale 1, zero point 0), a 32nd of the activations at the zero point
// (skipped lookups), so every sum is above 2^32 (checked on the reference).
void LargeSumCases(std::mt19937_64& rng, Counts* counts) {
  QuantParams q;
  MakeQuantParams(0.f, 255.f, 8, "min", "max", &q);
  const std::shared_ptr<const Lut> tables[2] = {LargeSumLut(q.zero_point, true),
                                                LargeSumLut(q.zero_point, false)};
  struct Shape {
    int64_t in[4], f[4];
    DataFormat format;
    Padding padding;
  } shapes[] = {
      {{1, 1, 3, 70000}, {1, 1, 70000, 40}, DataFormat::kNHWC, Padding::kSame},   // K = 70000
      {{1, 7800, 3, 4}, {3, 3, 7800, 40}, DataFormat::kNCHW, Padding::kValid},    // K = 70200, 3 x 3
      {{1, 1, 2, 140000}, {1, 1, 70000, 72}, DataFormat::kNHWC, Padding::kSame},  // 2 groups of 36
      {{1, 1, 2, 70000}, {1, 1, 70000, 3}, DataFormat::kNHWC, Padding::kSame},    // direct by choice
  };
  auto run = [&](const Shape& sh, bool rebased, const GpuOptions& opts, bool as_double) {
    const Lut& lut = *tables[rebased ? 0 : 1];
    ConvAttrs attrs;
    attrs.data_format = sh.format;
    attrs.strides = {1, 1, 1, 1};
    attrs.dilations = {1, 1, 1, 1};
    attrs.padding = sh.padding;
    ConvShape s;
    const std::string err = ComputeConvShape(sh.in, sh.f, attrs, &s);
    if (!err.empty()) {
      std::printf("FAIL large-sum case shape: %s\n", err.c_str());
      ++counts->failures;
      return;
    }
    std::uniform_int_distribution<int> code(0, 255), other(1, 255);
    std::vector<double> input(s.input_elements()), filter(s.filter_elements());
    for (auto& x : input) {
      x = code(rng) % 32 == 0 ? q.zero_point : (q.zero_point + other(rng)) % 256;
    }
    for (auto& x : filter) x = code(rng);
    const std::string label = "sums past 2^32, K=" + std::to_string(s.taps()) +
                              (rebased ? ", rebased table" : ", plain table");
    ++counts->wide;
    ++counts->per_type[as_double ? 1 : 0];
    int64_t min_acc = 0;
    if (as_double) {
      CheckCase<double>(s, input, filter, q, q, lut, opts, counts, label, &min_acc);
    } else {
      CheckCase<float>(s, std::vector<float>(input.begin(), input.end()),
                       std::vector<float>(filter.begin(), filter.end()), q, q, lut, opts, counts, label,
                       &min_acc);
    }
    if (min_acc <= (int64_t{1} << 32)) {
      ++counts->failures;
      std::printf("FAIL %s: a reference sum (%lld) is not past 2^32, so the case tests less than it says\n",
                  label.c_str(), static_cast<long long>(min_acc));
    }
  };
  // Each tiled kernel whole and split; over the first four kernels (rebased table) every pair of
  // split and skipping mode, the last four take the plain table.
  for (int k = 0; k < static_cast<int>(GpuKernel::kDirect); ++k) {
    for (int split = 0; split < 2; ++split) {
      GpuOptions opts;
      opts.kernel = static_cast<GpuKernel>(k);
      opts.split_k = split ? SplitK::kAlways : SplitK::kOff;
      opts.zero_skip = static_cast<ZeroSkip>((k + split) % 4);
      run(shapes[(2 * k + split) % 3], k < 4, opts, (k + split) % 2);
    }
  }
  GpuOptions direct;
  direct.kernel = GpuKernel::kDirect;
  run(shapes[0], true, direct, false);
  run(shapes[2], false, direct, true);
  run(shapes[3], true, GpuOptions(), false);
}

// Two GpuQuant entries bit for bit (floats compared as bits: -0 and +0 differ, as they would in codes).
bool SameGpuQuant(const GpuQuant& got, const GpuQuant& want) {
  auto same = [](const auto& a, const auto& b) { return std::memcmp(&a, &b, sizeof(a)) == 0; };
  auto same_params = [&](const QuantParams& x, const QuantParams& y) {
    return same(x.scale, y.scale) && same(x.quant_zero, y.quant_zero) && same(x.nudged_min, y.nudged_min) &&
           same(x.nudged_max, y.nudged_max) && x.zero_point == y.zero_point && x.quant_max == y.quant_max &&
           x.code_shift == y.code_shift && x.quant_min == y.quant_min;
  };
  auto same_terms = [&](const auto& x, const auto& y) {
    return same(x.acc_scale, y.acc_scale) && same(x.act_sum_scale, y.act_sum_scale) &&
           same(x.filter_sum_scale, y.filter_sum_scale) && same(x.constant, y.constant) &&
           x.acc_offset == y.acc_offset && x.act_sum_offset == y.act_sum_offset &&
           x.filter_sum_offset == y.filter_sum_offset;
  };
  return same_params(got.input, want.input) && same_params(got.filter, want.filter) &&
         same_terms(got.terms_float, want.terms_float) && same_terms(got.terms_double, want.terms_double) &&
         got.channels == want.channels;
}

// GpuQuantFromRanges (what the op runs) against MakeGpuQuant of the host's NudgeRange, bit for bit, on
// random ranges of every element type: ordinary, reversed, zero-width, non-finite, tiny and huge, both
// schemes, every code width, per tensor or per output channel; a range the host refuses must set the flag.
template <typename T>
int QuantFromRangesCase(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto value = [&]() -> float {
    switch (rng() % 8) {
      case 0: return 0.f;
      case 1: return std::ldexp(u(rng), static_cast<int>(rng() % 60) - 30);
      case 2: return rng() % 2 ? INFINITY : NAN;
      default: return 8.f * u(rng);
    }
  };
  // r: input_min, input_max, then the filter's (min, max) pair of each channel.
  const int channels = rng() % 3 == 0 ? 1 + static_cast<int>(rng() % 300) : 1;
  std::vector<float> r(2 + 2 * static_cast<size_t>(channels));
  for (float& x : r) x = static_cast<float>(static_cast<T>(value()));  // as the element type holds it
  for (size_t i = 0; i < r.size(); i += 2) {
    if (rng() % 4 != 0 && r[i] > r[i + 1]) std::swap(r[i], r[i + 1]);  // mostly ordered
    if (rng() % 8 == 0) r[i + 1] = r[i];
  }
  if (channels > 1 && rng() % 2 == 0) {  // mostly valid channels, so that valid calls are compared too
    for (size_t i = 2; i < r.size(); i += 2) {
      r[i] = static_cast<float>(static_cast<T>(-std::fabs(8.f * u(rng)) - 0.01f));
      r[i + 1] = static_cast<float>(static_cast<T>(std::fabs(8.f * u(rng))));
    }
  }
  GpuRanges ranges;
  ranges.filter_channels = channels;
  ranges.input_bits = kMinNumBits + static_cast<int>(rng() % (kMaxNumBits - kMinNumBits + 1));
  ranges.filter_bits = kMinNumBits + static_cast<int>(rng() % (kMaxNumBits - kMinNumBits + 1));
  ranges.input_symmetric = rng() % 2;
  ranges.filter_symmetric = rng() % 2;
  ranges.input_narrow = ranges.input_symmetric && rng() % 2;
  ranges.filter_narrow = ranges.filter_symmetric && rng() % 2;
  const int64_t taps = 1 + static_cast<int64_t>(rng() % 5000), offset = rng() % 2 ? 32768 : 0;
  QuantParams qi;
  std::vector<QuantParams> qf(static_cast<size_t>(channels));
  bool valid = NudgeRange(r[0], r[1], ranges.input_bits, ranges.input_symmetric, &qi, ranges.input_narrow) == kRangeOk;
  for (int c = 0; c < channels; ++c) {
    valid &= NudgeRange(r[2 + 2 * c], r[3 + 2 * c], ranges.filter_bits, ranges.filter_symmetric, &qf[c],
                        ranges.filter_narrow) == kRangeOk;
  }
  // Device layout: input_min, input_max, filter_min[channels], filter_max[channels].
  std::vector<T> values(r.size());
  values[0] = static_cast<T>(r[0]), values[1] = static_cast<T>(r[1]);
  for (int c = 0; c < channels; ++c) {
    values[2 + c] = static_cast<T>(r[2 + 2 * c]);
    values[2 + channels + c] = static_cast<T>(r[3 + 2 * c]);
  }
  DeviceBuffer<T> d_r(values.size());
  d_r.Upload(values);
  ranges.input_min = d_r.ptr, ranges.input_max = d_r.ptr + 1;
  ranges.filter_min = d_r.ptr + 2, ranges.filter_max = d_r.ptr + 2 + channels;
  DeviceBuffer<GpuQuant> d_q(static_cast<size_t>(channels));
  DeviceBuffer<int> d_flags(kGpuFlagCount);
  d_flags.Poison(0);
  if (!GpuQuantFromRanges(DtypeOf<T>(), ranges, taps, offset, d_q.ptr, d_flags.ptr, 0).empty()) return 1;
  const std::vector<GpuQuant> got_all = d_q.Download();
  const bool flagged = d_flags.Download()[kGpuFlagInvalidRange] != 0;
  if (flagged != !valid) return 1;
  if (!valid) return 0;
  for (int c = 0; c < channels; ++c) {
    if (!SameGpuQuant(got_all[c], MakeGpuQuant(qi, qf[c], taps, offset, channels))) return 1;
  }
  return 0;
}

void QuantFromRangesChecks(std::mt19937_64& rng, Counts* counts) {
  int failures = 0;
  for (int i = 0; i < 500; ++i) {
    failures += QuantFromRangesCase<float>(rng) + QuantFromRangesCase<double>(rng) +
                QuantFromRangesCase<__half>(rng) + QuantFromRangesCase<__nv_bfloat16>(rng);
  }
  counts->cases += 2000;
  counts->failures += failures;
  if (failures > 0) std::printf("FAIL GpuQuantFromRanges: %d of 2000 random ranges differ from the host\n", failures);
}

// splitmix64 of (seed, a table's index, a value's index): the device checks' random bit patterns.
__device__ __forceinline__ uint64_t SplitMix(uint64_t seed, int index, uint64_t i) {
  uint64_t z = seed + (static_cast<uint64_t>(index) << 40) + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// DivideByScale (quantize.h: QuantizeToCode's division on the GPU) against the device's IEEE division
// (x / scale: div.rn.f32), bit for bit (NaN as NaN): for edge scales every float x in [2^-40, 2^40], where it
// takes its own FMA path; for random scales (a few outside [2^-40, 2^40]) random bit patterns x of every kind
// (zeros, negatives, subnormals, infinities, NaN, out of range).
__global__ void DivisionKernel(const float* __restrict__ scales, int n_scales, uint32_t first_bits, uint64_t count,
                               uint64_t random_seed, unsigned long long* __restrict__ mismatches) {
  unsigned long long local = 0;
  for (int si = 0; si < n_scales; ++si) {
    const float scale = scales[si];
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
      uint32_t bits = first_bits + static_cast<uint32_t>(i);
      if (random_seed != 0) bits = static_cast<uint32_t>(SplitMix(random_seed, si, i));
      const float x = __uint_as_float(bits);
      const float want = x / scale, got = DivideByScale(x, scale);
      local += __float_as_uint(want) != __float_as_uint(got) && !(isnan(want) && isnan(got));
    }
  }
  if (local != 0) atomicAdd(mismatches, local);
}

void DivisionChecks(std::mt19937_64& rng, Counts* counts) {
  const float edges[] = {0x1p-40f, 0x1p40f, 1.f, 1.f / 255, 6.f / 255, 3.14159265f / 255, 0.1f, 0x1.fffffep-1f,
                         0x1.fffffep0f, 0x1.000002p0f, 0x1.fffffep39f, 0x1.000002p-40f};
  std::vector<float> randoms(1024);
  for (size_t i = 0; i < randoms.size(); ++i) {
    // Mostly inside [2^-40, 2^40], some outside (exponents -48 .. 47).
    const int exponent = static_cast<int>(rng() % 96) - 48;
    randoms[i] = std::ldexp(1.f + static_cast<float>(rng() % (1u << 23)) / (1u << 23), exponent);
  }
  DeviceBuffer<unsigned long long> d_mismatches(1);
  int failures = 0;
  const auto run = [&](const std::vector<float>& scales, uint32_t first_bits, uint64_t count, uint64_t seed,
                       const char* what) {
    DeviceBuffer<float> d_scales(scales.size());
    d_scales.Upload(scales);
    d_mismatches.Poison(0);
    DivisionKernel<<<2048, 256>>>(d_scales.ptr, static_cast<int>(scales.size()), first_bits, count, seed,
                                            d_mismatches.ptr);
    CUDA_OR_DIE(cudaGetLastError());
    const unsigned long long mismatches = d_mismatches.Download()[0];
    ++counts->cases;
    if (mismatches != 0) {
      ++failures;
      std::printf("FAIL DivideByScale: %llu of %zu x %llu divisions (%s) differ from x / scale\n", mismatches,
                  scales.size(), static_cast<unsigned long long>(count), what);
    }
  };
  uint32_t lo = 0, hi = 0;
  const float lo_f = 0x1p-40f, hi_f = 0x1p40f;
  std::memcpy(&lo, &lo_f, 4);
  std::memcpy(&hi, &hi_f, 4);
  run(std::vector<float>(std::begin(edges), std::end(edges)), lo, uint64_t{hi} - lo + 1, 0,
      "every x in [2^-40, 2^40], edge scales");
  run(randoms, 0, uint64_t{1} << 20, rng() | 1, "random x, random scales");
  counts->failures += failures;
  std::printf("DivideByScale: %s (12 edge scales x every float in [2^-40, 2^40]; 1024 random scales x 2^20 "
              "random floats)\n", failures == 0 ? "equal to x / scale" : "DIFFERS");
}

// FastQuantizer (quantize.h: QuantizeToCode for many values of one QuantParams) against QuantizeToCode on
// the device, code for code, for every QuantParams where it applies: per value a splitmix64 draw of random
// bits (every kind of float), a value a few ulps from a code's rounding boundary nudged_min + (k + 1/2)
// scale, a value across the range and a little past it, or a special one (zeros of both signs, the
// range's ends and their neighbours, infinities, NaN, subnormals). Code4 the same, on each thread's
// values four at a time (its branch for the rare divisions taken with the others in the group).
__global__ void FastQuantizerKernel(const QuantParams* __restrict__ params, int n_params, uint64_t count,
                                    uint64_t seed, unsigned long long* __restrict__ mismatches,
                                    unsigned long long* __restrict__ applied) {
  unsigned long long local = 0;
  for (int pi = 0; pi < n_params; ++pi) {
    const QuantParams q = params[pi];
    const FastQuantizer fast(q);
    if (!fast.applies) continue;
    if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(applied, 1ull);
    float4 group = make_float4(0.f, 0.f, 0.f, 0.f);  // the thread's last four values, the latest in w
    uint32_t group_codes = 0;                          // their codes, packed as Code4 packs them
    int in_group = 0;
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
      const uint64_t z = SplitMix(seed, pi, i);
      const uint32_t hi = static_cast<uint32_t>(z >> 32);
      const int ulps = static_cast<int>((z >> 8) % 9) - 4;
      float x;
      switch (z & 3) {
        case 0: x = __uint_as_float(hi); break;
        case 1: {
          const float k = static_cast<float>(static_cast<int>(hi % 262) - 3);
          x = __uint_as_float(__float_as_uint(q.nudged_min + (k + 0.5f) * q.scale) + ulps);
          break;
        }
        case 2: x = q.nudged_min + (static_cast<float>(hi >> 8) / 16777216.f * 1.2f - 0.1f) * (q.nudged_max - q.nudged_min); break;
        default: {
          const float specials[] = {0.f, -0.f, q.nudged_min, q.nudged_max, INFINITY, -INFINITY, NAN, 1e-45f, -1e-45f,
                                    0x1p-41f, 0x1p-40f};
          x = specials[hi % 11];
          if ((hi >> 8) & 1) x = __uint_as_float(__float_as_uint(x) + ulps);
        }
      }
      const uint8_t code = QuantizeToCode(x, q);
      local += fast.Code(x) != code;
      group = make_float4(group.y, group.z, group.w, x);
      group_codes = group_codes >> 8 | static_cast<uint32_t>(code) << 24;
      if (++in_group == 4) {
        local += fast.Code4(group) != group_codes;
        in_group = 0;
      }
    }
  }
  if (local != 0) atomicAdd(mismatches, local);
}

void FastQuantizerChecks(std::mt19937_64& rng, Counts* counts) {
  std::vector<QuantParams> params;
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  for (int i = 0; i < 400; ++i) {
    // Ranges of every size (widths 2^-30 .. 2^50: some scales outside FastQuantizer's [2^-18, 2^40], many
    // just inside it), placed anywhere about 0, with 2-8 bits, narrow and symmetric schemes; [0, 0] and
    // ranges off zero.
    const float width = std::ldexp(1.f + unit(rng), static_cast<int>(rng() % 81) - 30);
    const float lo = -width * unit(rng) * (rng() % 8 == 0 ? 3.f : 1.f);
    const float hi = i == 0 ? 0.f : lo + width;
    QuantParams q;
    const bool symmetric = rng() % 4 == 0, narrow = rng() % 4 == 0;
    if (!MakeQuantParams(i == 0 ? 0.f : lo, hi, 2 + static_cast<int>(rng() % 7), "min", "max", &q, symmetric, narrow)
             .empty()) {
      continue;
    }
    params.push_back(q);
  }
  DeviceBuffer<QuantParams> d_params(params.size());
  d_params.Upload(params);
  DeviceBuffer<unsigned long long> d_mismatches(1), d_applied(1);
  d_mismatches.Poison(0);
  d_applied.Poison(0);
  const uint64_t per_params = uint64_t{1} << 20;
  FastQuantizerKernel<<<1024, 256>>>(d_params.ptr, static_cast<int>(params.size()), per_params, rng() | 1,
                                     d_mismatches.ptr, d_applied.ptr);
  CUDA_OR_DIE(cudaGetLastError());
  const unsigned long long mismatches = d_mismatches.Download()[0], applied = d_applied.Download()[0];
  ++counts->cases;
  // Most draws must take the fast path, else the check checks little.
  const bool failed = mismatches != 0 || applied * 2 < params.size();
  if (failed) ++counts->failures;
  std::printf("FastQuantizer: %s (%llu of %zu random quantizations applied x %llu values: %llu codes or "
              "groups of four (Code4) differ from QuantizeToCode)\n",
              failed ? "FAIL" : "equal to QuantizeToCode", applied, params.size(),
              static_cast<unsigned long long>(per_params), mismatches);
}

// GpuRangeWithZero (the Keras layers' batch ranges on the GPU) against the host's RangeKeys and
// RangeFromKeys, bit for bit (any NaN as NaN): random rows x channels up to a ResNet-20 activation at batch
// 1000 (many blocks meeting in the atomics), empty ones, with -0, infinities, subnormals and NaN of either
// sign; half of them into scratch the caller zeroed, as the fused op does.
void RangeChecks(std::mt19937_64& rng, Counts* counts) {
  const int64_t shapes[][2] = {{0, 1}, {0, 4}, {1, 1}, {5, 3}, {2304, 16}, {16384000, 1}, {65536, 64}, {1000, 257}};
  const float specials[] = {-0.f, INFINITY, -INFINITY, 1e-45f, -1e-45f, NAN, -NAN};
  std::normal_distribution<float> normal(0.f, 2.f);
  int failures = 0, cases = 0;
  for (int round = 0; round < 3; ++round) {
    for (const auto& shape : shapes) {
      const int64_t rows = shape[0], channels = shape[1], n = rows * channels;
      std::vector<float> x(static_cast<size_t>(n));
      for (float& v : x) v = normal(rng);
      const int picks = n == 0 ? 0 : static_cast<int>(rng() % 8);
      for (int i = 0; i < picks; ++i) x[rng() % n] = specials[rng() % 7];
      std::vector<int32_t> pos(channels, 0), neg(channels, 0);
      RangeKeys(x.data(), rows, channels, pos.data(), neg.data());
      std::vector<float> want_min(channels), want_max(channels);
      for (int64_t c = 0; c < channels; ++c) RangeFromKeys(pos[c], neg[c], &want_min[c], &want_max[c]);
      DeviceBuffer<float> d_x(n), d_min(channels), d_max(channels);
      d_x.Upload(x);
      DeviceBuffer<uint8_t> d_scratch(GpuRangeScratchBytes(channels));
      const bool zeroed = round == 1;
      if (zeroed) d_scratch.Poison(0);
      const std::string err =
          GpuRangeWithZero(d_x.ptr, rows, channels, d_scratch.ptr, d_min.ptr, d_max.ptr, 0, zeroed);
      const std::vector<float> got_min = d_min.Download(), got_max = d_max.Download();
      const auto same = [](float a, float b) {
        return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(a)) == 0;
      };
      bool ok = err.empty();
      for (int64_t c = 0; ok && c < channels; ++c) ok = same(got_min[c], want_min[c]) && same(got_max[c], want_max[c]);
      ++cases;
      if (!ok) {
        ++failures;
        std::printf("FAIL GpuRangeWithZero %lld x %lld%s: %s\n", static_cast<long long>(rows),
                    static_cast<long long>(channels), zeroed ? " (scratch zeroed by the caller)" : "",
                    err.empty() ? "differs from the host" : err.c_str());
      }
    }
  }
  counts->cases += cases;
  counts->failures += failures;
}

// A tiled call without its workspace (missing, short, misaligned) must return an error naming it and
// launch nothing.
void WorkspaceChecks(Counts* counts) {
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kSame;
  ConvShape s;
  const int64_t in_dims[4] = {2, 8, 8, 64}, filter_dims[4] = {3, 3, 64, 64};
  if (!ComputeConvShape(in_dims, filter_dims, attrs, &s).empty()) return;
  QuantParams q;
  MakeQuantParams(-1.f, 1.f, 8, "a", "b", &q);
  DeviceBuffer<float> d_in(s.input_elements()), d_flt(s.filter_elements()), d_out(s.output_elements());
  d_in.Poison(0);
  d_flt.Poison(0);
  DeviceBuffer<uint16_t> d_lut(kLutEntries);
  d_lut.Poison(0);
  const DeviceQuant d_q(q, q, s.taps());
  const size_t need = GpuWorkspaceBytes(s);
  DeviceBuffer<uint8_t> d_ws(need + 16);
  struct Case {
    const char* what;
    void* ptr;
    size_t bytes;
  } cases[] = {{"no workspace", nullptr, 0}, {"one byte short", d_ws.ptr, need - 1}, {"misaligned", d_ws.ptr + 8, need}};
  for (const Case& c : cases) {
    GpuOptions opts;
    opts.workspace = c.ptr;
    opts.workspace_bytes = c.bytes;
    ++counts->cases;
    const std::string err = ApproxConvGpu<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_lut.ptr, d_out.ptr, 0, opts);
    if (need == 0 || err.find("workspace") == std::string::npos) {
      ++counts->failures;
      std::printf("FAIL workspace check (%s): expected an error naming the workspace, got \"%s\"\n", c.what,
                  err.c_str());
    }
  }
  CUDA_OR_DIE(cudaDeviceSynchronize());
}

// Two host threads launching the columns kernel at once on their own streams with filters of different
// sizes (so different shared memory), as TensorFlow runs independent layers: every call must succeed and
// give the outputs a lone call gives. (The kernel's shared-memory limit is the function's, shared by
// the threads: once set to each call's own need, a concurrent smaller call could undercut a launch.)
void ConcurrentLaunchChecks(std::mt19937_64& rng, Counts* counts) {
  QuantParams q;
  MakeQuantParams(-1.f, 1.f, 8, "min", "max", &q);
  const std::shared_ptr<const Lut> lut = ExactLut();
  DeviceBuffer<uint16_t> d_lut(kLutEntries);
  d_lut.Upload(std::vector<uint16_t>(lut->begin(), lut->end()));
  const DeviceQuant d_q(q, q, 1);  // the taps only enter the terms' constant, the same in both runs
  struct Job {
    ConvShape s;
    std::unique_ptr<DeviceBuffer<float>> in, flt, out;
    std::unique_ptr<Workspace> ws;
    GpuOptions opts;
    std::vector<float> lone;
    std::string error;
  } jobs[2];
  const int64_t shapes[2][2][4] = {{{8, 16, 16, 16}, {5, 5, 16, 16}}, {{8, 16, 16, 3}, {1, 1, 3, 16}}};
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int j = 0; j < 2; ++j) {
    Job& job = jobs[j];
    ConvAttrs attrs;
    attrs.strides = {1, 1, 1, 1};
    attrs.dilations = {1, 1, 1, 1};
    attrs.padding = Padding::kSame;
    const std::string err = ComputeConvShape(shapes[j][0], shapes[j][1], attrs, &job.s);
    if (!err.empty()) {
      counts->cases += 1;
      ++counts->failures;
      std::printf("FAIL concurrent columns launches shape: %s\n", err.c_str());
      return;
    }
    std::vector<float> in(job.s.input_elements()), flt(job.s.filter_elements());
    for (float& x : in) x = u(rng);
    for (float& x : flt) x = u(rng);
    job.in.reset(new DeviceBuffer<float>(in.size()));
    job.flt.reset(new DeviceBuffer<float>(flt.size()));
    job.out.reset(new DeviceBuffer<float>(job.s.output_elements()));
    job.in->Upload(in);
    job.flt->Upload(flt);
    job.opts.kernel = GpuKernel::kColumns;
    if (ChooseGpuPlan(job.s, job.opts).kernel != GpuKernel::kColumns) {
      counts->cases += 1;
      ++counts->failures;
      std::printf("FAIL concurrent columns launches: the plan for filter %lldx%lldx%lld is %s, not columns\n",
                  static_cast<long long>(job.s.filter_h), static_cast<long long>(job.s.filter_w),
                  static_cast<long long>(job.s.filter_depth), GpuKernelName(ChooseGpuPlan(job.s, job.opts).kernel));
      return;
    }
    job.ws.reset(new Workspace(job.s, &job.opts));
    job.error = ApproxConvGpu<float>(job.s, job.in->ptr, job.flt->ptr, d_q.ptr, d_lut.ptr, job.out->ptr, 0, job.opts);
    CUDA_OR_DIE(cudaDeviceSynchronize());
    job.lone = job.out->Download();
  }
  auto work = [&](Job* job) {
    cudaStream_t stream;
    if (cudaStreamCreate(&stream) != cudaSuccess) {
      job->error = "cudaStreamCreate failed";
      return;
    }
    for (int i = 0; i < 300 && job->error.empty(); ++i) {
      job->error = ApproxConvGpu<float>(job->s, job->in->ptr, job->flt->ptr, d_q.ptr, d_lut.ptr, job->out->ptr,
                                        stream, job->opts);
    }
    const cudaError_t e = cudaStreamSynchronize(stream);
    if (job->error.empty() && e != cudaSuccess) job->error = cudaGetErrorString(e);
    cudaStreamDestroy(stream);
  };
  std::thread a(work, &jobs[0]), b(work, &jobs[1]);
  a.join();
  b.join();
  for (Job& job : jobs) {
    counts->cases += 1;
    counts->outputs_checked += job.s.output_elements();
    const std::vector<float> out = job.out->Download();
    if (!job.error.empty() || std::memcmp(out.data(), job.lone.data(), out.size() * sizeof(float)) != 0) {
      ++counts->failures;
      std::printf("FAIL concurrent columns launches (filter %lldx%lldx%lld): %s\n",
                  static_cast<long long>(job.s.filter_h), static_cast<long long>(job.s.filter_w),
                  static_cast<long long>(job.s.filter_depth), job.error.empty() ? "outputs differ" : job.error.c_str());
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Baseline: the earlier tools' approach, written here. A naive 16 x 16 tiled GEMM (one output per
// thread), quantization fused into the tile loads, the table read through the texture path.
struct BaselineGeometry {
  int in_h, in_w, in_depth, filter_h, filter_w, out_depth, stride_h, stride_w, dil_h, dil_w, pad_top,
      pad_left, out_h, out_w, taps, pixels, zero_point;
};

__global__ void TextureBaselineKernel(const float* __restrict__ input, const float* __restrict__ filter,
                                      float* __restrict__ output, cudaTextureObject_t lut, BaselineGeometry g,
                                      QuantParams qi, QuantParams qf, DequantizeTerms<float> deq) {
  __shared__ uint8_t a_tile[16][17];
  __shared__ uint8_t w_tile[16][17];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int p = blockIdx.x * 16 + ty;  // this thread's output pixel and the pixel it loads
  const int co = blockIdx.y * 16 + tx;
  const int ow = p % g.out_w, oh = (p / g.out_w) % g.out_h, n = p / g.out_w / g.out_h;
  int acc = 0, a_sum = 0, w_sum = 0;
  for (int k0 = 0; k0 < g.taps; k0 += 16) {
    const int k = k0 + tx;
    uint8_t a = 0;
    if (p < g.pixels && k < g.taps) {
      const int ci = k % g.in_depth, kw = (k / g.in_depth) % g.filter_w, kh = k / g.in_depth / g.filter_w;
      const int ih = oh * g.stride_h - g.pad_top + kh * g.dil_h, iw = ow * g.stride_w - g.pad_left + kw * g.dil_w;
      a = (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
              ? QuantizeToCode(input[((n * g.in_h + ih) * g.in_w + iw) * g.in_depth + ci], qi)
              : static_cast<uint8_t>(g.zero_point);
    }
    a_tile[ty][tx] = a;
    const int kw_row = k0 + ty;
    w_tile[ty][tx] = (kw_row < g.taps && co < g.out_depth) ? QuantizeToCode(filter[kw_row * g.out_depth + co], qf) : 0;
    __syncthreads();
    const int rows = min(16, g.taps - k0);
    for (int kk = 0; kk < rows; ++kk) {
      const int av = a_tile[ty][kk], wv = w_tile[kk][tx];
      acc += tex1Dfetch<unsigned short>(lut, (av << 8) | wv);
      a_sum += av;
      w_sum += wv;
    }
    __syncthreads();
  }
  if (p < g.pixels && co < g.out_depth) output[static_cast<int64_t>(p) * g.out_depth + co] = deq(acc, a_sum, w_sum);
}

struct Baseline {
  cudaTextureObject_t tex = 0;
  explicit Baseline(const uint16_t* d_lut) {
    cudaResourceDesc res = {};
    res.resType = cudaResourceTypeLinear;
    res.res.linear.devPtr = const_cast<uint16_t*>(d_lut);
    res.res.linear.desc = cudaCreateChannelDesc<unsigned short>();
    res.res.linear.sizeInBytes = kLutFileBytes;
    cudaTextureDesc td = {};
    td.readMode = cudaReadModeElementType;
    CUDA_OR_DIE(cudaCreateTextureObject(&tex, &res, &td, nullptr));
  }
  ~Baseline() { cudaDestroyTextureObject(tex); }
  void Launch(const ConvShape& s, const float* in, const float* flt, float* out, const QuantParams& qi,
              const QuantParams& qf) const {
    BaselineGeometry g{int(s.in_h), int(s.in_w), int(s.in_depth), int(s.filter_h), int(s.filter_w), int(s.out_depth),
                       int(s.stride_h), int(s.stride_w), int(s.dilation_h), int(s.dilation_w), int(s.pad_top),
                       int(s.pad_left), int(s.out_h), int(s.out_w), int(s.taps()), int(s.out_pixels()), qi.zero_point};
    dim3 grid(static_cast<unsigned>((s.out_pixels() + 15) / 16), static_cast<unsigned>((s.out_depth + 15) / 16));
    TextureBaselineKernel<<<grid, dim3(16, 16), 0, 0>>>(in, flt, out, tex, g, qi, qf,
                                                        DequantizeTerms<float>(qi, qf, s.taps()));
    CUDA_OR_DIE(cudaGetLastError());
  }
};

double MedianMs(const std::function<void()>& fn, int runs) {
  for (int i = 0; i < 3; ++i) fn();  // warm-up: module load, caches, clocks
  CUDA_OR_DIE(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> ev(2 * runs);
  for (auto& e : ev) CUDA_OR_DIE(cudaEventCreate(&e));
  for (int i = 0; i < runs; ++i) {
    CUDA_OR_DIE(cudaEventRecord(ev[2 * i]));
    fn();
    CUDA_OR_DIE(cudaEventRecord(ev[2 * i + 1]));
  }
  CUDA_OR_DIE(cudaDeviceSynchronize());
  std::vector<double> ms(runs);
  for (int i = 0; i < runs; ++i) {
    float t = 0;
    CUDA_OR_DIE(cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]));
    ms[i] = t;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[runs / 2];
}

struct BenchShape {
  const char* name;
  int batch, hw, cin, cout, k;
  int stride = 1;
};

ConvShape MakeBenchShape(const BenchShape& b, int batch) {
  ConvAttrs attrs;
  attrs.strides = {1, b.stride, b.stride, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kSame;
  const int64_t in[4] = {batch, b.hw, b.hw, b.cin}, f[4] = {b.k, b.k, b.cin, b.cout};
  ConvShape s;
  const std::string err = ComputeConvShape(in, f, attrs, &s);
  if (!err.empty()) {
    std::fprintf(stderr, "bench shape: %s\n", err.c_str());
    std::exit(2);
  }
  return s;
}

// performance.md's data: half of the activations exactly at real zero (the zero point), the rest
// normal around it (sd 30 codes); weights normal around code 128 (sd 20). Or uniform over the range.
void FillData(std::mt19937_64& rng, bool realistic, const QuantParams& qi, const QuantParams& qf,
              std::vector<float>* in, std::vector<float>* flt) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  for (auto& x : *in) {
    if (realistic) {
      x = ud(rng) < 0.5f ? 0.f : nd(rng) * 30.f * qi.scale;
    } else {
      x = qi.nudged_min + ud(rng) * (qi.nudged_max - qi.nudged_min);
    }
  }
  for (auto& x : *flt) {
    x = realistic ? nd(rng) * 20.f * qf.scale : qf.nudged_min + ud(rng) * (qf.nudged_max - qf.nudged_min);
  }
}

// A benchmark layer at its batch with realistic data (the benchmark ranges) on the device, and a buffer for
// its output.
struct BenchData {
  ConvShape s;
  DeviceBuffer<float> d_in, d_flt, d_out;
  BenchData(std::mt19937_64& rng, const BenchShape& b, const QuantParams& qi, const QuantParams& qf)
      : s(MakeBenchShape(b, b.batch)), d_in(s.input_elements()), d_flt(s.filter_elements()), d_out(s.output_elements()) {
    std::vector<float> in(d_in.count), flt(d_flt.count);
    FillData(rng, true, qi, qf, &in, &flt);
    d_in.Upload(in);
    d_flt.Upload(flt);
  }
};

// performance.md's layers.
const BenchShape kBenchShapes[] = {{"3x3 56x56 64->64", 64, 56, 64, 64, 3},
                                   {"3x3 28x28 128->128", 64, 28, 128, 128, 3},
                                   {"3x3 14x14 256->256", 64, 14, 256, 256, 3},
                                   {"3x3 7x7 512->512", 64, 7, 512, 512, 3},
                                   {"1x1 56x56 64->256", 64, 56, 64, 256, 1},
                                   // A CIFAR ResNet-20's 3x3 layers at batch 1000 (the stem, and each stage).
                                   {"R20 32x32 3->16", 1000, 32, 3, 16, 3},
                                   {"R20 32x32 16->16", 1000, 32, 16, 16, 3},
                                   {"R20 16x16 32->32", 1000, 16, 32, 32, 3},
                                   {"R20 8x8 64->64", 1000, 8, 64, 64, 3},
                                   // Its stride-2 layers: the first 3x3 of stages two and three, and the
                                   // 1x1 projections of their shortcuts.
                                   {"R20 3x3 s2 16->32", 1000, 32, 16, 32, 3, 2},
                                   {"R20 1x1 s2 16->32", 1000, 32, 16, 32, 1, 2},
                                   {"R20 1x1 s2 32->64", 1000, 16, 32, 64, 1, 2}};
// (The first five of kBenchShapes are performance.md's five layers.)

// The ranges of the benchmark layers: input [-2, 6] (zero point 64), filter [-1, 1] (zero point 128).
void BenchQuantParams(QuantParams* qi, QuantParams* qf) {
  MakeQuantParams(-2.f, 6.f, 8, "input_min", "input_max", qi);
  MakeQuantParams(-1.f, 1.f, 8, "filter_min", "filter_max", qf);
}

// Every tiled kernel and the columns kernel on every benchmark layer, K split where the choice would
// split it (what ChooseGpuPlan's model is checked against).
void Sweep(std::mt19937_64& rng, const Lut& lut, int runs) {
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);
  const DeviceTable d_table(lut);
  std::vector<GpuKernel> kernels;
  for (int k = 0; k < static_cast<int>(GpuKernel::kDirect); ++k) kernels.push_back(static_cast<GpuKernel>(k));
  kernels.push_back(GpuKernel::kColumns);
  std::printf("\nSweep: G LUT-MAC/s of each tiled kernel and the columns kernel (realistic / uniform data), * = ChooseGpuPlan's pick\n");
  std::printf("%-20s", "shape");
  for (GpuKernel k : kernels) std::printf(" %18s", GpuKernelName(k));
  std::printf("\n");
  for (const BenchShape& b : kBenchShapes) {
    const ConvShape s = MakeBenchShape(b, b.batch);
    DeviceBuffer<float> d_in(s.input_elements()), d_flt(s.filter_elements()), d_out(s.output_elements());
    const DeviceQuant d_q(qi, qf, s.taps());
    std::vector<double> rate[2];
    for (int realistic = 1; realistic >= 0; --realistic) {
      std::vector<float> in(s.input_elements()), flt(s.filter_elements());
      FillData(rng, realistic, qi, qf, &in, &flt);
      d_in.Upload(in);
      d_flt.Upload(flt);
      for (GpuKernel k : kernels) {
        GpuOptions opts;
        opts.kernel = k;
        d_table.Attach(&opts);
        const Workspace d_ws(s, &opts);
        const double ms = MedianMs(
            [&] { ApproxConvGpu<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_table.lut.ptr, d_out.ptr, 0, opts); }, runs);
        rate[realistic].push_back(static_cast<double>(s.lut_macs()) / ms * 1e-6);
      }
    }
    std::printf("%-20s", b.name);
    for (size_t i = 0; i < kernels.size(); ++i)
      std::printf(" %c%7.0f / %7.0f", ChooseGpuPlan(s).kernel == kernels[i] ? '*' : ' ', rate[1][i], rate[0][i]);
    std::printf("\n");
  }
}

// Per-channel filter ranges and symmetric (signed) schemes against the per-tensor asymmetric call on the
// benchmark layers: the chosen kernel, realistic data, each variant first checked against the reference
// at batch 2. Signed products are timed with the int16 tables' offset of 32768 in the terms.
void SchemeTiming(std::mt19937_64& rng, const Lut& lut, int runs, Counts* counts) {
  QuantParams qi, qf, qi_sym, qf_sym;
  BenchQuantParams(&qi, &qf);
  NudgeRange(-2.f, 6.f, 8, true, &qi_sym);
  NudgeRange(-1.f, 1.f, 8, true, &qf_sym);
  const DeviceTable d_table(lut);
  std::printf("\nSchemes: ms of the chosen kernel, realistic data (median of %d runs)\n", runs);
  std::printf("%-20s %14s %15s %7s %17s %7s\n", "shape", "per-tensor ms", "per-channel ms", "ratio",
              "symmetric s8 ms", "ratio");
  for (const BenchShape& b : kBenchShapes) {
    std::vector<QuantParams> channel_q(static_cast<size_t>(b.cout));
    std::uniform_real_distribution<float> spread(0.8f, 1.25f);
    for (QuantParams& q : channel_q) {
      const float a = spread(rng);
      MakeQuantParams(-a, a, 8, "filter_min", "filter_max", &q);
    }
    const FilterQuant per_channel(channel_q.data(), b.cout);
    {
      const ConvShape small = MakeBenchShape(b, 2);
      std::vector<float> in(small.input_elements()), flt(small.filter_elements());
      FillData(rng, true, qi, qf, &in, &flt);
      CheckCase<float>(small, in, flt, qi, per_channel, lut, GpuOptions(), counts, std::string(b.name) + " per-channel");
      CheckCase<float>(small, in, flt, qi_sym, qf_sym, lut, GpuOptions(), counts, std::string(b.name) + " symmetric");
      ++counts->per_channel;
    }
    BenchData data(rng, b, qi, qf);
    const ConvShape& s = data.s;
    const DeviceBuffer<float>& d_in = data.d_in;
    const DeviceBuffer<float>& d_flt = data.d_flt;
    DeviceBuffer<float>& d_out = data.d_out;
    GpuOptions opts;
    d_table.Attach(&opts);
    const Workspace d_ws(s, &opts);
    auto time = [&](const DeviceQuant& d_q) {
      return MedianMs([&] { ApproxConvGpu<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_table.lut.ptr, d_out.ptr, 0, opts); },
                      runs);
    };
    const double tensor_ms = time(DeviceQuant(qi, qf, s.taps()));
    const double channel_ms = time(DeviceQuant(qi, per_channel, s.taps()));
    const double symmetric_ms = time(DeviceQuant(qi_sym, qf_sym, s.taps(), 32768));
    std::printf("%-20s %14.3f %15.3f %7.3f %17.3f %7.3f\n", b.name, tensor_ms, channel_ms, channel_ms / tensor_ms,
                symmetric_ms, symmetric_ms / tensor_ms);
  }
}

int Bench(std::mt19937_64& rng, const Tables& tables, int runs, bool sweep, Counts* counts) {
  const auto& shapes = kBenchShapes;
  std::shared_ptr<const Lut> l40;
  for (size_t i = 0; i < tables.names.size(); ++i)
    if (tables.names[i] == "mul8u_L40") l40 = tables.luts[i];
  const char* table_name = "mul8u_L40";
  if (!l40) {
    std::printf("mul8u_L40 not found: timing with a random table instead\n");
    l40 = RandomLut(rng, 0, 65535);
    table_name = "random";
  }
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);

  // Exactness on the benchmark layers themselves (batch 2, realistic data, the timed table).
  for (const BenchShape& b : shapes) {
    const ConvShape s = MakeBenchShape(b, 2);
    std::vector<float> in(s.input_elements()), flt(s.filter_elements());
    FillData(rng, true, qi, qf, &in, &flt);
    GpuPlan used;
    const std::string err = CheckOne<float>(s, in, flt, qi, qf, *l40, GpuOptions(), &used);
    counts->Add(used, s.output_elements());
    if (!err.empty()) {
      ++counts->failures;
      std::printf("FAIL bench shape %s (N=2): %s\n", b.name, err.c_str());
    }
  }

  const DeviceTable d_table(*l40);
  Baseline baseline(d_table.lut.ptr);
  std::printf("\nTiming: table %s, float32 NHWC, SAME, stride 1, median of %d runs after 3 warm-ups (CUDA events)\n",
              table_name, runs);
  std::printf("%-20s %-9s %-19s %9s %10s %10s %10s %10s %11s %10s %6s\n", "shape", "data", "kernel", "ms",
              "G LUT-MAC/s", "dense G/s", "masked G/s", "sparse G/s", "base ms", "base G/s", "ratio");
  int mismatches = 0;
  for (const BenchShape& b : shapes) {
    const ConvShape s = MakeBenchShape(b, b.batch);
    DeviceBuffer<float> d_in(s.input_elements()), d_flt(s.filter_elements()), d_out(s.output_elements()),
        d_base(s.output_elements());
    const DeviceQuant d_q(qi, qf, s.taps());
    const GpuPlan plan = ChooseGpuPlan(s);
    GpuOptions auto_opts;
    const Workspace d_ws(s, &auto_opts);  // every path below runs the same plan
    const std::string kernel_name = std::string(GpuKernelName(plan.kernel)) + (plan.split_k ? " split-k" : "");
    for (int realistic = 1; realistic >= 0; --realistic) {
      std::vector<float> in(s.input_elements()), flt(s.filter_elements());
      FillData(rng, realistic, qi, qf, &in, &flt);
      d_in.Upload(in);
      d_flt.Upload(flt);
      d_out.Poison(0xFF);
      d_base.Poison(0xFF);
      std::string err;
      // Median ms of the chosen kernel with zero-point skipping as `skip` says (output in d_out).
      auto time_skip = [&](ZeroSkip skip) {
        GpuOptions opts;
        opts.zero_skip = skip;
        d_ws.Attach(&opts);
        d_table.Attach(&opts);
        return MedianMs(
            [&] {
              const std::string e = ApproxConvGpu<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_table.lut.ptr, d_out.ptr, 0, opts);
              if (!e.empty()) err = e;
            },
            runs);
      };
      const double ms = time_skip(ZeroSkip::kAuto);
      const std::vector<float> out = d_out.Download();
      // Each path alone: dense (no skipping), masked, and sparse wherever the table allows them.
      d_out.Poison(0xFF);
      const double dense_ms = time_skip(ZeroSkip::kOff);
      const std::vector<float> dense_out = d_out.Download();
      d_out.Poison(0xFF);
      const double masked_ms = time_skip(ZeroSkip::kMasked);
      const std::vector<float> masked_out = d_out.Download();
      d_out.Poison(0xFF);
      const double sparse_ms = time_skip(ZeroSkip::kSparse);
      const std::vector<float> sparse_out = d_out.Download();
      const double base_ms = MedianMs([&] { baseline.Launch(s, d_in.ptr, d_flt.ptr, d_base.ptr, qi, qf); }, runs);
      if (!err.empty()) {
        std::printf("FAIL %s: %s\n", b.name, err.c_str());
        ++counts->failures;
        continue;
      }
      // Same integers, same epilogue: the kernels must agree bit for bit on the full layer.
      const std::vector<float> base = d_base.Download();
      const std::pair<const char*, const std::vector<float>*> outputs[] = {
          {"auto", &out}, {"dense", &dense_out}, {"masked", &masked_out}, {"sparse", &sparse_out}};
      for (const auto& o : outputs) {
        if (std::memcmp(o.second->data(), base.data(), base.size() * sizeof(float)) != 0) {
          ++mismatches;
          ++counts->failures;
          std::printf("FAIL %s: kernel (%s) and baseline outputs differ\n", b.name, o.first);
        }
      }
      const double macs = static_cast<double>(s.lut_macs());
      std::printf("%-20s %-9s %-19s %9.3f %10.0f %10.0f %10.0f %10.0f %11.3f %10.0f %6.2f\n", b.name,
                  realistic ? "realistic" : "uniform", kernel_name.c_str(), ms, macs / ms * 1e-6,
                  macs / dense_ms * 1e-6, macs / masked_ms * 1e-6, macs / sparse_ms * 1e-6, base_ms,
                  macs / base_ms * 1e-6, base_ms / ms);
    }
  }
  SchemeTiming(rng, *l40, runs, counts);
  if (sweep) Sweep(rng, *l40, runs);
  return mismatches;
}

// ---------------------------------------------------------------------------------------------------
// The decomposed kernel (conv_gpu_decomposed.cu): an int8 tensor-core GEMM for tables with an exact
// decomposition, held to the CPU reference (acc, act_sum, output bits) and to the lookups on the table
// the decomposition describes (output bits).

// A decomposition in host memory (what TableDecomposition points at, owned).
struct HostDecomposition {
  std::string name;
  int terms = 0;
  std::vector<int8_t> u, v;          // [terms][256]
  std::vector<int32_t> alpha, beta;  // [256]
  int64_t c0 = 0;

  TableDecomposition View() const {
    TableDecomposition d;
    d.terms = terms;
    d.u = u.data();
    d.v = v.data();
    d.alpha = alpha.data();
    d.beta = beta.data();
    d.c0 = c0;
    return d;
  }
};

// The table `d` describes, in int64 as the definition reads; "" or why it is no uint16 table.
std::string TableOf(const HostDecomposition& d, Lut* lut) {
  for (int a = 0; a < 256; ++a) {
    for (int w = 0; w < 256; ++w) {
      int64_t t = d.c0 + d.alpha[a] + d.beta[w];
      for (int r = 0; r < d.terms; ++r) t += int64_t{d.u[r * 256 + a]} * d.v[r * 256 + w];
      if (t < 0 || t > 65535) {
        return d.name + ": entry (" + std::to_string(a) + ", " + std::to_string(w) + ") = " + std::to_string(t) +
               " is outside [0, 65535]";
      }
      (*lut)[(a << 8) | w] = static_cast<uint16_t>(t);
    }
  }
  return "";
}

// The exact product as one term: (a - 128)(w - 128) + 128a + 128w - 16384 = a * w.
HostDecomposition ExactDecomposition() {
  HostDecomposition d;
  d.name = "exact";
  d.terms = 1;
  d.u.resize(256);
  d.v.resize(256);
  d.alpha.resize(256);
  d.beta.resize(256);
  for (int c = 0; c < 256; ++c) {
    d.u[c] = d.v[c] = static_cast<int8_t>(c - 128);
    d.alpha[c] = d.beta[c] = 128 * c;
  }
  d.c0 = -16384;
  return d;
}

// A random decomposition of `terms` terms whose table lies in [0, 65535]: each term has one operand
// over the whole int8 range (a quarter of the terms only its extremes -128 and 127) and the other
// narrow enough that the products of all terms span at most 60000; alpha and beta take the rest of the
// range around large offsets (up to 2^24, cancelled by c0), so the 64-bit free terms are exercised.
HostDecomposition RandomDecomposition(std::mt19937_64& rng, int terms) {
  auto ri = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  HostDecomposition d;
  d.name = "random" + std::to_string(terms);
  d.terms = terms;
  d.u.resize(static_cast<size_t>(terms) * 256);
  d.v.resize(static_cast<size_t>(terms) * 256);
  const int narrow = std::max(1, std::min(127, 60000 / (terms * 2 * 128)));
  for (int r = 0; r < terms; ++r) {
    const bool u_full = ri(0, 1) == 1, extremes = ri(0, 3) == 0;
    for (int c = 0; c < 256; ++c) {
      const int full = extremes ? (ri(0, 1) ? -128 : 127) : ri(-128, 127);
      const int small = ri(-narrow, narrow);
      d.u[r * 256 + c] = static_cast<int8_t>(u_full ? full : small);
    }
    for (int c = 0; c < 256; ++c) {
      const int full = extremes ? (ri(0, 1) ? -128 : 127) : ri(-128, 127);
      const int small = ri(-narrow, narrow);
      d.v[r * 256 + c] = static_cast<int8_t>(u_full ? small : full);
    }
  }
  std::vector<int64_t> products(kLutEntries, 0);
  for (int a = 0; a < 256; ++a)
    for (int w = 0; w < 256; ++w)
      for (int r = 0; r < terms; ++r) products[(a << 8) | w] += int64_t{d.u[r * 256 + a]} * d.v[r * 256 + w];
  const auto span = std::minmax_element(products.begin(), products.end());
  const int slack = static_cast<int>((65535 - (*span.second - *span.first)) / 2);
  const int alpha_base = ri(-(1 << 24), 1 << 24), beta_base = ri(-(1 << 24), 1 << 24);
  d.alpha.resize(256);
  d.beta.resize(256);
  for (int c = 0; c < 256; ++c) d.alpha[c] = alpha_base + ri(0, slack);
  for (int c = 0; c < 256; ++c) d.beta[c] = beta_base + ri(0, slack);
  int64_t lowest = INT64_MAX;
  for (int a = 0; a < 256; ++a)
    for (int w = 0; w < 256; ++w) lowest = std::min(lowest, products[(a << 8) | w] + d.alpha[a] + d.beta[w]);
  d.c0 = -lowest;
  return d;
}

// A NAME.decomp file of benchmarks/gpu/export_decompositions.py (little-endian): int32 terms, int8
// u[terms][256], int8 v[terms][256], int32 alpha[256], int32 beta[256], int64 c0.
std::string LoadDecompositionFile(const std::string& path, HostDecomposition* d) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return path + ": cannot open";
  std::vector<unsigned char> bytes;
  unsigned char buffer[4096];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), f)) > 0 && bytes.size() < (1u << 20)) {
    bytes.insert(bytes.end(), buffer, buffer + got);
  }
  std::fclose(f);
  int32_t terms = -1;
  if (bytes.size() >= 4) std::memcpy(&terms, bytes.data(), 4);
  if (terms < 0 || terms > kGpuDecomposedMaxTerms) return path + ": bad term count " + std::to_string(terms);
  const size_t want = 4 + 2 * static_cast<size_t>(terms) * 256 + 2 * 256 * 4 + 8;
  if (bytes.size() != want) {
    return path + ": " + std::to_string(bytes.size()) + " bytes, expected " + std::to_string(want) + " for " +
           std::to_string(terms) + " terms";
  }
  d->terms = terms;
  const unsigned char* p = bytes.data() + 4;
  d->u.assign(reinterpret_cast<const int8_t*>(p), reinterpret_cast<const int8_t*>(p) + terms * 256);
  p += terms * 256;
  d->v.assign(reinterpret_cast<const int8_t*>(p), reinterpret_cast<const int8_t*>(p) + terms * 256);
  p += terms * 256;
  d->alpha.resize(256);
  d->beta.resize(256);
  std::memcpy(d->alpha.data(), p, 256 * 4);
  std::memcpy(d->beta.data(), p + 256 * 4, 256 * 4);
  std::memcpy(&d->c0, p + 2 * 256 * 4, 8);
  return "";
}

struct DecomposedTable {
  HostDecomposition decomposition;
  std::shared_ptr<const Lut> lut;
};

// Every DIR/NAME.decomp whose DIR/NAME.bin exists, each verified on the host to reproduce that table
// exactly (a file that does not is a failure: the exporter and the harness disagree on the format).
std::vector<DecomposedTable> LoadDecompositions(const std::string& dir, Counts* counts) {
  std::vector<std::string> names;
  if (DIR* folder = opendir(dir.c_str())) {
    while (const dirent* entry = readdir(folder)) {
      const std::string file = entry->d_name;
      const std::string suffix = ".decomp";
      if (file.size() > suffix.size() && file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0) {
        names.push_back(file.substr(0, file.size() - suffix.size()));
      }
    }
    closedir(folder);
  }
  std::sort(names.begin(), names.end());
  std::vector<DecomposedTable> tables;
  for (const std::string& name : names) {
    std::shared_ptr<const Lut> lut;
    if (!LoadLutFile(dir + "/" + name + ".bin", &lut).empty()) {
      std::printf("decomposition %s: no %s.bin beside it, not used\n", name.c_str(), name.c_str());
      continue;
    }
    DecomposedTable t;
    t.decomposition.name = name;
    std::string err = LoadDecompositionFile(dir + "/" + name + ".decomp", &t.decomposition);
    Lut rebuilt;
    if (err.empty()) err = TableOf(t.decomposition, &rebuilt);
    if (err.empty() && rebuilt != *lut) err = "does not reproduce " + name + ".bin";
    ++counts->cases;
    if (!err.empty()) {
      ++counts->failures;
      std::printf("FAIL decomposition file %s: %s\n", name.c_str(), err.c_str());
      continue;
    }
    t.lut = lut;
    tables.push_back(std::move(t));
  }
  return tables;
}

// A decomposition in device memory for the lifetime of the object.
struct DeviceDecomposition {
  GpuDecomposition d;
  explicit DeviceDecomposition(const HostDecomposition& host) {
    const std::string err = GpuDecompositionUpload(host.View(), &d);
    if (!err.empty()) {
      std::fprintf(stderr, "GpuDecompositionUpload(%s): %s\n", host.name.c_str(), err.c_str());
      std::exit(2);
    }
  }
  ~DeviceDecomposition() { GpuDecompositionFree(&d); }
  DeviceDecomposition(const DeviceDecomposition&) = delete;
  DeviceDecomposition& operator=(const DeviceDecomposition&) = delete;
};


// Runs one case through ApproxConvGpuDecomposed (with the decomposition of `lut`), the CPU reference
// and ApproxConvGpu on `lut`; returns "" or what differs.
template <typename T>
std::string CheckDecomposedOne(const ConvShape& s, const std::vector<T>& input, const std::vector<T>& filter,
                               const QuantParams& qi, const FilterQuant& qf, const HostDecomposition& decomposition,
                               const Lut& lut, const GpuDecomposedOptions& base_opts) {
  const Reference<T> ref = ReferenceOf(s, input, filter, qi, qf, lut);

  DeviceBuffer<T> d_in(input.size()), d_flt(filter.size()), d_out(s.output_elements()), d_lookup(s.output_elements());
  DeviceBuffer<int64_t> d_acc(ref.acc.size()), d_act(ref.act.size());
  d_in.Upload(input);
  d_flt.Upload(filter);
  d_out.Poison(0xFF);  // NaN in every float type: an unwritten element cannot match
  d_lookup.Poison(0xFF);
  d_acc.Poison(0xA5);
  d_act.Poison(0xA5);
  const DeviceQuant d_q(qi, qf, s.taps());
  const DeviceDecomposition d_dec(decomposition);
  DeviceBuffer<uint8_t> d_ws(GpuDecomposedWorkspaceBytes(s, d_dec.d.terms));
  d_ws.Poison(0xA5);  // the call must write (or clear) what it reads
  DeviceBuffer<int> d_flags(kGpuFlagCount);
  d_flags.Poison(0);
  std::string err = GpuScanNan(DtypeOf<T>(), s, d_in.ptr, d_flt.ptr, d_flags.ptr, 0);
  if (!err.empty()) return "GpuScanNan failed: " + err;
  GpuDecomposedOptions opts = base_opts;
  opts.debug_acc = d_acc.ptr;
  opts.debug_act_sum = d_act.ptr;
  err = ApproxConvGpuDecomposed<T>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_dec.d, d_out.ptr, 0, d_ws.ptr, d_ws.count, opts);
  if (!err.empty()) return "ApproxConvGpuDecomposed failed: " + err;
  err = GpuPropagateNan(DtypeOf<T>(), s, d_in.ptr, d_flt.ptr, d_out.ptr, d_flags.ptr, 0);
  if (!err.empty()) return "GpuPropagateNan failed: " + err;
  // The lookups on the same table.
  DeviceBuffer<uint16_t> d_lut(kLutEntries);
  d_lut.Upload(std::vector<uint16_t>(lut.begin(), lut.end()));
  GpuOptions lookup_opts;
  const Workspace d_lookup_ws(s, &lookup_opts);
  err = ApproxConvGpu<T>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_lut.ptr, d_lookup.ptr, 0, lookup_opts);
  if (!err.empty()) return "ApproxConvGpu failed: " + err;
  err = GpuPropagateNan(DtypeOf<T>(), s, d_in.ptr, d_flt.ptr, d_lookup.ptr, d_flags.ptr, 0);
  if (!err.empty()) return "GpuPropagateNan failed: " + err;
  std::vector<T> out;
  err = DifferenceFromReference(d_acc, d_act, d_out, ref, &out);
  if (!err.empty()) return err;
  const std::vector<T> lookup = d_lookup.Download();
  if (std::memcmp(out.data(), lookup.data(), out.size() * sizeof(T)) != 0) {
    return "outputs differ from ApproxConvGpu's on the same table";
  }
  // Again without the debug sums, as the op calls it: the epilogues then take their narrow paths
  // (NarrowSumsFit), which the call above leaves out. (Untuned: the same tile as above.)
  opts.debug_acc = nullptr;
  opts.debug_act_sum = nullptr;
  opts.tune = false;
  d_out.Poison(0xFF);
  err = ApproxConvGpuDecomposed<T>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_dec.d, d_out.ptr, 0, d_ws.ptr, d_ws.count, opts);
  if (!err.empty()) return "ApproxConvGpuDecomposed (no debug sums) failed: " + err;
  err = GpuPropagateNan(DtypeOf<T>(), s, d_in.ptr, d_flt.ptr, d_out.ptr, d_flags.ptr, 0);
  if (!err.empty()) return "GpuPropagateNan failed: " + err;
  if (std::memcmp(out.data(), d_out.Download().data(), out.size() * sizeof(T)) != 0) {
    return "outputs without the debug sums differ from those with them";
  }
  return "";
}

// CheckDecomposedOne, counted, and reported if it fails (among the first ten failures).
template <typename T>
bool CheckDecomposedCase(const ConvShape& s, const std::vector<T>& input, const std::vector<T>& filter,
                         const QuantParams& qi, const FilterQuant& qf, const HostDecomposition& decomposition,
                         const Lut& lut, const GpuDecomposedOptions& opts, Counts* counts, const std::string& label) {
  const std::string err = CheckDecomposedOne<T>(s, input, filter, qi, qf, decomposition, lut, opts);
  ++counts->cases;
  ++counts->decomposed;
  counts->outputs_checked += s.output_elements();
  // The tile that ran: the one asked for, else the call's plan (tuned by its first call, or the rules').
  const GpuDecomposedTile ran = opts.tile != GpuDecomposedTile::kAuto
                                    ? opts.tile
                                    : GpuDecomposedPlanFor(s, decomposition.terms, DtypeOf<T>()).tile;
  if (ran >= GpuDecomposedTile::kTile128x128 && ran < GpuDecomposedTile::kCount) {
    ++counts->per_tile[static_cast<int>(ran)];
  }
  if (err.empty()) return true;
  ++counts->failures;
  if (counts->failures <= 10) {
    const GpuDecomposedTile tile =
        opts.tile == GpuDecomposedTile::kAuto ? ChooseGpuDecomposedTile(s, decomposition.terms) : opts.tile;
    std::printf("FAIL decomposed %s [%s, %s %d terms, %s%s%s%s%s]: %s\n", label.c_str(), TypeName<T>(),
                decomposition.name.c_str(), decomposition.terms, GpuDecomposedTileName(tile),
                opts.plain_fragment_loads ? ", plain loads" : "",
                opts.separate_prepasses ? ", separate pre-passes" : "",
                opts.halo_beside == GpuBeside::kOn ? ", halo beside" : "",
                opts.halo_streaming == GpuBeside::kOn ? ", streaming" : "", err.c_str());
  }
  return false;
}

// One random shape (batch 1-8, 1-20 pixels a side, 1x1 / 3x3 / 5x5 filters, strides and dilations 1-2,
// every padding, channels mostly multiples of 16 but not always, groups), quantization, element type,
// decomposition (random, the exact product, or a table file's) and tile; false when the attributes
// were invalid or the case too large for the CPU reference. `tma`: a shape the TMA tile takes (64 or 128
// input channels a group: slices of whole 64-byte stages whatever the terms; 1x1 or 3x3 filters), run on it.
// forced_tile: a tile every case runs on where it takes the case (else the auto-choice), the shapes drawn
// among those it takes: the TMA tile (64 or 128 channels a group, 1x1 or 3x3 filters), the pointwise tiles
// (1x1 filters of one group, 16-256 input channels in steps of 16, no padding).
bool RandomDecomposedCase(std::mt19937_64& rng, const std::vector<DecomposedTable>& files, Counts* counts,
                          int forced_type = -1, GpuDecomposedTile forced_tile = GpuDecomposedTile::kAuto) {
  auto ri = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const bool tma = forced_tile == GpuDecomposedTile::kTileTma256x64k64;
  const bool pointwise = forced_tile == GpuDecomposedTile::kTilePointwise128x256 ||
                         forced_tile == GpuDecomposedTile::kTilePointwise64x256;
  const bool nchw = ri(0, 3) == 0;
  int groups = 1, cg, npg;
  const int gk = pointwise ? 0 : ri(0, tma ? 8 : 9);
  if (gk < 7) {
    groups = 1;
  } else if (gk < 9) {
    groups = ri(2, 4);
  } else {
    groups = ri(2, 24);  // depthwise-like
  }
  auto channels = [&](int most) { return ri(0, 4) < 3 ? 16 * ri(1, most / 16) : ri(1, most); };
  cg = gk == 9 ? 1 : tma ? 64 * ri(1, groups == 1 ? 2 : 1) : pointwise ? 16 * ri(1, 16) : channels(groups == 1 ? 80 : 48);
  npg = gk == 9 ? ri(1, 2) : pointwise ? (ri(0, 2) == 0 ? 256 : channels(320)) : channels(groups == 1 ? 160 : 64);
  const int kernel = pointwise ? 1 : std::vector<int>{1, 3, 5}[ri(0, tma ? 1 : 2)];
  const int sh = ri(1, 2), sw = ri(1, 2), dh = ri(1, 2), dw = ri(1, 2);
  const int batch = ri(1, 8), in_h = ri(1, 20), in_w = ri(1, 20);
  const int64_t in_dims[4] = {batch, in_h, in_w, groups * cg};
  const int64_t f_dims[4] = {kernel, kernel, cg, groups * npg};
  ConvShape s;
  if (!DrawnShape(rng, nchw, in_dims, f_dims, sh, sw, dh, dw, pointwise, pointwise ? 40000000 : 4000000, &s)) {
    return false;
  }

  RandomQuant q;
  if (!DrawQuant(rng, s, forced_type, counts, &q)) return false;

  // The decomposition: the exact product, a table file's, or random (mostly 1-16 terms, at times up
  // to kGpuDecomposedMaxTerms: wide slices).
  HostDecomposition decomposition;
  std::shared_ptr<const Lut> lut;
  const int dk = ri(0, 9);
  if (dk < 2) {
    // The exact product's decomposition (the pre-pass's flipped-bit planes, affine alpha and beta), its
    // mirror u = 127 - a, v = 127 - w (the same table; alpha and beta affine, u and v looked up), or alpha
    // and beta off affine at a few codes (its own table; flipped-bit planes, alpha and beta looked up).
    decomposition = ExactDecomposition();
    lut = ExactLut();
    const int variant = ri(0, 2);
    if (variant == 1) {
      for (int c = 0; c < 256; ++c) {
        decomposition.u[c] = decomposition.v[c] = static_cast<int8_t>(127 - c);
        decomposition.alpha[c] = decomposition.beta[c] = 127 * c;
      }
      decomposition.c0 = -127 * 127;
      decomposition.name = "exact, mirrored";
    } else if (variant == 2) {
      for (int i = 0; i < 4; ++i) decomposition.alpha[ri(0, 255)] += ri(1, 100);
      for (int i = 0; i < 4; ++i) decomposition.beta[ri(0, 255)] += ri(1, 100);
      decomposition.name = "exact, alpha and beta not affine";
      auto table = std::make_shared<Lut>();
      const std::string err = TableOf(decomposition, table.get());
      if (!err.empty()) {
        ++counts->cases;
        ++counts->failures;
        std::printf("FAIL exact decomposition with alpha and beta not affine: %s\n", err.c_str());
        return true;
      }
      lut = table;
    }
  } else if (dk < 5 && !files.empty()) {
    const DecomposedTable& t = files[ri(0, static_cast<int>(files.size()) - 1)];
    decomposition = t.decomposition;
    lut = t.lut;
  } else {
    decomposition = RandomDecomposition(rng, ri(0, 9) == 0 ? ri(17, kGpuDecomposedMaxTerms) : ri(1, 16));
    auto table = std::make_shared<Lut>();
    const std::string err = TableOf(decomposition, table.get());
    if (!err.empty()) {  // RandomDecomposition's own bound failed: a harness bug
      ++counts->cases;
      ++counts->failures;
      std::printf("FAIL RandomDecomposition: %s\n", err.c_str());
      return true;
    }
    lut = table;
  }
  GpuDecomposedOptions opts;
  opts.tile = static_cast<GpuDecomposedTile>(ri(-1, static_cast<int>(GpuDecomposedTile::kCount) - 1));
  if (forced_tile != GpuDecomposedTile::kAuto) opts.tile = forced_tile;
  // A tile that cannot run here (a wgmma tile without sm_90a, the halo tile on a shape whose filter rows
  // and halos do not fit): the auto-choice instead, the case kept.
  if (opts.tile != GpuDecomposedTile::kAuto && !GpuDecomposedTileFits(opts.tile, s, decomposition.terms).empty()) {
    opts.tile = GpuDecomposedTile::kAuto;
  }
  opts.plain_fragment_loads = ri(0, 4) == 0;
  opts.separate_prepasses = ri(0, 3) == 0;  // the first version's pre-passes, still held to the reference
  // The halo GEMM beside the pre-pass (where it fits), after it, or as tuned; beside it, with streaming hints
  // (float32) or without, or as tuned.
  opts.halo_beside = static_cast<GpuBeside>(ri(0, 2));
  opts.halo_streaming = static_cast<GpuBeside>(ri(0, 2));
  char label[256];
  std::snprintf(label, sizeof(label), "%s N%d %dx%dx%d g%d f%dx%dx%dx%d s%d,%d d%d,%d pad%d,%d b%d%s %s",
                nchw ? "NCHW" : "NHWC", batch, in_h, in_w, groups * cg, groups, kernel, kernel, cg, groups * npg, sh,
                sw, dh, dw, static_cast<int>(s.pad_top), static_cast<int>(s.pad_left), q.bits, q.channel_q.empty() ? "" : " per-channel",
                q.Schemes().c_str());
  ++counts->per_type[q.type];
  auto run = [&](auto type_tag) {
    using T = decltype(type_tag);
    std::vector<T> input, filter;
    DrawData(rng, s, q.in_lo, q.in_hi, q.f_lo, q.f_hi, &input, &filter);
    CheckDecomposedCase<T>(s, input, filter, q.qi, q.Filter(), decomposition, *lut, opts, counts, label);
  };
  switch (q.type) {
    case 0: run(float()); break;
    case 1: run(double()); break;
    case 2: run(__half()); break;
    default: run(__nv_bfloat16()); break;
  }
  return true;
}

// The reduction at the int32 limit: taps * terms = kGpuDecomposedMaxReduction products of 16384 each
// (u = v = -128 everywhere, c0 = -16384: the table is 0), so the tensor-core sum is 2^31 - 16384 and
// any overflow shows in acc; one more tap must be refused, not computed.
void DecomposedLimitCases(std::mt19937_64& rng, Counts* counts) {
  HostDecomposition top;
  top.name = "products of 16384";
  top.terms = 1;
  top.u.assign(256, -128);
  top.v.assign(256, -128);
  top.alpha.assign(256, 0);
  top.beta.assign(256, 0);
  top.c0 = -16384;
  Lut zeros;
  zeros.fill(0);
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kValid;
  const int64_t depth = kGpuDecomposedMaxReduction;
  const int64_t in_dims[4] = {1, 1, 2, depth}, f_dims[4] = {1, 1, depth, 16};
  ConvShape s;
  if (!ComputeConvShape(in_dims, f_dims, attrs, &s).empty()) {
    ++counts->cases;
    ++counts->failures;
    std::printf("FAIL decomposed limit case shape\n");
    return;
  }
  QuantParams q;
  MakeQuantParams(-1.f, 1.f, 8, "min", "max", &q);
  std::vector<float> input, filter;
  DrawData(rng, s, -1.f, 1.f, -1.f, 1.f, &input, &filter);
  CheckDecomposedCase<float>(s, input, filter, q, q, top, zeros, GpuDecomposedOptions(), counts,
                             "taps * terms = " + std::to_string(depth));

  // Refusals: past the limit (by a tap, and by terms), and term counts outside [1, max].
  const int64_t past_dims[4] = {1, 1, 2, depth + 1}, past_f[4] = {1, 1, depth + 1, 16};
  ConvShape past;
  ComputeConvShape(past_dims, past_f, attrs, &past);
  const std::pair<std::string, std::string> refusals[] = {
      {"one tap past the limit", GpuDecomposedSupports(past, 1)},
      {"two terms past the limit", GpuDecomposedSupports(s, 2)},
      {"no terms", GpuDecomposedSupports(s, 0)},
      {"too many terms", GpuDecomposedSupports(s, kGpuDecomposedMaxTerms + 1)},
  };
  for (const auto& r : refusals) {
    ++counts->cases;
    if (r.second.empty()) {
      ++counts->failures;
      std::printf("FAIL GpuDecomposedSupports accepted a case it cannot compute exactly (%s)\n", r.first.c_str());
    }
  }
}

// A call without its workspace (missing, short, misaligned) or past the reduction limit must return an
// error and launch nothing.
void DecomposedRefusalChecks(Counts* counts) {
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kSame;
  const int64_t in_dims[4] = {2, 8, 8, 64}, filter_dims[4] = {3, 3, 64, 64};
  ConvShape s;
  if (!ComputeConvShape(in_dims, filter_dims, attrs, &s).empty()) return;
  QuantParams q;
  MakeQuantParams(-1.f, 1.f, 8, "a", "b", &q);
  DeviceBuffer<float> d_in(s.input_elements()), d_flt(s.filter_elements()), d_out(s.output_elements());
  d_in.Poison(0);
  d_flt.Poison(0);
  const DeviceQuant d_q(q, q, s.taps());
  const DeviceDecomposition d_dec(ExactDecomposition());
  const size_t need = GpuDecomposedWorkspaceBytes(s, d_dec.d.terms);
  DeviceBuffer<uint8_t> d_ws(need + 16);
  struct Case {
    const char* what;
    void* ptr;
    size_t bytes;
    const char* expect;
  } cases[] = {{"no workspace", nullptr, 0, "workspace"},
               {"one byte short", d_ws.ptr, need - 1, "workspace"},
               {"misaligned", d_ws.ptr + 8, need, "workspace"}};
  for (const Case& c : cases) {
    ++counts->cases;
    const std::string err =
        ApproxConvGpuDecomposed<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_dec.d, d_out.ptr, 0, c.ptr, c.bytes);
    if (err.find(c.expect) == std::string::npos) {
      ++counts->failures;
      std::printf("FAIL decomposed refusal (%s): expected an error naming the %s, got \"%s\"\n", c.what, c.expect,
                  err.c_str());
    }
  }
  CUDA_OR_DIE(cudaDeviceSynchronize());
}

// Slices at the fused input pass's edge: cg = 8192 codes (one slice per block, fused) and 8193 (the
// separate input kernels), and two groups of 4100 (one slice per block, two zero-point slices), with a
// random 3-term decomposition (slices of 24 KB).
void DecomposedWideSliceCases(std::mt19937_64& rng, Counts* counts) {
  const HostDecomposition decomposition = RandomDecomposition(rng, 3);
  Lut lut;
  if (!TableOf(decomposition, &lut).empty()) {
    ++counts->cases;
    ++counts->failures;
    std::printf("FAIL decomposed wide-slice table\n");
    return;
  }
  QuantParams qi, qf;
  MakeQuantParams(-1.f, 3.f, 8, "in_min", "in_max", &qi);
  MakeQuantParams(-1.f, 1.f, 8, "f_min", "f_max", &qf);
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kSame;
  const int64_t shapes[][3] = {{8192, 1, 16}, {8193, 1, 16}, {4100, 2, 8}};  // cg, groups, npg
  for (const auto& sh : shapes) {
    const int64_t in_dims[4] = {1, 2, 3, sh[0] * sh[1]}, f_dims[4] = {1, 1, sh[0], sh[1] * sh[2]};
    ConvShape s;
    if (!ComputeConvShape(in_dims, f_dims, attrs, &s).empty()) {
      ++counts->cases;
      ++counts->failures;
      std::printf("FAIL decomposed wide-slice shape\n");
      continue;
    }
    std::vector<float> input, filter;
    DrawData(rng, s, -1.f, 3.f, -1.f, 1.f, &input, &filter);
    CheckDecomposedCase<float>(s, input, filter, qi, FilterQuant(qf), decomposition, lut, GpuDecomposedOptions(),
                               counts, "wide slices cg " + std::to_string(sh[0]) + " groups " + std::to_string(sh[1]));
  }
}

void DecomposedChecks(std::mt19937_64& rng, const std::string& table_dir, int cases, Counts* counts) {
  const std::vector<DecomposedTable> files = LoadDecompositions(table_dir, counts);
  std::printf("decompositions: %zu table files from %s (NAME.decomp beside NAME.bin) + the exact product + random\n",
              files.size(), table_dir.c_str());
  for (int t = 0; t < 4; ++t)
    for (int done = 0; done < 5;)
      if (RandomDecomposedCase(rng, files, counts, t)) ++done;
  for (int done = 0; done < cases;)
    if (RandomDecomposedCase(rng, files, counts)) ++done;
  // The TMA tile (its padded-tap sums) and the pointwise tiles on shapes they take, which the draw above
  // seldom gives them.
  for (GpuDecomposedTile tile : {GpuDecomposedTile::kTileTma256x64k64, GpuDecomposedTile::kTilePointwise128x256,
                                 GpuDecomposedTile::kTilePointwise64x256})
    for (int done = 0; done < (cases + 2) / 3;)
      if (RandomDecomposedCase(rng, files, counts, -1, tile)) ++done;
  DecomposedLimitCases(rng, counts);
  DecomposedWideSliceCases(rng, counts);
  DecomposedRefusalChecks(counts);
}

// Decompositions on the device for the timings, each with the table it describes, on which the lookups
// give the reference outputs.
struct BenchDecompositions {
  std::vector<HostDecomposition> host;
  std::vector<std::unique_ptr<DeviceDecomposition>> d;
  std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> luts;
};

// false (a failure, counted and reported) when a decomposition's table is no uint16 table.
bool UploadBenchDecompositions(std::vector<HostDecomposition> host, BenchDecompositions* out, Counts* counts) {
  out->host = std::move(host);
  for (const HostDecomposition& d : out->host) {
    Lut lut;
    const std::string err = TableOf(d, &lut);
    if (!err.empty()) {
      std::printf("FAIL decomposed bench table: %s\n", err.c_str());
      ++counts->failures;
      return false;
    }
    out->d.emplace_back(new DeviceDecomposition(d));
    out->luts.emplace_back(new DeviceBuffer<uint16_t>(kLutEntries));
    out->luts.back()->Upload(std::vector<uint16_t>(lut.begin(), lut.end()));
  }
  return true;
}

// A benchmark layer for the decomposed kernel's timings (realistic data, float32 NHWC), with the lookups
// (ApproxConvGpu kAuto) as the reference of every timed output.
struct DecomposedBenchLayer {
  BenchData data;
  DeviceBuffer<float> d_ref;
  DeviceQuant d_q;
  GpuOptions lookup_opts;
  Workspace lookup_ws;
  DecomposedBenchLayer(std::mt19937_64& rng, const BenchShape& b, const QuantParams& qi, const QuantParams& qf)
      : data(rng, b, qi, qf), d_ref(data.s.output_elements()), d_q(qi, qf, data.s.taps()),
        lookup_ws(data.s, &lookup_opts) {}

  std::string Lookups(const uint16_t* lut, float* out) const {
    return ApproxConvGpu<float>(data.s, data.d_in.ptr, data.d_flt.ptr, d_q.ptr, lut, out, 0, lookup_opts);
  }

  // The median time of whole decomposed calls with `opts` as G LUT-MAC/s (-1 where the kernel refuses
  // the shape, or `opts.tile` cannot run here: a wgmma tile without an sm_90a build or device), then the
  // last call's outputs held bit for bit to the lookups' on `lut` (a case counted; a failure counted and
  // reported with `label`).
  double TimeAndCheck(const GpuDecomposition& d, const uint16_t* lut, const GpuDecomposedOptions& opts, int runs,
                      Counts* counts, const std::string& label) {
    const ConvShape& s = data.s;
    if (!GpuDecomposedSupports(s, d.terms).empty()) return -1;
    if (opts.tile != GpuDecomposedTile::kAuto && !GpuDecomposedTileFits(opts.tile, s, d.terms).empty()) return -1;
    DeviceBuffer<uint8_t> d_ws(GpuDecomposedWorkspaceBytes(s, d.terms));
    data.d_out.Poison(0xFF);
    std::string err;
    const double ms = MedianMs(
        [&] {
          const std::string e = ApproxConvGpuDecomposed<float>(s, data.d_in.ptr, data.d_flt.ptr, d_q.ptr, d,
                                                               data.d_out.ptr, 0, d_ws.ptr, d_ws.count, opts);
          if (!e.empty()) err = e;
        },
        runs);
    const std::string lookup_err = Lookups(lut, d_ref.ptr);
    if (err.empty() && !lookup_err.empty()) err = "ApproxConvGpu failed: " + lookup_err;
    CUDA_OR_DIE(cudaDeviceSynchronize());
    ++counts->cases;
    ++counts->decomposed;
    counts->outputs_checked += s.output_elements();
    const std::vector<float> out = data.d_out.Download(), ref = d_ref.Download();
    if (!err.empty() || std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) != 0) {
      ++counts->failures;
      std::printf("FAIL decomposed bench %s: %s\n", label.c_str(),
                  err.empty() ? "outputs differ from the lookups'" : err.c_str());
    }
    return static_cast<double>(s.lut_macs()) / ms * 1e-6;
  }
};

// The decomposed tables' columns: the exact product as one term, then synthetic decompositions of 4, 8 and
// 16 terms (false, a failure counted, as UploadBenchDecompositions).
bool UploadTermColumns(std::mt19937_64& rng, BenchDecompositions* decs, Counts* counts) {
  return UploadBenchDecompositions(
      {ExactDecomposition(), RandomDecomposition(rng, 4), RandomDecomposition(rng, 8), RandomDecomposition(rng, 16)},
      decs, counts);
}

// The decomposed kernel against the lookups on the benchmark layers (realistic data, float32 NHWC):
// the exact product as one term, then synthetic decompositions of 4, 8 and 16 terms. Rates in G
// LUT-MAC/s: table lookups replaced per second (N * OH * OW * OC * taps), not int8 MACs. Every timed
// output is also compared bit for bit with the lookups' on the same table.
// streaming: the calls' GpuDecomposedOptions::halo_streaming (--halo-streaming; kOff against the default kAuto,
// in two runs, times what the tuning's choice of the streaming hints gains).
void DecomposedBench(std::mt19937_64& rng, int runs, GpuBeside streaming, Counts* counts) {
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);
  BenchDecompositions decs;
  if (!UploadTermColumns(rng, &decs, counts)) return;
  std::printf("\nDecomposed (int8 tensor cores): G LUT-MAC/s (table lookups replaced per second), float32 NHWC, "
              "realistic data, median of %d runs;\nlookups = ApproxConvGpu (kAuto) on the exact table; "
              "every call timed whole (quantization and planes included); streaming hints %s\n", runs,
              streaming == GpuBeside::kAuto ? "as tuned" : streaming == GpuBeside::kOn ? "on" : "off");
  std::printf("%-20s %12s %12s %12s %12s %12s %-11s %8s %5s\n", "shape", "lookups", "exact 1 term", "4 terms",
              "8 terms", "16 terms", "tile", "speedup", "auto");
  std::vector<std::string> wrong_picks;
  int picks = 0;
  for (const BenchShape& b : kBenchShapes) {
    DecomposedBenchLayer layer(rng, b, qi, qf);
    const ConvShape& s = layer.data.s;
    std::string err;
    const double lookup_rate = static_cast<double>(s.lut_macs()) /
                               MedianMs(
                                   [&] {
                                     const std::string e = layer.Lookups(decs.luts[0]->ptr, layer.d_ref.ptr);
                                     if (!e.empty()) err = e;
                                   },
                                   runs) *
                               1e-6;
    if (!err.empty()) {
      ++counts->failures;
      std::printf("FAIL decomposed bench %s: ApproxConvGpu failed: %s\n", b.name, err.c_str());
    }
    double rates[4];
    for (size_t i = 0; i < decs.host.size(); ++i) {
      GpuDecomposedOptions bench_opts;
      bench_opts.halo_streaming = streaming;
      rates[i] = layer.TimeAndCheck(decs.d[i]->d, decs.luts[i]->ptr, bench_opts, runs, counts,
                                    std::string(b.name) + " (" + decs.host[i].name + ")");
    }
    std::printf("%-20s %12.0f", b.name, lookup_rate);
    for (double r : rates) {
      if (r < 0) {
        std::printf(" %12s", "n/a");
      } else {
        std::printf(" %12.0f", r);
      }
    }
    // The exact table's plan: its tile, "+b" beside the pre-pass, "+bs" with the streaming hints.
    const GpuDecomposedPlan exact_plan = GpuDecomposedPlanFor(s, 1, GpuDtype::kFloat);
    std::printf(" %-11s", (std::string(GpuDecomposedTileName(exact_plan.tile)) +
                           (exact_plan.streaming ? "+bs" : exact_plan.beside ? "+b" : "")).c_str());
    if (rates[0] < 0) {
      std::printf(" %8s", "n/a");
    } else {
      std::printf(" %8.2f", rates[0] / lookup_rate);
    }
    // auto: GpuPreferDecomposed's choice for each column's terms (y: decomposed, n: lookups); a pick
    // where the decomposed call measured slower than the lookups is a wrong pick.
    char picked[5] = "----";
    for (size_t i = 0; i < decs.host.size() && i < 4; ++i) {
      const int terms = decs.d[i]->d.terms;
      const bool pick = GpuPreferDecomposed(s, terms);
      picked[i] = pick ? 'y' : 'n';
      if (!pick) continue;
      ++picks;
      if (rates[i] < 0 || rates[i] < lookup_rate) {
        char line[160];
        std::snprintf(line, sizeof(line), "%s, %d terms: %.0f G LUT-MAC/s against the lookups' %.0f", b.name, terms,
                      rates[i], lookup_rate);
        wrong_picks.push_back(line);
      }
    }
    std::printf(" %5s\n", picked);
  }
  std::printf("auto (GpuPreferDecomposed): %d picks of the decomposed kernel, %zu wrong picks (slower than the "
              "lookups)\n", picks, wrong_picks.size());
  for (const std::string& w : wrong_picks) std::printf("  wrong pick: %s\n", w.c_str());
}

// The decomposed kernel against the lookups at smaller batches: every benchmark layer at its batch / 4, /
// 16 and / 64 (ResNet-20's batch 1000 down to 15; the big layers' 64 down to 1), the exact table and 4, 8
// and 16 terms, default calls (tuned plans) timed whole against ApproxConvGpu kAuto, outputs held bit for
// bit to the lookups'. What GpuPreferDecomposed's condition on the call's outputs is set from.
void DecomposedBatches(std::mt19937_64& rng, int runs, Counts* counts) {
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);
  BenchDecompositions decs;
  if (!UploadTermColumns(rng, &decs, counts)) return;
  std::printf("\nDecomposed at smaller batches: decomposed (tuned) / lookups time, whole calls, median of %d runs "
              "(float32 NHWC, realistic data); the call's LUT-MACs; auto: GpuPreferDecomposed per column\n", runs);
  std::printf("%-20s %6s %10s %9s %9s %9s %9s %5s %8s %8s\n", "shape", "batch", "LUT-MACs", "exact", "4 terms",
              "8 terms", "16 terms", "auto", "host lk", "host dc");
  int picks = 0, wrong = 0;
  for (const BenchShape& full : kBenchShapes) {
    for (int div : {4, 16, 64}) {
      BenchShape b = full;
      b.batch = std::max(1, full.batch / div);
      DecomposedBenchLayer layer(rng, b, qi, qf);
      const ConvShape& s = layer.data.s;
      std::string err;
      const double lookup_ms = MedianMs(
          [&] {
            const std::string e = layer.Lookups(decs.luts[0]->ptr, layer.d_ref.ptr);
            if (!e.empty()) err = e;
          },
          runs);
      if (!err.empty()) {
        ++counts->failures;
        std::printf("FAIL decomposed batches %s: ApproxConvGpu failed: %s\n", b.name, err.c_str());
      }
      std::printf("%-20s %6d %10.2e", b.name, b.batch, static_cast<double>(s.lut_macs()));
      char picked[5] = "----";
      for (size_t i = 0; i < decs.host.size() && i < 4; ++i) {
        const double rate = layer.TimeAndCheck(decs.d[i]->d, decs.luts[i]->ptr, GpuDecomposedOptions(), runs, counts,
                                               std::string(b.name) + " batch " + std::to_string(b.batch) + " (" +
                                                   decs.host[i].name + ")");
        const double ms = rate > 0 ? static_cast<double>(s.lut_macs()) / rate * 1e-6 : -1;
        if (ms < 0) {
          std::printf(" %9s", "n/a");
        } else {
          std::printf(" %9.2f", ms / lookup_ms);
        }
        const bool pick = GpuPreferDecomposed(s, decs.d[i]->d.terms);
        picked[i] = pick ? 'y' : 'n';
        if (pick) {
          ++picks;
          if (ms < 0 || ms > lookup_ms) ++wrong;
        }
      }
      // The host's time to queue a call (no waiting in it): what a framework pays per call when the device
      // is faster than its host, as at small batches.
      auto host_us = [&](const std::function<void()>& fn) {
        CUDA_OR_DIE(cudaDeviceSynchronize());
        constexpr int kCalls = 20;
        const auto start = std::chrono::steady_clock::now();
        for (int c = 0; c < kCalls; ++c) fn();
        const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
        CUDA_OR_DIE(cudaDeviceSynchronize());
        return us / kCalls;
      };
      DeviceBuffer<uint8_t> d_ws(GpuDecomposedWorkspaceBytes(s, 1));
      const double lookups_host = host_us([&] { (void)layer.Lookups(decs.luts[0]->ptr, layer.d_ref.ptr); });
      const double decomposed_host = host_us([&] {
        (void)ApproxConvGpuDecomposed<float>(s, layer.data.d_in.ptr, layer.data.d_flt.ptr, layer.d_q.ptr, decs.d[0]->d,
                                             layer.data.d_out.ptr, 0, d_ws.ptr, d_ws.count);
      });
      std::printf(" %5s %8.1f %8.1f\n", picked, lookups_host, decomposed_host);
    }
  }
  std::printf("auto (GpuPreferDecomposed): %d picks of the decomposed kernel, %d slower than the lookups; host: us "
              "to queue a call of the lookups and of the exact table's decomposed kernel\n", picks, wrong);
}

// A table of variants of the decomposed kernel's options: a row per layer and decomposition, a column per
// variant, whole calls timed (G LUT-MAC/s), each variant's outputs held bit for bit to the lookups'
// (n/a where a variant does not run). `*` marks the variant `pick` returns for the row's shape and terms:
// what the auto choice is checked against.
struct DecomposedVariant {
  const char* name;
  GpuDecomposedOptions opts;
};
void DecomposedVariantTable(std::mt19937_64& rng, int runs, Counts* counts, const char* title,
                            const std::vector<HostDecomposition>& decompositions,
                            const std::vector<const BenchShape*>& layers, const std::vector<DecomposedVariant>& variants,
                            const std::function<size_t(const ConvShape&, int)>& pick,
                            const std::function<void(const BenchShape&, const ConvShape&, int,
                                                     const std::vector<double>&)>& on_row = nullptr) {
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);
  BenchDecompositions decs;
  if (!UploadBenchDecompositions(decompositions, &decs, counts)) return;
  std::printf("\n%s: G LUT-MAC/s, whole calls, median of %d runs (float32 NHWC, realistic data); * = the auto "
              "choice\n%-20s %5s", title, runs, "shape", "terms");
  for (const DecomposedVariant& v : variants) std::printf(" %15s", v.name);
  std::printf("\n");
  for (const BenchShape* b : layers) {
    DecomposedBenchLayer layer(rng, *b, qi, qf);
    for (size_t i = 0; i < decs.host.size(); ++i) {
      const int terms = decs.d[i]->d.terms;
      std::vector<double> rates;
      for (size_t v = 0; v < variants.size(); ++v) {
        rates.push_back(layer.TimeAndCheck(decs.d[i]->d, decs.luts[i]->ptr, variants[v].opts, runs, counts,
                                           std::string(b->name) + " (" + decs.host[i].name + ", " + variants[v].name +
                                               ")"));
      }
      const size_t picked = pick(layer.data.s, terms);  // (after the row's calls: a default call tunes)
      std::printf("%-20s %5d", b->name, terms);
      for (size_t v = 0; v < variants.size(); ++v) {
        if (rates[v] < 0) {
          std::printf(" %15s", "n/a");
        } else {
          std::printf(" %14.0f%c", rates[v], v == picked ? '*' : ' ');
        }
      }
      std::printf("\n");
      if (on_row) on_row(*b, layer.data.s, terms, rates);
    }
  }
}

// Every GEMM tile on every benchmark layer, for the exact table (1 term), 5 terms (the count of
// mul8u_125K, the table of benchmarks/gpu/README.md's ResNet-20 runs) and 16 terms; the pick is
// ChooseGpuDecomposedTile's: what the tile table's rate guesses and the halo rule are checked against.
void DecomposedTiles(std::mt19937_64& rng, int runs, Counts* counts) {
  std::vector<DecomposedVariant> tiles;
  for (int t = 0; t < static_cast<int>(GpuDecomposedTile::kCount); ++t) {
    DecomposedVariant v{GpuDecomposedTileName(static_cast<GpuDecomposedTile>(t)), GpuDecomposedOptions()};
    v.opts.tile = static_cast<GpuDecomposedTile>(t);
    tiles.push_back(v);
    // A tile that cannot run here (a wgmma tile without sm_90a) shows n/a in its column; why, once.
    const std::string why = GpuDecomposedTileSupported(v.opts.tile);
    if (!why.empty()) std::printf("  %s: n/a (%s)\n", v.name, why.c_str());
  }
  std::vector<const BenchShape*> layers;
  for (const BenchShape& b : kBenchShapes) layers.push_back(&b);
  // The last column: default calls, whose first tunes the plan (GpuDecomposedOptions::tune); `*` marks the tile
  // it settled on, and each row's rule pick (ChooseGpuDecomposedTile) is summed up below against the fastest.
  tiles.push_back(DecomposedVariant{"tuned", GpuDecomposedOptions()});
  const std::vector<HostDecomposition> decompositions = {ExactDecomposition(), RandomDecomposition(rng, 5),
                                                         RandomDecomposition(rng, 16)};
  std::vector<std::string> misses;
  double worst_tuned = 1, worst_rule = 1;
  int rows = 0;
  DecomposedVariantTable(
      rng, runs, counts, "Decomposed tiles (GpuDecomposedTile)", decompositions, layers, tiles,
      [](const ConvShape& s, int terms) {
        return static_cast<size_t>(GpuDecomposedPlanFor(s, terms, GpuDtype::kFloat).tile);
      },
      [&](const BenchShape& b, const ConvShape& s, int terms, const std::vector<double>& rates) {
        const size_t n = rates.size() - 1;  // the tiles' columns
        const double best = *std::max_element(rates.begin(), rates.begin() + n);
        const double tuned = rates[n];
        const double rule = rates[static_cast<size_t>(ChooseGpuDecomposedTile(s, terms))];
        if (best <= 0 || tuned <= 0) return;
        ++rows;
        worst_tuned = std::min(worst_tuned, tuned / best);
        if (rule > 0) worst_rule = std::min(worst_rule, rule / best);
        if (tuned < 0.9 * best) {
          char line[160];
          std::snprintf(line, sizeof(line), "%s, %d terms: tuned %.0f against the fastest tile's %.0f", b.name, terms,
                        tuned, best);
          misses.push_back(line);
        }
      });
  std::printf("tuned plans: %d rows, worst tuned / fastest tile %.2f (the rule's pick: %.2f); %zu rows below 0.9\n",
              rows, worst_tuned, worst_rule, misses.size());
  for (const std::string& m : misses) std::printf("  below 0.9: %s\n", m.c_str());
}

// Both K orders of the decomposed GEMM (GpuKOrder) on every benchmark layer with a 3x3 filter (one
// spatial tap has one order), the auto tile, 4, 8 and 16 terms; the pick is ChooseGpuKOrder's.
void DecomposedOrders(std::mt19937_64& rng, int runs, Counts* counts) {
  std::vector<DecomposedVariant> orders;
  for (GpuKOrder order : {GpuKOrder::kTapsOuter, GpuKOrder::kTapsInner}) {  // in enum order: index = value
    DecomposedVariant v{GpuKOrderName(order), GpuDecomposedOptions()};
    v.opts.k_order = order;
    orders.push_back(v);
  }
  std::vector<const BenchShape*> layers;
  for (const BenchShape& b : kBenchShapes) {
    if (b.k > 1) layers.push_back(&b);
  }
  const std::vector<HostDecomposition> decompositions = {RandomDecomposition(rng, 4), RandomDecomposition(rng, 8),
                                                         RandomDecomposition(rng, 16)};
  DecomposedVariantTable(rng, runs, counts, "Decomposed K orders (GpuKOrder)", decompositions, layers, orders,
                         [](const ConvShape& s, int terms) { return static_cast<size_t>(ChooseGpuKOrder(s, terms)); });
}

// Where a decomposed call's time goes: per benchmark layer, 1 and 16 terms, the fused input pass (the
// default) and the first version's separate input kernels, the median over `runs` calls of each launch's
// time (cudaEvents recorded between the launches through GpuDecomposedOptions::phase_events; a phase a path
// does not run shows 0), in microseconds, and the median of the whole call (first to last event).
void DecomposedPhases(std::mt19937_64& rng, int runs, Counts* counts) {
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);
  const std::vector<HostDecomposition> decompositions = {ExactDecomposition(), RandomDecomposition(rng, 16)};
  std::vector<std::unique_ptr<DeviceDecomposition>> d_decs;
  for (const HostDecomposition& d : decompositions) d_decs.emplace_back(new DeviceDecomposition(d));
  std::printf("\nDecomposed phases: median us per launch over %d calls (float32 NHWC, realistic data); fused = the "
              "default input pass\n(its launch also runs the filter sums: flt sums 0), separate = the first "
              "version's input kernels\n", runs);
  std::printf("%-20s %5s %-8s", "shape", "terms", "path");
  for (int p = 0; p < kGpuDecomposedPhases; ++p) std::printf(" %10s", GpuDecomposedPhaseName(p));
  std::printf(" %10s %10s %9s\n", "sum", "call", "G LUT/s");
  const int nev = kGpuDecomposedPhases + 1;
  std::vector<cudaEvent_t> ev;  // (runs + 3) calls' events, the first 3 calls a warm-up
  for (int i = 0; i < (runs + 3) * nev; ++i) {
    cudaEvent_t e;
    CUDA_OR_DIE(cudaEventCreate(&e));
    ev.push_back(e);
  }
  for (const BenchShape& b : kBenchShapes) {
    BenchData data(rng, b, qi, qf);
    const ConvShape& s = data.s;
    const DeviceBuffer<float>& d_in = data.d_in;
    const DeviceBuffer<float>& d_flt = data.d_flt;
    DeviceBuffer<float>& d_out = data.d_out;
    const DeviceQuant d_q(qi, qf, s.taps());
    for (size_t di = 0; di < d_decs.size(); ++di) {
      const GpuDecomposition& d = d_decs[di]->d;
      if (!GpuDecomposedSupports(s, d.terms).empty()) continue;
      DeviceBuffer<uint8_t> d_ws(GpuDecomposedWorkspaceBytes(s, d.terms));
      for (int separate = 0; separate < 2; ++separate) {
        GpuDecomposedOptions opts;
        opts.separate_prepasses = separate != 0;
        std::string err;
        for (int r = 0; r < runs + 3; ++r) {  // the first 3: warm-up
          opts.phase_events = ev.data() + static_cast<size_t>(r) * nev;
          const std::string e =
              ApproxConvGpuDecomposed<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d, d_out.ptr, 0, d_ws.ptr, d_ws.count, opts);
          if (!e.empty()) err = e;
        }
        CUDA_OR_DIE(cudaDeviceSynchronize());
        if (!err.empty()) {
          ++counts->cases;
          ++counts->failures;
          std::printf("FAIL decomposed phases %s: %s\n", b.name, err.c_str());
          continue;
        }
        auto median = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        std::printf("%-20s %5d %-8s", b.name, d.terms, separate ? "separate" : "fused");
        double sum = 0;
        for (int p = 0; p < kGpuDecomposedPhases; ++p) {
          std::vector<double> us(runs);
          for (int r = 0; r < runs; ++r) {
            float t = 0;
            const size_t at = static_cast<size_t>(r + 3) * nev + p;
            CUDA_OR_DIE(cudaEventElapsedTime(&t, ev[at], ev[at + 1]));
            us[r] = 1000.0 * t;
          }
          const double m = median(us);
          sum += m;
          std::printf(" %10.1f", m);
        }
        std::vector<double> call(runs);
        for (int r = 0; r < runs; ++r) {
          float t = 0;
          const size_t at = static_cast<size_t>(r + 3) * nev;
          CUDA_OR_DIE(cudaEventElapsedTime(&t, ev[at], ev[at + kGpuDecomposedPhases]));
          call[r] = 1000.0 * t;
        }
        const double call_us = median(call);
        std::printf(" %10.1f %10.1f %9.0f\n", sum, call_us, static_cast<double>(s.lut_macs()) / call_us * 1e-3);
      }
    }
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
}

// Launches one benchmark layer's convolution once (for ncu): the lookup kernel (`kernel`), or with
// `terms` > 0 the decomposed kernel on the exact product (1 term) or a random decomposition.
int Profile(std::mt19937_64& rng, int index, GpuKernel kernel, int terms, GpuDecomposedTile tile) {
  QuantParams qi, qf;
  BenchQuantParams(&qi, &qf);
  BenchData data(rng, kBenchShapes[index], qi, qf);
  const ConvShape& s = data.s;
  const DeviceBuffer<float>& d_in = data.d_in;
  const DeviceBuffer<float>& d_flt = data.d_flt;
  DeviceBuffer<float>& d_out = data.d_out;
  const DeviceQuant d_q(qi, qf, s.taps());
  const DeviceTable d_table(*ExactLut());  // the exact product is rebased at any zero point
  if (terms > 0) {
    const DeviceDecomposition d_dec(terms == 1 ? ExactDecomposition() : RandomDecomposition(rng, terms));
    const std::string support = GpuDecomposedSupports(s, terms);
    if (!support.empty()) {
      std::printf("decomposed kernel refuses %s: %s\n", kBenchShapes[index].name, support.c_str());
      return 1;
    }
    DeviceBuffer<uint8_t> d_ws(GpuDecomposedWorkspaceBytes(s, terms));
    GpuDecomposedOptions opts;
    opts.tile = tile;
    const std::string err = ApproxConvGpuDecomposed<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_dec.d, d_out.ptr, 0,
                                                           d_ws.ptr, d_ws.count, opts);
    CUDA_OR_DIE(cudaDeviceSynchronize());
    std::printf("profiled %s with the decomposed kernel, %d terms, tile %s%s%s\n", kBenchShapes[index].name, terms,
                GpuDecomposedTileName(tile == GpuDecomposedTile::kAuto ? ChooseGpuDecomposedTile(s, terms) : tile),
                err.empty() ? "" : ": ", err.c_str());
    return err.empty() ? 0 : 1;
  }
  GpuOptions opts;
  opts.kernel = kernel;
  d_table.Attach(&opts);
  const Workspace d_ws(s, &opts);
  const std::string err = ApproxConvGpu<float>(s, d_in.ptr, d_flt.ptr, d_q.ptr, d_table.lut.ptr, d_out.ptr, 0, opts);
  CUDA_OR_DIE(cudaDeviceSynchronize());
  std::printf("profiled %s with %s%s%s\n", kBenchShapes[index].name,
              GpuKernelName(kernel == GpuKernel::kAuto ? ChooseGpuPlan(s).kernel : kernel), err.empty() ? "" : ": ",
              err.c_str());
  return err.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string table_dir = std::getenv("GPU_TABLES") ? std::getenv("GPU_TABLES") : ".gpu_tables";
  int cases = 400, runs = 30;
  uint64_t seed = 20261128;
  int decomposed_cases = 300;
  bool batches_only = false;
  bool bench = true, sweep = false, decomposed_only = false, phases_only = false, tiles_only = false,
       orders_only = false, lookups_only = false;
  int profile = -1;  // a benchmark layer to launch once (for ncu), nothing else
  int profile_terms = 0;  // with --profile: the decomposed kernel with this many terms
  GpuDecomposedTile profile_tile = GpuDecomposedTile::kAuto;  // with --terms: this tile (its enum value)
  GpuKernel kernel = GpuKernel::kAuto;
  GpuBeside bench_streaming = GpuBeside::kAuto;  // --halo-streaming (DecomposedBench)
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--tables") table_dir = next();
    else if (a == "--cases") cases = std::atoi(next());
    else if (a == "--seed") seed = std::strtoull(next(), nullptr, 10);
    else if (a == "--runs") runs = std::max(1, std::atoi(next()));
    else if (a == "--no-bench") bench = false;
    else if (a == "--sweep") sweep = true;
    else if (a == "--profile") profile = std::atoi(next());
    else if (a == "--kernel") kernel = static_cast<GpuKernel>(std::atoi(next()));
    else if (a == "--terms") profile_terms = std::max(0, std::atoi(next()));
    else if (a == "--tile") profile_tile = static_cast<GpuDecomposedTile>(std::atoi(next()));
    else if (a == "--decomposed-only") decomposed_only = true;
    else if (a == "--lookups-only") lookups_only = true;
    else if (a == "--decomposed-phases") phases_only = true;
    else if (a == "--decomposed-tiles") tiles_only = true;
    else if (a == "--decomposed-batches") batches_only = true;
    else if (a == "--decomposed-orders") orders_only = true;
    else if (a == "--decomposed-cases") decomposed_cases = std::max(0, std::atoi(next()));
    else if (a == "--halo-streaming") {
      const std::string v = next();
      if (v != "auto" && v != "off" && v != "on") {
        std::fprintf(stderr, "--halo-streaming takes auto, off or on, not %s\n", v.c_str());
        return 2;
      }
      bench_streaming = v == "auto" ? GpuBeside::kAuto : v == "off" ? GpuBeside::kOff : GpuBeside::kOn;
    } else {
      std::fprintf(stderr, "usage: %s [--tables DIR] [--cases N] [--seed S] [--runs R] [--no-bench] [--sweep] "
                   "[--decomposed-only | --lookups-only] [--decomposed-cases N] [--decomposed-phases] [--decomposed-tiles] [--decomposed-orders] "
                   "[--decomposed-batches] [--halo-streaming auto|off|on] "
                   "[--profile LAYER [--kernel K | --terms N [--tile T]]]\n",
                   argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  CUDA_OR_DIE(cudaGetDeviceProperties(&prop, 0));
  int clock_khz = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  std::printf("device: %s, %d SMs, %d MHz, %zu KB shared memory per block (opt-in)\n", prop.name,
              prop.multiProcessorCount, clock_khz / 1000, prop.sharedMemPerBlockOptin / 1024);
  std::mt19937_64 rng(seed);
  if (profile >= 0) {
    if (profile >= static_cast<int>(sizeof(kBenchShapes) / sizeof(kBenchShapes[0]))) return 2;
    if (profile_tile < GpuDecomposedTile::kAuto || profile_tile >= GpuDecomposedTile::kCount) return 2;
    return Profile(rng, profile, kernel, profile_terms, profile_tile);
  }
  const Tables tables = LoadTables(table_dir);
  std::printf("tables: %zu (exact + %zu files from %s) + random tables\n", tables.luts.size(), tables.luts.size() - 1,
              table_dir.c_str());

  Counts counts;
  DivisionChecks(rng, &counts);
  FastQuantizerChecks(rng, &counts);
  if (phases_only) {  // only the decomposed kernel's phase breakdown (no checks)
    DecomposedPhases(rng, runs, &counts);
    std::printf("\n%s\n", counts.failures == 0 ? "PHASES DONE" : "PHASES FAILED");
    return counts.failures == 0 ? 0 : 1;
  }
  if (orders_only) {  // only the decomposed kernel's K-order table (its outputs checked, no other checks)
    DecomposedOrders(rng, runs, &counts);
    std::printf("\norders: %d calls checked, %d failures (output bits vs the lookups)\n%s\n", counts.cases,
                counts.failures, counts.failures == 0 ? "ORDERS PASSED" : "ORDERS FAILED");
    return counts.failures == 0 ? 0 : 1;
  }
  if (batches_only) {  // only the decomposed kernel against the lookups at smaller batches (outputs checked)
    DecomposedBatches(rng, runs, &counts);
    std::printf("\nbatches: %d calls checked, %d failures (output bits vs the lookups)\n%s\n", counts.cases,
                counts.failures, counts.failures == 0 ? "BATCHES PASSED" : "BATCHES FAILED");
    return counts.failures == 0 ? 0 : 1;
  }
  if (tiles_only) {  // only the decomposed kernel's per-tile table (its outputs checked, no other checks)
    DecomposedTiles(rng, runs, &counts);
    std::printf("\ntiles: %d calls checked, %d failures (output bits vs the lookups)\n%s\n", counts.cases,
                counts.failures, counts.failures == 0 ? "TILES PASSED" : "TILES FAILED");
    return counts.failures == 0 ? 0 : 1;
  }
  if (!decomposed_only) {
    // Every kernel on every type at least a few times, then random choices.
    for (int k = 0; k < static_cast<int>(GpuKernel::kCount); ++k)
      for (int t = 0; t < 4; ++t)
        for (int done = 0; done < 3;)
          if (RandomCase(rng, tables, &counts, t, static_cast<GpuKernel>(k))) ++done;
    for (int done = 0; done < cases;)
      if (RandomCase(rng, tables, &counts)) ++done;
    WideCases(rng, &counts);
    LargeSumCases(rng, &counts);
    WorkspaceChecks(&counts);
    ConcurrentLaunchChecks(rng, &counts);
    QuantFromRangesChecks(rng, &counts);
    RangeChecks(rng, &counts);
  }
  if (!lookups_only) DecomposedChecks(rng, table_dir, decomposed_cases, &counts);
  if (bench) {
    if (!decomposed_only) Bench(rng, tables, runs, sweep, &counts);
    if (!lookups_only) {
      DecomposedBench(rng, runs, bench_streaming, &counts);
      DecomposedPhases(rng, runs, &counts);
    }
  }

  std::printf("\nchecks: %d cases, %lld outputs, %d failures (acc, act_sum and output bits vs the CPU reference)\n",
              counts.cases, static_cast<long long>(counts.outputs_checked), counts.failures);
  std::printf("  by kernel:");
  for (int k = 0; k < static_cast<int>(GpuKernel::kCount); ++k)
    std::printf(" %s %d", GpuKernelName(static_cast<GpuKernel>(k)), counts.per_kernel[k]);
  std::printf("; decomposed (tensor cores) %d (", counts.decomposed);
  for (int t = 0; t < static_cast<int>(GpuDecomposedTile::kCount); ++t)
    std::printf("%s%s %d", t ? " " : "", GpuDecomposedTileName(static_cast<GpuDecomposedTile>(t)), counts.per_tile[t]);
  std::printf(")");
  std::printf("; by type: float %d double %d half %d bfloat16 %d; wide accumulation %d; K split %d; per-channel %d\n",
              counts.per_type[0], counts.per_type[1], counts.per_type[2], counts.per_type[3], counts.wide,
              counts.split, counts.per_channel);
  std::printf("%s\n", counts.failures == 0 ? "ALL CHECKS PASSED" : "CHECKS FAILED");
  return counts.failures == 0 ? 0 : 1;
}
