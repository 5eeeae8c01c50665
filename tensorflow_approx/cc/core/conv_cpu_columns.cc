// The CPU kernel's column path (see ChooseCpuPath in conv_cpu.cc for when it runs).
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tensorflow_approx/cc/core/conv_cpu_internal.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace cpu_internal {
namespace {

// GCC 12.2 takes the undefined pass-through operands inside its own AVX-512 intrinsics for
// uninitialized variables once inlined here (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The column path, for groups with few output channels (the 16-channel layers of small networks; with
// VBMI, up to 127: see ChooseCpuPath), where a table row's 256 products would feed too few lookups. It
// turns the permute around: the column of one weight code (the products of every activation code with
// it, 512 bytes) sits in eight registers and permutes look it up for 64 pixels at a time. A column
// serves all kColumnPixels pixels of a chunk before the next tap, so a lookup costs well under one
// instruction whatever the channel count.
//
// With AVX-512 VBMI the column is split into byte planes (the low and the high byte of each
// product) and vpermi2b looks up 64 bytes at once: per 64 pixels and tap, 4 permutes give both
// planes, against 8 vpermi2w and 6 blends for the same lookups in words (without VBMI, 32 pixels'
// zero-extended codes per vpermi2w). Both kernels read the same operands: the chunk's codes, gathered
// once for all groups so that one tap's codes for 64 pixels fill a vector (ColumnOperands), then
// reused by every output channel. (The unroll pragmas: without them GCC -O2 keeps the loops over small
// register arrays, and the arrays in memory.)
constexpr int kColumnLanes = 64;   // pixels per vector of codes (a byte each)
constexpr int kColumnBlocks = 4;   // vectors of codes per column load (3 and 4 measured best)
constexpr int kColumnPixels = kColumnLanes * kColumnBlocks;
constexpr int kColumnBytes = 512;  // one column: 256 uint16, or a 256-byte plane of each byte


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

constexpr int kHalfLanes = kColumnLanes / 2;

// Whether the chunk's codes are gathered straight from the input rows (GatherColumnsFromRows, with
// VBMI): where the codes of one tap for the 32 pixels of a half-block, stride_w * in_depth bytes
// apart in an input row, span at most 128 bytes, one vpermi2b's reach. The stems of 1-4 input
// channels, whose patches are too short for the per-pixel copies and transposes to pay.
bool GathersFromRows(const ConvShape& s) { return s.stride_w * s.in_depth <= 4; }

// A thread's operands for one chunk: `codes`, where one tap's codes for a block of 64 pixels fill a
// vector, group by group (ColumnOrder). Lane order: byte 2j of block b's vector holds pixel 64b + j
// and byte 2j + 1 pixel 64b + 32 + j (half 0 and half 1 of the block), the order in which the
// lookups' sums come out of their 16- or 32-bit lanes. GatherColumns copies each pixel's patch
// (every group's taps, kh x kw x in_depth codes as the input holds them) into a row of `patch`, then
// transposes the rows 64 x 64 into `codes`; GatherColumnsFromRows permutes `windows` of input rows
// into them.
struct ColumnOperands {
  struct Run {
    const uint8_t* in;  // nullptr: padding, the zero code
    int64_t length;
  };

  ColumnOperands(const ConvShape& s, bool from_rows)
      : width(s.filter_h * s.filter_w * s.in_depth),
        tiles((width + 63) / 64),
        stride(from_rows ? 0 : tiles * 64 + 64),  // slack for CopyRuns' whole-vector stores
        // A window: the input pixels under one filter row for a run of at most 32 pixels, and the
        // slack read by the permutes' 128-byte loads.
        window_bytes(((((kHalfLanes - 1) * s.stride_w + (s.filter_w - 1) * s.dilation_w + 1) * s.in_depth + 63) /
                      64 + 2) * 64),
        // A half-block of 32 pixels starting at ow0 crosses at most (ow0 + 31) / out_w row ends.
        max_runs(2 * (1 + (s.out_w + kHalfLanes - 2) / s.out_w)),
        patch(static_cast<size_t>(kColumnPixels * stride / 64)),
        codes(static_cast<size_t>(tiles * 64 * kColumnBlocks)),
        bit6(codes.size()),
        bit7(codes.size()) {
    if (from_rows) {
      windows.resize(static_cast<size_t>(max_runs * s.filter_h * window_bytes / 64));
      run_index.resize(static_cast<size_t>(max_runs));
      run_lanes.resize(static_cast<size_t>(max_runs));
    } else {
      runs.reserve(static_cast<size_t>(s.filter_h * s.filter_w));
    }
  }
  uint8_t* Row(int i) { return reinterpret_cast<uint8_t*>(patch.data()) + i * stride; }
  uint8_t* Window(int64_t run, int64_t kh, int64_t filter_h) {
    return reinterpret_cast<uint8_t*>(windows.data()) + (run * filter_h + kh) * window_bytes;
  }
  const uint8_t* Codes(int64_t k, int b) const { return codes[k * kColumnBlocks + b].bytes; }

  int64_t width, tiles, stride, window_bytes, max_runs;
  std::vector<Line> patch;           // [kColumnPixels][stride]
  std::vector<Line> codes;           // [tiles * 64][kColumnBlocks]
  std::vector<uint64_t> bit6, bit7;  // bits 6 and 7 of each vector of codes
  std::vector<Run> runs;             // of the pixel being gathered
  std::vector<Line> windows;         // [run][filter_h][window_bytes] of the block being gathered
  std::vector<Line> run_index;       // per run: each lane's offset in the run's windows
  std::vector<uint64_t> run_lanes;   // per run: its lanes
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

// Bytes a .. b - 1 of a vector (0 <= a, b <= 64), as a mask.
inline __mmask64 ByteRange(int64_t a, int64_t b) {
  if (b <= a) return 0;
  return (b - a == 64 ? ~__mmask64{0} : (__mmask64{1} << (b - a)) - 1) << a;
}

// Copies the runs' codes into `row`. Whole 64-byte stores: up to 63 bytes past the patch are
// overwritten (the next run's place, or the row's slack).
TFAPPROX_AVX512BW inline void CopyRuns(const std::vector<ColumnOperands::Run>& runs, uint8_t zero_code,
                                       uint8_t* row) {
  const __m512i padding = _mm512_set1_epi8(static_cast<char>(zero_code));
  for (const ColumnOperands::Run& run : runs) {
    for (int64_t k = 0; k < run.length; k += 64) {
      const __mmask64 m = ByteRange(0, std::min<int64_t>(64, run.length - k));
      const __m512i v =
          run.in != nullptr ? _mm512_maskz_loadu_epi8(m, run.in + k) : _mm512_maskz_mov_epi8(m, padding);
      _mm512_storeu_si512(row + k, v);
    }
    row += run.length;
  }
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

// Gathers the codes of the chunk's pixels first .. first + valid - 1 (the lanes of missing pixels
// keep stale codes, whose sums are never stored). Consecutive pixels of an output row whose patches
// lie inside the input across its width (all but a few at the row's ends) read the same runs moved
// by stride_w input pixels: the patch is walked anew (divisions and a bounds check per tap, costlier
// than the copies) only where not.
TFAPPROX_AVX512BW void GatherColumns(const QuantizedConv& conv, int64_t first, int valid, const int32_t* order,
                                     ColumnOperands* ops) {
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
    CopyRuns(ops->runs, conv.input_zero_code, ops->Row(i));
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
}

// Bits 0, 2, .., 2n - 2 (n <= 32): the even lanes, half 0's, of pixels 0 .. n - 1 of a half-block.
inline uint64_t EvenLanes(int n) {
  return 0x5555555555555555u & (n == 32 ? ~uint64_t{0} : (uint64_t{1} << (2 * n)) - 1);
}

// GatherColumns for GathersFromRows' shapes, without patches or transposes (which took a third of
// the stem's time): the pixels of a half-block (32 lanes, 2j + h) split into runs along output rows;
// for each run and filter row, the input pixels under it are copied once into a window (the zero
// code where padded), where tap (kh, kw, ci)'s code for the run's pixel j is at (j - j0) * stride_w *
// in_depth + kw * dilation_w * in_depth + ci, and one vpermi2b per run and tap gathers those bytes
// into the run's lanes. About 4 instructions per tap and run, against a patch copy per pixel and
// 11 instructions per 64 bytes of transpose.
TFAPPROX_AVX512VBMI void GatherColumnsFromRows(const QuantizedConv& conv, int64_t first, int valid,
                                               const int32_t* order, ColumnOperands* ops) {
  const ConvShape& s = conv.shape;
  const int64_t depth = s.in_depth, step = s.stride_w * depth;
  const __m512i padding = _mm512_set1_epi8(static_cast<char>(conv.input_zero_code));
  alignas(64) uint8_t offsets[kColumnLanes];  // lane 2j + h: pixel j's codes in a window from j = 0
  for (int lane = 0; lane < kColumnLanes; ++lane) offsets[lane] = static_cast<uint8_t>(lane / 2 * step);
  const __m512i lane_offsets = _mm512_load_si512(offsets);
  for (int b = 0; b * kColumnLanes < valid; ++b) {
    int runs = 0;
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < kHalfLanes && b * kColumnLanes + h * kHalfLanes + j < valid;) {
        const int i = b * kColumnLanes + h * kHalfLanes + j;
        const int64_t p = first + i, ow = p % s.out_w, n = p / s.out_w / s.out_h, oh = p / s.out_w % s.out_h;
        const int length = static_cast<int>(std::min<int64_t>({kHalfLanes - j, s.out_w - ow, valid - i}));
        const int64_t iw0 = ow * s.stride_w - s.pad_left;
        const int64_t bytes = (((length - 1) * s.stride_w + (s.filter_w - 1) * s.dilation_w + 1)) * depth;
        for (int64_t kh = 0; kh < s.filter_h; ++kh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
          // The window's bytes inside the input, [lo, hi), read from in (outside it where padded:
          // masked loads read only those bytes).
          const bool row_inside = ih >= 0 && ih < s.in_h;
          const int64_t lo = row_inside ? std::clamp<int64_t>(-iw0 * depth, 0, bytes) : 0;
          const int64_t hi = row_inside ? std::clamp<int64_t>((s.in_w - iw0) * depth, 0, bytes) : 0;
          const uintptr_t in = reinterpret_cast<uintptr_t>(conv.input) +
                               ((n * s.in_h + (row_inside ? ih : 0)) * s.in_w + iw0) * depth;
          uint8_t* window = ops->Window(runs, kh, s.filter_h);
          for (int64_t o = 0; o < bytes; o += 64) {
            const __mmask64 m = ByteRange(std::max<int64_t>(lo - o, 0), std::min<int64_t>(hi - o, 64));
            _mm512_store_si512(window + o,
                               _mm512_mask_loadu_epi8(padding, m, reinterpret_cast<const void*>(in + o)));
          }
        }
        ops->run_lanes[runs] = (EvenLanes(j + length) & ~EvenLanes(j)) << h;
        _mm512_store_si512(ops->run_index[runs].bytes,
                           _mm512_sub_epi8(lane_offsets, _mm512_set1_epi8(static_cast<char>(j * step))));
        ++runs;
        j += length;
      }
    }
    int64_t k = 0;  // the tap's code in the patch, (kh * filter_w + kw) * in_depth + ci
    for (int64_t kh = 0; kh < s.filter_h; ++kh) {
      for (int64_t kw = 0; kw < s.filter_w; ++kw) {
        for (int64_t ci = 0; ci < depth; ++ci, ++k) {
          const int64_t offset = kw * s.dilation_w * depth + ci;
          __m512i v = padding;  // lanes past the valid pixels (never stored)
          for (int r = 0; r < runs; ++r) {
            const uint8_t* window = ops->Window(r, kh, s.filter_h) + offset;
            const __m512i index = _mm512_load_si512(ops->run_index[r].bytes);
            const __m512i codes = _mm512_permutex2var_epi8(_mm512_loadu_si512(window), index,
                                                           _mm512_loadu_si512(window + 64));
            v = _mm512_mask_mov_epi8(v, ops->run_lanes[r], codes);
          }
          _mm512_store_si512(ops->codes[order[k] * kColumnBlocks + b].bytes, v);
        }
      }
    }
  }
}

// The lookup kernels: sums[i] = sum_t lut[(codes[tap0 + t][i] << 8) | w[t]] for the chunk's pixels i
// and t < taps (a group's taps), in pixel order, as int32 (taps * 65535 < 2^31 on this path).
//
// (The planes' 16-bit sums: kPlaneTaps, conv_cpu_internal.h.)

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

// Bits 6 and 7 of the vectors of codes (which of the column's parts the permutes read), computed
// once for all channels; and each group's code sums of the valid pixels, act_sum[i * groups + g],
// summed as the lookups' bytes (kPlaneTaps), from the same vectors.
TFAPPROX_AVX512BW void ColumnMasksAndSums(const ConvShape& s, int valid, ColumnOperands* ops, int64_t* act_sum) {
  const int64_t taps = s.taps(), groups = s.groups();
  const __m512i zero = _mm512_setzero_si512();
  alignas(64) int32_t sums[kColumnPixels];
  for (int64_t g = 0; g < groups; ++g) {
    std::fill_n(sums, kColumnPixels, 0);
    for (int64_t t0 = 0; t0 < taps; t0 += kPlaneTaps) {
      __m512i acc[kColumnBlocks][2] = {};  // words as they are, and shifted right by 8
      for (int64_t k = g * taps + t0; k < g * taps + std::min(taps, t0 + kPlaneTaps); ++k) {
#pragma GCC unroll 4
        for (int b = 0; b < kColumnBlocks; ++b) {
          const __m512i c = _mm512_load_si512(ops->Codes(k, b));
          ops->bit6[k * kColumnBlocks + b] = _mm512_test_epi8_mask(c, _mm512_set1_epi8(64));
          ops->bit7[k * kColumnBlocks + b] = _mm512_movepi8_mask(c);
          acc[b][0] = _mm512_add_epi16(acc[b][0], c);
          acc[b][1] = _mm512_add_epi16(acc[b][1], _mm512_srli_epi16(c, 8));
        }
      }
#pragma GCC unroll 4
      for (int b = 0; b < kColumnBlocks; ++b) {
        AddPlanes(_mm512_sub_epi16(acc[b][0], _mm512_slli_epi16(acc[b][1], 8)), zero, sums + b * kColumnLanes);
        AddPlanes(acc[b][1], zero, sums + b * kColumnLanes + 32);
      }
    }
    for (int i = 0; i < valid; ++i) act_sum[i * groups + g] = sums[i];
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

}  // namespace

void ColumnPathAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixels, bool vbmi,
                          const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum) {
  const ConvShape& s = conv.shape;
  const int64_t taps = s.taps(), groups = s.groups(), out_per_group = s.out_depth_per_group();
  const auto lookup = vbmi ? LookupColumnsVbmi : LookupColumnsBw;
  const std::vector<Line> table = ColumnTable(conv.lut, vbmi);
  const std::vector<int32_t> order = ColumnOrder(s);
  const bool from_rows = vbmi && GathersFromRows(s);
  // Sums are stored for whole groups of at least 16 channels at a time (StoreSums' vectors).
  const int64_t groups_per_store = (16 + out_per_group - 1) / out_per_group;
  const int64_t chunks = (pixels + kColumnPixels - 1) / kColumnPixels;
  const int64_t cost = kColumnPixels * taps * (s.out_depth + groups);
  parallel_for(chunks, cost, [&](int64_t begin, int64_t end) {
    ColumnOperands ops(s, from_rows);
    std::vector<ChannelSums> sums(static_cast<size_t>(std::min(groups, groups_per_store) * out_per_group));
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * kColumnPixels;
      const int valid = static_cast<int>(std::min<int64_t>(kColumnPixels, pixels - first));
      if (from_rows) {
        GatherColumnsFromRows(conv, pixel_begin + first, valid, order.data(), &ops);
      } else {
        GatherColumns(conv, pixel_begin + first, valid, order.data(), &ops);
      }
      ColumnMasksAndSums(s, valid, &ops, act_sum + first * groups);
      for (int64_t g = 0; g < groups; ++g) {
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace cpu_internal
}  // namespace tfapprox
