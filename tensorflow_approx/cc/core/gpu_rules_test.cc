// The GPU decomposed kernel's host-side rules, held to the H200 measurements they were set from; needs the
// CUDA build (conv_gpu_decomposed.cu), not a GPU. GpuPreferDecomposed must not pick a call that was
// measured slower than the lookups, and must pick the calls that were measured far faster where the rule
// claims them (docs/decomposition.md, "Smaller batches"). Without a GPU no plan is tuned:
// GpuDecomposedPlanFor gives the rules' plan.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(TFAPPROX_HAVE_CUDA)
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"
#include "tensorflow_approx/cc/core/conv_shape.h"

namespace {

using tfapprox::ConvShape;

int failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// A SAME-padded square layer, NHWC unless nchw.
ConvShape Layer(int batch, int hw, int cin, int cout, int k, int stride, bool nchw = false, int groups = 1) {
  tfapprox::ConvAttrs attrs;
  attrs.strides = {1, stride, stride, 1};
  attrs.dilations = {1, 1, 1, 1};
  attrs.padding = tfapprox::Padding::kSame;
  const int64_t in[4] = {batch, hw, hw, cin}, f[4] = {k, k, cin / groups, cout};
  ConvShape s;
  const std::string err = tfapprox::ComputeConvShape(in, f, attrs, &s);
  if (!err.empty()) {
    std::printf("FAIL layer shape: %s\n", err.c_str());
    std::exit(1);
  }
  if (nchw) s.data_format = tfapprox::DataFormat::kNCHW;
  return s;
}

// A measured call: the decomposed kernel's time over the lookups' (H200, float32 NHWC, tuned plans;
// gpu_harness --decomposed-batches --seed 1160 and --decomposed-only --seed 1161).
struct Measured {
  const char* name;
  int batch, hw, cin, cout, k, stride, terms;
  double ratio;
};
constexpr Measured kMeasured[] = {
    // Slower than the lookups: few outputs for a long K, the stem's short K, the 1x1 stride-2 projections.
    {"3x3 56x56 64->64", 1, 56, 64, 64, 3, 1, 16, 1.05},
    {"3x3 28x28 128->128", 1, 28, 128, 128, 3, 1, 16, 1.52},
    {"3x3 14x14 256->256", 4, 14, 256, 256, 3, 1, 16, 1.56},
    {"3x3 14x14 256->256", 1, 14, 256, 256, 3, 1, 8, 1.51},
    {"3x3 7x7 512->512", 16, 7, 512, 512, 3, 1, 16, 1.09},
    {"3x3 7x7 512->512", 4, 7, 512, 512, 3, 1, 8, 1.60},
    {"3x3 7x7 512->512", 4, 7, 512, 512, 3, 1, 16, 3.16},
    {"3x3 7x7 512->512", 1, 7, 512, 512, 3, 1, 8, 1.49},
    {"R20 stem 3->16", 250, 32, 3, 16, 3, 1, 8, 1.09},
    {"R20 stem 3->16", 62, 32, 3, 16, 3, 1, 1, 1.39},
    {"R20 stem 3->16", 15, 32, 3, 16, 3, 1, 4, 1.64},
    {"R20 8x8 64->64", 15, 8, 64, 64, 3, 1, 16, 1.55},
    {"R20 1x1 s2 16->32", 250, 32, 16, 32, 1, 2, 4, 1.16},
    {"R20 1x1 s2 16->32", 1000, 32, 16, 32, 1, 2, 1, 1.03},
    {"R20 1x1 s2 32->64", 250, 16, 32, 64, 1, 2, 16, 1.12},
    // Far faster: must be picked.
    {"3x3 56x56 64->64", 64, 56, 64, 64, 3, 1, 16, 0.28},
    {"3x3 7x7 512->512", 64, 7, 512, 512, 3, 1, 16, 0.38},
    {"1x1 56x56 64->256", 1, 56, 64, 256, 1, 1, 16, 0.49},
    {"R20 16->16", 62, 32, 16, 16, 3, 1, 4, 0.38},
    {"R20 16x16 32->32", 15, 16, 32, 32, 3, 1, 8, 0.17},
    {"R20 8x8 64->64", 62, 8, 64, 64, 3, 1, 4, 0.43},
    {"R20 3x3 s2 16->32", 62, 32, 16, 32, 3, 2, 4, 0.22},
};

// Where the pointwise tiles run (sm_90a; GpuPreferDecomposed's `pointwise`): H200, tuned plans, gpu_harness
// --decomposed-batches --runs 5 --seed 5301 (f7aaca8's build), exact / 4 / 8 / 16 terms at batches 250, 62, 15.
constexpr Measured kMeasuredPointwise[] = {
    {"R20 1x1 s2 32->64", 250, 16, 32, 64, 1, 2, 4, 0.54},  {"R20 1x1 s2 32->64", 250, 16, 32, 64, 1, 2, 8, 0.76},
    {"R20 1x1 s2 32->64", 250, 16, 32, 64, 1, 2, 16, 0.68}, {"R20 1x1 s2 32->64", 62, 16, 32, 64, 1, 2, 4, 0.48},
    {"R20 1x1 s2 32->64", 62, 16, 32, 64, 1, 2, 8, 0.56},   {"R20 1x1 s2 32->64", 62, 16, 32, 64, 1, 2, 16, 0.70},
    {"R20 1x1 s2 32->64", 15, 16, 32, 64, 1, 2, 4, 0.47},   {"R20 1x1 s2 32->64", 15, 16, 32, 64, 1, 2, 8, 0.57},
    {"R20 1x1 s2 32->64", 15, 16, 32, 64, 1, 2, 16, 0.66},  {"R20 1x1 s2 16->32", 250, 32, 16, 32, 1, 2, 8, 1.05},
    {"R20 1x1 s2 16->32", 250, 32, 16, 32, 1, 2, 16, 1.18}, {"R20 1x1 s2 16->32", 62, 32, 16, 32, 1, 2, 16, 1.03},
    {"R20 1x1 s2 16->32", 15, 32, 16, 32, 1, 2, 4, 0.67},   {"1x1 56x56 64->256", 16, 56, 64, 256, 1, 1, 16, 0.27},
    {"1x1 56x56 64->256", 1, 56, 64, 256, 1, 1, 16, 0.42},  {"1x1 56x56 64->256", 1, 56, 64, 256, 1, 1, 4, 0.28},
};

ConvShape Shape(const Measured& m) { return Layer(m.batch, m.hw, m.cin, m.cout, m.k, m.stride); }

// A measured call's pick: never where it was slower than the lookups, always where it took under half
// their time. Returns the pick.
bool HoldToMeasured(const Measured& m, bool pick, const char* where) {
  const std::string row = std::string(m.name) + " batch " + std::to_string(m.batch) + ", " + std::to_string(m.terms) +
                          " terms" + where + " (measured " + std::to_string(m.ratio) + "x the lookups' time)";
  if (m.ratio > 1.0) Check(!pick, "picked though slower: " + row);
  if (m.ratio < 0.5) Check(pick, "not picked though far faster: " + row);
  return pick;
}

}  // namespace

int main() {
  int picks = 0;
  for (const Measured& m : kMeasured) picks += HoldToMeasured(m, tfapprox::GpuPreferDecomposed(Shape(m), m.terms), "");
  // With the pointwise tiles: the measured 1x1 rows held the same way; the 32->64 projection (the rule's
  // smallest call, batch 15) is picked with 2-16 terms there and not without them.
  for (const Measured& m : kMeasuredPointwise) {
    HoldToMeasured(m, tfapprox::GpuPreferDecomposed(Shape(m), m.terms, /*pointwise=*/true), " on the pointwise tiles");
  }
  const ConvShape projection = Layer(15, 16, 32, 64, 1, 2);
  for (int terms : {2, 5, 16}) {
    Check(tfapprox::GpuPreferDecomposed(projection, terms, true), "32->64 projection not picked with the pointwise tiles");
    Check(!tfapprox::GpuPreferDecomposed(projection, terms, false), "32->64 projection picked without the pointwise tiles");
  }
  Check(!tfapprox::GpuPreferDecomposed(Layer(14, 16, 32, 64, 1, 2), 4, true), "a 32->64 projection below batch 15 picked");
  Check(!tfapprox::GpuPreferDecomposed(projection, 1, true), "the exact table picked for a pointwise tile");
  // ResNet-20 at batch 128 with a 5-term table (mul8u_125K): every 3x3 layer but the stem takes the kernel.
  struct R20Layer {
    int hw, cin, cout, stride;
  };
  for (const R20Layer& l : {R20Layer{32, 16, 16, 1}, R20Layer{32, 16, 32, 2}, R20Layer{16, 32, 32, 1},
                            R20Layer{16, 32, 64, 2}, R20Layer{8, 64, 64, 1}}) {
    Check(tfapprox::GpuPreferDecomposed(Layer(128, l.hw, l.cin, l.cout, 3, l.stride), 5),
          "ResNet-20 batch 128, 5 terms: " + std::to_string(l.cin) + "->" + std::to_string(l.cout) + " not picked");
  }
  // Outside what was measured: never.
  Check(!tfapprox::GpuPreferDecomposed(Layer(64, 56, 64, 64, 3, 1), 17), "17 terms picked");
  Check(!tfapprox::GpuPreferDecomposed(Layer(64, 56, 64, 64, 3, 1, /*nchw=*/true), 1), "NCHW picked");
  Check(!tfapprox::GpuPreferDecomposed(Layer(64, 56, 64, 64, 3, 1, false, /*groups=*/2), 1), "groups picked");
  // The epilogues' 32-bit sums (NarrowSumsFit): a net sum of `taps` entries of 0-65535 (less 32768 each for a
  // signed table) fits an int32 exactly up to the bound, and the bound is the largest that does; every
  // benchmark layer (at most 3x3 x 512 products an output) is under it.
  const int64_t max_taps = tfapprox::kGpuNarrowSumsMaxTaps;
  Check(tfapprox::NarrowSumsFit(max_taps) && !tfapprox::NarrowSumsFit(max_taps + 1), "NarrowSumsFit's bound");
  Check(65535 * max_taps <= INT32_MAX && 65535 * (max_taps + 1) > INT32_MAX,
        "NarrowSumsFit's bound is not the largest taps whose sums fit an int32");
  Check(tfapprox::NarrowSumsFit(Layer(64, 7, 512, 512, 3, 1).taps()), "7x7 512->512 without 32-bit sums");
  // Every tile has its own name (the trace and the harness's tables name tiles by it).
  {
    std::vector<std::string> names;
    for (int t = 0; t < static_cast<int>(tfapprox::GpuDecomposedTile::kCount); ++t) {
      const std::string name = tfapprox::GpuDecomposedTileName(static_cast<tfapprox::GpuDecomposedTile>(t));
      Check(name != "?", "tile " + std::to_string(t) + " has no name");
      for (const std::string& other : names) Check(name != other, "two tiles named " + name);
      names.push_back(name);
    }
  }
  // No GPU here, so nothing was tuned: the rules' plan.
  const tfapprox::GpuDecomposedPlan plan =
      tfapprox::GpuDecomposedPlanFor(Layer(64, 56, 64, 64, 3, 1), 5, tfapprox::GpuDtype::kFloat);
  Check(!plan.tuned, "a plan reported tuned without a tuning call");
  // Only a tuned plan runs the halo GEMM beside the pre-pass (GpuDecomposedOptions::halo_beside).
  Check(!plan.beside, "the rules' plan runs the halo GEMM beside the pre-pass");
  Check(!plan.streaming, "the rules' plan takes the streaming hints (GpuDecomposedOptions::halo_streaming)");
  // A call's options are checked before any device work: an out-of-range halo_beside or halo_streaming is
  // refused by name. (Host buffers stand in for the device pointers; the call returns before reading them.)
  for (const char* field : {"halo_beside", "halo_streaming"}) {
    const ConvShape s = Layer(1, 8, 16, 16, 3, 1);
    std::vector<int8_t> uv(256, 0);
    std::vector<int32_t> free_terms(256, 0);
    tfapprox::GpuDecomposition d;
    d.terms = 1;
    d.u = d.v = uv.data();
    d.alpha = d.beta = free_terms.data();
    const size_t bytes = tfapprox::GpuDecomposedWorkspaceBytes(s, 1);
    std::vector<uint64_t> workspace(bytes / 8 + 2);  // (16-byte aligned below)
    void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace.data()) + 15) / 16 * 16);
    std::vector<float> data(static_cast<size_t>(s.input_elements() + s.filter_elements() + s.output_elements()));
    tfapprox::GpuQuant quant;
    tfapprox::GpuDecomposedOptions options;
    const bool beside = std::string(field) == "halo_beside";
    (beside ? options.halo_beside : options.halo_streaming) = static_cast<tfapprox::GpuBeside>(7);
    const std::string error = tfapprox::ApproxConvGpuDecomposed<float>(
        s, data.data(), data.data() + s.input_elements(), &quant, d,
        data.data() + s.input_elements() + s.filter_elements(), nullptr, aligned, bytes, options);
    Check(error.find(std::string("options.") + field) != std::string::npos,
          std::string("an out-of-range options.") + field + " was not refused: " + error);
  }
  std::printf("gpu_rules_test: %zu measured calls, %d picked; %d failures\n", sizeof(kMeasured) / sizeof(kMeasured[0]),
              picks, failures);
  return failures == 0 ? 0 : 1;
}

#else
int main() {
  std::printf("gpu_rules_test: skipped, the op library was built without CUDA (./configure.sh found no nvcc)\n");
  return 0;
}
#endif
