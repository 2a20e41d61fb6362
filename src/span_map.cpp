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
    leaves_.fetch_add(1, std::memory_order_relaxed);
  }
  return true;
}

bool SpanMap::reserve_spare_locked() {
  if (spare_ == nullptr) spare_ = static_cast<Leaf*>(os::map(sizeof(Leaf), 4096));
  return spare_ != nullptr;
}

size_t SpanMap::release_unused_leaves() {
  LockGuard guard(lock_);
  constexpr size_t kBatch = 64;
  size_t released = 0;
  for (size_t index = 0; index < (size_t{1} << kRootBits);) {
    Leaf* unused[kBatch];
    size_t indexes[kBatch], n = 0;
    for (; index < (size_t{1} << kRootBits) && n < kBatch; ++index) {
      Leaf* leaf = root_[index].load(std::memory_order_relaxed);
      if (leaf == nullptr || live_[index].load(std::memory_order_relaxed) != 0) continue;
      unused[n] = leaf;
      indexes[n++] = index;
    }
    if (n == 0) break;
    {
      // No reader may hold these leaves once the write side is ours; a signal handler that
      // frees on this thread would wait for us forever, so signals wait instead.
      os::SignalBlock block_signals;
      structure_lock_.write_lock();
      for (size_t i = 0; i < n; ++i) root_[indexes[i]].store(nullptr, std::memory_order_relaxed);
      structure_lock_.write_unlock();
    }
    for (size_t i = 0; i < n; ++i) os::unmap(unused[i], sizeof(Leaf));
    leaves_.fetch_sub(n, std::memory_order_relaxed);
    released += n * sizeof(Leaf);
  }
  return released;
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
