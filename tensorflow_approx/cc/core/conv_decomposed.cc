// The decomposed CPU kernel: a table written as c0 + alpha[a] + beta[w] + sum_r u[r][a] * v[r][w] with
// int8 u, v (tensorflow_approx/multipliers/decompose.py finds such forms) turns the lookups into one
// integer GEMM whose reduction axis is the R terms of every tap: A[p][r * K + k] = u[r][a_pk] (the
// activation codes of pixel p's patch, gathered once and translated through each term's u with byte
// permutes), B[r * K + k][co] = v[r][w_k,co]. AVX-512 VNNI's
// vpdpbusd multiplies unsigned by signed bytes, four products per 32-bit lane: A is stored as u + 128
// (unsigned), so the GEMM gives sum (u + 128) * v and 128 * sum v (a per-channel constant) is taken off
// again. The free terms are sums the kernel adds: alpha over each pixel's taps (like act_sum), beta
// over each channel's weights, c0 times the taps.
//
// Exact: every product is below 2^15 in magnitude and a 32-bit lane gains at most 4 * 255 * 128 per
// step, so 32-bit sums are exact over kChunk = 65536 reduction entries; longer reductions add chunks
// into 64-bit sums.
//
// Without AVX-512 (a Zen 3, say), AVX2 runs the direct path (below) with the same integers widened to
// int16: vpmaddwd multiplies pairs and adds them into 32-bit lanes (two products a lane a step where
// vpdpbusd adds four, so the same bound holds). AVX2 has no exact byte product (vpmaddubsw saturates at
// 2^15, and (u + 128) v reaches 255 * 128 twice a pair), hence the int16 image and B.
//
// This file: the packing, the image, the plan, the paths and the portable loops; the VBMI, VNNI and AMX
// kernels are conv_decomposed_avx512.cc's, AVX2's conv_decomposed_avx2.cc's (conv_decomposed_internal.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "tensorflow_approx/cc/core/conv_decomposed_internal.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"
#include "tensorflow_approx/cc/core/uninitialized_vector.h"

namespace tfapprox {
using namespace decomposed_internal;  // NOLINT: this file's own internals, shared with the ISA files
namespace {

// The least batch whose direct path builds its images one at a time beside their GEMM (DirectImagesAccumulate):
// its parallel parts are whole images, so fewer images would leave threads idle.
constexpr int64_t kImagesPerRegion = 16;

// The instruction set this processor runs the decomposed kernels on (DecomposedIsa).
DecomposedIsa BestIsa(bool portable) {
  if (portable) return DecomposedIsa::kPortable;
  if (HasVnni()) return DecomposedIsa::kVnni;
  return HasAvx2() ? DecomposedIsa::kAvx2 : DecomposedIsa::kPortable;
}

// What a convolution needs of the filter, per group: B packed for the micro-kernel in panels of kPanel
// channels (the last one narrower: co is padded to kChannelBlock, zeros beyond), each panel
// [step][width][4] with a step of four reduction entries, so the micro-tile reads one contiguous run
// (a step's 64 channels are 4 cache lines, and the next step's follow) rather than 64 bytes out of
// every channels * 4. Panel c0 / kPanel starts c0 * reduction bytes into the group. And per channel the
// constant its sums take: -128 * (sum of B, the + 128 correction) + (sum of beta over its weights) +
// taps * c0.
struct PackedFilter {
  // R * K (tap-major: R * spatial taps * DirectDepth), padded to a multiple of 4 (zeros in B); AMX's: each
  // run padded to whole tiles (PackFilter's `amx`)
  int64_t reduction = 0;
  int64_t channels = 0;   // out_depth_per_group, padded to a multiple of kChannelBlock
  UninitializedVector<int8_t> b;  // [groups][panels][reduction / 4][width][4]
  std::unique_ptr<int16_t[]> b16;  // AVX2's direct path: b's entries widened, the same layout
  std::vector<int64_t> offset;  // [out_depth]

  // Channels in the panel starting at channel c0 (a multiple of kPanel).
  int64_t PanelWidth(int64_t c0) const { return std::min<int64_t>(kPanel, channels - c0); }
};

// A term's bytes per pixel in the direct path's image (DirectImage) and per spatial tap in its B: the
// input depth rounded up to whole 4-byte steps (B zero past the depth), so that each tap's run starts on a
// step (a 3-channel stem takes 4).
int64_t DirectDepth(const ConvShape& s) { return (s.filter_depth + 3) / 4 * 4; }

// The direct path's reduction as the micro-kernels read it: `runs` runs of run_steps steps (four entries),
// each contiguous in the image and in B. With dilation_w 1 a filter row's taps are adjacent pixels of the
// image and consecutive in B (tap-major), so one run per filter row (ResNet-20's stem: 3 runs of 3 steps,
// not 9 of one, whose row pointers were most of its micro-kernel's work); else one per tap.
struct DirectRunCount {
  int64_t runs = 0, run_steps = 0;
};
DirectRunCount DirectRuns(const ConvShape& s, int terms) {
  const int64_t taps_per_run = s.dilation_w == 1 ? s.filter_w : 1;
  return {s.filter_h * s.filter_w / taps_per_run, taps_per_run * terms * DirectDepth(s) / 4};
}

// `fast`: pack with PackTermVbmi where it applies. `tap_major`: the reduction in the direct path's order
// (DirectImage), spatial tap, then term, then channel: entry (t * terms + r) * depth + ci with depth =
// DirectDepth (zeros for ci >= cg), where the gather path's is term-major, r * K + k (k = t * cg + ci).
// With one term and depth = cg both are k.
// `amx` (tap-major only): AMX's layout, each of DirectRuns' runs followed by zero steps up to whole tiles of
// kAmxRows steps, so that a tile of A (64 entries of each of 16 pixels) never spans two runs and can be
// loaded straight from the image, where a pixel's runs do not follow one another (AmxPanel). The tiles of A
// then read up to 63 bytes past a run (the image's slack, MakeDirectImage), which meet these zeros. (Packed
// in place: a second pass that copied the packed runs into the padded layout took 16 ms of 3x3 512->512's
// 52 ms with 8 terms on a Sapphire Rapids, a fresh 19 MB buffer's page faults included.)
PackedFilter PackFilter(const QuantizedConv& conv, const TableDecomposition& d, const ParallelFor& parallel_for,
                        bool fast, bool tap_major, bool amx) {
  const ConvShape& s = conv.shape;
  const int64_t taps = s.taps(), groups = s.groups(), per_group = s.out_depth_per_group();
  const int64_t cg = s.filter_depth, depth = tap_major ? DirectDepth(s) : cg;
  PackedFilter f;
  // Step e / 4 of the reduction lies at step step_at(e / 4) of B: past each run's padding with AMX.
  const DirectRunCount runs = amx ? DirectRuns(s, d.terms) : DirectRunCount{1, 0};
  const int64_t run_tiles = amx ? (runs.run_steps + kAmxRows - 1) / kAmxRows : 0;
  const int64_t run_pad = amx ? run_tiles * kAmxRows - runs.run_steps : 0;  // zero steps after each run
  const auto step_at = [&](int64_t step) { return amx ? step + step / runs.run_steps * run_pad : step; };
  f.reduction = amx ? runs.runs * run_tiles * kAmxBytes : (taps / cg * depth * d.terms + 3) / 4 * 4;
  f.channels = (per_group + kChannelBlock - 1) / kChannelBlock * kChannelBlock;
  // Not zeroed here: the blocks below write every byte, padding included (a serial memset of B was a
  // few ms on the large layers).
  f.b.resize(static_cast<size_t>(groups * f.reduction * f.channels));
  f.offset.assign(static_cast<size_t>(s.out_depth), 0);
  // sum over the terms of v[r][w], for the + 128 correction.
  int64_t v_sum[256] = {};
  for (int r = 0; r < d.terms; ++r)
    for (int w = 0; w < 256; ++w) v_sum[w] += d.v[r * 256 + w];
  // In parallel over blocks of kChannelBlock channels of a group, each owning its channels' entries
  // (64 contiguous bytes per step) and offsets. Serial, packing was most of a 3x3 512->512 layer's time.
  // Each block fills its bytes in memory order, a step's 16 channels together: walking one channel at a
  // time wrote one byte per cache line, and packing took longer than the GEMM on 512-channel layers.
  const int64_t entries = taps / cg * depth * d.terms, blocks_per_group = f.channels / kChannelBlock;
  parallel_for(groups * blocks_per_group, kChannelBlock * taps * d.terms * 4, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t g = block / blocks_per_group, j0 = block % blocks_per_group * kChannelBlock;
      const int64_t panel0 = j0 / kPanel * kPanel, width = f.PanelWidth(panel0);
      const int64_t count = std::min<int64_t>(kChannelBlock, per_group - j0);  // real channels
      int8_t* lanes = f.b.data() + g * f.reduction * f.channels + panel0 * f.reduction + (j0 - panel0) * 4;
      const uint8_t* rows = conv.filter + (g * per_group + j0) * taps;
      // A whole block, taps a multiple of 4 (each step within one term) and 16 * taps an int32 offset.
      const bool vector = fast && count == kChannelBlock && (tap_major ? cg : taps) % 4 == 0 && taps < (int64_t{1} << 26);
      // Zero steps first where the loop below leaves some: the entries past each tap's cg, AMX's padding.
      if (depth != cg) {
        for (int64_t e = 0; e < f.reduction; e += 4) std::memset(lanes + (e / 4) * width * 4, 0, kChannelBlock * 4);
      } else if (run_pad > 0) {
        for (int64_t j = 0; j < runs.runs; ++j)
          for (int64_t st = j * run_tiles * kAmxRows + runs.run_steps; st < (j + 1) * run_tiles * kAmxRows; ++st)
            std::memset(lanes + st * width * 4, 0, kChannelBlock * 4);
      }
      for (int r = 0; r < d.terms; ++r) {
        const int8_t* v = d.v + r * 256;
        if (vector && !tap_major) {
          PackTermVbmi(rows, taps, taps, v, width, lanes + r * taps / 4 * width * 4);
          continue;
        }
        if (vector) {  // term r's cg entries of each spatial tap t (within one run)
          for (int64_t t = 0; t < taps / cg; ++t) {
            PackTermVbmi(rows + t * cg, taps, cg, v, width, lanes + step_at((t * d.terms + r) * cg / 4) * width * 4);
          }
          continue;
        }
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t e = tap_major ? (k / cg * d.terms + r) * depth + k % cg : r * taps + k;
          int8_t* out = lanes + step_at(e / 4) * width * 4 + e % 4;
          if (count == kChannelBlock) {
            for (int64_t j = 0; j < kChannelBlock; ++j) out[j * 4] = v[rows[j * taps + k]];
          } else {
            for (int64_t j = 0; j < kChannelBlock; ++j) out[j * 4] = j < count ? v[rows[j * taps + k]] : 0;
          }
        }
      }
      if (!amx) {  // the entries up to a multiple of 4 (AMX's padding is zeroed above)
        for (int64_t e = entries; e < f.reduction; ++e)
          for (int64_t j = 0; j < kChannelBlock; ++j) lanes[(e / 4) * width * 4 + e % 4 + j * 4] = 0;
      }
      for (int64_t j = 0; j < count; ++j) {
        int64_t b_sum = 0, beta_sum = 0;
        for (int64_t k = 0; k < taps; ++k) {
          const uint8_t w = rows[j * taps + k];
          b_sum += v_sum[w];
          beta_sum += d.beta[w];
        }
        f.offset[g * per_group + j0 + j] = -128 * b_sum + beta_sum + taps * d.c0;
      }
    }
  });
  return f;
}

// One patch's K codes from its taps (tap t's filter_depth codes at taps[t], null for a padded tap: the
// zero code).
void CopyTapsPortable(const uint8_t* const* taps, int64_t count, int64_t depth, uint8_t zero_code, uint8_t* codes) {
  for (int64_t t = 0; t < count; ++t, codes += depth) {
    if (taps[t] != nullptr) {
      std::memcpy(codes, taps[t], static_cast<size_t>(depth));
    } else {
      std::memset(codes, zero_code, static_cast<size_t>(depth));
    }
  }
}

// The codes of `height` rows of a tile in group g (codes: [height][K]): pixel p + i's patch in row i
// for i < count, the last pixel's again in the rows after. The pixels' coordinates advance from p's
// rather than being divided out of each pixel's index (the three 64-bit divisions a pixel were the
// gather's hottest instructions in perf on a 32-channel layer). tap_scratch holds filter_h * filter_w
// pointers.
void GatherTile(const QuantizedConv& conv, int64_t p, int64_t count, int64_t height, int64_t g, CopyTaps copy,
                const uint8_t** tap_scratch, uint8_t* codes) {
  const ConvShape& s = conv.shape;
  const int64_t taps = s.taps();
  int64_t ow = p % s.out_w, oh = (p / s.out_w) % s.out_h, n = p / (s.out_w * s.out_h);
  for (int64_t i = 0; i < height; ++i) {
    if (i >= count) {
      std::memcpy(codes + i * taps, codes + (count - 1) * taps, static_cast<size_t>(taps));
      continue;
    }
    int64_t t = 0;
    WalkPatch(conv, n, oh, ow, g, [&](const uint8_t* in) { tap_scratch[t++] = in; });
    copy(tap_scratch, t, s.filter_depth, conv.input_zero_code, codes + i * taps);
    if (++ow == s.out_w) {
      ow = 0;
      if (++oh == s.out_h) oh = 0, ++n;
    }
  }
}

// The sums over the K codes of each of n pixels (codes: [n][K]) of the codes and of alpha.
void SumsPortable(const uint8_t* codes, int64_t n, int64_t taps, const int32_t* alpha, const AlphaPlanes&,
                  int64_t* code_sum, int64_t* alpha_sum) {
  for (int64_t i = 0; i < n; ++i, codes += taps) {
    int64_t sum = 0, alphas = 0;
    for (int64_t k = 0; k < taps; ++k) {
      sum += codes[k];
      alphas += alpha[codes[k]];
    }
    code_sum[i] = sum;
    alpha_sum[i] = alphas;
  }
}

// A's rows from the codes of n pixels (codes: [n][K], rows: [n][reduction]): row[r * term_stride + k] =
// u[r][codes[k]] + 128 (u_plus holds u + 128), padded to `reduction` with 128 (u = 0: adds nothing).
// term_stride is K, or more where B has zero entries between the terms (DirectDepth); those bytes are
// left as they are (they meet zeros).
void TranslatePortable(const uint8_t* codes, int64_t n, int64_t taps, const uint8_t* u_plus, int terms,
                       int64_t term_stride, int64_t reduction, uint8_t* rows) {
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* row = rows + i * reduction;
    for (int r = 0; r < terms; ++r)
      for (int64_t k = 0; k < taps; ++k) row[r * term_stride + k] = u_plus[r * 256 + codes[i * taps + k]];
    std::fill(row + (terms - 1) * term_stride + taps, row + reduction, uint8_t{128});
  }
}

template <int NV>
void MicroKernelPortable(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                         int64_t segment_steps, const int8_t* b, int64_t width, bool first, Sums& sums) {
  for (int i = 0; i < kPixelBlock; ++i) {
    for (int c = 0; c < NV * kChannelBlock; ++c) {
      int64_t sum = 0;
      const int8_t* bp = b;
      for (int64_t j = 0; j < segments; ++j) {
        const uint8_t* ap = rows[i] + offsets[j];
        for (int64_t step = 0; step < segment_steps; ++step, bp += width * 4, ap += 4) {
          for (int q = 0; q < 4; ++q) sum += static_cast<int64_t>(ap[q]) * bp[c * 4 + q];
        }
      }
      sums[i][c] = (first ? 0 : sums[i][c]) + sum;
    }
  }
}

// The portable micro-kernels by the vectors of channels they take (index NV - 1), as kVnniKernels.
constexpr MicroKernel kPortableKernels[kMaxVectors] = {MicroKernelPortable<1>, MicroKernelPortable<2>,
                                                       MicroKernelPortable<3>, MicroKernelPortable<4>};

// out[c] = sums[c] + alpha_sum + offset[c] for c < n: one pixel's sums in a panel, into acc.
void WriteSumsPortable(const int64_t* sums, int64_t alpha_sum, const int64_t* offset, int64_t n, int64_t* out) {
  for (int64_t c = 0; c < n; ++c) out[c] = sums[c] + alpha_sum + offset[c];
}

constexpr int64_t kNoOffset = 0;  // the gather path's one run per row starts at the row

// The direct path (ungrouped convolutions, a reduction within one exact chunk, VNNI):
// instead of gathering and translating every output pixel's patch (K codes, each input pixel's codes
// copied and translated once per spatial tap: on ResNet-20's 16->16 layer perf had the gather and the
// translation at 40% of the op, the GEMM at 18%), the input is translated once into a padded image of
// A's bytes, u[r][code] + 128 per pixel, term and channel ([batch][ph][pw][terms * depth], depth =
// DirectDepth; padding pixels those of the zero code), with each pixel's code and alpha sums beside it;
// the micro-kernel then reads a block's rows tap by tap straight from the image (MicroKernelVnni's runs),
// and a pixel's patch sums are its taps' sums added (a run of pixels at a time). B's reduction is
// tap-major to match (PackFilter). Built by PrepareDecomposed for the input conv.input points to then
// (DecomposedConvAccumulate builds another for a call whose conv.input is another buffer), or, with its
// whole_images, in each call one input image at a time (DirectImagesAccumulate).
// BuildDirectImage writes every pixel's sums and every byte but the pads past cg in a translated pixel's
// terms (DirectDepth), which B's zeros multiply (PackFilter).
struct DirectImage {
  int64_t ph = 0, pw = 0;           // padded rows and columns (the padding's top and left: pad_top, pad_left)
  int64_t entry_bytes = 1;          // 1: u + 128 as bytes (VNNI); 2: as int16 (AVX2, vpmaddwd's operands)
  int64_t pixel_bytes = 0;          // terms * DirectDepth * entry_bytes
  // The micro-kernel's steps (four entries) in one pixel's bytes.
  int64_t PixelSteps() const { return pixel_bytes / entry_bytes / 4; }
  UninitializedVector<uint8_t> bytes;       // [batch][ph][pw][pixel_bytes]
  UninitializedVector<int64_t> code_sums;   // [batch][ph][pw]
  UninitializedVector<int64_t> alpha_sums;  // [batch][ph][pw]
  std::vector<int64_t> tap_pixels;  // per spatial tap (kh, kw): its pixel's offset from (kh, kw) = (0, 0)
  std::vector<int64_t> tap_bytes;   // the same in bytes
  std::vector<uint8_t> zero_pixel;  // a padding pixel's bytes (the zero code's) and sums
  // AVX2 with four or more terms: u + 128 by code, [(terms + 7) / 8][256][8] (terms past the count 0), so
  // that one load gives a code's entries of eight terms (TranslateWideAvx2).
  std::vector<uint8_t> u_by_code;
  // AVX2, one term whose u + 128 is the code (the exact table's) and DirectDepth = cg: a row's entries are
  // its codes widened (TranslateWideAvx2's `widen`).
  bool widened_codes = false;
  int64_t zero_code_sum = 0, zero_alpha_sum = 0;
};

bool DirectApplies(const ConvShape& s, int terms, DecomposedIsa isa) {
  return isa != DecomposedIsa::kPortable && s.groups() == 1 && s.filter_h * s.filter_w * terms * DirectDepth(s) <= kChunk;
}

// Whether the direct path's GEMM runs on AMX (AmxPanel) rather than VNNI: from 4 terms on 128+ taps, 16 on
// fewer, at strides 1 along the width (a block of AmxPanel's rows: consecutive image pixels) or at strides of
// 2-4 where output rows are whole blocks (16 pixels, 32, ...: a block's rows are one output row's pixels,
// stride_w pixels apart; ResNet-20's 3x3 s2 16->32, VNNI's time over AMX's 1.15 with 8 terms, 1.00-1.02 with
// 4, where a staging copy of the rows had lost, below; the stride-1 layers as before). Measured on 2 cores
// of a Sapphire Rapids (a driver outside the repository, ApproxConvCpu with each, medians of 7), VNNI's time
// over AMX's by terms 1 / 4 / 8 / 16, N = 8 for the big layers, 64 for ResNet-20's: 3x3 56x56 64->64 1.03 /
// 1.27 / 1.59 / 1.80, 28x28 128->128 1.12 / 1.24 / 1.26 / 1.22, 14x14 256->256 1.07 / 1.15 / 1.27 / 0.98,
// 7x7 512->512 1.05 / 1.00 / 1.28 / -, 3x3 32x32 16->16 0.83 / 1.33 / 1.73 / 1.93, 16x16 32->32 0.92 / 1.23 /
// 1.40 / 1.43, 8x8 64->64 0.95 / 1.11 / 1.09 / 1.39; fewer taps: 1x1 56x56 64->256 0.86 / 0.87 / 1.11 /
// 1.61, ResNet-20's 1x1 16->32 (strides 1 over the pixels it reads) 0.78 / 0.83 / 0.84 / 1.42, its 3->16
// stem 0.69 / 0.85 / 0.90 / 1.31; at stride 2 (A's rows copied to a staging buffer first, 3x3 s2 16->32)
// 0.71 / 0.85 / 0.93 / 0.90. (With one term the GEMM is a small part of the call; the sums' round trip
// through memory costs more than VNNI saves.) VNNI at 16 terms: the lookups' time, as PreferDecomposed
// keeps them there.
bool UsesAmx(const ConvShape& s, int terms) {
  const bool rows_fit = s.stride_w == 1 || (s.stride_w * kAmxRows <= kAmxMaxRows && s.out_w % kAmxRows == 0);
  return HasAmx() && DirectApplies(s, terms, DecomposedIsa::kVnni) && rows_fit && terms >= (s.taps() >= 128 ? 4 : 16);
}

// out[c] = sum of rows[j][c] over j < count, for c < n.
void AddRowsPortable(const int64_t* const* rows, int64_t count, int64_t n, int64_t* out) {
  for (int64_t c = 0; c < n; ++c) {
    int64_t sum = rows[0][c];
    for (int64_t j = 1; j < count; ++j) sum += rows[j][c];
    out[c] = sum;
  }
}

// The padded image's geometry and buffers for conv.input's shape, its rows not yet filled (FillDirectImage).
std::unique_ptr<DirectImage> MakeDirectImage(const QuantizedConv& conv, int terms, const uint8_t* u_plus,
                                             const int32_t* alpha, DecomposedIsa isa) {
  const ConvShape& s = conv.shape;
  const int64_t cg = s.filter_depth, depth = DirectDepth(s);
  auto image = std::make_unique<DirectImage>();
  DirectImage& m = *image;
  m.entry_bytes = isa == DecomposedIsa::kAvx2 ? 2 : 1;
  m.pixel_bytes = terms * depth * m.entry_bytes;
  // The farthest row and column a tap reaches (from the padding's top left), and the input's.
  const int64_t rows = (s.out_h - 1) * s.stride_h + (s.filter_h - 1) * s.dilation_h + 1;
  const int64_t cols = (s.out_w - 1) * s.stride_w + (s.filter_w - 1) * s.dilation_w + 1;
  m.ph = std::max(rows, s.pad_top + s.in_h);
  m.pw = std::max(cols, s.pad_left + s.in_w);
  const int64_t pixels = s.batch * m.ph * m.pw;
  // (Slack for AMX: AmxPanel's tiles of A read up to kAmxMaxRows pixels past a tile's last one and 63 bytes
  // past a run: bytes that meet B's zeros or sums that are dropped.)
  m.bytes.resize(static_cast<size_t>(pixels * m.pixel_bytes + kAmxMaxRows * m.pixel_bytes + kAmxBytes));
  m.code_sums.resize(static_cast<size_t>(pixels));
  m.alpha_sums.resize(static_cast<size_t>(pixels));
  for (int64_t kh = 0; kh < s.filter_h; ++kh) {
    for (int64_t kw = 0; kw < s.filter_w; ++kw) {
      m.tap_pixels.push_back(kh * s.dilation_h * m.pw + kw * s.dilation_w);
      m.tap_bytes.push_back(m.tap_pixels.back() * m.pixel_bytes);
    }
  }
  // A padding pixel: the zero code's bytes and sums.
  m.zero_pixel.assign(static_cast<size_t>(m.pixel_bytes), 0);
  for (int r = 0; r < terms; ++r) {
    for (int64_t c = 0; c < cg; ++c) {
      const uint8_t entry = u_plus[r * 256 + conv.input_zero_code];
      if (m.entry_bytes == 1) {
        m.zero_pixel[r * depth + c] = entry;
      } else {
        const uint16_t wide = entry;
        std::memcpy(&m.zero_pixel[(r * depth + c) * 2], &wide, 2);
      }
    }
  }
  if (m.entry_bytes == 2 && terms == 1 && depth == cg) {
    m.widened_codes = true;
    for (int c = 0; c < 256; ++c) m.widened_codes = m.widened_codes && u_plus[c] == c;
  }
  if (m.entry_bytes == 2 && terms >= kWideTranslateTerms) {
    m.u_by_code.assign(static_cast<size_t>((terms + 7) / 8 * 256 * 8), 0);
    for (int r = 0; r < terms; ++r)
      for (int c = 0; c < 256; ++c) m.u_by_code[((r / 8) * 256 + c) * 8 + r % 8] = u_plus[r * 256 + c];
  }
  m.zero_code_sum = cg * conv.input_zero_code;
  m.zero_alpha_sum = cg * int64_t{alpha[conv.input_zero_code]};
  return image;
}

// Rows [begin, end) of the image (row n * ph + r: padded row r of image n) from conv.input's codes, or
// from those `input_rows` gives (VNNI: NarrowPixelsVbmi or TranslateVbmi and SumsVbmi; AVX2:
// TranslateWideAvx2 and SumsAvx2).
void FillDirectImage(const QuantizedConv& conv, int terms, const uint8_t* u_plus, const int32_t* alpha,
                     const AlphaPlanes& alpha_planes, const InputRows* input_rows, int64_t begin, int64_t end,
                     DirectImage* image) {
  const ConvShape& s = conv.shape;
  const int64_t cg = s.filter_depth, depth = DirectDepth(s);
  DirectImage& m = *image;
  UninitializedVector<uint8_t> row_codes(input_rows != nullptr ? static_cast<size_t>(s.in_w * cg) : 0);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / m.ph, ih = row % m.ph - s.pad_top;
    uint8_t* bytes = m.bytes.data() + row * m.pw * m.pixel_bytes;
    int64_t* code_sums = m.code_sums.data() + row * m.pw;
    int64_t* alpha_sums = m.alpha_sums.data() + row * m.pw;
    const bool inside = ih >= 0 && ih < s.in_h;
    for (int64_t c = 0; c < m.pw; ++c) {
      if (inside && c == s.pad_left) {  // the input row: translated, summed
        const uint8_t* codes = row_codes.data();
        if (input_rows != nullptr) {
          (*input_rows)(n * s.in_h + ih, row_codes.data());
        } else {
          codes = conv.input + (n * s.in_h + ih) * s.in_w * cg;
        }
        if (m.entry_bytes == 2) {
          TranslateWideAvx2(codes, s.in_w, cg, u_plus, m.widened_codes,
                            m.u_by_code.empty() ? nullptr : m.u_by_code.data(), terms, depth, m.pixel_bytes / 2,
                            reinterpret_cast<uint16_t*>(bytes + c * m.pixel_bytes));
          SumsAvx2(codes, s.in_w, cg, alpha, alpha_planes, code_sums + c, alpha_sums + c);
          c += s.in_w - 1;
          continue;
        }
        if (NarrowPixelsApply(cg)) {
          NarrowPixelsVbmi(codes, s.in_w, cg, u_plus, terms, alpha_planes, bytes + c * m.pixel_bytes, code_sums + c,
                           alpha_sums + c);
          c += s.in_w - 1;
          continue;
        }
        if (terms == 1 && depth == cg) {  // the row's bytes in one run
          TranslateVbmi(codes, 1, s.in_w * cg, u_plus, 1, s.in_w * cg, s.in_w * cg, bytes + c * m.pixel_bytes);
        } else {
          TranslateVbmi(codes, s.in_w, cg, u_plus, terms, depth, m.pixel_bytes, bytes + c * m.pixel_bytes);
        }
        SumsVbmi(codes, s.in_w, cg, alpha, alpha_planes, code_sums + c, alpha_sums + c);
        c += s.in_w - 1;
        continue;
      }
      std::memcpy(bytes + c * m.pixel_bytes, m.zero_pixel.data(), static_cast<size_t>(m.pixel_bytes));
      code_sums[c] = m.zero_code_sum;
      alpha_sums[c] = m.zero_alpha_sum;
    }
  }
}

// The whole image, in parallel over its rows.
std::unique_ptr<DirectImage> BuildDirectImage(const QuantizedConv& conv, int terms, const uint8_t* u_plus,
                                              const int32_t* alpha, const AlphaPlanes& alpha_planes,
                                              const ParallelFor& parallel_for, const InputRows* input_rows,
                                              DecomposedIsa isa) {
  auto image = MakeDirectImage(conv, terms, u_plus, alpha, isa);
  DirectImage* m = image.get();
  parallel_for(conv.shape.batch * m->ph, m->pw * m->pixel_bytes * 2, [&](int64_t begin, int64_t end) {
    FillDirectImage(conv, terms, u_plus, alpha, alpha_planes, input_rows, begin, end, m);
  });
  return image;
}

}  // namespace

// What DecomposedConvAccumulate needs of the filter and the decomposition, built once per convolution.
struct DecomposedPlan {
  PackedFilter filter;
  std::vector<int32_t> alpha;  // [256]
  AlphaPlanes alpha_planes;
  std::vector<uint8_t> u_plus;  // [terms][256]: u + 128
  int terms = 0;
  DecomposedIsa isa = DecomposedIsa::kPortable;
  bool direct = false;  // the direct path (DirectApplies; B then tap-major)
  bool amx = false;     // the direct path's GEMM on AMX (HasAmx; B's reduction in whole tiles)
  // Its image, built once for conv.input's codes (`input`), or null where each call builds images one
  // at a time beside their GEMM (PrepareDecomposed's whole_images); input_rows: where the codes come from
  // for `input`, if not from it.
  std::unique_ptr<DirectImage> image;
  const uint8_t* input = nullptr;
  const InputRows* input_rows = nullptr;
};

// Measured on a 2-core Zen 4 against the lookups (CpuConvAccumulate) in the same run, one thread, N = 8,
// the decomposed time including PrepareDecomposed (the op builds the plan at every call): with up to
// four terms 1.5-3x faster on every layer of 32+ channels per group and 128+ taps tried (four terms:
// 3x3 56x56 64->64 3.1x, 28x28 128->128 2.2x, 14x14 256->256 2.3x, 7x7 512->512 2.2x, 16x16 32->32
// 1.6x, 3x3 s2 16->32 of 144 taps 1.5x, 1x1 256->128 1.6x); with eight terms faster from 512 taps
// (56x56 64->64 2x, 8x8 64->64 1.5x, 28x28 128->128 1.1x, 14x14 256->256 1.15x, 7x7 512->512 1.25x,
// the last 36864 reduction entries, the most tried) and even or slower below (288 taps 0.9x, 1x1
// 256->128 0.8x, 144 taps 1.0x). The earlier 8 x 2 micro-kernel lost from 4608 entries with four
// terms. Groups of 16-31 channels (one or two vectors of sums a micro-tile), re-measured the same way
// with the 6 x 4 kernel on 3x3 16->16 layers (144 taps; 32x32 and 8x8 images, N = 64 and 256) and the
// 3x3 stride-2 16->32: 1.9-2.1x faster for one term, 1.5-1.7x for two, 1.3-1.4x for three, 1.1-1.2x for
// four (too close to call), so up to three terms there. Not re-measured, so still excluded: 1x1 layers
// of 16-64 taps (even or slower before), and more than 8 terms (the lookups' cost does not grow with
// terms).
// Re-measured with the direct path (68b0b4b; this machine, one thread, plan included, a driver calling
// CpuConvAccumulate and DecomposedConvAccumulate interleaved, medians of 7, random decompositions), the
// speed-up over the lookups by terms 1..8: 3x3 32x32 16->16 N=16 2.0 2.1 1.7 1.6 1.0 1.2 1.0 0.9; 16x16
// 32->32 N=32 4.3 3.1 2.3 1.7 1.4 1.1 1.1 0.9; 8x8 64->64 N=64 5.2 3.3 2.4 1.9 1.5 1.2 1.1 1.0; 3x3 s2
// 16->32 N=16 1.4 1.9 1.3 1.1 1.0 0.9 0.8 0.7. So groups of 16-31 channels now take up to four terms, and
// five terms run from 288 taps; eight terms at 512+ taps stay as measured on the big layers above (on
// 8x8 64->64 they are even with the lookups, 0.97x).
// Layers of 16-127 taps (1x1 filters) take the direct path since its outputs come from int32 sums
// (BlockOutputs); `benchmarks/cpu_benchmark.py --decomposed` with 16-tap layers admitted, lookups /
// decomposed ms by terms 1, 1, 2, 4: 1x1 56x56 64->256 N=8 16.0 / 5.6, 5.6, 6.8, 9.2; 1x1 16x16 16->16 N=8
// 0.32-0.36 / 0.28, 0.28, 0.28, 0.32; with stride 2 (the image then holds the pixels the taps skip) 16x16
// 32->64 N=64 0.73 / 0.58, 0.63, 0.68, 0.76 and 32x32 16->32 N=64 1.08 / 0.91, 1.02, 1.18, 1.32. So up to
// three terms there with strides 1, one term otherwise. (Strided 1x1 filters that read no padding now
// arrive here at strides 1, over the pixels they read (FastKernelShape), and gain like the others: lookups /
// decomposed ms, mul8u_1446 (2 terms) and mul8u_17C8 (3): 32x32 16->32 0.88 / 0.55 and 0.86 / 0.56, 16x16
// 32->64 0.64 / 0.40 and 0.65 / 0.43.)
// And with int32 outputs, 5-8 real tables through the op (ResNet-20 layers, N=64, the decomposed kernel
// forced, alternated with conv2d, medians of 15, two runs), lookups / decomposed ms: 3x3 32x32 16->16
// mul8u_125K (5 terms) 4.96 / 3.91 and 4.80 / 3.69, mul8u_18DU (6) 4.75 / 4.38 (and 1.14x in the other
// run), mul8u_2P7 (7) 4.81 / 4.71 and 4.77 / 4.81, mul8u_GS2 (8) 4.85 / 5.19; 16x16 32->32 (288 taps) 5
// terms 3.83 / 2.70 and 5.62 / 4.16, 6 terms 3.77 / 3.13 and 5.35 / 4.41, 7 terms 1.04-1.06x, 8 even; the
// stride-2 16->32 (144 taps) 5 terms even, 6-8 slower. So groups of 16-31 channels take up to six terms,
// and six terms run from 288 taps.
// With the buffers no longer zeroed first (UninitializedVector, 47be5f4), 7-8 terms again (the decomposed
// kernel forced for groups of 16-31 channels against this build's lookups, alternated processes, three
// pairs, ms): 3x3 32x32 16->16 mul8u_2P7 (7) 4.16 / 4.63, 4.24 / 4.71, 4.15 / 4.65; mul8u_GS2 (8) 5.09 /
// 4.76, 4.65 / 4.78, 5.15 / 5.81; the stride-2 16->32 (144 taps) 7 terms 2.45 / 2.39, 2.51 / 2.47, 2.49 /
// 2.44, 8 terms even. So seven terms at strides 1.
// Input depths that are not a multiple of 4 take the direct path too, padded (DirectDepth): ResNet-20's
// 3->16 stem (27 taps, N=64), lookups / decomposed ms, two runs: exact 2.46 / 1.44 and 3.00 / 2.27,
// mul8u_1446 (2 terms) 1.90 / 1.64 and 1.99 / 1.78 (tf.nn.conv2d about 0.8-1.3 ms); a 3x3 6->32 even.
// With the narrow pixels (NarrowPixelsVbmi), the tile-filled outputs and the 1x1 projections at strides 1
// (FastKernelShape), re-measured (the decomposed kernel forced against the lookups in one process, N=64
// unless given, ms): the stem 4 / 5 / 6 / 7 / 8 / 9 / 12 / 16 terms 1.70 / 1.12, 1.62 / 1.18, 1.63 / 1.32,
// 1.67 / 1.42, 1.73 / 1.56, 1.65 / 1.62, 1.65 / 1.96, 1.61 / 2.25; 1x1 s2 16->32 0.88 / 0.56 at 4 terms to
// 0.89 / 0.66 at 8, 0.85 / 0.77 at 9, 0.88 / 0.84 at 16; 1x1 56x56 64->256 N=8 4 terms 13.5 / 7.3, 8 terms
// 13.1 / 12.3, 9 even, 12 and 16 terms 13.8 / 16.8-21.0. So up to 8 terms below 128 taps. And on 3x3
// 16->16 (16-31 channels), 7 terms 4.49-4.57 / 3.71-3.72 and 8 terms 4.40-4.61 / 3.91-3.93; the stride-2
// 16->32 even with both: 7-8 terms at strides 1.
// With the direct path's fewer parallel regions (DirectImagesAccumulate), the decomposed kernel forced
// against the lookups in one process (N=64, seven interleaved rounds, ms lookups / decomposed) for 5 / 6 /
// 7 / 8 terms (mul8u_125K, 18DU, 2P7, GS2): 3x3 s2 16->32 (144 taps) 2.43 / 1.66, 2.98 / 2.03, 2.63 / 2.24,
// 3.14 / 2.72; 16x16 32->32 (288 taps) 4.07 / 2.41, 4.03 / 2.89, 3.99 / 3.10, 5.04 / 3.71; 3x3 16->16 5.48 /
// 3.27, 5.57 / 3.16, 5.11 / 3.74, 5.25 / 4.20; 8x8 64->64 3.90 / 2.42, 4.12 / 2.76, 3.77 / 3.13, 3.86 / 3.50.
// With 9 / 10 / 12 / 16 terms (mul8u_7C1, 150Q, QJD, KEM; five rounds) 0.94-1.03x the lookups' time at 9
// and slower from 10 (KEM 1.6x on 3x3 s2 16->32). So the direct path takes up to 8 terms from 128 taps at
// any stride; the gather path (groups) keeps the limits measured before.
// Without AVX-512 (AVX2: the direct path only; the lookups then run their portable loops, ten times
// conv2d's time), a 2-core Zen 3, the op through Python (N=64 ResNet-20 layers, N=8 big ones), medians of
// 5, lookups / decomposed ms: 3x3 16->16 exact 43.7 / 4.0, 8 terms (GS2) 44.9 / 15.2, 16 terms (KEM) 43.8 /
// 32.1; 8x8 64->64 16 terms 40.2 / 36.1; 3x3 56x56 64->64 16 terms 300 / 183; 1x1 s2 16->32 (16 taps) 9
// terms (7C1) 4.38 / 3.18, 12 (QJD) 4.27 / 4.37, 16 4.25 / 5.56. So up to 16 terms from 128 taps, 9 below.
bool PreferDecomposed(const ConvShape& shape, int terms) {
  const int64_t taps = shape.taps(), per_group = shape.out_depth_per_group();
  const DecomposedIsa isa = BestIsa(false);
  if (isa == DecomposedIsa::kPortable || per_group < 16 || taps < 16) return false;
  const bool strided = shape.stride_h > 1 || shape.stride_w > 1;
  const bool direct = DirectApplies(shape, terms, isa);
  if (isa == DecomposedIsa::kAvx2) return direct && terms <= (taps < 128 ? 9 : 16);
  // (With AMX, where UsesAmx: the decomposed kernel 1.2-2.0x faster than the lookups with 16 terms in the
  // measurements there, up to 3.6x with 4, but 0.97x with 16 on 14x14 256->256, 36864 entries.)
  if (UsesAmx(shape, terms) && shape.stride_w == 1) return terms <= 16 && taps * terms <= (terms <= 8 ? 36864 : 18432);
  if (taps < 128) return direct && terms <= (strided ? 1 : 8);
  if (direct) return terms <= 8;
  if (per_group < 32) return terms <= 6 || (terms <= 8 && !strided);
  return terms <= 8 && taps * terms <= 36864 && (terms <= 4 || (terms <= 6 && taps >= 288) || taps >= 512);
}

bool DecomposedWritesOutputs(const DecomposedPlan& plan) { return plan.direct; }

const char* DecomposedKernelName(const ConvShape& shape, int terms, bool portable) {
  const DecomposedIsa isa = BestIsa(portable);
  switch (isa) {
    case DecomposedIsa::kVnni:
      return UsesAmx(shape, terms) ? "amx-decomposed" : "avx512vnni-decomposed";
    case DecomposedIsa::kAvx2:
      return "avx2-decomposed";
    default:
      return "decomposed-portable";
  }
}

bool DecomposedBuildsImage(const ConvShape& shape, int terms, bool portable) {
  return DirectApplies(shape, terms, BestIsa(portable));
}

std::shared_ptr<const DecomposedPlan> PrepareDecomposed(const QuantizedConv& conv, const TableDecomposition& d,
                                                        const ParallelFor& parallel_for, bool portable,
                                                        const InputRows* rows, bool whole_images) {
  auto plan = std::make_shared<DecomposedPlan>();
  const DecomposedIsa isa = BestIsa(portable);
  const bool direct = DirectApplies(conv.shape, d.terms, isa);
  const bool amx = isa == DecomposedIsa::kVnni && UsesAmx(conv.shape, d.terms);  // (UsesAmx implies direct)
  plan->filter = PackFilter(conv, d, parallel_for, isa == DecomposedIsa::kVnni, direct, amx);
  if (direct && isa == DecomposedIsa::kAvx2) {  // vpmaddwd's int16 operands
    PackedFilter& f = plan->filter;
    const size_t size = static_cast<size_t>(f.reduction * f.channels);
    f.b16.reset(new int16_t[size]);
    std::copy(f.b.data(), f.b.data() + size, f.b16.get());
    f.b = UninitializedVector<int8_t>();
  }
  plan->alpha.assign(d.alpha, d.alpha + 256);
  plan->alpha_planes = AlphaPlanes(d.alpha);
  plan->terms = d.terms;
  plan->u_plus.resize(static_cast<size_t>(d.terms) * 256);
  for (size_t i = 0; i < plan->u_plus.size(); ++i) plan->u_plus[i] = static_cast<uint8_t>(d.u[i] + 128);
  plan->isa = isa;
  plan->direct = direct;
  plan->amx = amx;
  plan->input = conv.input;
  plan->input_rows = rows;
  if (direct && !(whole_images && conv.shape.batch >= kImagesPerRegion)) {
    plan->image = BuildDirectImage(conv, d.terms, plan->u_plus.data(), plan->alpha.data(), plan->alpha_planes,
                                   parallel_for, rows, isa);
  }
  return plan;
}

namespace {

// What the direct path's tiles share, for a plan, an image's geometry and `outputs` (DirectConvAccumulate's):
// the micro-kernel's runs and, where the outputs come from int32 sums, the per-channel int32 addends.
struct DirectSetup {
  std::vector<int64_t> run_bytes;  // per run, its first tap's offset in the image
  int64_t runs = 0, run_steps = 0;
  std::vector<int32_t> channel_add, channel_act;  // BlockOutputs' (empty: int64 sums)
};

DirectSetup MakeDirectSetup(const QuantizedConv& conv, const DecomposedPlan& plan, const DirectImage& m,
                            const FloatOutputs* outputs) {
  const ConvShape& s = conv.shape;
  const PackedFilter& f = plan.filter;
  const int64_t spatial_taps = s.filter_h * s.filter_w, per_group = s.out_depth_per_group(), taps = s.taps();
  DirectSetup d;
  // The micro-kernel's runs (DirectRuns), each from its first tap.
  const DirectRunCount runs = DirectRuns(s, plan.terms);
  d.runs = runs.runs;
  d.run_steps = runs.run_steps;
  for (int64_t t = 0; t < spatial_taps; t += spatial_taps / d.runs) d.run_bytes.push_back(m.tap_bytes[t]);
  // The outputs from int32 sums (BlockOutputs) where both of an output's integers are bounded within
  // int32 (|sum of (u + 128) v| <= reduction * 255 * 128, |alpha sum| <= taps * max |alpha|, code sums <=
  // taps * 255) with every channel's offsets: then so are the int32 per-pixel and per-channel addends.
  if (outputs != nullptr) {
    int64_t max_alpha = 0, max_add = 0, max_act = 0;
    for (int32_t a : plan.alpha) max_alpha = std::max<int64_t>(max_alpha, std::abs(int64_t{a}));
    const DequantizeRows& r = *outputs->rows;
    for (int64_t c = 0; c < per_group; ++c) {
      max_add = std::max(max_add, std::abs(f.offset[c] - r.acc_offset[c]));
      max_act = std::max(max_act, std::abs(r.act_sum_offset[c]));
    }
    constexpr int64_t kInt32Max = 2147483647;
    const bool int32_outputs =
        f.reduction * 255 * 128 + taps * max_alpha + max_add <= kInt32Max && taps * 255 + max_act <= kInt32Max;
    if (int32_outputs) {
      d.channel_add.resize(static_cast<size_t>(per_group));
      d.channel_act.resize(static_cast<size_t>(per_group));
      for (int64_t c = 0; c < per_group; ++c) {
        d.channel_add[c] = static_cast<int32_t>(f.offset[c] - r.acc_offset[c]);
        d.channel_act[c] = static_cast<int32_t>(r.act_sum_offset[c]);
      }
    }
  }
  return d;
}

// Bytes of a panel of B (reduction x width) from which the direct path's VNNI GEMM takes the reduction in
// slices (vnni_slices in DirectConvAccumulate).
constexpr int64_t kVnniSliceBytes = int64_t{512} << 10;

// DecomposedConvAccumulate's direct path (DirectImage): tiles of kTile pixels in parallel, each in blocks
// of kPixelBlock consecutive pixels (the last one of a tile partial), with acc or, given `outputs`, the
// float32 outputs written block by block. setup: MakeDirectSetup's for this plan, m and outputs.
void DirectConvAccumulate(const QuantizedConv& conv, const DecomposedPlan& plan, const DirectImage& m,
                          const DirectSetup& setup, int64_t pixel_begin, int64_t pixel_end,
                          const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                          const FloatOutputs* outputs) {
  const ConvShape& s = conv.shape;
  const PackedFilter& f = plan.filter;
  const int64_t pixels = pixel_end - pixel_begin, per_group = s.out_depth_per_group();
  const int64_t spatial_taps = s.filter_h * s.filter_w, taps = s.taps();
  const int64_t runs = setup.runs, run_steps = setup.run_steps;
  const std::vector<int64_t>& run_bytes = setup.run_bytes;
  const std::vector<int32_t>&channel_add = setup.channel_add, &channel_act = setup.channel_act;
  const AlphaPlanes& alpha = plan.alpha_planes;
  const bool affine = alpha.count == 0;
  // (Locals: act_sum's stores could alias the image's vectors as the compiler sees them.)
  const int64_t* code_sums = m.code_sums.data();
  const int64_t* tap_pixels = m.tap_pixels.data();
  const bool avx2 = plan.isa == DecomposedIsa::kAvx2, amx = plan.amx;
  // AVX2 with outputs from int32 sums: the reduction split by spatial tap (MicroChunkAvx2's carry) where a
  // block's rows over all taps would not stay in L1 (about 24 KB of 32).
  const int64_t tap_steps = m.PixelSteps();
  const bool tap_slices = avx2 && spatial_taps > 1 && kPixelBlock * spatial_taps * m.pixel_bytes > 24 * 1024;
  // VNNI where a panel of B is larger than kVnniSliceBytes: the reduction run by run (a filter row's taps) over
  // all the tile's blocks, each block's int32 sums kept in a row per pixel between runs, then the outputs
  // from them. Over the whole reduction block by block, each block of 6 pixels read the panel from beyond
  // L2 once it was over L2's share (3x3 7x7 512->512 with 8 terms: 2.4 MB a panel).
  const bool vnni_slices = plan.isa == DecomposedIsa::kVnni && !amx && runs > 1;
  const auto add_rows = avx2 ? AddRowsPortable : AddRowsAvx512;
  const auto write_sums = avx2 ? WriteSumsPortable : WriteSumsAvx512;
  const int64_t tiles = (pixels + kTile - 1) / kTile;
  parallel_for(tiles, kTile * f.reduction * f.channels / 16 + 1, [&](int64_t begin, int64_t end) {
    // A tile's pixels: each one's image pixel at tap (0, 0) and sums; then the panels of B outer and the
    // blocks of kPixelBlock pixels inner (a block's pixels may lie on two output rows: a 7- or 8-pixel
    // row would leave blocks mostly empty), so a panel is read from cache by every block of the tile.
    // Rows past the tile's pixels repeat its last one (their sums are dropped).
    const uint8_t* pixel_rows[kTile];
    int64_t at[kTile], alpha_sums[kTile];
    int32_t pixel_add32[kTile], act32[kTile];  // BlockOutputs' per-pixel fields
    float* outs[kTile];
    int64_t tile_act[kTile];  // the tile's patch sums where the outputs are written here (act_sum unused)
    // tap_slices: each block's and chunk's 12 sums between taps (MicroChunkAvx2's carry), 24 KB.
    std::unique_ptr<int32_t[]> carry_buffer(tap_slices ? new int32_t[kTile / kPixelBlock * (kPanel / 8) * 96 + 8] : nullptr);
    int32_t* const carry = carry_buffer == nullptr ? nullptr : reinterpret_cast<int32_t*>(
        (reinterpret_cast<uintptr_t>(carry_buffer.get()) + 31) & ~uintptr_t{31});  // 32-byte aligned
    std::vector<const int64_t*> tap_sums(static_cast<size_t>(spatial_taps));
    // A panel's int32 sums where a GEMM leaves them in memory for kSumRowsOutputs (AmxPanel's, or VNNI's over
    // slices), each pixel's row of them; AMX: A's blocks of kAmxRows rows.
    const int64_t run_tiles = amx ? f.reduction / kAmxBytes / runs : 0;
    UninitializedVector<int32_t> row_sums(vnni_slices ? static_cast<size_t>(kTile * kPanel) : 0);
    int32_t* sum_rows[kTile];
    for (int i = 0; vnni_slices && i < kTile; ++i) sum_rows[i] = row_sums.data() + i * kPanel;
    std::vector<const uint8_t*> amx_a;
    if (amx) ConfigureAmx();
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t first = tile * kTile, count = std::min<int64_t>(kTile, pixels - first);
      const int64_t p = pixel_begin + first;
      int64_t* const act = outputs != nullptr ? tile_act : act_sum + first;  // the tile's patch sums
      int64_t ow = p % s.out_w, oh = (p / s.out_w) % s.out_h, n = p / (s.out_w * s.out_h);
      // The tile's pixels by output row: segment k is pixels seg_start[k] .. seg_start[k + 1] - 1, the
      // image pixels of their taps (0, 0) s.stride_w apart. (A multiply and a branch per pixel made this
      // loop about a fifth of DirectConvAccumulate's own time on ResNet-20's stem, where a pixel's GEMM
      // is a few vpdpbusd.)
      int64_t seg_start[kTile + 1];
      int64_t segments = 0;
      for (int64_t i = 0; i < count;) {
        const int64_t pixel = (n * m.ph + oh * s.stride_h) * m.pw + ow * s.stride_w;  // image pixel of tap (0, 0)
        const int64_t length = std::min(count - i, s.out_w - ow);
        const uint8_t* row = m.bytes.data() + pixel * m.pixel_bytes;
        const int64_t step = s.stride_w * m.pixel_bytes;
        for (int64_t k = 0; k < length; ++k) {
          at[i + k] = pixel + k * s.stride_w;
          pixel_rows[i + k] = row + k * step;
        }
        seg_start[segments++] = i;
        i += length;
        ow += length;
        if (ow == s.out_w) {
          ow = 0;
          if (++oh == s.out_h) oh = 0, ++n;
        }
      }
      seg_start[segments] = count;
      // The patch sums: its taps' pixel sums added. Where consecutive pixels' patches start at consecutive
      // image pixels (a segment with stride 1), a run of them takes vectors of 8 sums per tap;
      // pixel by pixel, the scalar loads and adds were a fifth of the op on ResNet-20's 16->16 layer.
      // A lone pixel (strided rows) adds its taps' sums as scalars: as a vector of one lane, with the taps'
      // pointers set up for it, they were 9% of ResNet-20's 3x3 stride-2 layer.
      for (int64_t i = 0, k = 0; i < count;) {
        if (i == seg_start[k + 1]) ++k;
        const int64_t run = s.stride_w == 1 ? seg_start[k + 1] - i : 1;
        if (run == 1) {
          int64_t code_sum = 0, alpha_sum = 0;
          for (int64_t t = 0; t < spatial_taps; ++t) code_sum += code_sums[at[i] + tap_pixels[t]];
          if (!affine) {
            for (int64_t t = 0; t < spatial_taps; ++t) alpha_sum += m.alpha_sums[at[i] + tap_pixels[t]];
            alpha_sums[i] = alpha_sum;
          }
          act[i] = code_sum;
          ++i;
          continue;
        }
        for (int64_t t = 0; t < spatial_taps; ++t) tap_sums[t] = code_sums + at[i] + tap_pixels[t];
        add_rows(tap_sums.data(), spatial_taps, run, act + i);
        if (!affine) {
          for (int64_t t = 0; t < spatial_taps; ++t) tap_sums[t] = m.alpha_sums.data() + at[i] + tap_pixels[t];
          add_rows(tap_sums.data(), spatial_taps, run, alpha_sums + i);
        }
        i += run;
      }
      // An affine alpha's sum follows from the codes' (AlphaPlanes): half the loads.
      if (affine) {
        for (int64_t i = 0; i < count; ++i) alpha_sums[i] = alpha.base * taps + alpha.slope * act[i];
      }
      const int64_t blocks = (count + kPixelBlock - 1) / kPixelBlock;
      for (int64_t i = count; i < blocks * kPixelBlock; ++i) pixel_rows[i] = pixel_rows[count - 1];
      // AMX: A's rows (AmxPanel's blocks of kAmxRows, s.stride_w pixels apart) and each pixel's row of
      // sums. At stride 1 the image's pixels from the tile's first pixel's to its last (at[]: their indices
      // in the image; pixel i's sums are row at[i] - at[0]); at larger strides (UsesAmx: rows of a multiple
      // of kAmxRows outputs) each output row's pixels, kAmxRows at a time.
      int64_t amx_blocks = 0;
      if (amx) {
        amx_a.clear();
        int64_t sums_row[kTile];  // pixel i's row of sums
        if (s.stride_w == 1) {
          amx_blocks = (at[count - 1] - at[0]) / kAmxRows + 1;
          for (int64_t b = 0; b < amx_blocks; ++b) amx_a.push_back(pixel_rows[0] + b * kAmxRows * m.pixel_bytes);
          for (int64_t i = 0; i < count; ++i) sums_row[i] = at[i] - at[0];
        } else {
          for (int64_t k = 0; k < segments; ++k) {
            for (int64_t i = seg_start[k]; i < seg_start[k + 1]; ++i) {
              const int64_t in_block = (i - seg_start[k]) % kAmxRows;
              if (in_block == 0) amx_a.push_back(pixel_rows[i]);
              sums_row[i] = static_cast<int64_t>(amx_a.size() - 1) * kAmxRows + in_block;
            }
          }
          amx_blocks = static_cast<int64_t>(amx_a.size());
        }
        // AmxPanel's blocks past amx_blocks (up to PB - 1), whose sums are dropped.
        for (int b = 0; b < kAmxMaxRows / kAmxRows; ++b) amx_a.push_back(amx_a.back());
        const size_t sums_size = static_cast<size_t>((amx_blocks * kAmxRows + kAmxMaxRows) * kPanel);
        if (row_sums.size() < sums_size) row_sums.resize(sums_size);
        for (int64_t i = 0; i < blocks * kPixelBlock; ++i) {
          sum_rows[i] = row_sums.data() + sums_row[std::min(i, count - 1)] * kPanel;
        }
      }
      if (!channel_add.empty()) {
        for (int64_t i = 0; i < count; ++i) {
          pixel_add32[i] = static_cast<int32_t>(alpha_sums[i]);
          act32[i] = static_cast<int32_t>(act[i]);
          outs[i] = outputs->out + (first + i) * s.out_depth;
        }
      }
      // Block `block`'s outputs from its int32 sums (BlockOutputs) in the panel of width channels at c0.
      const auto block_outputs = [&](int64_t block, int64_t c0, int64_t width) {
        const int64_t i0 = block * kPixelBlock;
        BlockOutputs o;
        o.rows = outputs->rows;
        o.channel_add = channel_add.data();
        o.channel_act = channel_act.data();
        o.c0 = c0;
        o.width = std::min(width, per_group - c0);
        o.pixels = std::min(count, i0 + kPixelBlock) - i0;
        o.pixel_add = pixel_add32 + i0;
        o.act = act32 + i0;
        o.out = outs + i0;
        return o;
      };
      for (int64_t c0 = 0; c0 < per_group;) {
        const int64_t width = f.PanelWidth(c0);
        if (avx2 && !channel_add.empty()) {
          const int chunks = static_cast<int>((std::min(width, per_group - c0) + 7) / 8);
          const int16_t* panel = f.b16.get() + c0 * f.reduction;
          if (!tap_slices) {  // a chunk of 8 channels over every block
            for (int chunk = 0; chunk < chunks; ++chunk) {
              for (int64_t block = 0; block < blocks; ++block) {
                MicroKernelOutputsAvx2(pixel_rows + block * kPixelBlock, run_bytes.data(), runs, run_steps, panel,
                                       width, chunk, block_outputs(block, c0, width));
              }
            }
            c0 += width;
            continue;
          }
          // Tap by tap, a block's chunks in turn: its six rows of one tap stay in L1 over the panel's chunks.
          // (Over whole patches, a block's rows, 6 x taps x pixel_bytes, left L1 from a few terms on: the
          // decomposed time grew faster than the terms, 11.7x the exact table's with 8 on 28x28 128->128.)
          for (int64_t t = 0; t < spatial_taps; ++t) {
            for (int64_t block = 0; block < blocks; ++block) {
              for (int chunk = 0; chunk < chunks; ++chunk) {
                MicroKernelOutputsAvx2(pixel_rows + block * kPixelBlock, &m.tap_bytes[t], 1, tap_steps,
                                       panel + t * tap_steps * width * 4, width, chunk, block_outputs(block, c0, width),
                                       carry + (block * (kPanel / 8) + chunk) * 96, t > 0, t + 1 < spatial_taps);
              }
            }
          }
          c0 += width;
          continue;
        }
        // VNNI's sums over slices (vnni_slices), for the float outputs of a panel over kVnniSliceBytes.
        const bool sliced = vnni_slices && !channel_add.empty() && f.reduction * width > kVnniSliceBytes;
        if (amx) {
          kAmxPanels[width / kChannelBlock - 1](amx_a.data(), s.stride_w * m.pixel_bytes, run_bytes.data(), runs,
                                                run_tiles, amx_blocks, f.b.data() + c0 * f.reduction, row_sums.data());
        } else if (sliced) {
          for (int64_t j = 0; j < runs; ++j) {
            const int8_t* run_b = f.b.data() + c0 * f.reduction + j * run_steps * width * 4;
            for (int64_t block = 0; block < blocks; ++block) {
              kVnniRowKernels[width / kChannelBlock - 1](pixel_rows + block * kPixelBlock, &run_bytes[j], 1, run_steps,
                                                         run_b, width, j == 0, sum_rows + block * kPixelBlock);
            }
          }
        }
        for (int64_t block = 0; block < blocks; ++block) {
          const int64_t i0 = block * kPixelBlock, n = std::min(count, i0 + kPixelBlock) - i0;
          const int64_t real_width = std::min(width, per_group - c0);
          if (!channel_add.empty()) {
            if (amx || sliced) {
              kSumRowsOutputs[width / kChannelBlock - 1](sum_rows + i0, block_outputs(block, c0, width));
            } else {
              kVnniOutputKernels[width / kChannelBlock - 1](pixel_rows + block * kPixelBlock, run_bytes.data(), runs,
                                                            run_steps, f.b.data() + c0 * f.reduction, width,
                                                            block_outputs(block, c0, width));
            }
            continue;
          }
          Sums sums;
          if (avx2) {
            MicroKernelAvx2(pixel_rows + block * kPixelBlock, run_bytes.data(), runs, run_steps,
                            f.b16.get() + c0 * f.reduction, width, sums);
          } else if (amx) {
            for (int i = 0; i < kPixelBlock; ++i)
              for (int64_t c = 0; c < width; ++c) sums[i][c] = sum_rows[i0 + i][c];
          } else {
            kVnniKernels[width / kChannelBlock - 1](pixel_rows + block * kPixelBlock, run_bytes.data(), runs,
                                                    run_steps, f.b.data() + c0 * f.reduction, width, true, sums);
          }
          if (outputs != nullptr) {  // the block's sums, then its outputs
            int64_t block_acc[kPixelBlock][kPanel];
            for (int64_t i = 0; i < n; ++i) {
              write_sums(sums[i], alpha_sums[i0 + i], f.offset.data() + c0, real_width, block_acc[i]);
            }
            DequantizeBlock(*outputs->rows, c0, real_width, n, block_acc[0], kPanel, act + i0,
                            outputs->out + (first + i0) * s.out_depth + c0, s.out_depth);
            continue;
          }
          for (int64_t i = 0; i < n; ++i) {
            write_sums(sums[i], alpha_sums[i0 + i], f.offset.data() + c0, real_width,
                       acc + (first + i0 + i) * s.out_depth + c0);
          }
        }
        c0 += width;
      }
    }
    if (amx) ReleaseAmx();
  });
}

// The direct path over images [first, last) of conv in one parallel region: each part builds the image of
// one input image at a time in a buffer of its own (one image: it stays in cache for the GEMM) and runs
// that image's pixels, acc, act_sum and the outputs starting at image first's. Where the image of every
// input was built first, in a parallel region of its own, each region woke the pool's threads for
// little work on ResNet-20's 32x32 layers (docs/decomposition.md, "Fewer parallel regions").
void DirectImagesAccumulate(const QuantizedConv& conv, const DecomposedPlan& plan, const InputRows* rows,
                            int64_t first, int64_t last, const ParallelFor& parallel_for, int64_t* acc,
                            int64_t* act_sum, const FloatOutputs* outputs) {
  const ConvShape& s = conv.shape;
  const int64_t hw = s.out_h * s.out_w;
  const PackedFilter& f = plan.filter;
  parallel_for(last - first, hw * f.reduction * f.channels / 16 + 1, [&](int64_t begin, int64_t end) {
    QuantizedConv image_conv = conv;  // one input image's convolution
    image_conv.shape.batch = 1;
    std::unique_ptr<DirectImage> image;  // and its setup: made once, for a part's first image
    DirectSetup setup;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = first + i;
      if (conv.input != nullptr) image_conv.input = conv.input + n * s.in_h * s.in_w * s.in_depth;
      const InputRows image_rows = [&](int64_t row, uint8_t* codes) { (*rows)(n * s.in_h + row, codes); };
      if (image == nullptr) {
        image = MakeDirectImage(image_conv, plan.terms, plan.u_plus.data(), plan.alpha.data(), plan.isa);
        setup = MakeDirectSetup(image_conv, plan, *image, outputs);
      }
      FillDirectImage(image_conv, plan.terms, plan.u_plus.data(), plan.alpha.data(), plan.alpha_planes,
                      rows != nullptr ? &image_rows : nullptr, 0, image->ph, image.get());
      FloatOutputs image_outputs;
      if (outputs != nullptr) image_outputs = FloatOutputs{outputs->rows, outputs->out + i * hw * s.out_depth};
      DirectConvAccumulate(image_conv, plan, *image, setup, 0, hw, SerialFor(),
                           acc != nullptr ? acc + i * hw * s.out_depth : nullptr,
                           act_sum != nullptr ? act_sum + i * hw : nullptr,
                           outputs != nullptr ? &image_outputs : nullptr);
    }
  });
}

}  // namespace

bool DecomposedConvAccumulate(const QuantizedConv& conv, const DecomposedPlan& plan, int64_t pixel_begin,
                              int64_t pixel_end, const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                              const FloatOutputs* outputs) {
  const ConvShape& s = conv.shape;
  const int64_t pixels = pixel_end - pixel_begin;
  if (pixels <= 0) return outputs != nullptr && plan.direct;
  if (plan.direct) {
    // Codes from the plan's input_rows for the input it was built with, else from conv.input.
    const InputRows* rows = conv.input == plan.input ? plan.input_rows : nullptr;
    const int64_t hw = s.out_h * s.out_w;
    if (plan.image == nullptr && pixel_begin % hw == 0 && pixel_end % hw == 0) {
      DirectImagesAccumulate(conv, plan, rows, pixel_begin / hw, pixel_end / hw, parallel_for, acc, act_sum, outputs);
      return outputs != nullptr;
    }
    // The plan's image serves the codes it was built from; for others (a plan reused), one for them.
    std::unique_ptr<DirectImage> own;
    if (plan.image == nullptr || plan.input != conv.input) {
      own = BuildDirectImage(conv, plan.terms, plan.u_plus.data(), plan.alpha.data(), plan.alpha_planes, parallel_for,
                             rows, plan.isa);
    }
    const DirectImage& image = own != nullptr ? *own : *plan.image;
    DirectConvAccumulate(conv, plan, image, MakeDirectSetup(conv, plan, image, outputs), pixel_begin, pixel_end,
                         parallel_for, acc, act_sum, outputs);
    return outputs != nullptr;
  }
  const int64_t taps = s.taps(), groups = s.groups(), per_group = s.out_depth_per_group();
  const PackedFilter& f = plan.filter;
  const int64_t steps = f.reduction / 4, chunk_steps = kChunk / 4;
  const bool fast = plan.isa == DecomposedIsa::kVnni;  // (the gather path has no AVX2 kernels)
  const MicroKernel* kernels = fast ? kVnniKernels : kPortableKernels;
  const CopyTaps copy = fast ? CopyTapsAvx512 : CopyTapsPortable;
  const auto translate = fast ? TranslateVbmi : TranslatePortable;
  const auto sum_codes = fast ? SumsVbmi : SumsPortable;
  const auto write_sums = fast ? WriteSumsAvx512 : WriteSumsPortable;
  const int64_t tiles = (pixels + kTile - 1) / kTile;
  parallel_for(tiles, kTile * f.reduction * f.channels * groups / 16 + 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> rows(static_cast<size_t>(kTile * f.reduction));
    std::vector<uint8_t> codes(static_cast<size_t>(kTile * taps + kCopySlack));
    std::vector<int64_t> code_sums(kTile), alpha_sums(kTile);
    std::vector<const uint8_t*> tap_scratch(static_cast<size_t>(s.filter_h * s.filter_w));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t first = tile * kTile, count = std::min<int64_t>(kTile, pixels - first);
      const int64_t blocks = (count + kPixelBlock - 1) / kPixelBlock, height = blocks * kPixelBlock;
      for (int64_t g = 0; g < groups; ++g) {
        // A tile's codes, then their sums and A's rows for all of them (each pass's tables loaded once).
        // Rows past the tile's pixels repeat its last one: the micro-kernel keeps its full height.
        GatherTile(conv, pixel_begin + first, count, height, g, copy, tap_scratch.data(), codes.data());
        sum_codes(codes.data(), count, taps, plan.alpha.data(), plan.alpha_planes, code_sums.data(), alpha_sums.data());
        translate(codes.data(), height, taps, plan.u_plus.data(), plan.terms, taps, f.reduction, rows.data());
        for (int64_t i = 0; i < count; ++i) act_sum[(first + i) * groups + g] = code_sums[i];
        const int8_t* group_b = f.b.data() + g * f.reduction * f.channels;
        for (int64_t c0 = 0; c0 < per_group;) {
          const int64_t width = f.PanelWidth(c0);
          const int vectors = static_cast<int>(width / kChannelBlock);
          for (int64_t block = 0; block < blocks; ++block) {
            Sums sums;  // set by the first chunk's kernel
            if (steps == 0) std::memset(sums, 0, sizeof(sums));  // no terms: nothing to multiply
            for (int64_t step = 0; step < steps; step += chunk_steps) {
              const uint8_t* block_rows[kPixelBlock];
              for (int i = 0; i < kPixelBlock; ++i) block_rows[i] = rows.data() + (block * kPixelBlock + i) * f.reduction + step * 4;
              kernels[vectors - 1](block_rows, &kNoOffset, 1, std::min(steps, step + chunk_steps) - step,
                                   group_b + c0 * f.reduction + step * width * 4, width, step == 0, sums);
            }
            for (int i = 0; i < kPixelBlock; ++i) {
              const int64_t row = block * kPixelBlock + i;
              if (row >= count) break;
              const int64_t q = first + row;
              const int64_t co = g * per_group + c0;
              write_sums(sums[i], alpha_sums[row], f.offset.data() + co, std::min(width, per_group - c0),
                         acc + q * s.out_depth + co);
            }
          }
          c0 += width;
        }
      }
    }
  });
  return false;
}

void DecomposedConvAccumulate(const QuantizedConv& conv, const TableDecomposition& d, int64_t pixel_begin,
                              int64_t pixel_end, const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum,
                              bool portable) {
  if (pixel_end <= pixel_begin) return;
  DecomposedConvAccumulate(conv, *PrepareDecomposed(conv, d, parallel_for, portable), pixel_begin, pixel_end,
                           parallel_for, acc, act_sum);
}

}  // namespace tfapprox
