// The front end's slow paths, realloc, alignment and zeroing; the fast paths are inline in
// front_end.h.
//
// SYNCHRONIZATION
//   size-class table, options   immutable after startup (options parse once, atomic flag)
//   per-CPU slab                rseq: a critical section owns the slab of the CPU (or mm_cid)
//                               it runs on, from its first load to its one commit store;
//                               setup and drains hold the slab's control lock, and a drain
//                               stops the slab and fences with membarrier before touching it.
//                               Locked mode (no rseq): the slab's control lock, always.
//                               Capacity: a class grows (its header's end only rises) under
//                               the control lock; it shrinks inside a stop and fence, or by
//                               a lower end under the lock while the heap shrinks (pushes
//                               that read the old end may still commit below it).
//                               The control keeps each class's room in one word, written
//                               under the lock and read without it to size a refill.
//                               The control's miss counts are relaxed atomics, written
//                               without the lock. One scan (idle drain, shrink) or
//                               malloc_trim drain at a time: the cache scan lock.
//   PerCpuConfig (g_percpu)     written once at setup under the setup lock; published by a
//                               release store of `slabs`, which fast paths test first; its
//                               fast_num_slabs is stored under the cache's vfork lock, with
//                               the count of live vfork children that keeps it 0
//   transfer cache of a class   its TransferCache::lock()
//   central list of a class     its CentralFreeList::lock(): the nonempty span list, the
//                               span each CPU takes from (affine_), every field of the spans
//                               the class owns, their free objects. But a span of one
//                               object that is out is on no list and reached only by the
//                               block's holder: realloc lengthens or shortens it under
//                               the page heap's lock (PageHeap::extend, shrink), or carves a
//                               new one there (allocate_growable), without the class's lock;
//                               the class counters are relaxed atomic adds for that reason.
//                               A span just taken from the page heap is its taker's until put
//                               on the list, and objects just carved are the carver's: their
//                               first words are written after the lock is dropped
//   page heap                   PageHeap::lock(): free span bins, span fields of free spans,
//                               span state (written only under it), splitting and coalescing,
//                               statistics of large blocks, decay (free_since_ms, madvise);
//                               decay_tick() reads its next-scan time (a relaxed atomic hint)
//                               without it and then only try_locks; the transfer caches read
//                               its shrinking flag (written under it) the same way, and a
//                               stale value only changes how much a stock keeps.
//                               PageHeap::grow_lock(): one thread at a time maps memory for
//                               allocate(), without lock()
//   span map leaves             prwlock (SpanMap::structure_lock()): free(), realloc() and
//                               span_of() look up under its read side; releasing an empty
//                               leaf is its writer (SpanMap::lock() held, signals blocked):
//                               it unlinks, synchronize()s, then unmaps, and gives up if
//                               readers hold it up (prwlock.h). Leaves are added
//                               without it: zeroed, then published with a release store.
//                               The home leaf is never released; its index is written once,
//                               under SpanMap::lock(), before any of its entries.
//   span map entries            an entry is written only by the owner of the page (the
//                               central list or page heap that holds its lock, or the thread
//                               mapping/unmapping its large block, under SpanMap::lock() so a
//                               leaf cannot be released between ensure and set). Every entry
//                               of a small span's pages, and of a resident free span's, names
//                               that span's descriptor; a released free span is named at its
//                               first and last page, its other entries are 0, and the page
//                               heap drops the pages of entries it owns whole (madvise under
//                               its lock; the page heap's leaves are pinned, never released).
//                               Unmapping a large block clears its entry holding both the
//                               page heap's lock and SpanMap::lock(), so no entry writer runs
//                               while it drops the page of entries around it once all zero.
//                               A leaf counts its pins and large blocks' entries (atomic adds),
//                               never the page heap's. SpanMap::lock() serializes leaf
//                               creation, release, the spare.
//   span descriptors            RCU: a descriptor leaves the map (its pages renamed to the
//                               span that absorbed it, or its large block's entry cleared) and
//                               is retired with call_rcu; span_of() reads descriptors inside
//                               rcu_read_lock, so none is reused under it. Callbacks run from
//                               rcu_poll() in slow paths holding no lock, and rcu_barrier() in
//                               malloc_trim.
//   metadata arena              MetaArena::lock()
// LOCK ORDER (take left before right; never the other way):
//   RCU grace period -> cache setup -> cache scan -> slab control (ascending) -> cache vfork
//     count -> transfer cache (ascending class) -> central list (ascending class) -> page heap
//     growth -> page heap -> span map ->
//     span-map prwlock writer -> RCU callback queue -> metadata arena -> thread registry
#include "front_end.h"

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "base.h"
#include "block_check.h"
#include "central_free_list.h"
#include "cpu_cache.h"
#include "os/message.h"
#include "os/os.h"
#include "page_heap.h"
#include "size_classes.h"
#include "span_map.h"

namespace fastmalloc {

namespace {

// FASTMALLOC_HARDEN: the canary after a block of class `cls` (block_check.h), which says whether
// the block is live.
Word* canary_of(const void* p, unsigned cls) {
  return reinterpret_cast<Word*>(reinterpret_cast<uintptr_t>(p) + size_class(cls).size - kCanaryBytes);
}

[[noreturn]] void report_bad_canary(const void* p, const char* call) {
  os::fatal_misuse(call, p,
                   "heap overflow: the bytes just past the end of the block were overwritten, or the block was "
                   "never handed out");
}

// A block about to be handed out (we hold it: it came out of a cache or a span's free list).
void harden_handed_out(void* p, unsigned cls) {
  Word* canary = canary_of(p, cls);
  if (canary_state(canary, p) == CanaryState::kLive)
    os::fatal_misuse("malloc", p, "heap corrupted: a block was about to be handed out twice");
  *canary = live_canary_for(p);
}

// A block being freed; the caller has checked that p starts an object of class `cls`.
void harden_freed(void* p, unsigned cls, const char* call) {
  Word* canary = canary_of(p, cls);
  switch (canary_state(canary, p)) {
    case CanaryState::kLive:
      *canary = freed_canary_for(p);
      return;
    case CanaryState::kFreed:  // or a slot last handed out in the span's earlier life
      os::fatal_misuse(call, p, "double free, or a block that was never handed out");
    case CanaryState::kOther:
      report_bad_canary(p, call);
  }
}

// The class a request of `size` is carved from: its own, or in hardened mode the next one up
// (kNumClasses and above: a large block).
unsigned carved_class(size_t size) {
  return size <= kMaxSmallSize ? size_to_class(size) + (hardened_mode() ? 1 : 0) : kNumClasses;
}

[[noreturn]] void report_not_live(const void* p, const char* call) {
  os::fatal_misuse(call, p, "the block is not allocated (it was freed)");
}

// Reports a small block that is not live to realloc and malloc_usable_size; in hardened mode also
// one whose canary was overwritten.
void check_live(const Span* span, const void* p, const char* call) {
  if (span->state != SpanState::kSmall) return;
  if (looks_free(p)) report_not_live(p, call);
  if (!hardened_mode()) return;
  CanaryState state = canary_state(canary_of(p, span->size_class), p);
  if (state == CanaryState::kFreed) report_not_live(p, call);
  if (state == CanaryState::kOther) report_bad_canary(p, call);
}

}  // namespace

namespace detail {

void* out_of_memory() noexcept {
  errno = ENOMEM;
  return nullptr;
}

void* allocate_large(size_t size, size_t align) noexcept {
  // Refuse what no process could map before asking: sizes above PTRDIFF_MAX are never valid.
  if (size > static_cast<size_t>(PTRDIFF_MAX)) return out_of_memory();
  sync::rcu_poll();  // descriptors retired by earlier frees
  Span* span = g_page_heap.map_large(size, align);
  if (span == nullptr) return out_of_memory();
  return reinterpret_cast<void*>(span->start);
}

// A block a slow path is about to hand out (nullptr: out of memory), with the checks the
// inline path makes.
void* hand_out(void* p) {
  if (FM_UNLIKELY(p == nullptr)) return out_of_memory();
  if (FM_UNLIKELY(!has_free_signature(p))) report_reused_block(p);
  mark_handed_out(p);
  return p;
}

// A block of class `cls` from the slow path.
void* refill_and_hand_out(unsigned cls) { return hand_out(cache_refill_pop(cls)); }

void* allocate_small_miss(unsigned cls) noexcept {
  prepare_block_checks();
  if (hardened_mode()) return allocate_hardened(cls + 1);
  return refill_and_hand_out(cls);
}

void* allocate_hardened(unsigned cls) noexcept {
  // Past the largest class: a large block holds any small request and its canary's room.
  if (cls >= kNumClasses) return allocate_large(kMaxSmallSize, 0);
  void* p = refill_and_hand_out(cls);
  if (p != nullptr) harden_handed_out(p, cls);
  return p;
}

void deallocate_small_miss(unsigned cls, void* p, const char* call) noexcept {
  if (hardened_mode()) harden_freed(p, cls, call);
  cache_overflow_push(cls, p);
}

void report_invalid(const char* call, const void* p) noexcept {
  os::fatal_misuse(call, p, "invalid pointer (not a block fastmalloc handed out, or already freed)");
}

void report_reused_block(const void* p) noexcept {
  os::fatal_misuse("malloc", p, "a free block lost its free signature: it was freed twice, or written after free");
}

void deallocate_slow(void* p, const char* call) noexcept {
  if (p == nullptr) return;
  Span* span = span_of(p, call);
  if (span->state == SpanState::kSmall) return deallocate_small(span->size_class, p, call);
  int saved_errno = errno;
  g_page_heap.unmap_large(span);
  sync::rcu_poll();
  errno = saved_errno;
}

void deallocate_sized_slow(void* p, size_t size, const char* call) noexcept {
  if (p == nullptr) return;
  Span* span = span_of(p, call);
  bool small = size <= kMaxSmallSize;
  unsigned cls = carved_class(size);
  bool matches = span->state == SpanState::kSmall
                     ? cls == span->size_class
                     : cls >= kNumClasses && round_up(small ? kMaxSmallSize : size, os::hardware_page_size()) == span->bytes;
  if (!matches) os::fatal_misuse(call, p, "sized delete with a size the block was not allocated with");
  deallocate_slow(p, call);
}

}  // namespace detail

namespace {

using detail::allocate_large;
using detail::out_of_memory;

// What the program may use of the block: hardened mode keeps the canary's bytes.
size_t block_size(const Span* span) {
  return span->state == SpanState::kSmall ? size_class(span->size_class).size - canary_bytes() : span->bytes;
}

// realloc growing a block into a class whose blocks are alone in their spans (40 KiB up): a
// block already alone in its span first takes the free pages after it (nothing is copied, and
// the pages become resident only as the program writes them); a block that moves goes to a span
// placed with room to grow up to the largest class, so it moves at most once on its way there.
// Hardened mode keeps a canary at the block's end and carves the class above; it always moves.
bool grows_into_alone_class(const Span* span, unsigned cls) {
  return cls > span->size_class && cls < kNumClasses && one_block_per_span(cls) && !hardened_mode();
}

// realloc shrinking a block alone in its span into a smaller class of such blocks: the span
// keeps its first pages and frees the rest, so the block neither moves nor is copied (hardened
// mode moves it, with its canary).
bool shrinks_alone(const Span* span, unsigned cls) {
  return cls < span->size_class && one_block_per_span(cls) && one_block_per_span(span->size_class) && !hardened_mode();
}

// realloc moving a block between classes of several blocks per span, from `cls` to `fits`
// (the class `size` picks). A block of a few KiB grown by half or more at once (a buffer grown
// geometrically, not a string a few bytes at a time) goes where its next growth stays in place
// instead of copying again (and writing the copy's pages): to a class with room to double, and
// from kGrowableFromSize on, to a span of its own placed with room to grow, as the classes of
// one block per span get (grows_into_alone_class), so no later doubling copies it. Copying a
// 16 KiB buffer there is cheaper than copying it at 32 KiB: in bench/'s realloc workload a
// doubled vector then writes 9 pages instead of 13.
constexpr size_t kGrowableFromSize = 16 * 1024;
static_assert(2 * kGrowableFromSize < kMaxSmallSize);

void* allocate_to_grow(unsigned cls, size_t size, unsigned fits) {
  size_t old_size = size_class(cls).size;
  if (size < 4096 || size < old_size + old_size / 2) return allocate_small(fits);
  if (size < kGrowableFromSize) return allocate_small(size_to_class(2 * size));
  void* fresh = central_list(kFirstAloneClass).allocate_growable();
  return fresh != nullptr ? fresh : detail::out_of_memory();
}

// realloc of a block in a span of the smallest class of one block per span, such as
// allocate_to_grow hands out, to a size from kGrowableFromSize up that still fits: the block
// stays. A buffer grown there by doubling passes through sizes of classes of several blocks per
// span, and holds at most 2.5 times its size meanwhile.
bool stays_in_growable_span(const Span* span, size_t size) {
  return span->size_class == kFirstAloneClass && size >= kGrowableFromSize &&
         size <= size_class(kFirstAloneClass).size && !hardened_mode();
}

}  // namespace

void deallocate_sized_aligned(void* p, size_t size, const char* call) noexcept {
  if (p != nullptr && size > usable_size(p, call))
    os::fatal_misuse(call, p, "sized delete with a size larger than the block");
  deallocate(p, call);
}

namespace {

// calloc of a block too big for the per-CPU caches: the central list says whether the block was
// carved from pages that were not resident, and such a block is zero already but for its free
// signature, which handing it out clears. A program that callocs a big table and uses a corner
// of it then holds only the pages it writes (git callocs half a megabyte at start), as it would
// with glibc, whose blocks this big are fresh mappings.
void* allocate_zeroed_uncached(unsigned cls, size_t total) {
  bool untouched = false;
  void* p = detail::hand_out(cache_take_uncached(cls, &untouched));
  if (FM_UNLIKELY(p == nullptr)) return nullptr;
  if (hardened_mode()) harden_handed_out(p, cls);
  if (!untouched) memset(p, 0, total);
  return p;
}

}  // namespace

void* allocate_zeroed(size_t count, size_t size) noexcept {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) return out_of_memory();
  if (total > kMaxCachedSize && total <= kMaxSmallSize) {
    prepare_block_checks();  // whether hardened mode carves from the class above
    unsigned cls = carved_class(total);
    if (cls < kNumClasses) return allocate_zeroed_uncached(cls, total);
  }
  void* p = allocate(total);
  // Large blocks are fresh mappings, already zero; small ones may be reused.
  if (p != nullptr && total <= kMaxSmallSize) memset(p, 0, total);
  return p;
}

void* allocate_aligned(size_t align, size_t size) noexcept {
  if (align <= 8 || (align == 16 && size >= 16)) return allocate(size);
  prepare_block_checks();
  size_t needed = size <= kMaxSmallSize ? size + canary_bytes() : size;
  if (needed <= kMaxSmallSize && align <= kPageSize) {
    // A class whose size is a multiple of `align` has every object aligned, since spans start on
    // a page boundary. Every power of two is a class, so at most a few classes are skipped.
    size_t wanted = needed > align ? needed : align;
    for (unsigned cls = size_to_class(wanted); cls < kNumClasses; ++cls)
      if (size_class(cls).size % align == 0) return hardened_mode() ? detail::allocate_hardened(cls) : allocate_small(cls);
  }
  return allocate_large(size == 0 ? 1 : size, align);
}

void* reallocate(void* p, size_t size, const char* call) noexcept {
  if (p == nullptr) return allocate(size);
  // Between classes of several blocks per span (most calls: strings grown a few bytes at a
  // time, small vectors) realloc needs only the block's class, which the span-map entry carries,
  // as free reads it, with the same checks as below (p starts a block of its class, and the
  // block is live), without entering RCU to read the descriptor. Blocks alone in their spans
  // resize their spans, which needs the descriptor; hardened mode, which carves from the class
  // above and checks the canary, takes that longer path too.
  if (size - 1 < kMaxSmallSize && !hardened_mode()) {
    unsigned cls = small_block_class(reinterpret_cast<uintptr_t>(p)), new_cls = size_to_class(size);
    if (cls != 0 && !one_block_per_span(cls) && !one_block_per_span(new_cls)) {
      if (looks_free(p)) report_not_live(p, call);
      if (new_cls == cls) return p;
      void* fresh = allocate_to_grow(cls, size, new_cls);
      if (fresh == nullptr) return nullptr;
      size_t old_size = size_class(cls).size;
      memcpy(fresh, p, old_size < size ? old_size : size);
      deallocate_small(cls, p, call);
      return fresh;
    }
  }
  Span* span = span_of(p, call);
  check_live(span, p, call);
  if (size == 0) {
    // glibc frees the block and returns NULL.
    deallocate(p, call);
    return nullptr;
  }
  void* fresh = nullptr;
  if (span->state == SpanState::kSmall) {
    unsigned cls = carved_class(size);
    if (cls == span->size_class) return p;
    if (shrinks_alone(span, cls) && central_list(span->size_class).shrink_live_span(span, cls)) return p;
    if (stays_in_growable_span(span, size)) return p;
    if (grows_into_alone_class(span, cls)) {
      if (one_block_per_span(span->size_class) && central_list(span->size_class).grow_live_span(span, cls)) return p;
      fresh = central_list(cls).allocate_growable();
      if (fresh == nullptr) return out_of_memory();
    }
  } else if (size > kMaxSmallSize) {
    if (!g_page_heap.remap_large(span, size)) return out_of_memory();
    return reinterpret_cast<void*>(span->start);
  }
  if (fresh == nullptr && span->state == SpanState::kSmall && !hardened_mode() && !one_block_per_span(span->size_class) &&
      size <= kMaxSmallSize && !one_block_per_span(size_to_class(size))) {
    // Between classes of several blocks per span, as above (reached here when the map's read
    // side needs its slow path).
    fresh = allocate_to_grow(span->size_class, size, size_to_class(size));
    if (fresh == nullptr) return nullptr;
  }
  if (fresh == nullptr && (fresh = allocate(size)) == nullptr) return nullptr;
  size_t old_size = block_size(span);
  size_t copied = old_size < size ? old_size : size;
  if (carved_class(size) >= kNumClasses) os::populate_for_write(fresh, copied);  // a large block
  memcpy(fresh, p, copied);
  deallocate(p, call);
  return fresh;
}

size_t usable_size(const void* p, const char* call) noexcept {
  if (p == nullptr) return 0;
  Span* span = span_of(p, call);
  check_live(span, p, call);
  return block_size(span);
}

}  // namespace fastmalloc
