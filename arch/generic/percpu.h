// Architectures without an rseq port: there are no critical sections, every fast-path attempt
// misses, and the cache runs in its locked mode (slabs owned under a lock, arch/slab.h).
#pragma once

#include <cstdint>

#include "base.h"
#include "rseq_abi.h"
#include "slab.h"

namespace fastmalloc::arch {

inline constexpr bool kHasRseq = false;
inline constexpr uint32_t kRseqSignature = 0;

template <bool kCountHits>
FM_ALWAYS_INLINE bool percpu_pop(uintptr_t, uint64_t, uint64_t, uintptr_t, uint64_t, void**) { return false; }
template <bool kCountHits>
FM_ALWAYS_INLINE bool percpu_push(uintptr_t, uint64_t, uint64_t, uintptr_t, uint64_t, void*) { return false; }
FM_ALWAYS_INLINE int percpu_pop_batch(uintptr_t, uint64_t, const uint64_t&, const uintptr_t&, uint64_t, void**,
                                      uint64_t) {
  return 0;
}
FM_ALWAYS_INLINE int percpu_push_batch(uintptr_t, uint64_t, const uint64_t&, const uintptr_t&, uint64_t,
                                       void* const*, uint64_t) {
  return 0;
}

FM_ALWAYS_INLINE bool percpu_move_class(uintptr_t, uint64_t, const uint64_t&, const uintptr_t&, uint64_t, uint64_t,
                                        uint64_t, const uint64_t&) {
  return false;
}

}  // namespace fastmalloc::arch
