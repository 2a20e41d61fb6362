// Restartable sequences and membarrier: finding or making the thread's rseq area, and fencing
// other threads' critical sections. The critical sections themselves are in arch/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastmalloc::os {

enum class RseqKind {
  kGlibc,  // glibc registered an area for every thread (glibc 2.35+, rseq not tuned off)
  kOwn,    // glibc did not; each thread registers this library's area on its first slow path
  kNone,   // the kernel refuses rseq (ENOSYS, EPERM from seccomp, ...), or it was turned off
};

struct RseqSetup {
  RseqKind kind;
  intptr_t area_offset;  // from the thread pointer to the area the fast path reads
  uint32_t index_field;  // offset in the area of the index to use: mm_cid or cpu_id
  bool mm_cid;           // index_field is mm_cid
};

// Decides how this process uses rseq; called once, by the calling thread (which, in kOwn mode,
// is registered by the call). `allowed` false forces kNone. In kNone the area offset still
// points at a valid, never-registered area whose indexes read 0xffffffff.
RseqSetup rseq_setup(bool allowed);

// kOwn: registers the calling thread's area if it is not yet; false when the kernel refuses
// (the thread then reads 0xfffffffe as its index and takes the locked path).
bool rseq_register_current_thread();

// membarrier: register for rseq fences (once, at setup); then abort every rseq critical section
// running now on `cpu` (or on every CPU running this process's threads, for cpu < 0), and wait
// until that is done. False when the kernel lacks the command or refuses it.
bool membarrier_rseq_register();
bool membarrier_rseq_fence(int cpu);

// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): a full memory barrier on every CPU that runs one
// of this process's threads now (the others pass one when they are next scheduled), returning
// once all have. Used as the heavy side of RCU and the prwlock. Register once; false where the
// kernel lacks or refuses the command.
bool membarrier_private_register();
bool membarrier_private();

// The number of possible CPUs (/sys/devices/system/cpu/possible): every cpu_id and mm_cid is
// below it.
uint32_t possible_cpus();

// The CPU the caller runs on now (it may move at once), or 0 when unknown.
uint32_t current_cpu();

}  // namespace fastmalloc::os
