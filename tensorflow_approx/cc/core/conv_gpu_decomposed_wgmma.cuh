// Hopper warpgroup MMA (PTX wgmma.mma_async, sm_90a) for the decomposed GEMM's wgmma tiles
// (DecomposedGemmKernel with kWgmma; conv_gpu_decomposed_gemm.cuh) and the pointwise tile
// (conv_gpu_decomposed_pointwise.cuh). Internal: included by those two only.
//
// Why: mma.sync m16n8k32 with ldmatrix tops out far below the H200's int8 peak (220 T MAC/s measured
// with 16 terms against ~990 T dense with wgmma): every operand byte passes through registers, and a
// warp issues one small MMA per 16 x 8 x 32. wgmma reads both operands straight from shared memory
// (descriptors), a warpgroup (4 warps, 128 threads) per 64 x N x 32 instruction, asynchronously.
//
// Every wgmma instruction here is compiled only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL): plain sm_90 and
// the compute_90 PTX have no wgmma. In other device passes the wrappers are empty and the kernel
// returns at once; the host never launches it there (LaunchGemm asks WgmmaAvailable, which reads
// g_wgmma_built, 1 only in sm_90a device code).
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_WGMMA_CUH_
#define TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_WGMMA_CUH_

#include <cstdint>

namespace tfapprox {
namespace decomposed_internal {

// ---------------------------------------------------------------------------------------------------
// The shared-memory layout and its descriptors.
//
// Both operands are K-major int8 (the only major-ness wgmma takes for 8-bit integers): A's rows are
// pixels, B's rows are output channels, each row BK contiguous bytes of K in a stage. The cp.async
// loaders already write a stage as StageOffset<BK>: chunk c (16 bytes) of row r at byte
// r * BK + 16 * (c ^ ((r / (128 / BK)) % (BK / 16))). In address bits that is
//   BK = 128: bits [4:6] ^= bits [7:9]   (rows of 128 bytes; the XOR term is r % 8)
//   BK = 64:  bits [4:5] ^= bits [7:8]   (rows of 64 bytes; the XOR term is (r / 2) % 4)
// which are exactly wgmma's 128-byte and 64-byte swizzle modes (the hardware XORs the same address
// bits), whose K-major atom is 8 rows of 128 (64) bytes = 1024 (512) bytes. So the loaders are reused
// unchanged, and the choice is: 128-byte swizzle for BK = 128 (the wgmma tiles' stages), 64-byte swizzle
// for BK = 64. The no-swizzle "interleave" layout was not chosen: it would need a different loader
// layout (8 x 16-byte core matrices contiguous) and gives bank conflicts on the cp.async stores.
//
// The swizzle is applied to absolute shared addresses, so every atom must start at a multiple of its
// size: the kernel rounds its dynamic shared memory up to 1024 bytes (the launch asks for 1 KB more),
// and stage, warpgroup and operand offsets are all multiples of 1024 (BM * BK, 64 * BK, BN * BK with
// BM, BN multiples of 64 and BK >= 64).
//
// Descriptor (PTX ISA, "Matrix Descriptor Format" of wgmma), 64 bits:
//   bits  0-13  start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4: for K-major swizzled layouts it is not used (the
//               instruction's 32 K bytes lie inside one swizzled row); set to 1 as is customary
//   bits 32-45  stride-dimension byte offset >> 4: from one 8-row group (core matrix row) to the next,
//               8 * BK bytes (1024 for 128-byte rows, 512 for 64-byte rows)
//   bits 49-51  base offset: 0 (atoms start on their own alignment)
//   bits 62-63  swizzle: 1 = 128-byte, 2 = 64-byte, 3 = 32-byte, 0 = none
// The k step ks (32 bytes of K) of a stage starts 32 * ks bytes into row 0: the start address moves by
// 32 * ks and the hardware's XOR of bits [7:9] (or [7:8]) with the row does the rest, as for the
// loaders' logical chunk 2 * ks (+1).
template <int BK>
__device__ __forceinline__ uint64_t WgmmaDescriptor(uint32_t shared_address) {
  static_assert(BK == 64 || BK == 128, "rows of one 64- or 128-byte swizzle span");
  constexpr uint64_t kSwizzle = BK == 128 ? 1 : 2;
  constexpr uint64_t kStride = 8 * BK;  // bytes from 8 rows to the next 8
  return static_cast<uint64_t>((shared_address >> 4) & 0x3FFF) | (uint64_t{1} << 16) |
         ((kStride >> 4) << 32) | (kSwizzle << 62);
}

// ---------------------------------------------------------------------------------------------------
// Ordering.

// Shared-memory writes of this thread's finished cp.async copies (generic proxy) made visible to the
// async proxy, through which wgmma reads its shared-memory operands; then a barrier makes everyone's.
__device__ __forceinline__ void FenceProxyAsyncShared() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Before the first wgmma of a batch: orders this warpgroup's earlier register and shared-memory
// accesses before the wgmma that follow (PTX requires it before the first wgmma and whenever the
// accumulators were touched by other instructions in between).
__device__ __forceinline__ void WgmmaFence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
// The wgmma issued since the last commit form one group.
__device__ __forceinline__ void WgmmaCommit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most kPending of this warpgroup's committed groups are still in flight: their reads
// of shared memory and writes of the accumulators are then done.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// The compiler sees the accumulators written when a wgmma asm statement issues, not when the hardware
// writes them: after the last WgmmaWait, this empty statement "rewrites" every accumulator, so that no
// read of one (the epilogue's) is moved above the wait.
template <int NT>
__device__ __forceinline__ void WgmmaFenceAccumulators(int (&d)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(d[i][e])::"memory");
}

// ---------------------------------------------------------------------------------------------------
// d (64 x N int32 of the warpgroup) += A (64 x 32 int8, K-major, a_desc) * B (32 x N int8, K-major:
// B's rows are N channels of 32 K bytes, b_desc). N = 8 * NT: overloads for N = 64 and N = 128.
//
// Accumulator fragment (PTX ISA, wgmma .m64nNk32 with .s32 D; the same for every N): warp w of the
// warpgroup holds rows 16w .. 16w + 15; with g = lane / 4 and t = lane % 4, register i of a thread is
//   row 16w + g + 8 * ((i / 2) % 2),   column 8 * (i / 4) + 2t + (i % 2).
// That is mma.m16n8's accumulator for each n8 block j = i / 4: d[j][0], d[j][1] row g, columns
// 8j + 2t, 8j + 2t + 1; d[j][2], d[j][3] row g + 8, the same columns. d[j][e] below is register 4j + e,
// so the kernel's acc[0][j][e] and its mma.sync epilogue (warp w as warp row w of 16 rows, n8 tile j)
// read the right outputs.
// The four accumulator registers of n8 block i as read-write asm operands (a block's 4 x %n in the list).
#define TFAPPROX_WGMMA_ACC(i) "+r"(d[i][0]), "+r"(d[i][1]), "+r"(d[i][2]), "+r"(d[i][3])
// One wgmma.m64nNk32 with scale-d true (D = A B + D): N as a literal, the accumulators' %-list and the two
// descriptors' operand numbers as strings, then the accumulator operands.
#define TFAPPROX_WGMMA_S8(N, ACC_LIST, DESCS, ...)                                                        \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned.m64n" #N            \
               "k32.s32.s8.s8 {" ACC_LIST "}, " DESCS ", p;\n}\n"                                         \
               : __VA_ARGS__                                                                             \
               : "l"(a_desc), "l"(b_desc))

__device__ __forceinline__ void WgmmaS8(int (&d)[8][4], uint64_t a_desc, uint64_t b_desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  TFAPPROX_WGMMA_S8(64,
                    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31",
                    "%32, %33", TFAPPROX_WGMMA_ACC(0), TFAPPROX_WGMMA_ACC(1), TFAPPROX_WGMMA_ACC(2),
                    TFAPPROX_WGMMA_ACC(3), TFAPPROX_WGMMA_ACC(4), TFAPPROX_WGMMA_ACC(5), TFAPPROX_WGMMA_ACC(6),
                    TFAPPROX_WGMMA_ACC(7));
#endif
}

__device__ __forceinline__ void WgmmaS8(int (&d)[16][4], uint64_t a_desc, uint64_t b_desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  TFAPPROX_WGMMA_S8(128,
                    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63",
                    "%64, %65", TFAPPROX_WGMMA_ACC(0), TFAPPROX_WGMMA_ACC(1), TFAPPROX_WGMMA_ACC(2),
                    TFAPPROX_WGMMA_ACC(3), TFAPPROX_WGMMA_ACC(4), TFAPPROX_WGMMA_ACC(5), TFAPPROX_WGMMA_ACC(6),
                    TFAPPROX_WGMMA_ACC(7), TFAPPROX_WGMMA_ACC(8), TFAPPROX_WGMMA_ACC(9), TFAPPROX_WGMMA_ACC(10),
                    TFAPPROX_WGMMA_ACC(11), TFAPPROX_WGMMA_ACC(12), TFAPPROX_WGMMA_ACC(13), TFAPPROX_WGMMA_ACC(14),
                    TFAPPROX_WGMMA_ACC(15));
#endif
}
// d (64 x 256 int32 of the warpgroup) += A (64 x 32 int8 from registers) * B (32 x 256 int8, K-major, b_desc):
// the pointwise tile's wgmma (conv_gpu_decomposed_pointwise.cuh), whose A is looked up in registers. A's
// register fragment (PTX ISA, wgmma .m64nNk32 with A in registers, 8-bit types) is mma.m16n8k32's for warp w's
// 16 rows 16w .. 16w + 15: with g = lane / 4 and t = lane % 4, a[0]: row g, k 4t .. 4t + 3; a[1]: row g + 8,
// the same k; a[2], a[3]: the same rows, k 16 + 4t .. + 3. The accumulators as in the overloads above.
// The registers of `a` must keep their values until the wgmma has completed (WgmmaWait): the caller
// double-buffers them.
__device__ __forceinline__ void WgmmaS8(int (&d)[32][4], const uint32_t (&a)[4], uint64_t b_desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, {%128, %129, %130, %131}, %132, p;\n}\n"
      : TFAPPROX_WGMMA_ACC(0), TFAPPROX_WGMMA_ACC(1), TFAPPROX_WGMMA_ACC(2), TFAPPROX_WGMMA_ACC(3),
        TFAPPROX_WGMMA_ACC(4), TFAPPROX_WGMMA_ACC(5), TFAPPROX_WGMMA_ACC(6), TFAPPROX_WGMMA_ACC(7),
        TFAPPROX_WGMMA_ACC(8), TFAPPROX_WGMMA_ACC(9), TFAPPROX_WGMMA_ACC(10), TFAPPROX_WGMMA_ACC(11),
        TFAPPROX_WGMMA_ACC(12), TFAPPROX_WGMMA_ACC(13), TFAPPROX_WGMMA_ACC(14), TFAPPROX_WGMMA_ACC(15),
        TFAPPROX_WGMMA_ACC(16), TFAPPROX_WGMMA_ACC(17), TFAPPROX_WGMMA_ACC(18), TFAPPROX_WGMMA_ACC(19),
        TFAPPROX_WGMMA_ACC(20), TFAPPROX_WGMMA_ACC(21), TFAPPROX_WGMMA_ACC(22), TFAPPROX_WGMMA_ACC(23),
        TFAPPROX_WGMMA_ACC(24), TFAPPROX_WGMMA_ACC(25), TFAPPROX_WGMMA_ACC(26), TFAPPROX_WGMMA_ACC(27),
        TFAPPROX_WGMMA_ACC(28), TFAPPROX_WGMMA_ACC(29), TFAPPROX_WGMMA_ACC(30), TFAPPROX_WGMMA_ACC(31)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
#endif
}
#undef TFAPPROX_WGMMA_S8
#undef TFAPPROX_WGMMA_ACC

}  // namespace decomposed_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_GPU_DECOMPOSED_WGMMA_CUH_
