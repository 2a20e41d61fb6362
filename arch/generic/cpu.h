// CPU facts and primitives for architectures without a tuned port.
#pragma once

namespace fastmalloc::arch {

inline constexpr unsigned kCacheLine = 64;

inline void cpu_relax() { __asm__ __volatile__("" ::: "memory"); }

}  // namespace fastmalloc::arch
