// The transfer cache: per size class, a stock of free objects between the per-CPU caches and
// the central free list. A CPU whose cache runs dry takes a batch from here; one whose cache
// overflows leaves a batch here. Objects that pass from one CPU to another this way never touch
// their spans, and the central list's lock is taken once per batch, only when the stock runs
// out or over.
#pragma once

#include <atomic>
#include <cstdint>

#include "central_free_list.h"
#include "size_classes.h"
#include "sync/mutex.h"

namespace fastmalloc {

inline constexpr int kMaxBatch = 32;

// How many objects move between a CPU cache and this level at once.
constexpr int batch_size(unsigned cls) {
  size_t size = size_class_detail::size_of_class(cls);
  size_t n = 32 * 1024 / size;
  return n < 2 ? 2 : n > kMaxBatch ? kMaxBatch : static_cast<int>(n);
}

struct TransferStats {
  uint64_t hits;     // objects served from, or taken into, the stock
  uint64_t misses;   // objects that had to come from, or go to, the central list
  uint64_t stocked;  // objects held now
};

class TransferCache {
 public:
  static constexpr int kCapacity = 8 * kMaxBatch;
  // A stock holds at most this many bytes, but at least one batch: each object held keeps its
  // span's pages resident, so large classes get short stocks (two objects of 1 MiB).
  static constexpr size_t kStockBytes = 2 * 1024 * 1024;

  static constexpr int limit_for(unsigned cls) {
    size_t size = size_class_detail::size_of_class(cls);
    if (size == 0) return kCapacity;
    size_t n = kStockBytes / size, floor = static_cast<size_t>(batch_size(cls));
    if (n < floor) n = floor;
    return n > kCapacity ? kCapacity : static_cast<int>(n);
  }

  // All zero, so the process's caches (g_transfer) sit in .bss: touched pages only, never
  // read in from the library's file. A cache finds its class from its place in g_transfer.
  constexpr TransferCache() = default;

  // Up to n (1 to kMaxBatch) objects into out[]; fewer only when out of memory. `cpu`: as for
  // CentralFreeList::allocate_batch, for what the stock cannot give.
  int remove(void** out, int n, unsigned cpu = CentralFreeList::kNoCpu);
  // Takes n objects (at most kMaxBatch + 1); what does not fit goes to the central list. While
  // the page heap shrinks, only one batch fits, and older objects beyond it go down too.
  void insert(void* const* objects, int n);
  // Sends the whole stock to the central list (malloc_trim).
  void drain();
  // Sends to the central list the objects that sat in the stock since the last call (the
  // stock's low-water mark, oldest first): what nobody needed for a whole period. A stock that
  // fewer than kQuietTraffic objects came to or left in the period goes down whole: what it
  // holds is the spill of a class a program uses a little, and each object keeps its span
  // resident, while the central list can hand out from the spans already in use.
  void release_idle();
  static constexpr uint64_t kQuietTraffic = 16;

  TransferStats stats() const;
  Mutex& lock() { return lock_; }

 private:
  unsigned size_class() const;
  // Moves the n objects at the bottom of the stock to out[]; returns n. Holds lock_.
  int take_oldest_locked(int n, void** out);
  // Gives objects to the central list, a batch at a time.
  void to_central(void* const* objects, int n);
  // The stock's slots live apart from the caches, so that the caches' locks and counts, which
  // every scan touches, share a few pages.
  void** stock() const;

  Mutex lock_;
  int count_ = 0;
  int low_water_ = 0;                // the smallest count_ since the last release_idle()
  uint64_t hits_at_idle_check_ = 0;  // hits_ then
  std::atomic<uint64_t> hits_{0}, misses_{0}, stocked_{0};
};

extern FM_HIDDEN PerClass<TransferCache> g_transfer;
FM_ALWAYS_INLINE TransferCache& transfer_cache(unsigned cls) { return g_transfer.of[cls]; }

}  // namespace fastmalloc
