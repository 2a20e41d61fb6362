// Words every layer uses: inlining and branch hints, and the page geometry the allocator is
// built on (a "page" here is the allocator's 8 KiB unit, not the 4 KiB hardware page).
#pragma once

#include <cstddef>
#include <cstdint>

#define FM_ALWAYS_INLINE inline __attribute__((always_inline))
#define FM_NOINLINE __attribute__((noinline))
#define FM_LIKELY(x) __builtin_expect(!!(x), 1)
#define FM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FM_EXPORT __attribute__((visibility("default")))
// For the declarations of the library's own globals. -fvisibility=hidden covers definitions
// only: a variable merely declared `extern` might live in another shared object, so the compiler
// reaches it through the GOT, an extra instruction on every fast path that reads it.
#define FM_HIDDEN __attribute__((visibility("hidden")))

namespace fastmalloc {

inline constexpr unsigned kPageShift = 13;
inline constexpr size_t kPageSize = size_t{1} << kPageShift;
// User-space addresses on x86-64 (4-level paging) are below 2^47; we map nothing higher.
inline constexpr unsigned kAddressBits = 48;

// A global with a cache line to itself: one that fast paths read on every call, away from
// anything other CPUs write, or one that every CPU writes, away from what they read. The linker
// packs .data and .bss by size and alignment, not by how often each variable is written. (The
// alignment also pads the size to a whole line.)
inline constexpr size_t kCacheLineBytes = 64;
template <class T>
struct alignas(kCacheLineBytes) CacheLineAlone {
  T value;
};

inline constexpr size_t round_up(size_t n, size_t align) { return (n + align - 1) & ~(align - 1); }
inline constexpr bool is_power_of_two(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

}  // namespace fastmalloc
