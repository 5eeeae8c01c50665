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
// instructions per tap instead of about 280. Measured 4x the scalar loop on one Zen 4 core (with
// AVX-512 VBMI, byte planes of the row do better still: see LookupPixelsVbmi). Groups
// with few output channels take the column path instead (see there), which turns the permute around.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"
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

// acc[i][co] = sum_t lut[rows[i][t] + weights[t][co]] for NP pixels and co < channels, weights
// laid out [tap][padded] with `padded` a multiple of kPermuteChannels; acc[i] points at pixel i's
// channels. The pixels share each tap's weight codes and masks, so the weight matrix streams through
// the cache once per NP pixels. Requires taps * 65535 < 2^31 (int32 lanes).
template <int NP>
TFAPPROX_AVX512BW void LookupPixelsPermute(
    const uint16_t* const* rows, const uint8_t* weights, int64_t taps, int64_t channels,
    int64_t padded, const uint16_t* lut, int64_t* const* acc) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t c0 = 0; c0 < channels; c0 += kPermuteChannels) {
    // unpacklo/hi widen words {0-3, 8-11, ...} and {4-7, 12-15, ...} of each 32-channel half:
    // sums[i][2b] and sums[i][2b + 1] hold half b in that interleaved order, undone at the store.
    __m512i sums[NP][4];
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i)
#pragma GCC unroll 4
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
#pragma GCC unroll 4
      for (int i = 0; i < NP; ++i) {
        const __m512i* row = reinterpret_cast<const __m512i*>(lut + rows[i][t]);
        __m512i r[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) r[k] = _mm512_loadu_si512(row + k);
#pragma GCC unroll 2
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

// GCC 12.2 takes the undefined pass-through operands inside its own AVX-512 intrinsics for
// uninitialized variables once inlined here (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The column path, for groups with few output channels (the 16-channel layers of small networks; with
// VBMI, up to 127: see ChooseCpuPath), where a table row's 256 products would feed too few lookups. It turns the permute around: the
// column of one weight code (the products of every activation code with it, 512 bytes) sits in
// eight registers and permutes look it up for 64 pixels at a time. A column serves all
// kColumnPixels pixels of a chunk before the next tap, so a lookup costs well under one instruction
// whatever the channel count.
//
// With AVX-512 VBMI the column is split into byte planes (the low and the high byte of each
// product) and vpermi2b looks up 64 bytes at once: per 64 pixels and tap, 4 permutes give both
// planes, against 8 vpermi2w and 6 blends for the same lookups in words (without VBMI, 32 pixels'
// zero-extended codes per vpermi2w). Both kernels read the same operands: the chunk's codes, gathered
// once for all groups and transposed so that one tap's codes for 64 pixels fill a vector, then reused
// by every output channel. (The unroll pragmas: without them GCC -O2 keeps the loops over small
// register arrays, and the arrays in memory.)
constexpr int kColumnLanes = 64;   // pixels per vector of codes (a byte each)
constexpr int kColumnBlocks = 4;   // vectors of codes per column load (3 and 4 measured best)
constexpr int kColumnPixels = kColumnLanes * kColumnBlocks;
constexpr int kColumnBytes = 512;  // one column: 256 uint16, or a 256-byte plane of each byte

// 64 bytes, for aligned buffers (std::allocator honours alignas since C++17).
struct alignas(64) Line {
  uint8_t bytes[64];
};

// Transposes a 64 x 64 tile of bytes: byte r of the vector stored at out + order[t] * out_stride is
// rows[r][t]. Each group of 8 rows goes through three rounds of byte, word and dword unpacks, which
// leave in register m the quadwords (the 8 rows' bytes t) of t = 16L + 2m and 16L + 2m + 1 in its
// 128-bit lane L; an 8 x 8 quadword transpose across the 8 groups then gives each t its vector.
// About 11 instructions per 64 bytes.
TFAPPROX_AVX512BW void TransposeTile(const uint8_t* const* rows, const int32_t* order, uint8_t* out,
                                     int64_t out_stride) {
  __m512i by_pair[8][8];  // [m][group]
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q) {
    __m512i x[8], y[8], z[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) x[r] = _mm512_loadu_si512(rows[8 * q + r]);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {  // bytes of rows 2k, 2k + 1: t = 16L + 0-7 and 8-15
      y[k] = _mm512_unpacklo_epi8(x[2 * k], x[2 * k + 1]);
      y[k + 4] = _mm512_unpackhi_epi8(x[2 * k], x[2 * k + 1]);
    }
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) {  // words of rows 4k..4k+3: t = 16L + 0-3, 4-7, 8-11, 12-15
      z[4 * k + 0] = _mm512_unpacklo_epi16(y[2 * k], y[2 * k + 1]);
      z[4 * k + 1] = _mm512_unpackhi_epi16(y[2 * k], y[2 * k + 1]);
      z[4 * k + 2] = _mm512_unpacklo_epi16(y[2 * k + 4], y[2 * k + 5]);
      z[4 * k + 3] = _mm512_unpackhi_epi16(y[2 * k + 4], y[2 * k + 5]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {  // dwords of rows 0-3 and 4-7: t = 16L + 4k + {0, 1}, {2, 3}
      by_pair[2 * k][q] = _mm512_unpacklo_epi32(z[k], z[k + 4]);
      by_pair[2 * k + 1][q] = _mm512_unpackhi_epi32(z[k], z[k + 4]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) {
    // Quadword i of by_pair[m][q] is t = 16 (i / 2) + 2m + i % 2 of group q.
    __m512i u[8], v[8];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      u[k] = _mm512_unpacklo_epi64(by_pair[m][2 * k], by_pair[m][2 * k + 1]);      // even i
      u[k + 4] = _mm512_unpackhi_epi64(by_pair[m][2 * k], by_pair[m][2 * k + 1]);  // odd i
    }
#pragma GCC unroll 2
    for (int e = 0; e < 8; e += 4) {  // 4 x 4 transposes of 128-bit lanes
      v[e + 0] = _mm512_shuffle_i64x2(u[e + 0], u[e + 1], 0x88);
      v[e + 1] = _mm512_shuffle_i64x2(u[e + 0], u[e + 1], 0xdd);
      v[e + 2] = _mm512_shuffle_i64x2(u[e + 2], u[e + 3], 0x88);
      v[e + 3] = _mm512_shuffle_i64x2(u[e + 2], u[e + 3], 0xdd);
      u[e + 0] = _mm512_shuffle_i64x2(v[e + 0], v[e + 2], 0x88);  // lane 0
      u[e + 2] = _mm512_shuffle_i64x2(v[e + 0], v[e + 2], 0xdd);  // lane 2
      u[e + 1] = _mm512_shuffle_i64x2(v[e + 1], v[e + 3], 0x88);  // lane 1
      u[e + 3] = _mm512_shuffle_i64x2(v[e + 1], v[e + 3], 0xdd);  // lane 3
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {  // u[4e + L]: t = 16L + 2m + e
      _mm512_storeu_si512(out + order[16 * (i % 4) + 2 * m + i / 4] * out_stride, u[i]);
    }
  }
}

// A column of the byte planes' table, rewritten as its 256 uint16 products.
TFAPPROX_AVX512BW void PlanesToWords(uint8_t* column) {
  __m512i words[8];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {
    const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(column + 32 * k));
    const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(column + 256 + 32 * k));
    words[k] = _mm512_or_si512(_mm512_cvtepu8_epi16(lo), _mm512_slli_epi16(_mm512_cvtepu8_epi16(hi), 8));
  }
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) _mm512_store_si512(column + 64 * k, words[k]);
}

// The table by weight code, a kColumnBytes column per code: for VBMI, the low bytes of the products
// of every activation code a with w at [w * 512 + a] and their high bytes at [w * 512 + 256 + a];
// otherwise the uint16 products at [w * 256 + a]. Built on every call (the table may differ), so by
// 64 x 64 transposes: some 10 us, where an element at a time took 80.
std::vector<Line> ColumnTable(const uint16_t* lut, bool planes) {
  std::vector<uint8_t> split(2 * kLutEntries);  // the table's low bytes as it is, then its high bytes
  for (int i = 0; i < kLutEntries; ++i) {
    split[i] = static_cast<uint8_t>(lut[i]);
    split[kLutEntries + i] = static_cast<uint8_t>(lut[i] >> 8);
  }
  std::vector<Line> table(kLutEntries * 2 / sizeof(Line));
  uint8_t* bytes = reinterpret_cast<uint8_t*>(table.data());
  int32_t in_order[64];
  for (int t = 0; t < 64; ++t) in_order[t] = t;
  for (int plane = 0; plane < 2; ++plane) {
    for (int a0 = 0; a0 < 256; a0 += 64) {
      for (int w0 = 0; w0 < 256; w0 += 64) {
        const uint8_t* rows[64];
        for (int r = 0; r < 64; ++r) rows[r] = &split[plane * kLutEntries + (a0 + r) * 256 + w0];
        TransposeTile(rows, in_order, bytes + w0 * kColumnBytes + plane * 256 + a0, kColumnBytes);
      }
    }
  }
  if (!planes) {
    for (int w = 0; w < 256; ++w) PlanesToWords(bytes + w * kColumnBytes);
  }
  return table;
}

// A thread's operands for one chunk. Each pixel's patch (every group's taps, kh x kw x in_depth
// codes as the input holds them) is copied into a row of `patch`, then the rows are transposed 64 x
// 64 into `codes`, where one tap's codes for a block of 64 pixels fill a vector, group by group
// (ColumnOrder). Lane order: byte 2j of block b's vector holds pixel 64b + j and byte 2j + 1 pixel
// 64b + 32 + j, the order in which the lookups' sums come out of their 16- or 32-bit lanes.
struct ColumnOperands {
  struct Run {
    const uint8_t* in;  // nullptr: padding, the zero code
    int64_t length;
  };

  explicit ColumnOperands(const ConvShape& s)
      : width(s.filter_h * s.filter_w * s.in_depth),
        tiles((width + 63) / 64),
        stride(tiles * 64 + 64),  // slack for CopyRuns' whole-vector stores
        patch(static_cast<size_t>(kColumnPixels * stride / 64)),
        codes(static_cast<size_t>(tiles * 64 * kColumnBlocks)),
        bit6(codes.size()),
        bit7(codes.size()) {
    runs.reserve(static_cast<size_t>(s.filter_h * s.filter_w));
  }
  uint8_t* Row(int i) { return reinterpret_cast<uint8_t*>(patch.data()) + i * stride; }
  const uint8_t* Codes(int64_t k, int b) const { return codes[k * kColumnBlocks + b].bytes; }

  int64_t width, tiles, stride;
  std::vector<Line> patch;           // [kColumnPixels][stride]
  std::vector<Line> codes;           // [tiles * 64][kColumnBlocks]
  std::vector<uint64_t> bit6, bit7;  // bits 6 and 7 of each vector of codes
  std::vector<Run> runs;             // of the pixel being gathered
};

// Pixel p's patch, every group's taps, as runs: taps adjacent in the input (a filter row, unpadded and
// undilated) or all padded join one run.
void FindRuns(const QuantizedConv& conv, int64_t p, std::vector<ColumnOperands::Run>* runs) {
  const int64_t depth = conv.shape.in_depth;
  runs->clear();
  WalkPatch(conv, p, 0, [&](const uint8_t* in) {
    if (!runs->empty()) {
      ColumnOperands::Run& last = runs->back();
      if (in == nullptr ? last.in == nullptr : last.in != nullptr && in == last.in + last.length) {
        last.length += depth;
        return;
      }
    }
    runs->push_back({in, depth});
  });
}

// Copies the runs' codes into `row` and returns their sum. Whole 64-byte stores: up to 63 bytes past
// the patch are overwritten (the next run's place, or the row's slack).
TFAPPROX_AVX512BW inline int64_t CopyRuns(const std::vector<ColumnOperands::Run>& runs, uint8_t zero_code,
                                          uint8_t* row) {
  const __m512i zero = _mm512_setzero_si512(), padding = _mm512_set1_epi8(static_cast<char>(zero_code));
  __m512i sum = zero;
  for (const ColumnOperands::Run& run : runs) {
    for (int64_t k = 0; k < run.length; k += 64) {
      const int64_t n = run.length - k;
      const __mmask64 m = n >= 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1;
      const __m512i v =
          run.in != nullptr ? _mm512_maskz_loadu_epi8(m, run.in + k) : _mm512_maskz_mov_epi8(m, padding);
      _mm512_storeu_si512(row + k, v);
      sum = _mm512_add_epi64(sum, _mm512_sad_epu8(v, zero));
    }
    row += run.length;
  }
  return _mm512_reduce_add_epi64(sum);
}

// Where the transposes put a patch's codes, so that each group's taps are contiguous: code
// (kh * filter_w + kw) * in_depth + g * filter_depth + ci, tap t = (kh * filter_w + kw) * filter_depth
// + ci of group g, goes to g * taps + t (below 2^31: the filter has as many codes). The transposes'
// padding past the patch stays in place.
std::vector<int32_t> ColumnOrder(const ConvShape& s) {
  const int64_t width = s.filter_h * s.filter_w * s.in_depth;
  std::vector<int32_t> order(static_cast<size_t>((width + 63) / 64 * 64));
  for (int64_t k = 0; k < static_cast<int64_t>(order.size()); ++k) {
    const int64_t position = k / s.in_depth, g = k % s.in_depth / s.filter_depth, ci = k % s.filter_depth;
    order[k] = static_cast<int32_t>(k < width ? g * s.taps() + position * s.filter_depth + ci : k);
  }
  return order;
}

// Bits 6 and 7 of the vectors of codes (which of the column's parts the permutes read), computed
// once for all channels.
TFAPPROX_AVX512BW void ColumnMasks(ColumnOperands* ops) {
  for (int64_t k = 0; k < ops->width * kColumnBlocks; ++k) {
    const __m512i c = _mm512_load_si512(ops->codes[k].bytes);
    ops->bit6[k] = _mm512_test_epi8_mask(c, _mm512_set1_epi8(64));
    ops->bit7[k] = _mm512_movepi8_mask(c);
  }
}

// Gathers the codes of the chunk's pixels first .. first + valid - 1 (the lanes of missing pixels
// keep stale codes, whose sums are never stored); with one group, also each pixel's code sum.
// Consecutive pixels of an output row whose patches lie inside the input across its width (all but
// a few at the row's ends) read the same runs moved by stride_w input pixels: the patch is walked
// anew (divisions and a bounds check per tap, costlier than the copies) only where not.
TFAPPROX_AVX512BW void GatherColumns(const QuantizedConv& conv, int64_t first, int valid,
                                     const int32_t* order, ColumnOperands* ops, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  int64_t ow = first % s.out_w;
  bool movable = false;  // ops->runs are pixel i - 1's, whose patch was inside across the width
  for (int i = 0; i < valid; ++i, ow = ow + 1 == s.out_w ? 0 : ow + 1) {
    const int64_t iw = ow * s.stride_w - s.pad_left;
    const bool inside = iw >= 0 && iw + (s.filter_w - 1) * s.dilation_w < s.in_w;
    if (inside && movable && ow > 0) {
      for (ColumnOperands::Run& run : ops->runs) {
        if (run.in != nullptr) run.in += s.stride_w * s.in_depth;
      }
    } else {
      FindRuns(conv, first + i, &ops->runs);
    }
    movable = inside;
    const int64_t sum = CopyRuns(ops->runs, conv.input_zero_code, ops->Row(i));
    if (s.groups() == 1) act_sum[i] = sum;
  }
  for (int b = 0; b * kColumnLanes < valid; ++b) {
    for (int64_t tile = 0; tile < ops->tiles; ++tile) {
      const uint8_t* rows[kColumnLanes];
      for (int j = 0; j < 32; ++j) {
        rows[2 * j] = ops->Row(b * kColumnLanes + j) + tile * 64;
        rows[2 * j + 1] = ops->Row(b * kColumnLanes + 32 + j) + tile * 64;
      }
      TransposeTile(rows, order + tile * 64, ops->codes[b].bytes, kColumnBlocks * 64);
    }
  }
  ColumnMasks(ops);
}

// The lookup kernels: sums[i] = sum_t lut[(codes[tap0 + t][i] << 8) | w[t]] for the chunk's pixels i
// and t < taps (a group's taps), in pixel order, as int32 (taps * 65535 < 2^31 on this path).
//
// Two pixels' bytes share a 16-bit lane (pixel j low, 32 + j high): adding the looked-up vector as
// words sums pixel j's bytes plus 256 times pixel 32 + j's (mod 2^16), and adding it shifted right by
// 8 sums pixel 32 + j's alone, so pixel j's sum is the difference. Cheaper than widening (one shift
// where two unpacks were) and exact while the sums fit 16 bits: the lanes are emptied every
// kPlaneTaps taps. The word kernel does the same with words in 32-bit lanes.
constexpr int64_t kPlaneTaps = 65535 / 255;

// sums[i] += lo[i] + 256 * hi[i] for 32 pixels, from the planes' 16-bit sums.
TFAPPROX_AVX512BW inline void AddPlanes(__m512i lo, __m512i hi, int32_t* sums) {
  const __m256i lo_half[2] = {_mm512_castsi512_si256(lo), _mm512_extracti64x4_epi64(lo, 1)};
  const __m256i hi_half[2] = {_mm512_castsi512_si256(hi), _mm512_extracti64x4_epi64(hi, 1)};
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    const __m512i sum = _mm512_add_epi32(_mm512_cvtepu16_epi32(lo_half[half]),
                                         _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi_half[half]), 8));
    int32_t* out = sums + 16 * half;
    _mm512_store_si512(out, _mm512_add_epi32(_mm512_load_si512(out), sum));
  }
}

TFAPPROX_AVX512VBMI void LookupColumnsVbmi(const ColumnOperands& ops, int64_t tap0, const uint8_t* w,
                                           int64_t taps, const Line* table, int32_t* sums) {
  std::fill_n(sums, kColumnPixels, 0);
  for (int64_t t0 = 0; t0 < taps; t0 += kPlaneTaps) {
    const int64_t t1 = std::min(taps, t0 + kPlaneTaps);
    __m512i acc[kColumnBlocks][4] = {};  // per plane: words as they are, and shifted right by 8
    for (int64_t t = t0; t < t1; ++t) {
      const Line* column = table + w[t] * (kColumnBytes / sizeof(Line));
      __m512i lo[4], hi[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        lo[q] = _mm512_load_si512(column[q].bytes);
        hi[q] = _mm512_load_si512(column[4 + q].bytes);
      }
#pragma GCC unroll 4
      for (int b = 0; b < kColumnBlocks; ++b) {
        const __m512i c = _mm512_load_si512(ops.Codes(tap0 + t, b));
        const __mmask64 high = ops.bit7[(tap0 + t) * kColumnBlocks + b];
        // Codes below 128 look up the first 128 entries; the others keep their code for the second
        // permute, into the last 128: no blend.
        __m512i l = _mm512_mask2_permutex2var_epi8(lo[0], c, ~high, lo[1]);
        __m512i h = _mm512_mask2_permutex2var_epi8(hi[0], c, ~high, hi[1]);
        l = _mm512_mask2_permutex2var_epi8(lo[2], l, high, lo[3]);
        h = _mm512_mask2_permutex2var_epi8(hi[2], h, high, hi[3]);
        acc[b][0] = _mm512_add_epi16(acc[b][0], l);
        acc[b][1] = _mm512_add_epi16(acc[b][1], _mm512_srli_epi16(l, 8));
        acc[b][2] = _mm512_add_epi16(acc[b][2], h);
        acc[b][3] = _mm512_add_epi16(acc[b][3], _mm512_srli_epi16(h, 8));
      }
    }
#pragma GCC unroll 4
    for (int b = 0; b < kColumnBlocks; ++b) {
      const __m512i lo_first = _mm512_sub_epi16(acc[b][0], _mm512_slli_epi16(acc[b][1], 8));
      const __m512i hi_first = _mm512_sub_epi16(acc[b][2], _mm512_slli_epi16(acc[b][3], 8));
      AddPlanes(lo_first, hi_first, sums + b * kColumnLanes);
      AddPlanes(acc[b][1], acc[b][3], sums + b * kColumnLanes + 32);
    }
  }
}

// Without VBMI: vpermi2w on 32 zero-extended codes, three blends on bits 6 and 7.
TFAPPROX_AVX512BW void LookupColumnsBw(const ColumnOperands& ops, int64_t tap0, const uint8_t* w,
                                       int64_t taps, const Line* table, int32_t* sums) {
  __m512i acc[kColumnBlocks][2][2] = {};  // [block][half]: words as they are, and shifted right by 16
  for (int64_t t = 0; t < taps; ++t) {
    const Line* column = table + w[t] * (kColumnBytes / sizeof(Line));
    __m512i r[8];
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) r[q] = _mm512_load_si512(column[q].bytes);
#pragma GCC unroll 4
    for (int b = 0; b < kColumnBlocks; ++b) {
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        const __m256i* bytes = reinterpret_cast<const __m256i*>(ops.Codes(tap0 + t, b) + 32 * half);
        const __m512i c = _mm512_cvtepu8_epi16(_mm256_load_si256(bytes));
        const __mmask32 b6 = static_cast<__mmask32>(ops.bit6[(tap0 + t) * kColumnBlocks + b] >> (32 * half));
        const __mmask32 b7 = static_cast<__mmask32>(ops.bit7[(tap0 + t) * kColumnBlocks + b] >> (32 * half));
        const __m512i q0 = _mm512_permutex2var_epi16(r[0], c, r[1]);
        const __m512i q1 = _mm512_permutex2var_epi16(r[2], c, r[3]);
        const __m512i q2 = _mm512_permutex2var_epi16(r[4], c, r[5]);
        const __m512i q3 = _mm512_permutex2var_epi16(r[6], c, r[7]);
        const __m512i v = _mm512_mask_blend_epi16(b7, _mm512_mask_blend_epi16(b6, q0, q1),
                                                  _mm512_mask_blend_epi16(b6, q2, q3));
        acc[b][half][0] = _mm512_add_epi32(acc[b][half][0], v);
        acc[b][half][1] = _mm512_add_epi32(acc[b][half][1], _mm512_srli_epi32(v, 16));
      }
    }
  }
  // Word 2k of a half's codes is pixel 16 half + k, word 2k + 1 pixel 32 + 16 half + k.
#pragma GCC unroll 4
  for (int b = 0; b < kColumnBlocks; ++b) {
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      int32_t* out = sums + b * kColumnLanes + 16 * half;
      _mm512_store_si512(out, _mm512_sub_epi32(acc[b][half][0], _mm512_slli_epi32(acc[b][half][1], 16)));
      _mm512_store_si512(out + 32, acc[b][half][1]);
    }
  }
}

// One output channel's sums for the pixels of a chunk.
struct alignas(64) ChannelSums {
  int32_t pixel[kColumnPixels];
};

// out[i * stride + j] = sums[j].pixel[i] for the chunk's valid pixels i and the channels j: 16 x 16
// transposes, so that a pixel's channels are stored together as vectors (channel by channel, the
// strided scalar stores took a seventh of the time).
TFAPPROX_AVX512BW void StoreSums(const ChannelSums* sums, int64_t channels, int valid, int64_t* out,
                                 int64_t stride) {
  for (int64_t j0 = 0; j0 < channels; j0 += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, channels - j0));
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    for (int i0 = 0; i0 < valid; i0 += 16) {
      __m512i r[16], u[16];  // r[k]: channel j0 + k of pixels i0..i0+15
#pragma GCC unroll 16
      for (int k = 0; k < 16; ++k) {
        r[k] = k < n ? _mm512_load_si512(sums[j0 + k].pixel + i0) : _mm512_setzero_si512();
      }
#pragma GCC unroll 8
      for (int k = 0; k < 16; k += 2) {
        u[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
        u[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
      }
#pragma GCC unroll 4
      for (int k = 0; k < 16; k += 4) {  // r[k + c], 128-bit lane L: channels k..k+3 of pixel 4L + c
        r[k] = _mm512_unpacklo_epi64(u[k], u[k + 2]);
        r[k + 1] = _mm512_unpackhi_epi64(u[k], u[k + 2]);
        r[k + 2] = _mm512_unpacklo_epi64(u[k + 1], u[k + 3]);
        r[k + 3] = _mm512_unpackhi_epi64(u[k + 1], u[k + 3]);
      }
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {  // then 4 x 4 transposes of 128-bit lanes: r[p], pixel p
        u[c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
        u[4 + c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
        u[8 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        u[12 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(u[c], u[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(u[c], u[8 + c], 0xdd);
        r[4 + c] = _mm512_shuffle_i32x4(u[4 + c], u[12 + c], 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(u[4 + c], u[12 + c], 0xdd);
      }
      for (int p = 0; p < 16 && i0 + p < valid; ++p) {
        int64_t* o = out + (i0 + p) * stride + j0;
        _mm512_mask_storeu_epi64(o, static_cast<__mmask8>(mask),
                                 _mm512_cvtepi32_epi64(_mm512_castsi512_si256(r[p])));
        _mm512_mask_storeu_epi64(o + 8, static_cast<__mmask8>(mask >> 8),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(r[p], 1)));
      }
    }
  }
}

void ColumnPathAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixels, bool vbmi,
                          const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t taps = s.taps(), groups = s.groups(), out_per_group = s.out_depth_per_group();
  const auto lookup = vbmi ? LookupColumnsVbmi : LookupColumnsBw;
  const std::vector<Line> table = ColumnTable(conv.lut, vbmi);
  const std::vector<int32_t> order = ColumnOrder(s);
  // With several groups, their code sums are lookups too: in a table whose every column is the
  // identity (lut[(a << 8) | w] = a), with any weight codes.
  std::vector<Line> identity;
  const std::vector<uint8_t> any_weights(static_cast<size_t>(taps), 0);
  if (groups > 1) {
    std::vector<uint16_t> codes(kLutEntries);
    for (int i = 0; i < kLutEntries; ++i) codes[i] = static_cast<uint16_t>(i >> 8);
    identity = ColumnTable(codes.data(), vbmi);
  }
  // Sums are stored for whole groups of at least 16 channels at a time (StoreSums' vectors).
  const int64_t groups_per_store = (16 + out_per_group - 1) / out_per_group;
  const int64_t chunks = (pixels + kColumnPixels - 1) / kColumnPixels;
  const int64_t cost = kColumnPixels * taps * (s.out_depth + groups);
  parallel_for(chunks, cost, [&](int64_t begin, int64_t end) {
    ColumnOperands ops(s);
    std::vector<ChannelSums> sums(static_cast<size_t>(std::min(groups, groups_per_store) * out_per_group));
    ChannelSums code_sums;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * kColumnPixels;
      const int valid = static_cast<int>(std::min<int64_t>(kColumnPixels, pixels - first));
      GatherColumns(conv, pixel_begin + first, valid, order.data(), &ops, act_sum + first);
      for (int64_t g = 0; g < groups; ++g) {
        if (groups > 1) {
          lookup(ops, g * taps, any_weights.data(), taps, identity.data(), code_sums.pixel);
          for (int i = 0; i < valid; ++i) act_sum[(first + i) * groups + g] = code_sums.pixel[i];
        }
        const int64_t g0 = g - g % groups_per_store;  // the first group of those stored together
        for (int64_t j = 0; j < out_per_group; ++j) {
          const uint8_t* w = conv.filter + (g * out_per_group + j) * taps;
          lookup(ops, g * taps, w, taps, table.data(), sums[(g - g0) * out_per_group + j].pixel);
        }
        if (g - g0 == groups_per_store - 1 || g == groups - 1) {
          StoreSums(sums.data(), (g - g0 + 1) * out_per_group, valid,
                    acc + first * s.out_depth + g0 * out_per_group, s.out_depth);
        }
      }
    }
  });
}

// GatherPatch with AVX-512BW for the row paths, 32 codes at a time (the scalar loop took over a tenth
// of the time of a 3x3 64-channel layer on the VBMI row path). CopyTap keeps the intrinsics out of
// WalkPatch's lambda, which does not take the function's target.
TFAPPROX_AVX512BW int64_t CopyTap(const uint8_t* in, int64_t depth, uint8_t zero_code, uint16_t* out) {
  const __m512i zero = _mm512_setzero_si512(), padding = _mm512_set1_epi8(static_cast<char>(zero_code));
  __m512i sum = zero;
  for (int64_t ci = 0; ci < depth; ci += 32) {
    const int64_t n = depth - ci;
    const __mmask32 m = n >= 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1;
    const __m512i codes = in != nullptr ? _mm512_maskz_loadu_epi8(m, in + ci) : _mm512_maskz_mov_epi8(m, padding);
    sum = _mm512_add_epi64(sum, _mm512_sad_epu8(codes, zero));
    const __m512i row = _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(codes)), 8);
    _mm512_mask_storeu_epi16(out + ci, m, row);
  }
  return _mm512_reduce_add_epi64(sum);
}

void GatherPatchBw(const QuantizedConv& conv, int64_t p, uint16_t* rows, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  for (int64_t g = 0; g < s.groups(); ++g) {
    uint16_t* out = rows + g * s.taps();
    int64_t sum = 0;
    WalkPatch(conv, p, g, [&](const uint8_t* in) {
      sum += CopyTap(in, s.filter_depth, conv.input_zero_code, out);
      out += s.filter_depth;
    });
    act_sum[g] = sum;
  }
}

// The row path with AVX-512 VBMI (groups of more than 32 output channels): each table row split into
// byte planes, the low and the high byte of its 256 products (row a at planes + a * 512, the low
// plane first), so that vpermi2b looks up 64 weight codes at once: per pixel, tap and 64 channels, 2
// permutes per plane (the second, masked, for codes from 128, as in the column path: no blend)
// against 8 vpermi2w, 6 blends and 4 unpacks in words. The weight codes are the bytes of
// weights_by_tap as they are, and bit 7's mask is shared by the pixels of a pass. The sums of bytes go
// two per 16-bit lane (channel 2j low, 2j + 1 high), emptied into int32 every kPlaneTaps taps, as the
// column path's. Rows need no transpose (only the table's bytes deinterleaved, some microseconds per
// call). Two pixels x 128 channels per pass (25 vector registers) measured best: 1.5-2.5x the word
// kernel on Zen 4 (3x3 layers of 64 and 128 channels, 1x1 of 256), exact for any table.
constexpr int kVbmiRowPixels = 2;    // pixels sharing each tap's weight codes (2 beat 1 and 4)
constexpr int kVbmiRowVectors = 2;   // vectors of 64 channels sharing each row's loads (2 beat 1 and 4)
static_assert(kPixels % kVbmiRowPixels == 0, "a block splits into VBMI row blocks");

TFAPPROX_AVX512VBMI std::vector<Line> RowPlanes(const uint16_t* lut) {
  std::vector<Line> planes(kLutEntries * 2 / sizeof(Line));
  alignas(64) uint8_t even[64];
  for (int k = 0; k < 64; ++k) even[k] = static_cast<uint8_t>(2 * k);
  const __m512i lo_index = _mm512_load_si512(even);
  const __m512i hi_index = _mm512_add_epi8(lo_index, _mm512_set1_epi8(1));
  for (int a = 0; a < 256; ++a) {
    const __m512i* row = reinterpret_cast<const __m512i*>(lut + a * 256);
    Line* out = planes.data() + a * 8;
    for (int q = 0; q < 4; ++q) {
      const __m512i v0 = _mm512_loadu_si512(row + 2 * q), v1 = _mm512_loadu_si512(row + 2 * q + 1);
      _mm512_store_si512(out[q].bytes, _mm512_permutex2var_epi8(v0, lo_index, v1));
      _mm512_store_si512(out[4 + q].bytes, _mm512_permutex2var_epi8(v0, hi_index, v1));
    }
  }
  return planes;
}

// One pass of LookupPixelsVbmi: channels c0 .. c0 + 64 CV - 1 (those below `channels` stored).
template <int NP, int CV>
TFAPPROX_AVX512VBMI inline void LookupRowsVbmiPass(const uint16_t* const* rows, const uint8_t* w,
                                                   int64_t taps, int64_t c0, int64_t channels,
                                                   int64_t padded, const uint8_t* planes,
                                                   int64_t* const* acc) {
  // tot[i][v]: channels 2j (0, 1: j < 16, j >= 16) and 2j + 1 (2, 3) of vector v.
  __m512i tot[NP][CV][4] = {};
  for (int64_t t0 = 0; t0 < taps; t0 += kPlaneTaps) {
    const int64_t t1 = std::min(taps, t0 + kPlaneTaps);
    __m512i sum[NP][CV][4] = {};  // per plane: words as they are, and shifted right by 8
    const uint8_t* wt = w + t0 * padded + c0;
    for (int64_t t = t0; t < t1; ++t, wt += padded) {
      __m512i c[CV];
      __mmask64 high[CV];
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        c[v] = _mm512_loadu_si512(wt + 64 * v);
        high[v] = _mm512_movepi8_mask(c[v]);
      }
#pragma GCC unroll 4
      for (int i = 0; i < NP; ++i) {
        const __m512i* row = reinterpret_cast<const __m512i*>(planes + 2 * int64_t{rows[i][t]});
        __m512i lo[4], hi[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          lo[q] = _mm512_load_si512(row + q);
          hi[q] = _mm512_load_si512(row + 4 + q);
        }
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) {
          __m512i l = _mm512_mask2_permutex2var_epi8(lo[0], c[v], ~high[v], lo[1]);
          __m512i h = _mm512_mask2_permutex2var_epi8(hi[0], c[v], ~high[v], hi[1]);
          l = _mm512_mask2_permutex2var_epi8(lo[2], l, high[v], lo[3]);
          h = _mm512_mask2_permutex2var_epi8(hi[2], h, high[v], hi[3]);
          sum[i][v][0] = _mm512_add_epi16(sum[i][v][0], l);
          sum[i][v][1] = _mm512_add_epi16(sum[i][v][1], _mm512_srli_epi16(l, 8));
          sum[i][v][2] = _mm512_add_epi16(sum[i][v][2], h);
          sum[i][v][3] = _mm512_add_epi16(sum[i][v][3], _mm512_srli_epi16(h, 8));
        }
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        const __m512i* s = sum[i][v];
        const __m512i plane[2][2] = {  // [parity][plane]: channels 2j, then 2j + 1
            {_mm512_sub_epi16(s[0], _mm512_slli_epi16(s[1], 8)),
             _mm512_sub_epi16(s[2], _mm512_slli_epi16(s[3], 8))},
            {s[1], s[3]}};
#pragma GCC unroll 2
        for (int parity = 0; parity < 2; ++parity) {
#pragma GCC unroll 2
          for (int half = 0; half < 2; ++half) {
            const __m512i lo = plane[parity][0], hi = plane[parity][1];
            const __m256i l = half ? _mm512_extracti64x4_epi64(lo, 1) : _mm512_castsi512_si256(lo);
            const __m256i h = half ? _mm512_extracti64x4_epi64(hi, 1) : _mm512_castsi512_si256(hi);
            const __m512i x =
                _mm512_add_epi32(_mm512_cvtepu16_epi32(l), _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 8));
            tot[i][v][2 * parity + half] = _mm512_add_epi32(tot[i][v][2 * parity + half], x);
          }
        }
      }
    }
  }
  alignas(64) int32_t interleave[2][16];
  for (int k = 0; k < 8; ++k) {
    interleave[0][2 * k] = k, interleave[0][2 * k + 1] = 16 + k;
    interleave[1][2 * k] = 8 + k, interleave[1][2 * k + 1] = 24 + k;
  }
  const __m512i index[2] = {_mm512_load_si512(interleave[0]), _mm512_load_si512(interleave[1])};
  for (int i = 0; i < NP; ++i) {
    for (int v = 0; v < CV; ++v) {
      for (int k = 0; k < 4; ++k) {  // channels 16k..16k+15 of the vector: tot half k / 2
        const int64_t co = c0 + 64 * v + 16 * k;
        if (co >= channels) break;
        const __m512i x = _mm512_permutex2var_epi32(tot[i][v][k / 2], index[k % 2], tot[i][v][2 + k / 2]);
        const int64_t n = std::min<int64_t>(16, channels - co);
        const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
        _mm512_mask_storeu_epi64(acc[i] + co, static_cast<__mmask8>(m),
                                 _mm512_cvtepi32_epi64(_mm512_castsi512_si256(x)));
        _mm512_mask_storeu_epi64(acc[i] + co + 8, static_cast<__mmask8>(m >> 8),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(x, 1)));
      }
    }
  }
}

// As LookupPixelsPermute (the same operands), from the byte planes.
template <int NP>
TFAPPROX_AVX512VBMI void LookupPixelsVbmi(const uint16_t* const* rows, const uint8_t* weights,
                                          int64_t taps, int64_t channels, int64_t padded,
                                          const uint8_t* planes, int64_t* const* acc) {
  int64_t c0 = 0;
  for (; c0 + kVbmiRowVectors * kPermuteChannels <= padded; c0 += kVbmiRowVectors * kPermuteChannels) {
    LookupRowsVbmiPass<NP, kVbmiRowVectors>(rows, weights, taps, c0, channels, padded, planes, acc);
  }
  for (; c0 < padded; c0 += kPermuteChannels) {
    LookupRowsVbmiPass<NP, 1>(rows, weights, taps, c0, channels, padded, planes, acc);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

enum class CpuPath { kColumnsVbmi, kColumns, kRowsVbmi, kRows, kPortable };

// The row permute path makes 64 channels' lookups per row: with half of that or fewer, the column
// path wastes less (measured: 32 channels 1.4x faster). With VBMI, the row kernel is at its best in
// passes of kVbmiRowVectors x 64 channels, and below that the column kernel beats it (measured on
// Zen 4, batch 128, one thread: 64 channels per group 1.2-1.25x faster at 32, 64, 288 and 576 taps,
// the 1x1 stride-2 32 -> 64 of ResNet-20 included; 96 channels 1.2-1.3x; at 128 they are even, and
// rows ahead at 64 taps): the column path up to 127 channels per group. Both sum in 32-bit lanes:
// taps * 65535 < 2^31. The byte-plane kernels of both paths need VBMI; without it, the word kernels
// (measured 1.5-2x slower on columns, 1.5-2.5x on rows), which keep the threshold of 32 channels.
CpuPath ChooseCpuPath(const ConvShape& s, CpuIsa isa) {
  if (isa == CpuIsa::kPortable || !HasAvx512Bw() || s.taps() >= 32768) return CpuPath::kPortable;
  if (isa == CpuIsa::kBest && HasAvx512Vbmi()) {
    const bool rows = s.out_depth_per_group() >= kVbmiRowVectors * kPermuteChannels;
    return rows ? CpuPath::kRowsVbmi : CpuPath::kColumnsVbmi;
  }
  return s.out_depth_per_group() > kPermuteChannels / 2 ? CpuPath::kRows : CpuPath::kColumns;
}

}  // namespace

const char* CpuKernelName(const ConvShape& shape, CpuIsa isa) {
  switch (ChooseCpuPath(shape, isa)) {
    case CpuPath::kColumnsVbmi: return "avx512vbmi-columns";
    case CpuPath::kColumns: return "avx512-columns";
    case CpuPath::kRowsVbmi: return "avx512vbmi-rows";
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
  if (path == CpuPath::kColumnsVbmi || path == CpuPath::kColumns) {
    const bool vbmi = path == CpuPath::kColumnsVbmi;
    ColumnPathAccumulate(conv, pixel_begin, pixels, vbmi, parallel_for, acc, act_sum);
    return;
  }
  const bool vbmi_rows = path == CpuPath::kRowsVbmi;
  const bool permute = path == CpuPath::kRows || vbmi_rows;
  std::vector<Line> planes;
  if (vbmi_rows) planes = RowPlanes(conv.lut);
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
          (permute ? GatherPatchBw : GatherPatch)(conv, pixel_begin + pixel[i], &patch[i * groups * taps],
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
          if (vbmi_rows) {
            const uint8_t* bytes = reinterpret_cast<const uint8_t*>(planes.data());
            for (int i = 0; i < kPixels; i += kVbmiRowPixels) {
              LookupPixelsVbmi<kVbmiRowPixels>(rows + i, &weights_by_tap[g * taps * padded], taps,
                                               out_per_group, padded, bytes, out + i);
            }
            continue;
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

DequantizeRows::DequantizeRows(const std::vector<DequantizeTerms<float>>& terms, const int64_t* filter_sum) {
  for (size_t co = 0; co < terms.size(); ++co) {
    const DequantizeTerms<float>& t = terms[co];
    acc_scale.push_back(t.acc_scale);
    act_sum_scale.push_back(t.act_sum_scale);
    filter_term.push_back(t.filter_sum_scale * static_cast<float>(filter_sum[co] - t.filter_sum_offset));
    constant.push_back(t.constant);
    acc_offset.push_back(t.acc_offset);
    act_sum_offset.push_back(t.act_sum_offset);
  }
}

namespace {

// The scalar form of DequantizeTerms::operator(), the filter's term taken from DequantizeRows.
inline float DequantizeOne(const DequantizeRows& r, int64_t co, int64_t acc, int64_t act_sum) {
  return r.acc_scale[co] * static_cast<float>(acc - r.acc_offset[co]) +
         r.act_sum_scale[co] * static_cast<float>(act_sum - r.act_sum_offset[co]) + r.filter_term[co] + r.constant[co];
}

// Channels co .. co + n - 1 of `pixels` pixels, pixel p's sums at acc + p * stride, its outputs at
// out + p * stride and its code sum at act_sum[p * act_sum_stride]: the products and the three
// additions in DequantizeTerms' order, 16 channels a vector (vcvtqq2ps rounds as the scalar
// conversion does; a last partial vector masked, its lanes the same operations). Each vector of
// channels takes its terms into registers once for all the pixels (reloaded for each pixel, they
// cost as much as the arithmetic): callers pass a few pixels at a time, whose sums stay in cache.
TFAPPROX_AVX512DQ void DequantizeTileAvx512(const DequantizeRows& r, int64_t co, int64_t n, int64_t pixels,
                                            int64_t stride, const int64_t* acc, const int64_t* act_sum,
                                            int64_t act_sum_stride, float* out) {
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t c = co + j;
    const __mmask16 m = n - j >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __mmask8 m0 = static_cast<__mmask8>(m), m1 = static_cast<__mmask8>(m >> 8);
    const __m512 acc_scale = _mm512_maskz_loadu_ps(m, &r.acc_scale[c]);
    const __m512 act_sum_scale = _mm512_maskz_loadu_ps(m, &r.act_sum_scale[c]);
    const __m512 filter_term = _mm512_maskz_loadu_ps(m, &r.filter_term[c]);
    const __m512 constant = _mm512_maskz_loadu_ps(m, &r.constant[c]);
    const __m512i acc_offset[2] = {_mm512_maskz_loadu_epi64(m0, &r.acc_offset[c]),
                                   _mm512_maskz_loadu_epi64(m1, &r.acc_offset[c] + 8)};
    const __m512i act_sum_offset[2] = {_mm512_maskz_loadu_epi64(m0, &r.act_sum_offset[c]),
                                       _mm512_maskz_loadu_epi64(m1, &r.act_sum_offset[c] + 8)};
    for (int64_t p = 0; p < pixels; ++p) {
      const int64_t* a = acc + p * stride + j;
      const __m512i act = _mm512_set1_epi64(act_sum[p * act_sum_stride]);
      const __m256 acc_lo = _mm512_cvtepi64_ps(_mm512_sub_epi64(_mm512_maskz_loadu_epi64(m0, a), acc_offset[0]));
      const __m256 acc_hi = _mm512_cvtepi64_ps(_mm512_sub_epi64(_mm512_maskz_loadu_epi64(m1, a + 8), acc_offset[1]));
      const __m256 act_lo = _mm512_cvtepi64_ps(_mm512_sub_epi64(act, act_sum_offset[0]));
      const __m256 act_hi = _mm512_cvtepi64_ps(_mm512_sub_epi64(act, act_sum_offset[1]));
      const __m512 acc_value = _mm512_insertf32x8(_mm512_castps256_ps512(acc_lo), acc_hi, 1);
      const __m512 act_value = _mm512_insertf32x8(_mm512_castps256_ps512(act_lo), act_hi, 1);
      __m512 v = _mm512_add_ps(_mm512_mul_ps(acc_scale, acc_value), _mm512_mul_ps(act_sum_scale, act_value));
      v = _mm512_add_ps(v, filter_term);
      v = _mm512_add_ps(v, constant);
      _mm512_mask_storeu_ps(out + p * stride + j, m, v);
    }
  }
}

constexpr int64_t kDequantizeTilePixels = 16;

}  // namespace

void DequantizeRow(const DequantizeRows& rows, int64_t co, int64_t n, const int64_t* acc, int64_t act_sum, float* out,
                   bool portable) {
  if (!portable && HasAvx512Dq()) return DequantizeTileAvx512(rows, co, n, 1, n, acc, &act_sum, 1, out);
  for (int64_t j = 0; j < n; ++j) out[j] = DequantizeOne(rows, co + j, acc[j], act_sum);
}

void DequantizePixels(const DequantizeRows& rows, int64_t pixels, const int64_t* acc, const int64_t* act_sum,
                      float* out, bool portable) {
  const int64_t n = static_cast<int64_t>(rows.acc_scale.size());
  if (!portable && HasAvx512Dq()) {
    for (int64_t p = 0; p < pixels; p += kDequantizeTilePixels) {
      DequantizeTileAvx512(rows, 0, n, std::min(kDequantizeTilePixels, pixels - p), n, acc + p * n, act_sum + p, 1,
                           out + p * n);
    }
    return;
  }
  for (int64_t p = 0; p < pixels; ++p) DequantizeRow(rows, 0, n, acc + p * n, act_sum[p], out + p * n, true);
}

}  // namespace tfapprox
