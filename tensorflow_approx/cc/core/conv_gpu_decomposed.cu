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
// reading A from input halos in shared memory), this file (tiles, the auto-choice, the
// decomposition's device form and the launches).
#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "tensorflow_approx/cc/core/conv_gpu_decomposed_gemm.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_halo.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_prepasses.cuh"

namespace tfapprox {
namespace {

using namespace decomposed_internal;  // NOLINT: this file's kernels and layout, written as if declared here

// ---------------------------------------------------------------------------------------------------
// Host side.

// Every tile once: its enum, the block tile, the warps (WARPS_M x WARPS_N), the blocks per
// multiprocessor it is built for (__launch_bounds__' minimum, which caps its registers: 64K / (threads x
// blocks); and ChooseTile's block slots), the K bytes per stage and the stages (BK 128: four mma k steps
// per barrier instead of two, three stages to stay in shared memory), and a throughput guess relative to
// 128 x 128, from the harness's --decomposed-tiles (it only matters when two tiles fit a shape about
// equally well). H200, seed 601, G LUT-MAC/s of the five performance layers, exact table / 16 terms:
// 128x128k128 led on the 128-512-channel 3x3 layers (81.8-102.0 T / 8.9-13.6 T, 128x128's 77.1-98.9 T
// / 7.9-12.2 T), 128x64 and 64x64 on 56x56 64->64 (62.7 T and 9.1 T). Larger tiles (256x64; 256x128 and
// 128x256 with 64 x 64 warp tiles; 256x128 with 128-byte stages) were slower than the best of these on
// every layer and table, and were dropped.
// The last column: 1 for the wgmma tiles (sm_90a; DecomposedGemmKernel's kWgmma: two warpgroups of BM / 2
// rows, WARPS_M = 8 x WARPS_N = 1 as its epilogue sees them, swizzled stages of 128 or 64 K bytes),
// which ChooseTile takes only where WgmmaAvailable. 128x64: four stages (two of copies in flight, one
// wgmma group left in flight), two blocks; 128x128: three stages (the wgmma of a stage finish before the
// next barrier), two blocks; 128x64k64: four stages of 64 bytes, three blocks. H200, seed 622, exact /
// 16 terms: wgmma128x128 led on 14x14 256->256 and 7x7 512->512 (117.6 T / 18.7 T, 106.3 T / 13.8 T)
// and with 16 terms on 28x28 128->128 (19.0 T against 128x128k128's 14.3 T); on 56x56 64->64
// wgmma128x64k64 led the exact table (63.7 T against 128x64's 61.8 T) and wgmma128x64 16 terms (10.0 T
// against 9.5 T). A 128x128 with four stages of 64 bytes was never first and was dropped. 256x64k64 (two
// wgmma blocks of 64 rows per warpgroup, four stages of 64 bytes, two blocks: half the filter's reads per
// pixel of the 128-row tiles) then led on 56x56 64->64, seed 626: 61.6 T exact, 14.0 T with 16 terms
// (wgmma128x64 12.5 T).
#define TFAPPROX_DECOMPOSED_TILES(X)                       \
  X(kTile128x128, 128, 128, 2, 4, 2, 64, 4, 1.0, 0)        \
  X(kTile64x64, 64, 64, 2, 2, 2, 64, 4, 0.7, 0)            \
  X(kTile128x32, 128, 32, 4, 1, 2, 64, 4, 0.55, 0)         \
  X(kTile128x64, 128, 64, 2, 2, 4, 64, 4, 0.85, 0)         \
  X(kTile128x128k128, 128, 128, 2, 4, 2, 128, 3, 1.02, 0)  \
  X(kTileWgmma128x64, 128, 64, 8, 1, 2, 128, 4, 0.9, 1)    \
  X(kTileWgmma128x128, 128, 128, 8, 1, 2, 128, 3, 1.6, 1)  \
  X(kTileWgmma128x64k64, 128, 64, 8, 1, 3, 64, 4, 0.88, 1)  \
  X(kTileWgmma256x64k64, 256, 64, 8, 1, 2, 64, 4, 0.95, 1)

struct TileConfig {
  GpuDecomposedTile tile;
  int bm, bn, blocks_per_sm, bk;
  double rate;
  bool wgmma;
};
#define TFAPPROX_TILE_CONFIG(tile, bm, bn, wm, wn, blocks, bk, stages, rate, wgmma) \
  {GpuDecomposedTile::tile, bm, bn, blocks, bk, rate, wgmma != 0},
constexpr TileConfig kTiles[] = {TFAPPROX_DECOMPOSED_TILES(TFAPPROX_TILE_CONFIG)};
#undef TFAPPROX_TILE_CONFIG
constexpr int kGemmTiles = static_cast<int>(sizeof(kTiles) / sizeof(kTiles[0]));
constexpr bool TilesInEnumOrder() {
  for (int t = 0; t < kGemmTiles; ++t) {
    if (static_cast<int>(kTiles[t].tile) != t) return false;
  }
  return true;
}
static_assert(kGemmTiles == static_cast<int>(GpuDecomposedTile::kTileHalo) && TilesInEnumOrder(),
              "kTiles[t] is tile t, for every tile of DecomposedGemmKernel (the halo tile is the last)");
bool IsWgmmaTile(GpuDecomposedTile tile) {
  const int t = static_cast<int>(tile);
  return t >= 0 && t < kGemmTiles && kTiles[t].wgmma;
}

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

// Planes (the input's int8 terms, Layout items x slice_bytes) of at least this many bytes are far past the
// H200's 50 MB L2: whatever a tile streams between two reads of the same plane bytes comes from DRAM again.
// The 256-row tile (ChooseTile) pays off only there (the K order from less: ChooseGpuKOrder).
constexpr int64_t kPlanesPastL2Bytes = int64_t{192} << 20;
int64_t PlanesBytes(const Layout& l) { return l.items * l.slice_bytes; }

// Estimated speed of a tile on a shape: the share of its outputs that are real x the share of its K
// stages that are real K (not zero padding) x the share of the last wave's block slots that are busy
// (the tile's blocks per multiprocessor) x its rate. Groups of 128+ channels with a K that fills
// 128-byte stages take one tile outright, as the tile table had them (H200, seed 622):
// - where the wgmma tiles run (`wgmma_available`, WgmmaAvailable), wgmma128x128 for any number of terms (but
//   see the exact table below): it led on
//   14x14 256->256 and 7x7 512->512 (exact 117.6 T and 106.3 T, 16 terms 18.7 T and 13.8 T) and with 16
//   terms on 28x28 128->128 (19.0 T; exact 85.9 T, within 5% of the first). The wave model would count
//   its idle multiprocessors on 7x7 512->512 against it (100 blocks), where it was a third faster than the
//   tile the model picked. The exact table (one term: K a few stages, so a block is mostly its fixed
//   costs) takes wgmma128x64k64 instead where wgmma128x128 needs more than one wave and leaves the last
//   under three quarters full: on 28x28 128->128 (392 blocks on 264 slots; 784 on 396 for 128x64k64)
//   it was 83.7 T against 76.4 T (seed 628). With one wave, however empty (14x14 256->256, 196 blocks),
//   wgmma128x128 led by 44%;
// - else 128x128k128 for one term (the exact table): it led among the mma.sync tiles on every such layer,
//   also where the wave model counts idle multiprocessors against it (7x7 512->512: 88.2 T against the
//   model's 64x64, 66.9 T).
// (On 1x1 56x56 64->256, one term, K is 64 bytes: half of a 128-byte stage is padding, and 128x128 led,
// 18.0 T against 16.5 T.) Filters of one spatial tap (1x1) keep the mma.sync tiles: on 1x1 56x56 64->256
// they led with the wgmma tiles there too (seed 626: exact 17.3 T against 15.6 T, 16 terms 128x128k128's
// 8.4 T against 7.3 T). The 256-row tile only where the planes are past the L2 (kPlanesPastL2Bytes), where
// halving the filter's reads pays: on 56x56 64->64 with 16 terms (205 MB) it led, 14.0 T against 12.6 T;
// on ResNet-20's 8x8 64->64 (batch 1000, 16-65 MB) it lost to 128x64 by 18-26% with 4-16 terms (seed 629).
//
// The halo tile (conv_gpu_decomposed_halo.cuh) first, where it fits and the tile table had it ahead of every
// GEMM tile (H200, --decomposed-tiles, seeds 830 and 840, G LUT-MAC/s, halo against the best GEMM tile,
// exact / 5 / 16 terms): groups of at most 16 output channels with any number of terms (ResNet-20's stem
// 4.2 / 3.9 / 1.8 T against 2.6 / 2.4 / 1.6 T, its 16->16 layer 21.5 / 9.3 / 4.3 T against 13.2 / 7.5 /
// 3.5 T), and groups of 17-32 channels with the exact table and a filter of several taps (16x16 32->32
// 35.6 T against 30.5 T, the stride-2 3x3 16->32 13.8 T against 11.9 T; with 5 terms it lost there, 14.0
// T against 15.3 T and 6.4 T against 7.1 T). It lost on every layer of 64+ channels (8x8 64->64 exact
// 41.2 T against 53.4 T, 56x56 64->64 64.5 T against 66.1 T) and on the 1x1 stride-2 projections but the
// smallest (16->32 exact 1.66 T against 1.60 T: within the spread, left to the GEMM tiles).
// Its halo then copied whole pixels through L1 (load_halo), and the same table (seed 1010, before / after,
// against the best GEMM tile) had it ahead on every group of at most 32 channels where it fits (32->32 with
// 5 terms 14.1 / 17.6 T against 15.4 T, the stride-2 16->32 6.4 / 8.0 T against 7.1 T; 16->16 with 5 terms
// 9.1 / 13.6 T) and, with the exact table, on layers of at most 64 input channels a group (3x3 56x56 64->64
// 65.9 / 74.4 T against 65.9 T, 1x1 56x56 64->256 15.9 / 20.9 T against 18.1 T, ResNet-20's 8x8 64->64 42.1 /
// 54.7 T against 52.8-54.6 T), not on 28x28 128->128 (81.6 / 85.8 T against 90.2 T) nor with 5 terms on
// 1x1 56x56 64->256 (12.2 T against 13.4 T).
bool HaloPreferred(const ConvShape& s, int terms) {
  const int64_t npg = s.out_depth_per_group();
  const bool fits = GpuDecomposedTileFits(GpuDecomposedTile::kTileHalo, s, terms).empty();
  return fits && (npg <= 32 || (terms <= 1 && s.filter_depth <= 64));
}

GpuDecomposedTile ChooseTile(const ConvShape& s, int terms, int sms, bool wgmma_available) {
  if (HaloPreferred(s, terms)) return GpuDecomposedTile::kTileHalo;
  const bool wgmma = wgmma_available && s.filter_h * s.filter_w > 1;
  const Layout l = MakeLayout(s, std::max(terms, 1));
  const bool planes_past_l2 = PlanesBytes(l) >= kPlanesPastL2Bytes;
  const int64_t k_bytes = l.k_chunks * kChunk;
  auto k_fill = [&](int bk) { return static_cast<double>(k_bytes) / static_cast<double>((k_bytes + bk - 1) / bk * bk); };
  // A tile's tiles of pixels and of channels on this shape, its blocks, the device's block slots for it,
  // and the waves the blocks take.
  struct Waves {
    int64_t m_tiles, n_tiles, blocks, slots, waves;
  };
  auto waves_of = [&](const TileConfig& t) {
    const int64_t m_tiles = (s.out_pixels() + t.bm - 1) / t.bm;
    const int64_t n_tiles = (s.out_depth_per_group() + t.bn - 1) / t.bn;
    const int64_t blocks = m_tiles * n_tiles * s.groups();
    const int64_t slots = t.blocks_per_sm * static_cast<int64_t>(std::max(sms, 1));
    return Waves{m_tiles, n_tiles, blocks, slots, (blocks + slots - 1) / slots};
  };
  if (s.out_depth_per_group() >= 128 && k_fill(128) >= 0.9) {
    if (wgmma) {
      const Waves w = waves_of(kTiles[static_cast<int>(GpuDecomposedTile::kTileWgmma128x128)]);
      if (terms <= 1 && w.waves > 1 && w.blocks - (w.waves - 1) * w.slots < w.slots * 3 / 4) {
        return GpuDecomposedTile::kTileWgmma128x64k64;
      }
      return GpuDecomposedTile::kTileWgmma128x128;
    }
    if (terms <= 1) return GpuDecomposedTile::kTile128x128k128;
  }
  double best_score = -1;
  GpuDecomposedTile best = GpuDecomposedTile::kTile128x128;
  for (const TileConfig& t : kTiles) {
    if ((t.wgmma && !wgmma) || (t.bm == 256 && !planes_past_l2)) continue;
    const Waves w = waves_of(t);
    const double fill = static_cast<double>(s.out_pixels()) * s.out_depth_per_group() /
                        (static_cast<double>(w.m_tiles * t.bm) * static_cast<double>(w.n_tiles * t.bn));
    const double score =
        fill * k_fill(t.bk) * static_cast<double>(w.blocks) / static_cast<double>(w.waves * w.slots) * t.rate;
    if (score > best_score + 1e-9) {
      best_score = score;
      best = t.tile;
    }
  }
  return best;
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
  constexpr int smem = GemmSmemBytes<BM, BN, BK, STAGES, kWgmma>();
  static_assert(BLOCKS * (smem + 1024) <= 228 * 1024, "BLOCKS blocks fit a multiprocessor's shared memory");
  void (*kernel)(GemmArgs, GpuGeometry, Epilogue, T*) = nullptr;
  if constexpr (kWgmma) {
    // wgmma reads shared memory itself: ldmatrix and plain_fragment_loads do not apply; one kernel.
    kernel = DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, BLOCKS, BK, STAGES, true, true>;
  } else {
    kernel = ldmatrix ? DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, BLOCKS, BK, STAGES, true>
                      : DecomposedGemmKernel<T, BM, BN, WARPS_M, WARPS_N, BLOCKS, BK, STAGES, false>;
  }
  const std::string setup = SetUpKernel(reinterpret_cast<const void*>(kernel), smem, 0, nullptr);
  if (!setup.empty()) return setup;
  kernel<<<static_cast<unsigned>(blocks), WARPS_M * WARPS_N * 32, smem, stream>>>(args, g, epi, output);
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

// The halo tile's plan for a shape: the block (BM rows x BN channels), its rectangle and halo, the
// shared-memory pitches. bm == 0: the tile does not take the shape (`why`).
struct HaloPlan {
  int bm = 0, bn = 0;
  HaloArgs h{};
  std::string why;
};

// A block's shared memory at most: two blocks a multiprocessor (228 KB, 1 KB of each block's reserved).
constexpr int kHaloSmemLimit = 112 * 1024;

// An odd count of chunks at least `chunks`: the pitch whose rows an ldmatrix phase reads conflict-free.
int OddPitch(int chunks) { return chunks | 1; }

HaloPlan MakeHaloPlan(const ConvShape& s, int terms) {
  HaloPlan plan;
  const Layout l = MakeLayout(s, std::max(terms, 1));
  const int64_t npg = s.out_depth_per_group();
  const int bn = npg <= 16 ? 16 : npg <= 32 ? 32 : 64;
  const int64_t q_steps = (l.k_chunks + 3) / 4 * 2;  // k steps of two chunks, an even count of them
  const int64_t b_bytes = bn * (2 * q_steps + 1) * kChunk;  // at least OddPitch(2 q_steps) chunks a row
  const std::string too_big = "ApproxConvGpuDecomposed: the halo tile needs the filter's rows (" +
                              std::to_string(b_bytes) + " bytes) and two input halos in " +
                              std::to_string(kHaloSmemLimit) + " bytes of shared memory";
  if (b_bytes > kHaloSmemLimit) {
    plan.why = too_big;
    return plan;
  }
  // Rectangles: BM = 128 or 64 pixels, TW = 8, 16 or 32 wide; the one with the least shared-memory
  // traffic and copies in all: per rectangle and K chunk, ldmatrix reads BM rows of A and 4 x BN rows of
  // B (every warp reads all of B) and the halo copies halo_pixels chunks; the larger block on a tie.
  int64_t best_cost = -1;
  for (int bm : {128, 64}) {
    for (int shift : {3, 4, 5}) {
      const int tw = 1 << shift, th = bm / tw;
      const int64_t halo_h = (th - 1) * s.stride_h + (s.filter_h - 1) * s.dilation_h + 1;
      const int64_t halo_w = (tw - 1) * s.stride_w + (s.filter_w - 1) * s.dilation_w + 1;
      if (halo_h * halo_w > kHaloSmemLimit) continue;
      HaloArgs h{};
      h.tile_w_shift = shift;
      h.tiles_w = static_cast<int>((s.out_w + tw - 1) / tw);
      h.tiles_h = static_cast<int>((s.out_h + th - 1) / th);
      h.halo_w = static_cast<int>(halo_w);
      h.halo_pixels = static_cast<int>(halo_h * halo_w);
      h.a_pitch = OddPitch(l.slice_chunks);
      h.b_pitch = OddPitch(static_cast<int>(2 * q_steps));
      h.q_chunks = static_cast<int>(l.k_chunks);
      h.q_steps = static_cast<int>(q_steps);
      if (HaloSmemBytes(bm, bn, static_cast<int>(sizeof(double)), h) > kHaloSmemLimit) continue;
      const int64_t tiles = s.batch * h.tiles_h * static_cast<int64_t>(h.tiles_w);
      const int64_t cost = tiles * (bm + 4 * bn + h.halo_pixels);
      if (best_cost >= 0 && cost >= best_cost) continue;
      best_cost = cost;
      plan.bm = bm;
      plan.bn = bn;
      h.gemm.m_tiles = static_cast<int>(std::min<int64_t>(tiles, INT_MAX));
      h.gemm.n_tiles = static_cast<int>((npg + bn - 1) / bn);
      plan.h = h;
    }
  }
  if (plan.bm == 0) {
    plan.why = too_big;
  } else if (s.batch * plan.h.tiles_h * static_cast<int64_t>(plan.h.tiles_w) > INT_MAX ||
             static_cast<int64_t>(plan.h.gemm.n_tiles) * s.groups() > 65535) {
    plan.bm = 0;
    plan.why = "ApproxConvGpuDecomposed: convolution too large for the halo tile's launch";
  }
  return plan;
}

template <typename T, int BM, int BN>
std::string LaunchHaloBlock(const HaloPlan& plan, const GemmArgs& base, const GpuGeometry& g, const Epilogue& epi,
                            T* output, int sms, cudaStream_t stream) {
  HaloArgs h = plan.h;
  const int m_tiles = h.gemm.m_tiles, n_tiles = h.gemm.n_tiles;
  h.gemm = base;
  h.gemm.m_tiles = m_tiles;
  h.gemm.n_tiles = n_tiles;
  const int smem = static_cast<int>(HaloSmemBytes(BM, BN, static_cast<int>(sizeof(typename RealOf<T>::type)), h));
  const auto kernel = DecomposedHaloKernel<T, BM, BN>;
  int per_sm = 0;
  const std::string setup = SetUpKernel(reinterpret_cast<const void*>(kernel), smem, 128, &per_sm);
  if (!setup.empty()) return setup;
  // Persistent blocks: as many as fit at once, spread over the channel tiles and groups (grid y); each
  // walks rectangles blockIdx.x, + gridDim.x, ...
  const int64_t columns = static_cast<int64_t>(n_tiles) * g.groups;
  const int64_t slots = static_cast<int64_t>(std::max(per_sm, 1)) * std::max(sms, 1);
  const int64_t blocks_x = std::max<int64_t>(1, std::min<int64_t>(m_tiles, (slots + columns - 1) / columns));
  kernel<<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(columns)), 128, smem, stream>>>(h, g, epi,
                                                                                                       output);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : CudaError("the decomposed halo launch", e);
}

template <typename T>
std::string LaunchHalo(const HaloPlan& plan, const GemmArgs& args, const GpuGeometry& g, const Epilogue& epi,
                       T* output, int sms, cudaStream_t stream) {
  if (plan.bm == 0) return plan.why;
  const bool tall = plan.bm == 128;
  switch (plan.bn) {
    case 16:
      return tall ? LaunchHaloBlock<T, 128, 16>(plan, args, g, epi, output, sms, stream)
                  : LaunchHaloBlock<T, 64, 16>(plan, args, g, epi, output, sms, stream);
    case 32:
      return tall ? LaunchHaloBlock<T, 128, 32>(plan, args, g, epi, output, sms, stream)
                  : LaunchHaloBlock<T, 64, 32>(plan, args, g, epi, output, sms, stream);
    default:
      return tall ? LaunchHaloBlock<T, 128, 64>(plan, args, g, epi, output, sms, stream)
                  : LaunchHaloBlock<T, 64, 64>(plan, args, g, epi, output, sms, stream);
  }
}

// ---------------------------------------------------------------------------------------------------
// Tuning. ChooseTile and ChooseGpuKOrder are rules fitted to the harness's benchmark layers; on some of
// those layers, and on any layer off them, they can miss the fastest tile by far (H200, --decomposed-tiles
// --seed 1100: ResNet-20's 8x8 64->64 with 5 terms took wgmma128x64 at 15.4 T where mma128x64 ran 25.0 T;
// 56x56 64->64 with 5 terms wgmma128x64 at 28.8 T against wgmma256x64k64's 33.2 T). So a default call
// (tile and K order kAuto, GpuDecomposedOptions::tune) the first time it meets a (device, shape, terms,
// type) times itself whole (pre-passes and GEMM) with every tile that takes the shape, on its own data,
// then with the other K order and the fastest tile, and keeps the fastest plan for every later call.
// Every tile and order gives the same integers and output bits (the harness holds each to the lookups),
// so tuning changes the time only (docs/decomposition.md, "Tuned plans").

// What a tuned plan is kept under: the shape, the terms, the type and the device.
using TuningKey = std::array<int64_t, 20>;
TuningKey MakeTuningKey(const ConvShape& s, int terms, GpuDtype dtype, int device) {
  return {s.batch,    s.in_h,       s.in_w,       s.in_depth,   s.filter_h, s.filter_w,
          s.filter_depth, s.out_depth, s.stride_h, s.stride_w, s.dilation_h, s.dilation_w,
          s.pad_top,  s.pad_left,   s.out_h,      s.out_w,      static_cast<int64_t>(s.data_format),
          terms,      static_cast<int64_t>(dtype), device};
}
struct TunedPlan {
  GpuDecomposedTile tile;
  GpuKOrder k_order;
};
// At most this many plans are kept (a few hundred bytes each); shapes past it take the rules.
constexpr size_t kMaxTunedPlans = 1 << 14;
std::mutex g_tuned_mutex;
std::map<TuningKey, TunedPlan>& TunedPlans() {  // (never destroyed: calls may run during exit)
  static auto* plans = new std::map<TuningKey, TunedPlan>();
  return *plans;
}
bool FindTunedPlan(const TuningKey& key, TunedPlan* plan) {
  std::lock_guard<std::mutex> lock(g_tuned_mutex);
  const auto it = TunedPlans().find(key);
  if (it == TunedPlans().end()) return false;
  *plan = it->second;
  return true;
}

// Whether this call may tune: TFAPPROX_GPU_TUNING=0 turns tuning off (every call takes the rules), and a
// stream being captured into a CUDA graph cannot wait for the timings.
bool TuningAllowed(cudaStream_t stream) {
  const char* env = std::getenv("TFAPPROX_GPU_TUNING");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();  // (not sticky: only this answer is lost)
    return false;
  }
  return capture == cudaStreamCaptureStatusNone;
}

// Times `launch` (a whole call with one plan, on the stream) and returns the fastest plan in *best: every
// tile that runs here and takes the shape, with the rule's K order, then the other order with the fastest
// tile where that tile reads K in the order (a filter of several spatial taps, a slice of whole stages; the
// halo tile keeps every tap's K at once). A plan's time is the least of kRuns calls after one untimed call;
// a plan whose launch fails is passed over. The host waits for the timings. Returns "" or a CUDA error of
// the events, or the last launch error where no plan ran.
std::string TunePlan(const ConvShape& s, int terms, bool wgmma, const Layout& l,
                     const std::function<std::string(GpuDecomposedTile, GpuKOrder)>& launch, cudaStream_t stream,
                     TunedPlan* best) {
  constexpr int kRuns = 3;
  cudaEvent_t events[kRuns + 1] = {};
  std::string error;
  for (cudaEvent_t& e : events) {
    const cudaError_t r = cudaEventCreate(&e);
    if (r != cudaSuccess) {
      error = CudaError("cudaEventCreate for tuning", r);
      break;
    }
  }
  float best_ms = -1;
  std::string launch_error;
  // The plan's time in *ms, or false where its launch failed (launch_error) or an event did (error).
  auto time_plan = [&](GpuDecomposedTile tile, GpuKOrder order, float* ms) -> bool {
    std::string e = launch(tile, order);
    for (int r = 0; r < kRuns && e.empty(); ++r) {
      const cudaError_t ev = cudaEventRecord(events[r], stream);
      if (ev != cudaSuccess) {
        error = CudaError("cudaEventRecord for tuning", ev);
        return false;
      }
      e = launch(tile, order);
    }
    if (!e.empty()) {
      launch_error = e;
      return false;
    }
    cudaError_t ev = cudaEventRecord(events[kRuns], stream);
    if (ev == cudaSuccess) ev = cudaEventSynchronize(events[kRuns]);
    *ms = -1;
    for (int r = 0; r < kRuns && ev == cudaSuccess; ++r) {
      float t = 0;
      ev = cudaEventElapsedTime(&t, events[r], events[r + 1]);  // run r: from its start to the next's
      if (*ms < 0 || t < *ms) *ms = t;
    }
    if (ev != cudaSuccess) {
      error = CudaError("the tuning's timings", ev);
      return false;
    }
    return true;
  };
  const GpuKOrder rule_order = ChooseGpuKOrder(s, terms);
  for (int t = 0; t < static_cast<int>(GpuDecomposedTile::kCount) && error.empty(); ++t) {
    const GpuDecomposedTile tile = static_cast<GpuDecomposedTile>(t);
    if ((IsWgmmaTile(tile) && !wgmma) || (tile == GpuDecomposedTile::kTileHalo && MakeHaloPlan(s, terms).bm == 0)) {
      continue;
    }
    float ms = 0;
    if (time_plan(tile, rule_order, &ms) && (best_ms < 0 || ms < best_ms)) {
      best_ms = ms;
      *best = TunedPlan{tile, rule_order};
    }
  }
  if (error.empty() && best_ms >= 0 && best->tile != GpuDecomposedTile::kTileHalo && s.filter_h * s.filter_w > 1 &&
      l.slice_bytes % kTiles[static_cast<int>(best->tile)].bk == 0) {
    const GpuKOrder other = rule_order == GpuKOrder::kTapsInner ? GpuKOrder::kTapsOuter : GpuKOrder::kTapsInner;
    float ms = 0;
    if (time_plan(best->tile, other, &ms) && ms < best_ms) best->k_order = other;
  }
  for (cudaEvent_t e : events) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (!error.empty()) return error;
  return best_ms < 0 ? launch_error : "";
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

// From the harness's --decomposed-orders table (H200, docs/decomposition.md): taps inner won on slices of
// at most 256 bytes (4 terms of 64 channels: 13-17% on the ResNet-20 16x16 32->32 and 8x8 64->64 layers)
// and where the planes are far past the L2 (205 MB, 56x56 64->64 with 16 terms: 15%); elsewhere it was
// even or lost, by up to 26% on 7x7 512->512 (slices of 2-8 KB, planes of 6-25 MB that stay in L2 in
// either order) and 9-13% on the ResNet-20 layers with slices of 512 bytes to 1 KB.
// Re-measured after A's copies through L1 (5ca4f19; --decomposed-orders --runs 5, seeds 670 and 671): taps
// inner also led on 28x28 128->128 with 16 terms (planes of 103 MB: 21.7 T against 18.3 T, then 21.7 T
// against 21.0 T), ResNet-20's 16x16 32->32 and 8x8 64->64 with 16 terms (131 and 65.5 MB: 5% both runs;
// 9% and 3%), and lost where the planes fit the H200's 50 MB L2 (14x14 256->256 with 16 terms, 51 MB: 4-5%;
// 8x8 64->64 with 8 terms, 33 MB: 4%). So planes of 56 MiB (59 MB) or more take taps inner
// (kKOrderPlanesBytes), whatever the slice: the line between 51 and 65.5 MB.
constexpr int64_t kKOrderPlanesBytes = int64_t{56} << 20;
GpuKOrder ChooseGpuKOrder(const ConvShape& s, int terms) {
  const Layout l = MakeLayout(s, terms);
  return l.slice_bytes <= 256 || PlanesBytes(l) >= kKOrderPlanesBytes ? GpuKOrder::kTapsInner : GpuKOrder::kTapsOuter;
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
    case GpuDecomposedTile::kTileHalo: return "halo";
    default: return "?";
  }
}

const char* GpuDecomposedPhaseName(int phase) {
  static const char* const kNames[kGpuDecomposedPhases] = {"memset",       "in codes",      "in planes",
                                                           "flt sums",     "flt planes",    "gemm"};
  return phase >= 0 && phase < kGpuDecomposedPhases ? kNames[phase] : "?";
}

// The auto-choice. Figures: the H200 run of commit 7379c0c (benchmarks/gpu/gpu_harness.cu
// --decomposed-only --seed 503, float32 NHWC, groups 1, every call timed whole, G LUT-MAC/s), as speedups
// over the lookups (ApproxConvGpu kAuto, the same run) for 1 / 4 / 8 / 16 terms, with K = taps *
// in_channels_per_group and m = LUT-MACs per input element (= out_pixels * out_depth * K / input elements:
// how much GEMM work there is per unit of the input pass, which grows with terms and is paid for every
// input pixel, also those a stride skips), and the call's LUT-MACs:
//   3x3 56x56 64->64    K  576  m  576  7.4e9  15.35 7.82 4.20 2.30
//   3x3 28x28 128->128  K 1152  m 1152  7.4e9  13.22 6.00 4.06 2.19
//   3x3 14x14 256->256  K 2304  m 2304  7.4e9  16.76 6.55 3.64 1.92
//   3x3 7x7 512->512    K 4608  m 4608  7.4e9  10.65 4.82 3.05 1.71
//   1x1 56x56 64->256   K   64  m  256  3.3e9   4.32 3.25 2.16 1.40
//   R20 32x32 3->16     K   27  m  144  0.44e9  1.43 1.50 1.26 0.57
//   R20 32x32 16->16    K  144  m  144  2.4e9   5.38 3.70 1.76 0.78
//   R20 16x16 32->32    K  288  m  288  2.4e9  10.57 4.63 2.43 1.45
//   R20 8x8 64->64      K  576  m  576  2.4e9  10.64 3.12 2.36 1.33
//   R20 3x3 s2 16->32   K  144  m   72  1.2e9   4.66 3.49 1.75 0.66
//   R20 1x1 s2 16->32   K   16  m    8  0.13e9  1.04 0.79 0.42 0.15
//   R20 1x1 s2 32->64   K   32  m   16  0.13e9  1.17 0.88 0.52 0.20
// The rule kept to rows measured at least about 1.3x faster (a margin for run-to-run noise and for
// shapes between the rows); a decomposition's terms are rounded up to the next measured count (1, 4, 8,
// 16: more terms are never faster):
//   1-4 terms:   K >= 27  and m >= 72    (slowest picked row 1.43x: the stem; the 1x1 stride-2 projections,
//                                         m of 8 and 16, left out)
//   5-8 terms:   K >= 64  and m >= 72    (slowest picked 1.75x; the stem's 1.26x left out)
//   9-16 terms:  K >= 64  and m >= 144   (the stride-2 layers left out; K was 288 until the halo tile took
//                                         ResNet-20's 16->16 with 16 terms to 1.7x the lookups, then 144
//                                         until the 1x1 56x56 64->256 measured 2.0-2.5x at every batch
//                                         below)
//   more terms:  never (not measured).
// And only inside what the figures cover: groups 1 (grouped and depthwise layers were not measured; their
// K is small anyway) and NHWC (NCHW adds a transposing input pass to both kernels, not measured).
// Call size. The GEMM has no split K: a call with few output tiles runs a few blocks down the whole K,
// where the lookups split K over the GPU. At smaller batches (H200, `--decomposed-batches --runs 5 --seed
// 1150`, every benchmark layer at its batch / 4, / 16 and / 64, tuned plans) the decomposed call lost where
// outputs / (K x terms) was small: 7x7 512->512 at batch 4 with 8 and 16 terms (1.6x and 3.2x the lookups'
// time; outputs / (K x terms) 5.4 and 2.7), 14x14 256->256 at batch 4 with 16 terms (1.55x; 10.9), 7x7
// 512->512 at batch 16 with 16 terms (1.09x; 5.4), and short of 1.3x faster up to 27.6 (ResNet-20's 8x8
// 64->64 at batch 62 with 16 terms, 0.96x). It won at any call size with enough outputs per K x terms:
// ResNet-20's 16x16 32->32 at batch 15 (3.5e7 LUT-MACs) took 0.10-0.25x the lookups' time. So a call
// needs outputs >= 16 x K x terms (rounded as above), and either 4e8 LUT-MACs (the old floor: the big
// layers at batch 64, where 7x7 512->512 with 16 terms has 21.8 and wins 2.6x) or K >= 64 and 32 x K x
// terms outputs (the stem, K of 27, lost 1.4-3x at batches 15 and 62 to the lookups' columns kernel). Over
// that table and the batch-64/1000 bench (seeds 1150 and 1121, 192 rows) this picks 118 rows, none slower
// than the lookups (the old floor of 4e8 LUT-MACs alone: 83 picks, 4 slower); it leaves out 5 rows that
// were at least 2x faster (14x14 and 7x7 at batch 1 exact, the stride-2 and 32->32 layers at batch 15-62
// with 16 terms). A default call in TensorFlow takes this rule; the harness's "auto" columns and its
// "wrong pick" counts check it against each run.
bool GpuPreferDecomposed(const ConvShape& s, int terms) {
  if (!GpuDecomposedSupports(s, terms).empty()) return false;
  if (terms > 16 || s.groups() != 1 || s.data_format != DataFormat::kNHWC) return false;
  const int64_t k = s.taps();
  const int64_t input_elements = s.input_elements();
  if (input_elements <= 0) return false;
  const double m = static_cast<double>(s.lut_macs()) / static_cast<double>(input_elements);
  const int measured_terms = terms <= 1 ? 1 : terms <= 4 ? 4 : terms <= 8 ? 8 : 16;
  bool shape_ok = false;
  if (measured_terms <= 4) {
    shape_ok = k >= 27 && m >= 72;
  } else if (measured_terms <= 8) {
    shape_ok = k >= 64 && m >= 72;
  } else {
    shape_ok = k >= 64 && m >= 144;
  }
  if (!shape_ok) return false;
  const double per_k = static_cast<double>(s.output_elements()) / (static_cast<double>(k) * measured_terms);
  return per_k >= 16 && (s.lut_macs() >= int64_t{400000000} || (k >= 64 && per_k >= 32));
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
  if (GetDeviceInfo(&dev).empty() && FindTunedPlan(MakeTuningKey(shape, terms, dtype, dev.ordinal), &tuned)) {
    return GpuDecomposedPlan{tuned.tile, tuned.k_order, true};
  }
  return GpuDecomposedPlan{ChooseGpuDecomposedTile(shape, terms), ChooseGpuKOrder(shape, terms), false};
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

  // The phase events (a test hook): event 0 before the first launch, event i + 1 after phase i.
  auto mark = [&](int event) -> std::string {
    if (options.phase_events == nullptr) return "";
    const cudaError_t r = cudaEventRecord(options.phase_events[event], stream);
    return r == cudaSuccess ? "" : CudaError("cudaEventRecord of a phase event", r);
  };
  auto mark_if = [&](bool record, int event) -> std::string { return record ? mark(event) : ""; };

  // The pre-passes: the input pass, the filter's codes, sums and planes (and, with `record`, the phase
  // events before each).
  auto prepasses = [&](bool record) -> std::string {
    std::string error;
    if (!(error = mark_if(record, 0)).empty()) return error;
    cudaError_t e = cudaSuccess;
    // The fused input pass stages a block's codes in shared memory: slices of at most kInputCodesPerBlock
    // channels (every layer of a real network; the reduction-limit tests have wider ones).
    const bool fused = !options.separate_prepasses && s.filter_depth <= kInputCodesPerBlock;
    const int64_t slices = l.items + s.groups();
    // The per-channel sums that the filter's codes and sums add into (FilterSumsBlock, in either path): a
    // memset, as the fused path's filter blocks run beside the input pass, not after one of its blocks
    // could zero them.
    e = cudaMemsetAsync(channel_sums, 0, static_cast<size_t>(s.out_depth) * 2 * sizeof(unsigned long long), stream);
    if (e != cudaSuccess) return CudaError("cudaMemsetAsync of the workspace", e);
    if (!(error = mark_if(record, 1)).empty()) return error;
    if (!fused && s.input_elements() > 0) {
      InputCodesKernel<T><<<PrepBlocks(s.input_elements(), dev.sms), kPrepThreads, 0, stream>>>(
          input, g, s.input_elements(), quant, codes);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the input codes launch", e);
    }
    if (!(error = mark_if(record, 2)).empty()) return error;
    if (fused) {
      const int per_block = static_cast<int>(kInputCodesPerBlock / s.filter_depth);  // >= 1
      // Lanes per slice for its sums: a power of two <= 32 that leaves each lane at least 4 reads (words of
      // 4 codes where cg is a multiple of 4, else codes), or 1.
      const int64_t reads = s.filter_depth % 4 == 0 ? s.filter_depth / 4 : s.filter_depth;
      int lanes = 1;
      while (lanes < 32 && 8 * lanes <= reads) lanes *= 2;
      // The filter's codes and sums in the same launch (phase 3 records zero time), and its planes where
      // FilterPlanesInline holds (then phase 4 too).
      const int64_t filter_blocks = FilterSumsBlocks(g);
      const int64_t blocks = filter_blocks + (slices + per_block - 1) / per_block;
      if (blocks > INT_MAX) return "ApproxConvGpuDecomposed: input too large for one GPU launch";
      // With PrepassKernel's 5 KB of static shared memory: < 48 KB.
      const size_t smem = 256 * sizeof(long long) + static_cast<size_t>((d.terms + 3) / 4) * 1024 +
                          static_cast<size_t>(per_block) * static_cast<size_t>(s.filter_depth);
      // The build with whole-sector stores where InputPassBlock can take them.
      const auto prepass = PairStoresApply(static_cast<int>(s.filter_depth), d.terms) ? PrepassKernel<T, true>
                                                                                       : PrepassKernel<T, false>;
      prepass<<<static_cast<unsigned>(blocks), kPrepThreads, smem, stream>>>(
          input, filter, g, l, d, quant, per_block, lanes, static_cast<int>(filter_blocks), planes, alpha_sums,
          code_sums, channel_sums, filter_codes, FilterPlanesInline(g) ? b_planes : nullptr);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the input pass launch", e);
    } else {
      // A warp per slice (the zero point's slices are always there).
      const size_t planes_smem = 256 * sizeof(int32_t) + static_cast<size_t>(d.terms) * 256;
      InputPlanesKernel<<<PrepBlocks(slices * 32, dev.sms), kPrepThreads, planes_smem, stream>>>(
          codes, g, l, d, quant, planes, alpha_sums, code_sums);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the input planes launch", e);
    }
    if (!(error = mark_if(record, 3)).empty()) return error;
    // The filter sums and codes before its planes: FilterPlanesKernel reads the codes.
    if (!fused) {
      FilterSumsKernel<T><<<static_cast<unsigned>(FilterSumsBlocks(g)), kPrepThreads, 0, stream>>>(
          filter, g, d, quant, channel_sums, filter_codes);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the filter sums launch", e);
    }
    if (!(error = mark_if(record, 4)).empty()) return error;
    if (!fused || !FilterPlanesInline(g)) {
      const int64_t b_chunks = l.k_padded / kChunk * s.out_depth;
      FilterPlanesKernel<<<PrepBlocks(b_chunks, dev.sms), kPrepThreads, static_cast<size_t>(d.terms) * 256,
                           stream>>>(filter_codes, g, l, d, b_planes);
      e = cudaGetLastError();
      if (e != cudaSuccess) return CudaError("the filter planes launch", e);
    }
    if (!(error = mark_if(record, 5)).empty()) return error;
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
  const Epilogue epi{quant, options.debug_acc, options.debug_act_sum};
  auto launch = [&](GpuDecomposedTile tile, GpuKOrder k_order) -> std::string {
    GemmArgs a = args;
    a.taps_inner = k_order == GpuKOrder::kTapsInner;
    if (tile == GpuDecomposedTile::kTileHalo) {
      return LaunchHalo<T>(MakeHaloPlan(s, d.terms), a, g, epi, output, dev.sms, stream);
    }
    return LaunchTile<T>(tile, !options.plain_fragment_loads, a, g, epi, output, stream);
  };
  // Whether the wgmma tiles can run here, asked once a call: for the choice, and for an explicit tile.
  const std::string wgmma_error = WgmmaAvailable();
  TunedPlan plan{options.tile, options.k_order};
  if (plan.tile == GpuDecomposedTile::kAuto && plan.k_order == GpuKOrder::kAuto && options.tune &&
      options.debug_acc == nullptr && options.debug_act_sum == nullptr && TuningAllowed(stream)) {
    const TuningKey key = MakeTuningKey(s, d.terms, GpuDtypeOf<T>(), dev.ordinal);
    if (!FindTunedPlan(key, &plan)) {
      // Whole calls are timed: the input pass leaves the planes' last bytes in L2, which the GEMM's order
      // of reading them meets (GEMMs timed back to back had the K orders of 28x28 128->128 with 16 terms
      // the wrong way round: H200, --decomposed-tiles --seed 1110).
      auto call = [&](GpuDecomposedTile tile, GpuKOrder k_order) -> std::string {
        const std::string e = prepasses(false);
        return e.empty() ? launch(tile, k_order) : e;
      };
      if (!(error = TunePlan(s, d.terms, wgmma_error.empty(), l, call, stream, &plan)).empty()) return error;
      std::lock_guard<std::mutex> lock(g_tuned_mutex);
      if (TunedPlans().size() < kMaxTunedPlans) TunedPlans()[key] = plan;
    }
  }
  if (plan.tile == GpuDecomposedTile::kAuto) plan.tile = ChooseTile(s, d.terms, dev.sms, wgmma_error.empty());
  if (IsWgmmaTile(plan.tile) && !wgmma_error.empty()) return wgmma_error;
  if (plan.k_order == GpuKOrder::kAuto) plan.k_order = ChooseGpuKOrder(s, d.terms);
  if (!(error = prepasses(true)).empty()) return error;
  if (!(error = launch(plan.tile, plan.k_order)).empty()) return error;
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
