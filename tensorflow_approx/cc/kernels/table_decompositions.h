// Decompositions of tables registered from Python (tensorflow_approx.register_decomposition, which finds
// them with tensorflow_approx/multipliers/decompose.py): the CPU kernel looks a call's table up here and,
// where the shape favours it, runs the decomposed kernel (cc/core/conv_decomposed.cc) instead of the
// lookups. Keyed by the table's contents, compared in full, so a swapped or rewritten table is never
// matched to another's decomposition; every decomposition is verified on all 65536 pairs when it is
// registered.
#ifndef TENSORFLOW_APPROX_CC_KERNELS_TABLE_DECOMPOSITIONS_H_
#define TENSORFLOW_APPROX_CC_KERNELS_TABLE_DECOMPOSITIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow_approx/cc/core/conv_kernels.h"

namespace tfapprox {

// A decomposition in the kernels' codes, owning its arrays; `view` points into them.
struct KernelDecomposition {
  std::vector<int8_t> u, v;
  std::vector<int32_t> alpha, beta;
  TableDecomposition view;
};

// Stores the decomposition of the table `lut` (65536 entries as the kernels hold it before any scheme's
// rearrangement: product + offset) in the form c0 + alpha[a] + beta[w] + sum_r u[r][a] v[r][w] of the
// products. Returns "" or why it was refused (a pair where it differs from the table). The most recent
// kMaxRegisteredTables stay.
constexpr int kMaxRegisteredTables = 64;
std::string RegisterDecomposition(const uint16_t* lut, int64_t offset, int terms, const int8_t* u, const int8_t* v,
                                  const int32_t* alpha, const int32_t* beta, int64_t c0);

// Counts the registrations so far: what a kernel found (or did not find) for a table stays valid while
// this stays the same.
int64_t DecompositionGeneration();

// The registered decomposition of `lut` (as above), rearranged for kernel codes shifted by input_shift
// and filter_shift (symmetric schemes) with the offset in its constant; false if none is registered. Each
// device's rule (PreferDecomposed, GpuPreferDecomposed) decides per call whether it runs.
bool FindDecomposition(const uint16_t* lut, int64_t offset, int input_shift, int filter_shift,
                       KernelDecomposition* out);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_KERNELS_TABLE_DECOMPOSITIONS_H_
