// Leaf creation for the span map.
#include "span_map.h"

#include "os/os.h"

namespace fastmalloc {

SpanMap g_span_map;

bool SpanMap::ensure(uintptr_t start, size_t bytes) {
  uintptr_t first = start >> kPageShift, last = (start + bytes - 1) >> kPageShift;
  if (last >> kPageBits) return false;
  for (uintptr_t index = first >> kLeafBits; index <= last >> kLeafBits; ++index) {
    if (root_[index].load(std::memory_order_acquire) == nullptr) {
      LockGuard guard(lock_);
      return ensure_locked(start, bytes);
    }
  }
  return true;
}

bool SpanMap::ensure_locked(uintptr_t start, size_t bytes) {
  uintptr_t first = start >> kPageShift, last = (start + bytes - 1) >> kPageShift;
  if (last >> kPageBits) return false;
  for (uintptr_t index = first >> kLeafBits; index <= last >> kLeafBits; ++index) {
    if (root_[index].load(std::memory_order_relaxed) != nullptr) continue;
    Leaf* leaf = static_cast<Leaf*>(os::map(sizeof(Leaf), 4096));
    if (leaf == nullptr) {
      leaf = spare_;
      spare_ = nullptr;
    }
    if (leaf == nullptr) return false;
    root_[index].store(leaf, std::memory_order_release);
  }
  return true;
}

bool SpanMap::reserve_spare_locked() {
  if (spare_ == nullptr) spare_ = static_cast<Leaf*>(os::map(sizeof(Leaf), 4096));
  return spare_ != nullptr;
}

void SpanMap::set_range(uintptr_t start, size_t bytes, Span* span) {
  for (uintptr_t addr = start; addr < start + bytes; addr += kPageSize) set(addr, span);
}

void SpanMap::set_small_span(Span* span, unsigned size_class) {
  uintptr_t base = reinterpret_cast<uintptr_t>(span) | uintptr_t{size_class} << kClassShift;
  for (uintptr_t index = 0; index < span->pages(); ++index)
    store(span->start + index * kPageSize, base | index << kPageIndexShift);
}

}  // namespace fastmalloc
