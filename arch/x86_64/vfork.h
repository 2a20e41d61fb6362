// vfork() for the export layer, which binds it to the allocator's hook (export_c.cpp). It must
// be assembly: a C function that made the system call would return twice through one frame, the
// child's return first, then the parent's through the frame the child has since overwritten.
#pragma once

#include <sys/syscall.h>

#define FM_VFORK_STR2(x) #x
#define FM_VFORK_STR(x) FM_VFORK_STR2(x)

// Defines vfork and __vfork (glibc exports both): make the system call, then tail-call
// `returned(raw)` with its raw result (0 in the child; in the parent, once the child has called
// exec or _exit, the child's pid or -errno). What `returned` returns is vfork's result.
//
//   return_address = pop()     the child's calls will reuse this stack slot; registers are
//                              each task's own, so both keep the address in %rdi
//   raw = syscall(SYS_vfork)
//   push(return_address)
//   tail call returned(raw)    its frame starts where vfork's did
#define FM_DEFINE_VFORK(returned)                    \
  asm(".text\n\t"                                    \
      ".globl vfork\n\t"                             \
      ".globl __vfork\n\t"                           \
      ".type vfork, @function\n\t"                   \
      ".type __vfork, @function\n\t"                 \
      ".p2align 4\n"                                 \
      "vfork:\n"                                     \
      "__vfork:\n\t"                                 \
      ".cfi_startproc\n\t"                           \
      "popq %rdi\n\t"                                \
      ".cfi_adjust_cfa_offset -8\n\t"                \
      ".cfi_register %rip, %rdi\n\t"                 \
      "movl $" FM_VFORK_STR(SYS_vfork) ", %eax\n\t"  \
      "syscall\n\t"                                  \
      "pushq %rdi\n\t"                               \
      ".cfi_adjust_cfa_offset 8\n\t"                 \
      ".cfi_rel_offset %rip, 0\n\t"                  \
      "movq %rax, %rdi\n\t"                          \
      "jmp " #returned "\n\t"                        \
      ".cfi_endproc\n\t"                             \
      ".size vfork, . - vfork\n\t"                   \
      ".size __vfork, . - __vfork\n\t");
