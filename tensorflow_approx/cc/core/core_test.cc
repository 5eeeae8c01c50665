// Tests of the framework-free core: the fast CPU kernel against the reference on the integer sums
// (exact equality), quantization, table files and geometry. Plain asserts: no test framework is
// available to an offline Bazel.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tensorflow_approx/cc/core/approx_conv_cpu.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"

namespace tfapprox {
namespace {

int failures = 0;
#define EXPECT(cond, ...)                                             \
  do {                                                                \
    if (!(cond)) {                                                    \
      ++failures;                                                     \
      std::fprintf(stderr, "%s:%d: expected %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                              \
      std::fprintf(stderr, "\n");                                     \
    }                                                                 \
  } while (0)

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Splits the range over real threads, so the kernels' per-shard state is exercised.
ParallelFor ThreadedFor(int threads) {
  return [threads](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    std::vector<std::thread> pool;
    const int64_t step = (total + threads - 1) / threads;
    for (int64_t b = 0; b < total; b += step) pool.emplace_back(fn, b, std::min(total, b + step));
    for (auto& t : pool) t.join();
  };
}

struct Case {
  ConvShape shape;
  std::string name;
};

Case RandomCase(std::mt19937& rng) {
  auto pick = [&](std::initializer_list<int64_t> v) {
    return *(v.begin() + std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
  };
  int64_t in_h = pick({1, 2, 5, 7, 9, 12}), in_w = pick({1, 3, 6, 8, 11});
  const int64_t groups = pick({1, 1, 2, 3});
  const int64_t filter_depth = pick({1, 2, 3, 5, 8});
  const bool depthwise = pick({0, 0, 0, 1});
  const int64_t in_depth = depthwise ? filter_depth * pick({4, 6}) : filter_depth * groups;
  const int64_t g = in_depth / filter_depth;
  const int64_t out_depth = g * pick({1, 2, 3, 5, 32, 47, 64, 130});
  int64_t kh = pick({1, 3, 5}), kw = pick({1, 3, 5});
  if (pick({0, 0, 0, 1})) kh = in_h, kw = in_w;  // the filter covers the whole input
  ConvAttrs attrs;
  attrs.data_format = pick({0, 1}) ? DataFormat::kNHWC : DataFormat::kNCHW;
  const int64_t sh = pick({1, 2, 3}), sw = pick({1, 2, 3});
  const int64_t dh = pick({1, 1, 2}), dw = pick({1, 1, 2});
  const bool nhwc = attrs.data_format == DataFormat::kNHWC;
  attrs.strides = nhwc ? std::vector<int64_t>{1, sh, sw, 1} : std::vector<int64_t>{1, 1, sh, sw};
  attrs.dilations = nhwc ? std::vector<int64_t>{1, dh, dw, 1} : std::vector<int64_t>{1, 1, dh, dw};
  const int64_t mode = pick({0, 1, 2});
  attrs.padding = mode == 0 ? Padding::kSame : mode == 1 ? Padding::kValid : Padding::kExplicit;
  if (attrs.padding == Padding::kExplicit) {
    const int64_t pt = pick({0, 1, 2}), pb = pick({0, 1, 3}), pl = pick({0, 2}), pr = pick({0, 1});
    attrs.explicit_paddings = nhwc ? std::vector<int64_t>{0, 0, pt, pb, pl, pr, 0, 0}
                                   : std::vector<int64_t>{0, 0, 0, 0, pt, pb, pl, pr};
  }
  // Make VALID/EXPLICIT always fit: grow the input if the dilated filter is larger.
  in_h = std::max(in_h, (kh - 1) * dh + 1);
  in_w = std::max(in_w, (kw - 1) * dw + 1);
  const int64_t batch = pick({1, 2, 3});
  const int64_t input_dims[4] = {batch, nhwc ? in_h : in_depth, nhwc ? in_w : in_h,
                                 nhwc ? in_depth : in_w};
  const int64_t filter_dims[4] = {kh, kw, filter_depth, out_depth};
  Case c;
  const std::string error = ComputeConvShape(input_dims, filter_dims, attrs, &c.shape);
  EXPECT(error.empty(), "%s", error.c_str());
  char name[256];
  std::snprintf(name, sizeof(name),
                "N%lld %lldx%lldx%lld filter %lldx%lldx%lld->%lld stride %lldx%lld dil %lldx%lld "
                "pad %lld %s",
                (long long)batch, (long long)in_h, (long long)in_w, (long long)in_depth, (long long)kh,
                (long long)kw, (long long)filter_depth, (long long)out_depth, (long long)sh,
                (long long)sw, (long long)dh, (long long)dw, (long long)mode, nhwc ? "NHWC" : "NCHW");
  c.name = name;
  return c;
}

void TestFastKernelMatchesReference() {
  std::mt19937 rng(1234);
  Lut random_lut;
  for (auto& v : random_lut) v = static_cast<uint16_t>(rng());  // full uint16 range
  const Lut& exact = *ExactLut();
  for (int iter = 0; iter < 400; ++iter) {
    const Case c = RandomCase(rng);
    const ConvShape& s = c.shape;
    const int num_bits = 2 + iter % 7;
    std::uniform_int_distribution<int> code(0, (1 << num_bits) - 1);
    std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
    for (auto& v : input) v = static_cast<uint8_t>(code(rng));
    for (auto& v : filter) v = static_cast<uint8_t>(code(rng));
    QuantizedConv conv;
    conv.shape = s;
    conv.input = input.data();
    conv.filter = filter.data();
    conv.input_zero_code = static_cast<uint8_t>(code(rng));
    conv.lut = (iter % 2 ? random_lut : exact).data();
    const int64_t pixels = s.out_pixels(), groups = s.groups();
    // A sub-range of pixels, as the pipeline's passes use.
    const int64_t begin = iter % 3 == 0 ? 0 : std::uniform_int_distribution<int64_t>(0, pixels - 1)(rng);
    const int64_t end = iter % 3 == 0 ? pixels : std::uniform_int_distribution<int64_t>(begin + 1, pixels)(rng);
    const size_t n = end - begin;
    std::vector<int64_t> ref_acc(n * s.out_depth, -1), ref_sum(n * groups, -1);
    std::vector<int64_t> fast_acc(n * s.out_depth, -7), fast_sum(n * groups, -7);
    ReferenceConvAccumulate(conv, begin, end, ref_acc.data(), ref_sum.data());
    for (CpuIsa isa : {CpuIsa::kBest, CpuIsa::kPortable}) {
      std::fill(fast_acc.begin(), fast_acc.end(), -7);
      std::fill(fast_sum.begin(), fast_sum.end(), -7);
      CpuConvAccumulate(conv, begin, end, ThreadedFor(1 + iter % 3), fast_acc.data(),
                        fast_sum.data(), isa);
      EXPECT(ref_acc == fast_acc, "acc differs (isa %d): %s", int(isa), c.name.c_str());
      EXPECT(ref_sum == fast_sum, "act_sum differs (isa %d): %s", int(isa), c.name.c_str());
    }
  }
}

// The exact table and scale 1 / zero point 0: the integer sum is the ordinary integer convolution,
// here checked independently of both kernels on a layer with K = 3*3*4096 > 32768 taps.
void TestLargeKExactSum() {
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kValid;
  const int64_t input_dims[4] = {1, 3, 3, 4096}, filter_dims[4] = {3, 3, 4096, 3};
  ConvShape s;
  EXPECT(ComputeConvShape(input_dims, filter_dims, attrs, &s).empty(), "shape");
  std::vector<uint8_t> input(s.input_elements(), 255), filter(s.filter_elements(), 255);
  QuantizedConv conv{s, input.data(), filter.data(), 0, ExactLut()->data()};
  std::vector<int64_t> acc(3), sum(1);
  CpuConvAccumulate(conv, 0, 1, SerialFor(), acc.data(), sum.data());
  const int64_t expected = int64_t{255} * 255 * 3 * 3 * 4096;  // > 2^31
  EXPECT(acc[0] == expected && acc[2] == expected, "got %lld", (long long)acc[0]);
  EXPECT(sum[0] == int64_t{255} * 3 * 3 * 4096, "got %lld", (long long)sum[0]);
}

// The whole pipeline (quantize, accumulate, dequantize into NHWC or NCHW) gives identical outputs with
// the reference and the fast kernel, for both float and double.
template <typename T>
void TestPipelineKernelsAgree() {
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int iter = 0; iter < 60; ++iter) {
    const Case c = RandomCase(rng);
    const ConvShape& s = c.shape;
    std::vector<T> input(s.input_elements()), filter(s.filter_elements());
    for (auto& v : input) v = static_cast<T>(normal(rng));
    for (auto& v : filter) v = static_cast<T>(0.3f * normal(rng));
    QuantParams in_q, f_q;
    EXPECT(MakeQuantParams(-1.5f, 2.f, 2 + iter % 7, "a", "b", &in_q).empty(), "range");
    EXPECT(MakeQuantParams(-0.7f, 0.5f, 2 + iter % 7, "a", "b", &f_q).empty(), "range");
    std::vector<T> ref(s.output_elements(), T(-123)), fast(s.output_elements(), T(-456));
    ApproxConvCpu<T>(s, input.data(), filter.data(), in_q, f_q, ExactLut()->data(), SerialFor(),
                     ref.data(), CpuKernel::kReference);
    ApproxConvCpu<T>(s, input.data(), filter.data(), in_q, f_q, ExactLut()->data(), ThreadedFor(2),
                     fast.data(), CpuKernel::kFast);
    EXPECT(ref == fast, "pipeline outputs differ: %s", c.name.c_str());
  }
}

void TestQuantParams() {
  QuantParams q;
  EXPECT(MakeQuantParams(-1.f, 1.f, 1, "a", "b", &q).find("num_bits") == 0, "num_bits 1");
  EXPECT(Contains(MakeQuantParams(-1.f, 1.f, 9, "a", "b", &q), "num_bits"), "num_bits 9");
  EXPECT(Contains(MakeQuantParams(2.f, 1.f, 8, "input_min", "input_max", &q), "input_min"), "min > max");
  EXPECT(Contains(MakeQuantParams(0.f, INFINITY, 8, "x_min", "x_max", &q), "finite"), "inf");
  EXPECT(Contains(MakeQuantParams(NAN, 1.f, 8, "x_min", "x_max", &q), "finite"), "nan");
  // Real zero is exactly representable and quantizes to the zero point, whatever the range.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-10.f, 10.f);
  for (int i = 0; i < 1000; ++i) {
    float lo = u(rng), hi = u(rng);
    if (lo > hi) std::swap(lo, hi);
    const int bits = 2 + i % 7;
    EXPECT(MakeQuantParams(lo, hi, bits, "lo", "hi", &q).empty(), "range");
    EXPECT(QuantizeToCode(0.f, q) == q.zero_point, "zero code %d vs %d", QuantizeToCode(0.f, q),
           q.zero_point);
    EXPECT(QuantizeToCode(1e9f, q) == q.quant_max && QuantizeToCode(-1e9f, q) == 0, "clamp");
    EXPECT(QuantizeToCode(NAN, q) == 0, "nan");
    const uint8_t c = static_cast<uint8_t>(rng() % (q.quant_max + 1));
    EXPECT(QuantizeToCode(q.nudged_min + q.scale * c, q) == c, "code %d round trip", c);
  }
  EXPECT(MakeQuantParams(0.f, 0.f, 8, "a", "b", &q).empty() && QuantizeToCode(3.f, q) == 0 &&
             q.scale == 0.f && q.nudged_min == 0.f,
         "zero-width range");
}

std::string WriteFile(const std::string& path, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  for (size_t i = 0; i < bytes; ++i) std::fputc(static_cast<int>(i * 7 % 251), f);
  std::fclose(f);
  return path;
}

void TestLutFiles() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = tmp ? tmp : "/tmp";
  std::shared_ptr<const Lut> lut;
  std::string error = LoadLutFile(WriteFile(dir + "/good.bin", kLutFileBytes), &lut);
  EXPECT(error.empty() && lut, "%s", error.c_str());
  EXPECT((*lut)[1] == ((2 * 7 % 251) | ((3 * 7 % 251) << 8)), "little endian entry 1");
  error = LoadLutFile(WriteFile(dir + "/short.bin", kLutFileBytes - 2), &lut);
  EXPECT(Contains(error, "short.bin") && Contains(error, "131070 bytes"), "%s", error.c_str());
  error = LoadLutFile(WriteFile(dir + "/long.bin", kLutFileBytes + 1), &lut);
  EXPECT(Contains(error, "131073 bytes"), "%s", error.c_str());
  error = LoadLutFile(dir + "/missing.bin", &lut);
  EXPECT(Contains(error, "missing.bin") && Contains(error, "cannot open"), "%s", error.c_str());
  error = LoadLutFile(dir, &lut);
  EXPECT(Contains(error, "directory"), "%s", error.c_str());
  error = LoadLutFile("/dev/zero", &lut);
  EXPECT(Contains(error, "not a regular file"), "%s", error.c_str());
  const std::string fifo = dir + "/table.fifo";
  unlink(fifo.c_str());
  EXPECT(mkfifo(fifo.c_str(), 0600) == 0, "mkfifo");
  error = LoadLutFile(fifo, &lut);  // must not wait for a writer
  EXPECT(Contains(error, "not a regular file"), "%s", error.c_str());
  error = LoadMulMap("", &lut);
  EXPECT(error.empty() && (*lut)[(200 << 8) | 100] == 20000, "exact table");
}

void TestShapeErrors() {
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kValid;
  ConvShape s;
  const int64_t in[4] = {1, 4, 4, 6};
  const int64_t f_bad_depth[4] = {3, 3, 4, 2};
  EXPECT(Contains(ComputeConvShape(in, f_bad_depth, attrs, &s), "multiple"), "depth");
  const int64_t f_big[4] = {5, 5, 6, 2};
  EXPECT(Contains(ComputeConvShape(in, f_big, attrs, &s), "larger than the padded input"), "big");
  attrs.strides = {1, 0, 1, 1};
  EXPECT(Contains(ValidateConvAttrs(attrs), "strides"), "stride 0");
  attrs.strides = {1, 1, 1};
  EXPECT(Contains(ValidateConvAttrs(attrs), "strides"), "strides length");
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, -1, 1, 1};
  EXPECT(Contains(ValidateConvAttrs(attrs), "dilations"), "dilation");
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kExplicit;
  attrs.explicit_paddings = {0, 0, 1, 1};
  EXPECT(Contains(ValidateConvAttrs(attrs), "explicit_paddings"), "pad length");
  attrs.explicit_paddings = {0, 0, 1, -1, 0, 0, 0, 0};
  EXPECT(Contains(ValidateConvAttrs(attrs), "non-negative"), "pad sign");
  attrs.padding = Padding::kSame;
  attrs.explicit_paddings = {};
  const int64_t huge_in[4] = {1 << 16, 1 << 10, 1 << 10, 1};
  const int64_t f1[4] = {1, 1, 1, 1};
  EXPECT(Contains(ComputeConvShape(huge_in, f1, attrs, &s), "2^31"), "too large");
}

}  // namespace
}  // namespace tfapprox

int main() {
  tfapprox::TestQuantParams();
  tfapprox::TestLutFiles();
  tfapprox::TestShapeErrors();
  tfapprox::TestLargeKExactSum();
  tfapprox::TestFastKernelMatchesReference();
  tfapprox::TestPipelineKernelsAgree<float>();
  tfapprox::TestPipelineKernelsAgree<double>();
  if (tfapprox::failures) {
    std::fprintf(stderr, "%d failures\n", tfapprox::failures);
    return 1;
  }
  std::printf("core_test: all passed\n");
  return 0;
}
