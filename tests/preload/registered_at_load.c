/* Run with libfastmalloc.so preloaded. When main() starts, before it allocates anything and
 * before any second thread exists, the process must already be registered for both membarrier
 * commands the allocator uses (its writers' fence and its drains of other CPUs' caches).
 * Registering later, once a second thread runs, makes the kernel wait for an RCU grace period
 * (10-20 ms on the development machine), and that wait used to land inside some thread's first
 * free. An unregistered process gets EPERM from either command; exit code 0 means both worked,
 * 77 that the kernel has neither command (CTest then reports the test skipped, not passed). */
#include <errno.h>
#include <linux/membarrier.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
  long supported = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  int needed = MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ;
  if (supported < 0 || (supported & needed) != needed) {
    printf("this kernel lacks the expedited private membarrier commands\n");
    return 77;
  }
  int fence_errno = syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 ? 0 : errno;
  int rseq_errno = syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0 ? 0 : errno;
  printf("MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s\n", fence_errno == 0 ? "registered" : strerror(fence_errno));
  printf("MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: %s\n", rseq_errno == 0 ? "registered" : strerror(rseq_errno));
  return fence_errno == 0 && rseq_errno == 0 ? 0 : 1;
}
