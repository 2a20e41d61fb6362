// What the allocator tells its users about itself: totals gathered from every level, and the
// forms glibc programs ask for them in (malloc_stats text, mallinfo2, malloc_info XML).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "central_free_list.h"
#include "cpu_cache.h"
#include "page_heap.h"
#include "transfer_cache.h"

namespace fastmalloc {

struct Totals {
  // The per-CPU caches and the page heap report for themselves.
  CacheStats cache;
  PageHeapStats heap;
  const char* mode;
  // Summed over the size classes' transfer caches and central lists.
  size_t small_in_use_objects; // small blocks the program holds
  size_t small_in_use_bytes;   // held by the program: handed out, less what the caches hold
  size_t transfer_cache_bytes; // free objects in the transfer caches
  size_t small_free_bytes;     // free objects inside spans that small classes own
  size_t small_span_bytes;     // pages the small classes own
  uint64_t small_allocations, span_misses;
  uint64_t transfer_hits, transfer_misses;
  size_t metadata_bytes;
  size_t thread_records;  // the thread registry's records in use
};

Totals gather_totals();

// One size class, as its central list, its transfer cache and the per-CPU caches see it. The
// counters are read while other threads run, so the differences below are clamped at zero.
struct ClassTotals {
  CentralStats central;
  TransferStats transfer;
  uint64_t cpu_cached;  // objects in the per-CPU caches
  // Objects the program holds: the central list's live ones, less those the caches hold.
  uint64_t in_use() const;
  // Objects of the class's spans that nobody holds, never-carved ones included (cached ones
  // count as live for the central list, so they are not among them).
  uint64_t free_in_spans(const SizeClass& sc) const;
};
ClassTotals class_totals(unsigned cls, const CacheStats& cache);

// The statistics text, one "fastmalloc: ..." line per level and then one per size class that
// owns spans, on stderr (FASTMALLOC_STATS=1 and malloc_stats()).
void print_stats();

// fastmalloc_get_property's answer for `name`; false for an unknown name.
bool lookup_property(const Totals& t, const char* name, size_t* value);

// malloc_info(3)'s XML, written with stdio; called from the user's thread, with no lock held.
int write_malloc_info(FILE* out);

}  // namespace fastmalloc
