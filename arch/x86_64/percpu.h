// The fast path's two critical sections: pop an object from, and push one to, the current CPU's
// slab (layout in arch/slab.h), as restartable sequences. If the thread is preempted, migrated
// or signalled between the start and the commit, the kernel moves it to the abort handler, which
// reports a miss; the caller's slow path then retries. No lock, no atomic instruction, no fence.
//
// Each section is described by a struct rseq_cs in the __rseq_cs section (and listed in
// __rseq_cs_ptr_array, where debuggers look for them); its abort handler sits out of line in
// __rseq_failure, behind the 4-byte signature the thread's rseq area was registered with,
// encoded as the operand of a ud1 instruction so a stray jump there traps.
#pragma once

#include <cstdint>

#include "base.h"
#include "rseq_abi.h"
#include "slab.h"

// The 4 bytes before every abort handler; the same value glibc registers with on x86.
#define FASTMALLOC_RSEQ_SIG 0x53053053

#define FM_STR2(x) #x
#define FM_STR(x) FM_STR2(x)

// The descriptor of the section from label 1 to label 2 with its abort handler at label 4.
#define FM_RSEQ_DESCRIPTOR                       \
  ".pushsection __rseq_cs, \"aw\"\n\t"           \
  ".balign 32\n\t"                               \
  "5:\n\t"                                       \
  ".long 0, 0\n\t"                               \
  ".quad 1f, 2f - 1f, 4f\n\t"                    \
  ".popsection\n\t"                              \
  ".pushsection __rseq_cs_ptr_array, \"aw\"\n\t" \
  ".quad 5b\n\t"                                 \
  ".popsection\n\t"

#define FM_RSEQ_ABORT(label)                                  \
  ".pushsection __rseq_failure, \"ax\"\n\t"                  \
  ".byte 0x0f, 0xb9, 0x3d\n\t"                               \
  ".long " FM_STR(FASTMALLOC_RSEQ_SIG) "\n\t"                \
  "4:\n\t"                                                   \
  "jmp %l[" #label "]\n\t"                                   \
  ".popsection\n\t"

// Both sections are `asm volatile goto`: an asm goto with outputs is not implicitly volatile,
// and the push's outputs are scratch registers nobody reads, so without `volatile` the compiler
// deletes the whole push (it did).

// The start every section shares: publish the descriptor, then (label 1, the section's start)
// read the index, check it and leave the slab's address in %[scratch]. Each section then loads
// the bound it checks, and only after it the class's `current` (arch/slab.h says why in that
// order, and why not as one 64-bit load).
#define FM_RSEQ_SLAB                                                         \
  "leaq 5b(%%rip), %[scratch]\n\t"                                           \
  "movq %[scratch], %%fs:" FM_STR(FASTMALLOC_RSEQ_CS_OFFSET) "(%[rseq])\n\t"  \
  "1:\n\t"                                                                   \
  "movl %%fs:(%[rseq], %[cpu_field]), %k[scratch]\n\t"                       \
  "cmpq %[num_slabs], %[scratch]\n\t"                                        \
  "jae %l[miss]\n\t"                                                         \
  "shlq $" FM_STR(FASTMALLOC_SLAB_SHIFT) ", %[scratch]\n\t"                  \
  "addq %[slabs], %[scratch]\n\t"

// The bound and then `current` of class %[cls], each zero-extended into a register.
#define FM_LOAD_BEGIN(reg) "movzwl 4(%[scratch], %[cls], 8), %k[" #reg "]\n\t"
#define FM_LOAD_END(reg) "movzwl 6(%[scratch], %[cls], 8), %k[" #reg "]\n\t"
#define FM_LOAD_CURRENT "movzwl (%[scratch], %[cls], 8), %k[current]\n\t"

// A test build (FASTMALLOC_TEST_STALLS, CMakeLists.txt) holds about one section in 1024
// up between its load of the bound and its load of `current` (and the push also between its two
// loads of `current`), for about 2,000 pause instructions (tens of microseconds), without
// leaving the CPU: what a vCPU the host does not run looks like to the guest, no preemption and
// so no abort. The per-CPU stress test run on that build hands blocks out twice if the loads
// are taken in the wrong order. Empty otherwise.
#ifdef FASTMALLOC_TEST_STALLS
#define FM_STALL_BETWEEN_LOADS \
  "rdtsc\n\t"                 \
  "testl $0x3ff, %%eax\n\t"    \
  "jnz 7f\n\t"                \
  "movl $2000, %%eax\n\t"      \
  "6:\n\t"                    \
  "pause\n\t"                 \
  "decl %%eax\n\t"             \
  "jnz 6b\n\t"                \
  "7:\n\t"
#define FM_STALL_CLOBBERS , "rax", "rdx"
#else
#define FM_STALL_BETWEEN_LOADS ""
#define FM_STALL_CLOBBERS
#endif

namespace fastmalloc::arch {

inline constexpr bool kHasRseq = true;
inline constexpr uint32_t kRseqSignature = FASTMALLOC_RSEQ_SIG;

// rseq: the offset of the thread's rseq area from the thread pointer (the area is addressed
// %fs-relative, so the thread pointer itself is never loaded). cpu_field: offset in the area of
// the index to use (cpu_id or mm_cid).
// slabs: base of the slab array, num_slabs entries. Returns false on a miss: the slab is empty,
// not set up, stopped, or the index is out of range (an unregistered area reads 0xffffffff, and
// num_slabs is 0 where the caller wants every attempt to miss), or the section was aborted.
// kCountHits adds the slab's hit counter to the section; the inline fast paths leave it out (it
// costs about 7% of a malloc/free pair) and statistics runs use the counting sections instead.
//
//   rseq->rseq_cs = &descriptor
// 1:cpu = *(uint32_t*)(rseq + cpu_field)
//   if (cpu >= num_slabs) miss
//   slab = slabs + (cpu << kSlabShift)
//   begin = slab[cls].begin                   (the bound first, then current)
//   current = slab[cls].current
//   if (current <= begin) miss
//   item = slab[current - 1]
//   if (kCountHits) slab.alloc_hits++
//   slab[cls].current = current - 1          <- commit
// 2:
#define FM_PERCPU_POP(count)                                                                           \
  asm volatile goto(FM_RSEQ_DESCRIPTOR FM_RSEQ_SLAB                                                    \
                    FM_LOAD_BEGIN(item) FM_STALL_BETWEEN_LOADS FM_LOAD_CURRENT                         \
                    "cmpl %k[item], %k[current]\n\t"                                                   \
                    "jbe %l[miss]\n\t"                                                                 \
                    "movq -8(%[scratch], %[current], 8), %[item]\n\t" count                            \
                    "decl %k[current]\n\t"                                                             \
                    "movw %w[current], (%[scratch], %[cls], 8)\n\t"                                    \
                    "2:\n\t" FM_RSEQ_ABORT(miss)                                                       \
                    : [scratch] "=&r"(scratch), [current] "=&r"(current), [item] "=&r"(item)            \
                    : [rseq] "r"(rseq), [cpu_field] "r"(cpu_field), [num_slabs] "r"(num_slabs),         \
                      [slabs] "r"(slabs), [cls] "r"(cls)                                                \
                    : "memory", "cc" FM_STALL_CLOBBERS                                                  \
                    : miss)

template <bool kCountHits>
FM_ALWAYS_INLINE bool percpu_pop(uintptr_t rseq, uint64_t cpu_field, uint64_t num_slabs, uintptr_t slabs,
                                 uint64_t cls, void** out) {
  uint64_t scratch, current;
  void* item;
  if constexpr (kCountHits) FM_PERCPU_POP("incq (%[scratch])\n\t");
  else FM_PERCPU_POP("");
  *out = item;
  return true;
miss:
  return false;
}

// The same for a push of `item`. Returns false on a miss (full, not set up, stopped, out of
// range, aborted); the item was then not pushed.
//
//   rseq->rseq_cs = &descriptor
// 1:cpu = *(uint32_t*)(rseq + cpu_field)
//   if (cpu >= num_slabs) miss
//   slab = slabs + (cpu << kSlabShift)
//   end = slab[cls].end                       (the bound first, as in the pop)
//   if (slab[cls].current >= end) miss
//   current = slab[cls].current               (again: the same value, see below)
//   slab[current] = item                      (above current: invisible until the commit)
//   if (kCountHits) slab.free_hits++
//   slab[cls].current = current + 1          <- commit
// 2:
// `end` is loaded into the register that then takes `current`, so the push needs no register
// more than the pop and free's fast path saves none. The second load of `current` reads what
// the first did: only a commit on this slab or a drain's reset changes it, and neither can land
// between the two loads without aborting the section (a commit there means this thread was
// preempted; a reset comes after a stop and a fence, which abort a section that read the
// bounds from before the stop, and one that read them after the restart reads the reset value
// both times).
#define FM_PERCPU_PUSH(count)                                                                          \
  asm volatile goto(FM_RSEQ_DESCRIPTOR FM_RSEQ_SLAB                                                    \
                    FM_LOAD_END(current) FM_STALL_BETWEEN_LOADS                                        \
                    "cmpw (%[scratch], %[cls], 8), %w[current]\n\t"                                    \
                    "jbe %l[miss]\n\t"                                                                 \
                    FM_STALL_BETWEEN_LOADS FM_LOAD_CURRENT                                             \
                    "movq %[item], (%[scratch], %[current], 8)\n\t" count                              \
                    "incl %k[current]\n\t"                                                             \
                    "movw %w[current], (%[scratch], %[cls], 8)\n\t"                                    \
                    "2:\n\t" FM_RSEQ_ABORT(miss)                                                       \
                    : [scratch] "=&r"(scratch), [current] "=&r"(current)                                \
                    : [rseq] "r"(rseq), [cpu_field] "r"(cpu_field), [num_slabs] "r"(num_slabs),         \
                      [slabs] "r"(slabs), [cls] "r"(cls), [item] "r"(item)                              \
                    : "memory", "cc" FM_STALL_CLOBBERS                                                  \
                    : miss)

template <bool kCountHits>
FM_ALWAYS_INLINE bool percpu_push(uintptr_t rseq, uint64_t cpu_field, uint64_t num_slabs, uintptr_t slabs,
                                  uint64_t cls, void* item) {
  uint64_t scratch, current;
  if constexpr (kCountHits) FM_PERCPU_PUSH("incq " FM_STR(FASTMALLOC_SLAB_FREE_HITS_OFFSET) "(%[scratch])\n\t");
  else FM_PERCPU_PUSH("");
  return true;
miss:
  return false;
}

// Batch moves for the slow paths: up to n objects between the slab and an array, in one section
// (refill pushes a batch in, overflow pops one out). They count no hits: the program's calls are
// counted by the single-object sections. Return how many moved; 0 on a miss (empty or full,
// not set up, stopped, out of range, aborted). The array is the caller's, so writing it before
// the commit is harmless if the section aborts.
//
// pop_batch:                                  push_batch:
//   rseq->rseq_cs = &descriptor                 (the same start)
// 1:cpu, slab, begin, current as in percpu_pop  k = end - current (end loaded first)
//   k = current - begin                         if (k <= 0) miss; k = min(k, n)
//   if (k <= 0) miss; k = min(k, n)             for i in 0..k-1: slab[current + i] = in[i]
//   current -= k                                slab[cls].current = current + k   <- commit
//   for i in 0..k-1: out[i] = slab[current + i]
//   slab[cls].current = current                <- commit
// 2:
FM_ALWAYS_INLINE int percpu_pop_batch(uintptr_t rseq, uint64_t cpu_field, const uint64_t& num_slabs,
                                      const uintptr_t& slabs, uint64_t cls, void** out, uint64_t n) {
  uint64_t scratch, current, k, index, item, from;
  asm volatile goto(FM_RSEQ_DESCRIPTOR
           FM_RSEQ_SLAB
           FM_LOAD_BEGIN(item)
           FM_STALL_BETWEEN_LOADS
           FM_LOAD_CURRENT
           "movq %[current], %[k]\n\t"
           "subq %[item], %[k]\n\t"
           "jle %l[miss]\n\t"
           "cmpq %[n], %[k]\n\t"
           "cmovaq %[n], %[k]\n\t"
           "subq %[k], %[current]\n\t"
           "leaq (%[scratch], %[current], 8), %[from]\n\t"
           "xorl %k[index], %k[index]\n\t"
           "3:\n\t"
           "movq (%[from], %[index], 8), %[item]\n\t"
           "movq %[item], (%[out], %[index], 8)\n\t"
           "incq %[index]\n\t"
           "cmpq %[k], %[index]\n\t"
           "jb 3b\n\t"
           "movw %w[current], (%[scratch], %[cls], 8)\n\t"
           "2:\n\t"
           FM_RSEQ_ABORT(miss)
           : [scratch] "=&r"(scratch), [current] "=&r"(current), [k] "=&r"(k), [index] "=&r"(index),
             [item] "=&r"(item), [from] "=&r"(from)
           : [rseq] "r"(rseq), [cpu_field] "r"(cpu_field), [num_slabs] "m"(num_slabs), [slabs] "m"(slabs),
             [cls] "r"(cls), [out] "r"(out), [n] "r"(n)
           : "memory", "cc" FM_STALL_CLOBBERS
           : miss);
  return static_cast<int>(k);
miss:
  return 0;
}

FM_ALWAYS_INLINE int percpu_push_batch(uintptr_t rseq, uint64_t cpu_field, const uint64_t& num_slabs,
                                       const uintptr_t& slabs, uint64_t cls, void* const* in, uint64_t n) {
  uint64_t scratch, current, k, index, item, to;
  asm volatile goto(FM_RSEQ_DESCRIPTOR
           FM_RSEQ_SLAB
           FM_LOAD_END(k)
           FM_STALL_BETWEEN_LOADS
           FM_LOAD_CURRENT
           "subq %[current], %[k]\n\t"
           "jle %l[miss]\n\t"
           "cmpq %[n], %[k]\n\t"
           "cmovaq %[n], %[k]\n\t"
           "leaq (%[scratch], %[current], 8), %[to]\n\t"
           "xorl %k[index], %k[index]\n\t"
           "3:\n\t"
           "movq (%[in], %[index], 8), %[item]\n\t"
           "movq %[item], (%[to], %[index], 8)\n\t"
           "incq %[index]\n\t"
           "cmpq %[k], %[index]\n\t"
           "jb 3b\n\t"
           "addq %[k], %[current]\n\t"
           "movw %w[current], (%[scratch], %[cls], 8)\n\t"
           "2:\n\t"
           FM_RSEQ_ABORT(miss)
           : [scratch] "=&r"(scratch), [current] "=&r"(current), [k] "=&r"(k), [index] "=&r"(index),
             [item] "=&r"(item), [to] "=&r"(to)
           : [rseq] "r"(rseq), [cpu_field] "r"(cpu_field), [num_slabs] "m"(num_slabs), [slabs] "m"(slabs),
             [cls] "r"(cls), [in] "r"(in), [n] "r"(n)
           : "memory", "cc" FM_STALL_CLOBBERS
           : miss);
  return static_cast<int>(k);
miss:
  return 0;
}

// Moves a class's objects to another run of slots and gives the class new bounds there, in one
// section: how a class leaves the shared nursery for its own room when it grows, and (moving
// nothing from the all-zero header, from_bounds 0) how a slab gets its first headers
// (cpu_cache.cpp).
// The caller holds the control lock of slab `index`, so nothing but critical sections on that
// slab's CPU changes it meanwhile; the section misses if the thread runs on another slab, or the
// class's bounds are no longer `from_bounds` (begin | end << 16: stopped, or moved). The slots
// at `to` belong to no class until the commit, so writing them before it is harmless.
//
//   rseq->rseq_cs = &descriptor
// 1:cpu = *(uint32_t*)(rseq + cpu_field)
//   if (cpu != index) miss
//   slab = slabs + (cpu << kSlabShift)
//   header = slab[cls]
//   if (header >> 32 != from_bounds) miss
//   from = &slab[begin(from_bounds)], end = &slab[current(header)], dest = &slab[to]
//   while (from < end) *dest++ = *from++
//   slab[cls] = (dest - slab) | to_bounds << 32    <- commit (one 64-bit store: current, begin, end)
// 2:
FM_ALWAYS_INLINE bool percpu_move_class(uintptr_t rseq, uint64_t cpu_field, const uint64_t& index,
                                        const uintptr_t& slabs, uint64_t cls, uint64_t from_bounds, uint64_t to,
                                        const uint64_t& to_bounds_shifted) {
  uint64_t scratch, header, current, from, dest, item;
  asm volatile goto(FM_RSEQ_DESCRIPTOR
           "leaq 5b(%%rip), %[scratch]\n\t"
           "movq %[scratch], %%fs:" FM_STR(FASTMALLOC_RSEQ_CS_OFFSET) "(%[rseq])\n\t"
           "1:\n\t"
           "movl %%fs:(%[rseq], %[cpu_field]), %k[scratch]\n\t"
           "cmpq %[index], %[scratch]\n\t"
           "jne %l[miss]\n\t"
           "shlq $" FM_STR(FASTMALLOC_SLAB_SHIFT) ", %[scratch]\n\t"
           "addq %[slabs], %[scratch]\n\t"
           "movq (%[scratch], %[cls], 8), %[header]\n\t"
           "movzwl %w[header], %k[current]\n\t"
           "shrq $32, %[header]\n\t"
           "cmpq %[from_bounds], %[header]\n\t"
           "jne %l[miss]\n\t"
           "movzwl %w[header], %k[header]\n\t"
           "leaq (%[scratch], %[header], 8), %[from]\n\t"
           "leaq (%[scratch], %[current], 8), %[current]\n\t"
           "leaq (%[scratch], %[to], 8), %[dest]\n\t"
           "cmpq %[current], %[from]\n\t"
           "jae 6f\n\t"
           "3:\n\t"
           "movq (%[from]), %[item]\n\t"
           "movq %[item], (%[dest])\n\t"
           "addq $8, %[from]\n\t"
           "addq $8, %[dest]\n\t"
           "cmpq %[current], %[from]\n\t"
           "jb 3b\n\t"
           "6:\n\t"
           "subq %[scratch], %[dest]\n\t"
           "shrq $3, %[dest]\n\t"
           "orq %[to_bounds], %[dest]\n\t"
           "movq %[dest], (%[scratch], %[cls], 8)\n\t"
           "2:\n\t"
           FM_RSEQ_ABORT(miss)
           : [scratch] "=&r"(scratch), [header] "=&r"(header), [current] "=&r"(current),
             [from] "=&r"(from), [dest] "=&r"(dest), [item] "=&r"(item)
           : [rseq] "r"(rseq), [cpu_field] "r"(cpu_field), [index] "m"(index), [slabs] "m"(slabs),
             [cls] "r"(cls), [from_bounds] "r"(from_bounds), [to] "r"(to), [to_bounds] "m"(to_bounds_shifted)
           : "memory", "cc"
           : miss);
  return true;
miss:
  return false;
}

}  // namespace fastmalloc::arch
