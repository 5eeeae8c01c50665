// Run-time checks of the x86 instruction sets the fast CPU kernels use, and the target attributes that
// let a function use them whatever the build's -march (callers check Has*() before calling one).
#ifndef TENSORFLOW_APPROX_CC_CORE_CPU_FEATURES_H_
#define TENSORFLOW_APPROX_CC_CORE_CPU_FEATURES_H_

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#define TFAPPROX_AVX512BW __attribute__((target("avx512f,avx512bw")))
#define TFAPPROX_AVX512DQ __attribute__((target("avx512f,avx512dq")))
#define TFAPPROX_AVX512VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define TFAPPROX_VNNI __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vnni")))
#define TFAPPROX_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vnni,amx-tile,amx-int8")))
// (No "fma": GCC would fuse the float multiplies and adds that must round as the scalar code's do.)
#define TFAPPROX_AVX2 __attribute__((target("avx2")))

namespace tfapprox {

// For the tests: while set, every Has*() of AVX-512 says no, so the fast CPU kernels take the paths they take
// on a processor without AVX-512 (AVX2's or the portable loops), and one machine runs both. Process-wide.
inline std::atomic<bool>& WithoutAvx512() {
  static std::atomic<bool> on{false};
  return on;
}
inline bool Avx512Allowed() { return !WithoutAvx512().load(std::memory_order_relaxed); }

inline bool HasAvx512F() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && Avx512Allowed();
}

inline bool HasAvx512Bw() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has && Avx512Allowed();
}

inline bool HasAvx512Dq() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return has && Avx512Allowed();
}

inline bool HasAvx512Vbmi() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi");
  return has && Avx512Allowed();
}

inline bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// VNNI and VBMI (the decomposed kernel's byte permutes).
inline bool HasVnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
  return has && Avx512Allowed();
}

// For the tests and benchmarks: while set, HasAmx() says no (the decomposed kernel's direct path then runs
// on VNNI). Set at start-up by TFAPPROX_NO_AMX=1 in the environment. Process-wide.
inline std::atomic<bool>& WithoutAmx() {
  static std::atomic<bool> on{[] {
    const char* value = std::getenv("TFAPPROX_NO_AMX");
    return value != nullptr && value[0] == '1';
  }()};
  return on;
}

// AMX's int8 tiles (Sapphire Rapids and later) with VNNI, and Linux's permission to use them: the tile
// data is a state the kernel enables per process on request (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA), else the first tile instruction faults.
inline bool HasAmx() {
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    constexpr unsigned kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
    if ((d & (kAmxTile | kAmxInt8)) != (kAmxTile | kAmxInt8)) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has && HasVnni() && !WithoutAmx().load(std::memory_order_relaxed);
}

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CPU_FEATURES_H_
