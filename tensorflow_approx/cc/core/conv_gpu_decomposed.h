// The decomposed convolution on an NVIDIA GPU: a table written as an exact sum of int8 products
//   LUT[(a << 8) | w] = c0 + alpha[a] + beta[w] + sum over r < terms of u[r][a] * v[r][w]
// (TableDecomposition, conv_kernels.h; tensorflow_approx/multipliers/decompose.py finds such forms)
// turns the table lookups into one int8 GEMM on the tensor cores (mma.sync m16n8k32, int32 sums) whose
// reduction axis is every tap's terms x channels:
//   acc[p][co] = sum over spatial taps t of sum over r, ci of u[r][a(p, t, ci)] * v[r][w(t, ci, co)]
//              + sum over taps of alpha[a] + sum over taps of beta[w] + taps * c0.
// The outputs are bit for bit those of ApproxConvGpu with the table the decomposition describes: the
// same integer sums (acc, act_sum, filter code sums) and the same DequantizeTerms epilogue.
//
// Per call, on the stream: the input is quantized and translated into int8 "planes" (per input pixel
// and group, the u values of every term and channel, laid out so that a spatial tap's K slice is
// contiguous) in one pass, the filter is quantized once and translated likewise into v planes, then one
// implicit-GEMM launch gathers the planes tap by tap with cp.async and multiplies them on the tensor
// cores. All of it lives in a workspace of GpuDecomposedWorkspaceBytes (roughly terms bytes per input
// element plus terms + 1 bytes per filter element).
//
// Not a replacement for ApproxConvGpu's GpuOptions path: a separate entry point, because it needs a
// decomposition (which only some tables have) and a larger workspace; the caller decides.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_H_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_H_

#include <cuda_runtime_api.h>
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow_approx/cc/core/conv_gpu.h"
#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/conv_shape.h"

namespace tfapprox {

// A TableDecomposition (conv_kernels.h) whose arrays are in DEVICE memory (the kernels read u, v, alpha
// and beta there; c0 and terms travel by value). terms >= 1: GpuDecompositionUpload turns a
// decomposition without product terms (a table that is c0 + alpha[a] + beta[w]) into one zero term, so
// that the GEMM has a K.
using GpuDecomposition = TableDecomposition;

// Most terms a decomposition may have here (the input translation holds every term's u, terms * 256
// bytes, in shared memory).
constexpr int kGpuDecomposedMaxTerms = 64;

// Reduction entries (taps * terms) whose int32 tensor-core sums are exact: every product is at most
// 128 * 128 = 16384 in magnitude, and 131071 * 16384 < 2^31. Longer reductions are refused (the
// lookup kernels take them, with 64-bit sums).
constexpr int64_t kGpuDecomposedMaxReduction = 131071;

// Whether every net sum (the lookups' sum less acc_offset) of a call of `taps` products per output fits an
// int32: each product is a table entry in [0, 65535], less 32768 for a signed table (acc_offset), so |net|
// <= 65535 taps. Then the GEMMs' epilogues add acc + alpha sum + net offset in 32 bits (modulo 2^32 that
// is the net sum itself, whatever the terms' own sizes) and convert it to the same float as from an int64.
constexpr int64_t kGpuNarrowSumsMaxTaps = INT32_MAX / 65535;  // 32768
constexpr bool NarrowSumsFit(int64_t taps) { return taps <= kGpuNarrowSumsMaxTaps; }

// A host decomposition as the one block of bytes its device copy is: alpha and beta (int32), then u and
// v, one zero term where it has none. Returns "" or what is wrong (terms outside
// [0, kGpuDecomposedMaxTerms], a null array). GpuDecompositionAt gives the decomposition whose arrays are
// in a device copy of those bytes (at `device_bytes`, 16-byte aligned).
std::string GpuDecompositionPack(const TableDecomposition& host, std::vector<unsigned char>* bytes);
GpuDecomposition GpuDecompositionAt(const TableDecomposition& host, const void* device_bytes);

// Copies a host decomposition (host arrays) to new device memory, one allocation (GpuDecompositionPack's
// bytes); GpuDecompositionFree releases it. Returns "" or what went wrong (GpuDecompositionPack's errors,
// CUDA errors).
std::string GpuDecompositionUpload(const TableDecomposition& host, GpuDecomposition* device);
std::string GpuDecompositionFree(GpuDecomposition* device);

// The tile of the implicit GEMM (output pixels x output channels of a group per block). kAuto picks by
// shape; the others exist so that the harness can hold each to the reference.
enum class GpuDecomposedTile : int {
  kAuto = -1,
  kTile128x128 = 0,  // 8 warps, 64 x 32 each: large layers
  kTile64x64 = 1,    // 4 warps, 32 x 32 each: layers too small to fill the GPU with 128 x 128 tiles
  kTile128x32 = 2,   // 4 warps, 32 x 32 each: groups of at most 32 output channels
  kTile128x64 = 3,   // 4 warps, 64 x 32 each: groups of 64 channels
  // 128x128 with stages of 128 K bytes (half the barriers per K), three deep: groups of 128+ channels.
  kTile128x128k128 = 4,
  // The same GEMM on Hopper's warpgroup MMA (wgmma, both operands read from shared memory), 128 x 64
  // and 128 x 128 with 128-byte stages. Only on a compute capability 9.0 device with this library's
  // sm_90a device code (the wheel and the harness build it); elsewhere asking for one is an error and
  // kAuto takes the mma.sync tiles.
  kTileWgmma128x64 = 5,
  kTileWgmma128x128 = 6,
  kTileWgmma128x64k64 = 7,  // stages of 64 K bytes (64-byte swizzle), four deep, three blocks
  kTileWgmma256x64k64 = 8,  // 256 rows: half the filter's reads per output of 128 rows
  // wgmma256x64k64 with its stages loaded by the TMA unit, A in im2col mode (one instruction a stage, zeros at
  // padded taps, which the epilogue makes up for): where the slices are whole stages, the filter has at
  // most 9 taps and the padding and strides fit its box (GpuDecomposedTileFits).
  kTileTma256x64k64 = 9,
  // Rectangles of one image's output pixels, A read from their input halo in shared memory, all of the
  // filter's K kept there (conv_gpu_decomposed_halo.cuh): only where that fits (GpuDecomposedTileFits).
  kTileHalo = 10,
  // 1x1 filters of one group, 16-256 input channels (a multiple of 16), no padding, at most 16 terms
  // (conv_gpu_decomposed_pointwise.cuh): one launch that quantizes the input itself and looks A up into
  // wgmma's registers, no planes written; 128 or 64 pixels x 256 channels a block. sm_90a, as the wgmma tiles.
  kTilePointwise128x256 = 11,
  kTilePointwise64x256 = 12,
  kCount = 13,
};
const char* GpuDecomposedTileName(GpuDecomposedTile tile);
// "" where `tile` can run on the current device, else why not (the wgmma tiles need a CC 9.0 device and
// device code built for sm_90a; every other tile: "").
std::string GpuDecomposedTileSupported(GpuDecomposedTile tile);
// "" where `tile` can run this shape with `terms` terms on the current device, else why not: the halo
// tile needs the filter's rows of a block and two halos in shared memory; the others take every shape.
std::string GpuDecomposedTileFits(GpuDecomposedTile tile, const ConvShape& shape, int terms);

// The order of the GEMM's K stages: a 3x3 (or larger) filter's K is spatial taps x slice bytes (the
// planes' order). kTapsInner walks the taps innermost, BK bytes of the slice at a time, where a slice is
// whole stages: a tile then reads the same slice bytes of neighbouring pixels for all its taps back to
// back. Both give the same integers (a permutation of an int32 sum that is exact as a whole); kAuto picks
// by shape (ChooseGpuKOrder).
enum class GpuKOrder : int { kAuto = -1, kTapsOuter = 0, kTapsInner = 1 };
const char* GpuKOrderName(GpuKOrder order);
GpuKOrder ChooseGpuKOrder(const ConvShape& s, int terms);

enum class GpuBeside : int { kAuto = 0, kOff = 1, kOn = 2 };

// The harness's knobs and the debug outputs (the same role as GpuOptions' fields of those names).
struct GpuDecomposedOptions {
  GpuDecomposedTile tile = GpuDecomposedTile::kAuto;
  GpuKOrder k_order = GpuKOrder::kAuto;
  // With tile and k_order kAuto (and no debug outputs): the first call for a shape, number of terms and
  // element type on a device times itself with every tile that takes it (the halo tile after the pre-pass
  // and beside it with four or five input blocks a multiprocessor, see halo_beside, those two with
  // streaming hints where halo_streaming allows; then the other K order with the fastest) on its own data,
  // waiting for the timings, and keeps the fastest plan for every later call.
  // false, or the environment's TFAPPROX_GPU_TUNING=0, takes the rules (ChooseGpuDecomposedTile,
  // ChooseGpuKOrder); so does a call on a stream being captured into a CUDA graph, which cannot wait, where
  // no plan was tuned before. Every plan gives the same outputs, bit for bit.
  bool tune = true;
  // Whether the halo GEMM runs beside the fused pre-pass (programmatic dependent launch, reading each chunk
  // of the planes once the pre-pass marks it ready) or after it: kAuto takes the tuned plan's choice (the
  // rules: after), kOn where the shape allows (the fused pre-pass with the filter's planes inline: input
  // channels per group a multiple of 16), kOff never. Either gives the same outputs, bit for bit.
  GpuBeside halo_beside = GpuBeside::kAuto;
  // With the halo GEMM beside the pre-pass, float32: whether the pre-pass reads the input and the GEMM stores
  // the outputs evict-first (ld/st.global.cs), which keeps the planes the GEMM reads again in L2 where the
  // input and outputs are too many to wait there. kAuto takes the tuned plan's choice (timed where the outputs
  // fill at least 3/4 of L2; the rules: plain), kOn where the GEMM runs beside, kOff never. The same outputs.
  GpuBeside halo_streaming = GpuBeside::kAuto;
  // Fragments read from shared memory with plain 32-bit loads instead of ldmatrix: slower, for telling a
  // fragment-layout fault of one from the other.
  bool plain_fragment_loads = false;
  // Device buffers (optional): the integer sums as ReferenceConvAccumulate lays them out over all pixels,
  // acc[p * out_depth + co] and act_sum[p * groups + g].
  int64_t* debug_acc = nullptr;
  int64_t* debug_act_sum = nullptr;
  // The input pre-passes as the first version ran them (input codes, then input planes) instead of one
  // fused input pass. Both give the same integers; kept so that the harness holds both to the reference
  // and can time them against each other. (Slices wider than the fused pass stages in shared memory
  // always take the separate input kernels.) The filter's sums and planes are the same either way; the
  // fused input pass runs the filter's codes and sums (and, for most shapes, its planes) in its own
  // launch, the separate path in launches after it.
  bool separate_prepasses = false;
  // Test hook for the harness's phase breakdown: null, or kGpuDecomposedPhases + 1 events created by the
  // caller. The call records event 0 on the stream before its first launch and event i + 1 right after
  // phase i's launch (a phase the chosen path does not run records its event right after the previous
  // one: zero time). cudaEventElapsedTime(events[i], events[i + 1]) is then phase i's time.
  cudaEvent_t* phase_events = nullptr;
};

// The launches of a call, in order (GpuDecomposedPhaseName names them): 0 the memset of the channel sums,
// 1 the input codes (separate only), 2 the input planes and per-pixel sums (when fused: the whole input
// pass, and the filter codes and per-channel sums beside it in the same launch, with the filter planes
// where the group's input channels are a multiple of 16), 3 the filter codes and per-channel sums
// (separate only), 4 the filter planes (unless phase 2 wrote them), 5 the GEMM with its epilogue.
constexpr int kGpuDecomposedPhases = 6;
const char* GpuDecomposedPhaseName(int phase);

// Whether ApproxConvGpuDecomposed takes this shape with a decomposition of `terms` terms: 1 <= terms <=
// kGpuDecomposedMaxTerms and taps * terms <= kGpuDecomposedMaxReduction (int32 sums exact; see above).
// Otherwise every geometry the lookups take: NHWC or NCHW, any stride, dilation, padding and groups;
// channels need not be multiples of 16 (a tap's slice of terms x channels bytes is padded with zero
// products to whole 16-byte chunks, so odd channel counts only cost tensor-core work). Codes of any
// width and scheme: the decomposition is of the table in the kernels' codes, as the lookups index it.
// Returns "" when supported, else why not.
std::string GpuDecomposedSupports(const ConvShape& shape, int terms);

// The workspace of a call (bytes, 16-byte aligned pieces): the input codes, the u planes of the input
// (about terms bytes per input element), the per-pixel sums, the v planes of the filter, the
// per-channel sums and the filter codes (one byte per filter element).
size_t GpuDecomposedWorkspaceBytes(const ConvShape& shape, int terms);

// The rule's tile for this shape on the current device (what kAuto runs without tuning).
GpuDecomposedTile ChooseGpuDecomposedTile(const ConvShape& shape, int terms);

// What a default call (kAuto, tuning on) with this shape, terms and element type runs on the current
// device: the plan tuned by an earlier call (tuned = true), else the rules' (a first call tunes instead).
struct GpuDecomposedPlan {
  GpuDecomposedTile tile;
  GpuKOrder k_order;
  bool tuned;
  bool beside;     // the halo GEMM beside the pre-pass (GpuDecomposedOptions::halo_beside)
  bool streaming;  // and with evict-first hints (GpuDecomposedOptions::halo_streaming)
};
GpuDecomposedPlan GpuDecomposedPlanFor(const ConvShape& shape, int terms, GpuDtype dtype);

// Whether the decomposed kernel should be auto-chosen over the lookups (ApproxConvGpu) for this shape and
// a decomposition of `terms` terms: never where the kernel refuses it (GpuDecomposedSupports), and
// otherwise only in the region where H200 measurements showed it faster (the rule and its figures are in
// conv_gpu_decomposed_plan.cuh). Conservative: false outside the measured region (groups, NCHW, calls of
// few outputs for their K and terms, many terms), so that an auto-chosen decomposed call is never slower
// than the lookups would be.
bool GpuPreferDecomposed(const ConvShape& shape, int terms);
// The same with `pointwise` saying whether the pointwise tiles run this shape and terms on the device
// (GpuDecomposedTileFits; the one-argument form asks the current device).
bool GpuPreferDecomposed(const ConvShape& shape, int terms, bool pointwise);

// Runs the op on `stream` with the decomposed table: T is float, double, __half or __nv_bfloat16; input
// in shape.data_format, filter HWIO, quant the call's quantization (device memory, quant->channels
// entries: per-channel filter ranges work as in ApproxConvGpu), output in the input's data format.
// workspace: device memory of GpuDecomposedWorkspaceBytes(shape, d.terms) bytes, 16-byte aligned, used
// on the stream only (calls in flight at once need their own). Returns "" when the work was queued,
// otherwise what is wrong (an unsupported shape, a missing workspace, a CUDA error); never aborts.
// NaN inputs are handled around it with GpuScanNan / GpuPropagateNan, as for ApproxConvGpu.
template <typename T>
std::string ApproxConvGpuDecomposed(const ConvShape& shape, const T* input, const T* filter, const GpuQuant* quant,
                                    const GpuDecomposition& d, T* output, cudaStream_t stream, void* workspace,
                                    size_t workspace_bytes,
                                    const GpuDecomposedOptions& options = GpuDecomposedOptions());

// The same on untyped memory, for the TensorFlow glue (compiled against other CUDA headers; see
// ApproxConvGpuUntyped).
std::string ApproxConvGpuDecomposedUntyped(GpuDtype dtype, const ConvShape& shape, const void* input,
                                           const void* filter, const GpuQuant* quant, const GpuDecomposition& d,
                                           void* output, cudaStream_t stream, void* workspace,
                                           size_t workspace_bytes);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_H_
