// Per-CPU caches: for each CPU (or, where the kernel provides it, each mm_cid: a dense per-process
// id below min(threads, CPUs)), a slab of free objects per size class. malloc pops from the
// current CPU's slab and free pushes to it, inside an rseq critical section (arch/*/percpu.h);
// misses refill or drain a batch through the transfer cache. Where rseq is unavailable the same
// slabs are used under a per-slab lock, indexed by sched_getcpu() ("locked" mode).
//
// Capacity is fixed per class: up to 128 KiB of objects of one class per CPU (at most 2048
// objects), for classes up to 64 KiB; larger classes bypass the per-CPU level.
#pragma once

#include <cstdint>

#include "base.h"
#include "percpu.h"
#include "size_classes.h"

namespace fastmalloc {

// Read by every fast path; written once, at setup. Until then slabs is 0 and every fast path
// misses into the slow path, which sets up.
struct alignas(64) PerCpuConfig {
  uintptr_t slabs;
  intptr_t rseq_area_offset;  // thread pointer -> the rseq area
  uint64_t index_field;       // offset in the area of cpu_id or mm_cid
  uint64_t num_slabs;
};
extern PerCpuConfig g_percpu;

FM_ALWAYS_INLINE bool cache_pop(unsigned cls, void** out) {
  const PerCpuConfig& c = g_percpu;
  if (FM_UNLIKELY(c.slabs == 0)) return false;
  return arch::percpu_pop(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, out);
}

FM_ALWAYS_INLINE bool cache_push(unsigned cls, void* p) {
  const PerCpuConfig& c = g_percpu;
  if (FM_UNLIKELY(c.slabs == 0)) return false;
  return arch::percpu_push(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, p);
}

// The slow paths. cache_refill_pop returns nullptr only when out of memory.
FM_NOINLINE void* cache_refill_pop(unsigned cls);
FM_NOINLINE void cache_overflow_push(unsigned cls, void* p);

// Moves every object in every CPU's cache back to the transfer caches (malloc_trim). Slabs in
// use by rseq are fenced with membarrier first; without membarrier only the locked-mode slabs
// and the caller's current one can be drained, and the others are left alone.
void cache_drain_all();

enum class CacheMode : uint8_t { kNotSetUp, kRseqMmCid, kRseqCpuId, kLocked };
CacheMode cache_mode();
const char* cache_mode_name(CacheMode mode);

struct CacheStats {
  uint64_t alloc_hits, alloc_misses, free_hits, free_misses;
  uint64_t cached_bytes;  // objects sitting in the slabs now
  uint32_t slabs_in_use;  // slabs set up: CPUs (or mm_cids) that have allocated
  bool can_drain_remote;
};
CacheStats cache_stats();

// Fork: the slab locks come first in the lock order.
void cache_lock_all();
void cache_unlock_all();
void cache_reset_locks_after_fork();

}  // namespace fastmalloc
