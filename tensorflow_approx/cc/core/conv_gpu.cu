// CUDA kernels of the op (see conv_gpu.h). Built with -fmad=false: QuantizeToCode and DequantizeTerms
// must round exactly as the CPU build (-ffp-contract=off) does, and a fused multiply-add would change a
// code or an output bit.
#include "tensorflow_approx/cc/core/conv_gpu.h"

#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

// K taps per pipeline stage of the tiled kernels.
constexpr int kBK = 32;
constexpr int kLutSmemBytes = kLutEntries * 2;

template <typename T>
struct RealOf {
  using type = float;
};
template <>
struct RealOf<double> {
  using type = double;
};

// Conversions as the CPU pipeline's static_casts do them (round to nearest even).
__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(double x) { return __double2float_rn(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromReal(typename RealOf<T>::type x);
template <>
__device__ __forceinline__ float FromReal<float>(float x) { return x; }
template <>
__device__ __forceinline__ double FromReal<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half FromReal<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromReal<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The geometry in 32-bit integers: every tensor has fewer than 2^31 elements (ComputeConvShape) and
// the host checks the spatial terms below 2^30, so no index computed from these overflows.
struct GpuGeometry {
  int in_h, in_w, in_depth, filter_h, filter_w, cg, out_depth, npg, groups;
  int stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, out_h, out_w;
  int taps, pixels;
  bool nchw;
  int zero_point;
};

template <typename Real>
struct Epilogue {
  DequantizeTerms<Real> deq;
  int64_t* debug_acc;
  int64_t* debug_act_sum;
};

template <typename T>
__device__ __forceinline__ void StoreOutput(const GpuGeometry& g, T* output, int p, int co, T value) {
  if (!g.nchw) {
    output[static_cast<int64_t>(p) * g.out_depth + co] = value;
  } else {
    const int hw = g.out_h * g.out_w;
    const int n = p / hw;
    output[(static_cast<int64_t>(n) * g.out_depth + co) * hw + (p - n * hw)] = value;
  }
}

__device__ __forceinline__ void CopyLutToShared(const uint16_t* __restrict__ lut, uint16_t* s_lut) {
  const uint4* src = reinterpret_cast<const uint4*>(lut);
  uint4* dst = reinterpret_cast<uint4*>(s_lut);
  for (int i = threadIdx.x; i < kLutEntries / 8; i += blockDim.x) dst[i] = __ldg(src + i);
}

// Implicit GEMM: a block computes tiles of BM = NW * TM output pixels x BN = 32 * TN output channels of
// one group over all K taps, looping over tiles (a persistent grid: the 128 KB table is copied into
// shared memory once per block, not once per tile). Each warp owns TM pixels and all BN channels, so at
// every lookup the 32 lanes share the row operand (activation code) and differ in the column (weight
// code): the bank of LUT[a][w] depends on w alone, real weights spread over the banks, and the
// zero-point spike of the activations becomes a broadcast. The tiles hold activation codes as bytes
// (16 pixels per 16-byte broadcast load) and weights as byte offsets w << 1, so a lookup is one
// shift-add (LEA) and one 16-bit shared load, and operand loads take few shared-memory cycles.
template <typename T, int NW, int TM, int TN, bool kWide>
__global__ void __launch_bounds__(NW * 32, 1)
    TiledConvKernel(const T* __restrict__ input, const T* __restrict__ filter, T* __restrict__ output,
                    const uint16_t* __restrict__ lut, GpuGeometry g, QuantParams qi, QuantParams qf,
                    Epilogue<typename RealOf<T>::type> epi, int m_tiles, int n_tiles) {
  constexpr int NT = NW * 32, BM = NW * TM, BN = 32 * TN, BK = kBK;
  // Bytes per k row of the activation tile: the 16 bytes of padding put the loader's stores (lanes
  // differ in k) on different banks; it keeps rows 16-byte aligned for the broadcast loads.
  constexpr int AS = BM + 16;
  constexpr int A_GROUPS = BM * BK / (4 * NT);  // groups of 4 pixels per loader thread
  constexpr int W_PER = BN * BK / NT;
  static_assert(NT % BK == 0 && NT % BN == 0 && A_GROUPS >= 1 && A_GROUPS * 4 * NT == BM * BK &&
                    (BN * BK) % NT == 0, "tiling");
  static_assert(A_GROUPS * 4 <= 16 && W_PER <= 32, "kind masks");
  static_assert(BM + BN <= NT, "one thread per column sum");
  static_assert((TM == 4 || TM == 8 || TM == 16) && (TN == 2 || TN == 4), "vector loads");

  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* s_lut = reinterpret_cast<uint16_t*>(smem);
  uint8_t* s_a = smem + kLutSmemBytes;                                  // [2][BK][AS] activation codes
  uint16_t* s_w = reinterpret_cast<uint16_t*>(s_a + 2 * BK * AS);       // [2][BK][BN] w << 1
  int4* s_pix = reinterpret_cast<int4*>(s_w + 2 * BK * BN);             // [BM] base, ih0, iw0, valid
  long long* s_sum = reinterpret_cast<long long*>(s_pix + BM);          // [BM + BN] code sums

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int in_hw = g.in_h * g.in_w;
  const int k_tiles = (g.taps + BK - 1) / BK;
  // Taps past K hold codes (0, 0); their lookups add (k_tiles * BK - K) * LUT[0][0], taken off at the
  // end (exact in modular arithmetic, since the true sum fits).
  const uint32_t tail = static_cast<uint32_t>(k_tiles * BK - g.taps);
  const int total_tiles = m_tiles * n_tiles * g.groups;
  CopyLutToShared(lut, s_lut);

  const int a_k = tid % BK, a_g0 = tid / BK;
  const int w_n = tid % BN, w_k0 = tid / BN;

  for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
    const int mt = tile % m_tiles;
    const int rest = tile / m_tiles;
    const int nt = rest % n_tiles;
    const int grp = rest / n_tiles;
    const int m0 = mt * BM, n0 = nt * BN;
    for (int i = tid; i < BM; i += NT) {
      const int p = m0 + i;
      int4 info = make_int4(0, 0, 0, 0);
      if (p < g.pixels) {
        const int ow = p % g.out_w;
        const int t = p / g.out_w;
        const int oh = t % g.out_h;
        const int n = t / g.out_h;
        const int channel0 = grp * g.cg;
        info.x = g.nchw ? (n * g.in_depth + channel0) * in_hw : n * in_hw * g.in_depth + channel0;
        info.y = oh * g.stride_h - g.pad_top;
        info.z = ow * g.stride_w - g.pad_left;
        info.w = 1;
      }
      s_pix[i] = info;
    }
    __syncthreads();  // s_pix (and, on the first tile, the table) ready

    // Loader state: this thread's tap (kh, kw, ci) of column a_k, advanced by BK per tile without a
    // division in the common case. K-fast lanes read consecutive channels of one NHWC pixel.
    int a_ci = a_k % g.cg, a_kw = (a_k / g.cg) % g.filter_w, a_kh = a_k / g.cg / g.filter_w;
    float a_val[A_GROUPS * 4], w_val[W_PER];
    uint32_t a_kind = 0, w_ok = 0;  // 2 bits per activation: 1 padded, 2 none; 1 bit per weight: valid

    auto load_tile = [&](int k0) {
      const bool k_ok = k0 + a_k < g.taps;
      const int dh = a_kh * g.dil_h, dw = a_kw * g.dil_w;
      a_kind = 0;
#pragma unroll
      for (int i = 0; i < A_GROUPS * 4; ++i) {
        const int4 pix = s_pix[4 * (a_g0 + (i / 4) * (NT / BK)) + i % 4];
        const int ih = pix.y + dh, iw = pix.z + dw;
        const bool inside = static_cast<unsigned>(ih) < static_cast<unsigned>(g.in_h) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(g.in_w);
        a_val[i] = 0.f;
        if (!k_ok || !pix.w) {
          a_kind |= 2u << (2 * i);
        } else if (!inside) {
          a_kind |= 1u << (2 * i);
        } else {
          const int off = g.nchw ? pix.x + a_ci * in_hw + ih * g.in_w + iw
                                 : pix.x + (ih * g.in_w + iw) * g.in_depth + a_ci;
          a_val[i] = ToFloat(input[off]);
        }
      }
      w_ok = 0;
#pragma unroll
      for (int i = 0; i < W_PER; ++i) {
        const int k = k0 + w_k0 + i * (NT / BN);
        const int co = n0 + w_n;
        w_val[i] = 0.f;
        if (k < g.taps && co < g.npg) {
          w_val[i] = ToFloat(filter[k * g.out_depth + grp * g.npg + co]);
          w_ok |= 1u << i;
        }
      }
      a_ci += BK;
      if (a_ci >= g.cg) {
        const int q = a_ci / g.cg;
        a_ci -= q * g.cg;
        a_kw += q;
        if (a_kw >= g.filter_w) {
          a_kh += a_kw / g.filter_w;
          a_kw %= g.filter_w;
        }
      }
    };
    auto store_tile = [&](int buf) {
      uint8_t* a = s_a + buf * BK * AS + a_k * AS;
#pragma unroll
      for (int grp4 = 0; grp4 < A_GROUPS; ++grp4) {
        uint32_t word = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int i = grp4 * 4 + j;
          const uint32_t kind = (a_kind >> (2 * i)) & 3u;
          const uint32_t code = kind == 0 ? QuantizeToCode(a_val[i], qi)
                                          : kind == 1 ? static_cast<uint32_t>(g.zero_point) : 0u;
          word |= code << (8 * j);
        }
        *reinterpret_cast<uint32_t*>(a + 4 * (a_g0 + grp4 * (NT / BK))) = word;
      }
      uint16_t* w = s_w + buf * BK * BN;
#pragma unroll
      for (int i = 0; i < W_PER; ++i) {
        const int kl = w_k0 + i * (NT / BN);
        const uint32_t code = (w_ok >> i) & 1u ? QuantizeToCode(w_val[i], qf) : 0u;
        w[kl * BN + w_n] = static_cast<uint16_t>(code << 1);
      }
    };

    uint32_t acc[TM][TN];
    unsigned long long acc64[kWide ? TM : 1][kWide ? TN : 1];
#pragma unroll
    for (int m = 0; m < TM; ++m)
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        acc[m][n] = 0;
        if (kWide) acc64[kWide ? m : 0][kWide ? n : 0] = 0;
      }
    long long col_sum = 0;  // thread tid < BM: code sum of pixel tid; BM <= tid < BM + BN: of a channel

    load_tile(0);
    store_tile(0);
    __syncthreads();
    const char* lut_bytes = reinterpret_cast<const char*>(s_lut);
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int cur = kt & 1;
      const int k0 = kt * BK;
      if (kt + 1 < k_tiles) load_tile(k0 + BK);  // global loads in flight during the lookups

      {
        const int rows = min(BK, g.taps - k0);
        uint32_t s = 0;
        if (tid < BM) {
          for (int k = 0; k < rows; ++k) s += s_a[cur * BK * AS + k * AS + tid];
        } else if (tid < BM + BN) {
          for (int k = 0; k < rows; ++k) s += s_w[cur * BK * BN + k * BN + tid - BM] >> 1;
        }
        col_sum += s;
      }

      const uint8_t* a_tile = s_a + cur * BK * AS + warp * TM;
      const uint16_t* w_tile = s_w + cur * BK * BN + lane * TN;
#pragma unroll
      for (int k = 0; k < BK; k += 2) {
        uint32_t r[2][TM], c[2][TN];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t words[TM / 4];
          const uint8_t* row = a_tile + (k + h) * AS;
          if (TM == 16) {
            const uint4 v = *reinterpret_cast<const uint4*>(row);
            words[0] = v.x, words[1 % (TM / 4)] = v.y, words[2 % (TM / 4)] = v.z, words[3 % (TM / 4)] = v.w;
          } else if (TM == 8) {
            const uint2 v = *reinterpret_cast<const uint2*>(row);
            words[0] = v.x, words[1 % (TM / 4)] = v.y;
          } else {
            words[0] = *reinterpret_cast<const uint32_t*>(row);
          }
#pragma unroll
          for (int m = 0; m < TM; ++m) r[h][m] = (words[m / 4] >> (8 * (m % 4))) & 0xFFu;
          if (TN == 4) {
            const uint2 v = *reinterpret_cast<const uint2*>(w_tile + (k + h) * BN);
            c[h][0] = v.x & 0xFFFFu, c[h][1] = v.x >> 16, c[h][2 % TN] = v.y & 0xFFFFu, c[h][3 % TN] = v.y >> 16;
          } else {
            const uint32_t v = *reinterpret_cast<const uint32_t*>(w_tile + (k + h) * BN);
            c[h][0] = v & 0xFFFFu, c[h][1] = v >> 16;
          }
        }
#pragma unroll
        for (int m = 0; m < TM; ++m)
#pragma unroll
          for (int n = 0; n < TN; ++n) {
            const uint32_t l0 = *reinterpret_cast<const uint16_t*>(lut_bytes + ((r[0][m] << 9) + c[0][n]));
            const uint32_t l1 = *reinterpret_cast<const uint16_t*>(lut_bytes + ((r[1][m] << 9) + c[1][n]));
            acc[m][n] += l0 + l1;
          }
      }
      if (kWide) {
        // A tile adds at most BK * 65535 per output; moving it to 64 bits each tile keeps any K exact.
#pragma unroll
        for (int m = 0; m < TM; ++m)
#pragma unroll
          for (int n = 0; n < TN; ++n) {
            acc64[kWide ? m : 0][kWide ? n : 0] += acc[m][n];
            acc[m][n] = 0;
          }
      }

      if (kt + 1 < k_tiles) store_tile(cur ^ 1);  // that buffer was last read before the previous barrier
      __syncthreads();
    }

    if (tid < BM + BN) s_sum[tid] = col_sum;
    if (epi.debug_act_sum != nullptr && nt == 0 && tid < BM && m0 + tid < g.pixels) {
      epi.debug_act_sum[static_cast<int64_t>(m0 + tid) * g.groups + grp] = col_sum;
    }
    __syncthreads();

    const uint32_t tail_sum = tail * s_lut[0];
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      const int ml = warp * TM + m;
      const int p = m0 + ml;
      if (p >= g.pixels) continue;
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        const int nl = lane * TN + n;
        if (n0 + nl >= g.npg) continue;
        const int co = grp * g.npg + n0 + nl;
        const int64_t sum = kWide ? static_cast<int64_t>(acc64[kWide ? m : 0][kWide ? n : 0] - tail_sum)
                                  : static_cast<int64_t>(acc[m][n] - tail_sum);
        StoreOutput(g, output, p, co, FromReal<T>(epi.deq(sum, s_sum[ml], s_sum[BM + nl])));
        if (epi.debug_acc != nullptr) epi.debug_acc[static_cast<int64_t>(p) * g.out_depth + co] = sum;
      }
    }
    // The next tile writes s_pix and tile buffer 0 (read last before the final barrier of the k loop)
    // and s_sum only after further barriers, so no barrier is needed here.
  }
}

// One thread per output element, channels fastest (coalesced for depthwise NHWC). For layers whose
// groups have too few output channels to fill a warp's lanes with distinct weights.
template <typename T, bool kSharedLut>
__global__ void __launch_bounds__(256)
    DirectConvKernel(const T* __restrict__ input, const T* __restrict__ filter, T* __restrict__ output,
                     const uint16_t* __restrict__ lut, GpuGeometry g, QuantParams qi, QuantParams qf,
                     Epilogue<typename RealOf<T>::type> epi) {
  extern __shared__ __align__(16) unsigned char smem[];
  const uint16_t* table = lut;
  if (kSharedLut) {
    uint16_t* s_lut = reinterpret_cast<uint16_t*>(smem);
    CopyLutToShared(lut, s_lut);
    __syncthreads();
    table = s_lut;
  }
  const int64_t total = static_cast<int64_t>(g.pixels) * g.out_depth;
  const int in_hw = g.in_h * g.in_w;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int co = static_cast<int>(idx % g.out_depth);
    const int p = static_cast<int>(idx / g.out_depth);
    const int grp = co / g.npg;
    const int ow = p % g.out_w;
    const int oh = (p / g.out_w) % g.out_h;
    const int n = p / g.out_w / g.out_h;
    unsigned long long acc = 0;
    long long a_sum = 0, w_sum = 0;
    for (int kh = 0; kh < g.filter_h; ++kh) {
      const int ih = oh * g.stride_h - g.pad_top + kh * g.dil_h;
      for (int kw = 0; kw < g.filter_w; ++kw) {
        const int iw = ow * g.stride_w - g.pad_left + kw * g.dil_w;
        const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        for (int ci = 0; ci < g.cg; ++ci) {
          const int c = grp * g.cg + ci;
          uint32_t a = g.zero_point;
          if (inside) {
            const int off = g.nchw ? (n * g.in_depth + c) * in_hw + ih * g.in_w + iw
                                   : ((n * g.in_h + ih) * g.in_w + iw) * g.in_depth + c;
            a = QuantizeToCode(ToFloat(input[off]), qi);
          }
          const uint32_t w =
              QuantizeToCode(ToFloat(filter[((kh * g.filter_w + kw) * g.cg + ci) * g.out_depth + co]), qf);
          acc += kSharedLut ? table[(a << 8) | w] : __ldg(table + ((a << 8) | w));
          a_sum += a;
          w_sum += w;
        }
      }
    }
    StoreOutput(g, output, p, co, FromReal<T>(epi.deq(static_cast<int64_t>(acc), a_sum, w_sum)));
    if (epi.debug_acc != nullptr) epi.debug_acc[idx] = static_cast<int64_t>(acc);
    if (epi.debug_act_sum != nullptr && co % g.npg == 0) {
      epi.debug_act_sum[static_cast<int64_t>(p) * g.groups + grp] = a_sum;
    }
  }
}

struct TileConfig {
  GpuKernel kernel;
  int bm, bn;
};
constexpr TileConfig kTiles[] = {
    {GpuKernel::kTile128x64, 128, 64}, {GpuKernel::kTile64x128, 64, 128},
    {GpuKernel::kTile32x128, 32, 128}, {GpuKernel::kTile64x64, 64, 64},
    {GpuKernel::kTile32x64, 32, 64},
};

constexpr int TiledSmemBytes(int bm, int bn) {
  return kLutSmemBytes + 2 * kBK * (bm + 16) + 2 * kBK * bn * 2 + bm * 16 + (bm + bn) * 8;
}

std::string CudaError(const char* what, cudaError_t e) {
  return std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
         ")";
}

struct DeviceInfo {
  int sms = 0;
  int smem_optin = 0;
};

std::string GetDeviceInfo(DeviceInfo* info) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaError("cudaGetDevice", e);
  e = cudaDeviceGetAttribute(&info->sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return CudaError("cudaDeviceGetAttribute", e);
  e = cudaDeviceGetAttribute(&info->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return CudaError("cudaDeviceGetAttribute", e);
  return "";
}

// Estimated share of the machine a tile keeps busy: padding waste x the last wave's idle SMs x the
// cost of small register tiles (fewer lookups per shared load of operands).
double TileScore(const ConvShape& s, const TileConfig& t, int sms) {
  const int64_t m_tiles = (s.out_pixels() + t.bm - 1) / t.bm;
  const int64_t n_tiles = (s.out_depth_per_group() + t.bn - 1) / t.bn;
  const int64_t blocks = m_tiles * n_tiles * s.groups();
  const double fill = static_cast<double>(s.out_pixels()) * s.out_depth_per_group() /
                      (static_cast<double>(m_tiles * t.bm) * (n_tiles * t.bn));
  const int64_t waves = (blocks + sms - 1) / sms;
  const double wave_eff = static_cast<double>(blocks) / static_cast<double>(waves * sms);
  const double tile_eff = (t.bm / 8) * (t.bn / 32) >= 32 ? 1.0 : 0.85;
  return fill * wave_eff * tile_eff;
}

GpuKernel Choose(const ConvShape& s, const DeviceInfo& dev) {
  if (s.out_depth_per_group() < 32 || dev.smem_optin < TiledSmemBytes(128, 64)) return GpuKernel::kDirect;
  GpuKernel best = GpuKernel::kTile128x64;
  double best_score = -1;
  for (const TileConfig& t : kTiles) {
    const double score = TileScore(s, t, std::max(dev.sms, 1));
    if (score > best_score + 1e-9) {
      best_score = score;
      best = t.kernel;
    }
  }
  return best;
}

template <typename T, int NW, int TM, int TN>
std::string LaunchTiled(bool wide, int sms, const GpuGeometry& g, const T* input, const T* filter, T* output,
                        const uint16_t* lut, const QuantParams& qi, const QuantParams& qf,
                        const Epilogue<typename RealOf<T>::type>& epi, cudaStream_t stream) {
  constexpr int BM = NW * TM, BN = 32 * TN;
  const int64_t m_tiles = (static_cast<int64_t>(g.pixels) + BM - 1) / BM;
  const int64_t n_tiles = (g.npg + BN - 1) / BN;
  const int64_t blocks = m_tiles * n_tiles * g.groups;
  if (blocks > INT_MAX / 2) return "convolution too large for one GPU launch";
  // Persistent grid: one block per multiprocessor (the table leaves room for no second one).
  const int64_t grid = std::min<int64_t>(blocks, std::max(sms, 1));
  const int smem = TiledSmemBytes(BM, BN);
  auto kernel = wide ? TiledConvKernel<T, NW, TM, TN, true> : TiledConvKernel<T, NW, TM, TN, false>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
  kernel<<<static_cast<unsigned>(grid), NW * 32, smem, stream>>>(
      input, filter, output, lut, g, qi, qf, epi, static_cast<int>(m_tiles), static_cast<int>(n_tiles));
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the tiled convolution launch", e);
  return "";
}

template <typename T>
std::string LaunchDirect(bool shared_lut, int sms, const GpuGeometry& g, const T* input, const T* filter,
                         T* output, const uint16_t* lut, const QuantParams& qi, const QuantParams& qf,
                         const Epilogue<typename RealOf<T>::type>& epi, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(g.pixels) * g.out_depth;
  const int threads = 256;
  // A grid-stride loop over a few waves: each block pays the 128 KB table copy once.
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t{8} * std::max(sms, 1));
  cudaError_t e;
  if (shared_lut) {
    e = cudaFuncSetAttribute(DirectConvKernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kLutSmemBytes);
    if (e != cudaSuccess) return CudaError("cudaFuncSetAttribute", e);
    DirectConvKernel<T, true><<<static_cast<unsigned>(blocks), threads, kLutSmemBytes, stream>>>(
        input, filter, output, lut, g, qi, qf, epi);
  } else {
    DirectConvKernel<T, false><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(input, filter, output,
                                                                                      lut, g, qi, qf, epi);
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) return CudaError("the direct convolution launch", e);
  return "";
}

}  // namespace

const char* GpuKernelName(GpuKernel kernel) {
  switch (kernel) {
    case GpuKernel::kAuto: return "auto";
    case GpuKernel::kTile128x64: return "tile128x64";
    case GpuKernel::kTile64x128: return "tile64x128";
    case GpuKernel::kTile32x128: return "tile32x128";
    case GpuKernel::kTile64x64: return "tile64x64";
    case GpuKernel::kTile32x64: return "tile32x64";
    case GpuKernel::kDirect: return "direct";
    default: return "?";
  }
}

GpuKernel ChooseGpuKernel(const ConvShape& shape) {
  DeviceInfo dev;
  if (!GetDeviceInfo(&dev).empty()) return GpuKernel::kDirect;
  return Choose(shape, dev);
}

template <typename T>
std::string ApproxConvGpu(const ConvShape& s, const T* input, const T* filter, const QuantParams& input_q,
                          const QuantParams& filter_q, const uint16_t* lut_device, T* output,
                          cudaStream_t stream, const GpuOptions& options) {
  using Real = typename RealOf<T>::type;
  if (s.output_elements() == 0) return "";
  if (lut_device == nullptr || output == nullptr || filter == nullptr ||
      (input == nullptr && s.input_elements() > 0)) {
    return "ApproxConvGpu: null device pointer";
  }
  if (reinterpret_cast<uintptr_t>(lut_device) % 16 != 0) {
    return "ApproxConvGpu: the device table must be 16-byte aligned";
  }
  // Spatial terms below 2^30 keep every int32 index in the kernels far from overflow; tensors
  // themselves are below 2^31 elements by ComputeConvShape.
  const int64_t kLimit = int64_t{1} << 30;
  const int64_t spatial[] = {s.in_h, s.in_w, s.pad_top, s.pad_left, s.stride_h * s.out_h,
                             s.stride_w * s.out_w, s.dilation_h * s.filter_h, s.dilation_w * s.filter_w,
                             s.taps(), s.out_pixels()};
  for (int64_t v : spatial) {
    if (v < 0 || v >= kLimit) return "ApproxConvGpu: a spatial size or padding is too large for the GPU kernels";
  }
  GpuGeometry g;
  g.in_h = static_cast<int>(s.in_h);
  g.in_w = static_cast<int>(s.in_w);
  g.in_depth = static_cast<int>(s.in_depth);
  g.filter_h = static_cast<int>(s.filter_h);
  g.filter_w = static_cast<int>(s.filter_w);
  g.cg = static_cast<int>(s.filter_depth);
  g.out_depth = static_cast<int>(s.out_depth);
  g.npg = static_cast<int>(s.out_depth_per_group());
  g.groups = static_cast<int>(s.groups());
  g.stride_h = static_cast<int>(s.stride_h);
  g.stride_w = static_cast<int>(s.stride_w);
  g.dil_h = static_cast<int>(s.dilation_h);
  g.dil_w = static_cast<int>(s.dilation_w);
  g.pad_top = static_cast<int>(s.pad_top);
  g.pad_left = static_cast<int>(s.pad_left);
  g.out_h = static_cast<int>(s.out_h);
  g.out_w = static_cast<int>(s.out_w);
  g.taps = static_cast<int>(s.taps());
  g.pixels = static_cast<int>(s.out_pixels());
  g.nchw = s.data_format == DataFormat::kNCHW;
  g.zero_point = input_q.zero_point;

  DeviceInfo dev;
  std::string error = GetDeviceInfo(&dev);
  if (!error.empty()) return error;
  Epilogue<Real> epi{DequantizeTerms<Real>(input_q, filter_q, s.taps()), options.debug_acc,
                     options.debug_act_sum};
  GpuKernel kernel = options.kernel == GpuKernel::kAuto ? Choose(s, dev) : options.kernel;
  if (kernel != GpuKernel::kDirect && dev.smem_optin < TiledSmemBytes(128, 64)) kernel = GpuKernel::kDirect;
  // 32-bit sums hold up to 65537 lookups of 65535.
  const bool wide = options.force_wide || s.taps() > 65537;
  switch (kernel) {
    case GpuKernel::kTile128x64:
      return LaunchTiled<T, 8, 16, 2>(wide, dev.sms, g, input, filter, output, lut_device, input_q, filter_q, epi, stream);
    case GpuKernel::kTile64x128:
      return LaunchTiled<T, 8, 8, 4>(wide, dev.sms, g, input, filter, output, lut_device, input_q, filter_q, epi, stream);
    case GpuKernel::kTile32x128:
      return LaunchTiled<T, 8, 4, 4>(wide, dev.sms, g, input, filter, output, lut_device, input_q, filter_q, epi, stream);
    case GpuKernel::kTile64x64:
      return LaunchTiled<T, 8, 8, 2>(wide, dev.sms, g, input, filter, output, lut_device, input_q, filter_q, epi, stream);
    case GpuKernel::kTile32x64:
      return LaunchTiled<T, 8, 4, 2>(wide, dev.sms, g, input, filter, output, lut_device, input_q, filter_q, epi, stream);
    case GpuKernel::kDirect:
      return LaunchDirect<T>(dev.smem_optin >= kLutSmemBytes, dev.sms, g, input, filter, output, lut_device,
                             input_q, filter_q, epi, stream);
    default:
      return "ApproxConvGpu: unknown kernel choice";
  }
}

#define TFAPPROX_INSTANTIATE(T)                                                                      \
  template std::string ApproxConvGpu<T>(const ConvShape&, const T*, const T*, const QuantParams&,  \
                                        const QuantParams&, const uint16_t*, T*, cudaStream_t,     \
                                        const GpuOptions&);
TFAPPROX_INSTANTIATE(float)
TFAPPROX_INSTANTIATE(double)
TFAPPROX_INSTANTIATE(__half)
TFAPPROX_INSTANTIATE(__nv_bfloat16)
#undef TFAPPROX_INSTANTIATE

std::string ApproxConvGpuUntyped(GpuDtype dtype, const ConvShape& s, const void* input, const void* filter,
                                 const QuantParams& input_q, const QuantParams& filter_q,
                                 const uint16_t* lut_device, void* output, cudaStream_t stream,
                                 const GpuOptions& options) {
  switch (dtype) {
    case GpuDtype::kFloat:
      return ApproxConvGpu<float>(s, static_cast<const float*>(input), static_cast<const float*>(filter), input_q,
                                  filter_q, lut_device, static_cast<float*>(output), stream, options);
    case GpuDtype::kDouble:
      return ApproxConvGpu<double>(s, static_cast<const double*>(input), static_cast<const double*>(filter),
                                   input_q, filter_q, lut_device, static_cast<double*>(output), stream, options);
    case GpuDtype::kHalf:
      return ApproxConvGpu<__half>(s, static_cast<const __half*>(input), static_cast<const __half*>(filter),
                                   input_q, filter_q, lut_device, static_cast<__half*>(output), stream, options);
    case GpuDtype::kBfloat16:
      return ApproxConvGpu<__nv_bfloat16>(s, static_cast<const __nv_bfloat16*>(input),
                                          static_cast<const __nv_bfloat16*>(filter), input_q, filter_q, lut_device,
                                          static_cast<__nv_bfloat16*>(output), stream, options);
  }
  return "ApproxConvGpuUntyped: unknown element type";
}

std::string GpuLutUpload(const uint16_t* host_lut, uint16_t** device_lut) {
  *device_lut = nullptr;
  void* ptr = nullptr;
  cudaError_t e = cudaMalloc(&ptr, kLutFileBytes);
  if (e != cudaSuccess) return CudaError("cudaMalloc of the table", e);
  e = cudaMemcpy(ptr, host_lut, kLutFileBytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaFree(ptr);
    return CudaError("cudaMemcpy of the table", e);
  }
  *device_lut = static_cast<uint16_t*>(ptr);
  return "";
}

std::string GpuLutFree(uint16_t* device_lut) {
  if (device_lut == nullptr) return "";
  const cudaError_t e = cudaFree(device_lut);
  return e == cudaSuccess ? "" : CudaError("cudaFree of the table", e);
}

}  // namespace tfapprox
