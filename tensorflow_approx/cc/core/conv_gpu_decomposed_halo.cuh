// The decomposed kernel's halo GEMM: the implicit GEMM of conv_gpu_decomposed_gemm.cuh for a block of
// output pixels that is a rectangle of one image, whose A operand is gathered by ldmatrix from the
// rectangle's input halo in shared memory instead of being copied there tap by tap.
// Internal: included by conv_gpu_decomposed.cu only, whose top comment explains the decomposition.
//
// Why: the tap-by-tap GEMM copies every pixel's slice once per spatial tap (nine times for 3x3) and its
// filter tile once per block, with a cp.async and its address work per 16-byte chunk; on the layers with
// few channels (ResNet-20's 16-64) and on the exact table, a block's K is a few stages, so that work and
// the pipeline's fill, not the tensor cores, set its time (docs/decomposition.md). Here a block keeps
// its filter rows (all of K) in shared memory for its whole life and walks rectangles of output pixels
// (persistent blocks); per rectangle it copies the halo (each input pixel's slice once) and the tensor
// cores read every tap's A straight from it: ldmatrix takes a row address per lane, so the rows of an
// mma tile at tap (kh, kw) are the halo pixels under the tile shifted by the tap.
// Only where the filter rows and two halos fit a multiprocessor's shared memory twice over
// (MakeHaloPlan, conv_gpu_decomposed_plan.cuh).
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_HALO_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_HALO_CUH_

#include "tensorflow_approx/cc/core/conv_gpu_decomposed_gemm.cuh"

namespace tfapprox {
namespace decomposed_internal {

// A halo launch's shape (MakeHaloPlan). K is the filter's q_chunks 16-byte chunks, tap by tap (the planes'
// order: chunk q is chunk q % slice_chunks of tap q / slice_chunks), taken two at a time (one mma k step
// of 32 bytes may span two taps); q_steps is even (the steps come in pairs), the chunks past K zeros in B.
struct HaloArgs {
  GemmArgs gemm;         // the planes and sums; m_tiles: rectangles, n_tiles: BN-channel tiles of a group
  int tile_w_shift;      // a rectangle is TW = 1 << tile_w_shift pixels wide (8, 16 or 32), BM / TW high
  int tiles_w, tiles_h;  // rectangles per image row and column
  int halo_w, halo_pixels;
  int a_pitch, b_pitch;  // 16-byte chunks per halo pixel and per filter row in shared memory: odd (below)
  int q_chunks, q_steps;
  // Where the pre-pass runs beside this launch (PrepassKernel's kBeside build): its Layout::ready words,
  // filter blocks and zero point's chunks (WaitHaloInputs). Else null.
  const uint32_t* ready;
  int filter_blocks;
  ZeroChunks zero_chunks;
  int halo_h;  // input rows of a halo
};

// Shared memory of a block: the filter rows, two halos (the next rectangle's copies land while the tensor
// cores read the current one) with their pixels' alpha and code sums, per row of the rectangle the alpha
// sum, the output pixel and the converted code sum, per chunk of K its offset in a halo, and the block's
// channels (ChannelEpilogue, once per block: the same for every rectangle). real_bytes: sizeof(Real).
// (64-bit: MakeHaloPlan sizes candidates past any limit.)
inline int64_t HaloSmemBytes(int bm, int bn, int real_bytes, const HaloArgs& h) {
  constexpr int64_t kLong = sizeof(long long), kInt = sizeof(int);
  return int64_t{bn} * h.b_pitch * kChunk + 2 * int64_t{h.halo_pixels} * (int64_t{h.a_pitch} * kChunk + kLong + kInt) +
         bm * (kLong + kInt + real_bytes) + 2 * int64_t{h.q_steps} * kInt +
         bn * (real_bytes == 4 ? int64_t{sizeof(ChannelEpilogue<float>)} : int64_t{sizeof(ChannelEpilogue<double>)});
}

// 8 or 4 bytes from global to shared memory (through L1: .cg takes 16-byte copies only).
template <int kBytes>
__device__ __forceinline__ void CopySmallAsync(uint32_t dst, const void* src) {
  static_assert(kBytes == 4 || kBytes == 8, "cp.async.ca copies of 4 or 8 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)), "n"(kBytes)
               : "memory");
}

// x, which nvcc must keep in a register: it cannot see how it was computed, so it cannot recompute it.
__device__ __forceinline__ uint32_t Opaque(uint32_t x) {
  uint32_t y;
  asm("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

// x / d and x % d for 0 <= x < 2^22 and d >= 1 without an integer division (about 25 instructions on
// the GPU): the quotient from x times a float reciprocal is within one of the true one there (x and
// the reciprocal each carry a relative error below 2^-23), and one correction step fixes it.
struct SmallDivisor {
  int d;
  float inverse;
  __device__ explicit SmallDivisor(int divisor) : d(divisor), inverse(1.0f / static_cast<float>(divisor)) {}
  __device__ __forceinline__ int Divide(int x, int* remainder) const {
    int q = static_cast<int>(static_cast<float>(x) * inverse);
    int r = x - q * d;
    if (r < 0) --q, r += d;
    if (r >= d) ++q, r -= d;
    *remainder = r;
    return q;
  }
};

// What a halo block needs to wait for its rectangles' inputs (WaitHaloInputs), held in shared memory.
struct HaloWait {
  const uint32_t* ready;
  int m_tiles, tiles_w, tiles_h, tile_rows, stride_h, pad_top, halo_h, in_h;
  unsigned row_items, slices;  // input slices per row of the input and per chunk
  int zero_first, zero_last, input_chunks, filter_blocks;
};

// Called by warp 0 of a halo block whose pre-pass runs beside it (HaloArgs::ready): returns once the
// pre-pass has written what rectangle `tile` reads (tile >= m_tiles: none): the chunks of input slices
// that its halo's input rows span and the zero point's chunks; with `filter`, also once every filter block
// is done (B and the channel sums). The caller's barrier passes that on to the block. Returns whether every
// input block is done: then the block need not ask again. A lane a flag, read with acquire: what the
// writer stored before its flag (PrepassKernel: a fence, then the flag) is then visible.
// Its operands are read from shared memory where it runs: taken from the kernel's arguments, they held
// registers through the kernel's main loop, which is at its cap (more spills on ResNet-20's 16-channel
// layers).
__device__ __forceinline__ bool WaitHaloInputs(const HaloWait* w, int tile, bool filter) {
  // (32-bit: the slices' count fits an int where the GEMM runs beside the pre-pass.)
  int lo = 0, hi = -1;
  if (tile < w->m_tiles) {
    const int rest = tile / w->tiles_w, ty = rest % w->tiles_h, n = rest / w->tiles_h;
    const int ih0 = ty * w->tile_rows * w->stride_h - w->pad_top;
    const int ih_lo = max(ih0, 0), ih_hi = min(ih0 + w->halo_h - 1, w->in_h - 1);
    if (ih_lo <= ih_hi) {
      lo = static_cast<int>((n * w->in_h + ih_lo) * w->row_items / w->slices);
      hi = static_cast<int>(((n * w->in_h + ih_hi + 1) * w->row_items - 1) / w->slices);
    }
  }
  const int z0 = w->zero_first, zeros = w->zero_last - z0 + 1, count = zeros + (hi - lo + 1);
  const int lane = threadIdx.x & 31;
  for (;;) {
    bool done = false, filter_done = !filter;
    if (lane == 0) {
      done = LoadAcquire(w->ready + kReadyInputChunks) == static_cast<uint32_t>(w->input_chunks);
      if (!filter_done) {
        filter_done = LoadAcquire(w->ready + kReadyFilterBlocks) == static_cast<uint32_t>(w->filter_blocks);
      }
    }
    bool chunks = true;
    for (int i = lane; i < count; i += 32) {
      chunks = chunks && LoadAcquire(w->ready + kReadyChunks + (i < zeros ? z0 + i : lo + i - zeros)) != 0;
    }
    done = __shfl_sync(0xFFFFFFFFu, done, 0);
    filter_done = __shfl_sync(0xFFFFFFFFu, filter_done, 0);
    chunks = __all_sync(0xFFFFFFFFu, chunks);
    if (filter_done && (done || chunks)) return done;
    __nanosleep(256);
  }
}

// Four warps; warp w computes rows 32w .. 32w + 31 (BM = 128) or 16w .. 16w + 15 (BM = 64) of the
// rectangle (TW-pixel lines in order) x all BN channels, as mma.m16n8k32 tiles.
// Bank conflicts: the eight lanes of an ldmatrix phase read eight consecutive pixels of a line (A) or
// eight consecutive filter rows (B) at the same chunk; with an odd pitch in chunks their 16-byte chunks
// fall in eight different groups of four banks (stride 1; stride 2: two-way).
// Blocks a multiprocessor for BN channels (__launch_bounds__' minimum: registers for them): the halos of
// the layers with few channels are small, and their blocks need many warps to hide the latencies of a
// rectangle's short K (BN 16: 102 registers, five blocks).
template <int BN>
constexpr int HaloBlocksPerSm() {
  return BN <= 16 ? 5 : 3;
}

// kBeside: launched beside the pre-pass (HaloArgs::ready), waiting for what it reads (WaitHaloInputs). A
// build of its own: the waits cost the kernel registers (spills where it is at its cap). kStreaming (float32
// beside the pre-pass only; TunedPlan::streaming): the outputs stored evict-first (StorePairHinted).
template <typename T, int BM, int BN, bool kBeside, bool kStreaming = false>
__global__ void __launch_bounds__(128, HaloBlocksPerSm<BN>())
    DecomposedHaloKernel(HaloArgs h, GpuGeometry g, Epilogue epi, T* __restrict__ output) {
  constexpr int kThreads = 128, kWarps = 4;
  constexpr int WM = BM / kWarps, MT = WM / 16, NT = BN / 8;
  static_assert(WM % 16 == 0 && NT % 2 == 0, "whole 16-row mma tiles; B read 16 channels at a time");
  using Real = typename RealOf<T>::type;
  const GemmArgs& args = h.gemm;
  const Layout& l = args.l;

  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* s_b = smem;                                          // [BN][b_pitch chunks]
  unsigned char* s_halo = s_b + BN * h.b_pitch * kChunk;              // [2][halo_pixels][a_pitch chunks]
  const int halo_bytes = h.halo_pixels * h.a_pitch * kChunk;
  long long* s_halo_alpha = reinterpret_cast<long long*>(s_halo + 2 * halo_bytes);  // [2][halo_pixels]
  auto* s_channel = reinterpret_cast<ChannelEpilogue<Real>*>(s_halo_alpha + 2 * h.halo_pixels);   // [BN]
  long long* s_alpha = reinterpret_cast<long long*>(s_channel + BN);                   // [BM]
  int* s_halo_codes = reinterpret_cast<int*>(s_alpha + BM);                             // [2][halo_pixels]
  int* s_p = s_halo_codes + 2 * h.halo_pixels;                                          // [BM]: pixel or -1
  int* s_koff = s_p + BM;                                                               // [2 q_steps]
  Real* s_act = reinterpret_cast<Real*>(s_koff + 2 * h.q_steps);                        // [BM]
  // (Every long long, double and ChannelEpilogue above starts at a multiple of 8 bytes.)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nt_index = blockIdx.y % args.n_tiles, grp = blockIdx.y / args.n_tiles;
  const int n0 = nt_index * BN;
  const int sc = l.slice_chunks;
  const int q_padded = 2 * h.q_steps;
  const int tw_mask = (1 << h.tile_w_shift) - 1;
  const int tile_h = BM >> h.tile_w_shift;
  // With the pre-pass beside this launch, warp 0 waits for what rectangle `tile` reads (and, the first
  // time, for the filter); the barrier after it passes that on.
  __shared__ HaloWait s_wait;
  bool all_ready = !kBeside;
  if (!all_ready && tid == 0) {
    s_wait = HaloWait{h.ready, args.m_tiles, h.tiles_w, h.tiles_h, tile_h, g.stride_h, g.pad_top, h.halo_h, g.in_h,
                      static_cast<unsigned>(g.in_w * g.groups), static_cast<unsigned>(l.input_slices),
                      h.zero_chunks.first, h.zero_chunks.last, static_cast<int>(l.input_blocks), h.filter_blocks};
  }
  if (!all_ready) __syncwarp();
  auto wait_inputs = [&](int tile, bool filter) {
    if (!all_ready && warp == 0) all_ready = WaitHaloInputs(&s_wait, tile, filter);
  };
  wait_inputs(blockIdx.x, true);
  if (kBeside) __syncthreads();

  // The block's filter rows, all of K, once: zeros past the group's channels and past K. (Rows by
  // SmallDivisor: an integer division per chunk was most of the block's set-up on 56x56 64->64.)
  const SmallDivisor q_div(q_padded);
  for (int idx = tid; idx < BN * q_padded; idx += kThreads) {
    int q;
    const int row = q_div.Divide(idx, &q);
    const int channel = n0 + row;
    const bool fill = channel < g.npg && q < h.q_chunks;
    const int8_t* src =
        fill ? args.b_planes + static_cast<int64_t>(grp * g.npg + channel) * l.k_padded + q * kChunk : args.b_planes;
    CopyChunkAsync(SharedAddress(s_b + (row * h.b_pitch + q) * kChunk), src, fill);
  }
  // Chunk q of K at a halo pixel: its tap's shift and its chunk in the slice (past K: any chunk, times
  // B's zeros).
  for (int q = tid; q < q_padded; q += kThreads) {
    int offset = 0;
    if (q < h.q_chunks) {
      const int tap = q / sc, c = q - tap * sc;
      const int kh = tap / g.filter_w, kw = tap - kh * g.filter_w;
      offset = ((kh * g.dil_h * h.halo_w + kw * g.dil_w) * h.a_pitch + c) * kChunk;
    }
    s_koff[q] = offset;
  }
  // The block's channels' terms (the lookup kernels' dequantization, split as DequantizeTerms does).
  {
    const DequantizeTerms<Real> deq = TermsOf<Real>(epi.quant);
    const bool per_channel = epi.quant->channels != 1;
    for (int c = tid; c < BN; c += kThreads) {
      ChannelEpilogue<Real> ch{};
      if (n0 + c < g.npg) ch = MakeChannelEpilogue(args, g, epi, per_channel, grp * g.npg + n0 + c, deq);
      s_channel[c] = ch;
    }
  }

  const int in_hw = g.in_h * g.in_w;
  const int64_t pixel_bytes = static_cast<int64_t>(g.groups) * l.slice_bytes;
  const int8_t* zero_point_slice = args.planes + (l.items + grp) * l.slice_bytes;
  // A padded tap's alpha and code sums: cg zero-point codes (within the K limit, cg * zero point fits an
  // int32, as the pre-pass's code sums do).
  const int zero_point = epi.quant->input.zero_point;
  const long long pad_alpha = static_cast<long long>(g.cg) * __ldg(args.alpha + zero_point);
  const int pad_codes = g.cg * zero_point;
  const SmallDivisor halo_div(h.halo_w);
  // Rectangle `tile`: image n, first output row oh0 and column ow0.
  auto origin = [&](int tile, int* n, int* oh0, int* ow0) {
    const int tx = tile % h.tiles_w, rest = tile / h.tiles_w;
    const int ty = rest % h.tiles_h;
    *n = rest / h.tiles_h;
    *oh0 = ty * tile_h;
    *ow0 = tx << h.tile_w_shift;
  };
  // Its halo into buffer `buf`: every chunk of every pixel of the input rows and columns its taps read, the
  // zero point's slice where they are padding; and each halo pixel's alpha and code sums (the pre-pass's),
  // a padded tap's where it is padding (stored, not copied). A thread takes whole pixels: one division and
  // one bounds check per pixel (per chunk, with the sums' in a second walk, they were a fifth to a quarter
  // of the kernel's instructions with 5 terms). Its chunks go through L1 (.ca): a warp's lanes copy chunk c
  // of consecutive pixels, slices apart, and the next chunks come from the sectors the first brought in;
  // through L2 alone (.cg) the same walk lost a third with 5 terms (H200, --decomposed-tiles, seed 1010).
  auto load_halo = [&](int tile, int buf) {
    int n, oh0, ow0;
    origin(tile, &n, &oh0, &ow0);
    const int ih0 = oh0 * g.stride_h - g.pad_top, iw0 = ow0 * g.stride_w - g.pad_left;
    const int8_t* image = args.planes + static_cast<int64_t>(n) * in_hw * pixel_bytes + static_cast<int64_t>(grp) * l.slice_bytes;
    const uint32_t base = SharedAddress(s_halo + buf * halo_bytes);
    long long* alphas = s_halo_alpha + buf * h.halo_pixels;
    int* codes = s_halo_codes + buf * h.halo_pixels;
    for (int hp = tid; hp < h.halo_pixels; hp += kThreads) {
      int hx;
      const int hy = halo_div.Divide(hp, &hx);
      const int ih = ih0 + hy, iw = iw0 + hx;
      const bool inside =
          static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) && static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w);
      const int8_t* src = inside ? image + (ih * g.in_w + iw) * pixel_bytes : zero_point_slice;
      const uint32_t dst = base + hp * h.a_pitch * kChunk;
      for (int c = 0; c < sc; ++c) CopyChunkAsyncL1(dst + c * kChunk, src + c * kChunk, true);
      if (inside) {
        const int64_t item = (static_cast<int64_t>(n) * in_hw + ih * g.in_w + iw) * g.groups + grp;
        CopySmallAsync<8>(SharedAddress(alphas + hp), args.alpha_sums + item);
        CopySmallAsync<4>(SharedAddress(codes + hp), args.code_sums + item);
      } else {
        alphas[hp] = pad_alpha;
        codes[hp] = pad_codes;
      }
    }
  };

  // The lane's ldmatrix rows. A: matrices 0..3 are rows +0 / +8 (bit 0 of m) x chunks +0 / +1 of the k
  // step (bit 1): mma tile mt's row r is halo pixel (r / TW * stride_h, r % TW * stride_w) at tap (0, 0).
  // B: matrices 0..3 are channels +0 / +8 (bit 1) x chunks +0 / +1 (bit 0), as DecomposedGemmKernel's.
  // (Opaque: under the register cap nvcc otherwise recomputes them from the geometry at every k step.)
  const int matrix = lane >> 3, matrix_row = lane & 7;
  uint32_t a_row[MT];  // the shared address of the lane's row at tap (0, 0), chunk 0, in halo buffer 0
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int r = warp * WM + mt * 16 + (matrix & 1) * 8 + matrix_row;
    const int offset =
        (((r >> h.tile_w_shift) * g.stride_h) * h.halo_w + (r & tw_mask) * g.stride_w) * h.a_pitch * kChunk;
    a_row[mt] = Opaque(SharedAddress(s_halo) + offset);
  }
  const int* koff = s_koff + (matrix >> 1);
  const uint32_t b_lane =
      Opaque(SharedAddress(s_b) + (((matrix >> 1) * 8 + matrix_row) * h.b_pitch + (matrix & 1)) * kChunk);
  const int b_np_stride = 16 * h.b_pitch * kChunk;
  // k step ks's fragments: A of every mma tile and B of every n8 tile.
  auto load_fragments = [&](const uint32_t (&a_rows)[MT], int ks, uint32_t (&a)[MT][4], uint32_t (&b)[NT][2]) {
    const int a_k = koff[2 * ks];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) LoadMatrices(a_rows[mt] + a_k, a[mt]);
    const uint32_t b_k = b_lane + 2 * ks * kChunk;
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t r[4];
      LoadMatrices(b_k + np * b_np_stride, r);
      b[2 * np][0] = r[0], b[2 * np][1] = r[1], b[2 * np + 1][0] = r[2], b[2 * np + 1][1] = r[3];
    }
  };

  const DequantizeTerms<Real> deq_tensor = TermsOf<Real>(epi.quant);
  const int group_id = lane >> 2, in_group = lane & 3;  // the mma fragments' g and t
  // The epilogue's common case (below); out_channel0: the lane's first output channel there.
  const bool narrow = args.narrow_sums && args.pair_stores && epi.debug_acc == nullptr && n0 + BN <= g.npg;
  const int out_channel0 = grp * g.npg + n0 + 2 * in_group;
  int tile = blockIdx.x;
  if (tile < args.m_tiles) load_halo(tile, 0);
  CommitCopies();  // (with the filter rows' copies)
  for (int it = 0; tile < args.m_tiles; tile += gridDim.x, ++it) {
    const int next = tile + gridDim.x;
    if (next < args.m_tiles) wait_inputs(next, false);
    WaitCopies<0>();  // this thread's copies of the halo (and, the first time, of the filter rows)...
    __syncthreads();  // ...and everyone's; every warp is done with the other buffer and the last epilogue
    if (next < args.m_tiles) load_halo(next, (it + 1) & 1);
    CommitCopies();

    // The rectangle's free terms, from the halo's sums: alpha and the codes over each row's patch (as
    // DecomposedGemmKernel's), the code sum kept as DequantizeTerms converts it (Act).
    {
      int n, oh0, ow0;
      origin(tile, &n, &oh0, &ow0);
      const long long* alphas = s_halo_alpha + (it & 1) * h.halo_pixels;
      const int* codes = s_halo_codes + (it & 1) * h.halo_pixels;
      for (int i = tid; i < BM; i += kThreads) {
        const int ty = i >> h.tile_w_shift, tx = i & tw_mask;
        const int oh = oh0 + ty, ow = ow0 + tx;
        long long alpha_sum = 0, code_sum = 0;
        int p = -1;
        if (oh < g.out_h && ow < g.out_w) {
          p = (n * g.out_h + oh) * g.out_w + ow;
          for (int kh = 0; kh < g.filter_h; ++kh) {
            const int row = (ty * g.stride_h + kh * g.dil_h) * h.halo_w + tx * g.stride_w;
            for (int kw = 0; kw < g.filter_w; ++kw) {
              alpha_sum += alphas[row + kw * g.dil_w];
              code_sum += codes[row + kw * g.dil_w];
            }
          }
          if (epi.debug_act_sum != nullptr && nt_index == 0) {
            epi.debug_act_sum[static_cast<int64_t>(p) * g.groups + grp] = code_sum;
          }
        }
        s_p[i] = p;
        s_alpha[i] = alpha_sum;
        s_act[i] = deq_tensor.Act(code_sum);
      }
    }

    int acc[MT][NT][4] = {};
    uint32_t a_rows[MT];  // in this rectangle's buffer
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a_rows[mt] = Opaque(a_row[mt] + ((it & 1) ? halo_bytes : 0));
    uint32_t a0[MT][4], b0[NT][2];
    auto multiply = [&](const uint32_t (&a)[MT][4], const uint32_t (&b)[NT][2]) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) MmaInt8(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
    };
    if constexpr (MT * NT < 16) {
      // Two sets of fragments: the next k step's loads are in flight while the tensor cores take this
      // one's (fewer than 16 mma a step leave their latency bare otherwise). q_steps is even.
      uint32_t a1[MT][4], b1[NT][2];
      load_fragments(a_rows, 0, a0, b0);
      for (int ks = 0; ks < h.q_steps - 2; ks += 2) {
        load_fragments(a_rows, ks + 1, a1, b1);
        multiply(a0, b0);
        load_fragments(a_rows, ks + 2, a0, b0);
        multiply(a1, b1);
      }
      load_fragments(a_rows, h.q_steps - 1, a1, b1);
      multiply(a0, b0);
      multiply(a1, b1);
    } else {
      // 16 mma a step: one set (two spilled at BM 128 x BN 64, 168 registers).
      for (int ks = 0; ks < h.q_steps; ++ks) {
        load_fragments(a_rows, ks, a0, b0);
        multiply(a0, b0);
      }
    }
    __syncthreads();  // every row's sums and pixel (written above by other threads)

    // Epilogue: acc + the row's alpha sum + the channel's net offset is the lookups' sum less acc_offset;
    // then DequantizeTerms::Combine with the row's and the channel's parts (the same bits). The lane's rows (mma
    // tile mt, half: rows + 0 / + 8) once, then channel pairs (2t, 2t + 1 of each n8 tile).
    if (narrow) {
      // The common case without a branch per output (the general path below was 44% of this kernel's
      // instructions on 56x56 64->64): 32-bit sums (NarrowRows), pair stores, every channel of the tile
      // inside the group; rows past the image are stores left out.
      NarrowRows<T, Real, MT> rows;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = warp * WM + mt * 16 + half * 8 + group_id;
          const int p = s_p[row];
          rows.Set(mt, half, p >= 0, output + static_cast<int64_t>(p < 0 ? 0 : p) * g.out_depth + out_channel0,
                   s_alpha[row], s_act[row]);
        }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        rows.template Store<kStreaming>(acc, nt, s_channel[nt * 8 + 2 * in_group],
                                        s_channel[nt * 8 + 2 * in_group + 1]);
      }
      continue;
    }
    int row_p[MT][2];
    long long row_alpha[MT][2];
    Real row_act[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp * WM + mt * 16 + half * 8 + group_id;
        row_p[mt][half] = s_p[row];
        row_alpha[mt][half] = s_alpha[row];
        row_act[mt][half] = s_act[row];
      }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c0 = nt * 8 + 2 * in_group;  // even; the pair is whole or its second is past npg
      const int channel0 = n0 + c0;
      if (channel0 >= g.npg) continue;
      const bool second = channel0 + 1 < g.npg;
      const ChannelEpilogue<Real> ch0 = s_channel[c0], ch1 = s_channel[c0 + 1];
      const int co0 = grp * g.npg + channel0;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int p = row_p[mt][half];
          if (p < 0) continue;
          const int64_t net0 = static_cast<int64_t>(acc[mt][nt][2 * half]) + row_alpha[mt][half] + ch0.net_offset;
          const int64_t net1 = static_cast<int64_t>(acc[mt][nt][2 * half + 1]) + row_alpha[mt][half] + ch1.net_offset;
          const Real act = row_act[mt][half];
          const T v0 = FromReal<T>(ch0.terms.Combine(net0, act, ch0.filter_term));
          const T v1 = FromReal<T>(ch1.terms.Combine(net1, act, ch1.filter_term));
          if (second && args.pair_stores) {
            StorePairHinted<kStreaming>(output + static_cast<int64_t>(p) * g.out_depth + co0, v0, v1);
          } else {
            StoreOutput(g, output, p, co0, v0);
            if (second) StoreOutput(g, output, p, co0 + 1, v1);
          }
          if (epi.debug_acc != nullptr) {  // the lookups' sums
            epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0] = net0 + ch0.terms.acc_offset;
            if (second) epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0 + 1] = net1 + ch1.terms.acc_offset;
          }
        }
    }
  }
  WaitCopies<0>();  // nothing in flight when the block exits
  // With the pre-pass beside it, this launch ends after it (so does what the stream runs next).
  if (kBeside) asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_HALO_CUH_
