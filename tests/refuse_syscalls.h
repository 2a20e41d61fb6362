/* For tests: a seccomp filter that makes some system calls fail with a chosen errno from now
 * on, as a sandbox would, for the calling thread and the threads and programs it starts. The
 * numbers are x86-64's; calls of any other architecture pass. Usable from C and C++. */
#pragma once

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>

enum { kRefuseSyscallsMax = 8 };

static inline void refuse_syscalls_put(struct sock_filter* filter, int* n, unsigned short code, unsigned char jump_true,
                                       unsigned char jump_false, unsigned int k) {
  filter[*n].code = code;
  filter[*n].jt = jump_true;
  filter[*n].jf = jump_false;
  filter[*n].k = k;
  ++*n;
}

/* Each of numbers[0..count) fails with `error` from now on. 0, or -1 with errno set (E2BIG above
 * kRefuseSyscallsMax calls, or why the kernel refused the filter). */
static inline int refuse_syscalls(const int* numbers, int count, int error) {
  struct sock_filter filter[5 + 2 * kRefuseSyscallsMax];
  struct sock_fprog program;
  int n = 0, i;
  if (count > kRefuseSyscallsMax) {
    errno = E2BIG;
    return -1;
  }
  refuse_syscalls_put(filter, &n, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, arch));
  refuse_syscalls_put(filter, &n, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64);
  refuse_syscalls_put(filter, &n, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
  refuse_syscalls_put(filter, &n, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, nr));
  for (i = 0; i < count; ++i) {
    refuse_syscalls_put(filter, &n, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, (unsigned int)numbers[i]);
    refuse_syscalls_put(filter, &n, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ERRNO | ((unsigned int)error & SECCOMP_RET_DATA));
  }
  refuse_syscalls_put(filter, &n, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
  program.len = (unsigned short)n;
  program.filter = filter;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program);
}
