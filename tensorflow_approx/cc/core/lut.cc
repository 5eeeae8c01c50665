#include "tensorflow_approx/cc/core/lut.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <list>
#include <mutex>
#include <vector>

namespace tfapprox {

void LutByWeight(const uint16_t* lut, uint16_t* by_weight) {
  for (int a = 0; a < 256; ++a) {
    for (int w = 0; w < 256; ++w) by_weight[(w << 8) | a] = lut[(a << 8) | w];
  }
}

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

// Reads a table through one open file, returning the fstat of that same file (its identity).
std::string ReadLutFile(const std::string& path, std::shared_ptr<const Lut>* lut, struct stat* identity);

}  // namespace

std::string LoadLutFile(const std::string& path, std::shared_ptr<const Lut>* lut) {
  struct stat st;
  return ReadLutFile(path, lut, &st);
}

namespace {

std::string ReadLutFile(const std::string& path, std::shared_ptr<const Lut>* lut, struct stat* identity) {
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
  *identity = st;
  return "";
}

int64_t Nanoseconds(const struct timespec& t) { return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec; }

struct CachedLut {
  std::string path;
  dev_t device;
  ino_t inode;
  off_t size;
  int64_t mtime_ns, ctime_ns;
  bool trusted;  // cached when the file was already kLutTrustSeconds old
  LutRef ref;

  bool SameFile(const std::string& p, const struct stat& st) const {
    return p == path && st.st_dev == device && st.st_ino == inode && st.st_size == size &&
           Nanoseconds(st.st_mtim) == mtime_ns && Nanoseconds(st.st_ctim) == ctime_ns;
  }
};

std::mutex cache_mu;
std::list<CachedLut> cache;  // most recently used first
std::atomic<uint64_t> next_lut_id{1};

bool OldEnough(const struct stat& st) {
  const int64_t now = Nanoseconds([] {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t;
  }());
  const int64_t newest = std::max(Nanoseconds(st.st_mtim), Nanoseconds(st.st_ctim));
  return now - newest > int64_t{kLutTrustSeconds} * 1000000000;
}

}  // namespace

std::string LookupMulMap(const std::string& mul_map_file, LutRef* ref) {
  if (mul_map_file.empty()) {
    *ref = LutRef{ExactLut(), 0};
    return "";
  }
  struct stat st;
  if (stat(mul_map_file.c_str(), &st) == 0) {
    std::lock_guard<std::mutex> lock(cache_mu);
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      if (it->trusted && it->SameFile(mul_map_file, st)) {
        cache.splice(cache.begin(), cache, it);
        *ref = it->ref;
        return "";
      }
    }
  }
  // Not cached, changed, or too recent to trust its timestamps: read it (errors come from here).
  std::shared_ptr<const Lut> lut;
  const std::string error = ReadLutFile(mul_map_file, &lut, &st);
  if (!error.empty()) return error;
  std::lock_guard<std::mutex> lock(cache_mu);
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->path != mul_map_file) continue;
    if (it->SameFile(mul_map_file, st) && *it->ref.lut == *lut) {
      // Same content under the same key: keep its id, so device copies stay valid.
      it->trusted = OldEnough(st);
      cache.splice(cache.begin(), cache, it);
      *ref = it->ref;
      return "";
    }
    cache.erase(it);  // the file changed: its old table is never served again
    break;
  }
  CachedLut entry{mul_map_file, st.st_dev, st.st_ino, st.st_size, Nanoseconds(st.st_mtim),
                  Nanoseconds(st.st_ctim), OldEnough(st), LutRef{std::move(lut), next_lut_id++}};
  cache.push_front(std::move(entry));
  if (cache.size() > static_cast<size_t>(kLutCacheEntries)) cache.pop_back();
  *ref = cache.front().ref;
  return "";
}

int CachedLutCount() {
  std::lock_guard<std::mutex> lock(cache_mu);
  return static_cast<int>(cache.size());
}

}  // namespace tfapprox
