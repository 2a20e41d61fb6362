/* Runs a program with some system calls refused by a seccomp filter, as a sandbox would:
 *   deny_syscalls [--errno ENOSYS|EPERM] SYSCALL[,SYSCALL...] -- PROGRAM ARGS...
 * SYSCALL is one of rseq, membarrier, madvise. The filter is installed before exec, so the
 * program's libc and allocator meet the refusal from their very first call. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../refuse_syscalls.h"

static int syscall_number(const char* name) {
  if (strcmp(name, "rseq") == 0) return SYS_rseq;
  if (strcmp(name, "membarrier") == 0) return SYS_membarrier;
  if (strcmp(name, "madvise") == 0) return SYS_madvise;
  return -1;
}

int main(int argc, char** argv) {
  int error = EPERM, arg = 1;
  if (arg + 1 < argc && strcmp(argv[arg], "--errno") == 0) {
    error = strcmp(argv[arg + 1], "ENOSYS") == 0 ? ENOSYS : EPERM;
    arg += 2;
  }
  if (arg + 2 >= argc || strcmp(argv[arg + 1], "--") != 0) {
    fprintf(stderr, "usage: deny_syscalls [--errno ENOSYS|EPERM] rseq[,membarrier,madvise] -- PROGRAM ARGS...\n");
    return 2;
  }
  int numbers[kRefuseSyscallsMax], count = 0;
  char names[256];
  snprintf(names, sizeof names, "%s", argv[arg]);
  for (char* name = strtok(names, ","); name != NULL; name = strtok(NULL, ",")) {
    int nr = syscall_number(name);
    if (nr < 0) {
      fprintf(stderr, "deny_syscalls: unknown system call %s\n", name);
      return 2;
    }
    if (count == kRefuseSyscallsMax) {
      fprintf(stderr, "deny_syscalls: at most %d system calls\n", kRefuseSyscallsMax);
      return 2;
    }
    numbers[count++] = nr;
  }
  if (refuse_syscalls(numbers, count, error) != 0) {
    perror("deny_syscalls: seccomp");
    return 2;
  }
  execvp(argv[arg + 2], argv + arg + 2);
  perror("deny_syscalls: exec");
  return 127;
}
