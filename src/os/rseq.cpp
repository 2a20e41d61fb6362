// rseq registration and membarrier, on raw system calls.
#include "os/rseq.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "percpu.h"
#include "rseq_abi.h"

// glibc 2.35+ exports where its rseq area is and how big a registration it made; weak so the
// library also loads with an older glibc (both then read as absent).
extern "C" {
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));
}

namespace fastmalloc::os {

namespace {

using arch::RseqArea;

// This library's own area, for when glibc has none. Its indexes start at "uninitialized", which
// no slab index can equal, so a thread's fast path misses until the thread is registered.
__attribute__((tls_model("initial-exec"))) thread_local RseqArea tls_area = {
    0, arch::kRseqCpuIdUninitialized, 0, 0, 0, arch::kRseqCpuIdUninitialized, 0};

intptr_t own_area_offset() {
  return reinterpret_cast<intptr_t>(&tls_area) - reinterpret_cast<intptr_t>(__builtin_thread_pointer());
}

bool register_own_area() {
  if (!arch::kHasRseq) return false;
#ifdef SYS_rseq
  return ::syscall(SYS_rseq, &tls_area, sizeof(RseqArea), 0, arch::kRseqSignature) == 0;
#else
  return false;
#endif
}

}  // namespace

RseqSetup rseq_setup(bool allowed) {
  bool mm_cid = getauxval(FASTMALLOC_AT_RSEQ_FEATURE_SIZE) >= FASTMALLOC_RSEQ_MM_CID_FEATURE_SIZE;
  uint32_t field = mm_cid ? arch::kRseqMmCidOffset : arch::kRseqCpuIdOffset;
  RseqSetup setup{RseqKind::kNone, own_area_offset(), field, mm_cid};
  if (!allowed || !arch::kHasRseq) return setup;
  if (&__rseq_size != nullptr && __rseq_size > 0) {
    setup.kind = RseqKind::kGlibc;
    setup.area_offset = __rseq_offset;
    return setup;
  }
  int saved_errno = errno;
  if (register_own_area()) setup.kind = RseqKind::kOwn;
  errno = saved_errno;
  return setup;
}

bool rseq_register_current_thread() {
  if (tls_area.cpu_id != arch::kRseqCpuIdUninitialized) return tls_area.cpu_id != arch::kRseqCpuIdRegistrationFailed;
  int saved_errno = errno;
  bool ok = register_own_area();
  errno = saved_errno;
  if (!ok) {
    // Still unregistered, so the area is ours to write: mark it so its indexes stay out of
    // range and the thread does not try again.
    tls_area.cpu_id = arch::kRseqCpuIdRegistrationFailed;
    tls_area.mm_cid = arch::kRseqCpuIdRegistrationFailed;
  }
  return ok;
}

namespace {
// One membarrier command; the caller's errno survives a refusal.
bool membarrier(int command, unsigned flags, int cpu) {
  int saved_errno = errno;
  bool ok = ::syscall(SYS_membarrier, command, flags, cpu) == 0;
  errno = saved_errno;
  return ok;
}
}  // namespace

bool membarrier_rseq_register() { return membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0); }

bool membarrier_rseq_fence(int cpu) {
  return cpu < 0 ? membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0)
                 : membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu);
}

bool membarrier_private_register() { return membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0); }

bool membarrier_private() { return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0); }

uint32_t possible_cpus() {
  int saved_errno = errno;
  uint32_t count = 0;
  int fd = ::open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char text[256];
    ssize_t n = ::read(fd, text, sizeof text - 1);
    ::close(fd);
    // A list of ranges, "0-3,8-11": the last number is the highest CPU.
    if (n > 0) {
      text[n] = '\0';
      uint32_t value = 0, highest = 0;
      bool any = false;
      for (char* c = text; *c != '\0'; ++c) {
        if (*c >= '0' && *c <= '9') {
          value = value * 10 + static_cast<uint32_t>(*c - '0');
          any = true;
        } else {
          if (any && value > highest) highest = value;
          value = 0;
          any = false;
        }
      }
      if (any && value > highest) highest = value;
      count = highest + 1;
    }
  }
  errno = saved_errno;
  // Without /sys, assume the kernel's largest common configuration; unused slabs cost only
  // address space.
  return count > 0 ? count : 1024;
}

uint32_t current_cpu() {
  int cpu = sched_getcpu();
  return cpu < 0 ? 0 : static_cast<uint32_t>(cpu);
}

}  // namespace fastmalloc::os
