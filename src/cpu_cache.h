// Per-CPU caches: for each CPU (or, where the kernel provides it, each mm_cid: a dense per-process
// id below min(threads, CPUs)), a slab of free objects per size class. malloc pops from the
// current CPU's slab and free pushes to it, inside an rseq critical section (arch/*/percpu.h);
// misses refill or drain a batch through the transfer cache. Where rseq is unavailable the same
// slabs are used under a per-slab lock, indexed by sched_getcpu() ("locked" mode).
//
// Capacity moves: each class starts with room for one transfer batch, in a nursery the classes
// share, and grows, on misses, in a region of its own up to 128 KiB of objects of one class per
// CPU (at most 2048 objects, at least two batches) while the CPU's total stays within
// FASTMALLOC_CPU_CACHE_SIZE; classes above 64 KiB bypass the per-CPU level. Once per decay
// period the slow paths take back room a class did not use and drain slabs that have gone idle
// (record_miss and scan_slabs in cpu_cache.cpp).
#pragma once

#include <cstdint>

#include "base.h"
#include "percpu.h"
#include "size_classes.h"

namespace fastmalloc {

// Read by every fast path; written once, at setup. Until then fast_num_slabs is 0 and every
// fast path misses into the slow path, which sets up. It stays 0 where the inline fast paths
// must not run: in locked mode, and when statistics are on (hits are then counted, by the
// counting sections the slow path runs, so the inline paths carry no counter); and it is 0 while
// a vfork child lives (cache_vfork_child_started).
struct alignas(64) PerCpuConfig {
  uint64_t fast_num_slabs;    // num_slabs, or 0 (see above)
  uintptr_t slabs;
  intptr_t rseq_area_offset;  // thread pointer -> the rseq area
  uint64_t index_field;       // offset in the area of cpu_id or mm_cid
  uint64_t num_slabs;
};
extern FM_HIDDEN PerCpuConfig g_percpu;

// Acquire: setup writes the other fields before fast_num_slabs. The test comes before the
// section because the section's first store goes through rseq_area_offset.
FM_ALWAYS_INLINE bool cache_pop(unsigned cls, void** out) {
  const PerCpuConfig& c = g_percpu;
  uint64_t num_slabs = __atomic_load_n(&c.fast_num_slabs, __ATOMIC_ACQUIRE);
  if (FM_UNLIKELY(num_slabs == 0)) return false;
  return arch::percpu_pop<false>(c.rseq_area_offset, c.index_field, num_slabs, c.slabs, cls, out);
}

FM_ALWAYS_INLINE bool cache_push(unsigned cls, void* p) {
  const PerCpuConfig& c = g_percpu;
  uint64_t num_slabs = __atomic_load_n(&c.fast_num_slabs, __ATOMIC_ACQUIRE);
  if (FM_UNLIKELY(num_slabs == 0)) return false;
  return arch::percpu_push<false>(c.rseq_area_offset, c.index_field, num_slabs, c.slabs, cls, p);
}

// Objects bigger than this skip the per-CPU and transfer caches: a cache would save little
// next to the cost of using such a block, and the central list can still check each free.
inline constexpr size_t kMaxCachedSize = 64 * 1024;

// The slow paths. cache_refill_pop returns nullptr only when out of memory.
FM_NOINLINE void* cache_refill_pop(unsigned cls);
FM_NOINLINE void cache_overflow_push(unsigned cls, void* p);
// calloc of a class above kMaxCachedSize: its object, straight from the central list, and
// whether it is known to be zero but for its first word (CentralFreeList::allocate_one).
// nullptr only when out of memory.
FM_NOINLINE void* cache_take_uncached(unsigned cls, bool* untouched);

// Moves every object in every CPU's cache back to the transfer caches (malloc_trim). Slabs in
// use by rseq are fenced with membarrier first; without membarrier only the locked-mode slabs
// and the caller's current one can be drained, and the others are left alone.
void cache_drain_all();

// Sets the per-CPU level up now, if it is not yet (the first miss would): rseq, the slabs, and
// the registration for the membarrier drains use. The library does it at load, for the reason
// sync::registry_set_up() gives.
void cache_set_up();

// vfork: the child runs on its parent thread's stack and TLS until it calls exec or _exit, so
// the rseq area it reads is its parent's, and the kernel no longer updates it for the child (a
// task made with CLONE_VM starts without an rseq registration): its index names the slab of a
// CPU (or mm_cid) that another thread may be using at that moment, outside any critical section
// of the child's. POSIX leaves a vfork child that calls malloc undefined; programs do it anyway
// (building argv, opendir to close descriptors, exit() instead of _exit()), and glibc's malloc
// copes. So from the child's start until its parent thread resumes, every thread's inline fast
// paths miss (fast_num_slabs is 0), and the child's slow paths leave the slabs alone, going to
// the transfer caches and central lists under their locks. Called by the library's vfork().
void cache_vfork_child_started();
// In the parent thread once its child has exec'd or exited; nothing if the child never started.
void cache_vfork_parent_resumed();

enum class CacheMode : uint8_t { kNotSetUp, kRseqMmCid, kRseqCpuId, kLocked };
CacheMode cache_mode();
const char* cache_mode_name(CacheMode mode);

struct CacheStats {
  bool hits_counted;  // hits are counted only under FASTMALLOC_STATS=1; otherwise they read 0
  uint64_t alloc_hits, alloc_misses, free_hits, free_misses;
  uint64_t cached_bytes;  // objects sitting in the slabs now
  uint64_t class_objects[kNumClasses];  // the same, counted in objects per size class
  uint32_t slabs_in_use;  // slabs set up: CPUs (or mm_cids) that have allocated
  uint64_t resident_bytes;  // of those slabs' memory, what is resident (a drain gives slots back)
  bool can_drain_remote;
};
CacheStats cache_stats();

// Fork: the slab locks come first in the lock order.
void cache_lock_all();
void cache_unlock_all();
void cache_reset_locks_after_fork();

}  // namespace fastmalloc
