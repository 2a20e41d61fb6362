// The metadata arena: memory for the allocator's own small fixed-size structures (span
// descriptors), taken from the OS in chunks and never unmapped.
// It is how the allocator avoids ever calling malloc for itself. Fixed-size objects are
// recycled through MetaPool's free list, whose wholly free pages go back to the OS on request
// (MetaPool::release_free_pages).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

#include "base.h"
#include "sync/mutex.h"

namespace fastmalloc {

class MetaArena {
 public:
  static constexpr size_t kAlign = 64;
  // Zeroed, kAlign-aligned memory for the allocator's lifetime, `bytes` rounded up to kAlign;
  // nullptr when the OS refuses. Callers hold lock().
  void* allocate(size_t bytes);
  Mutex& lock() { return lock_; }
  size_t mapped_bytes() const { return mapped_; }

 private:
  Mutex lock_;
  char* cursor_ = nullptr;
  char* limit_ = nullptr;
  size_t mapped_ = 0;
};

extern FM_HIDDEN MetaArena g_meta_arena;

// The free objects of one pool, all `stride` bytes apart where they are neighbours, kept as
// runs: a run's first object holds {next run, object count}. A long run then needs only the
// page of its header resident, and release() hands the rest of its whole pages to the OS; an
// object taken from a released page later reads as zero, as a fresh one would. Callers hold
// the arena's lock.
class MetaFreeRuns {
 public:
  explicit constexpr MetaFreeRuns(size_t stride) : stride_(stride) {}
  void* pop();  // nullptr when empty
  void push(void* object);
  // Sorts the runs by address, merges neighbours, and releases every whole page of a run after
  // its header, unless the run was released whole before. Returns the bytes it released. Does
  // nothing unless the list has grown by at least `min_growth` objects (and by one) over the
  // fewest it held since the last release: the sort walks every free object, and a list that
  // only went up and down by a few has little to give back.
  size_t release(size_t min_growth = 1);

  struct Run {
    Run* next;
    uint32_t count;
    bool released;  // its whole pages were given back, and it has not grown since
  };

 private:
  Run* head_ = nullptr;
  size_t count_ = 0;
  // The fewest objects on the list since the last release(): objects pushed above it may lie
  // on pages not yet given back (popping never makes a run releasable).
  size_t low_water_ = 0;
  const size_t stride_;
};

// A free list of T carved from the arena. T must be trivially constructible from zeroes;
// create() hands out value-initialized objects. Thread-safe (the arena's lock).
template <class T>
class MetaPool {
 public:
  static constexpr size_t kStride =
      round_up(sizeof(T) > sizeof(MetaFreeRuns::Run) ? sizeof(T) : sizeof(MetaFreeRuns::Run), MetaArena::kAlign);

  T* create() {
    LockGuard guard(g_meta_arena.lock());
    void* p = free_.pop();
    if (p == nullptr) p = g_meta_arena.allocate(kStride);
    return p ? new (p) T{} : nullptr;
  }

  void destroy(T* object) {
    LockGuard guard(g_meta_arena.lock());
    free_.push(object);
  }

  // With min_growth_bytes, only once at least that many bytes of objects have been freed, net,
  // since the last release (MetaFreeRuns::release).
  size_t release_free_pages(size_t min_growth_bytes = 0) {
    LockGuard guard(g_meta_arena.lock());
    return free_.release(min_growth_bytes / kStride);
  }

 private:
  MetaFreeRuns free_{kStride};
};

}  // namespace fastmalloc
