// The page heap: runs of 8 KiB pages for small-object spans, cut from chunks mapped from the OS
// and coalesced with their free neighbours when they come back; a span holding one block can
// also be lengthened into the free run after it (realloc, extend()). Also the direct mappings that
// hold large blocks (above kMaxSmallSize), which go back to the OS as soon as they are freed.
//
// Free pages go back to the OS (madvise) on three occasions: when they have been free for the
// decay time (FASTMALLOC_DECAY; checked by decay_tick() from the slow paths, at most four times
// per decay period, and by the page heap's own calls); sooner, longest spans first, when the
// free pages still resident exceed the cap (retain_limit()), taking those free for a quarter
// of the decay time; and on malloc_trim (release_free_pages).
//
// The heap is shrinking while the pages in use are fewer than half its recent peak (the most
// in use, fading by an eighth per decay scan) and at least kShrinkMinDrop fewer, and no span
// has been handed out for kCapIntervalMs. Then the cap is smaller, young spans go back too,
// and a freed span that would take the resident free pages over the cap goes back at once: a
// program that frees most of its heap gives it back while it frees, without waiting for a
// slow path to come by. One that still takes spans keeps its free pages for them (threads
// that churn on while others have finished: releasing would mean a madvise per freed span
// and a page fault per page taken again), and so does a heap smaller than a few times the cap.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "meta_arena.h"
#include "size_classes.h"
#include "span.h"
#include "span_map.h"
#include "sync/mutex.h"

namespace fastmalloc {

struct PageHeapStats {
  size_t system_bytes;    // mapped from the OS for small spans
  size_t free_bytes;      // in free spans (released ones included)
  size_t released_bytes;  // in free spans whose pages were given back to the OS
  size_t free_spans;
  size_t large_count;     // live large blocks
  size_t large_bytes;     // their mapped bytes
  uint64_t allocations;   // spans handed out
  uint64_t grows;         // of those, the ones that had to map more memory first
};

class PageHeap {
 public:
  // The cap on resident free pages (see the top of this file): kRetainBytes plus a quarter of
  // the pages in use; while the heap shrinks, kShrinkingRetainBytes plus an eighth.
  static constexpr size_t kRetainBytes = size_t{32} << 20;
  static constexpr size_t kShrinkingRetainBytes = size_t{4} << 20;
  static constexpr size_t kShrinkMinDrop = 2 * kRetainBytes;
  // The cap is enforced at most this often (but see the top of this file for a shrink).
  static constexpr uint64_t kCapIntervalMs = 10;
  // How far free pages may outnumber used ones before allocate_growable maps no more room.
  static constexpr size_t kRoomSlackBytes = size_t{64} << 20;

  // `map` is where this heap records its spans (the process's g_span_map; tests give their own).
  explicit constexpr PageHeap(SpanMap& map) : map_(map) {}

  // A span of exactly `pages` pages for objects of `size_class`, recorded in the span map for
  // every page with its class. It is already in state kSmall when the heap's lock is released,
  // so no thread coalescing a neighbour can take it for free; the caller sets the other fields.
  // nullptr when out of memory.
  Span* allocate(size_t pages, unsigned size_class);
  // The same for a block realloc is growing, placed where extend() can lengthen it up to the
  // largest small class (kGrowableRoomPages) without moving it again: in the first free run,
  // resident ones before released ones and then by address, that has that room after the
  // reserve of a growing span before it (neighbour_reserve); failing that, in fresh pages,
  // which cost address space only until they are written (within a bound, kRoomSlackBytes);
  // failing that, in the longest run. Reusing the lowest resident run keeps a program that
  // grows one buffer after another on the same pages.
  Span* allocate_growable(size_t pages, unsigned size_class);
  // Gives a span back, merging it with free neighbours.
  void deallocate(Span* span);
  // Lengthens small span `span` to `pages` pages of class `size_class` with the free pages
  // right after it (realloc growing a block alone in its span). False, with nothing changed,
  // when they are not free. The caller holds the span's one object, so nobody else reaches the
  // span meanwhile; it sets the fields the central list keeps.
  bool extend(Span* span, size_t pages, unsigned size_class);
  // The opposite, for realloc shrinking such a block: keeps the first `pages` pages as a span of
  // the smaller class `size_class` and frees the rest. False, with nothing changed, only when no
  // descriptor can be had for the rest.
  bool shrink(Span* span, size_t pages, unsigned size_class);
  // Gives every free span's pages back to the OS; returns the bytes newly released.
  size_t release_free_pages();
  // From the slow paths, with no lock held, `now` from os::now_ms(): releases spans free for
  // longer than the decay time, if a scan is due and the heap's lock is free (never waits).
  void decay_tick(uint64_t now);
  // The decay time in ms: the option's value, or what a test set.
  uint64_t decay_ms();
  void set_decay_ms(uint64_t ms) { decay_ms_.store(ms, std::memory_order_relaxed); }

  // A large block: a mapping of at least `bytes`, aligned to `align` (a power of two), with its
  // descriptor recorded in the span map at the block's first page. nullptr when out of memory.
  Span* map_large(size_t bytes, size_t align);
  void unmap_large(Span* span);
  // Resizes a large block in place or by moving it (mremap); false leaves it untouched.
  bool remap_large(Span* span, size_t new_bytes);

  PageHeapStats stats();
  Mutex& lock() { return lock_; }
  // Held by the thread mapping memory for allocate(), so that threads that run dry at once map
  // once; taken before lock().
  Mutex& grow_lock() { return grow_lock_; }
  // Whether the heap is shrinking (see the top of this file); read without the lock, by caches
  // that then keep less.
  bool shrinking() const { return shrinking_.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kBins = 128;         // bins_[n]: free spans of n pages; bins_[0]: longer
  static constexpr size_t kGrowPages = 128;    // map at least 1 MiB at a time
  static constexpr size_t kMaxGrowPages = 4096;  // and at most 32 MiB beyond what is asked

  size_t in_use() const { return system_bytes_ - free_bytes_; }
  // Unreleased free bytes above which deallocate() releases.
  size_t retain_limit() const {
    return shrinking() ? kShrinkingRetainBytes + in_use() / 8 : kRetainBytes + in_use() / 4;
  }
  // deallocate() with the lock held.
  void deallocate_locked(Span* span);
  void note_shrinking_locked(uint64_t now);
  // After pages went into use: raises the recent peak, then notes whether the heap shrinks.
  void note_handed_out_locked(uint64_t now);
  // Gives a span on no list back to the OS; false where madvise was refused.
  bool release_pages(Span* span);
  // Clears the span-map entries of the pages of [start, start + bytes) inside a released span
  // (all but its first and last page) and gives back the entry pages that leaves all zero.
  void forget_interior(Span* span, uintptr_t start, size_t bytes);
  // Takes off the free lists resident spans freed at least `min_age` ms before `now`, longest
  // first, until they add up to `bytes` or more (kAllBytes: all of them); linked through `next`.
  static constexpr size_t kAllBytes = ~size_t{0};
  Span* take_resident_locked(uint64_t now, uint64_t min_age, size_t bytes);
  // Releases each span of a list built as above, merges it with its released neighbours and
  // puts it back on the free lists.
  void release_list_locked(Span* list);
  // Over the cap: releases the longest spans not freed too recently, down to half the cap.
  void release_over_cap_locked(uint64_t now);
  void decay_locked(uint64_t now);

  Span* take_free(size_t pages);
  // The most pages a small span holds (a block of the largest class).
  static constexpr size_t kGrowableRoomPages = kMaxSmallSize / kPageSize;
  // Pages at the start of free run `run` kept for the span before it to grow into: that span
  // holds one block, which realloc may be growing, up to kGrowableRoomPages.
  size_t neighbour_reserve(const Span* run);
  // The run allocate_growable() takes (see there), with the pages to leave at its start; nullptr
  // when none has the room.
  Span* growable_run(size_t* skip_pages);
  // The free span with the most pages (resident first among equals); nullptr when none.
  Span* longest_free();
  // Notes a hand-out and runs a decay scan if one is due; returns the time.
  uint64_t start_hand_out_locked();
  // Takes free span `run` (nullptr: memory mapped afresh) off its list and cuts from it, after
  // its first `skip_pages`, a span of `pages` pages for `size_class`; the rest stays free.
  Span* carve_locked(Span* run, size_t skip_pages, size_t pages, unsigned size_class, uint64_t now);
  // Cuts the first `bytes` of a span on no list off into a new descriptor (nullptr when out of
  // memory); `span` keeps the rest.
  static Span* split_head(Span* span, size_t bytes);
  // A free span of at least `pages` pages mapped afresh, right below `below` if that address
  // range is free; called without lock_, it is on no list until add_fresh_locked() puts it on
  // one (merged with its free neighbours). grow() does both under lock_.
  Span* map_fresh(size_t pages, uintptr_t below);
  // With lock_ held: how many pages the next growth maps when `pages` are wanted.
  size_t growth_pages_locked(size_t pages) const;
  Span* add_fresh_locked(Span* span);
  Span* grow(size_t pages);
  void insert_free(Span* span);
  void remove_free(Span* span);
  SpanList& bin_for(size_t pages) { return bins_[pages < kBins ? pages : 0]; }
  // Merges neighbour `other` into `survivor`, neither on a free list (whichever is larger keeps
  // its descriptor; the other's pages are renamed to it), retiring the other. Returns the
  // survivor.
  Span* merge(Span* survivor, Span* other);
  // Merges `span` (on no list) with its free neighbours in the same state, released or
  // resident: a merged span is one or the other, so the heap's resident count stays exact
  // (gperftools' page heap does the same). Spans released later merge then, so no two free
  // neighbours are ever in the same state. Where madvise is refused (a seccomp filter, or
  // pages locked by mlockall), no span is ever released later: it merges with every free
  // neighbour, and a merged span is resident; otherwise each growth's untouched end stays a run
  // of its own beside the growth above it (57 runs for the 5 of a heap that could release,
  // after 2 x 64 MiB of 4608-byte blocks).
  Span* coalesce(Span* span);
  // A descriptor no entry names any more goes back to its pool after a grace period.
  static void retire(Span* span);

  SpanMap& map_;
  Mutex lock_;
  Mutex grow_lock_;
  SpanList bins_[kBins];
  size_t system_bytes_ = 0, free_bytes_ = 0, released_bytes_ = 0;
  bool release_refused_ = false;  // madvise failed once: it will fail again (coalesce())
  size_t large_count_ = 0, large_bytes_ = 0;
  uint64_t allocations_ = 0, grows_ = 0;
  // Where the last growth started: the next is mapped right below it if it can be (the kernel
  // hands out addresses top-down), so that free pages coalesce across growths, and neither the
  // free spans' descriptors nor the process's mappings multiply with the heap's size.
  uintptr_t last_grow_ = 0;
  static constexpr uint64_t kDecayUnset = ~uint64_t{0};
  std::atomic<uint64_t> decay_ms_{kDecayUnset};  // from the options on first use (decay_ms())
  std::atomic<uint64_t> next_decay_scan_ms_{0};
  uint64_t next_cap_release_ms_ = 0;
  size_t recent_peak_in_use_ = 0;  // the most bytes in use, fading by an eighth per decay scan
  uint64_t last_handed_out_ms_ = 0;
  std::atomic<bool> shrinking_{false};
};

extern FM_HIDDEN PageHeap g_page_heap;
extern FM_HIDDEN MetaPool<Span> g_span_pool;

}  // namespace fastmalloc
