// The fast CPU kernel.
//
// Why this shape: a lookup costs a load whose address depends on two codes, so the rate is set by how
// many loads each lookup needs. A block of kPixels output pixels x kChannels output channels shares its
// loads: per tap, kPixels row offsets (activation code << 8) and kChannels weight codes feed
// kPixels * kChannels lookups whose address is one add away. The patch of each pixel is gathered once
// into row offsets (padded taps read the zero code), grouped so that each group's taps are contiguous,
// and reused by every output channel of the group. Accumulators are 64-bit registers: as cheap as 32-bit
// ones on x86-64 and free of overflow for any number of taps.
//
// Where the processor has AVX-512BW, groups with many output channels take a faster path: a whole
// table row (256 uint16, the products of one activation code with every weight code) fits in eight
// 512-bit registers, and vpermi2w looks up 32 weight codes in 64 entries of it at once; three masked
// blends on bits 6 and 7 of the codes pick among the four 64-entry quarters. Loads leave the
// critical path (8 per row, shared by 64 channels) and one pixel x 64 channels costs about 36
// instructions per tap instead of about 280. Measured 4x the scalar loop on one Zen 4 core.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

constexpr int kPixels = 4;
constexpr int kChannels = 2;

// Gathers the patch of output pixel p as row offsets, laid out [group][kh][kw][ci] (padded taps read
// the zero code), and the per-group sums of its codes.
void GatherPatch(const QuantizedConv& conv, int64_t p, uint16_t* rows, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const uint16_t zero_row = static_cast<uint16_t>(conv.input_zero_code << 8);
  for (int64_t g = 0; g < s.groups(); ++g) {
    uint16_t* out = rows + g * s.taps();
    int64_t sum = 0;
    WalkPatch(conv, p, g, [&](const uint8_t* in) {
      if (in != nullptr) {
        for (int64_t ci = 0; ci < s.filter_depth; ++ci) {
          out[ci] = static_cast<uint16_t>(in[ci] << 8);
          sum += in[ci];
        }
      } else {
        std::fill(out, out + s.filter_depth, zero_row);
        sum += int64_t{conv.input_zero_code} * s.filter_depth;
      }
      out += s.filter_depth;
    });
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

constexpr int kPermuteChannels = 64;  // output channels per pass of the permute path
constexpr int kPermutePixels = 2;     // pixels sharing each tap's weight codes (2 beat 1 and 4)
static_assert(kPixels % kPermutePixels == 0, "a block splits into permute blocks");

bool HasAvx512Bw() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}

// acc[i][co] = sum_t lut[rows[i][t] + weights[t][co]] for NP pixels and co < channels, weights
// laid out [tap][padded] with `padded` a multiple of kPermuteChannels; acc[i] points at pixel i's
// channels. The pixels share each tap's weight codes and masks, so the weight matrix streams through
// the cache once per NP pixels. Requires taps * 65535 < 2^31 (int32 lanes).
template <int NP>
__attribute__((target("avx512f,avx512bw"))) void LookupPixelsPermute(
    const uint16_t* const* rows, const uint8_t* weights, int64_t taps, int64_t channels,
    int64_t padded, const uint16_t* lut, int64_t* const* acc) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t c0 = 0; c0 < channels; c0 += kPermuteChannels) {
    // unpacklo/hi widen words {0-3, 8-11, ...} and {4-7, 12-15, ...} of each 32-channel half:
    // sums[i][2b] and sums[i][2b + 1] hold half b in that interleaved order, undone at the store.
    __m512i sums[NP][4];
    for (int i = 0; i < NP; ++i)
      for (int k = 0; k < 4; ++k) sums[i][k] = zero;
    const uint8_t* w = weights + c0;
    for (int64_t t = 0; t < taps; ++t, w += padded) {
      const __m512i codes[2] = {
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w))),
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32)))};
      const __mmask32 bit6[2] = {_mm512_test_epi16_mask(codes[0], _mm512_set1_epi16(64)),
                                 _mm512_test_epi16_mask(codes[1], _mm512_set1_epi16(64))};
      const __mmask32 bit7[2] = {_mm512_test_epi16_mask(codes[0], _mm512_set1_epi16(128)),
                                 _mm512_test_epi16_mask(codes[1], _mm512_set1_epi16(128))};
      for (int i = 0; i < NP; ++i) {
        const __m512i* row = reinterpret_cast<const __m512i*>(lut + rows[i][t]);
        __m512i r[8];
        for (int k = 0; k < 8; ++k) r[k] = _mm512_loadu_si512(row + k);
        for (int b = 0; b < 2; ++b) {
          const __m512i q0 = _mm512_permutex2var_epi16(r[0], codes[b], r[1]);
          const __m512i q1 = _mm512_permutex2var_epi16(r[2], codes[b], r[3]);
          const __m512i q2 = _mm512_permutex2var_epi16(r[4], codes[b], r[5]);
          const __m512i q3 = _mm512_permutex2var_epi16(r[6], codes[b], r[7]);
          const __m512i v = _mm512_mask_blend_epi16(bit7[b], _mm512_mask_blend_epi16(bit6[b], q0, q1),
                                                    _mm512_mask_blend_epi16(bit6[b], q2, q3));
          sums[i][2 * b] = _mm512_add_epi32(sums[i][2 * b], _mm512_unpacklo_epi16(v, zero));
          sums[i][2 * b + 1] = _mm512_add_epi32(sums[i][2 * b + 1], _mm512_unpackhi_epi16(v, zero));
        }
      }
    }
    for (int i = 0; i < NP; ++i) {
      alignas(64) int32_t out[4][16];
      for (int k = 0; k < 4; ++k) _mm512_store_si512(out[k], sums[i][k]);
      for (int b = 0; b < 2; ++b) {
        for (int lane = 0; lane < 4; ++lane) {
          for (int k = 0; k < 8; ++k) {
            const int64_t co = c0 + 32 * b + 8 * lane + k;
            if (co < channels) acc[i][co] = out[2 * b + k / 4][4 * lane + k % 4];
          }
        }
      }
    }
  }
}

// The column path, for groups with few output channels (the 16-channel layers of small networks),
// where a table row's 256 products would feed too few lookups. It turns the permute around: the
// column of one weight code (the products of every activation code with it) sits in eight registers
// and vpermi2w looks it up for 32 pixels at once. A column serves all kColumnBlocks * 32 pixels of a
// chunk before the next tap, so a lookup costs well under one instruction whatever the channel count.
constexpr int kColumnLanes = 32;   // pixels per vpermi2w
constexpr int kColumnBlocks = 4;   // lane groups sharing each column load
constexpr int kColumnPixels = kColumnLanes * kColumnBlocks;

// The chunk's activation codes of one group, by tap: codes[t][i] (uint16, 0..255) for pixel i of the
// chunk, and bits 6 and 7 of them as masks per lane group, computed once and used by every channel.
struct ColumnOperands {
  std::vector<uint16_t> codes;   // [taps][kColumnPixels]
  std::vector<uint32_t> bit6;    // [taps][kColumnBlocks]
  std::vector<uint32_t> bit7;
};

__attribute__((target("avx512f,avx512bw"))) void ColumnMasks(ColumnOperands* ops, int64_t taps) {
  for (int64_t t = 0; t < taps; ++t) {
    for (int b = 0; b < kColumnBlocks; ++b) {
      const __m512i c = _mm512_loadu_si512(&ops->codes[t * kColumnPixels + b * kColumnLanes]);
      ops->bit6[t * kColumnBlocks + b] = _mm512_test_epi16_mask(c, _mm512_set1_epi16(64));
      ops->bit7[t * kColumnBlocks + b] = _mm512_test_epi16_mask(c, _mm512_set1_epi16(128));
    }
  }
}

// sums[i] = sum_t by_weight[(w[t] << 8) | codes[t][i]] for the chunk's pixels i (int32 lanes: taps *
// 65535 < 2^31), written to out[i * stride] for i < valid.
__attribute__((target("avx512f,avx512bw"))) void LookupColumns(const ColumnOperands& ops, const uint8_t* w,
                                                               int64_t taps, const uint16_t* by_weight,
                                                               int valid, int64_t* out, int64_t stride) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i sums[kColumnBlocks][2];
  for (auto& block : sums) block[0] = block[1] = zero;
  for (int64_t t = 0; t < taps; ++t) {
    const __m512i* column = reinterpret_cast<const __m512i*>(by_weight + (static_cast<int>(w[t]) << 8));
    __m512i r[8];
    for (int k = 0; k < 8; ++k) r[k] = _mm512_loadu_si512(column + k);
    const uint16_t* codes = &ops.codes[t * kColumnPixels];
    for (int b = 0; b < kColumnBlocks; ++b) {
      const __m512i c = _mm512_loadu_si512(codes + b * kColumnLanes);
      const __mmask32 b6 = ops.bit6[t * kColumnBlocks + b], b7 = ops.bit7[t * kColumnBlocks + b];
      const __m512i q0 = _mm512_permutex2var_epi16(r[0], c, r[1]);
      const __m512i q1 = _mm512_permutex2var_epi16(r[2], c, r[3]);
      const __m512i q2 = _mm512_permutex2var_epi16(r[4], c, r[5]);
      const __m512i q3 = _mm512_permutex2var_epi16(r[6], c, r[7]);
      const __m512i v = _mm512_mask_blend_epi16(b7, _mm512_mask_blend_epi16(b6, q0, q1),
                                                _mm512_mask_blend_epi16(b6, q2, q3));
      sums[b][0] = _mm512_add_epi32(sums[b][0], _mm512_unpacklo_epi16(v, zero));
      sums[b][1] = _mm512_add_epi32(sums[b][1], _mm512_unpackhi_epi16(v, zero));
    }
  }
  for (int b = 0; b < kColumnBlocks; ++b) {
    alignas(64) int32_t lo[16], hi[16];
    _mm512_store_si512(lo, sums[b][0]);
    _mm512_store_si512(hi, sums[b][1]);
    // unpacklo/hi took words {0-3, 8-11, ...} and {4-7, 12-15, ...}: word 8 * lane + k.
    for (int lane = 0; lane < 4; ++lane) {
      for (int k = 0; k < 8; ++k) {
        const int i = b * kColumnLanes + 8 * lane + k;
        if (i < valid) out[i * stride] = k < 4 ? lo[4 * lane + k] : hi[4 * lane + k - 4];
      }
    }
  }
}

// The chunk's codes of group g by tap, straight from the input codes (padded taps read the zero code),
// and each valid pixel's code sum of the group. Lanes past `valid` repeat the last pixel.
void GatherColumns(const QuantizedConv& conv, int64_t g, int64_t first, int valid, ColumnOperands* ops,
                   int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  for (int i = 0; i < kColumnPixels; ++i) {
    uint16_t* out = &ops->codes[i];
    int64_t sum = 0;
    WalkPatch(conv, first + std::min(i, valid - 1), g, [&](const uint8_t* in) {
      for (int64_t ci = 0; ci < s.filter_depth; ++ci, out += kColumnPixels) {
        const uint8_t code = in != nullptr ? in[ci] : conv.input_zero_code;
        *out = code;
        sum += code;
      }
    });
    if (i < valid) act_sum[i * s.groups() + g] = sum;
  }
}

void ColumnPathAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixels,
                          const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t taps = s.taps(), groups = s.groups(), out_per_group = s.out_depth_per_group();
  // The table by weight code: by_weight[(w << 8) | a] = lut[(a << 8) | w].
  std::vector<uint16_t> by_weight(kLutEntries);
  for (int a = 0; a < 256; ++a)
    for (int w = 0; w < 256; ++w) by_weight[(w << 8) | a] = conv.lut[(a << 8) | w];
  const int64_t chunks = (pixels + kColumnPixels - 1) / kColumnPixels;
  const int64_t cost = kColumnPixels * taps * (s.out_depth + groups);
  parallel_for(chunks, cost, [&](int64_t begin, int64_t end) {
    ColumnOperands ops;
    ops.codes.resize(static_cast<size_t>(taps * kColumnPixels));
    ops.bit6.resize(static_cast<size_t>(taps * kColumnBlocks));
    ops.bit7.resize(ops.bit6.size());
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * kColumnPixels;
      const int valid = static_cast<int>(std::min<int64_t>(kColumnPixels, pixels - first));
      for (int64_t g = 0; g < groups; ++g) {
        GatherColumns(conv, g, pixel_begin + first, valid, &ops, act_sum + first * groups);
        ColumnMasks(&ops, taps);
        for (int64_t co = g * out_per_group; co < (g + 1) * out_per_group; ++co) {
          LookupColumns(ops, conv.filter + co * taps, taps, by_weight.data(), valid, acc + first * s.out_depth + co,
                        s.out_depth);
        }
      }
    }
  });
}

enum class CpuPath { kColumns, kRows, kPortable };

// The row permute path makes 64 channels' lookups per row: with half of that or fewer, the column
// path wastes less (measured: 32 channels 1.4x faster). Both sum in 32-bit lanes: taps * 65535 < 2^31.
CpuPath ChooseCpuPath(const ConvShape& s, CpuIsa isa) {
  if (isa != CpuIsa::kBest || !HasAvx512Bw() || s.taps() >= 32768) return CpuPath::kPortable;
  return s.out_depth_per_group() <= kPermuteChannels / 2 ? CpuPath::kColumns : CpuPath::kRows;
}

}  // namespace

const char* CpuKernelName(const ConvShape& shape, CpuIsa isa) {
  switch (ChooseCpuPath(shape, isa)) {
    case CpuPath::kColumns: return "avx512-columns";
    case CpuPath::kRows: return "avx512-rows";
    default: return "portable";
  }
}

void CpuConvAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixel_end,
                       const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum, CpuIsa isa) {
  const ConvShape& s = conv.shape;
  const int64_t pixels = pixel_end - pixel_begin;
  if (pixels <= 0) return;
  const int64_t taps = s.taps();
  const int64_t groups = s.groups();
  const int64_t out_per_group = s.out_depth_per_group();
  const int64_t blocks = (pixels + kPixels - 1) / kPixels;
  const int64_t cost_per_block = kPixels * taps * s.out_depth + kPixels * taps * groups;

  const CpuPath path = ChooseCpuPath(s, isa);
  if (path == CpuPath::kColumns) {
    ColumnPathAccumulate(conv, pixel_begin, pixels, parallel_for, acc, act_sum);
    return;
  }
  const bool permute = path == CpuPath::kRows;
  const int64_t padded = (out_per_group + kPermuteChannels - 1) / kPermuteChannels * kPermuteChannels;
  std::vector<uint8_t> weights_by_tap;  // [group][tap][padded], zero beyond out_per_group
  if (permute) {
    weights_by_tap.assign(static_cast<size_t>(groups * taps * padded), 0);
    for (int64_t co = 0; co < s.out_depth; ++co) {
      const int64_t g = co / out_per_group, j = co % out_per_group;
      for (int64_t t = 0; t < taps; ++t) {
        weights_by_tap[(g * taps + t) * padded + j] = conv.filter[co * taps + t];
      }
    }
  }

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
      if (permute) {
        for (int64_t g = 0; g < groups; ++g) {
          const uint16_t* rows[kPixels];
          int64_t* out[kPixels];
          for (int i = 0; i < kPixels; ++i) {
            rows[i] = &patch[(i * groups + g) * taps];
            // A repeated last pixel (short block) writes the same values twice: harmless.
            out[i] = acc + pixel[i] * s.out_depth + g * out_per_group;
          }
          for (int i = 0; i < kPixels; i += kPermutePixels) {
            LookupPixelsPermute<kPermutePixels>(rows + i, &weights_by_tap[g * taps * padded], taps,
                                                out_per_group, padded, conv.lut, out + i);
          }
        }
        continue;
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
