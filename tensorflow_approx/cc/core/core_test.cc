// Tests of the framework-free core: the fast CPU kernel against the reference on the integer sums
// (exact equality), quantization, table files and geometry. Plain asserts: no test framework is
// available to an offline Bazel.
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tensorflow_approx/cc/core/approx_conv_cpu.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/conv_shape.h"
#include "tensorflow_approx/cc/core/cpu_features.h"
#include "tensorflow_approx/cc/core/lut.h"
#include "tensorflow_approx/cc/core/quantize.h"
#include "tensorflow_approx/cc/core/uninitialized_vector.h"

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

// The shape of a VALID convolution, stride and dilation 1, NHWC input and HWIO filter dimensions.
ConvShape ValidShape(const std::array<int64_t, 4>& input_dims, const std::array<int64_t, 4>& filter_dims) {
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kValid;
  ConvShape s;
  const std::string error = ComputeConvShape(input_dims.data(), filter_dims.data(), attrs, &s);
  EXPECT(error.empty(), "%s", error.c_str());
  return s;
}

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

// Runs the reference and the fast kernel (every instruction set choice) on pixels [begin, end) and expects
// identical sums. Returns the reference's acc.
std::vector<int64_t> ExpectKernelsAgree(const QuantizedConv& conv, int64_t begin, int64_t end,
                                        const ParallelFor& parallel_for, const std::string& name) {
  const ConvShape& s = conv.shape;
  const size_t n = end - begin;
  std::vector<int64_t> ref_acc(n * s.out_depth, -1), ref_sum(n * s.groups(), -1);
  std::vector<int64_t> fast_acc(n * s.out_depth), fast_sum(n * s.groups());
  ReferenceConvAccumulate(conv, begin, end, ref_acc.data(), ref_sum.data());
  for (CpuIsa isa : {CpuIsa::kBest, CpuIsa::kAvx512Bw, CpuIsa::kPortable}) {
    std::fill(fast_acc.begin(), fast_acc.end(), -7);
    std::fill(fast_sum.begin(), fast_sum.end(), -7);
    CpuConvAccumulate(conv, begin, end, parallel_for, fast_acc.data(), fast_sum.data(), isa);
    EXPECT(ref_acc == fast_acc, "acc differs (isa %d): %s", int(isa), name.c_str());
    EXPECT(ref_sum == fast_sum, "act_sum differs (isa %d): %s", int(isa), name.c_str());
  }
  return ref_acc;
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
    const int64_t pixels = s.out_pixels();
    // A sub-range of pixels, as the pipeline's passes use.
    const int64_t begin = iter % 3 == 0 ? 0 : std::uniform_int_distribution<int64_t>(0, pixels - 1)(rng);
    const int64_t end = iter % 3 == 0 ? pixels : std::uniform_int_distribution<int64_t>(begin + 1, pixels)(rng);
    ExpectKernelsAgree(conv, begin, end, ThreadedFor(1 + iter % 3), c.name);
  }
}

// A table of entries drawn from [65535 - below_max, 65535] (below_max 0: the constant table of
// 65535).
Lut NearMaxLut(std::mt19937& rng, int below_max) {
  Lut lut;
  std::uniform_int_distribution<int> entry(65535 - below_max, 65535);
  for (auto& v : lut) v = static_cast<uint16_t>(entry(rng));
  return lut;
}

// One output pixel of batch 1 (the filter covers the input), random codes, `groups` groups of
// kh * kw * depth taps and out_per_group channels: every kernel path must give the reference's
// sums, and with the constant table of 65535 each sum must be taps * 65535, which catches a
// wrapped accumulator even where the reference and the fast kernel would share it.
void ExpectLargeSums(int64_t kh, int64_t kw, int64_t depth, int64_t groups, int64_t out_per_group,
                     const Lut& lut, std::mt19937& rng) {
  const ConvShape s = ValidShape({1, kh, kw, depth * groups}, {kh, kw, depth, groups * out_per_group});
  std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
  for (auto& v : input) v = static_cast<uint8_t>(rng());
  for (auto& v : filter) v = static_cast<uint8_t>(rng());
  const QuantizedConv conv{s, input.data(), filter.data(), 0, lut.data()};
  char name[128];
  std::snprintf(name, sizeof(name), "%lldx%lldx%lld taps x %lld groups -> %lld per group",
                (long long)kh, (long long)kw, (long long)depth, (long long)groups,
                (long long)out_per_group);
  const std::vector<int64_t> acc = ExpectKernelsAgree(conv, 0, 1, SerialFor(), name);
  bool constant = true;
  for (uint16_t v : lut) constant &= v == 65535;
  if (!constant) return;
  for (int64_t v : acc) {
    EXPECT(v == s.taps() * 65535, "%s: %lld, expected %lld", name, (long long)v,
           (long long)(s.taps() * 65535));
  }
}

// Exact sums past 2^32 (int64 accumulators), and around the permute path's tap limit (int32 lanes:
// it runs below 32768 taps, and 32769 taps are the fewest whose sums can pass 2^31 - 1).
// The vectorized quantization gives QuantizeToCode's codes bit for bit: random values, exact ties
// (code + 0.5 steps), the range ends and beyond, zeros of both signs, infinities, NaN, subnormals.
void TestQuantizeCodesVectorized() {
  std::mt19937 rng(11);
  const float ranges[][2] = {{0.f, 6.f}, {-1.f, 1.f}, {-3.7f, 0.2f}, {0.f, 255.f}, {-1e-3f, 5e-4f}, {0.f, 0.f}};
  for (const auto& r : ranges) {
    for (int scheme = 0; scheme < 6; ++scheme) {  // bits 8, 4, 2; asymmetric, then symmetric narrow
      static const int kBits[] = {8, 4, 2};
      const int bits = kBits[scheme % 3];
      const bool narrow = scheme >= 3;
      QuantParams q;
      EXPECT(MakeQuantParams(r[0], r[1], bits, "a", "b", &q, narrow, narrow).empty(), "range");
      if (narrow && q.scale != 0.f) {  // the lowest signed code is never produced
        EXPECT(q.quant_min == 1 && QuantizeToCode(-1e30f, q) == 1 && QuantizeToCode(0.f, q) == q.zero_point,
               "narrow range codes");
      }
      // Special values first: they must reach the vector lanes, not only the scalar tail.
      std::vector<float> v = {0.f, -0.f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, q.nudged_min, q.nudged_max};
      std::uniform_real_distribution<float> wide(r[0] - 1.f, r[1] + 1.f);
      for (int i = 0; i < 997; ++i) v.push_back(wide(rng));
      for (int c = -2; c <= q.quant_max + 2; ++c) {
        v.push_back(q.nudged_min + q.scale * (c + 0.5f));
        v.push_back(q.nudged_min + q.scale * c);
      }
      v.push_back(NAN);  // and in the tail
      std::vector<uint8_t> fast(v.size()), slow(v.size());
      const bool nan_fast = QuantizeCodes(v.data(), static_cast<int64_t>(v.size()), q, fast.data());
      const bool nan_slow = QuantizeCodes(v.data(), static_cast<int64_t>(v.size()), q, slow.data(), true);
      EXPECT(nan_fast && nan_slow, "NaN seen");
      for (size_t i = 0; i < v.size(); ++i) {
        EXPECT(fast[i] == slow[i] && slow[i] == QuantizeToCode(v[i], q), "value %.9g: %d vs %d", v[i], fast[i],
               slow[i]);
      }
      std::vector<float> finite(40, 0.25f);
      EXPECT(!QuantizeCodes(finite.data(), 40, q, fast.data()), "no NaN");
      // Runs (QuantizeRuns): 3 runs of `length` values `stride` apart, the gaps between them NaN, which
      // must neither be quantized nor seen; then a NaN inside the last run's last value.
      for (const int64_t length : {1, 3, 16, 17, 40}) {
        const int64_t stride = length + 5, runs = 3;
        std::vector<float> strided(static_cast<size_t>(stride * runs), NAN);
        for (int64_t j = 0; j < runs; ++j) {
          for (int64_t i = 0; i < length; ++i) {
            const float x = v[(j * length + i) % v.size()];
            strided[j * stride + i] = x != x ? 1.5f : x;  // v's special values but NaN
          }
        }
        for (const bool portable : {false, true}) {
          std::vector<uint8_t> codes(static_cast<size_t>(runs * length + 1), 77);
          EXPECT(!QuantizeRuns(strided.data(), runs, length, stride, q, codes.data(), portable),
                 "runs: a NaN between runs was seen");
          for (int64_t j = 0; j < runs; ++j)
            for (int64_t i = 0; i < length; ++i)
              EXPECT(codes[j * length + i] == QuantizeToCode(strided[j * stride + i], q), "run %lld value %lld",
                     (long long)j, (long long)i);
          EXPECT(codes[runs * length] == 77, "runs: a code written past the last run");
          strided[(runs - 1) * stride + length - 1] = NAN;
          EXPECT(QuantizeRuns(strided.data(), runs, length, stride, q, codes.data(), portable), "runs: NaN seen");
          strided[(runs - 1) * stride + length - 1] = 0.f;
        }
      }
    }
  }
}

// DequantizeRow and DequantizePixels (16 channels at a time with AVX-512 DQ, and their scalar loops) give
// DequantizeTerms' bits:
// random per-channel terms (schemes, bits, offsets of signed tables), sums up to 2^40 of either sign, rows
// of 1-40 channels starting anywhere.
void TestDequantizeRowMatchesTerms() {
  std::mt19937_64 rng(17);
  std::uniform_real_distribution<float> lo(-4.f, 0.f), hi(0.f, 4.f);
  for (int iter = 0; iter < 200; ++iter) {
    const int channels = 1 + static_cast<int>(rng() % 48);
    const int64_t taps = 1 + static_cast<int64_t>(rng() % 5000);
    QuantParams in_q;
    EXPECT(MakeQuantParams(lo(rng), hi(rng), 2 + iter % 7, "a", "b", &in_q, iter % 3 == 0, iter % 5 == 0).empty(),
           "input range");
    std::vector<DequantizeTerms<float>> terms;
    std::vector<int64_t> filter_sum(channels);
    for (int co = 0; co < channels; ++co) {
      QuantParams f_q;
      EXPECT(MakeQuantParams(lo(rng), hi(rng), 2 + (iter + co) % 7, "c", "d", &f_q, iter % 2 == 0).empty(),
             "filter range");
      terms.emplace_back(in_q, f_q, taps);
      terms.back().acc_offset = iter % 4 == 0 ? 32768 * taps : 0;  // a signed table's offset
      filter_sum[co] = static_cast<int64_t>(rng() % (255 * static_cast<uint64_t>(taps) + 1));
    }
    const DequantizeRows rows(terms, filter_sum.data());
    const int co = static_cast<int>(rng() % channels);
    const int n = channels - co;
    std::vector<int64_t> acc(n);
    for (auto& a : acc) a = static_cast<int64_t>(rng() % (uint64_t{1} << 40)) - (int64_t{1} << 39);
    const int64_t act_sum = static_cast<int64_t>(rng() % (255 * static_cast<uint64_t>(taps) + 1));
    std::vector<float> fast(n), portable(n);
    DequantizeRow(rows, co, n, acc.data(), act_sum, fast.data());
    DequantizeRow(rows, co, n, acc.data(), act_sum, portable.data(), /*portable=*/true);
    for (int j = 0; j < n; ++j) {
      const float want = terms[co + j](acc[j], act_sum, filter_sum[co + j]);
      EXPECT(std::memcmp(&fast[j], &want, 4) == 0 && std::memcmp(&portable[j], &want, 4) == 0,
             "channel %d: %.9g / %.9g, want %.9g", co + j, fast[j], portable[j], want);
    }
    // DequantizePixels: several pixels of all the channels (one group).
    const int pixels = 1 + static_cast<int>(rng() % 40);  // tiles of 16 pixels and a short one
    std::vector<int64_t> accs(static_cast<size_t>(pixels) * channels), act_sums(pixels);
    for (auto& a : accs) a = static_cast<int64_t>(rng() % (uint64_t{1} << 40)) - (int64_t{1} << 39);
    for (auto& a : act_sums) a = static_cast<int64_t>(rng() % (255 * static_cast<uint64_t>(taps) + 1));
    std::vector<float> fast_px(accs.size()), portable_px(accs.size());
    DequantizePixels(rows, pixels, accs.data(), act_sums.data(), fast_px.data());
    DequantizePixels(rows, pixels, accs.data(), act_sums.data(), portable_px.data(), /*portable=*/true);
    for (int p = 0; p < pixels; ++p) {
      for (int c = 0; c < channels; ++c) {
        const size_t i = static_cast<size_t>(p) * channels + c;
        const float want = terms[c](accs[i], act_sums[p], filter_sum[c]);
        EXPECT(std::memcmp(&fast_px[i], &want, 4) == 0 && std::memcmp(&portable_px[i], &want, 4) == 0,
               "pixel %d channel %d: %.9g / %.9g, want %.9g", p, c, fast_px[i], portable_px[i], want);
      }
    }
  }
}

void TestLargeSumsEveryCpuPath() {
  std::mt19937 rng(65537);
  const Lut max_lut = NearMaxLut(rng, 0);
  const Lut near_max = NearMaxLut(rng, 500);  // every sum of 70000 taps is above 2^32 too
  // 70000 taps: sums of up to 4.59e9 > 2^32. Few channels, and >= 32 per group, which the permute
  // path would take but for its tap limit: both run the scalar loop.
  for (const Lut* lut : {&max_lut, &near_max}) {
    ExpectLargeSums(1, 1, 70000, 1, 3, *lut, rng);
    ExpectLargeSums(2, 2, 17500, 1, 40, *lut, rng);
  }
  ExpectLargeSums(2, 1, 35000, 2, 33, max_lut, rng);
  // With >= 32 channels per group (a partial pass of 64 channels, a whole one, and more): the
  // permute path (AVX-512BW) at its last tap count, 32767 = 7 * 4681, the scalar loop from
  // 32768 = 2 * 4 * 4096 (sums of 2^31 - 2^15), and at 32769 = 3 * 3 * 3641 (2^31 + 32767: an
  // int32 lane would wrap, so a limit moved past it fails here).
  if (!HasAvx512Bw()) {
    std::fprintf(stderr, "note: no AVX-512BW here, the fast kernel's permute path is not tested\n");
  }
  for (int64_t out_per_group : {32, 47, 64}) {
    ExpectLargeSums(7, 1, 4681, 1, out_per_group, max_lut, rng);
    ExpectLargeSums(2, 4, 4096, 1, out_per_group, max_lut, rng);
    ExpectLargeSums(3, 3, 3641, 1, out_per_group, max_lut, rng);
  }
  // Fewer than 32 channels per group: the column path (AVX-512BW, int32 lanes too) on both sides of
  // the same tap limit, with channel counts below, at and between its lane groups.
  for (int64_t out_per_group : {1, 3, 16, 31}) {
    ExpectLargeSums(7, 1, 4681, 1, out_per_group, max_lut, rng);
    ExpectLargeSums(3, 3, 3641, 1, out_per_group, max_lut, rng);
  }
  ExpectLargeSums(7, 1, 4681, 2, 16, near_max, rng);
  ExpectLargeSums(7, 1, 4681, 1, 130, max_lut, rng);  // three permute passes
  ExpectLargeSums(7, 1, 4681, 2, 47, max_lut, rng);
  ExpectLargeSums(7, 1, 4681, 1, 47, near_max, rng);
}

// A layer of the path tests below.
struct PathLayer {
  int64_t batch, h, w, kh, kw, depth, groups, out_per_group, stride, dilation;
  Padding padding;
};

// Every kernel choice against the reference on `layers`, each with codes spread over 0..255 (half of
// them the zero code, 0 or 200) or all at least 128, and tables random, of 65535 only (every partial
// sum at its largest, checked to be taps * 65535) and within 500 of it; over all pixels and over a
// sub-range that starts and ends mid-block. `path` must appear in the kernel's name where AVX-512BW is.
void ExpectPathMatchesReference(const std::vector<PathLayer>& layers, const char* path, uint32_t seed) {
  std::mt19937 rng(seed);
  Lut random_lut;
  for (auto& v : random_lut) v = static_cast<uint16_t>(rng());
  const Lut max_lut = NearMaxLut(rng, 0), near_max = NearMaxLut(rng, 500);
  for (const PathLayer& l : layers) {
    ConvAttrs attrs;
    // Vectors moved in, not assigned from braces: GCC 12 -O3 warns (-Wnonnull, falsely) on the latter.
    attrs.strides = std::vector<int64_t>{1, l.stride, l.stride, 1};
    attrs.dilations = std::vector<int64_t>{1, l.dilation, l.dilation, 1};
    attrs.padding = l.padding;
    if (l.padding == Padding::kExplicit) {
      attrs.explicit_paddings = std::vector<int64_t>{0, 0, 2, 1, 0, 3, 0, 0};
    }
    const int64_t input_dims[4] = {l.batch, l.h, l.w, l.depth * l.groups};
    const int64_t filter_dims[4] = {l.kh, l.kw, l.depth, l.groups * l.out_per_group};
    ConvShape s;
    const std::string error = ComputeConvShape(input_dims, filter_dims, attrs, &s);
    EXPECT(error.empty(), "%s", error.c_str());
    if (HasAvx512Bw()) {
      // With VBMI, groups of fewer than 128 channels take the column path whatever their count.
      const bool vbmi_columns = HasAvx512Vbmi() && l.out_per_group < 128;
      EXPECT(Contains(CpuKernelName(s), vbmi_columns ? "columns" : path), "%s", CpuKernelName(s));
      const std::string word_kernel = std::string("avx512-") + path;
      EXPECT(CpuKernelName(s, CpuIsa::kAvx512Bw) == word_kernel, "%s", CpuKernelName(s, CpuIsa::kAvx512Bw));
    }
    std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
    for (auto& v : filter) v = static_cast<uint8_t>(rng());
    for (int variant = 0; variant < 6; ++variant) {
      const bool high = variant % 2;
      const uint8_t zero_code = variant / 2 % 2 ? 200 : 0;
      for (auto& v : input) {
        const uint8_t code = static_cast<uint8_t>(rng());
        v = high ? code | 128 : rng() % 2 ? zero_code : code;
      }
      const Lut* luts[] = {&random_lut, &max_lut, &near_max};
      const QuantizedConv conv{s, input.data(), filter.data(), zero_code, luts[variant % 3]->data()};
      const int64_t pixels = s.out_pixels();
      char name[160];
      std::snprintf(name, sizeof(name), "%s: %lldx%lldx%lld taps, %lld groups x %lld, variant %d", path,
                    (long long)l.kh, (long long)l.kw, (long long)l.depth, (long long)l.groups,
                    (long long)l.out_per_group, variant);
      const std::vector<int64_t> acc = ExpectKernelsAgree(conv, 0, pixels, ThreadedFor(2), name);
      ExpectKernelsAgree(conv, pixels / 3 + 1, pixels - pixels / 5, ThreadedFor(3), name);
      if (variant % 3 == 1) {  // the table of 65535
        for (int64_t v : acc) EXPECT(v == s.taps() * 65535, "%s: %lld", name, (long long)v);
      }
    }
  }
}

// The column path (at most 32 output channels per group): several chunks of its 256 pixels and a short
// last one, tap counts around the 257 whose sums of bytes fill its 16-bit lanes (1, 27, 144, 257, 258,
// 288, 600), groups, depthwise, strides, dilations and padding.
void TestColumnPathMatchesReference() {
  ExpectPathMatchesReference(
      {
          {2, 19, 23, 3, 3, 16, 1, 16, 1, 1, Padding::kSame},    // 874 pixels, 144 taps
          {1, 11, 13, 3, 3, 32, 1, 32, 1, 1, Padding::kSame},    // 288 taps: two spans of 16-bit sums
          {3, 9, 10, 1, 1, 257, 1, 5, 1, 1, Padding::kValid},    // 257 taps: the 16-bit lanes full
          {2, 8, 9, 1, 2, 129, 1, 3, 1, 1, Padding::kSame},      // 258 taps
          {2, 17, 15, 3, 3, 3, 1, 16, 2, 1, Padding::kSame},     // 27 taps, stride 2
          {2, 12, 12, 3, 3, 8, 2, 16, 1, 2, Padding::kSame},     // 2 groups, dilation 2
          {1, 20, 21, 5, 5, 24, 1, 31, 1, 1, Padding::kValid},   // 600 taps
          {2, 14, 14, 3, 3, 1, 24, 1, 1, 1, Padding::kSame},     // depthwise
          {1, 31, 30, 2, 3, 4, 3, 9, 3, 1, Padding::kExplicit},  // 3 groups, stride 3, explicit padding
          {1, 1, 300, 1, 1, 1, 1, 7, 1, 1, Padding::kValid},     // 1 tap
          {2, 32, 32, 1, 1, 16, 1, 32, 2, 1, Padding::kValid},   // ResNet-20's 1x1 projection 16 -> 32
      },
      "columns", 321);
}

// The column path's gather from input rows (stride_w * in_depth at most 4, with VBMI): stems of 1-4
// input channels, runs of pixels cut by row ends, image ends, half-blocks and chunks (widths of 1,
// 5, 13, 32 and 40; sub-ranges starting mid-row), padding on every side, strides, dilations, groups.
void TestColumnGatherFromRowsMatchesReference() {
  ExpectPathMatchesReference(
      {
          {3, 32, 32, 3, 3, 3, 1, 16, 1, 1, Padding::kSame},     // ResNet-20's stem, 12 chunks
          {5, 9, 13, 3, 3, 1, 1, 16, 1, 1, Padding::kValid},     // 1 channel, chunks across images
          {3, 17, 19, 3, 3, 2, 1, 8, 2, 1, Padding::kSame},      // 2 channels, stride 2: 4 bytes a pixel
          {2, 15, 21, 5, 5, 4, 1, 16, 1, 1, Padding::kExplicit}, // 4 channels, 5x5
          {2, 12, 40, 3, 3, 3, 1, 12, 1, 2, Padding::kSame},     // rows longer than a half-block, dilation 2
          {2, 11, 11, 3, 3, 2, 2, 8, 1, 1, Padding::kValid},     // 2 groups of 2 channels
          {1, 7, 5, 3, 3, 1, 4, 4, 1, 1, Padding::kSame},        // depthwise, rows of 5 pixels
          {3, 6, 1, 3, 1, 2, 1, 5, 1, 1, Padding::kSame},        // rows of 1 pixel: 32 runs a half-block
          {2, 10, 33, 7, 7, 3, 1, 31, 3, 1, Padding::kSame},     // falls back: 9 bytes a pixel
      },
      "columns", 654);
}

// The row path (more than 32 output channels per group; with VBMI, from 128 channels, its byte-plane
// kernel, which passes over 128 channels, then 64; below 128 those take the column path): channel
// counts of one pass, of several and not multiples of 64, groups, pixel counts and sub-ranges that do
// not fill its blocks of 4 pixels, tap counts around 257, and a filter large enough for the VBMI
// kernel's blocks of pixels and taps.
void TestRowPathMatchesReference() {
  ExpectPathMatchesReference(
      {
          {2, 9, 10, 3, 3, 16, 1, 64, 1, 1, Padding::kSame},      // 144 taps, one whole pass of 64
          {1, 7, 9, 3, 3, 40, 1, 130, 1, 1, Padding::kSame},      // 360 taps, 128 + 2 channels, 63 pixels
          {3, 5, 7, 1, 1, 257, 1, 65, 1, 1, Padding::kValid},     // 257 taps: the 16-bit lanes full
          {2, 6, 5, 1, 2, 129, 1, 100, 1, 1, Padding::kSame},     // 258 taps
          {1, 20, 21, 5, 5, 24, 1, 47, 1, 1, Padding::kValid},    // 600 taps
          {2, 8, 8, 3, 3, 8, 2, 96, 1, 2, Padding::kSame},        // 2 groups, dilation 2
          {1, 1, 37, 1, 1, 1, 1, 200, 1, 1, Padding::kValid},     // 1 tap, 128 + 64 + 8 channels
          {1, 13, 11, 2, 3, 4, 3, 33, 3, 1, Padding::kExplicit},  // 3 groups, stride 3, explicit padding
          {1, 9, 9, 3, 3, 64, 1, 256, 2, 1, Padding::kSame},      // 576 taps, 256 channels, stride 2
          {2, 16, 16, 1, 1, 32, 1, 64, 2, 1, Padding::kValid},    // ResNet-20's 1x1 projection 32 -> 64
          {3, 5, 7, 1, 1, 257, 1, 129, 1, 1, Padding::kValid},    // 257 taps, 128 + 1 channels
          {2, 8, 8, 3, 3, 8, 2, 160, 1, 2, Padding::kSame},       // 2 groups of 128 + 32, dilation 2
          // 4104 taps x 256 padded channels (1 MB, 128 + 72 real): VBMI in blocks of 32 pixels and 514
          // taps (7 full, a short one), ranges of 44 and 37 pixels (a short odd block) and 16 and 5
          {1, 9, 9, 3, 3, 456, 1, 200, 1, 1, Padding::kSame},
      },
      "rows", 4321);
}

// A decomposition and the table it stands for (values kept in 0..65535): the exact product's
// (u = v = code - 128, alpha = beta = 128 * code, c0 = -16384), or random int8 terms.
struct DecomposedTable {
  std::vector<int8_t> u, v;
  std::vector<int32_t> alpha, beta;
  TableDecomposition d;
  Lut lut;
};

DecomposedTable MakeDecomposedTable(std::mt19937& rng, int terms, bool exact, bool extreme = false) {
  DecomposedTable t;
  t.u.resize(terms * 256);
  t.v.resize(terms * 256);
  t.alpha.resize(256);
  t.beta.resize(256);
  // Extreme: the largest |u * v| everywhere (u = -128, v = -128 or 127), for the 32-bit chunking.
  std::uniform_int_distribution<int> small(-127, 127), free_term(0, 2000), pick(0, 1);
  for (int c = 0; c < 256; ++c) {
    for (int r = 0; r < terms; ++r) {
      t.u[r * 256 + c] = static_cast<int8_t>(exact ? c - 128 : extreme ? -128 : small(rng) / (4 * terms));
      t.v[r * 256 + c] = static_cast<int8_t>(exact ? c - 128 : extreme ? (pick(rng) ? 127 : -128) : small(rng) / 4);
    }
    // Extreme: alpha over most of int32 too (four byte planes in the vector sums).
    t.alpha[c] = exact ? 128 * c : extreme ? static_cast<int32_t>(rng() % (1u << 31)) - (1 << 30) : free_term(rng);
    t.beta[c] = exact ? 128 * c : free_term(rng);
  }
  t.d = TableDecomposition{terms, t.u.data(), t.v.data(), t.alpha.data(), t.beta.data(), exact ? -16384 : 30000};
  for (int a = 0; a < 256; ++a) {
    for (int w = 0; w < 256; ++w) {
      int64_t value = t.d.c0 + t.alpha[a] + t.beta[w];
      for (int r = 0; r < terms; ++r) value += int64_t{t.u[r * 256 + a]} * t.v[r * 256 + w];
      // The extreme table's values leave uint16 (the cast wraps): its test sums the terms directly.
      t.lut[(a << 8) | w] = static_cast<uint16_t>(value);
    }
  }
  return t;
}

// The decomposed kernel (VNNI and portable) against the reference on random shapes with the exact
// table and random decomposed ones, sub-ranges of pixels and thread counts.
void TestDecomposedKernelMatchesReference() {
  std::mt19937 rng(777);
  for (int iter = 0; iter < 200; ++iter) {
    const Case c = RandomCase(rng);
    const ConvShape& s = c.shape;
    const bool exact = iter % 3 == 0;  // one term; else 1 to 5 random ones
    const DecomposedTable t = MakeDecomposedTable(rng, exact ? 1 : 1 + iter % 5, exact);
    std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
    for (auto& v : input) v = static_cast<uint8_t>(rng());
    for (auto& v : filter) v = static_cast<uint8_t>(rng());
    const QuantizedConv conv{s, input.data(), filter.data(), static_cast<uint8_t>(rng()), t.lut.data()};
    const int64_t pixels = s.out_pixels();
    const int64_t begin = iter % 2 ? 0 : std::uniform_int_distribution<int64_t>(0, pixels - 1)(rng);
    const int64_t end = iter % 2 ? pixels : std::uniform_int_distribution<int64_t>(begin + 1, pixels)(rng);
    const size_t n = end - begin;
    std::vector<int64_t> ref_acc(n * s.out_depth), ref_sum(n * s.groups());
    ReferenceConvAccumulate(conv, begin, end, ref_acc.data(), ref_sum.data());
    for (bool portable : {false, true}) {
      std::vector<int64_t> acc(n * s.out_depth, -7), sum(n * s.groups(), -7);
      DecomposedConvAccumulate(conv, t.d, begin, end, ThreadedFor(1 + iter % 3), acc.data(), sum.data(), portable);
      EXPECT(acc == ref_acc, "decomposed acc differs (%s, %d terms, portable %d): %s", DecomposedKernelName(s, t.d.terms, portable),
             t.d.terms, int(portable), c.name.c_str());
      EXPECT(sum == ref_sum, "decomposed act_sum differs (portable %d): %s", int(portable), c.name.c_str());
    }
  }
  // Groups of 16 and 32 channels (the gather's 16- and 32-byte tap copies; RandomCase's depths stay
  // under 9), two groups, SAME padding (padded taps take the zero code), one and three terms.
  for (int64_t depth : {16, 32}) {
    for (int terms : {1, 3}) {
      const DecomposedTable t = MakeDecomposedTable(rng, terms, terms == 1);
      ConvAttrs attrs;
      attrs.strides = {1, 1, 1, 1};
      attrs.dilations = {1, 1, 1, 1};
      attrs.padding = Padding::kSame;
      const int64_t in_dims[4] = {2, 7, 9, 2 * depth}, f_dims[4] = {3, 3, depth, 24};
      ConvShape s;
      const std::string error = ComputeConvShape(in_dims, f_dims, attrs, &s);
      EXPECT(error.empty(), "%s", error.c_str());
      std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
      for (auto& v : input) v = static_cast<uint8_t>(rng());
      for (auto& v : filter) v = static_cast<uint8_t>(rng());
      const QuantizedConv conv{s, input.data(), filter.data(), static_cast<uint8_t>(rng()), t.lut.data()};
      const int64_t pixels = s.out_pixels();
      std::vector<int64_t> ref_acc(pixels * s.out_depth), ref_sum(pixels * s.groups());
      ReferenceConvAccumulate(conv, 0, pixels, ref_acc.data(), ref_sum.data());
      for (bool portable : {false, true}) {
        std::vector<int64_t> acc(pixels * s.out_depth, -7), sum(pixels * s.groups(), -7);
        DecomposedConvAccumulate(conv, t.d, 0, pixels, ThreadedFor(2), acc.data(), sum.data(), portable);
        EXPECT(acc == ref_acc && sum == ref_sum, "decomposed, groups of %lld channels, %d terms (portable %d)",
               (long long)depth, terms, int(portable));
      }
    }
  }
  // The direct path (ungrouped, cg a multiple of 4: the padded image, B tap-major, PackTermVbmi per spatial
  // tap for whole blocks of 16 output channels; RandomCase's depths stay under 9 and its out_depth under
  // 16): 3, 8, 16 and 32 channels (the first three through NarrowPixelsVbmi's 4-, 8- and 16-byte pixels,
  // rows of 19 of them: full and partial vectors), 32 output channels, SAME padding, strides 1 and 2
  // (output rows of 19 and 10 pixels: blocks span rows), one and three terms, in two pixel ranges through
  // one plan; then the plan with a second input (another buffer: its image is built again).
  // With 16 images and whole_images, the plan builds no image and each call builds them one at a time:
  // ranges of whole images, and a range split inside an image (an image built whole for that call).
  for (int64_t depth : {3, 8, 16, 32}) {
    for (int terms : {1, 3}) {
      for (int64_t stride : {1, 2}) {
        const DecomposedTable t = MakeDecomposedTable(rng, terms, terms == 1);
        ConvAttrs attrs;
        attrs.strides = {1, stride, stride, 1};
        attrs.dilations = {1, 1, 1, 1};
        attrs.padding = Padding::kSame;
        const bool whole_images = depth == 8 || (depth == 16 && terms == 3);
        const int64_t in_dims[4] = {whole_images ? 16 : 2, 7, 19, depth}, f_dims[4] = {3, 3, depth, 32};
        ConvShape s;
        const std::string error = ComputeConvShape(in_dims, f_dims, attrs, &s);
        EXPECT(error.empty(), "%s", error.c_str());
        std::vector<uint8_t> input(s.input_elements()), second(s.input_elements()), filter(s.filter_elements());
        for (auto& v : input) v = static_cast<uint8_t>(rng());
        for (auto& v : second) v = static_cast<uint8_t>(rng());
        for (auto& v : filter) v = static_cast<uint8_t>(rng());
        const uint8_t zero_code = static_cast<uint8_t>(rng());
        const QuantizedConv conv{s, input.data(), filter.data(), zero_code, t.lut.data()};
        const QuantizedConv conv2{s, second.data(), filter.data(), zero_code, t.lut.data()};
        const int64_t pixels = s.out_pixels(), image = s.out_h * s.out_w;
        const auto plan = PrepareDecomposed(conv, t.d, ThreadedFor(2), false, nullptr, whole_images);
        // Whole images: 5 and 11 of 16; else a third of the pixels (inside an image).
        for (const int64_t split : {whole_images ? 5 * image : pixels / 3, pixels / 3}) {
          for (const QuantizedConv* c : {&conv, &conv2}) {
            std::vector<int64_t> ref_acc(pixels * s.out_depth), ref_sum(pixels);
            ReferenceConvAccumulate(*c, 0, pixels, ref_acc.data(), ref_sum.data());
            std::vector<int64_t> acc(pixels * s.out_depth, -7), sum(pixels, -7);
            DecomposedConvAccumulate(*c, *plan, 0, split, ThreadedFor(2), acc.data(), sum.data());
            DecomposedConvAccumulate(*c, *plan, split, pixels, ThreadedFor(2), acc.data() + split * s.out_depth,
                                     sum.data() + split);
            EXPECT(acc == ref_acc && sum == ref_sum,
                   "decomposed direct path, %lld channels, %d terms, stride %lld, %lld images, split at %lld%s",
                   (long long)depth, terms, (long long)stride, (long long)s.batch, (long long)split,
                   c == &conv ? "" : ", plan reused for another input");
          }
        }
      }
    }
  }
  // Reductions past the 65536 entries whose 32-bit sums are exact, every product at its largest: the
  // chunks must add in 64 bits. One output pixel, 3 * 12000 taps x 2 terms = 72000 entries.
  const DecomposedTable t = MakeDecomposedTable(rng, 2, false, true);
  const ConvShape s = ValidShape({1, 1, 3, 12000}, {1, 3, 12000, 17});
  std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
  for (auto& v : input) v = static_cast<uint8_t>(rng());
  for (auto& v : filter) v = static_cast<uint8_t>(rng());
  const QuantizedConv conv{s, input.data(), filter.data(), 0, t.lut.data()};
  for (bool portable : {false, true}) {
    std::vector<int64_t> acc(s.out_depth), sum(1);
    DecomposedConvAccumulate(conv, t.d, 0, 1, SerialFor(), acc.data(), sum.data(), portable);
    for (int64_t co = 0; co < s.out_depth; ++co) {
      int64_t want = 0;
      for (int64_t k = 0; k < s.taps(); ++k) {
        const int a = input[k], w = filter[co * s.taps() + k];
        want += t.d.c0 + t.alpha[a] + t.beta[w];
        for (int r = 0; r < t.d.terms; ++r) want += int64_t{t.u[r * 256 + a]} * t.v[r * 256 + w];
      }
      EXPECT(acc[co] == want, "long reduction (portable %d), channel %lld: %lld, expected %lld", int(portable),
             (long long)co, (long long)acc[co], (long long)want);
    }
  }
}

// The exact table and scale 1 / zero point 0: the integer sum is the ordinary integer convolution,
// here checked independently of both kernels on a layer with K = 3*3*4096 > 32768 taps.
void TestLargeKExactSum() {
  const ConvShape s = ValidShape({1, 3, 3, 4096}, {3, 3, 4096, 3});
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
// Shapes whose direct path runs its GEMM on AMX where the processor has it (UsesAmx: strides 1 along the
// width, 4+ terms on 128+ taps, 16 terms on fewer; elsewhere VNNI's, AVX2's or the portable kernel runs
// them): every panel width (16, 32, 48 and 64 + 8 channels), tiles whose pixels span output rows and
// images, dilation 2 (a run per tap), stride 2 along the height, a 1x1 filter with 16 terms, 16 images
// (built one at a time beside their GEMM), pixels of 1024 bytes (8 terms x 128 channels, 16 x 64), strides
// 2 and 4 along the width (output rows of 16, 32 and 16 pixels), reductions of more than one of AmxPanel's
// slices (9216 and 18432 bytes). The integer sums (DecomposedConvAccumulate,
// all pixels and a range cut inside output rows) and the float32 outputs (ApproxConvCpu, the kernel writing
// them from int32 sums) against the reference.
void TestDecomposedAmxShapes() {
  std::mt19937 rng(4242);
  std::normal_distribution<float> normal(0.f, 1.f);
  struct Shape {
    int64_t n, h, w, ci, co, k, stride_h, dilation;
    int terms;
    int64_t stride_w = 1;
  };
  const Shape shapes[] = {{2, 7, 9, 16, 16, 3, 1, 1, 4},      {3, 8, 8, 16, 32, 3, 1, 1, 5},
                          {2, 6, 11, 24, 48, 3, 1, 1, 4},     {1, 9, 9, 32, 72, 3, 2, 1, 6},
                          {2, 9, 10, 16, 64, 3, 1, 2, 4},     {2, 5, 7, 32, 24, 1, 1, 1, 16},
                          {16, 6, 6, 16, 16, 3, 1, 1, 8},     {2, 6, 7, 128, 48, 3, 1, 1, 8},
                          {1, 7, 6, 64, 80, 3, 2, 2, 16},     {3, 6, 32, 16, 32, 3, 2, 1, 8, 2},
                          {1, 5, 64, 24, 48, 3, 1, 1, 4, 2},  {2, 4, 64, 16, 16, 3, 2, 2, 6, 4},
                          // 288 tiles of reduction: AmxPanel's slices of 128 (two whole, one partial).
                          {2, 5, 6, 256, 64, 3, 1, 1, 8}};
  for (const Shape& sh : shapes) {
    ConvAttrs attrs;
    attrs.strides = {1, sh.stride_h, sh.stride_w, 1};
    attrs.dilations = {1, sh.dilation, sh.dilation, 1};
    attrs.padding = Padding::kSame;
    const int64_t in_dims[4] = {sh.n, sh.h, sh.w, sh.ci}, f_dims[4] = {sh.k, sh.k, sh.ci, sh.co};
    ConvShape s;
    const std::string error = ComputeConvShape(in_dims, f_dims, attrs, &s);
    EXPECT(error.empty(), "%s", error.c_str());
    const DecomposedTable t = MakeDecomposedTable(rng, sh.terms, false);
    const std::string name = std::to_string(sh.ci) + "->" + std::to_string(sh.co) + ", " + std::to_string(sh.terms) +
                             " terms, " + DecomposedKernelName(s, sh.terms);
    if (HasAmx()) EXPECT(name.find("amx") != std::string::npos, "AMX should run %s", name.c_str());
    std::vector<uint8_t> input(s.input_elements()), filter(s.filter_elements());
    for (auto& v : input) v = static_cast<uint8_t>(rng());
    for (auto& v : filter) v = static_cast<uint8_t>(rng());
    const QuantizedConv conv{s, input.data(), filter.data(), static_cast<uint8_t>(rng()), t.lut.data()};
    const int64_t pixels = s.out_pixels();
    std::vector<int64_t> ref_acc(pixels * s.out_depth), ref_sum(pixels), acc(pixels * s.out_depth, -7), sum(pixels, -7);
    ReferenceConvAccumulate(conv, 0, pixels, ref_acc.data(), ref_sum.data());
    DecomposedConvAccumulate(conv, t.d, 0, pixels, ThreadedFor(2), acc.data(), sum.data());
    EXPECT(acc == ref_acc && sum == ref_sum, "decomposed sums differ: %s", name.c_str());
    // A range that starts and ends inside output rows (blocks of A cut short).
    const int64_t begin = 7, end = pixels - 5;
    std::vector<int64_t> part((end - begin) * s.out_depth, -7), part_sum(end - begin, -7);
    DecomposedConvAccumulate(conv, t.d, begin, end, ThreadedFor(2), part.data(), part_sum.data());
    EXPECT(std::equal(part.begin(), part.end(), ref_acc.begin() + begin * s.out_depth) &&
               std::equal(part_sum.begin(), part_sum.end(), ref_sum.begin() + begin),
           "decomposed sums of pixels %lld..%lld differ: %s", static_cast<long long>(begin),
           static_cast<long long>(end), name.c_str());
    std::vector<float> x(s.input_elements()), f(s.filter_elements());
    for (auto& v : x) v = normal(rng);
    for (auto& v : f) v = 0.3f * normal(rng);
    QuantParams in_q, f_q;
    EXPECT(MakeQuantParams(-1.5f, 2.f, 8, "a", "b", &in_q).empty(), "range");
    EXPECT(MakeQuantParams(-0.7f, 0.5f, 8, "a", "b", &f_q).empty(), "range");
    std::vector<float> ref(s.output_elements(), -1.f), fast(s.output_elements(), -2.f);
    ApproxConvCpu<float>(s, x.data(), f.data(), in_q, f_q, t.lut.data(), SerialFor(), ref.data(), CpuKernel::kReference);
    ApproxConvCpu<float>(s, x.data(), f.data(), in_q, f_q, t.lut.data(), ThreadedFor(2), fast.data(), CpuKernel::kFast,
                         0, &t.d);
    EXPECT(std::memcmp(ref.data(), fast.data(), ref.size() * sizeof(float)) == 0, "decomposed outputs differ: %s",
           name.c_str());
  }
}

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
  // With a decomposition, on shapes where PreferDecomposed takes it (RandomCase's are too small): the
  // direct path's outputs written by the kernel itself (float32 NHWC: FloatOutputs) from int32 sums
  // (BlockOutputs; a symmetric input for act_sum_offset) or, past int32's bounds (the last case: 36864
  // reduction entries of the exact table), from int64 ones; its int64 sums dequantized by the pipeline
  // otherwise (double, NCHW); the gather path (two groups); 1x1 filters (cases 13, 14); 3-channel stems,
  // whose image and B pad each tap to 4 bytes (DirectDepth: cases 15, 16); 132 channels and eight terms, whose
  // rows AVX2 translates eight terms and channels at a time (and the last 4 channels one by one) and takes
  // tap by tap (DirectConvAccumulate's tap_slices: case 17).
  for (int iter = 0; iter < 18; ++iter) {
    const bool wide = iter == 12, pointwise = iter == 13 || iter == 14, stem = iter == 15 || iter == 16;
    const bool deep = iter == 17;
    const int64_t depth = wide ? 4096 : deep ? 132 : stem ? 3 : iter % 3 == 2 ? 32 : 16;
    const int64_t groups = stem || deep ? 1 : iter % 4 == 3 ? 2 : 1;
    const int64_t terms = wide || iter == 13 || iter == 15 ? 1 : deep ? 8 : stem ? 2 : 1 + iter % 3;
    const DecomposedTable t = MakeDecomposedTable(rng, static_cast<int>(terms), terms == 1);
    ConvAttrs attrs;
    const int64_t stride = 1 + iter % 2;
    attrs.data_format = iter % 5 == 4 ? DataFormat::kNCHW : DataFormat::kNHWC;
    attrs.strides = attrs.data_format == DataFormat::kNCHW ? std::vector<int64_t>{1, 1, stride, stride}
                                                           : std::vector<int64_t>{1, stride, stride, 1};
    attrs.dilations = {1, 1, 1, 1};
    attrs.padding = Padding::kSame;
    // (The first iteration's 2 x 64 x 80 outputs are two of the pipeline's passes of 8192 pixels.)
    const int64_t side = wide ? 3 : 9;
    // Iterations 1 and 16 take 16 images: the direct path then builds them one at a time beside their GEMM
    // (PrepareDecomposed's whole_images).
    const int64_t batch = iter == 1 || iter == 16 ? 16 : 2;
    const int64_t in_dims[4] = {batch, iter == 0 ? 64 : side, iter == 0 ? 80 : side + 2, depth * groups};
    const int64_t k = pointwise ? 1 : 3, f_dims[4] = {k, k, depth, 32};
    int64_t dims[4];
    std::copy(in_dims, in_dims + 4, dims);
    if (attrs.data_format == DataFormat::kNCHW) dims[1] = in_dims[3], dims[2] = in_dims[1], dims[3] = in_dims[2];
    ConvShape s;
    const std::string error = ComputeConvShape(dims, f_dims, attrs, &s);
    EXPECT(error.empty(), "%s", error.c_str());
    // (Without VNNI, AVX2 runs the direct path only: one group.)
    const bool takes = HasVnni() || (HasAvx2() && groups == 1);
    EXPECT(PreferDecomposed(s, static_cast<int>(terms)) == takes, "the decomposed kernel should %srun on %lld channels",
           takes ? "" : "not ", (long long)depth);
    std::vector<T> input(s.input_elements()), filter(s.filter_elements());
    // (The wide case's codes are all 255: its sums, 36864 * 255 * 255, leave int32.)
    for (auto& v : input) v = static_cast<T>(wide ? 2.f : normal(rng));
    for (auto& v : filter) v = static_cast<T>(wide ? 0.5f : 0.3f * normal(rng));
    // Odd iterations: a NaN in the input (NHWC float32: quantized as the direct path's image takes its rows)
    // in pixel (0, 0), which every stride reads; it must reach the same outputs as with the reference.
    if (iter % 2 == 1) {
      const int64_t c = static_cast<int64_t>(rng() % s.in_depth);
      input[attrs.data_format == DataFormat::kNCHW ? c * s.in_h * s.in_w : c] = std::numeric_limits<T>::quiet_NaN();
    }
    QuantParams in_q, f_q;
    EXPECT(MakeQuantParams(-1.5f, 2.f, 8, "a", "b", &in_q, /*symmetric=*/iter % 4 == 1).empty(), "range");
    EXPECT(MakeQuantParams(-0.7f, 0.5f, 8, "a", "b", &f_q).empty(), "range");
    std::vector<T> ref(s.output_elements(), T(-123)), fast(s.output_elements(), T(-456));
    ApproxConvCpu<T>(s, input.data(), filter.data(), in_q, f_q, t.lut.data(), SerialFor(), ref.data(),
                     CpuKernel::kReference);
    ApproxConvCpu<T>(s, input.data(), filter.data(), in_q, f_q, t.lut.data(), ThreadedFor(2), fast.data(),
                     CpuKernel::kFast, 0, &t.d);
    EXPECT(std::memcmp(ref.data(), fast.data(), ref.size() * sizeof(T)) == 0,
           "pipeline outputs differ with the decomposition: %lld channels x %lld groups, %lld terms, "
           "stride %lld, %s", (long long)depth, (long long)groups, (long long)terms, (long long)stride,
           attrs.data_format == DataFormat::kNCHW ? "NCHW" : "NHWC");
    int64_t nan = 0;
    for (const T v : fast) nan += v != v;
    EXPECT((nan > 0) == (iter % 2 == 1), "NaN outputs: %lld (iteration %d)", (long long)nan, iter);
  }
}

// Strided 1x1 filters that read no padding run as strides 1 over the pixels they read (SubsampledShape,
// ApproxConvCpu's fast kernels): the same outputs as the reference on the given convolution, bit for bit,
// NaN included: a NaN in a read pixel makes its output pixel NaN, one in a pixel no tap reads changes
// nothing. Strides (2, 2), (3, 2), (1, 3) on heights and widths that leave bottom rows and right columns
// unread or not, NHWC and NCHW, with the lookups and with a decomposition (PreferDecomposed's: one term).
template <typename T>
void TestSubsampledPipeline() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  const DecomposedTable t = MakeDecomposedTable(rng, 1, true);
  const int64_t strides[][2] = {{2, 2}, {3, 2}, {1, 3}};
  for (int iter = 0; iter < 12; ++iter) {
    ConvAttrs attrs;
    const int64_t sh = strides[iter % 3][0], sw = strides[iter % 3][1];
    attrs.data_format = iter % 2 ? DataFormat::kNCHW : DataFormat::kNHWC;
    const bool nchw = attrs.data_format == DataFormat::kNCHW;
    attrs.strides = nchw ? std::vector<int64_t>{1, 1, sh, sw} : std::vector<int64_t>{1, sh, sw, 1};
    attrs.dilations = {1, 1, 1, 1};
    attrs.padding = Padding::kValid;
    const int64_t n = 2, h = 8 + iter % 3, w = 7 + iter % 4, c = 16;
    const int64_t nhwc[4] = {n, h, w, c}, nchw_dims[4] = {n, c, h, w}, f_dims[4] = {1, 1, c, 32};
    ConvShape s, dense;
    EXPECT(ComputeConvShape(nchw ? nchw_dims : nhwc, f_dims, attrs, &s).empty(), "shape");
    EXPECT(SubsampledShape(s, &dense) && dense.in_h == s.out_h && dense.in_w == s.out_w && dense.stride_h == 1,
           "a strided 1x1 filter reading no padding is subsampled");
    std::vector<T> input(s.input_elements()), filter(s.filter_elements());
    for (auto& v : input) v = static_cast<T>(normal(rng));
    for (auto& v : filter) v = static_cast<T>(0.3f * normal(rng));
    // A NaN at pixel (0, 1, 1), which no tap reads with these strides (h, w below the stride are read
    // only at 0), and from iteration 6 on one at (1, 0, 0), which output pixel (1, 0, 0) reads.
    const auto element = [&](int64_t b, int64_t y, int64_t x, int64_t ch) {
      return nchw ? ((b * c + ch) * h + y) * w + x : ((b * h + y) * w + x) * c + ch;
    };
    const int64_t unread_y = sh > 1 ? 1 : 0, unread_x = sw > 1 ? 1 : 0;
    if (unread_y + unread_x > 0) input[element(0, unread_y, unread_x, 3)] = std::numeric_limits<T>::quiet_NaN();
    if (iter >= 6) input[element(1, 0, 0, 5)] = std::numeric_limits<T>::quiet_NaN();
    QuantParams in_q, f_q;
    EXPECT(MakeQuantParams(-1.5f, 2.f, 8, "a", "b", &in_q).empty(), "range");
    EXPECT(MakeQuantParams(-0.7f, 0.5f, 8, "a", "b", &f_q).empty(), "range");
    for (const bool decomposed : {false, true}) {
      std::vector<T> ref(s.output_elements(), T(-123)), fast(s.output_elements(), T(-456));
      ApproxConvCpu<T>(s, input.data(), filter.data(), in_q, f_q, t.lut.data(), SerialFor(), ref.data(),
                       CpuKernel::kReference);
      ApproxConvCpu<T>(s, input.data(), filter.data(), in_q, f_q, t.lut.data(), ThreadedFor(2), fast.data(),
                       CpuKernel::kFast, 0, decomposed ? &t.d : nullptr);
      EXPECT(std::memcmp(ref.data(), fast.data(), ref.size() * sizeof(T)) == 0,
             "subsampled outputs differ: strides %lld x %lld, %s, decomposed %d", (long long)sh, (long long)sw,
             nchw ? "NCHW" : "NHWC", int(decomposed));
      int64_t nan = 0;
      for (const T v : fast) nan += v != v;
      EXPECT(nan == (iter >= 6 ? s.out_depth : 0), "NaN outputs: %lld (strides %lld x %lld)", (long long)nan,
             (long long)sh, (long long)sw);
    }
  }
  // Padding read (explicit top padding) or a dilated 3x3 filter: not subsampled.
  ConvShape padded = ValidShape({1, 8, 8, 4}, {1, 1, 4, 4}), dense;
  padded.stride_h = padded.stride_w = 2;
  padded.out_h = padded.out_w = 4;
  EXPECT(SubsampledShape(padded, &dense), "the plain strided 1x1 is subsampled");
  padded.pad_top = 1;
  EXPECT(!SubsampledShape(padded, &dense), "a 1x1 filter reading top padding is not subsampled");
  ConvShape three = ValidShape({1, 9, 9, 4}, {3, 3, 4, 4});
  three.stride_h = three.stride_w = 2;
  three.out_h = three.out_w = 4;
  EXPECT(!SubsampledShape(three, &dense), "a 3x3 filter is not subsampled");
}

// The whole op in double with both ranges [0, 255] (scale 1, zero point 0): every output is its
// integer sum (the other dequantization terms are 0), compared exactly with the reference's, for
// both kernels. Random codes in [0, 255], given as the values themselves in the op's layouts.
void ExpectWholeOpSums(const int64_t input_dims[4], const int64_t filter_dims[4],
                       const ConvAttrs& attrs, const Lut& lut, std::mt19937& rng,
                       const char* name) {
  ConvShape s;
  const std::string error = ComputeConvShape(input_dims, filter_dims, attrs, &s);
  EXPECT(error.empty(), "%s: %s", name, error.c_str());
  QuantParams q;
  EXPECT(MakeQuantParams(0.f, 255.f, 8, "a", "b", &q).empty() && q.scale == 1.f &&
             q.zero_point == 0 && q.nudged_min == 0.f,
         "identity quantization");
  const bool nhwc = s.data_format == DataFormat::kNHWC;
  const int64_t in_hw = s.in_h * s.in_w, out_hw = s.out_h * s.out_w, taps = s.taps();
  std::vector<uint8_t> input_codes(s.input_elements()), filter_codes(s.filter_elements());
  std::vector<double> input(s.input_elements()), filter(s.filter_elements());
  for (int64_t i = 0; i < s.input_elements(); ++i) {  // i indexes NHWC
    input_codes[i] = static_cast<uint8_t>(rng());
    const int64_t c = i % s.in_depth, nhw = i / s.in_depth;
    input[nhwc ? i : (nhw / in_hw * s.in_depth + c) * in_hw + nhw % in_hw] = input_codes[i];
  }
  for (int64_t i = 0; i < s.filter_elements(); ++i) {  // i indexes [out_depth][taps]
    filter_codes[i] = static_cast<uint8_t>(rng());
    filter[i % taps * s.out_depth + i / taps] = filter_codes[i];  // HWIO
  }
  const QuantizedConv conv{s, input_codes.data(), filter_codes.data(), 0, lut.data()};
  std::vector<int64_t> acc(s.output_elements()), act_sum(s.out_pixels() * s.groups());
  ReferenceConvAccumulate(conv, 0, s.out_pixels(), acc.data(), act_sum.data());
  for (CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
    std::vector<double> out(s.output_elements(), -1.0);
    ApproxConvCpu<double>(s, input.data(), filter.data(), q, q, lut.data(), ThreadedFor(2),
                          out.data(), kernel);
    int64_t wrong = 0, first = -1;
    for (int64_t p = 0; p < s.out_pixels(); ++p) {
      for (int64_t co = 0; co < s.out_depth; ++co) {
        const int64_t at = nhwc ? p * s.out_depth + co
                                : (p / out_hw * s.out_depth + co) * out_hw + p % out_hw;
        if (out[at] != static_cast<double>(acc[p * s.out_depth + co])) {
          if (wrong++ == 0) first = p * s.out_depth + co;
        }
      }
    }
    EXPECT(wrong == 0, "%s (kernel %d): %lld outputs differ from the sums, first of pixel %lld",
           name, int(kernel), (long long)wrong, (long long)(first < 0 ? -1 : first / s.out_depth));
  }
}

void TestWholeOpExactSums() {
  std::mt19937 rng(4242);
  const Lut near_max = NearMaxLut(rng, 500);
  ConvAttrs attrs;
  attrs.strides = {1, 1, 1, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = Padding::kValid;
  // Sums past 2^32 (70000 taps of at least 65035): exact in the double output.
  const int64_t wide_in[4] = {1, 1, 2, 70000}, wide_filter[4] = {1, 1, 70000, 5};
  ExpectWholeOpSums(wide_in, wide_filter, attrs, near_max, rng, "70000 taps");
  // More pixels than one accumulator pass holds: 47 channels give passes of 5577 pixels (not a
  // multiple of the fast kernel's 4-pixel blocks), so 2 x 75 x 75 pixels take two full passes and a
  // short third, and passes cross the batch boundary; NCHW output, SAME padding.
  static_assert(kAccumulatorElementsPerPass / 47 == 5577, "the passes this case is sized for");
  attrs.data_format = DataFormat::kNCHW;
  attrs.padding = Padding::kSame;
  const int64_t pass_in[4] = {2, 4, 75, 75}, pass_filter[4] = {3, 3, 4, 47};
  ExpectWholeOpSums(pass_in, pass_filter, attrs, near_max, rng, "three passes");
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
  LutRef exact;
  error = LookupMulMap("", &exact);
  EXPECT(error.empty() && exact.id == 0 && (*exact.lut)[(200 << 8) | 100] == 20000, "exact table");
  // The table by weight code (the GPU columns kernel's layout), on the file's asymmetric table.
  error = LoadLutFile(dir + "/good.bin", &lut);
  std::vector<uint16_t> by_weight(kLutEntries);
  LutByWeight(lut->data(), by_weight.data());
  int wrong = 0;
  for (int a = 0; a < 256; ++a) {
    for (int w = 0; w < 256; ++w) wrong += by_weight[(w << 8) | a] != (*lut)[(a << 8) | w];
  }
  EXPECT(error.empty() && wrong == 0 && by_weight[1] != (*lut)[1], "LutByWeight: %d entries misplaced", wrong);
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

// An error for a huge value: it names `argument` and quotes `value` as given, and holds no negative
// number (what a wrapped int64 would print).
void ExpectQuotes(const std::string& error, const char* argument, int64_t value, const char* what) {
  bool negative = false;
  for (size_t i = 0; i + 1 < error.size(); ++i) {
    negative |= error[i] == '-' && std::isdigit(static_cast<unsigned char>(error[i + 1]));
  }
  EXPECT(Contains(error, argument) && Contains(error, std::to_string(value)) && !negative,
         "%s: \"%s\"", what, error.c_str());
}

// Values whose sums or products overflow int64: each is a clear error naming the argument, never a
// wrapped number or a wrong shape; the largest accepted values still give the right geometry.
// UninitializedVector's storage: 64-byte aligned (AMX's tile rows), 2 MB aligned from kHugeBytes on (whole
// huge pages for the advice), with its elements kept across a reallocation from one to the other.
void TestUninitializedVectorAlignment() {
  using Allocator = UninitializedAllocator<int32_t>;
  const auto aligned = [](const void* p, std::size_t alignment) {
    return reinterpret_cast<std::uintptr_t>(p) % alignment == 0;
  };
  UninitializedVector<int32_t> v(1000);
  for (int i = 0; i < 1000; ++i) v[i] = i * 7;
  EXPECT(aligned(v.data(), Allocator::kAlignment), "a small buffer is not 64-byte aligned");
  v.resize(Allocator::kHugeBytes / sizeof(int32_t) + 5);
  EXPECT(aligned(v.data(), Allocator::kHugePage), "a buffer of %zu bytes is not 2 MB aligned", v.size() * 4);
  bool kept = true;
  for (int i = 0; i < 1000; ++i) kept = kept && v[i] == i * 7;
  EXPECT(kept, "the elements changed when the buffer moved to huge pages");
  v.back() = 5;
  EXPECT(v.back() == 5, "the last element of the big buffer");
  UninitializedVector<uint8_t> bytes(Allocator::kHugeBytes - 1);
  EXPECT(aligned(bytes.data(), Allocator::kAlignment), "a buffer just under kHugeBytes is not 64-byte aligned");
}

void TestHugeShapeValues() {
  const int64_t big = int64_t{1} << 62, max = INT64_MAX, limit = kMaxTensorElements;
  for (DataFormat format : {DataFormat::kNHWC, DataFormat::kNCHW}) {
    const bool nhwc = format == DataFormat::kNHWC;
    ConvAttrs attrs;
    attrs.data_format = format;
    attrs.strides = {1, 1, 1, 1};
    attrs.dilations = {1, 1, 1, 1};
    attrs.padding = Padding::kExplicit;
    const int64_t in[4] = {1, nhwc ? 4 : 2, 4, nhwc ? 2 : 4}, filter[4] = {3, 3, 2, 2};
    const int h = nhwc ? 1 : 2, w = nhwc ? 2 : 3;  // spatial axes in data_format order
    ConvShape s;
    for (int i = 0; i < 8; ++i) {
      for (int64_t v : {big, max}) {
        attrs.explicit_paddings.assign(8, 0);
        attrs.explicit_paddings[i] = v;
        ExpectQuotes(ComputeConvShape(in, filter, attrs, &s), "explicit_paddings", v,
                     "one padding");
      }
    }
    attrs.explicit_paddings = {0, 0, 0, 0, 0, 0, 0, 0};
    attrs.explicit_paddings[2 * h] = attrs.explicit_paddings[2 * h + 1] = big;  // the sum wraps
    ExpectQuotes(ComputeConvShape(in, filter, attrs, &s), "explicit_paddings", big, "two paddings");
    attrs.explicit_paddings[2 * h] = attrs.explicit_paddings[2 * h + 1] = 0;
    for (Padding padding : {Padding::kSame, Padding::kValid}) {
      ConvAttrs a = attrs;
      a.padding = padding;
      a.explicit_paddings.clear();
      for (int axis : {h, w}) {
        a.strides[axis] = max;  // SAME: in + stride - 1 wraps
        ExpectQuotes(ComputeConvShape(in, filter, a, &s), "strides", max, "stride");
        a.strides[axis] = 1;
        a.dilations[axis] = big;  // (k - 1) * dilation wraps
        ExpectQuotes(ComputeConvShape(in, filter, a, &s), "dilations", big, "dilation");
        a.dilations[axis] = 1;
      }
    }
    attrs.padding = Padding::kSame;
    attrs.explicit_paddings.clear();
    for (int i = 0; i < 4; ++i) {
      for (int64_t v : {big, max}) {
        int64_t huge_in[4] = {in[0], in[1], in[2], in[3]}, huge_filter[4] = {3, 3, 2, 2};
        huge_in[i] = v;
        ExpectQuotes(ComputeConvShape(huge_in, filter, attrs, &s), "input dimensions", v,
                     "input dimension");
        huge_in[0] = 0;  // empty, but its other dimensions are still computed with
        if (i != 0) {
          ExpectQuotes(ComputeConvShape(huge_in, filter, attrs, &s), "input dimensions", v,
                       "empty input");
        }
        huge_filter[i] = v;
        ExpectQuotes(ComputeConvShape(in, huge_filter, attrs, &s), "filter dimensions", v,
                     "filter dimension");
        ConvAttrs dilated = attrs;  // (k - 1) * dilation wraps, to 2^62 - 4 for k = 2^62
        dilated.dilations[h] = dilated.dilations[w] = 5;
        dilated.padding = Padding::kValid;
        ExpectQuotes(ComputeConvShape(in, huge_filter, dilated, &s), "filter dimensions", v,
                     "dilated filter dimension");
      }
    }
    // Products past int64 of dimensions each within the limit.
    const int64_t in_limit[4] = {limit, nhwc ? limit : 2, limit, nhwc ? 2 : limit};
    ExpectQuotes(ComputeConvShape(in_limit, filter, attrs, &s), "input has more than", limit,
                 "input elements");
    const int64_t filter_limit[4] = {limit, limit, 2, limit};
    ExpectQuotes(ComputeConvShape(in, filter_limit, attrs, &s), "filter has more than", limit,
                 "filter elements");

    // The limits themselves: a stride of 2^31 - 1 gives one output (SAME), a dilation of 2^31 - 1
    // on a 1-tap filter changes nothing, and on a 3-tap one the error quotes it.
    attrs.strides[h] = limit;
    EXPECT(ComputeConvShape(in, filter, attrs, &s).empty() && s.out_h == 1 && s.out_w == 4,
           "stride limit");
    attrs.strides[h] = 1;
    attrs.dilations[w] = limit;
    const int64_t filter_3x1[4] = {3, 1, 2, 2};
    EXPECT(ComputeConvShape(in, filter_3x1, attrs, &s).empty() && s.out_w == 4, "dilation limit");
    attrs.padding = Padding::kValid;
    ExpectQuotes(ComputeConvShape(in, filter, attrs, &s), "dilated by", limit, "dilated filter");
    attrs.dilations[w] = 1;
    // Padding at the limit: the output is too large, said with its shape.
    attrs.padding = Padding::kExplicit;
    attrs.explicit_paddings.assign(8, 0);
    attrs.explicit_paddings[2 * h] = limit;
    ExpectQuotes(ComputeConvShape(in, filter, attrs, &s), "output", limit + 2, "padding limit");
    attrs.strides[h] = limit;  // ... unless the stride brings it down
    EXPECT(ComputeConvShape(in, filter, attrs, &s).empty() && s.out_h == 2 && s.pad_top == limit,
           "padding and stride limits");
  }
}

void RunAll() {
  TestQuantParams();
  TestLutFiles();
  TestShapeErrors();
  TestHugeShapeValues();
  TestUninitializedVectorAlignment();
  TestLargeKExactSum();
  TestQuantizeCodesVectorized();
  TestDequantizeRowMatchesTerms();
  TestLargeSumsEveryCpuPath();
  TestColumnPathMatchesReference();
  TestColumnGatherFromRowsMatchesReference();
  TestRowPathMatchesReference();
  TestWholeOpExactSums();
  TestFastKernelMatchesReference();
  TestDecomposedKernelMatchesReference();
  TestDecomposedAmxShapes();
  TestPipelineKernelsAgree<float>();
  TestPipelineKernelsAgree<double>();
  TestSubsampledPipeline<float>();
  TestSubsampledPipeline<double>();
}

}  // namespace
}  // namespace tfapprox

int main() {
  // Where the processor has AMX, everything again without it (the direct path's GEMM on VNNI); where it has
  // AVX-512, again as on one without (its AVX2 and portable paths).
  const bool amx = tfapprox::HasAmx();
  if (amx) std::fprintf(stderr, "note: with AMX\n");
  tfapprox::RunAll();
  if (amx) {
    tfapprox::WithoutAmx().store(true);
    std::fprintf(stderr, "note: again without AMX\n");
    tfapprox::RunAll();
  }
  if (tfapprox::HasAvx512F()) {
    tfapprox::WithoutAvx512().store(true);
    std::fprintf(stderr, "note: again without AVX-512\n");
    tfapprox::RunAll();
  }
  if (tfapprox::failures) {
    std::fprintf(stderr, "%d failures\n", tfapprox::failures);
    return 1;
  }
  std::printf("core_test: all passed\n");
  return 0;
}
