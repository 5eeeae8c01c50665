// What the CPU kernel's files share (conv_cpu.cc: the row paths, the choice and the entry point;
// conv_cpu_columns.cc: the column path). Internal to the core.
#ifndef TENSORFLOW_APPROX_CC_CORE_CONV_CPU_INTERNAL_H_
#define TENSORFLOW_APPROX_CC_CORE_CONV_CPU_INTERNAL_H_

#include <cstdint>

#include "tensorflow_approx/cc/core/conv_kernels.h"

namespace tfapprox {
namespace cpu_internal {

// 64 bytes, for aligned buffers (std::allocator honours alignas since C++17).
struct alignas(64) Line {
  uint8_t bytes[64];
};

// The byte-plane kernels (VBMI rows and columns) sum looked-up bytes in 16-bit lanes.
// Two pixels' bytes share a 16-bit lane (pixel j low, 32 + j high): adding the looked-up vector as
// words sums pixel j's bytes plus 256 times pixel 32 + j's (mod 2^16), and adding it shifted right by
// 8 sums pixel 32 + j's alone, so pixel j's sum is the difference. Cheaper than widening (one shift
// where two unpacks were) and exact while the sums fit 16 bits: the lanes are emptied every
// kPlaneTaps taps. The word kernel does the same with words in 32-bit lanes.
constexpr int64_t kPlaneTaps = 65535 / 255;

// The column path (conv_cpu_columns.cc), for groups with few output channels: the integer sums of
// pixels pixel_begin .. pixel_begin + pixels - 1 into acc and act_sum, as CpuConvAccumulate.
void ColumnPathAccumulate(const QuantizedConv& conv, int64_t pixel_begin, int64_t pixels, bool vbmi,
                          const ParallelFor& parallel_for, int64_t* acc, int64_t* act_sum);

}  // namespace cpu_internal
}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_CONV_CPU_INTERNAL_H_
