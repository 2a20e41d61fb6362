// CPU primitives for architectures without a tuned port: the spin-wait hint.
#pragma once

namespace fastmalloc::arch {

inline void cpu_relax() { __asm__ __volatile__("" ::: "memory"); }

}  // namespace fastmalloc::arch
