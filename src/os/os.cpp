// Linux implementation of the os.h contract, on raw system calls and glibc's thin wrappers.
#include "os/os.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <ctime>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base.h"

extern char** environ;

namespace fastmalloc::os {

void* map(size_t bytes, size_t align) {
  if (align <= 4096) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  // Over-map by the alignment, keep the highest aligned part and trim the rest. The kernel
  // hands out addresses top-down (at the top of the highest gap that fits), so keeping the top
  // leaves no hole between this mapping and the one above it (the page heap's growths then
  // adjoin and their free pages merge), and the slack below is where the next mapping goes.
  size_t padded = bytes + align;
  if (padded < bytes) {
    errno = ENOMEM;
    return nullptr;
  }
  void* raw = ::mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw), end = start + padded;
  uintptr_t aligned = (end - bytes) & ~(align - 1);
  if (aligned > start) ::munmap(raw, aligned - start);
  if (end > aligned + bytes) ::munmap(reinterpret_cast<void*>(aligned + bytes), end - (aligned + bytes));
  return reinterpret_cast<void*>(aligned);
}

void* map_at(void* addr, size_t bytes) {
  int saved = errno;
  void* p = ::mmap(addr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p != MAP_FAILED && p != addr) ::munmap(p, bytes);  // an old kernel took addr as a hint
  errno = saved;
  return p == addr ? p : nullptr;
}

void unmap(void* addr, size_t bytes) { ::munmap(addr, bytes); }

void* remap(void* addr, size_t old_bytes, size_t new_bytes) {
  void* p = ::mremap(addr, old_bytes, new_bytes, MREMAP_MAYMOVE);
  return p == MAP_FAILED ? nullptr : p;
}

bool release(void* addr, size_t bytes) { return ::madvise(addr, bytes, MADV_DONTNEED) == 0; }

size_t resident_bytes(const void* addr, size_t bytes) {
  const size_t page = hardware_page_size();
  unsigned char in_core[256];
  size_t resident = 0;
  int saved_errno = errno;
  for (size_t done = 0; done < bytes;) {
    size_t chunk = bytes - done < sizeof(in_core) * page ? bytes - done : sizeof(in_core) * page;
    void* start = const_cast<char*>(static_cast<const char*>(addr) + done);
    if (::mincore(start, chunk, in_core) != 0) break;
    for (size_t i = 0; i < (chunk + page - 1) / page; ++i) resident += (in_core[i] & 1) * page;
    done += chunk;
  }
  errno = saved_errno;
  return resident;
}

namespace {
std::atomic<bool> g_populate_unsupported{false};  // the kernel predates MADV_POPULATE_WRITE
}  // namespace

void populate_for_write(void* addr, size_t bytes) {
  if (g_populate_unsupported.load(std::memory_order_relaxed)) return;
  int saved_errno = errno;
  if (::madvise(addr, bytes, MADV_POPULATE_WRITE) != 0 && errno == EINVAL)
    g_populate_unsupported.store(true, std::memory_order_relaxed);
  errno = saved_errno;
}

void futex_wait(uint32_t* word, uint32_t expected) {
  ::syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake(uint32_t* word, int count) {
  ::syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

SignalBlock::SignalBlock() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &saved_);
}

SignalBlock::~SignalBlock() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }

void yield_cpu() { ::sched_yield(); }

uint64_t now_ms() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

bool secure_execution() { return getauxval(AT_SECURE) != 0; }

int current_thread_id() { return static_cast<int>(::syscall(SYS_gettid)); }

bool thread_has_ended(int tid) {
  int saved_errno = errno;
  bool ended = ::syscall(SYS_tgkill, ::getpid(), tid, 0) != 0 && errno == ESRCH;
  errno = saved_errno;
  return ended;
}

void sleep_us(unsigned microseconds) {
  int saved_errno = errno;
  struct timespec ts = {static_cast<time_t>(microseconds / 1000000), static_cast<long>(microseconds % 1000000) * 1000};
  // The system call glibc's nanosleep() makes, without its cancellation point.
  ::syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &ts, nullptr);
  errno = saved_errno;
}

namespace {

// Copy of /proc/self/environ for the case where the first allocation comes before libc has set
// `environ` (from ld.so). Read once; it lives in .bss, so it costs nothing unless used.
char proc_environ[64 * 1024];
size_t proc_environ_len = 0;
bool proc_environ_read = false;

void read_proc_environ() {
  if (proc_environ_read) return;
  proc_environ_read = true;
  int fd = ::open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  while (proc_environ_len < sizeof proc_environ - 1) {
    ssize_t n = ::read(fd, proc_environ + proc_environ_len, sizeof proc_environ - 1 - proc_environ_len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    proc_environ_len += static_cast<size_t>(n);
  }
  ::close(fd);
  proc_environ[proc_environ_len] = '\0';
}

}  // namespace

void for_each_env(void (*visit)(const char* entry, void* ctx), void* ctx) {
  int saved_errno = errno;
  if (environ != nullptr) {
    for (char** e = environ; *e != nullptr; ++e) visit(*e, ctx);
  } else {
    read_proc_environ();
    for (size_t i = 0; i < proc_environ_len; i += strlen(proc_environ + i) + 1) visit(proc_environ + i, ctx);
  }
  errno = saved_errno;
}

void write_stderr(const char* text, size_t len) {
  int saved_errno = errno;
  while (len > 0) {
    // Not glibc's write(), a cancellation point: a report on a thread with a cancellation
    // pending must stop the process, not end the thread and let the program go on.
    ssize_t n = ::syscall(SYS_write, STDERR_FILENO, text, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text += n;
    len -= static_cast<size_t>(n);
  }
  errno = saved_errno;
}

size_t hardware_page_size() {
  static size_t page = 0;
  if (page == 0) {
    page = getauxval(AT_PAGESZ);
    if (page == 0) page = 4096;
  }
  return page;
}

uint64_t random_u64() {
  uint64_t value = 0;
  int saved_errno = errno;
  long got = syscall(SYS_getrandom, &value, sizeof value, GRND_NONBLOCK);
  errno = saved_errno;
  if (got == static_cast<long>(sizeof value)) return value;
  // AT_RANDOM's bytes also seed glibc's stack protector: mix them one way (multiply and
  // fold) so that our value does not give them away.
  const auto* seed = reinterpret_cast<const uint64_t*>(getauxval(AT_RANDOM));
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  __uint128_t x = static_cast<__uint128_t>((seed != nullptr ? seed[0] ^ seed[1] : 0) ^ static_cast<uint64_t>(now.tv_nsec)) *
                  0x9e3779b97f4a7c15u;
  return static_cast<uint64_t>(x) ^ static_cast<uint64_t>(x >> 64);
}

}  // namespace fastmalloc::os
