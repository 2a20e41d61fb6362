// Running out of memory: the address space limited (RLIMIT_AS), or mmap refused outright (a
// seccomp filter). Every call returns NULL with ENOMEM, live blocks keep their contents, and
// allocation works again once memory is freed.
#include <catch2/catch.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../refuse_syscalls.h"
#include "preload_support.h"

namespace {

void* (*volatile malloc_fn)(size_t) = malloc;

size_t current_address_space() {
  FILE* f = fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f != nullptr) {
    if (fscanf(f, "%lu", &pages) != 1) pages = 0;
    fclose(f);
  }
  return pages * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// In a child: limit the address space to what is mapped now plus `headroom`, fill it with
// blocks of `size`, and check the contract. Exit code 0 means every check held.
int exhaust(size_t size, size_t headroom) {
  constexpr size_t kMaxBlocks = 1 << 20;
  // Bookkeeping comes from outside the heap: the heap is what runs out.
  void** blocks = static_cast<void**>(
      mmap(nullptr, kMaxBlocks * sizeof(void*), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (blocks == MAP_FAILED) return 10;
  struct rlimit limit {current_address_space() + headroom, RLIM_INFINITY};
  if (setrlimit(RLIMIT_AS, &limit) != 0) return 11;

  size_t count = 0;
  for (;;) {
    if (count == kMaxBlocks) return 12;  // never ran out: the limit did not bite
    errno = 0;
    void* p = malloc_fn(size);
    if (p == nullptr) {
      if (errno != ENOMEM) return 13;
      break;
    }
    memset(p, static_cast<int>(count & 0xff), size < 64 ? size : 64);
    blocks[count++] = p;
  }
  if (count == 0) return 14;
  // Every other call fails the same way for this size, or for one too big for what is left
  // (other size classes may still have free objects in their spans).
  constexpr size_t kTooBig = 64 << 20;
  errno = 0;
  if (calloc(1, size) != nullptr || errno != ENOMEM) return 15;
  errno = 0;
  if (realloc(blocks[0], kTooBig) != nullptr || errno != ENOMEM) return 16;
  void* aligned = nullptr;
  if (posix_memalign(&aligned, 1 << 20, kTooBig) != ENOMEM) return 17;
  if (operator new(size, std::nothrow) != nullptr) return 18;
  bool threw = false;
  try {
    void* volatile q = operator new(kTooBig);
    (void)q;
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  if (!threw) return 19;
  // Live blocks are intact.
  for (size_t i = 0; i < count; ++i) {
    const unsigned char* p = static_cast<const unsigned char*>(blocks[i]);
    for (size_t j = 0; j < (size < 64 ? size : 64); ++j)
      if (p[j] != (i & 0xff)) return 20;
  }
  // Free half; allocation works again.
  for (size_t i = 0; i < count; i += 2) free(blocks[i]);
  void* again = malloc_fn(size);
  if (again == nullptr) return 21;
  memset(again, 1, size);
  free(again);
  for (size_t i = 1; i < count; i += 2) free(blocks[i]);
  return 0;
}

}  // namespace

TEST_CASE("address-space exhaustion: small blocks") {
  for (size_t size : {size_t{64}, size_t{4000}, size_t{200000}}) {
    INFO(size);
    ChildResult r = run_in_child([size] { _exit(exhaust(size, 16 << 20)); });
    INFO(r.err);
    REQUIRE(r.exited);
    REQUIRE(r.exit_code == 0);
  }
}

TEST_CASE("address-space exhaustion: large blocks") {
  for (size_t size : {size_t{1} << 20, size_t{16} << 20}) {
    INFO(size);
    ChildResult r = run_in_child([size] { _exit(exhaust(size, 256 << 20)); });
    INFO(r.err);
    REQUIRE(r.exited);
    REQUIRE(r.exit_code == 0);
  }
}

namespace {

// Fills memory with a rotation of small, medium and large blocks until a call fails; checks the
// failure, the survivors, and that freeing lets allocation go on. Exit code 0: all held.
int fill_mixed_and_recover() {
  constexpr size_t kMaxBlocks = 1 << 20;
  constexpr size_t kSizes[] = {48, 4000, 100000, 1 << 20, 16 << 20};
  void** blocks = static_cast<void**>(
      mmap(nullptr, kMaxBlocks * sizeof(void*), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (blocks == MAP_FAILED) return 10;
  size_t count = 0;
  for (;;) {
    if (count == kMaxBlocks) return 12;
    size_t size = kSizes[count % 5];
    errno = 0;
    void* p = malloc_fn(size);
    if (p == nullptr) {
      if (errno != ENOMEM) return 13;
      break;
    }
    memset(p, static_cast<int>(count & 0xff), 48);
    blocks[count++] = p;
  }
  if (count < 5) return 14;
  for (size_t i = 0; i < count; ++i) {
    const unsigned char* p = static_cast<const unsigned char*>(blocks[i]);
    for (size_t j = 0; j < 48; ++j)
      if (p[j] != (i & 0xff)) return 20;
  }
  // Give everything back; the same rotation then fits again, all of it. The kernel need not
  // place the blocks where it did: they can reach a 2 GiB region the first fill did not, whose
  // span-map leaf (2 MiB) the limit must then leave room for.
  for (size_t i = 0; i < count; ++i) free(blocks[i]);
  struct rlimit limit;
  if (getrlimit(RLIMIT_AS, &limit) != 0) return 15;
  limit.rlim_cur += size_t{4} << 20;
  if (setrlimit(RLIMIT_AS, &limit) != 0) return 16;
  for (size_t i = 0; i < count; ++i) {
    blocks[i] = malloc_fn(kSizes[i % 5]);
    if (blocks[i] == nullptr) return 21;
  }
  for (size_t i = 0; i < count; ++i) free(blocks[i]);
  return 0;
}

// From here on every mmap (and mremap) fails with ENOMEM: memory the allocator already holds is
// all there is.
bool refuse_mmap() {
  const int refused[] = {SYS_mmap, SYS_mremap};
  return refuse_syscalls(refused, 2, ENOMEM) == 0;
}

}  // namespace

TEST_CASE("an address space of 1 GiB: small and large blocks fail cleanly, and work again once freed") {
  ChildResult r = run_in_child([] {
    if (current_address_space() > (768u << 20)) _exit(30);  // the limit would not leave room
    struct rlimit limit {size_t{1} << 30, RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(11);
    _exit(fill_mixed_and_recover());
  });
  INFO(r.err);
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
}

TEST_CASE("near an address-space limit the heap still grows by what a block needs") {
  // The heap grows by an eighth of itself; where that no longer fits, a growth of what the
  // request needs must still be tried, or malloc fails with up to that eighth still to be had.
  ChildResult r = run_in_child([] {
    constexpr size_t kMaxBlocks = 1 << 17, kSize = 4000;
    void** blocks = static_cast<void**>(
        mmap(nullptr, kMaxBlocks * sizeof(void*), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (blocks == MAP_FAILED) _exit(10);
    const size_t limit = current_address_space() + (size_t{256} << 20);
    struct rlimit rl {limit, RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(11);
    size_t count = 0;
    while (count < kMaxBlocks && (blocks[count] = malloc_fn(kSize)) != nullptr) ++count;
    if (count == kMaxBlocks) _exit(12);  // the limit did not bite
    size_t used = current_address_space();
    // An eighth of the heap is 25-32 MiB by then; 1 MiB is the smallest growth.
    if (used > limit || limit - used > (size_t{2} << 20)) _exit(13);
    for (size_t i = 0; i < count; ++i) free(blocks[i]);
    _exit(0);
  });
  INFO(r.err);
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
}

TEST_CASE("mmap refused: every call fails with ENOMEM, blocks survive, freed memory is used again") {
  ChildResult r = run_in_child([] {
    // Small blocks freed before the refusal are all that small allocations can then use.
    constexpr int kWarm = 2000, kMaxHeld = 1 << 18;  // 1 GiB of blocks: mmap was not refused
    void* warm[kWarm];
    for (void*& p : warm) p = malloc_fn(4000);
    for (void* p : warm) free(p);
    void** held = static_cast<void**>(
        mmap(nullptr, kMaxHeld * sizeof(void*), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (held == MAP_FAILED || !refuse_mmap()) _exit(31);
    int got = 0;
    for (;;) {
      errno = 0;
      void* p = malloc_fn(4000);
      if (p == nullptr) {
        if (errno != ENOMEM) _exit(13);
        break;
      }
      memset(p, got & 0xff, 4000);
      if (got == kMaxHeld) _exit(12);
      held[got++] = p;
    }
    if (got < kWarm) _exit(14);  // the freed blocks were not all reused
    errno = 0;
    if (malloc_fn(4 << 20) != nullptr || errno != ENOMEM) _exit(15);  // a large block: its own mmap
    errno = 0;
    if (realloc(held[0], 8 << 20) != nullptr || errno != ENOMEM) _exit(16);
    for (int i = 0; i < got; ++i) {
      const unsigned char* p = static_cast<const unsigned char*>(held[i]);
      if (p[0] != (i & 0xff) || p[3999] != (i & 0xff)) _exit(20);
    }
    free(held[0]);
    void* again = malloc_fn(4000);
    if (again == nullptr) _exit(21);
    _exit(0);
  });
  INFO(r.err);
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
}
