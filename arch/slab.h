// The per-CPU slab: what the critical sections (arch/*/percpu.h) and the cache policy
// (src/cpu_cache.*) agree on. A slab is one CPU's cache of free objects, 2^kSlabShift bytes:
//
//   word 0                         allocation hits on this slab (counted by the counting pops)
//   word c (0 < c < kNumClasses)   the header of size class c, one 64-bit word:
//                                     bits  0-15  current  (slot index one past the top object)
//                                     bits 32-47  begin    (first slot of the class)
//                                     bits 48-63  end      (one past its last slot)
//   words begin..end-1             the class's slots; begin..current-1 hold objects
//   the last word                  free hits on this slab (counted by the counting pushes)
//
// The hit counters are incremented inside the critical sections, before the commit: a section
// aborted after its increment counts twice, which is rare enough for statistics.
// Indexes count 8-byte words from the slab's start. A pop misses when current <= begin, a push
// when current >= end. An all-zero header (a slab not yet set up) therefore misses both ways, and
// so does a "stopped" one (begin = 0xffff, end = 0), which is how a slab is fenced off while
// another thread drains it. Headers change only by whole-word stores (setup, and the commit of a
// class moving to other slots), 32-bit stores of begin/end (stop, restart, growth) and 16-bit
// stores of current (the commit of a pop or push, and a drain's reset while stopped).
//
// The order of the loads and stores is the protocol. A critical section loads the bound it
// checks first and `current` after it; whoever changes both stores `current` first and the
// bounds after (store_bounds is a release store, so the compiler keeps that order too; x86
// keeps it among the CPUs, and keeps two loads in order). A drain stops the slab, fences, resets
// `current` and restarts: a section that sees the restarted bounds then sees the reset (or a
// later) `current`; one that sees the stopped bounds misses; one that saw the bounds from before
// the stop began before the fence and was aborted by it. Loaded the other way round, a section
// held up between its two loads for longer than a drain (a vCPU the host did not run, which the
// guest does not count as a preemption) paired the old `current` with the new bounds and handed
// out drained objects again (docs/design.md, "The drain that was undone"). One 64-bit load of
// the header is also safe, but the CPU cannot forward the commit's 16-bit store to a wider load
// of the same word, and that stall made a malloc/free pair 2.6 times slower.
#pragma once

#include <cstdint>

#include "base.h"
#include "rseq_abi.h"

namespace fastmalloc::arch {

inline constexpr uint64_t kSlabBytes = uint64_t{1} << kSlabShift;
inline constexpr unsigned kAllocHitsWord = 0;
inline constexpr unsigned kFreeHitsWord = kSlabBytes / sizeof(uint64_t) - 1;
#define FASTMALLOC_SLAB_FREE_HITS_OFFSET ((1 << FASTMALLOC_SLAB_SHIFT) - 8)
inline constexpr uint16_t kStoppedBegin = 0xffff, kStoppedEnd = 0;

FM_ALWAYS_INLINE uint64_t* slab_of(uintptr_t slabs, uint32_t cpu) {
  return reinterpret_cast<uint64_t*>(slabs + (uintptr_t{cpu} << kSlabShift));
}
FM_ALWAYS_INLINE uint16_t header_current(uint64_t header) { return static_cast<uint16_t>(header); }
FM_ALWAYS_INLINE uint16_t header_begin(uint64_t header) { return static_cast<uint16_t>(header >> 32); }
FM_ALWAYS_INLINE uint16_t header_end(uint64_t header) { return static_cast<uint16_t>(header >> 48); }
FM_ALWAYS_INLINE uint64_t make_header(uint16_t current, uint16_t begin, uint16_t end) {
  return uint64_t{current} | uint64_t{begin} << 32 | uint64_t{end} << 48;
}

// Header accesses from C. The 16- and 32-bit stores go through may_alias types: without that
// the compiler may assume a uint16_t store leaves the uint64_t header unchanged and reuse a
// header it read before (it did, popping one object twice).
using HeaderHalf16 = uint16_t __attribute__((may_alias));
using HeaderHalf32 = uint32_t __attribute__((may_alias));

FM_ALWAYS_INLINE uint64_t load_header(const uint64_t* slab, unsigned cls) {
  return __atomic_load_n(&slab[cls], __ATOMIC_RELAXED);
}
FM_ALWAYS_INLINE void store_header(uint64_t* slab, unsigned cls, uint64_t header) {
  __atomic_store_n(&slab[cls], header, __ATOMIC_RELAXED);
}
FM_ALWAYS_INLINE void store_current(uint64_t* slab, unsigned cls, uint16_t current) {
  __atomic_store_n(reinterpret_cast<HeaderHalf16*>(&slab[cls]), current, __ATOMIC_RELAXED);
}
// begin and end together: the upper half of the header.
FM_ALWAYS_INLINE void store_bounds(uint64_t* slab, unsigned cls, uint16_t begin, uint16_t end) {
  __atomic_store_n(reinterpret_cast<HeaderHalf32*>(&slab[cls]) + 1, uint32_t{begin} | uint32_t{end} << 16,
                   __ATOMIC_RELEASE);
}

// Pop and push in plain C, for a caller that owns the slab by other means (the slab's lock, in
// the mode without rseq). They follow the same rules as the critical sections.
FM_ALWAYS_INLINE bool slab_pop_owned(uint64_t* slab, unsigned cls, void** out, bool count_hit) {
  uint64_t header = load_header(slab, cls);
  uint16_t current = header_current(header);
  if (current <= header_begin(header)) return false;
  *out = reinterpret_cast<void*>(slab[current - 1]);
  if (count_hit) ++slab[kAllocHitsWord];
  store_current(slab, cls, static_cast<uint16_t>(current - 1));
  return true;
}

FM_ALWAYS_INLINE bool slab_push_owned(uint64_t* slab, unsigned cls, void* item, bool count_hit) {
  uint64_t header = load_header(slab, cls);
  uint16_t current = header_current(header);
  if (current >= header_end(header)) return false;
  slab[current] = reinterpret_cast<uint64_t>(item);
  if (count_hit) ++slab[kFreeHitsWord];
  store_current(slab, cls, static_cast<uint16_t>(current + 1));
  return true;
}

}  // namespace fastmalloc::arch

namespace fastmalloc::arch {

// percpu_move_class for an owner of the slab: the class's objects from its room to the slots at
// `to`, and its header to current = to + n, bounds [to, to_end).
inline void slab_move_class_owned(uint64_t* slab, unsigned cls, uint16_t to, uint16_t to_end) {
  uint64_t header = load_header(slab, cls);
  uint16_t begin = header_begin(header), n = static_cast<uint16_t>(header_current(header) - begin);
  for (uint16_t i = 0; i < n; ++i) slab[to + i] = slab[begin + i];
  store_header(slab, cls, make_header(static_cast<uint16_t>(to + n), to, to_end));
}

// Batch moves for an owner of the slab, like the batch sections (and, like them, uncounted).
inline int slab_pop_batch_owned(uint64_t* slab, unsigned cls, void** out, int n) {
  uint64_t header = load_header(slab, cls);
  int current = header_current(header), available = current - header_begin(header);
  int k = available < n ? available : n;
  if (k <= 0) return 0;
  current -= k;
  for (int i = 0; i < k; ++i) out[i] = reinterpret_cast<void*>(slab[current + i]);
  store_current(slab, cls, static_cast<uint16_t>(current));
  return k;
}

inline int slab_push_batch_owned(uint64_t* slab, unsigned cls, void* const* in, int n) {
  uint64_t header = load_header(slab, cls);
  int current = header_current(header), room = header_end(header) - current;
  int k = room < n ? room : n;
  if (k <= 0) return 0;
  for (int i = 0; i < k; ++i) slab[current + i] = reinterpret_cast<uint64_t>(in[i]);
  store_current(slab, cls, static_cast<uint16_t>(current + k));
  return k;
}

}  // namespace fastmalloc::arch
