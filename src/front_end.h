// The front end: what every exported entry point calls. It owns the allocation and free paths
// (size class, fast path, miss), realloc, alignment and usable size, with malloc's contract:
// failures return nullptr with errno = ENOMEM and leave live blocks intact; a pointer that was
// never handed out stops the process with a one-line report naming `call`.
//
// The fast paths are here, always inline, so malloc and free are each one function; every miss
// is a call to a noinline function. The SYNCHRONIZATION notes are in front_end.cpp.
//
// CALL TREE
//   allocate(size)
//     size <= kMaxSmallSize: allocate_small(class)
//        fast: cache_pop (rseq pop on this CPU's slab), check and clear the free signature
//        miss: allocate_small_miss (FASTMALLOC_HARDEN: the next class up, checked)
//                -> cache_refill_pop -> TransferCache::remove
//                -> CentralFreeList::allocate_batch -> PageHeap::allocate
//     otherwise: allocate_large -> PageHeap::map_large (its own mapping)
//   deallocate(p)
//     span-map entry of p's page (no lock) -> class, offset in span -> p starts an object?
//     small: deallocate_small(class, p)
//        write the free signature
//        fast: cache_push (rseq push on this CPU's slab)
//        miss: deallocate_small_miss -> cache_overflow_push -> TransferCache::insert
//                -> CentralFreeList::deallocate_batch -> empty span: PageHeap::deallocate
//     anything else: deallocate_slow -> span_of(p): large: PageHeap::unmap_large(); else report
//
#pragma once

#include <cstddef>
#include <cstdint>

#include "base.h"
#include "block_check.h"
#include "cpu_cache.h"
#include "size_classes.h"
#include "span.h"
#include "span_map.h"
#include "sync/prwlock.h"
#include "sync/rcu.h"

namespace fastmalloc {

namespace detail {
FM_NOINLINE void* out_of_memory() noexcept;
FM_NOINLINE void* allocate_large(size_t size, size_t align) noexcept;
FM_NOINLINE void* allocate_small_miss(unsigned cls) noexcept;
// FASTMALLOC_HARDEN: a block of class `cls` (kNumClasses: a large block of kMaxSmallSize),
// checked and given its canary.
FM_NOINLINE void* allocate_hardened(unsigned cls) noexcept;
FM_NOINLINE void deallocate_small_miss(unsigned cls, void* p, const char* call) noexcept;
[[noreturn]] FM_NOINLINE void report_invalid(const char* call, const void* p) noexcept;
// A block about to be handed out has lost its free signature.
[[noreturn]] FM_NOINLINE void report_reused_block(const void* p) noexcept;
// free() of anything but a valid small block: null, a large block, or misuse.
FM_NOINLINE void deallocate_slow(void* p, const char* call) noexcept;
FM_NOINLINE void deallocate_sized_slow(void* p, size_t size, const char* call) noexcept;
}  // namespace detail

// free() writes the free signature into the block's first word and malloc() checks and clears
// it (block_check.h): a block freed twice sits twice in the caches, and whichever copy is taken
// second no longer carries the signature, so it is reported instead of handed out again.
FM_ALWAYS_INLINE void* allocate_small(unsigned cls) {
  void* p;
  if (FM_LIKELY(cache_pop(cls, &p))) {
    if (FM_UNLIKELY(!has_free_signature(p))) detail::report_reused_block(p);
    mark_handed_out(p);
    return p;
  }
  return detail::allocate_small_miss(cls);
}

FM_ALWAYS_INLINE void deallocate_small(unsigned cls, void* p, const char* call) {
  mark_free(p);
  if (FM_LIKELY(cache_push(cls, p))) return;
  detail::deallocate_small_miss(cls, p, call);
}

// The descriptor of the span holding addr, or nullptr; the caller is inside rcu_read_lock.
// The leaf is read under the span map's read side, the descriptor under RCU, so neither can be
// reused while it is looked at (a descriptor is retired through call_rcu).
FM_ALWAYS_INLINE Span* lookup_span_in_rcu(uintptr_t addr) {
  sync::PrwlockReadSection section = g_span_map.structure_lock().read_lock();
  Span* span = g_span_map.lookup(addr);
  g_span_map.structure_lock().read_unlock(section);
  return span;
}

// The span that owns block p, or a report naming `call`. Ensures p is the start of a block that
// is live as far as can be seen without the owner's lock (the central list checks again).
FM_ALWAYS_INLINE Span* span_of(const void* p, const char* call) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  sync::rcu_read_lock();
  Span* span = lookup_span_in_rcu(addr);
  bool valid = false;
  if (FM_LIKELY(span != nullptr)) {
    if (span->state == SpanState::kSmall)
      // The descriptor may be read in a newer state, a free span of any length.
      valid = span->contains(addr) && is_object_boundary_any(span->size_class, addr - span->start);
    else
      valid = span->state == SpanState::kLarge && span->start == addr;
  }
  sync::rcu_read_unlock();
  if (FM_LIKELY(valid)) return span;
  detail::report_invalid(call, p);
}

// size_to_class with the large blocks' test last, so the smallest requests, most of them, find
// their class after one comparison.
FM_ALWAYS_INLINE void* allocate(size_t size) {
  unsigned cls;
  if (FM_LIKELY(size <= kMaxFineLookupSize)) cls = fine_lookup_class(size);
  else if (FM_LIKELY(size <= kMaxLookupSize)) cls = coarse_lookup_class(size);
  else if (size <= kMaxSmallSize) cls = size_class_detail::class_of_size_computed(size);
  else return detail::allocate_large(size, 0);
  return allocate_small(cls);
}

// The span-map entry of addr's page: 0 where there is none, and also where the map's read side
// cannot be entered without a call (first use on this thread, a nested section, a writer), so
// that free's fast path makes no call that returns; the slow path looks again under read_lock().
FM_ALWAYS_INLINE uintptr_t span_map_entry(uintptr_t addr) {
  SpanMap::StructureLock& map_lock = g_span_map.structure_lock();
  sync::PrwlockReadSection section = map_lock.try_read_lock();  // the leaf stays mapped while we read it
  if (FM_UNLIKELY(section.status == nullptr)) return 0;
  uintptr_t entry = g_span_map.lookup_entry(addr);
  map_lock.read_unlock(section);
  return entry;
}

// The class of the small block that starts at addr, read from the span-map entry of its page
// alone: a small span's entry carries the class and the page's place in the span, enough to
// check that addr starts an object. 0 for anything else (null, large blocks, pointers that fail
// the check, or an entry that cannot be read without a call), which the callers' slow paths
// decide by reading the span.
FM_ALWAYS_INLINE unsigned small_block_class(uintptr_t addr) {
  uintptr_t entry = span_map_entry(addr);
  unsigned cls = SpanMap::entry_class(entry);
  return cls != 0 && is_object_boundary(cls, SpanMap::entry_offset(entry, addr)) ? cls : 0;
}

FM_ALWAYS_INLINE void deallocate(void* p, const char* call) {
  unsigned cls = small_block_class(reinterpret_cast<uintptr_t>(p));
  if (FM_LIKELY(cls != 0)) return deallocate_small(cls, p, call);
  detail::deallocate_slow(p, call);
}

// Sized delete: the size must be the one the block was allocated with (its class must be the
// class of `size`); a mismatch is reported by the slow path, which also serves hardened mode.
FM_ALWAYS_INLINE void deallocate_sized(void* p, size_t size, const char* call) {
  unsigned cls = small_block_class(reinterpret_cast<uintptr_t>(p));
  if (FM_LIKELY(cls != 0 && size <= kMaxSmallSize && size_to_class(size) == cls)) return deallocate_small(cls, p, call);
  detail::deallocate_sized_slow(p, size, call);
}

// Sized delete of an over-aligned block: the block may come from a bigger class than the size
// alone picks, so only size <= usable size can be checked.
void deallocate_sized_aligned(void* p, size_t size, const char* call) noexcept;

void* allocate_zeroed(size_t count, size_t size) noexcept;
// `align` is a power of two (callers check and report their own errors).
void* allocate_aligned(size_t align, size_t size) noexcept;
void* reallocate(void* p, size_t size, const char* call) noexcept;
size_t usable_size(const void* p, const char* call) noexcept;

}  // namespace fastmalloc
