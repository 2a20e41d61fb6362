// What the allocator tells its users about itself: totals gathered from every level, and the
// forms glibc programs ask for them in (malloc_stats text, mallinfo2, malloc_info XML).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>

namespace fastmalloc {

struct Totals {
  size_t small_live_objects;   // handed out by the central lists (caches included)
  size_t small_in_use_bytes;   // held by the program: handed out, less what the caches hold
  size_t cpu_cache_bytes;      // free objects in the per-CPU caches
  size_t cpu_cache_slabs;      // per-CPU caches in use
  size_t transfer_cache_bytes; // free objects in the transfer caches
  size_t small_free_bytes;     // free objects inside spans that small classes own
  size_t small_span_bytes;     // pages the small classes own
  size_t heap_system_bytes;    // mapped from the OS for small spans
  size_t heap_free_bytes;      // free pages in the page heap (released ones included)
  size_t heap_released_bytes;  // of those, given back to the OS
  size_t heap_free_spans;
  size_t large_count, large_bytes;
  size_t metadata_bytes;
  uint64_t small_allocations, span_misses;
  uint64_t cache_alloc_hits, cache_alloc_misses, cache_free_hits, cache_free_misses;
  uint64_t transfer_hits, transfer_misses;
  uint64_t heap_allocations, heap_grows;
  const char* mode;
  bool remote_drain;
};

Totals gather_totals();

// The statistics text, one "fastmalloc: ..." line per level, on stderr (FASTMALLOC_STATS=1 and
// malloc_stats()).
void print_stats();

// fastmalloc_get_property's answer for `name`; false for an unknown name.
bool lookup_property(const Totals& t, const char* name, size_t* value);

// malloc_info(3)'s XML, written with stdio; called from the user's thread, with no lock held.
int write_malloc_info(FILE* out);

}  // namespace fastmalloc
