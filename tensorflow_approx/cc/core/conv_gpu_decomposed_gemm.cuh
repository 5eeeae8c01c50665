// The decomposed kernel's implicit GEMM on the int8 tensor cores (mma.sync m16n8k32, ldmatrix, a cp.async
// pipeline) over the planes of the pre-passes (conv_gpu_decomposed_prepasses.cuh), with its epilogue.
// Internal: included by conv_gpu_decomposed.cu only, whose top comment explains the decomposition.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_GEMM_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_GEMM_CUH_

#include "tensorflow_approx/cc/core/conv_gpu_decomposed_prepasses.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_tma.cuh"
#include "tensorflow_approx/cc/core/conv_gpu_decomposed_wgmma.cuh"

namespace tfapprox {
namespace decomposed_internal {

// ---------------------------------------------------------------------------------------------------
// Tensor-core pieces, as PTX (sm_80+): asynchronous 16-byte copies, ldmatrix, the int8 mma.

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory without passing through registers; fill = false writes 16 zero
// bytes instead (src-size 0: the source is not read).
__device__ __forceinline__ void CopyChunkAsync(uint32_t dst, const void* src, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)),
               "r"(fill ? 16 : 0)
               : "memory");
}
// The same through L1 (.ca), for A's chunks where the tile leaves L1 room (DecomposedGemmKernel's
// kCacheA): a block reads each plane chunk again at the neighbouring taps (pixel p at tap (kh, kw + 1) is
// pixel p + 1 at (kh, kw)), from L1 instead of L2.
__device__ __forceinline__ void CopyChunkAsyncL1(uint32_t dst, const void* src, bool fill) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)),
               "r"(fill ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CommitCopies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most `kPending` committed groups of this thread's copies are still in flight.
template <int kPending>
__device__ __forceinline__ void WaitCopies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8 x 8 matrices of 16-bit elements (here: 8 rows x 16 bytes each), lanes 8m .. 8m + 7 giving the
// row addresses of matrix m; register m of lane l gets row l / 4, bytes 4 * (l % 4) .. + 3 of matrix m.
__device__ __forceinline__ void LoadMatrices(uint32_t address, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// acc += A (16 x 32 int8, row-major fragment) * B (32 x 8 int8, column-major fragment), int32 sums.
// Fragments (PTX ISA, mma.m16n8k32 with .s8), with g = lane / 4 and t = lane % 4:
//   a[0]: row g,     k 4t .. 4t + 3     a[1]: row g + 8, k 4t .. 4t + 3
//   a[2]: row g,     k 16 + 4t .. + 3   a[3]: row g + 8, k 16 + 4t .. + 3
//   b[0]: column g,  k 4t .. 4t + 3     b[1]: column g,  k 16 + 4t .. + 3
//   acc[0], acc[1]: row g, columns 2t, 2t + 1;  acc[2], acc[3]: row g + 8, the same columns.
__device__ __forceinline__ void MmaInt8(int (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A stage holds rows (pixels of A, channels of B) of BK = 64 or 128 bytes, BK / 16 chunks of 16 bytes.
// Chunk c of row r is stored at chunk c ^ ((r / L) % (BK / 16)), L = 128 / BK rows sharing a 128-byte line
// of the 32 banks: the eight rows an ldmatrix phase reads (8 consecutive rows, one logical chunk) then
// fall on eight different 16-byte bank groups, where unswizzled rows 128 bytes apart would share them
// (64-byte rows: 4-way conflicts; 128-byte rows: 8-way).
template <int BK>
__device__ __forceinline__ int StageOffset(int row, int chunk) {
  static_assert(BK == 64 || BK == 128, "stage rows of 64 or 128 bytes");
  constexpr unsigned kChunks = BK / kChunk, kRowsPerLine = 128 / BK;  // powers of two: shifts and masks
  return row * BK + static_cast<int>((chunk ^ ((static_cast<unsigned>(row) / kRowsPerLine) % kChunks)) << 4);
}

// ---------------------------------------------------------------------------------------------------
// The implicit GEMM. A block computes a BM x BN tile (pixels x output channels of one group) over the
// whole K; warps are arranged WARPS_M x WARPS_N, each owning (BM / WARPS_M) x (BN / WARPS_N) outputs as
// MT x NT mma tiles of 16 x 8; BLOCKS blocks per multiprocessor (the registers are capped to fit them).
// kWgmma (sm_90a, the wgmma tiles): the same loaders, pipeline and epilogue, the tensor-core work done by
// warpgroup MMAs reading both operands from shared memory (conv_gpu_decomposed_wgmma.cuh): with WARPS_N
// = 1 and MT = BM / WARPS_M / 16, warpgroup wg (warps 4wg .. 4wg + 3) computes MT blocks of 64 rows from
// row 64 MT wg on x all BN columns, one m64nBNk32 per block and 32 K bytes. Warp w's accumulators of a
// block are those of a 16 x BN warp tile (NT = BN / 8) in mma.sync's fragment order, rows 16 (w % 4) on
// in the block: the epilogue is the same code with that row.
// Stages of BK bytes of K (BK / 32 mma k steps between two barriers) in a STAGES-deep cp.async pipeline:
// the copies of the next stages are in flight while the tensor cores work on the current one. K is
// BK-tiled per tile (GemmKTiles); B's rows are padded to kMaxBK, a multiple of every BK, and A's chunks
// past K are zero-filled, so both tile widths read the same planes.
struct GemmArgs {
  const int8_t* planes;
  const int8_t* b_planes;
  const long long* alpha_sums;
  const int32_t* code_sums;
  const unsigned long long* channel_sums;  // [2][out_depth]
  const int32_t* alpha;                    // the decomposition's, for the zero point of padded taps
  long long taps_c0;                       // taps * c0
  Layout l;
  int m_tiles, n_tiles, k_tiles;
  bool pair_stores;  // NHWC, even npg, output aligned to two elements (see the epilogue)
  bool taps_inner;   // GpuKOrder::kTapsInner (the kernel takes it where a slice is whole stages)
  // Every output's net sum fits an int32 (NarrowSumsFit): the epilogue adds in 32 bits. (The kernels test
  // pair_stores and the debug sums beside it themselves: folding them into this flag on the host moved
  // nvcc's register allocation and cost 2-10% on some tiles, H200 --decomposed-phases seed 1511.)
  bool narrow_sums;
  // Some output's patch has a tap outside the input (the TMA tiles then add the padded taps' sums Z).
  bool padded_taps;
};

// Two adjacent outputs as one aligned store (the caller checked the alignment): the first at the lower
// address, as two scalar stores would put them.
__device__ __forceinline__ void StorePair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void StorePair(double* p, double a, double b) {
  *reinterpret_cast<double2*>(p) = make_double2(a, b);
}
__device__ __forceinline__ void StorePair(__half* p, __half a, __half b) {
  *reinterpret_cast<__half2*>(p) = __halves2half2(a, b);
}
__device__ __forceinline__ void StorePair(__nv_bfloat16* p, __nv_bfloat16 a, __nv_bfloat16 b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __halves2bfloat162(a, b);
}
// StorePair, evict-first (st.global.cs) where kStreaming: the halo GEMM's streaming build (TunedPlan::streaming),
// whose outputs are too many to wait in L2 for their reader. Only float32 has that build.
template <bool kStreaming, typename T>
__device__ __forceinline__ void StorePairHinted(T* p, T a, T b) {
  if constexpr (kStreaming) {
    static_assert(std::is_same<T, float>::value, "streaming stores are built for float32 outputs");
    __stcs(reinterpret_cast<float2*>(p), make_float2(a, b));
  } else {
    StorePair(p, a, b);
  }
}

// An output channel's share of the dequantization: its DequantizeTerms, the integers added to every acc
// (beta sum + taps * c0 - acc_offset) and the filter codes' term (FilterTerm).
template <typename Real>
struct ChannelEpilogue {
  DequantizeTerms<Real> terms;
  long long net_offset;
  Real filter_term;
};

template <typename Real>
__device__ __forceinline__ ChannelEpilogue<Real> MakeChannelEpilogue(const GemmArgs& args, const GpuGeometry& g,
                                                                      const Epilogue& epi, bool per_channel, int co,
                                                                      const DequantizeTerms<Real>& tensor_terms) {
  ChannelEpilogue<Real> ch;
  ch.terms = ChannelTerms(epi.quant, per_channel, co, tensor_terms);
  ch.net_offset = static_cast<long long>(__ldg(args.channel_sums + co)) + args.taps_c0 - ch.terms.acc_offset;
  ch.filter_term = ch.terms.FilterTerm(static_cast<long long>(__ldg(args.channel_sums + g.out_depth + co)));
  return ch;
}

// One output when the call's sums are narrow (GemmArgs::narrow_sums): the net sum in 32 bits (modulo 2^32,
// see NarrowSumsFit, conv_gpu_decomposed.h), then DequantizeTerms::Combine as the general path does: the
// same bits, in about eight instructions where the 64-bit adds and their conversion took about twice that.
template <typename T, typename Real>
__device__ __forceinline__ T NarrowOutput(int acc, int row_alpha, Real act, const ChannelEpilogue<Real>& ch) {
  const int net = static_cast<int>(static_cast<unsigned>(acc) + static_cast<unsigned>(row_alpha) +
                                   static_cast<unsigned>(ch.net_offset));
  return FromReal<T>(ch.terms.Combine(net, act, ch.filter_term));
}

// A lane's rows in the narrow epilogue: per mma tile mt and half (rows + 0 / + 8) the address of its first
// output channel (`ok` false: a row past the image or the last pixel, nothing stored), its alpha sum taken
// modulo 2^32 and its converted code sum. Store writes one n8 tile's channel pair (8 nt + 2t, + 1) of every
// row, each pair one store under its row's predicate.
template <typename T, typename Real, int MT>
struct NarrowRows {
  T* out[MT][2];
  bool ok[MT][2];
  int alpha[MT][2];
  Real act[MT][2];

  __device__ __forceinline__ void Set(int mt, int half, bool valid, T* first_output, long long alpha_sum,
                                      Real code_act) {
    ok[mt][half] = valid;
    out[mt][half] = first_output;
    alpha[mt][half] = static_cast<int>(alpha_sum);
    act[mt][half] = code_act;
  }
  template <bool kStreaming = false, int NT>
  __device__ __forceinline__ void Store(const int (&acc)[MT][NT][4], int nt, const ChannelEpilogue<Real>& ch0,
                                        const ChannelEpilogue<Real>& ch1) const {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const T v0 = NarrowOutput<T>(acc[mt][nt][2 * half], alpha[mt][half], act[mt][half], ch0);
        const T v1 = NarrowOutput<T>(acc[mt][nt][2 * half + 1], alpha[mt][half], act[mt][half], ch1);
        if (ok[mt][half]) StorePairHinted<kStreaming>(out[mt][half] + nt * 8, v0, v1);
      }
  }
};

// Whether a GEMM tile of BK-byte stages reads K in the order GpuKOrder names: a filter of several spatial
// taps whose slice is whole stages (else it reads K tap by tap whatever the order asked).
__host__ __device__ inline bool KOrderApplies(int spatial_taps, int slice_bytes, int bk) {
  return spatial_taps > 1 && slice_bytes % bk == 0;
}

// K tiles of BK bytes: the K bytes rounded up (not k_padded / BK: with BK = 64, a K tile of nothing but
// B's padding to kMaxBK would be a whole stage of zeros).
template <int BK>
inline int64_t GemmKTiles(const Layout& l) {
  return (l.k_chunks * kChunk + BK - 1) / BK;
}

// kWgmma: 1 KB more, for rounding the stages up to wgmma's 1024-byte swizzle atoms (see the kernel). kTma:
// the pixels' padded-tap masks, the padded taps' sums Z and the stages' mbarriers.
template <int BM, int BN, int BK, int STAGES, bool kWgmma = false, bool kTma = false>
constexpr int GemmSmemBytes() {
  return STAGES * (BM + BN) * BK + BM * static_cast<int>(sizeof(int4)) + BM * 2 * static_cast<int>(sizeof(long long)) +
         (kWgmma ? 1024 : 0) +
         (kTma ? BM * static_cast<int>(sizeof(uint32_t)) + kTmaMaxTaps * BN * static_cast<int>(sizeof(int)) +
                     STAGES * static_cast<int>(sizeof(uint64_t))
               : 0);
}

// wgmma groups a warpgroup leaves in flight past a stage (kWgmma): one where the pipeline is deep enough
// (STAGES >= 4) to keep two stages of copies in flight besides the one being read and the one still read
// by the previous stage's wgmma; else none (the wgmma of a stage finish before the next barrier, as
// mma.sync does). mma.sync: none.
template <bool kWgmma, int STAGES>
__host__ __device__ constexpr int GemmMmaInFlight() {
  return kWgmma && STAGES >= 4 ? 1 : 0;
}

// kTma (with kWgmma): the stages by TMA loads (conv_gpu_decomposed_tma.cuh), A's im2col from `a_map`, B's
// tiles from `b_map`, one thread issuing a stage, an mbarrier a stage saying when it landed; no cp.async.
// Other tiles ignore the maps.
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int BLOCKS, int BK, int STAGES, bool kLdmatrix,
          bool kWgmma = false, bool kTma = false>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32, BLOCKS)
    DecomposedGemmKernel(GemmArgs args, GpuGeometry g, Epilogue epi, T* __restrict__ output,
                         const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map) {
  if constexpr (kWgmma) {
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // A device pass without wgmma (sm_90, the compute_90 PTX): no body. ApproxConvGpuDecomposed never launches this
    // (WgmmaAvailable: g_wgmma_built of the loaded module, conv_gpu_decomposed.cu).
    return;
#endif
  }
  constexpr int NT_THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  constexpr int kChunksPerRow = BK / kChunk;
  constexpr int A_CHUNKS = BM * kChunksPerRow / NT_THREADS;  // per thread per stage
  constexpr int B_CHUNKS = BN * kChunksPerRow / NT_THREADS;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles of whole 16 x 16 (ldmatrix x4 of B: two n8 tiles)");
  static_assert(A_CHUNKS >= 1 && A_CHUNKS * NT_THREADS == BM * kChunksPerRow, "A loader");
  static_assert(B_CHUNKS >= 1 && B_CHUNKS * NT_THREADS == BN * kChunksPerRow, "B loader");
  static_assert(STAGES >= 2 && kMaxBK % BK == 0, "a pipeline; B's rows padded to whole stages");
  static_assert(!kTma || kWgmma, "TMA loads only in the wgmma tiles");
  static_assert(!kWgmma || (WARPS_N == 1 && WARPS_M % 4 == 0 && (BN == 64 || BN == 128) && (BK == 64 || BK == 128) &&
                            STAGES >= 2 + GemmMmaInFlight<kWgmma, STAGES>()),
                "wgmma: whole warpgroups of MT x 64 rows x BN (64 or 128) columns, 64- or 128-byte swizzled stages");
  // The pipeline: kPrefetch stages of copies in flight ahead of the one being multiplied, and kInFlight
  // stages whose wgmma may still be reading shared memory; the stage a load overwrites is the one
  // kInFlight + 1 before the current, which every warp has finished with by the current barrier.
  constexpr int kInFlight = GemmMmaInFlight<kWgmma, STAGES>();
  constexpr int kPrefetch = STAGES - 1 - kInFlight;
  // A's copies through L1 for the mma.sync tiles of 64-byte stages, whose shared memory leaves L1 room.
  // H200, --decomposed-phases, A/B in one lease (seeds 651-652): their GEMMs 1.3-2.4x faster on ResNet-20's
  // layers at batch 1000 (16->16 with 16 terms 784 -> 538 us, the stem 443 -> 187 us, 8x8 64->64 exact
  // 34 -> 26 us) and even on 1x1 56x56 64->256; the wgmma tiles and 128x128k128 took 2-7% off the exact
  // table's GEMMs but lost 3-6% with 16 terms (56x56 64->64 435 -> 455 us), so they keep .cg.
  constexpr bool kCacheA = !kWgmma && BK == 64;
  using Real = typename RealOf<T>::type;

  // (Dynamic shared memory starts at offset 0 of the block's: aligned for 16-byte copies and ldmatrix,
  // and rows of a stage start on BK-byte boundaries, which the swizzle's bank reasoning assumes.)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // wgmma: the swizzle atoms (8 rows of BK bytes: 1024 bytes for BK = 128) must start on multiples of their
  // size in the shared address space, so the stages start at the first 1024-byte boundary (the launch
  // gave 1 KB more). mma.sync: as they come.
  unsigned char* smem = smem_raw;
  if constexpr (kWgmma) smem += (1024 - (SharedAddress(smem_raw) & 1023)) & 1023;
  unsigned char* s_a = smem;                                       // [STAGES][BM][BK]
  unsigned char* s_b = s_a + STAGES * BM * BK;                     // [STAGES][BN][BK]
  int4* s_pix = reinterpret_cast<int4*>(s_b + STAGES * BN * BK);   // [BM]
  long long* s_alpha = reinterpret_cast<long long*>(s_pix + BM);   // [BM]: alpha summed over the patch
  Real* s_act = reinterpret_cast<Real*>(s_alpha + BM);             // [BM]: Real(code sum - act_sum_offset)
  // kTma: [BM] the pixel's padded taps (bit t: tap t outside the input), [kTmaMaxTaps][BN] the padded taps'
  // sums Z of the tile's channels, [STAGES] the mbarriers of the stages.
  uint32_t* s_mask = reinterpret_cast<uint32_t*>(s_act + BM);
  int* s_z = reinterpret_cast<int*>(s_mask + BM);
  uint64_t* s_bar = reinterpret_cast<uint64_t*>(s_z + kTmaMaxTaps * BN);

  const Layout& l = args.l;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
  // Block order: channel tiles fastest, then groups, then pixel tiles. The blocks of one tile of pixels run
  // side by side and read its A rows (every group's slices of the same pixels, which lie together) from L2
  // once between them; with pixel tiles fastest, planes past the L2 came from DRAM once per channel tile.
  const int tile = blockIdx.x;
  const int nt_index = tile % args.n_tiles;
  const int rest = tile / args.n_tiles;
  const int grp = rest % g.groups;
  const int mt_index = rest / g.groups;
  const int m0 = mt_index * BM, n0 = nt_index * BN;
  const int in_hw = g.in_h * g.in_w;

  // Pixel p of the tile: (first input pixel of its image, top row, left column, valid).
  for (int i = tid; i < BM; i += NT_THREADS) {
    const int p = m0 + i;
    int4 info = make_int4(0, 0, 0, 0);
    if (p < g.pixels) {
      const int ow = p % g.out_w, t = p / g.out_w;
      const int oh = t % g.out_h, n = t / g.out_h;
      info = make_int4(n * in_hw, oh * g.stride_h - g.pad_top, ow * g.stride_w - g.pad_left, 1);
    }
    s_pix[i] = info;
  }
  if constexpr (kTma) {
    for (int i = tid; i < kTmaMaxTaps * BN; i += NT_THREADS) s_z[i] = 0;
    if (tid == 0) {
      for (int s = 0; s < STAGES; ++s) MbarrierInit(SharedAddress(s_bar + s), 1);
    }
  }
  __syncthreads();

  const int8_t* zero_point_slice = args.planes + (l.items + grp) * l.slice_bytes;
  // The loaders' fixed parts. Copy idx = tid + i * NT_THREADS of a stage is chunk idx % kChunksPerRow of
  // row idx / kChunksPerRow; NT_THREADS being a multiple of kChunksPerRow, a thread's chunk column is
  // the same in every copy and every stage, and its rows are fixed: their pixels (A) and filter rows
  // (B) are taken once, into registers.
  static_assert(NT_THREADS % kChunksPerRow == 0, "a thread's chunk column is fixed");
  constexpr int kRowsPerPass = NT_THREADS / kChunksPerRow;
  const int load_col = tid % kChunksPerRow, load_row = tid / kChunksPerRow;
  // a_slice[i]: the byte offset in the planes of the slice of row i's pixel at tap (0, 0) (its patch's top
  // left, maybe outside the input: then only an offset), so that a tap inside adds one offset, the same
  // for all of the thread's rows, not a 64-bit product per row.
  const int64_t pixel_bytes = static_cast<int64_t>(g.groups) * l.slice_bytes;  // from a pixel's slices to the next's
  int4 a_pix[A_CHUNKS];
  int64_t a_slice[A_CHUNKS];
#pragma unroll
  for (int i = 0; i < A_CHUNKS; ++i) {
    a_pix[i] = s_pix[load_row + i * kRowsPerPass];
    a_slice[i] = (static_cast<int64_t>(a_pix[i].y) * g.in_w + a_pix[i].x + a_pix[i].z) * pixel_bytes +
                 static_cast<int64_t>(grp) * l.slice_bytes;
  }
  const int8_t* b_src[B_CHUNKS];
#pragma unroll
  for (int i = 0; i < B_CHUNKS; ++i) {
    const int channel = n0 + load_row + i * kRowsPerPass;  // within the group
    b_src[i] = channel < g.npg
                   ? args.b_planes + static_cast<int64_t>(grp * g.npg + channel) * l.k_padded + load_col * kChunk
                   : nullptr;
  }
  // Where the thread's A chunk of the next stage to load lies in K: chunk a_kc of K, chunk a_j of
  // spatial tap (a_kh, a_kw)'s slice. Stages are loaded in order (kt = 0, 1, 2, ...: the prologue's, then
  // the main loop's kt + STAGES - 1), so each load steps it by kChunksPerRow chunks, with no division
  // (the earlier loader divided a 64-bit chunk index per copy and stage, most of a stage's instructions).
  const int k_chunks = static_cast<int>(l.k_chunks);  // K bytes < 2^31 (the reduction limit)
  int a_kc = load_col;
  int a_j = load_col % l.slice_chunks;
  int a_kh = (load_col / l.slice_chunks) / g.filter_w;
  int a_kw = (load_col / l.slice_chunks) - a_kh * g.filter_w;
  // kTma: the same position for the stage being multiplied (z_*), whose B chunks add into the padded taps'
  // sums Z.
  int z_kc = a_kc, z_j = a_j, z_kh = a_kh, z_kw = a_kw;
  // K order (GpuKOrder). Taps inner, where a slice is whole stages: stage kt is BK bytes sb = kt / taps
  // of tap kt % taps's slice, so a tile reads the same slice bytes of neighbouring pixels for its 3 x 3
  // taps back to back, from L2. Tap by tap (the planes' own order) a tile streams a whole slice of its
  // pixels between a pixel's reads at two taps: with 16 terms on 56x56 64->64 the planes (205 MB) came
  // from DRAM once per tap (ncu: L2 hit rate 33%). B's rows are read in the same order.
  const int spatial_taps = g.filter_h * g.filter_w;
  const bool taps_inner = args.taps_inner && KOrderApplies(spatial_taps, l.slice_bytes, BK);
  // Step a position to the next stage's chunk. Taps inner (every stage inside K: K is whole stages): the next
  // tap, or after the last the next BK bytes of the slice at tap 0. Tap by tap: kChunksPerRow chunks on,
  // across as many slice ends as it passes (slices of fewer than kChunksPerRow chunks: several).
  auto step = [&](int& kc, int& j, int& kh, int& kw) {
    if (taps_inner) {
      if (++kw == g.filter_w) {
        kw = 0;
        if (++kh == g.filter_h) kh = 0, j += kChunksPerRow;
      }
    } else {
      kc += kChunksPerRow;
      j += kChunksPerRow;
      while (j >= l.slice_chunks) {
        j -= l.slice_chunks;
        if (++kw == g.filter_w) kw = 0, ++kh;
      }
    }
  };
  // Stage `slot` <- K tile kt: A chunk c of pixel row r is chunk j of spatial tap `tap` of the pixel's
  // patch; B chunk c of channel row r is the same K bytes of that channel's filter row: bytes kt * BK + 16c
  // tap by tap, tap * slice_bytes + (j - c) * 16 + 16c with taps inner.
  // kTma: the first pixel's patch origin and image, where the im2col loads start.
  const int4 tma_pix = s_pix[0];
  auto load_stage = [&](int slot, int kt) {
    const uint32_t a_base = SharedAddress(s_a + slot * BM * BK);
    const bool k_inside = a_kc < k_chunks;
    const int dh = a_kh * g.dil_h, dw = a_kw * g.dil_w;
    // kTma: thread 0's chunk is the stage's first (load_col 0), so (a_kh, a_kw) and a_j are the stage's tap and
    // slice chunk: one load of BM pixels x BK bytes from there, and one of the same K bytes of the tile's BN
    // filter rows (rows past the group's channels load the next group's or zeros: their outputs are not
    // stored).
    if constexpr (kTma) {
      if (tid == 0) {
        const uint32_t bar = SharedAddress(s_bar + slot);
        MbarrierArriveExpectTx(bar, (BM + BN) * BK);
        TmaLoadIm2col(a_base, &a_map, bar, grp * l.slice_bytes + a_j * kChunk, tma_pix.z, tma_pix.y, tma_pix.x / in_hw,
                      dw, dh);
        TmaLoadTile2d(SharedAddress(s_b + slot * BN * BK), &b_map, bar,
                      (a_kh * g.filter_w + a_kw) * l.slice_bytes + a_j * kChunk, grp * g.npg + n0);
      }
    }
    // Pixel (ih, iw) = (pix.y + dh, pix.z + dw) is slice (pix.x + ih * in_w + iw) * groups + grp: a_slice plus
    // this, plus the chunk's bytes in the slice (int64: dh * in_w alone may pass 2^31).
    const int64_t tap_bytes = (static_cast<int64_t>(dh) * g.in_w + dw) * pixel_bytes + a_j * kChunk;
#pragma unroll
    for (int i = 0; i < (kTma ? 0 : A_CHUNKS); ++i) {
      const int row = load_row + i * kRowsPerPass;
      const int4 pix = a_pix[i];
      const int8_t* src = args.planes;
      bool fill = false;
      if (pix.w && k_inside) {
        const int ih = pix.y + dh, iw = pix.z + dw;
        const bool inside = static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w);
        src = inside ? args.planes + (a_slice[i] + tap_bytes) : zero_point_slice + a_j * kChunk;
        fill = true;
      }
      if constexpr (kCacheA) {
        CopyChunkAsyncL1(a_base + StageOffset<BK>(row, load_col), src, fill);
      } else {
        CopyChunkAsync(a_base + StageOffset<BK>(row, load_col), src, fill);
      }
    }
    const int64_t b_offset = taps_inner ? static_cast<int64_t>(a_kh * g.filter_w + a_kw) * l.slice_bytes +
                                              (a_j - load_col) * kChunk
                                        : static_cast<int64_t>(kt) * BK;
    step(a_kc, a_j, a_kh, a_kw);
    const uint32_t b_base = SharedAddress(s_b + slot * BN * BK);
#pragma unroll
    for (int i = 0; i < (kTma ? 0 : B_CHUNKS); ++i) {
      const int row = load_row + i * kRowsPerPass;
      const bool fill = b_src[i] != nullptr;
      CopyChunkAsync(b_base + StageOffset<BK>(row, load_col), fill ? b_src[i] + b_offset : args.b_planes, fill);
    }
  };

  // The first kPrefetch stages in flight (a group per stage, empty past K, so that the count of
  // groups stays uniform for WaitCopies).
#pragma unroll
  for (int s = 0; s < kPrefetch; ++s) {
    if (s < args.k_tiles) load_stage(s, s);
    CommitCopies();
  }

  // Meanwhile the free terms of the tile's pixels: alpha and the codes over the patch, a padded tap
  // counting cg zero-point codes; the code sum kept as DequantizeTerms converts it (Act): the same for the pixel's every channel, also with per-channel ranges (act_sum_offset
  // is taps * the input's code_shift, and every entry holds the one input range, MakeGpuQuant's
  // input_q, as the input pass and the zero point below assume). (Read in the epilogue, after the main
  // loop's barriers.)
  {
    const DequantizeTerms<Real> deq_tensor = TermsOf<Real>(epi.quant);
    const int zp = epi.quant->input.zero_point;
    const long long pad_alpha = static_cast<long long>(g.cg) * __ldg(args.alpha + zp);
    const long long pad_codes = static_cast<long long>(g.cg) * zp;
    for (int i = tid; i < BM; i += NT_THREADS) {
      const int4 pix = s_pix[i];
      long long alpha_sum = 0, code_sum = 0;
      uint32_t padded = 0;  // kTma: bit t for tap t outside the input
      if (pix.w) {
        // kTapBatch spatial taps at a time, (kh, kw) in order, their loads issued before any is added (one
        // tap per round trip made this a latency chain ahead of the main loop). Integer sums: any order.
        constexpr int kTapBatch = 4;
        const int spatial_taps = g.filter_h * g.filter_w;
        int kh = 0, kw = 0;
        for (int t0 = 0; t0 < spatial_taps; t0 += kTapBatch) {
          long long alphas[kTapBatch], codes[kTapBatch];
#pragma unroll
          for (int u = 0; u < kTapBatch; ++u) {
            const int ih = pix.y + kh * g.dil_h, iw = pix.z + kw * g.dil_w;
            const bool tap = t0 + u < spatial_taps;
            if (tap && static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) &&
                static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w)) {
              const int64_t item = static_cast<int64_t>(pix.x + ih * g.in_w + iw) * g.groups + grp;
              alphas[u] = __ldg(args.alpha_sums + item);
              codes[u] = __ldg(args.code_sums + item);
            } else {
              alphas[u] = tap ? pad_alpha : 0;
              codes[u] = tap ? pad_codes : 0;
              if (kTma && tap) padded |= 1u << (t0 + u);
            }
            if (++kw == g.filter_w) kw = 0, ++kh;
          }
#pragma unroll
          for (int u = 0; u < kTapBatch; ++u) alpha_sum += alphas[u], code_sum += codes[u];
        }
        if (epi.debug_act_sum != nullptr && nt_index == 0) {
          epi.debug_act_sum[static_cast<int64_t>(m0 + i) * g.groups + grp] = code_sum;
        }
      }
      s_alpha[i] = alpha_sum;
      s_act[i] = deq_tensor.Act(code_sum);
      if constexpr (kTma) s_mask[i] = padded;
    }
  }

  int acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0;

  const int group_id = lane >> 2, in_group = lane & 3;  // the fragments' g and t
  const int matrix = lane >> 3, matrix_row = lane & 7;   // ldmatrix: which matrix and row lane gives
  for (int kt = 0; kt < args.k_tiles; ++kt) {
    if constexpr (kTma) {
      MbarrierWait(SharedAddress(s_bar + kt % STAGES), (kt / STAGES) & 1);  // stage kt's loads have landed...
    } else {
      WaitCopies<kPrefetch - 1>();  // this thread's copies of stage kt have landed...
      if constexpr (kWgmma) FenceProxyAsyncShared();  // ...and are visible to wgmma's (async proxy) reads...
    }
    __syncthreads();  // ...and everyone's; everyone is also done with stage kt - 1 - kInFlight (mma.sync:
                      // kt - 1; wgmma with one group in flight: every warpgroup has waited for kt - 2's)
    auto load_next = [&] {
      if (kt + kPrefetch < args.k_tiles) load_stage((kt + kPrefetch) % STAGES, kt + kPrefetch);
      CommitCopies();
    };
    // wgmma: the copies are issued after this stage's wgmma, so that their address work overlaps them.
    if constexpr (!kWgmma) load_next();

    const unsigned char* a_stage = s_a + (kt % STAGES) * BM * BK;
    const unsigned char* b_stage = s_b + (kt % STAGES) * BN * BK;
    if constexpr (kWgmma) {
      // Warpgroup warp / 4: its MT blocks of 64 rows of A (each 64 * BK bytes on: whole swizzle atoms), all
      // of B; k step ks 32 bytes into the rows (see WgmmaDescriptor).
      const uint32_t a_base = SharedAddress(a_stage) + (warp >> 2) * MT * 64 * BK;
      const uint32_t b_base = SharedAddress(b_stage);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) WgmmaFenceAccumulators(acc[mt]);
      WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < BK / 32; ++ks) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          WgmmaS8(acc[mt], WgmmaDescriptor<BK>(a_base + mt * 64 * BK + 32 * ks), WgmmaDescriptor<BK>(b_base + 32 * ks));
        }
      }
      WgmmaCommit();
      load_next();
      // kTma, while the wgmma run: the padded taps' sums Z[tap][channel] += u(zero point) . v over this stage's
      // bytes, each thread on the B chunks a cp.async loader would take (landed: the mbarrier), the
      // kChunksPerRow lanes of a row then summed by shuffles; the row's load_col 0 lane alone adds to Z, so
      // no two threads share a word.
      if constexpr (kTma) {
        if (args.padded_taps) {
          const int4 zp = __ldg(reinterpret_cast<const int4*>(zero_point_slice + z_j * kChunk));
          const int tap = z_kh * g.filter_w + z_kw;
#pragma unroll
          for (int i = 0; i < B_CHUNKS; ++i) {
            const int row = load_row + i * kRowsPerPass;
            const int4 b = *reinterpret_cast<const int4*>(b_stage + StageOffset<BK>(row, load_col));
            int dot = __dp4a(b.x, zp.x, __dp4a(b.y, zp.y, __dp4a(b.z, zp.z, __dp4a(b.w, zp.w, 0))));
#pragma unroll
            for (int o = 1; o < kChunksPerRow; o <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            if (load_col == 0) {
              int& z = s_z[tap * BN + row];
              z = static_cast<int>(static_cast<unsigned>(z) + static_cast<unsigned>(dot));
            }
          }
        }
        step(z_kc, z_j, z_kh, z_kw);
      }
      // At most kInFlight stages' wgmma still running: the stage the next iteration's load overwrites
      // (kInFlight + 1 before that iteration's) is no longer read by this warpgroup, and the next
      // barrier makes that true of every warpgroup.
      WgmmaWait<kInFlight>();
    } else {
#pragma unroll
      for (int ks = 0; ks < BK / 32; ++ks) {
        uint32_t a[MT][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int row0 = warp_m * WM + mt * 16;
          if (kLdmatrix) {
            // Matrices 0..3: rows +0 / +8 (bit 0 of m) x k bytes +0 / +16 (bit 1): a[0..3] in order.
            const int row = row0 + (matrix & 1) * 8 + matrix_row;
            LoadMatrices(SharedAddress(a_stage + StageOffset<BK>(row, 2 * ks + (matrix >> 1))), a[mt]);
          } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int row = row0 + group_id + (i & 1) * 8;
              a[mt][i] =
                  *reinterpret_cast<const uint32_t*>(a_stage + StageOffset<BK>(row, 2 * ks + (i >> 1)) + 4 * in_group);
            }
          }
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          const int row0 = warp_n * WN + np * 16;
          if (kLdmatrix) {
            // Matrices 0..3: channels +0 / +8 (bit 1 of m) x k bytes +0 / +16 (bit 0): b[2np][0..1],
            // b[2np + 1][0..1].
            uint32_t r[4];
            const int row = row0 + (matrix >> 1) * 8 + matrix_row;
            LoadMatrices(SharedAddress(b_stage + StageOffset<BK>(row, 2 * ks + (matrix & 1))), r);
            b[2 * np][0] = r[0], b[2 * np][1] = r[1], b[2 * np + 1][0] = r[2], b[2 * np + 1][1] = r[3];
          } else {
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int i = 0; i < 2; ++i) {
                const int row = row0 + h * 8 + group_id;
                b[2 * np + h][i] =
                    *reinterpret_cast<const uint32_t*>(b_stage + StageOffset<BK>(row, 2 * ks + i) + 4 * in_group);
              }
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) MmaInt8(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
      }
    }
  }
  if constexpr (kWgmma) {
    WgmmaWait<0>();  // the last stages' wgmma have written the accumulators...
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) WgmmaFenceAccumulators(acc[mt]);  // ...before any read of them below
  }
  WaitCopies<0>();  // only empty groups remain; nothing may be in flight when the block exits
  __syncthreads();  // s_alpha and s_act of every thread (the loop's barriers order them too, K >= 1)

  // Epilogue: acc + the pixel's alpha sum + the channel's beta sum and taps * c0 are the lookups' sums;
  // then the lookup kernels' dequantization, channel by channel.
  const DequantizeTerms<Real> deq = TermsOf<Real>(epi.quant);
  const bool per_channel = epi.quant->channels != 1;
  // A lane's outputs come in pairs of adjacent channels (2t, 2t + 1 of an n8 tile). In NHWC with an even
  // npg (so an even co and out_depth) and an output aligned to two elements, a pair is one aligned
  // 2-element store: a warp's store then fills 8 whole 32-byte sectors (float; 16-byte halves of them
  // for half types) instead of touching 8 sectors twice at half use, with half the store instructions.
  const bool pair_stores = args.pair_stores;
  // The lane's rows (mma tile mt, half: rows + 0 / + 8).
  auto row_of = [&](int mt, int half) {
    // wgmma: warp w holds rows 16 (w % 4) .. + 15 of each of its warpgroup's MT blocks of 64 rows.
    return (kWgmma ? (warp >> 2) * MT * 64 + mt * 64 + (warp & 3) * 16 : warp_m * WM + mt * 16) + group_id + half * 8;
  };
  const int lane_channel0 = n0 + warp_n * WN + 2 * in_group;  // its first channel in the group (even)
  // kTma: the padded taps' sums, which the im2col loads' zeros left out (int32 adds modulo 2^32, as the
  // tensor cores': the sums come out as the gathers' were).
  if constexpr (kTma) {
    if (args.padded_taps) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          uint32_t padded = s_mask[row_of(mt, half)];
          while (padded != 0) {
            const int tap = __ffs(padded) - 1;
            padded &= padded - 1;
            const int* z = s_z + tap * BN + warp_n * WN + 2 * in_group;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const int2 zz = *reinterpret_cast<const int2*>(z + nt * 8);
              acc[mt][nt][2 * half] =
                  static_cast<int>(static_cast<unsigned>(acc[mt][nt][2 * half]) + static_cast<unsigned>(zz.x));
              acc[mt][nt][2 * half + 1] =
                  static_cast<int>(static_cast<unsigned>(acc[mt][nt][2 * half + 1]) + static_cast<unsigned>(zz.y));
            }
          }
        }
    }
  }
  // The common case without a branch per output: 32-bit sums (NarrowOutput), pair stores, every channel of
  // the warp's tile inside the group; rows past the last pixel are stores left out. Only in the tiles of
  // at most 64 channels a warp: in wgmma128x128 its registers pushed nvcc to recompute addresses inside
  // the main loop (321 -> 360 instructions a stage), and many-term calls lost 9-19% (H200, --decomposed-phases);
  // the mma.sync tiles of 16 mma a warp (128 x 128, 128 x 64) spilled more.
  constexpr bool kNarrowPath = kWgmma ? BN <= 64 : MT * NT <= 8;
  if (kNarrowPath && args.narrow_sums && pair_stores && epi.debug_acc == nullptr &&
      n0 + warp_n * WN + NT * 8 <= g.npg) {
    NarrowRows<T, Real, MT> rows;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = row_of(mt, half), p = m0 + row;
        rows.Set(mt, half, p < g.pixels,
                 output + static_cast<int64_t>(p < g.pixels ? p : 0) * g.out_depth + grp * g.npg + lane_channel0,
                 s_alpha[row], s_act[row]);
      }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int co0 = grp * g.npg + lane_channel0 + nt * 8;
      rows.Store(acc, nt, MakeChannelEpilogue(args, g, epi, per_channel, co0, deq),
                 MakeChannelEpilogue(args, g, epi, per_channel, co0 + 1, deq));
    }
    return;
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int channel0 = n0 + warp_n * WN + nt * 8 + 2 * in_group;  // even
    if (channel0 >= g.npg) continue;
    const bool second = channel0 + 1 < g.npg;
    const int co0 = grp * g.npg + channel0;
    // Per channel, once: the integers added to every acc (beta sum + taps * c0 - acc_offset) and the
    // filter codes' term (FilterTerm). MakeChannelEpilogue's work written out: through ChannelEpilogue here
    // nvcc recomputed addresses inside wgmma128x128's main loop (321 -> 360 instructions a stage).
    long long channel_term[2] = {0, 0};
    Real filter_term[2] = {0, 0};
    DequantizeTerms<Real> terms[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (e == 1 && !second) break;
      terms[e] = ChannelTerms(epi.quant, per_channel, co0 + e, deq);
      channel_term[e] =
          static_cast<long long>(__ldg(args.channel_sums + co0 + e)) + args.taps_c0 - terms[e].acc_offset;
      const long long w_sum = static_cast<long long>(__ldg(args.channel_sums + g.out_depth + co0 + e));
      filter_term[e] = terms[e].FilterTerm(w_sum);
    }
    // terms[e](sum, act_sum, filter_sum) for the lookups' sum = acc + alpha sum + beta sum + taps * c0, as
    // DequantizeTerms::Combine of net = sum - acc_offset (the same int64 whichever way the adds go) and the
    // per-pixel and per-channel conversions above: the same bits.
    auto dequantize = [&](int e, int row, int64_t net) -> T {
      return FromReal<T>(terms[e].Combine(net, s_act[row], filter_term[e]));
    };
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        // wgmma: warp w holds rows 16 (w % 4) .. + 15 of each of its warpgroup's MT blocks of 64 rows.
        const int row = (kWgmma ? (warp >> 2) * MT * 64 + mt * 64 + (warp & 3) * 16 : warp_m * WM + mt * 16) +
                        group_id + half * 8;
        const int p = m0 + row;
        if (p >= g.pixels) continue;
        const long long alpha_sum = s_alpha[row];
        const int64_t net0 = static_cast<int64_t>(acc[mt][nt][2 * half]) + alpha_sum + channel_term[0];
        const T v0 = dequantize(0, row, net0);
        if (!second) {
          StoreOutput(g, output, p, co0, v0);
          if (epi.debug_acc != nullptr) {
            epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0] = net0 + terms[0].acc_offset;
          }
          continue;
        }
        const int64_t net1 = static_cast<int64_t>(acc[mt][nt][2 * half + 1]) + alpha_sum + channel_term[1];
        const T v1 = dequantize(1, row, net1);
        if (pair_stores) {
          StorePair(output + static_cast<int64_t>(p) * g.out_depth + co0, v0, v1);
        } else {
          StoreOutput(g, output, p, co0, v0);
          StoreOutput(g, output, p, co0 + 1, v1);
        }
        if (epi.debug_acc != nullptr) {  // the lookups' sums
          epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0] = net0 + terms[0].acc_offset;
          epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co0 + 1] = net1 + terms[1].acc_offset;
        }
      }
    }
  }
}

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_GEMM_CUH_
