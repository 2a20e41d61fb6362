/* Runs a program with some system calls refused by a seccomp filter, as a sandbox would:
 *   deny_syscalls [--errno ENOSYS|EPERM] SYSCALL[,SYSCALL...] -- PROGRAM ARGS...
 * SYSCALL is one of rseq, membarrier, madvise. The filter is installed before exec, so the
 * program's libc and allocator meet the refusal from their very first call. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

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
  struct sock_filter filter[16];
  int n = 0;
  filter[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  filter[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  filter[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  filter[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  char names[256];
  snprintf(names, sizeof names, "%s", argv[arg]);
  for (char* name = strtok(names, ","); name != NULL && n < 14; name = strtok(NULL, ",")) {
    int nr = syscall_number(name);
    if (nr < 0) {
      fprintf(stderr, "deny_syscalls: unknown system call %s\n", name);
      return 2;
    }
    filter[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1);
    filter[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)error);
  }
  filter[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog program = {(unsigned short)n, filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
    perror("deny_syscalls: seccomp");
    return 2;
  }
  execvp(argv[arg + 2], argv + arg + 2);
  perror("deny_syscalls: exec");
  return 127;
}
