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

// The exact product table; one instance shared by every caller.
std::shared_ptr<const Lut> ExactLut();

// Reads a table file: exactly kLutFileBytes of little-endian uint16. Returns "" on success, otherwise a
// message naming the path and what is wrong (missing, not a regular file, wrong size, unreadable).
// Never blocks on FIFOs or devices and never reads more than kLutFileBytes + 1 bytes.
std::string LoadLutFile(const std::string& path, std::shared_ptr<const Lut>* lut);

// The table for a mul_map_file attribute: the exact table for "", otherwise LoadLutFile.
std::string LoadMulMap(const std::string& mul_map_file, std::shared_ptr<const Lut>* lut);

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_LUT_H_
