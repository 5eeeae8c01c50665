#include "tensorflow_approx/cc/kernels/table_decompositions.h"

#include <atomic>
#include <cstring>
#include <list>
#include <mutex>

#include "tensorflow_approx/cc/core/conv_kernels.h"
#include "tensorflow_approx/cc/core/lut.h"

namespace tfapprox {
namespace {

struct Entry {
  std::vector<uint16_t> lut;
  int64_t offset;
  // The decomposition in the table's own codes (no shift), the offset not in c0.
  int terms;
  int64_t c0;
  std::vector<int8_t> u, v;
  std::vector<int32_t> alpha, beta;
};

std::mutex mu;
std::list<Entry>* entries = new std::list<Entry>;  // most recent first; never destroyed (kernels at exit)
std::atomic<int> count{0};                          // read without the lock: nothing registered, no lookup
std::atomic<int64_t> generation{0};                 // registrations so far

}  // namespace

std::string RegisterDecomposition(const uint16_t* lut, int64_t offset, int terms, const int8_t* u, const int8_t* v,
                                  const int32_t* alpha, const int32_t* beta, int64_t c0) {
  for (int a = 0; a < 256; ++a) {
    for (int w = 0; w < 256; ++w) {
      int64_t value = c0 + alpha[a] + beta[w];
      for (int r = 0; r < terms; ++r) value += int64_t{u[r * 256 + a]} * v[r * 256 + w];
      const int64_t want = int64_t{lut[(a << 8) | w]} - offset;
      if (value != want) {
        return "the decomposition gives " + std::to_string(value) + " at a = " + std::to_string(a) +
               ", w = " + std::to_string(w) + " where the table holds " + std::to_string(want);
      }
    }
  }
  Entry e;
  e.lut.assign(lut, lut + kLutEntries);
  e.offset = offset;
  e.terms = terms;
  e.c0 = c0;
  e.u.assign(u, u + terms * 256);
  e.v.assign(v, v + terms * 256);
  e.alpha.assign(alpha, alpha + 256);
  e.beta.assign(beta, beta + 256);
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = entries->begin(); it != entries->end(); ++it) {
    if (it->offset == offset && it->lut == e.lut) {
      entries->erase(it);
      break;
    }
  }
  entries->push_front(std::move(e));
  if (entries->size() > kMaxRegisteredTables) entries->pop_back();
  count = static_cast<int>(entries->size());
  ++generation;
  return "";
}

int64_t DecompositionGeneration() { return generation.load(); }

bool FindDecomposition(const uint16_t* lut, int64_t offset, int input_shift, int filter_shift,
                       KernelDecomposition* out) {
  if (count.load() == 0) return false;
  std::lock_guard<std::mutex> lock(mu);
  for (const Entry& e : *entries) {
    if (e.offset != offset || std::memcmp(e.lut.data(), lut, kLutEntries * sizeof(uint16_t)) != 0) continue;
    const int terms = e.terms;
    // Kernel code c of a symmetric operand is its signed code's byte plus the shift: entry c of the
    // rearranged vectors is entry (c - shift) & 0xFF of the table's.
    out->u.resize(terms * 256);
    out->v.resize(terms * 256);
    out->alpha.resize(256);
    out->beta.resize(256);
    for (int c = 0; c < 256; ++c) {
      const int a = (c - input_shift) & 0xFF, w = (c - filter_shift) & 0xFF;
      for (int r = 0; r < terms; ++r) {
        out->u[r * 256 + c] = e.u[r * 256 + a];
        out->v[r * 256 + c] = e.v[r * 256 + w];
      }
      out->alpha[c] = e.alpha[a];
      out->beta[c] = e.beta[w];
    }
    out->view = TableDecomposition{terms, out->u.data(), out->v.data(), out->alpha.data(), out->beta.data(),
                                   e.c0 + offset};
    return true;
  }
  return false;
}

}  // namespace tfapprox
