// The span map: from any address the allocator handed out to the span descriptor that owns it.
// A two-level radix tree over 8 KiB page numbers: a root of 2^17 leaf pointers in .bss (1 MiB of
// address space, touched only where used) and leaves of 2^18 entries (2 GiB of address space
// each) mapped on demand. Lookups take no lock; see the SYNCHRONIZATION note in front_end.cpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "base.h"
#include "span.h"
#include "sync/mutex.h"

namespace fastmalloc {

class SpanMap {
 public:
  static constexpr unsigned kPageBits = kAddressBits - kPageShift;
  static constexpr unsigned kLeafBits = 18;
  static constexpr unsigned kRootBits = kPageBits - kLeafBits;

  // The span recorded for the page holding `addr`, or nullptr. Any address is safe to ask
  // about. The answer may be stale for a page no live span covers: callers check that the span
  // really contains the address, in the state they expect.
  FM_ALWAYS_INLINE Span* lookup(uintptr_t addr) const {
    uintptr_t page = addr >> kPageShift;
    if (FM_UNLIKELY(page >> kPageBits)) return nullptr;
    Leaf* leaf = root_[page >> kLeafBits].load(std::memory_order_acquire);
    if (FM_UNLIKELY(leaf == nullptr)) return nullptr;
    return leaf->spans[page & (kLeafEntries - 1)].load(std::memory_order_relaxed);
  }

  // Makes sure entries exist for every page of [start, start + bytes). False when the OS
  // refuses memory for a leaf.
  bool ensure(uintptr_t start, size_t bytes);
  // The same with lock() held; a leaf the OS refuses comes from the spare, if one is reserved.
  bool ensure_locked(uintptr_t start, size_t bytes);
  // With lock() held: maps a spare leaf now, so that a later ensure_locked() of one page cannot
  // fail. For moving a block (mremap) to an address not known in advance.
  bool reserve_spare_locked();

  // Records `span` for the page holding `addr`, or for every page of a range. The range must
  // have been ensure()d. The caller owns those pages (holds the lock that owns them).
  void set(uintptr_t addr, Span* span) {
    uintptr_t page = addr >> kPageShift;
    leaf_of(page)->spans[page & (kLeafEntries - 1)].store(span, std::memory_order_release);
  }
  void set_range(uintptr_t start, size_t bytes, Span* span);

  Mutex& lock() { return lock_; }

 private:
  static constexpr size_t kLeafEntries = size_t{1} << kLeafBits;
  struct Leaf {
    std::atomic<Span*> spans[kLeafEntries];
  };

  Leaf* leaf_of(uintptr_t page) const { return root_[page >> kLeafBits].load(std::memory_order_relaxed); }

  std::atomic<Leaf*> root_[size_t{1} << kRootBits] = {};
  Leaf* spare_ = nullptr;
  Mutex lock_;  // serializes leaf creation and the spare
};

extern SpanMap g_span_map;

}  // namespace fastmalloc
