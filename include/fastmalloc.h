/* fastmalloc: a drop-in malloc for Linux.
 *
 * Programs need no header to use fastmalloc: it replaces malloc, free, the other functions of
 * <stdlib.h> and <malloc.h>, and C++'s operator new and delete, when preloaded
 * (LD_PRELOAD=libfastmalloc.so) or linked (-lfastmalloc). This header declares what it offers
 * beyond that standard interface. */
#ifndef FASTMALLOC_H
#define FASTMALLOC_H

#include <stddef.h>

/* The functions never throw; C++ callers may rely on it. */
#ifdef __cplusplus
#define FASTMALLOC_NOEXCEPT noexcept
#else
#define FASTMALLOC_NOEXCEPT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Prints the allocator's statistics to stderr, one "fastmalloc: ..." line per level and one per
 * size class that owns spans (in objects: those in use, in the per-CPU and transfer caches, and
 * free in its spans): the same text as malloc_stats() and as FASTMALLOC_STATS=1 at exit. Safe
 * to call from any thread. */
void fastmalloc_stats_print(void) FASTMALLOC_NOEXCEPT;

/* Gives back to the OS all the memory it can now, as malloc_trim(0) does: empties the per-CPU
 * caches of every CPU (where membarrier allows; otherwise the caller's), the transfer caches
 * and the central lists' empty spans, and releases every free page. Returns the bytes of pages
 * newly released. Free pages also go back by themselves after FASTMALLOC_DECAY. */
size_t fastmalloc_release_memory(void) FASTMALLOC_NOEXCEPT;

/* Reads one of the allocator's numbers into *value. Returns 0, or EINVAL for an unknown name.
 * Values are read without stopping other threads (so sums may be off by what moved meanwhile);
 * all are byte counts but the last six:
 *   "allocated_bytes"       held by the program: small blocks at their class size, plus large
 *                           blocks' mappings
 *   "heap_bytes"            mapped from the OS: pages for small blocks plus large blocks
 *   "cpu_cache_bytes"       free blocks in the per-CPU caches
 *   "cpu_cache_resident_bytes"  memory the per-CPU caches' own arrays hold resident (the
 *                           blocks themselves are not in it); a drained cache gives it back
 *   "transfer_cache_bytes"  free blocks in the transfer caches
 *   "central_free_bytes"    free space inside the spans the size classes own
 *   "page_heap_free_bytes"  free pages in the page heap (released ones included)
 *   "released_bytes"        of those, given back to the OS
 *   "large_bytes"           mapped for large blocks
 *   "metadata_bytes"        the allocator's own structures
 *   "remote_drain"          1 when malloc_trim can empty every CPU's cache, else 0 (rseq
 *                           without membarrier: only the caller's)
 *   "thread_records"        threads the allocator keeps a record for: the live ones that have
 *                           freed a block or asked about one (free, realloc,
 *                           malloc_usable_size), and for a moment those just ended; a count
 *   "cpu_cache_alloc_hits", "cpu_cache_alloc_misses", "cpu_cache_free_hits",
 *   "cpu_cache_free_misses" counts (not bytes) of mallocs and frees of cached sizes served by, or
 *                           missing, the per-CPU caches; a critical section aborted after its
 *                           count (preemption, a signal) counts twice. Hits are counted only
 *                           when FASTMALLOC_STATS=1 (the counter would cost the fast path
 *                           about 7%); otherwise they read 0. */
int fastmalloc_get_property(const char* name, size_t* value) FASTMALLOC_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif /* FASTMALLOC_H */
