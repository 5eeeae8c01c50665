// What the decomposed CPU kernel's files share (conv_decomposed.cc: the packing, the image, the plan, the
// paths and the portable loops; conv_decomposed_avx512.cc: the VBMI, VNNI and AMX kernels;
// conv_decomposed_avx2.cc: AVX2's). The ISA files' kernels are reached through the declarations and tables
// below: calls the compiler could not inline anyway (a function built for another instruction set).
// Internal to the core.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_DECOMPOSED_INTERNAL_H_
#define TENSORFLOW_APPROX_CC_CORE_CONV_DECOMPOSED_INTERNAL_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/cpu_features.h"

namespace tfapprox {
namespace decomposed_internal {

// The micro-tile is kPixelBlock pixels x kMaxVectors vectors of 16 channels: 24 accumulators, 4 for B
// and one broadcast of 32 registers. Each step (four reduction entries) loads 4 vectors of B and
// broadcasts 6 pixels' bytes for 24 vpdpbusd (8 x 2 took 10 loads for 16), and 24 independent sums
// hide vpdpbusd's latency.
constexpr int kPixelBlock = 6;     // pixels per micro-tile
constexpr int kChannelBlock = 16;  // output channels per vector of int32 sums
constexpr int kMaxVectors = 4;     // vectors of channels per micro-tile (4: each broadcast serves 64)
constexpr int kPanel = kMaxVectors * kChannelBlock;  // channels of one micro-tile (a panel of B)
constexpr int64_t kChunk = 65536;  // reduction entries whose 32-bit sums are exact (conv_decomposed.cc)
constexpr int kTile = 48;          // pixels gathered at a time (a multiple of kPixelBlock)
constexpr int kAmxRows = 16;       // pixels of an AMX tile of A and of sums (the direct path's GEMM on AMX)
constexpr int kAmxMaxRows = 64;    // pixels AmxPanel computes at a time (up to four blocks of kAmxRows)
constexpr int kAmxBytes = 64;      // reduction entries of an AMX tile of A (16 steps of B)

// The instruction set the decomposed kernels run on: VNNI (with VBMI) for every path; AVX2 for the direct
// path only (the gather path's gathers and byte lookups are VBMI's), the portable loops otherwise.
enum class DecomposedIsa { kPortable, kAvx2, kVnni };

// alpha as byte planes for the vector sums: alpha[c] = base + slope * c + sum_j planes[j][c] << 8j.
// An affine alpha (the exact table's, 128 * a) takes no planes: its sum follows from the codes' sum,
// which saves the lookups that were a tenth of a 64-channel layer's time.
struct AlphaPlanes {
  AlphaPlanes() = default;
  int64_t base = 0, slope = 0;
  int count = 0;
  std::vector<uint8_t> planes;  // [count][256]
  explicit AlphaPlanes(const int32_t* alpha) {
    const int64_t step = int64_t{alpha[1]} - alpha[0];
    bool affine = true;
    for (int c = 0; c < 256; ++c) affine = affine && alpha[c] == alpha[0] + step * c;
    if (affine) {
      base = alpha[0];
      slope = step;
      return;
    }
    base = *std::min_element(alpha, alpha + 256);
    const int64_t top = *std::max_element(alpha, alpha + 256) - base;
    while (count < 4 && (top >> (8 * count)) != 0) ++count;
    planes.resize(static_cast<size_t>(count) * 256);
    for (int j = 0; j < count; ++j)
      for (int c = 0; c < 256; ++c) planes[j * 256 + c] = static_cast<uint8_t>((alpha[c] - base) >> (8 * j));
  }
};

using Sums = int64_t[kPixelBlock][kMaxVectors * kChannelBlock];

// What StoreOutputsVnni needs to write a block's float32 outputs straight from its int32 sums: output
// (i, c) = acc_scale[c] * float(sum + pixel_add[i] + channel_add[c]) + act_sum_scale[c] * float(act[i] -
// channel_act[c]) + filter_term[c] + constant[c], DequantizeBlock's float operations in its order. The two
// integers are acc - acc_offset and act_sum - act_sum_offset; where DirectConvAccumulate takes this route
// they fit in int32, so the int32 arithmetic (modulo 2^32) gives them exactly and converts them to the
// same floats as DequantizeBlock's int64 ones. It saves writing, reloading and widening the int64 sums:
// WriteSumsAvx512 and DequantizeTileAvx512 were a quarter of the op on ResNet-20's 16->16 layer.
// The per-pixel fields point into arrays the tile fills once for all its blocks (filled per block, in a
// zero-initialized struct, they were a fifth of ResNet-20's stem).
struct BlockOutputs {
  const DequantizeRows* rows = nullptr;
  const int32_t* channel_add = nullptr;  // [channels]: offset - acc_offset of the panel's channels
  const int32_t* channel_act = nullptr;  // [channels]: act_sum_offset
  int64_t c0 = 0, width = 0;             // the panel's first channel and its real channels
  int64_t pixels = 0;                    // the block's real pixels
  const int32_t* pixel_add = nullptr;    // [pixels] alpha sums
  const int32_t* act = nullptr;          // [pixels] code sums
  float* const* out = nullptr;           // [pixels] each pixel's outputs (channel 0)
};

// Bytes CopyTapsAvx512 may write past its codes.
constexpr int64_t kCopySlack = 64;
// One patch's K codes from its taps (CopyTapsPortable's, conv_decomposed.cc; CopyTapsAvx512).
using CopyTaps = void (*)(const uint8_t* const* taps, int64_t count, int64_t depth, uint8_t zero_code, uint8_t* codes);

// Whether NarrowPixelsVbmi takes pixels of cg codes.
inline bool NarrowPixelsApply(int64_t cg) { return cg <= 4 || cg == 8 || cg == 16; }

// Terms from which TranslateWideAvx2 looks a code's entries up eight terms at a time (u_by_code): with
// fewer, most of each 8-byte load would be padding.
constexpr int kWideTranslateTerms = 4;

// The micro-kernels by the vectors of channels they take (index NV - 1): kVnniKernels (with `first`, sums
// set, else added to) and kPortableKernels; kVnniOutputKernels writing the float32 outputs (BlockOutputs);
// kVnniRowKernels adding int32 sums into a row per pixel (with `first`, setting them), for kSumRowsOutputs.
using MicroKernel = void (*)(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                             int64_t segment_steps, const int8_t* b, int64_t width, bool first, Sums& sums);
using MicroKernelOutputs = void (*)(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                    int64_t segment_steps, const int8_t* b, int64_t width,
                                    const BlockOutputs& outputs);
using MicroKernelRows = void (*)(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                 int64_t segment_steps, const int8_t* b, int64_t width, bool first,
                                 int32_t* const* sum_rows);

// conv_decomposed_avx512.cc: VBMI and VNNI (BestIsa's kVnni), AMX (UsesAmx).
TFAPPROX_VNNI void CopyTapsAvx512(const uint8_t* const* taps, int64_t count, int64_t depth, uint8_t zero_code,
                                  uint8_t* codes);
TFAPPROX_VNNI void PackTermVbmi(const uint8_t* rows, int64_t row_stride, int64_t count, const int8_t* v, int64_t width,
                                int8_t* lanes);
TFAPPROX_VNNI void SumsVbmi(const uint8_t* codes, int64_t n, int64_t taps, const int32_t*, const AlphaPlanes& alpha,
                            int64_t* code_sum, int64_t* alpha_sum);
TFAPPROX_VNNI void NarrowPixelsVbmi(const uint8_t* codes, int64_t n, int64_t cg, const uint8_t* u_plus, int terms,
                                    const AlphaPlanes& alpha, uint8_t* out, int64_t* code_sum, int64_t* alpha_sum);
TFAPPROX_VNNI void TranslateVbmi(const uint8_t* codes, int64_t n, int64_t taps, const uint8_t* u_plus, int terms,
                                 int64_t term_stride, int64_t reduction, uint8_t* rows);
extern const MicroKernel kVnniKernels[kMaxVectors];
extern const MicroKernelOutputs kVnniOutputKernels[kMaxVectors];
extern const MicroKernelRows kVnniRowKernels[kMaxVectors];
// The float32 outputs of a block of kPixelBlock pixels from int32 sums, a row per pixel (SumRowsOutputs<NV>).
using SumRowsOutputKernel = void (*)(const int32_t* const* rows, const BlockOutputs& outputs);
extern const SumRowsOutputKernel kSumRowsOutputs[kMaxVectors];
TFAPPROX_VNNI void WriteSumsAvx512(const int64_t* sums, int64_t alpha_sum, const int64_t* offset, int64_t n,
                                   int64_t* out);
TFAPPROX_VNNI void AddRowsAvx512(const int64_t* const* rows, int64_t count, int64_t n, int64_t* out);
TFAPPROX_AMX void ConfigureAmx();
TFAPPROX_AMX void ReleaseAmx();
using AmxPanelKernel = void (*)(const uint8_t* const* blocks, int64_t a_stride, const int64_t* offsets, int64_t runs,
                                int64_t run_tiles, int64_t pixel_blocks, const int8_t* b, int32_t* c);
extern const AmxPanelKernel kAmxPanels[kMaxVectors];  // AmxPanel<NB> by its 16-channel blocks NB

// conv_decomposed_avx2.cc: AVX2's direct path (BestIsa's kAvx2).
TFAPPROX_AVX2 void TranslateWideAvx2(const uint8_t* codes, int64_t n, int64_t cg, const uint8_t* u_plus,
                                     bool widen, const uint8_t* u_by_code, int terms, int64_t depth,
                                     int64_t pixel_entries, uint16_t* out);
TFAPPROX_AVX2 void SumsAvx2(const uint8_t* codes, int64_t n, int64_t cg, const int32_t* alpha, const AlphaPlanes& planes,
                            int64_t* code_sum, int64_t* alpha_sum);
TFAPPROX_AVX2 void MicroKernelAvx2(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                   int64_t segment_steps, const int16_t* b, int64_t width, Sums& sums);
TFAPPROX_AVX2 void MicroKernelOutputsAvx2(const uint8_t* const* rows, const int64_t* offsets, int64_t segments,
                                          int64_t segment_steps, const int16_t* b, int64_t width, int chunk,
                                          const BlockOutputs& outputs, int32_t* carry = nullptr, bool resume = false,
                                          bool suspend = false);

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_DECOMPOSED_INTERNAL_H_
