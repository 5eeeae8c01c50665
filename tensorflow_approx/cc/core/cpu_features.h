// Run-time checks of the x86 instruction sets the fast CPU kernels use, and the target attributes that
// let a function use them whatever the build's -march (callers check Has*() before calling one).
#ifndef TENSORFLOW_APPROX_CC_CORE_CPU_FEATURES_H_
#define TENSORFLOW_APPROX_CC_CORE_CPU_FEATURES_H_

#define TFAPPROX_AVX512BW __attribute__((target("avx512f,avx512bw")))
#define TFAPPROX_AVX512DQ __attribute__((target("avx512f,avx512dq")))
#define TFAPPROX_AVX512VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define TFAPPROX_VNNI __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vnni")))
// (No "fma": GCC would fuse the float multiplies and adds that must round as the scalar code's do.)
#define TFAPPROX_AVX2 __attribute__((target("avx2")))

namespace tfapprox {

inline bool HasAvx512Bw() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}

inline bool HasAvx512Dq() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return has;
}

inline bool HasAvx512Vbmi() {
  static const bool has = HasAvx512Bw() && __builtin_cpu_supports("avx512vbmi");
  return has;
}

inline bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// VNNI and VBMI (the decomposed kernel's byte permutes).
inline bool HasVnni() {
  static const bool has = HasAvx512Vbmi() && __builtin_cpu_supports("avx512vnni");
  return has;
}

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CPU_FEATURES_H_
