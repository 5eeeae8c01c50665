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
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlignment))); }
  void deallocate(T* p, std::size_t n) noexcept { ::operator delete(p, n * sizeof(T), std::align_val_t(kAlignment)); }
  static constexpr std::size_t kAlignment = 64;
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
