// Block checks: how a small block shows that it is free, and what FASTMALLOC_HARDEN adds.
//
// The free signature (always on). free() stores a per-process random secret in the block's
// first word; malloc() checks it is still there and clears it as it hands the block out. A
// block freed twice sits twice in the caches: whichever copy is taken second has lost the
// signature (the first hand-out cleared it, or the program has written there since), so it is
// reported instead of being handed out twice, whichever thread freed it and however late. In a
// span's free list the first word is a link instead: the secret XOR a link tag XOR (1 + offset
// of the next free object), so a copy that reaches the list when the other is already there is
// caught on the push, and a link overwritten after free is caught on the pop instead of being
// followed. The cost is one store in free() and a load and compare in malloc(), on a block that
// was just freed or is about to be used (2-5% on the single-thread benchmarks, see
// bench/RESULTS.md). What it cannot see: a double free whose second free comes after the block
// was handed out again (it then frees the new owner's block, as in every allocator), and a free
// of an object slot that was never handed out.
//
// FASTMALLOC_HARDEN=1 checks the rest, at the cost of the inline fast paths (every call goes
// through the slow path, like FASTMALLOC_STATS=1): an 8-byte canary after every small block (the
// block is carved from the next class up), derived from the secret and the block's address. It
// says which state the block is in: handing the block out writes the live value, free checks
// it and writes the freed value. So the second free() of a block reports the double free
// itself; the free of a block the program wrote past the end of finds neither value, and so
// does a free of a slot never handed out (or it finds the freed value the slot's last use, in
// an earlier life of its span, left there). realloc() and malloc_usable_size() check the
// canary too. The state lives in the block, next to the bytes the program uses, so the checks
// share no cache line between CPUs that the blocks themselves do not share (a bit per object in
// the span did, and took hardened mode from 35M to 19M pairs/s going from one thread to two).
// Large blocks are their own mappings; their double free is caught in every mode (the span is
// gone), an overflow past them is not.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base.h"
#include "size_classes.h"

namespace fastmalloc {

using Word = uint64_t __attribute__((may_alias));

// Random per process; fixed by prepare_block_checks() before the first block is handed out, and
// never changed again (a fork child keeps it, with the heap it copies). Every malloc and free
// reads it: in a line shared with the span-descriptor pool, whose lock and free list each span's
// birth and death write, it cost the other CPUs a miss on their next call each time.
extern FM_HIDDEN CacheLineAlone<uint64_t> g_free_signature;

FM_ALWAYS_INLINE uint64_t free_signature() { return __atomic_load_n(&g_free_signature.value, __ATOMIC_RELAXED); }
FM_ALWAYS_INLINE void mark_free(void* block) { *static_cast<Word*>(block) = free_signature(); }
FM_ALWAYS_INLINE bool has_free_signature(const void* block) { return *static_cast<const Word*>(block) == free_signature(); }
FM_ALWAYS_INLINE void mark_handed_out(void* block) { *static_cast<Word*>(block) = 0; }

// Span free-list links. A span is below 2^21 bytes (255 pages of 8 KiB), so an offset + 1 fits
// in the low 21 bits and the tag marks the rest.
inline constexpr unsigned kLinkOffsetBits = 21;
inline constexpr uint64_t kLinkTag = 0x6c69'6e6b'0000'0000u;  // differs from the signature
static_assert(255 * kPageSize < (size_t{1} << kLinkOffsetBits));

FM_ALWAYS_INLINE bool is_link(const void* block) {
  return ((*static_cast<const Word*>(block) ^ free_signature() ^ kLinkTag) >> kLinkOffsetBits) == 0;
}
FM_ALWAYS_INLINE void encode_link(void* block, uintptr_t span_start, const void* next) {
  uint64_t offset = next == nullptr ? 0 : reinterpret_cast<uintptr_t>(next) - span_start + 1;
  *static_cast<Word*>(block) = free_signature() ^ kLinkTag ^ offset;
}
// False for a word that is no link of a span of class `cls` (the list was overwritten).
bool decode_link(const void* block, uintptr_t span_start, unsigned cls, void** next);

// Free in the eyes of a check that reads the block anyway (realloc, malloc_usable_size).
FM_ALWAYS_INLINE bool looks_free(const void* block) { return has_free_signature(block) || is_link(block); }

// FASTMALLOC_HARDEN, read once by prepare_block_checks(); realloc and the slow paths test it.
extern FM_HIDDEN CacheLineAlone<bool> g_hardened;
FM_ALWAYS_INLINE bool hardened_mode() { return g_hardened.value; }

// Reads the options and fixes the signature, once; the allocation slow paths call it before the
// first block is handed out (every first allocation misses: the per-CPU caches start empty).
// Does not allocate.
void prepare_block_checks();

// Hardened mode carves each request from the class above the one its size picks: consecutive
// classes differ by at least 8 bytes, so the canary always fits after the request, and the inline
// path, which picks the class from the size, needs no test for the mode.
inline constexpr size_t kCanaryBytes = 8;
static_assert(size_class_detail::size_of_class(2) - size_class_detail::size_of_class(1) >= kCanaryBytes);
FM_ALWAYS_INLINE size_t canary_bytes() { return hardened_mode() ? kCanaryBytes : 0; }
// The canary of a block the program holds, and of one it has freed.
FM_ALWAYS_INLINE uint64_t live_canary_for(const void* block) {
  return (free_signature() * 0x9e3779b97f4a7c15u) ^ reinterpret_cast<uintptr_t>(block);
}
inline constexpr uint64_t kFreedCanaryTag = 0x6672'6565'6400'0000u;  // differs from 0
FM_ALWAYS_INLINE uint64_t freed_canary_for(const void* block) { return live_canary_for(block) ^ kFreedCanaryTag; }

enum class CanaryState : uint8_t {
  kLive,   // handed out and not freed since
  kFreed,  // freed and not handed out since
  kOther,  // overwritten (a write past the end of the block), or a slot never handed out
};
FM_ALWAYS_INLINE CanaryState canary_state(const Word* canary, const void* block) {
  uint64_t value = *canary;
  if (value == live_canary_for(block)) return CanaryState::kLive;
  return value == freed_canary_for(block) ? CanaryState::kFreed : CanaryState::kOther;
}

}  // namespace fastmalloc
