// Leaf creation for the span map.
#include "span_map.h"

#include "os/os.h"

namespace fastmalloc {

constinit SpanMap g_span_map;

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
    Leaf* leaf = home_given_ ? static_cast<Leaf*>(os::map(sizeof(Leaf), 4096)) : take_home_leaf(index);
    if (leaf == nullptr) {
      leaf = spare_;
      spare_ = nullptr;
    }
    if (leaf == nullptr) return false;
    root_[index].store(leaf, std::memory_order_release);
    leaves_.fetch_add(1, std::memory_order_relaxed);
    if (index < roots_used_begin_ || roots_used_end_ == 0) roots_used_begin_ = index;
    if (index >= roots_used_end_) roots_used_end_ = index + 1;
  }
  return true;
}

SpanMap::Leaf* SpanMap::take_home_leaf(uintptr_t index) {
  home_given_ = true;
  home_index_.store(index, std::memory_order_relaxed);
  live_[index].fetch_add(1, std::memory_order_relaxed);  // pinned: it cannot be unmapped
  return &home_leaf_;
}

bool SpanMap::reserve_spare_locked() {
  if (spare_ == nullptr) spare_ = static_cast<Leaf*>(os::map(sizeof(Leaf), 4096));
  return spare_ != nullptr;
}

size_t SpanMap::release_unused_leaves() {
  LockGuard guard(lock_);
  constexpr size_t kBatch = 64;
  size_t released = 0;
  // Only the root entries ever used are read: reading the rest of the root's megabyte would
  // make its pages resident (reads of untouched memory count in RSS on some kernels).
  for (size_t index = roots_used_begin_; index < roots_used_end_;) {
    Leaf* unused[kBatch];
    size_t indexes[kBatch], n = 0;
    for (; index < roots_used_end_ && n < kBatch; ++index) {
      Leaf* leaf = root_[index].load(std::memory_order_relaxed);
      if (leaf == nullptr || live_[index].load(std::memory_order_relaxed) != 0) continue;
      unused[n] = leaf;
      indexes[n++] = index;
    }
    if (n == 0) break;
    bool unlinked;
    {
      // A signal handler that frees on this thread would wait for us for ever, so signals wait
      // instead.
      os::SignalBlock block_signals;
      // We hold the page heap's lock and lock(), and a handler on a reader's thread may wait for
      // them in the middle of a section (sync/prwlock.h): past kWriterPatienceMs the leaves stay.
      if (!structure_lock_.try_write_lock(kWriterPatienceMs)) break;
      for (size_t i = 0; i < n; ++i) root_[indexes[i]].store(nullptr, std::memory_order_relaxed);
      unlinked = structure_lock_.synchronize(kWriterPatienceMs);
      if (!unlinked)
        for (size_t i = 0; i < n; ++i) root_[indexes[i]].store(unused[i], std::memory_order_relaxed);
      structure_lock_.write_unlock();
    }
    if (!unlinked) break;
    for (size_t i = 0; i < n; ++i) os::unmap(unused[i], sizeof(Leaf));
    leaves_.fetch_sub(n, std::memory_order_relaxed);
    released += n * sizeof(Leaf);
  }
  return released;
}

void SpanMap::pin(uintptr_t start, size_t bytes) {
  uintptr_t first = start >> kPageShift, last = (start + bytes - 1) >> kPageShift;
  for (uintptr_t index = first >> kLeafBits; index <= last >> kLeafBits; ++index)
    live_[index].fetch_add(1, std::memory_order_relaxed);
}

size_t SpanMap::resident_leaf_bytes() {
  LockGuard guard(lock_);
  size_t resident = 0;
  for (size_t index = roots_used_begin_; index < roots_used_end_; ++index)
    if (Leaf* leaf = root_[index].load(std::memory_order_relaxed)) resident += os::resident_bytes(leaf, sizeof(Leaf));
  return resident;
}

// Calls fn on the entry of each page from `first` to `end` (page numbers, ensure()d), finding
// each leaf once.
template <class Fn>
void SpanMap::for_each_entry(uintptr_t first, uintptr_t end, Fn fn) {
  for (uintptr_t page = first; page < end;) {
    uintptr_t leaf_index = page >> kLeafBits, leaf_end = (leaf_index + 1) << kLeafBits;
    uintptr_t stop = end < leaf_end ? end : leaf_end;
    std::atomic<uintptr_t>* entries = root_[leaf_index].load(std::memory_order_relaxed)->entries;
    for (; page < stop; ++page) fn(entries[page & (kLeafEntries - 1)]);
  }
}

void SpanMap::store_pinned(uintptr_t first, size_t pages, uintptr_t base, uintptr_t index_step) {
  uintptr_t entry = base;
  for_each_entry(first, first + pages, [&entry, index_step](std::atomic<uintptr_t>& slot) {
    slot.store(entry, std::memory_order_release);
    entry += index_step;
  });
}

void SpanMap::forget_range(uintptr_t start, size_t bytes, uintptr_t owned_start, uintptr_t owned_end) {
  uintptr_t first = start >> kPageShift, end = (start + bytes) >> kPageShift;
  for_each_entry(first, end, [](std::atomic<uintptr_t>& entry) {
    // Most are zero already: reading first leaves their pages of entries clean.
    if (entry.load(std::memory_order_relaxed) != 0) entry.store(0, std::memory_order_relaxed);
  });
  release_zero_entry_pages(first, end, owned_start >> kPageShift, owned_end >> kPageShift);
}

void SpanMap::forget_entry(uintptr_t addr) {
  store(addr, 0);
  const uintptr_t group_pages = os::hardware_page_size() / sizeof(uintptr_t);
  uintptr_t group = (addr >> kPageShift) & ~(group_pages - 1);
  release_zero_entry_pages(group, group + group_pages, group, group + group_pages);
}

void SpanMap::release_zero_entry_pages(uintptr_t first, uintptr_t end, uintptr_t owned_first, uintptr_t owned_end) {
  // Each page of entries describes a group of heap pages; it can be dropped only when the whole
  // group is owned, since then nobody writes to it meanwhile. Neighbouring ones go in one call.
  const uintptr_t group_pages = os::hardware_page_size() / sizeof(uintptr_t);
  uintptr_t run_start = 0, run_end = 0;  // all-zero pages of entries not yet given back
  auto flush = [&] {
    if (run_end != run_start) os::release(reinterpret_cast<void*>(run_start), run_end - run_start);
    run_start = run_end = 0;
  };
  for (uintptr_t group = first & ~(group_pages - 1); group < end; group += group_pages) {
    bool zero = group >= owned_first && group + group_pages <= owned_end;
    std::atomic<uintptr_t>* entries = &leaf_of(group)->entries[group & (kLeafEntries - 1)];
    for (uintptr_t i = 0; i < group_pages && zero; ++i) zero = entries[i].load(std::memory_order_relaxed) == 0;
    uintptr_t address = reinterpret_cast<uintptr_t>(entries);
    if (!zero || address != run_end) flush();
    if (!zero) continue;
    if (run_start == 0) run_start = address;
    run_end = address + group_pages * sizeof(uintptr_t);
  }
  flush();
}

void SpanMap::set_range(uintptr_t start, size_t bytes, Span* span) {
  store_pinned(start >> kPageShift, bytes >> kPageShift, reinterpret_cast<uintptr_t>(span), 0);
}

void SpanMap::set_small_span(Span* span, unsigned size_class) {
  uintptr_t base = reinterpret_cast<uintptr_t>(span) | uintptr_t{size_class} << kClassShift;
  store_pinned(span->start >> kPageShift, span->pages(), base, uintptr_t{1} << kPageIndexShift);
}

}  // namespace fastmalloc
