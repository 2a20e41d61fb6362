// Central free lists: for each size class, the spans that still have free objects, and the
// objects themselves (linked through their first word inside each span). This is where every
// object comes from and goes back to; the per-CPU caches of the front end will move objects in
// and out of here in batches, so the interface takes batches.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "page_heap.h"
#include "size_classes.h"
#include "span.h"
#include "sync/mutex.h"

namespace fastmalloc {

struct CentralStats {
  uint64_t live_objects;  // handed out, not yet returned
  uint64_t spans;         // spans owned by this class
  uint64_t allocations;   // objects handed out since start
  uint64_t span_misses;   // times the list ran dry and took a span from the page heap
};

class CentralFreeList {
 public:
  explicit constexpr CentralFreeList(unsigned size_class) : size_class_(size_class) {}

  // Up to n objects into out[]; returns how many (0 only when out of memory). `cpu`: the slab
  // index of the CPU cache they are for, which then takes them from a span of its own (see
  // affine_), or kNoCpu.
  static constexpr unsigned kNoCpu = ~0u;
  int allocate_batch(void** out, int n, unsigned cpu = kNoCpu);
  // A CPU's span that it has not taken from for this many of the class's allocations is any
  // CPU's to take: the CPU may have gone idle.
  static constexpr uint64_t kAffinityLapse = 4096;
  // One object, for calloc; nullptr when out of memory. *untouched says whether every byte of
  // it but its first word (the free signature) is known to be zero: it was carved from pages
  // that were not resident (fresh from the OS, or given back since), so nothing has written it.
  void* allocate_one(bool* untouched);

  // Returns n objects of this class (their spans are found through the span map). Aborts on a
  // detectable double free: an object whose span has no live object.
  void deallocate_batch(void* const* objects, int n);

  // realloc: turns `span`, a span of this class with one object, held by the caller, into a
  // span of the larger one-object class `to`, by taking the free pages after it from the page
  // heap. False, with nothing changed, when those pages are not free.
  bool grow_live_span(Span* span, unsigned to);
  // The same for a smaller one-object class `to`: the span keeps its first pages and gives the
  // rest to the page heap. False, with nothing changed, when out of memory for a descriptor.
  bool shrink_live_span(Span* span, unsigned to);
  // realloc, when that failed: the object of a new span of this one-object class, placed with
  // room to grow (PageHeap::allocate_growable) and handed out at once. nullptr when out of
  // memory.
  void* allocate_growable();

  // Gives every span with no live object back to the page heap, the one push() keeps for reuse
  // included, and the pages inside the free objects of the others (malloc_trim). Returns how
  // many spans went.
  size_t release_empty_spans();
  // The same, once per decay period from the slow paths, if the class handed out nothing since
  // the last call: a kept span nobody needed for a whole period. Also gives back the pages
  // inside the free objects of part-used spans (release_object_pages_locked).
  void release_idle();

  CentralStats stats() const;
  Mutex& lock() { return lock_; }

 private:
  // The objects carve() took under lock_, whose first words are written after it.
  struct Carving {
    static constexpr int kMaxRuns = 8;
    struct Run {
      void** objects;
      int n;
      bool released;  // carved from pages that were not resident
    } runs[kMaxRuns];
    int count = 0;
  };

  // allocate_batch, and allocate_one with n = 1 and `untouched` set: whether the one object
  // was carved from pages that were not resident (nullptr: not asked).
  int take(void** out, int n, bool* untouched, unsigned cpu);
  // The span to take objects from next, with lock_ held: for kNoCpu the first on the list; for
  // a CPU, its own span, else one no other CPU has taken from lately (made its own), else
  // nullptr, and the caller takes a fresh span, unless `share`.
  Span* span_to_take_locked(unsigned cpu, bool share);
  // Takes `span` off nonempty_ (it has no object left to give), and from whichever CPU had it.
  void unlist_locked(Span* span);
  // A span from the page heap, for this class, on no list yet (called without lock_).
  Span* new_span();
  void add_span_locked(Span* span);
  // With lock_ held, from a span on the list: an object from its free list (pop), or up to n
  // never handed out (carve; returns how many, at least 1, noted in *carving).
  void* pop(Span* span);
  int carve(Span* span, void** out, int n, Carving* carving);
  // Without lock_: faults in and signs what carve() took.
  void finish_carving(const Carving& carving) const;
  void push(Span* span, void* p);
  size_t release_empty_spans_locked();
  void release_object_pages_locked();
  // An empty span leaves the class for the page heap.
  void give_back(Span* span);
  // After the page heap resized `span`, this class's live one-object span, to class `to`: its
  // object ends where the new class's does, and the span counts in `to` from now on.
  void hand_live_span_to(Span* span, unsigned to);

  // Where two CPUs take objects from one span, each batch lands next to the other CPU's, and
  // the CPUs' prefetchers keep pulling each other's lines (docs/design.md, "Spans of their
  // own"). So a CPU cache's refills come from a span of its own: slot cpu % kAffineSlots, with
  // the class's allocations_ when that CPU last took from it. Under lock_; a span named here is
  // on nonempty_.
  static constexpr unsigned kAffineSlots = 8;
  struct Affine {
    Span* span;
    uint64_t last_taken;
  };

  Mutex lock_;
  SpanList nonempty_;  // spans with at least one free object
  Affine affine_[kAffineSlots] = {};
  const unsigned size_class_;
  uint64_t allocations_at_idle_check_ = 0;  // under lock_: allocations_ at the last release_idle()
  // Relaxed atomic adds, so that realloc can move a span between classes without the locks;
  // read by stats().
  std::atomic<uint64_t> live_{0}, spans_{0}, allocations_{0}, span_misses_{0};
};

extern FM_HIDDEN PerClass<CentralFreeList> g_central;
FM_ALWAYS_INLINE CentralFreeList& central_list(unsigned cls) { return g_central.of[cls]; }

}  // namespace fastmalloc
