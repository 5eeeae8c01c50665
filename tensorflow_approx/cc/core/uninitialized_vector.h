// A std::vector whose resize and sized constructor leave new elements uninitialized (default-initialized),
// its storage aligned to 64 bytes, for buffers that are written whole before they are read:
// value-initialization is a memset of every byte on the calling thread, before the parallel work that
// overwrites it (1-3.5 MB a call on ResNet-20's small layers, where the op takes 1-2 ms).
#ifndef TENSORFLOW_APPROX_CC_CORE_UNINITIALIZED_VECTOR_H_
#define TENSORFLOW_APPROX_CC_CORE_UNINITIALIZED_VECTOR_H_

#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tfapprox {

template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}  // NOLINT: rebinding, implicitly
  // Aligned to a cache line: the AMX tile loads of the decomposed kernel's image and filter (64-byte rows)
  // each split two lines otherwise, and ran at half their rate or less.
  // Buffers of kHugeBytes and more (the decomposed kernel's packed filter: 19 MB on a 3x3 512->512 layer
  // with 8 terms) in transparent huge pages where Linux gives them on request: their first touch took a page
  // fault every 4 KB, and building that layer's plan 8.4 ms on two cores of a Sapphire Rapids (2.7 ms so).
  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    void* p = ::operator new(bytes, std::align_val_t(Alignment(bytes)));
#ifdef MADV_HUGEPAGE
    if (bytes >= kHugeBytes) madvise(p, bytes, MADV_HUGEPAGE);  // (advice: failure is harmless)
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    ::operator delete(p, n * sizeof(T), std::align_val_t(Alignment(n * sizeof(T))));
  }
  static constexpr std::size_t kAlignment = 64, kHugePage = std::size_t{2} << 20, kHugeBytes = 2 * kHugePage;
  static constexpr std::size_t Alignment(std::size_t bytes) { return bytes >= kHugeBytes ? kHugePage : kAlignment; }
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using UninitializedVector = std::vector<T, UninitializedAllocator<T>>;

}  // namespace tfapprox

#endif  // TENSORFLOW_APPROX_CC_CORE_UNINITIALIZED_VECTOR_H_
