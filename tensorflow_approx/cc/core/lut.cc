#include "tensorflow_approx/cc/core/lut.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace tfapprox {

std::shared_ptr<const Lut> ExactLut() {
  static const std::shared_ptr<const Lut> exact = [] {
    auto lut = std::make_shared<Lut>();
    for (int i = 0; i < kLutEntries; ++i) (*lut)[i] = static_cast<uint16_t>((i >> 8) * (i & 0xFF));
    return lut;
  }();
  return exact;
}

namespace {

std::string Fail(const std::string& path, const std::string& what) {
  return "mul_map_file '" + path + "': " + what;
}

class FileCloser {
 public:
  explicit FileCloser(int fd) : fd_(fd) {}
  ~FileCloser() { close(fd_); }

 private:
  int fd_;
};

}  // namespace

std::string LoadLutFile(const std::string& path, std::shared_ptr<const Lut>* lut) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Fail(path, std::string("cannot open: ") + std::strerror(errno));
  FileCloser closer(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) return Fail(path, std::string("cannot stat: ") + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return Fail(path, "is a directory, not a table file");
  if (!S_ISREG(st.st_mode)) return Fail(path, "is not a regular file (a device, FIFO or socket)");
  if (st.st_size != kLutFileBytes) {
    return Fail(path, "has " + std::to_string(st.st_size) + " bytes; a table file has exactly " +
                          std::to_string(kLutFileBytes) + " (65536 little-endian uint16)");
  }
  // One byte more than a table, to notice a file that grew after fstat.
  std::vector<unsigned char> bytes(kLutFileBytes + 1);
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(path, std::string("read failed: ") + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got != static_cast<size_t>(kLutFileBytes)) {
    return Fail(path, "changed size while being read (read " + std::to_string(got) + " bytes)");
  }
  auto table = std::make_shared<Lut>();
  for (int i = 0; i < kLutEntries; ++i) {
    (*table)[i] = static_cast<uint16_t>(bytes[2 * i] | (bytes[2 * i + 1] << 8));
  }
  *lut = std::move(table);
  return "";
}

std::string LoadMulMap(const std::string& mul_map_file, std::shared_ptr<const Lut>* lut) {
  if (mul_map_file.empty()) {
    *lut = ExactLut();
    return "";
  }
  return LoadLutFile(mul_map_file, lut);
}

}  // namespace tfapprox
