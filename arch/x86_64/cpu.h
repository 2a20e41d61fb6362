// CPU primitives for x86-64: the spin-wait hint.
// The rseq critical sections of the per-CPU front end will live beside this file.
#pragma once

namespace fastmalloc::arch {

// PAUSE tells the core we are spinning: it saves power and frees the sibling hyperthread.
inline void cpu_relax() { __builtin_ia32_pause(); }

}  // namespace fastmalloc::arch
