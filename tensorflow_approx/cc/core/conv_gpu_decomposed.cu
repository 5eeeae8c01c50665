// The decomposed convolution on the tensor cores (see conv_gpu_decomposed.h). Built, like conv_gpu.cu,
// with -fmad=false: the codes (QuantizeToCode) and the outputs (DequantizeTerms) must round exactly as
// the CPU build and the lookup kernels do.
//
// The GEMM. For output pixel p, output channel co of group grp and spatial tap t = (kh, kw):
//   A[p][t, r, ci] = u[r][a(p, t, ci)]     (a: the input code at the tap, the zero point if padded)
//   B[t, r, ci][co] = v[r][w(t, ci, co)]
// and acc[p][co] = sum_k A[p][k] B[k][co] + sum_taps alpha[a] + sum_taps beta[w] + taps * c0.
// A is never built as a matrix: a pre-pass writes, per input pixel and group, the slice
// [r][ci] of u values (slice_bytes = terms * cg rounded up to 16 bytes, zeros after the last term),
// the "planes"; the GEMM gathers, for each pixel of its tile and each 16-byte chunk of a K tile, the
// chunk of the pixel's tap from the planes (cp.async straight into shared memory). A padded tap reads a
// slice of the zero point's u values (one per group, after the pixels' slices): padding is the zero
// point's code, whose u is not 0 in general. The filter's planes are B, [co][K] (K-contiguous: the
// "col" operand of mma.sync.m16n8k32.row.col), K padded with zeros to a multiple of kMaxBK (whole
// stages of every tile).
// The free terms are per pixel (sum of alpha over the patch, like act_sum: from per input pixel sums
// of the pre-pass) and per channel (sum of beta, from a filter pass, plus taps * c0).
//
// Exact: int32 tensor-core sums hold taps * terms <= kGpuDecomposedMaxReduction products of at most
// 16384 in magnitude (GpuDecomposedSupports refuses more); zero padding adds nothing; the free terms
// and the epilogue are in int64.
//
// By concern: conv_gpu_decomposed_prepasses.cuh (the workspace layout and the pre-passes),
// conv_gpu_decomposed_gemm.cuh (the GEMM and its epilogue), conv_gpu_decomposed_halo.cuh (the GEMM
// reading A from input halos in shared memory), conv_gpu_decomposed_pointwise.cuh (1x1 filters: the
// GEMM quantizing its input itself, A looked up into registers), conv_gpu_decomposed_plan.cuh (the
// tiles, the rules that choose among them and the lookups, the tuned plans), this file (the
// decomposition's device form, the launches and the entry point).
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "tensorflow_approx/cc/core/conv_gpu_decomposed_gemm.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_halo.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_plan.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_pointwise.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_prepasses.cuh"

namespace tfapprox {
namespace {

using namespace decomposed_internal;  // NOLINT: this file's kernels and layout, written as if declared here

// ---------------------------------------------------------------------------------------------------
// Host side.

// 1 in the device code of a module built with sm_90a's features (the wgmma kernels' bodies), else 0:
// which cubin the driver loaded for this file decides whether the wgmma tiles can run, so it is asked.
__device__ int g_wgmma_built =
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    1;
#else
    0;
#endif

// "" where the wgmma tiles can run on the current device, else why not. The module flag is read once per
// device (a synchronous copy of g_wgmma_built, at the first decomposed call there); later calls cost two
// cached attribute queries.
std::string WgmmaAvailable() {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices];  // 0 not asked yet, 1 available, 2 not built for sm_90a
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaError("cudaGetDevice", e);
  int major = 0, minor = 0;
  e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess) return CudaError("cudaDeviceGetAttribute", e);
  if (major != 9 || minor != 0) {
    return "ApproxConvGpuDecomposed: the wgmma tile needs sm_90a (compute capability 9.0); this device is " +
           std::to_string(major) + "." + std::to_string(minor);
  }
  int state = device < kDevices ? known[device].load(std::memory_order_relaxed) : 0;
  if (state == 0) {
    int built = 0;
    e = cudaMemcpyFromSymbol(&built, g_wgmma_built, sizeof(built));
    if (e != cudaSuccess) return CudaError("cudaMemcpyFromSymbol of the wgmma flag", e);
    state = built == 1 ? 1 : 2;
    if (device < kDevices) known[device].store(state, std::memory_order_relaxed);
  }
  return state == 1 ? ""
                    : "ApproxConvGpuDecomposed: the wgmma tile needs sm_90a: this build's device code for the GPU "
                      "has no sm_90a cubin (add -gencode arch=compute_90a,code=sm_90a)";
}


unsigned PrepBlocks(int64_t work, int sms) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work + kPrepThreads - 1) / kPrepThreads, int64_t{8} * std::max(sms, 1))));
}

// A kernel's launch set-up, done once: its dynamic shared-memory limit raised to `smem` on the current
// device where it is lower, and with `per_sm` its resident blocks per multiprocessor at `threads` and
// `smem` (asked once per kernel, device and size). Each of those runtime calls costs the host microseconds,
// and at small batches a framework's calls wait for their host, not for the device.
std::string SetUpKernel(const void* kernel, int smem, int threads, int* per_sm) {
  struct Setup {
    int smem_limit = 0;
    std::map<int, int> blocks_per_sm;  // by shared memory
  };
  static std::mutex mutex;
  static auto* setups = new std::map<std::pair<const void*, int>, Setup>();  // (never destroyed)
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaError("cudaGetDevice", e);
  std::lock_guard<std::mutex> lock(mutex);
  Setup& setup = (*setups)[{kernel, device}];
  if (setup.smem_limit < smem) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
    setup.smem_limit = smem;
  }
  if (per_sm != nullptr) {
    const auto it = setup.blocks_per_sm.find(smem);
    if (it != setup.blocks_per_sm.end()) {
      *per_sm = it->second;
    } else {
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, kernel, threads, smem);
      if (e != cudaSuccess) return CudaError("cudaOccupancyMaxActiveBlocksPerMultiprocessor", e);
      setup.blocks_per_sm[smem] = *per_sm;
    }
  }
  return "";
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int BLOCKS, int BK, int STAGES, int kWgmmaTile>
std::string LaunchGemm(bool ldmatrix, const GemmArgs& base, const GpuGeometry& g, const Epilogue& epi, T* output,
                       cudaStream_t stream) {
  constexpr bool kWgmma = kWgmmaTile != 0;  // (ApproxConvGpuDecomposed checked that it can run here)
  constexpr bool kTma = kWgmmaTile == 2;    // (and, for these, TmaPlanesFit)
  GemmArgs args = base;
  const int64_t m_tiles = (static_cast<int64_t>(g.pixels) + BM - 1) / BM;
  const int64_t n_tiles = (static_cast<int64_t>(g.npg) + BN - 1) / BN;
  const int64_t blocks = m_tiles * n_tiles * g.groups;
  if (blocks > INT_MAX) return "ApproxConvGpuDecomposed: convolution too large for one GPU launch";
  const int64_t k_tiles = GemmKTiles<BK>(args.l);
  if (k_tiles > INT_MAX) return "ApproxConvGpuDecomposed: K too large";
  args.m_tiles = static_cast<int>(m_tiles);
  args.n_tiles = static_cast<int>(n_tiles);
  args.k_tiles = static_cast<int>(k_tiles);
  constexpr int smem = GemmSmemBytes<BM, BN, BK, STAGES, kWgmma, kTma>();
  static_assert(BLOCKS * (smem + 1024) <= 228 * 1024, "BLOCKS blocks fit a multiprocessor's shared memory");
  CUtensorMap a_map = {}, b_map = {};  // (only the TMA tiles read them)
  if constexpr (kTma) {
    const int64_t batch = args.l.in_pixels / (static_cast<int64_t>(g.in_h) * g.in_w);
    std::string e = EncodePlanesIm2col(args.planes, g, args.l.slice_bytes, batch, BM, BK, &a_map);
    if (e.empty()) e = EncodeFilterPlanesTiled(args.b_planes, g.out_depth, args.l.k_padded, BN, BK, &b_map);
    if (!e.empty()) return e;
  }
  void (*kernel)(GemmArgs, GpuGeometry, Epilogue, T*, const CUtensorMap, const CUtensorMap) = nullptr;
  if constexpr (kWgmma) {
    // wgmma reads shared memory itself: ldmatrix and plain_fragment_loads do not apply; one kernel.
    kernel = DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, BLOCKS, BK, STAGES, true, true, kTma>;
  } else {
    kernel = ldmatrix ? DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, BLOCKS, BK, STAGES, true>
                      : DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, BLOCKS, BK, STAGES, false>;
  }
  const std::string setup = SetUpKernel(reinterpret_cast<const void*>(kernel), smem, 0, nullptr);
  if (!setup.empty()) return setup;
  kernel<<<static_cast<unsigned>(blocks), WARPS_M * WARPS_N * 32, smem, stream>>>(args, g, epi, output, a_map, b_map);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the decomposed GEMM launch", e);
}

template <typename T>
std::string LaunchTile(GpuDecomposedTile tile, bool ldmatrix, const GemmArgs& args, const GpuGeometry& g,
                       const Epilogue& epi, T* output, cudaStream_t stream) {
#define TFAPPROX_TILE_CASE(name, bm, bn, wm, wn, blocks, bk, stages, rate, wgmma) \
  case GpuDecomposedTile::name:                                                   \
    return LaunchGemm<T, bm, bn, wm, wn, blocks, bk, stages, wgmma>(ldmatrix, args, g, epi, output, stream);
  switch (tile) {
    TFAPPROX_DECOMPOSED_TILES(TFAPPROX_TILE_CASE)
    default:
      return "ApproxConvGpuDecomposed: unknown tile";
  }
#undef TFAPPROX_TILE_CASE
}


// kernel<<<grid, threads, smem, stream>>>(args...), with `beside` allowed to start before the launch ahead
// of it in the stream ends (programmatic stream serialization: that launch lets it start with
// griddepcontrol.launch_dependents, and it waits with griddepcontrol.wait for what it must).
template <typename... Params, typename... Args>
cudaError_t LaunchAfter(void (*kernel)(Params...), dim3 grid, int threads, size_t smem, cudaStream_t stream,
                        bool beside, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = beside ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, args...);
  return e == cudaSuccess ? cudaGetLastError() : e;
}

// ready: where the pre-pass was launched just before with its Layout::ready words (PrepassKernel), which
// this launch then runs beside; else null. filter_blocks: the pre-pass's. streaming: beside it, the build
// with evict-first output stores (float32 only; TunedPlan::streaming).
template <typename T, int BM, int BN>
std::string LaunchHaloBlock(const HaloPlan& plan, const GemmArgs& base, const GpuGeometry& g, const Epilogue& epi,
                            T* output, int sms, cudaStream_t stream, const uint32_t* ready, int filter_blocks,
                            bool streaming) {
  HaloArgs h = plan.h;
  const int m_tiles = h.gemm.m_tiles, n_tiles = h.gemm.n_tiles;
  h.gemm = base;
  h.gemm.m_tiles = m_tiles;
  h.gemm.n_tiles = n_tiles;
  h.ready = ready;
  h.filter_blocks = filter_blocks;
  if (ready != nullptr) h.zero_chunks = ZeroChunksOf(base.l, g.groups);
  const int smem = static_cast<int>(HaloSmemBytes(BM, BN, static_cast<int>(sizeof(typename RealOf<T>::type)), h));
  auto kernel = ready != nullptr ? DecomposedHaloKernel<T, BM, BN, true> : DecomposedHaloKernel<T, BM, BN, false>;
  if constexpr (std::is_same<T, float>::value) {
    if (ready != nullptr && streaming) kernel = DecomposedHaloKernel<T, BM, BN, true, true>;
  }
  int per_sm = 0;
  const std::string setup = SetUpKernel(reinterpret_cast<const void*>(kernel), smem, 128, &per_sm);
  if (!setup.empty()) return setup;
  // Persistent blocks: as many as fit at once, spread over the channel tiles and groups (grid y); each
  // walks rectangles blockIdx.x, + gridDim.x, ...
  const int64_t columns = static_cast<int64_t>(n_tiles) * g.groups;
  const int64_t slots = static_cast<int64_t>(std::max(per_sm, 1)) * std::max(sms, 1);
  const int64_t blocks_x = std::max<int64_t>(1, std::min<int64_t>(m_tiles, (slots + columns - 1) / columns));
  const cudaError_t e = LaunchAfter(kernel, dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(columns)), 128,
                                    static_cast<size_t>(smem), stream, ready != nullptr, h, g, epi, output);
  return e == cudaSuccess ? "" : CudaError("the decomposed halo launch", e);
}

template <typename T>
std::string LaunchHalo(const HaloPlan& plan, const GemmArgs& args, const GpuGeometry& g, const Epilogue& epi,
                       T* output, int sms, cudaStream_t stream, const uint32_t* ready, int filter_blocks,
                       bool streaming) {
  if (plan.bm == 0) return plan.why;
  const bool tall = plan.bm == 128;
#define TFAPPROX_HALO_CASE(bn)                                                                          \
  return tall ? LaunchHaloBlock<T, 128, bn>(plan, args, g, epi, output, sms, stream, ready, filter_blocks, streaming) \
              : LaunchHaloBlock<T, 64, bn>(plan, args, g, epi, output, sms, stream, ready, filter_blocks, streaming)
  switch (plan.bn) {
    case 16:
      TFAPPROX_HALO_CASE(16);
    case 32:
      TFAPPROX_HALO_CASE(32);
    default:
      TFAPPROX_HALO_CASE(64);
  }
#undef TFAPPROX_HALO_CASE
}


// The pointwise tiles (kWarpgroups 2: pw128x256, 1: pw64x256), B from `b_planes` (Layout::pointwise_filter):
// persistent blocks, as many as fit at once.
template <typename T, int kWarpgroups>
std::string LaunchPointwiseBlock(const PointwiseArgs& base, const int8_t* b_planes, const GpuGeometry& g,
                                 const Epilogue& epi, const T* input, T* output, int sms, cudaStream_t stream) {
  constexpr int kBM = 64 * kWarpgroups;
  PointwiseArgs args = base;
  const int64_t m_tiles = (static_cast<int64_t>(g.pixels) + kBM - 1) / kBM;
  const int64_t n_tiles = (static_cast<int64_t>(g.out_depth) + kPointwiseBN - 1) / kPointwiseBN;
  if (m_tiles * n_tiles > INT_MAX) return "ApproxConvGpuDecomposed: convolution too large for one GPU launch";
  args.n_tiles = static_cast<int>(n_tiles);
  const int64_t k_bytes = static_cast<int64_t>(g.cg) * PointwiseTerms(args.terms);  // a multiple of 64
  args.k_tiles = static_cast<int>(k_bytes / kPointwiseBK);
  CUtensorMap b_map = {};
  const std::string encoded =
      EncodeFilterPlanesTiled(b_planes, g.out_depth, k_bytes, kPointwiseBN, kPointwiseBK, &b_map);
  if (!encoded.empty()) return encoded;
  constexpr int smem = PointwiseSmemBytes<kWarpgroups, typename RealOf<T>::type>();
  static_assert((2 / kWarpgroups) * (smem + 1024) <= 228 * 1024, "the blocks fit a multiprocessor's shared memory");
  const auto kernel = DecomposedPointwiseKernel<T, kWarpgroups>;
  int per_sm = 0;
  const std::string setup = SetUpKernel(reinterpret_cast<const void*>(kernel), smem, kWarpgroups * 128, &per_sm);
  if (!setup.empty()) return setup;
  const int64_t blocks = std::min<int64_t>(m_tiles * n_tiles, int64_t{std::max(per_sm, 1)} * std::max(sms, 1));
  kernel<<<static_cast<unsigned>(blocks), kWarpgroups * 128, smem, stream>>>(args, g, epi, input, output, b_map);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the decomposed pointwise launch", e);
}

}  // namespace

const char* GpuKOrderName(GpuKOrder order) {
  switch (order) {
    case GpuKOrder::kAuto: return "auto";
    case GpuKOrder::kTapsOuter: return "taps-outer";
    case GpuKOrder::kTapsInner: return "taps-inner";
    default: return "?";
  }
}


const char* GpuDecomposedTileName(GpuDecomposedTile tile) {
  switch (tile) {
    case GpuDecomposedTile::kAuto: return "auto";
    case GpuDecomposedTile::kTile128x128: return "mma128x128";
    case GpuDecomposedTile::kTile64x64: return "mma64x64";
    case GpuDecomposedTile::kTile128x32: return "mma128x32";
    case GpuDecomposedTile::kTile128x64: return "mma128x64";
    case GpuDecomposedTile::kTile128x128k128: return "mma128x128k128";
    case GpuDecomposedTile::kTileWgmma128x64: return "wgmma128x64";
    case GpuDecomposedTile::kTileWgmma128x128: return "wgmma128x128";
    case GpuDecomposedTile::kTileWgmma128x64k64: return "wgmma128x64k64";
    case GpuDecomposedTile::kTileWgmma256x64k64: return "wgmma256x64k64";
    case GpuDecomposedTile::kTileTma256x64k64: return "tma256x64k64";
    case GpuDecomposedTile::kTileHalo: return "halo";
    case GpuDecomposedTile::kTilePointwise128x256: return "pw128x256";
    case GpuDecomposedTile::kTilePointwise64x256: return "pw64x256";
    default: return "?";
  }
}

const char* GpuDecomposedPhaseName(int phase) {
  static const char* const kNames[kGpuDecomposedPhases] = {"zero sums",    "in codes",      "in planes",
                                                           "flt sums",     "flt planes",    "gemm"};
  return phase >= 0 && phase < kGpuDecomposedPhases ? kNames[phase] : "?";
}


std::string GpuDecomposedSupports(const ConvShape& s, int terms) {
  if (terms < 1 || terms > kGpuDecomposedMaxTerms) {
    return "ApproxConvGpuDecomposed: " + std::to_string(terms) + " terms (1 to " +
           std::to_string(kGpuDecomposedMaxTerms) + " are supported)";
  }
  if (s.taps() * terms > kGpuDecomposedMaxReduction) {
    return "ApproxConvGpuDecomposed: taps * terms = " + std::to_string(s.taps() * terms) +
           " products per output could overflow the int32 tensor-core sums (at most " +
           std::to_string(kGpuDecomposedMaxReduction) + ")";
  }
  // As ApproxConvGpu: spatial terms below 2^30 keep the kernels' int32 index arithmetic far from overflow.
  const int64_t kLimit = int64_t{1} << 30;
  const int64_t spatial[] = {s.in_h, s.in_w, s.pad_top, s.pad_left, s.stride_h * s.out_h,
                             s.stride_w * s.out_w, s.dilation_h * s.filter_h, s.dilation_w * s.filter_w,
                             s.taps(), s.out_pixels(), s.batch * s.in_h * s.in_w};
  for (int64_t v : spatial) {
    if (v < 0 || v >= kLimit) return "ApproxConvGpuDecomposed: a spatial size or padding is too large";
  }
  return "";
}

size_t GpuDecomposedWorkspaceBytes(const ConvShape& shape, int terms) {
  return MakeLayout(shape, std::max(terms, 1)).bytes;
}

std::string GpuDecomposedTileSupported(GpuDecomposedTile tile) { return IsWgmmaTile(tile) ? WgmmaAvailable() : ""; }

std::string GpuDecomposedTileFits(GpuDecomposedTile tile, const ConvShape& shape, int terms) {
  std::string why = GpuDecomposedTileSupported(tile);
  if (why.empty() && tile == GpuDecomposedTile::kTileHalo) why = MakeHaloPlan(shape, terms).why;
  if (why.empty() && IsTmaTile(tile)) why = TmaTileFits(tile, shape, MakeLayout(shape, std::max(terms, 1)).slice_bytes);
  if (why.empty() && IsPointwiseTile(tile)) why = PointwiseFits(shape, terms);
  return why;
}

GpuDecomposedTile ChooseGpuDecomposedTile(const ConvShape& shape, int terms) {
  DeviceInfo dev;
  if (!GetDeviceInfo(&dev).empty()) return GpuDecomposedTile::kTile128x128;
  return ChooseTile(shape, terms, dev.sms, WgmmaAvailable().empty());
}

GpuDecomposedPlan GpuDecomposedPlanFor(const ConvShape& shape, int terms, GpuDtype dtype) {
  DeviceInfo dev;
  TunedPlan tuned{};
  if (!TuningOff() && GetDeviceInfo(&dev).empty() &&
      FindTunedPlan(MakeTuningKey(shape, terms, dtype, dev.ordinal), &tuned)) {
    return GpuDecomposedPlan{tuned.tile, tuned.k_order, true, tuned.beside_blocks > 0,
                             tuned.beside_blocks > 0 && tuned.streaming};
  }
  return GpuDecomposedPlan{ChooseGpuDecomposedTile(shape, terms), ChooseGpuKOrder(shape, terms), false, false, false};
}

std::string GpuDecompositionPack(const TableDecomposition& host, std::vector<unsigned char>* bytes) {
  if (host.terms < 0 || host.terms > kGpuDecomposedMaxTerms) {
    return "GpuDecompositionPack: " + std::to_string(host.terms) + " terms (0 to " +
           std::to_string(kGpuDecomposedMaxTerms) + " are supported)";
  }
  if (host.alpha == nullptr || host.beta == nullptr || (host.terms > 0 && (host.u == nullptr || host.v == nullptr))) {
    return "GpuDecompositionPack: null host array";
  }
  // alpha, beta (int32, aligned at the start), then u and v. No terms: one zero term.
  const int terms = std::max(host.terms, 1);
  bytes->assign(2 * 256 * sizeof(int32_t) + 2 * static_cast<size_t>(terms) * 256, 0);
  std::copy(host.alpha, host.alpha + 256, reinterpret_cast<int32_t*>(bytes->data()));
  std::copy(host.beta, host.beta + 256, reinterpret_cast<int32_t*>(bytes->data()) + 256);
  int8_t* u = reinterpret_cast<int8_t*>(bytes->data() + 2 * 256 * sizeof(int32_t));
  if (host.terms > 0) {
    std::copy(host.u, host.u + host.terms * 256, u);
    std::copy(host.v, host.v + host.terms * 256, u + terms * 256);
  }
  return "";
}

GpuDecomposition GpuDecompositionAt(const TableDecomposition& host, const void* device_bytes) {
  const unsigned char* base = static_cast<const unsigned char*>(device_bytes);
  GpuDecomposition device;
  device.terms = std::max(host.terms, 1);
  device.alpha = reinterpret_cast<const int32_t*>(base);
  device.beta = reinterpret_cast<const int32_t*>(base) + 256;
  device.u = reinterpret_cast<const int8_t*>(base + 2 * 256 * sizeof(int32_t));
  device.v = device.u + device.terms * 256;
  device.c0 = host.c0;
  return device;
}

std::string GpuDecompositionUpload(const TableDecomposition& host, GpuDecomposition* device) {
  if (device == nullptr) return "GpuDecompositionUpload: null output";
  *device = GpuDecomposition();
  std::vector<unsigned char> staging;
  const std::string error = GpuDecompositionPack(host, &staging);
  if (!error.empty()) return error;
  void* memory = nullptr;
  cudaError_t e = cudaMalloc(&memory, staging.size());
  if (e != cudaSuccess) return CudaError("cudaMalloc of a decomposition", e);
  e = cudaMemcpy(memory, staging.data(), staging.size(), cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaFree(memory);
    return CudaError("cudaMemcpy of a decomposition", e);
  }
  *device = GpuDecompositionAt(host, memory);
  return "";
}

std::string GpuDecompositionFree(GpuDecomposition* device) {
  if (device == nullptr || device->alpha == nullptr) return "";
  const cudaError_t e = cudaFree(const_cast<int32_t*>(device->alpha));  // the allocation's start
  *device = GpuDecomposition();
  return e == cudaSuccess ? "" : CudaError("cudaFree of a decomposition", e);
}

template <typename T>
std::string ApproxConvGpuDecomposed(const ConvShape& s, const T* input, const T* filter, const GpuQuant* quant,
                                    const GpuDecomposition& d, T* output, cudaStream_t stream, void* workspace,
                                    size_t workspace_bytes, const GpuDecomposedOptions& options) {
  if (s.output_elements() == 0) return "";
  std::string error = GpuDecomposedSupports(s, d.terms);
  if (!error.empty()) return error;
  if (quant == nullptr || output == nullptr || filter == nullptr || (input == nullptr && s.input_elements() > 0) ||
      d.u == nullptr || d.v == nullptr || d.alpha == nullptr || d.beta == nullptr) {
    return "ApproxConvGpuDecomposed: null device pointer";
  }
  const Layout l = MakeLayout(s, d.terms);
  if (workspace == nullptr || workspace_bytes < l.bytes) {
    return "ApproxConvGpuDecomposed: the workspace must hold GpuDecomposedWorkspaceBytes(shape, terms) = " +
           std::to_string(l.bytes) + " bytes of device memory";
  }
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return "ApproxConvGpuDecomposed: the workspace must be 16-byte aligned";
  }
  if (options.k_order != GpuKOrder::kAuto && options.k_order != GpuKOrder::kTapsOuter &&
      options.k_order != GpuKOrder::kTapsInner) {
    return "ApproxConvGpuDecomposed: options.k_order is not a GpuKOrder";
  }
  if (options.halo_beside != GpuBeside::kAuto && options.halo_beside != GpuBeside::kOff &&
      options.halo_beside != GpuBeside::kOn) {
    return "ApproxConvGpuDecomposed: options.halo_beside is not a GpuBeside";
  }
  if (options.halo_streaming != GpuBeside::kAuto && options.halo_streaming != GpuBeside::kOff &&
      options.halo_streaming != GpuBeside::kOn) {
    return "ApproxConvGpuDecomposed: options.halo_streaming is not a GpuBeside";
  }
  if (options.tile != GpuDecomposedTile::kAuto &&
      (static_cast<int>(options.tile) < 0 || static_cast<int>(options.tile) >= static_cast<int>(GpuDecomposedTile::kCount))) {
    return "ApproxConvGpuDecomposed: unknown tile";
  }
  DeviceInfo dev;
  error = GetDeviceInfo(&dev);
  if (!error.empty()) return error;
  const GpuGeometry g = MakeGpuGeometry(s);
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  uint8_t* codes = ws + l.codes;
  int8_t* planes = reinterpret_cast<int8_t*>(ws + l.planes);
  long long* alpha_sums = reinterpret_cast<long long*>(ws + l.alpha_sums);
  int32_t* code_sums = reinterpret_cast<int32_t*>(ws + l.code_sums);
  int8_t* b_planes = reinterpret_cast<int8_t*>(ws + l.filter);
  unsigned long long* channel_sums = reinterpret_cast<unsigned long long*>(ws + l.channel_sums);

  uint8_t* filter_codes = ws + l.filter_codes;
  uint32_t* ready = reinterpret_cast<uint32_t*>(ws + l.ready);

  // The phase events (a test hook): event 0 before the first launch, event i + 1 after phase i.
  auto mark = [&](int event) -> std::string {
    if (options.phase_events == nullptr) return "";
    const cudaError_t r = cudaEventRecord(options.phase_events[event], stream);
    return r == cudaSuccess ? "" : CudaError("cudaEventRecord of a phase event", r);
  };
  auto mark_if = [&](bool record, int event) -> std::string { return record ? mark(event) : ""; };

  // The fused input pass stages a block's codes in shared memory: slices of at most kInputCodesPerBlock
  // channels (every layer of a real network; the reduction-limit tests have wider ones).
  const bool fused = !options.separate_prepasses && l.input_blocks > 0;
  // Whether the GEMM may run beside the pre-pass (PrepassKernel's kBeside; GpuDecomposedOptions::halo_beside):
  // the halo GEMM, where one pre-pass launch writes all it reads (the fused pass, the filter's planes
  // inline). (Its flags are read in 32-bit arithmetic: the slices' count must fit.)
  const bool beside_fits = fused && FilterPlanesInline(g) && s.input_elements() > 0 && l.items + s.groups() <= INT_MAX;
  // Whether the tuning also times the halo GEMM beside the pre-pass with evict-first hints (TunedPlan::streaming):
  // float32 outputs of at least 3/4 of L2, which cannot wait there for their reader anyway.
  const bool streaming_fits = std::is_same<T, float>::value &&
                              4 * s.output_elements() * static_cast<int64_t>(sizeof(T)) >= 3 * int64_t{dev.l2_bytes};

  // The pre-passes: the input pass, the filter's codes, sums and planes (and, with `record`, the phase
  // events before each); with `beside_blocks` input blocks a multiprocessor (not 0), for the halo GEMM
  // launched beside them.
  // `pointwise`: for a pointwise tile, which reads the input itself: the sums' zeroing, the filter's codes and
  // sums, its planes in the pointwise order (phases 0, 3 and 4; the input phases record zero time).
  // `streaming`: beside the GEMM, the input read evict-first (float32; TunedPlan::streaming).
  auto prepasses = [&](bool record, int beside_blocks, bool pointwise, bool streaming) -> std::string {
    const bool beside = beside_blocks > 0;
    std::string err;
    if (!(err = mark_if(record, 0)).empty()) return err;
    cudaError_t e = cudaSuccess;
    const int64_t slices = l.items + s.groups();
    // The per-channel sums that the filter's codes and sums add into (FilterSumsBlock, in either path),
    // zeroed by a launch of their own, as the fused path's filter blocks run beside the input pass, not
    // after one of its blocks could zero them; the fused pre-pass launches beside it (ZeroSumsKernel). With
    // `beside`, the words of Layout::ready too.
    const int sum_count = static_cast<int>(s.out_depth * 2);
    const int ready_count = beside ? static_cast<int>(kReadyChunks + l.input_blocks) : 0;
    ZeroSumsKernel<<<(sum_count + ready_count + kPrepThreads - 1) / kPrepThreads, kPrepThreads, 0, stream>>>(
        channel_sums, sum_count, ready, ready_count);
    e = cudaGetLastError();
    if (e != cudaSuccess) return CudaError("the channel sums' zeroing launch", e);
    if (!(err = mark_if(record, 1)).empty()) return err;
    // The filter's codes and sums by their own launch (the separate pre-passes, the pointwise tiles).
    auto filter_sums = [&]() -> std::string {
      FilterSumsKernel<T><<<static_cast<unsigned>(FilterSumsBlocks(g)), kPrepThreads, 0, stream>>>(
          filter, g, d, quant, channel_sums, filter_codes);
      const cudaError_t r = cudaGetLastError();
      return r == cudaSuccess ? "" : CudaError("the filter sums launch", r);
    };
    if (pointwise) {
      if (!(err = mark_if(record, 2)).empty() || !(err = mark_if(record, 3)).empty()) return err;
      if (!(err = filter_sums()).empty() || !(err = mark_if(record, 4)).empty()) return err;
      const int64_t words = s.out_depth * s.in_depth * PointwiseTerms(d.terms) / 4;
      PointwiseFilterPlanesKernel<<<PrepBlocks(words, dev.sms), kPrepThreads, 0, stream>>>(
          filter_codes, g, d, reinterpret_cast<int8_t*>(ws + l.pointwise_filter));
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the pointwise filter planes launch", e);
      return mark_if(record, 5);
    }
    if (!fused && s.input_elements() > 0) {
      InputCodesKernel<T><<<PrepBlocks(s.input_elements(), dev.sms), kPrepThreads, 0, stream>>>(
          input, g, s.input_elements(), quant, codes);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the input codes launch", e);
    }
    if (!(err = mark_if(record, 2)).empty()) return err;
    if (fused) {
      const int per_block = static_cast<int>(l.input_slices);  // >= 1
      // Lanes per slice for its sums: a power of two <= 32 that leaves each lane at least 4 reads (words of
      // 4 codes where cg is a multiple of 4, else codes), or 1.
      const int64_t reads = s.filter_depth % 4 == 0 ? s.filter_depth / 4 : s.filter_depth;
      int lanes = 1;
      while (lanes < 32 && 8 * lanes <= reads) lanes *= 2;
      // The filter's codes and sums in the same launch (phase 3 records zero time), and its planes where
      // FilterPlanesInline holds (then phase 4 too).
      const int64_t filter_blocks = FilterSumsBlocks(g);
      // Beside the halo GEMM, persistent input blocks (PrepassKernel): beside_blocks a multiprocessor at most.
      const int64_t input_grid =
          beside ? std::min<int64_t>(l.input_blocks, int64_t{beside_blocks} * dev.sms) : l.input_blocks;
      const int64_t blocks = filter_blocks + input_grid;
      if (blocks > INT_MAX) return "ApproxConvGpuDecomposed: input too large for one GPU launch";
      // With PrepassKernel's 5 KB of static shared memory: < 48 KB.
      const size_t smem = 256 * sizeof(long long) + static_cast<size_t>((d.terms + 3) / 4) * 1024 +
                          static_cast<size_t>(per_block) * static_cast<size_t>(s.filter_depth);
      // The build with whole-sector stores where InputPassBlock can take them.
      const bool pair_stores = PairStoresApply(static_cast<int>(s.filter_depth), d.terms);
      auto prepass = beside ? (pair_stores ? PrepassKernel<T, true, true> : PrepassKernel<T, false, true>)
                            : (pair_stores ? PrepassKernel<T, true, false> : PrepassKernel<T, false, false>);
      if constexpr (std::is_same<T, float>::value) {
        if (beside && streaming) {
          prepass = pair_stores ? PrepassKernel<T, true, true, true> : PrepassKernel<T, false, true, true>;
        }
      }
      // Launched beside ZeroSumsKernel: its filter blocks wait for it.
      e = LaunchAfter(prepass, dim3(static_cast<unsigned>(blocks)), kPrepThreads, smem, stream, true, input, filter,
                      g, l, d, quant, per_block, lanes, static_cast<int>(filter_blocks), planes, alpha_sums,
                      code_sums, channel_sums, filter_codes, FilterPlanesInline(g) ? b_planes : nullptr, ready,
                      ZeroChunksOf(l, g.groups));
      if (e != cudaSuccess) return CudaError("the input pass launch", e);
    } else {
      // A warp per slice (the zero point's slices are always there).
      const size_t planes_smem = 256 * sizeof(int32_t) + static_cast<size_t>(d.terms) * 256;
      InputPlanesKernel<<<PrepBlocks(slices * 32, dev.sms), kPrepThreads, planes_smem, stream>>>(
          codes, g, l, d, quant, planes, alpha_sums, code_sums);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the input planes launch", e);
    }
    if (!(err = mark_if(record, 3)).empty()) return err;
    // The filter sums and codes before its planes: FilterPlanesKernel reads the codes.
    if (!fused && !(err = filter_sums()).empty()) return err;
    if (!(err = mark_if(record, 4)).empty()) return err;
    if (!fused || !FilterPlanesInline(g)) {
      const int64_t b_chunks = l.k_padded / kChunk * s.out_depth;
      FilterPlanesKernel<<<PrepBlocks(b_chunks, dev.sms), kPrepThreads, static_cast<size_t>(d.terms) * 256,
                           stream>>>(filter_codes, g, l, d, b_planes);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the filter planes launch", e);
    }
    if (!(err = mark_if(record, 5)).empty()) return err;
    return "";
  };

  GemmArgs args;
  args.planes = planes;
  args.b_planes = b_planes;
  args.alpha_sums = alpha_sums;
  args.code_sums = code_sums;
  args.channel_sums = channel_sums;
  args.alpha = d.alpha;
  args.taps_c0 = static_cast<long long>(s.taps()) * d.c0;
  args.l = l;
  args.m_tiles = args.n_tiles = args.k_tiles = 0;  // set by LaunchGemm for its tile
  args.pair_stores = s.data_format == DataFormat::kNHWC && s.out_depth_per_group() % 2 == 0 &&
                     reinterpret_cast<uintptr_t>(output) % (2 * sizeof(T)) == 0;
  args.narrow_sums = NarrowSumsFit(s.taps());
  args.padded_taps = PaddedTaps(g);
  const Epilogue epi{quant, options.debug_acc, options.debug_act_sum};
  // beside: the halo GEMM beside the pre-pass (which prepasses() launched for it); streaming: its build with
  // evict-first stores.
  auto launch = [&](GpuDecomposedTile tile, GpuKOrder k_order, bool beside, bool streaming) -> std::string {
    GemmArgs a = args;
    a.taps_inner = k_order == GpuKOrder::kTapsInner;
    if (tile == GpuDecomposedTile::kTileHalo) {
      return LaunchHalo<T>(MakeHaloPlan(s, d.terms), a, g, epi, output, dev.sms, stream, beside ? ready : nullptr,
                           static_cast<int>(FilterSumsBlocks(g)), streaming);
    }
    if (IsPointwiseTile(tile)) {
      PointwiseArgs pw;
      pw.alpha = d.alpha;
      pw.u = d.u;
      pw.terms = d.terms;
      pw.channel_sums = channel_sums;
      pw.taps_c0 = args.taps_c0;
      pw.n_tiles = pw.k_tiles = 0;  // set by the launch
      pw.pair_stores = args.pair_stores;
      pw.narrow_sums = args.narrow_sums;
      const int8_t* b = reinterpret_cast<const int8_t*>(ws + l.pointwise_filter);
      return tile == GpuDecomposedTile::kTilePointwise128x256
                 ? LaunchPointwiseBlock<T, 2>(pw, b, g, epi, input, output, dev.sms, stream)
                 : LaunchPointwiseBlock<T, 1>(pw, b, g, epi, input, output, dev.sms, stream);
    }
    return LaunchTile<T>(tile, !options.plain_fragment_loads, a, g, epi, output, stream);
  };
  // Whether the wgmma tiles can run here, asked once a call: for the choice, and for an explicit tile.
  const std::string wgmma_error = WgmmaAvailable();
  TunedPlan plan{options.tile, options.k_order, 0, false};
  if (plan.tile == GpuDecomposedTile::kAuto && plan.k_order == GpuKOrder::kAuto && options.tune &&
      options.debug_acc == nullptr && options.debug_act_sum == nullptr && !TuningOff()) {
    const TuningKey key = MakeTuningKey(s, d.terms, GpuDtypeOf<T>(), dev.ordinal);
    if (!FindTunedPlan(key, &plan) && StreamCanWait(stream)) {
      // Whole calls are timed: the input pass leaves the planes' last bytes in L2, which the GEMM's order
      // of reading them meets (GEMMs timed back to back had the K orders of 28x28 128->128 with 16 terms
      // the wrong way round: H200, --decomposed-tiles --seed 1110).
      auto call = [&](GpuDecomposedTile tile, GpuKOrder k_order, int beside_blocks, bool streaming) -> std::string {
        const std::string e = prepasses(false, beside_blocks, IsPointwiseTile(tile), streaming);
        return e.empty() ? launch(tile, k_order, beside_blocks > 0, streaming) : e;
      };
      const bool may_beside = beside_fits && options.halo_beside != GpuBeside::kOff;
      const bool may_stream = streaming_fits && options.halo_streaming != GpuBeside::kOff;
      if (!(error = TunePlan(s, d.terms, l, call, may_beside, may_stream, stream, &plan)).empty()) return error;
      StoreTunedPlan(key, plan);
    }
  }
  if (plan.tile == GpuDecomposedTile::kAuto) plan.tile = ChooseTile(s, d.terms, dev.sms, wgmma_error.empty());
  if (IsWgmmaTile(plan.tile) && !wgmma_error.empty()) return wgmma_error;
  // An explicit TMA or pointwise tile must take the shape (tuned plans and the rules take them only where they
  // do; the halo tile's launch refuses a shape itself).
  if (options.tile != GpuDecomposedTile::kAuto && (IsTmaTile(options.tile) || IsPointwiseTile(options.tile)) &&
      !(error = GpuDecomposedTileFits(options.tile, s, d.terms)).empty()) {
    return error;
  }
  if (plan.k_order == GpuKOrder::kAuto) plan.k_order = ChooseGpuKOrder(s, d.terms);
  if (options.halo_beside != GpuBeside::kAuto) {
    plan.beside_blocks = options.halo_beside == GpuBeside::kOn ? kBesideInputBlocksPerSm : 0;
  }
  if (options.halo_streaming != GpuBeside::kAuto) plan.streaming = options.halo_streaming == GpuBeside::kOn;
  const int beside_blocks = plan.tile == GpuDecomposedTile::kTileHalo && beside_fits ? plan.beside_blocks : 0;
  const bool streaming = beside_blocks > 0 && plan.streaming;  // (float32 only: the other types have no such build)
  if (!(error = prepasses(true, beside_blocks, IsPointwiseTile(plan.tile), streaming)).empty()) return error;
  if (!(error = launch(plan.tile, plan.k_order, beside_blocks > 0, streaming)).empty()) return error;
  return mark(6);
}

#define TFAPPROX_INSTANTIATE(T)                                                                                  \
  template std::string ApproxConvGpuDecomposed<T>(const ConvShape&, const T*, const T*, const GpuQuant*,         \
                                                  const GpuDecomposition&, T*, cudaStream_t, void*, size_t,      \
                                                  const GpuDecomposedOptions&);
TFAPPROX_INSTANTIATE(float)
TFAPPROX_INSTANTIATE(double)
TFAPPROX_INSTANTIATE(__half)
TFAPPROX_INSTANTIATE(__nv_bfloat16)
#undef TFAPPROX_INSTANTIATE

std::string ApproxConvGpuDecomposedUntyped(GpuDtype dtype, const ConvShape& s, const void* input, const void* filter,
                                           const GpuQuant* quant, const GpuDecomposition& d, void* output,
                                           cudaStream_t stream, void* workspace, size_t workspace_bytes) {
  return WithGpuType(dtype, "ApproxConvGpuDecomposedUntyped", [&](auto tag) {
    using T = decltype(tag);
    return ApproxConvGpuDecomposed<T>(s, static_cast<const T*>(input), static_cast<const T*>(filter), quant, d,
                                      static_cast<T*>(output), stream, workspace, workspace_bytes);
  });
}

}  // namespace tfapprox
