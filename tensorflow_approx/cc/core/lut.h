// The multiplier: a 256 x 256 table of uint16 products, LUT[(a << 8) | w] for activation code a (row)
// and weight code w (column).
#ifndef TENSORFLOW_APPROX_CC_CORE_LUT_H_
#define TENSORFLOW_APPROX_CC_CORE_LUT_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>

namespace tfapprox {

constexpr int kLutEntries = 1 << 16;
constexpr int kLutFileBytes = kLutEntries * 2;

using Lut = std::array<uint16_t, kLutEntries>;

// The table by weight code: by_weight[(w << 8) | a] = lut[(a << 8) | w] (kLutEntries entries each). The
// GPU's columns kernel reads its lookups so; callers that keep a table on the device keep this beside it
// (GpuOptions::lut_by_weight), so that no call transposes it.
void LutByWeight(const uint16_t* lut, uint16_t* by_weight);

// The exact product table; one instance shared by every caller.
std::shared_ptr<const Lut> ExactLut();

// Reads a table file: exactly kLutFileBytes of little-endian uint16. Returns "" on success, otherwise a
// message naming the path and what is wrong (missing, not a regular file, wrong size, unreadable).
// Never blocks on FIFOs or devices and never reads more than kLutFileBytes + 1 bytes.
std::string LoadLutFile(const std::string& path, std::shared_ptr<const Lut>* lut);

// A table as one call sees it, with an identity: `id` differs whenever the content may differ (0 is the
// exact table), so device copies can be cached by id.
struct LutRef {
  std::shared_ptr<const Lut> lut;
  uint64_t id = 0;
};

// The table of a mul_map_file attribute as the file is NOW, for every call of the op: a file rewritten or
// replaced is seen from the next call on. Tables are cached by (device, inode, size, mtime, ctime) in a
// process-wide LRU of kLutCacheEntries tables (kLutCacheEntries * 128 KB of memory at most), so a call
// costs one stat(). A file modified less than kLutTrustSeconds before it was cached may be rewritten
// again within the file system's timestamp granularity with the same key: such entries are re-read and
// compared on every call until the file is older. Returns "" or a message as LoadLutFile.
constexpr int kLutCacheEntries = 32;
constexpr int kLutTrustSeconds = 2;
std::string LookupMulMap(const std::string& mul_map_file, LutRef* ref);

// Tables cached by LookupMulMap now (for tests of the bound).
int CachedLutCount();

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_LUT_H_
