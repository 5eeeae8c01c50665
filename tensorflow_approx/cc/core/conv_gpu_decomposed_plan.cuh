// The decomposed kernel's plans: its GEMM tiles, the rules that choose a tile, the halo tile's plan, the K
// order and whether to take the decomposed kernel at all, and the plans tuned by timing a shape's first
// call. Internal: included by conv_gpu_decomposed.cu only (the launches and the entry point), whose top
// comment explains the decomposition.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_PLAN_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_PLAN_CUH_

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "tensorflow_approx/cc/core/conv_gpu_decomposed.h"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_halo.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_prepasses.cuh"

namespace tfapprox {
namespace decomposed_internal {

// ---------------------------------------------------------------------------------------------------
// Tiles and the rules.

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
// The wgmma column 2: the stages by TMA loads, A's im2col (DecomposedGemmKernel's kTma; conv_gpu_decomposed_tma.cuh),
// only where TmaPlanesFit. Only 256x64k64 has that twin: H200, --decomposed-tiles --seed 3002, 16 terms, G
// LUT-MAC/s, TMA / gathers: 56x56 64->64 15,790 / 14,513, 1x1 56x56 64->256 10,739 / 9,432, ResNet-20's 8x8
// 64->64 14,327 / 5,964; wgmma128x128's twin lost to it (28x28 128->128 16,501 / 21,728, 7x7 512->512 12,581 /
// 15,664) and was dropped. Its rate column is 0: ChooseTile takes it only in place of wgmma256x64k64.
#define TFAPPROX_DECOMPOSED_TILES(X)                            \
  X(kTile128x128, 128, 128, 2, 4, 2, 64, 4, 1.0, 0)             \
  X(kTile64x64, 64, 64, 2, 2, 2, 64, 4, 0.7, 0)                 \
  X(kTile128x32, 128, 32, 4, 1, 2, 64, 4, 0.55, 0)              \
  X(kTile128x64, 128, 64, 2, 2, 4, 64, 4, 0.85, 0)              \
  X(kTile128x128k128, 128, 128, 2, 4, 2, 128, 3, 1.02, 0)       \
  X(kTileWgmma128x64, 128, 64, 8, 1, 2, 128, 4, 0.9, 1)         \
  X(kTileWgmma128x128, 128, 128, 8, 1, 2, 128, 3, 1.6, 1)       \
  X(kTileWgmma128x64k64, 128, 64, 8, 1, 3, 64, 4, 0.88, 1)      \
  X(kTileWgmma256x64k64, 256, 64, 8, 1, 2, 64, 4, 0.95, 1)      \
  X(kTileTma256x64k64, 256, 64, 8, 1, 2, 64, 4, 0, 2)

struct TileConfig {
  GpuDecomposedTile tile;
  int bm, bn, blocks_per_sm, bk;
  double rate;
  bool wgmma, tma;
};
#define TFAPPROX_TILE_CONFIG(tile, bm, bn, wm, wn, blocks, bk, stages, rate, wgmma) \
  {GpuDecomposedTile::tile, bm, bn, blocks, bk, rate, wgmma != 0, wgmma == 2},
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
bool IsPointwiseTile(GpuDecomposedTile tile) {
  return tile == GpuDecomposedTile::kTilePointwise128x256 || tile == GpuDecomposedTile::kTilePointwise64x256;
}
// The tiles that need sm_90a: the wgmma GEMM tiles and the pointwise tiles.
bool IsWgmmaTile(GpuDecomposedTile tile) {
  const int t = static_cast<int>(tile);
  return (t >= 0 && t < kGemmTiles && kTiles[t].wgmma) || IsPointwiseTile(tile);
}
bool IsTmaTile(GpuDecomposedTile tile) {
  const int t = static_cast<int>(tile);
  return t >= 0 && t < kGemmTiles && kTiles[t].tma;
}
// "" where the TMA tile `tile` can load this shape's planes (TmaPlanesFit at its stage width), else why not.
std::string TmaTileFits(GpuDecomposedTile tile, const ConvShape& s, int slice_bytes) {
  const std::string why = TmaPlanesFit(MakeGpuGeometry(s), slice_bytes, kTiles[static_cast<int>(tile)].bk);
  return why.empty() ? "" : "ApproxConvGpuDecomposed: " + why;
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
// With several terms, where it fits, its TMA twin (below).
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

// The pointwise tile pw128x256 first, where it fits and the decomposition has two or more terms: the tile
// table had it ahead of every other tile there, the halo tile included (H200, --decomposed-tiles --seed 5032,
// G LUT-MAC/s, pw128x256 against the best other tile, 5 / 16 terms): 1x1 56x56 64->256 20.2 / 16.3 T against
// 18.0 / 10.9 T, ResNet-20's 1x1 stride-2 16->32 1.52 / 1.33 T against 1.19 / 0.67 T, its 32->64 3.55 / 2.89 T
// against 2.59 / 1.53 T; pw64x256 trailed it or tied. With the exact table the halo tile led where it fits (1x1
// 56x56 28.4 T against 23.2 T) and the tiles were even on the 32->64 projection (3.86 against 3.79 T).
GpuDecomposedTile ChooseTile(const ConvShape& s, int terms, int sms, bool wgmma_available) {
  if (wgmma_available && terms >= 2 && PointwiseFits(s, terms).empty()) {
    return GpuDecomposedTile::kTilePointwise128x256;
  }
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
    if ((t.wgmma && !wgmma) || (t.bm == 256 && !planes_past_l2) || t.tma) continue;
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
  // Its TMA twin with several terms, where it takes the shape (it lost the exact table on 56x56 64->64, 86.7 T
  // against 88.3 T, and won with 5 and 16 terms: 38.6 / 36.6 T and 15.8 / 14.5 T; the table in kTiles).
  if (best == GpuDecomposedTile::kTileWgmma256x64k64 && terms > 1 &&
      TmaTileFits(GpuDecomposedTile::kTileTma256x64k64, s, l.slice_bytes).empty()) {
    return GpuDecomposedTile::kTileTma256x64k64;
  }
  return best;
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
      h.halo_h = static_cast<int>(halo_h);
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
  // The pre-pass's input blocks a multiprocessor with the halo GEMM beside it (GpuDecomposedOptions::
  // halo_beside); 0: the GEMM after the pre-pass.
  int beside_blocks;
  // Beside it: the input read and the outputs stored evict-first (GpuDecomposedOptions::halo_streaming).
  bool streaming;
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
void StoreTunedPlan(const TuningKey& key, const TunedPlan& plan) {
  std::lock_guard<std::mutex> lock(g_tuned_mutex);
  if (TunedPlans().size() < kMaxTunedPlans) TunedPlans()[key] = plan;
}

// TFAPPROX_GPU_TUNING=0 in the environment: tuned plans are neither made nor used (every call takes the
// rules).
bool TuningOff() {
  const char* env = std::getenv("TFAPPROX_GPU_TUNING");
  return env != nullptr && std::strcmp(env, "0") == 0;
}

// Whether a call on `stream` may wait for timings: not while the stream is being captured into a CUDA graph
// (such a call uses a plan tuned before, else the rules).
bool StreamCanWait(cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();  // (not sticky: only this answer is lost)
    return false;
  }
  return capture == cudaStreamCaptureStatusNone;
}

// Times `launch` (a whole call with one plan, on the stream) and returns the fastest plan in *best: every
// tile that runs here and takes the shape (GpuDecomposedTileFits), with the rule's K order, then the other
// order with the fastest tile where that tile reads K in an order (KOrderApplies, GEMM tiles only: the halo
// tile keeps every tap's K at once, the pointwise tiles have one tap). A plan's time is the least of kRuns
// calls after one untimed call; a plan whose launch fails is passed over. The host waits for the timings.
// Returns "" or a CUDA error of the events, or the last launch error where no plan ran.
// launch(tile, order, beside_blocks, streaming) runs a whole call (TunedPlan's fields); `halo_beside`: whether
// the halo GEMM may run beside the pre-pass (then it is timed after it and beside it with
// kBesideInputBlocksPerSm and kBesideInputBlocksMax input blocks a multiprocessor); halo_streaming: beside it,
// those two also with the streaming hints (TunedPlan::streaming).
std::string TunePlan(const ConvShape& s, int terms, const Layout& l,
                     const std::function<std::string(GpuDecomposedTile, GpuKOrder, int, bool)>& launch,
                     bool halo_beside, bool halo_streaming, cudaStream_t stream, TunedPlan* best) {
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
  auto time_plan = [&](GpuDecomposedTile tile, GpuKOrder order, int beside, bool streaming, float* ms) -> bool {
    std::string e = launch(tile, order, beside, streaming);
    for (int r = 0; r < kRuns && e.empty(); ++r) {
      const cudaError_t ev = cudaEventRecord(events[r], stream);
      if (ev != cudaSuccess) {
        error = CudaError("cudaEventRecord for tuning", ev);
        return false;
      }
      e = launch(tile, order, beside, streaming);
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
    if (!GpuDecomposedTileFits(tile, s, terms).empty()) continue;
    // After the pre-pass (0), beside it with either count of input blocks, then those two with streaming hints.
    struct Choice {
      int beside_blocks;
      bool streaming;
    };
    constexpr Choice kChoices[] = {{0, false},
                                   {kBesideInputBlocksPerSm, false},
                                   {kBesideInputBlocksMax, false},
                                   {kBesideInputBlocksPerSm, true},
                                   {kBesideInputBlocksMax, true}};
    const int choices = tile != GpuDecomposedTile::kTileHalo || !halo_beside ? 1 : halo_streaming ? 5 : 3;
    for (int i = 0; i < choices; ++i) {
      const Choice c = kChoices[i];
      float ms = 0;
      if (time_plan(tile, rule_order, c.beside_blocks, c.streaming, &ms) && (best_ms < 0 || ms < best_ms)) {
        best_ms = ms;
        *best = TunedPlan{tile, rule_order, c.beside_blocks, c.streaming};
      }
    }
  }
  if (error.empty() && best_ms >= 0 && static_cast<int>(best->tile) < kGemmTiles &&
      KOrderApplies(static_cast<int>(s.filter_h * s.filter_w), l.slice_bytes, kTiles[static_cast<int>(best->tile)].bk)) {
    const GpuKOrder other = rule_order == GpuKOrder::kTapsInner ? GpuKOrder::kTapsOuter : GpuKOrder::kTapsInner;
    float ms = 0;
    if (time_plan(best->tile, other, 0, false, &ms) && ms < best_ms) best->k_order = other;
  }
  for (cudaEvent_t e : events) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (!error.empty()) return error;
  return best_ms < 0 ? launch_error : "";
}

}  // namespace decomposed_internal

// ---------------------------------------------------------------------------------------------------
// The public rules (conv_gpu_decomposed.h).

using decomposed_internal::Layout;
using decomposed_internal::MakeLayout;
using decomposed_internal::PlanesBytes;

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
// The pointwise tiles (sm_90a) came later and changed the 1x1 layers: `--decomposed-batches --runs 5 --seed
// 5301` (H200, tuned plans; the decomposed call's time over the lookups', exact / 4 / 8 / 16 terms, batches
// 250 / 62 / 15): ResNet-20's 1x1 stride-2 32->64 projection 0.51 / 0.54 / 0.76 / 0.68, 0.46 / 0.48 / 0.56 /
// 0.70, 0.47 / 0.47 / 0.57 / 0.66, where the rule above left it to the lookups (m of 16); the 16->32 one up
// to 1.18. So where those tiles run the shape (`pointwise`: GpuDecomposedTileFits), 1x1 layers of 32+ input
// and 64+ output channels with 2-16 terms (the pointwise tiles' rule plan; exact tables keep other tiles)
// and as many outputs as the 32->64 projection at batch 15 (61,440) take the decomposed kernel too
// (PointwiseRuleShape: the shape's side of that, cheap, asked before the device's).
bool PointwiseRuleShape(const ConvShape& s, int terms) {
  return terms >= 2 && s.filter_h == 1 && s.filter_w == 1 && s.in_depth >= 32 && s.out_depth >= 64 &&
         s.output_elements() >= 61440;
}

bool GpuPreferDecomposed(const ConvShape& s, int terms, bool pointwise) {
  if (!GpuDecomposedSupports(s, terms).empty()) return false;
  if (terms > 16 || s.groups() != 1 || s.data_format != DataFormat::kNHWC) return false;
  if (pointwise && PointwiseRuleShape(s, terms)) return true;
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

// (Every op call asks: the device's answer, a few CUDA queries, only for the shapes the pointwise rule
// would take.)
bool GpuPreferDecomposed(const ConvShape& s, int terms) {
  const bool pointwise = PointwiseRuleShape(s, terms) &&
                         GpuDecomposedTileFits(GpuDecomposedTile::kTilePointwise128x256, s, terms).empty();
  return GpuPreferDecomposed(s, terms, pointwise);
}

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_PLAN_CUH_
