// Hopper's tensor memory accelerator (TMA) for the decomposed GEMM's TMA tiles (DecomposedGemmKernel with
// kTma; conv_gpu_decomposed_gemm.cuh): A in im2col mode, B (the filter's planes) in tiles; the pointwise
// tiles (conv_gpu_decomposed_pointwise.cuh) load their B with the same tiled loads and mbarriers. Internal:
// included by conv_gpu_decomposed_gemm.cuh only.
//
// Why: on the wgmma tiles every thread gathered A's 16-byte chunks itself (cp.async, an address and a
// padding test per chunk and stage), and those gathers, not the tensor cores, bound the GEMM with many
// terms (docs/decomposition.md, "Warp-specialized wgmma tile"). One im2col TMA load brings a whole stage
// of A (BM pixels x BK bytes of one tap's slice) in one instruction of one thread: the hardware walks the
// output pixels (W, then H, then the images, at the convolution's strides) and adds the tap's offset.
//
// The planes are a 4-D tensor for it: (C, W, H, N) innermost first, C = groups * slice_bytes bytes a pixel.
// Each load reads BK bytes of C (one group's slice bytes sb .. sb + BK) at BM pixels, into a stage laid
// out as the cp.async loaders lay it (rows of BK bytes, 64- or 128-byte swizzle: the same address bits,
// see conv_gpu_decomposed_wgmma.cuh). B's stage (BN filter rows x the same BK bytes of K) is one tiled load
// of the filter's planes; both complete one mbarrier phase a stage.
//
// Padding: a tap outside the input is filled with zeros, where the planes' own gather reads the zero
// point's slice (u of the zero point, not 0 in general). So the GEMM adds, per output pixel and channel,
// Z[t][co] = sum over the slice of u(zero point) * v for each of its padded taps t (the kernel sums Z from
// B's stages as they pass, and the epilogue adds it): the same int32 sums modulo 2^32, hence the same
// exact sums (docs/decomposition.md, "A and B by TMA loads").
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_TMA_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_TMA_CUH_

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu_common.cuh"

namespace tfapprox {
namespace decomposed_internal {

using gpu_internal::GpuGeometry;

// The TMA tiles' padded-tap sums Z are kept for at most this many spatial taps (3 x 3 and smaller
// filters), a bit a tap in each pixel's mask.
constexpr int kTmaMaxTaps = 9;

// ---------------------------------------------------------------------------------------------------
// Device side (PTX; compiled where wgmma is: sm_90a).

// An mbarrier (8 bytes of shared memory) expecting `count` arrivals a phase.
__device__ __forceinline__ void MbarrierInit(uint32_t bar, uint32_t count) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
  // The initialization visible to the async proxy (the TMA unit completes transactions on it).
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// This thread's arrival, announcing `bytes` of transactions (the TMA load's) to complete the phase.
__device__ __forceinline__ void MbarrierArriveExpectTx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// Waits until the phase of parity `parity` has completed (its bytes landed and are visible to this thread).
__device__ __forceinline__ void MbarrierWait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
#endif
}
// One im2col load: the pixels from the one whose patch origin is (w, h) of image n, at channel byte c,
// shifted by the tap's (off_w, off_h), into shared memory at dst; its bytes complete a phase of `bar`.
// `map` is the kernel's __grid_constant__ parameter.
__device__ __forceinline__ void TmaLoadIm2col(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c, int w, int h,
                                              int n, int off_w, int off_h) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6], {%7, %8};\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c), "r"(w), "r"(h), "r"(n), "r"(bar),
      "h"(static_cast<uint16_t>(off_w)), "h"(static_cast<uint16_t>(off_h))
      : "memory");
#endif
}

// One tiled load: the box at (x, y) of a 2-D map (x innermost), into shared memory at dst; its bytes
// complete a phase of `bar`.
__device__ __forceinline__ void TmaLoadTile2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int x, int y) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------------
// Host side.

// The im2col box of patch origins, W then H: from -padding (lower) to the last output's origin, which the
// driver takes as dim - 1 + upper; and the last tap's offset from a patch's origin.
struct Im2colCorners {
  int lower[2], upper[2], last_tap[2];
};
inline Im2colCorners CornersOf(const GpuGeometry& g) {
  return Im2colCorners{{-g.pad_left, -g.pad_top},
                       {(g.out_w - 1) * g.stride_w - g.pad_left - (g.in_w - 1),
                        (g.out_h - 1) * g.stride_h - g.pad_top - (g.in_h - 1)},
                       {(g.filter_w - 1) * g.dil_w, (g.filter_h - 1) * g.dil_h}};
}
// Whether some output's patch has a tap outside the input (GemmArgs::padded_taps): a patch origin before
// the input, or the last patch's last tap past its end (dim - 1 + upper + last_tap > dim - 1).
inline bool PaddedTaps(const GpuGeometry& g) {
  const Im2colCorners box = CornersOf(g);
  for (int i = 0; i < 2; ++i) {
    if (box.lower[i] < 0 || box.upper[i] + box.last_tap[i] > 0) return true;
  }
  return false;
}

// "" where the TMA tiles (stages of `bk` bytes) can load this call's planes, else why not: slices of whole
// stages (a stage is one tap's bytes), at most kTmaMaxTaps taps, strides of at most 8 and paddings that the
// im2col box's corners hold (4-D maps: corners within [-128, 127]).
inline std::string TmaPlanesFit(const GpuGeometry& g, int slice_bytes, int bk) {
  if (slice_bytes % bk != 0) {
    return "the TMA tiles need slices of whole " + std::to_string(bk) + "-byte stages (terms x channels a group)";
  }
  if (g.filter_h * g.filter_w > kTmaMaxTaps) return "the TMA tiles take filters of at most 9 taps";
  if (g.stride_h > 8 || g.stride_w > 8) return "the TMA tiles take strides of at most 8";
  if (static_cast<int64_t>(g.groups) * slice_bytes * g.in_w * g.in_h >= (int64_t{1} << 40)) {
    return "the TMA tiles take images of less than 2^40 plane bytes";
  }
  const Im2colCorners box = CornersOf(g);
  for (int i = 0; i < 2; ++i) {
    if (box.lower[i] < -128 || box.lower[i] > 127 || box.upper[i] < -128 || box.upper[i] > 127 ||
        box.last_tap[i] > 127) {
      return "the TMA tiles' im2col box does not hold this padding or filter extent";
    }
  }
  return "";
}

// A driver function (its CUDA 12.0 signature, Fn) through the runtime's lookup, so that nothing links
// libcuda; null where the driver lacks it. (Callers keep it in a static: found once.)
template <typename Fn>
Fn DriverEntryPoint(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return reinterpret_cast<Fn>(fn);
}

// The im2col map of the planes (Layout::planes, the pixels' slices in NHWC order) for stages of bm pixels x
// bk bytes; `batch` images. Returns "" or what failed.
inline std::string EncodePlanesIm2col(const int8_t* planes, const GpuGeometry& g, int slice_bytes, int64_t batch,
                                      int bm, int bk, CUtensorMap* map) {
  static const auto encode = DriverEntryPoint<PFN_cuTensorMapEncodeIm2col_v12000>("cuTensorMapEncodeIm2col");
  if (encode == nullptr) return "ApproxConvGpuDecomposed: the driver has no cuTensorMapEncodeIm2col (TMA tiles)";
  const uint64_t pixel_bytes = static_cast<uint64_t>(g.groups) * static_cast<uint64_t>(slice_bytes);
  const cuuint64_t dims[4] = {pixel_bytes, static_cast<cuuint64_t>(g.in_w), static_cast<cuuint64_t>(g.in_h),
                              static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {pixel_bytes, pixel_bytes * g.in_w, pixel_bytes * g.in_w * g.in_h};
  const Im2colCorners box = CornersOf(g);
  const cuuint32_t element_strides[4] = {1, static_cast<cuuint32_t>(g.stride_w), static_cast<cuuint32_t>(g.stride_h),
                                         1};
  const CUresult r =
      encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, const_cast<int8_t*>(planes), dims, strides, box.lower, box.upper,
             static_cast<cuuint32_t>(bk), static_cast<cuuint32_t>(bm), element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             bk == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? ""
                           : "ApproxConvGpuDecomposed: cuTensorMapEncodeIm2col failed (CUresult " +
                                 std::to_string(static_cast<int>(r)) + ")";
}

// A filter's planes (`rows` rows of k_padded bytes: Layout::filter, or Layout::pointwise_filter for the
// pointwise tiles) as a 2-D map of boxes of bn rows x bk bytes, in the same swizzle. Returns "" or what failed.
inline std::string EncodeFilterPlanesTiled(const int8_t* b_planes, int64_t rows, int64_t k_padded, int bn, int bk,
                                           CUtensorMap* map) {
  static const auto encode = DriverEntryPoint<PFN_cuTensorMapEncodeTiled_v12000>("cuTensorMapEncodeTiled");
  if (encode == nullptr) return "ApproxConvGpuDecomposed: the driver has no cuTensorMapEncodeTiled (TMA tiles)";
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k_padded), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k_padded)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(bk), static_cast<cuuint32_t>(bn)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<int8_t*>(b_planes), dims, strides, box,
                            element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            bk == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? ""
                           : "ApproxConvGpuDecomposed: cuTensorMapEncodeTiled failed (CUresult " +
                                 std::to_string(static_cast<int>(r)) + ")";
}

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_TMA_CUH_
