// The fast CPU kernel.
//
// Why this shape: a lookup costs a load whose address depends on two codes, so the rate is set by how
// many loads each lookup needs. A block of kPixels output pixels x kChannels output channels shares its
// loads: per tap, kPixels row offsets (activation code << 8) and kChannels weight codes feed
// kPixels * kChannels lookups whose address is one add away. The patch of each pixel is gathered once
// into row offsets (padded taps read the zero code), grouped so that each group's taps are contiguous,
// and reused by every output channel of the group. Accumulators are 64-bit registers: as cheap as 32-bit
// ones on x86-64 and free of overflow for any number of taps.
#include <algorithm>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"

namespace tfapprox {
namespace {

constexpr int kPixels = 4;
constexpr int kChannels = 2;

// Gathers the patch of output pixel p as row offsets, laid out [group][kh][kw][ci], and the
// per-group sums of its codes.
void GatherPatch(const QuantizedConv& conv, int64_t p, uint16_t* rows, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t ow = p % s.out_w;
  const int64_t oh = (p / s.out_w) % s.out_h;
  const int64_t n = p / (s.out_w * s.out_h);
  const int64_t groups = s.groups();
  const uint16_t zero_row = static_cast<uint16_t>(conv.input_zero_code << 8);
  for (int64_t g = 0; g < groups; ++g) {
    uint16_t* out = rows + g * s.taps();
    int64_t sum = 0;
    for (int64_t kh = 0; kh < s.filter_h; ++kh) {
      const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
      for (int64_t kw = 0; kw < s.filter_w; ++kw) {
        const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dilation_w;
        if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) {
          const uint8_t* in =
              conv.input + ((n * s.in_h + ih) * s.in_w + iw) * s.in_depth + g * s.filter_depth;
          for (int64_t ci = 0; ci < s.filter_depth; ++ci) {
            out[ci] = static_cast<uint16_t>(in[ci] << 8);
            sum += in[ci];
          }
        } else {
          std::fill(out, out + s.filter_depth, zero_row);
          sum += int64_t{conv.input_zero_code} * s.filter_depth;
        }
        out += s.filter_depth;
      }
    }
    act_sum[g] = sum;
  }
}

// acc[i][j] = sum_t lut[rows[i][t] + weights[j][t]] for P pixels and C channels.
template <int P, int C>
inline void LookupBlock(const uint16_t* const* rows, const uint8_t* const* weights, int64_t taps,
                        const uint16_t* lut, int64_t (&acc)[P][C]) {
  int64_t sum[P][C] = {};
  for (int64_t t = 0; t < taps; ++t) {
    uint32_t w[C];
    for (int j = 0; j < C; ++j) w[j] = weights[j][t];
    for (int i = 0; i < P; ++i) {
      const uint16_t* row = lut + rows[i][t];
      for (int j = 0; j < C; ++j) sum[i][j] += row[w[j]];
    }
  }
  for (int i = 0; i < P; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = sum[i][j];
}

}  // namespace

void CpuConvAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixel_end,
                       const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t pixels = pixel_end - pixel_begin;
  if (pixels <= 0) return;
  const int64_t taps = s.taps();
  const int64_t groups = s.groups();
  const int64_t out_per_group = s.out_depth_per_group();
  const int64_t blocks = (pixels + kPixels - 1) / kPixels;
  const int64_t cost_per_block = kPixels * taps * s.out_depth + kPixels * taps * groups;

  parallel_for(blocks, cost_per_block, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> patch(static_cast<size_t>(kPixels * groups * taps));
    std::vector<int64_t> patch_sums(static_cast<size_t>(kPixels * groups));
    for (int64_t b = begin; b < end; ++b) {
      int64_t pixel[kPixels];
      int valid = 0;
      for (int i = 0; i < kPixels; ++i) {
        const int64_t p = b * kPixels + i;
        // A short last block repeats its last pixel so the lookup loop keeps its full width.
        pixel[i] = p < pixels ? p : pixels - 1;
        valid += p < pixels;
        if (i == 0 || pixel[i] != pixel[i - 1]) {
          GatherPatch(conv, pixel_begin + pixel[i], &patch[i * groups * taps],
                      &patch_sums[i * groups]);
        } else {
          std::copy_n(&patch[(i - 1) * groups * taps], groups * taps, &patch[i * groups * taps]);
        }
      }
      for (int i = 0; i < valid; ++i) {
        std::copy_n(&patch_sums[i * groups], groups, act_sum + pixel[i] * groups);
      }
      for (int64_t g = 0; g < groups; ++g) {
        const uint16_t* rows[kPixels];
        for (int i = 0; i < kPixels; ++i) rows[i] = &patch[(i * groups + g) * taps];
        int64_t co = g * out_per_group;
        const int64_t co_end = co + out_per_group;
        for (; co + kChannels <= co_end; co += kChannels) {
          const uint8_t* weights[kChannels];
          for (int j = 0; j < kChannels; ++j) weights[j] = conv.filter + (co + j) * taps;
          int64_t sums[kPixels][kChannels];
          LookupBlock<kPixels, kChannels>(rows, weights, taps, conv.lut, sums);
          for (int i = 0; i < valid; ++i)
            for (int j = 0; j < kChannels; ++j) acc[pixel[i] * s.out_depth + co + j] = sums[i][j];
        }
        for (; co < co_end; ++co) {
          const uint8_t* weights[1] = {conv.filter + co * taps};
          int64_t sums[kPixels][1];
          LookupBlock<kPixels, 1>(rows, weights, taps, conv.lut, sums);
          for (int i = 0; i < valid; ++i) acc[pixel[i] * s.out_depth + co] = sums[i][0];
        }
      }
    }
  });
}

}  // namespace tfapprox
