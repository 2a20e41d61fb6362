// The allocator's whole contract with the operating system: address space, futexes, the
// startup environment, and raw output for messages. Nothing above this layer calls mmap,
// syscall or write directly. None of these functions allocates.
#pragma once

#include <cstddef>
#include <csignal>
#include <cstdint>

namespace fastmalloc::os {

// Maps `bytes` (a multiple of 4 KiB) of fresh, zeroed, read-write memory aligned to `align`
// (a power of two, at least 4 KiB). Returns nullptr when the kernel refuses; errno is then
// whatever mmap left (usually ENOMEM).
void* map(size_t bytes, size_t align);

// Maps `bytes` of fresh memory exactly at `addr` (page-aligned) if nothing is mapped there;
// nullptr otherwise, or where the kernel lacks MAP_FIXED_NOREPLACE (before 4.17). errno is kept.
void* map_at(void* addr, size_t bytes);

// Unmaps a range obtained from map() or remap(), or a page-aligned part of one.
void unmap(void* addr, size_t bytes);

// Grows or shrinks a mapping, moving it if needed (mremap). Returns nullptr on failure, leaving
// the old mapping intact.
void* remap(void* addr, size_t old_bytes, size_t new_bytes);

// Tells the kernel it may drop the pages of [addr, addr + bytes); they read as zero afterwards.
// Returns false where madvise was refused (the memory then stays resident, nothing is lost).
bool release(void* addr, size_t bytes);

// How many bytes of [addr, addr + bytes) (page-aligned) are resident (mincore); 0 where the
// kernel refuses. For statistics and tests.
size_t resident_bytes(const void* addr, size_t bytes);

// Faults in [addr, addr + bytes) for writing in one system call (MADV_POPULATE_WRITE, Linux
// 5.14), for a range about to be written whole: one call instead of a page fault per page,
// which on a virtual machine costs about three times as much per page (bench/fault_bench).
// Where the kernel refuses, nothing happens and the writes fault the pages in as usual; a
// kernel without the advice is not asked again.
void populate_for_write(void* addr, size_t bytes);

// Futex wait/wake on a process-private 32-bit word.
void futex_wait(uint32_t* word, uint32_t expected);
void futex_wake(uint32_t* word, int count);

// The calling thread's kernel id (gettid), and whether the thread with id `tid` in this process
// has ended (tgkill with no signal finds none). An id the kernel has given to a new thread since
// reads as not ended, and so does every id where a seccomp filter refuses tgkill.
int current_thread_id();
bool thread_has_ended(int tid);

// Gives the CPU to another runnable thread (sched_yield), or sleeps `microseconds`: for waits
// that spinning would only prolong when threads outnumber CPUs. Neither is a cancellation
// point: a waiting writer holds locks, and a thread cancelled there would unwind out of the
// allocator (built without exceptions: no destructor runs) and leave them held.
void yield_cpu();
void sleep_us(unsigned microseconds);

// Milliseconds on a monotonic clock of tick resolution (CLOCK_MONOTONIC_COARSE: a vDSO read,
// no system call), for decisions that need time only roughly.
uint64_t now_ms();

// Blocks every signal on the calling thread for its lifetime (pthread_sigmask), restoring the
// mask after: for short sections that a handler running on the same thread must not interrupt.
class SignalBlock {
 public:
  SignalBlock();
  ~SignalBlock();
  SignalBlock(const SignalBlock&) = delete;
  SignalBlock& operator=(const SignalBlock&) = delete;

 private:
  sigset_t saved_;
};

// Whether the program runs with more privilege than whoever started it (setuid, setgid, file
// capabilities: the kernel's AT_SECURE), where the environment is not to be trusted.
bool secure_execution();

// Calls `visit(entry)` for each "NAME=value" entry of the startup environment. Works before
// libc has set up `environ` (it then reads /proc/self/environ once). Not thread-safe: the
// options module calls it once, under its own guard.
void for_each_env(void (*visit)(const char* entry, void* ctx), void* ctx);

// Writes all of [text, text + len) to stderr, retrying on EINTR and short writes. Not a
// cancellation point.
void write_stderr(const char* text, size_t len);

// The hardware page size (4 KiB on x86-64), from the auxiliary vector.
size_t hardware_page_size();

// 64 unpredictable bits: getrandom() where the kernel allows it, else the 16 random bytes the
// kernel gave the process (AT_RANDOM) mixed with the clock.
uint64_t random_u64();

}  // namespace fastmalloc::os
