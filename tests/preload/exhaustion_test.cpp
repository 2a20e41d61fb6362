// Running out of address space (RLIMIT_AS): every call returns NULL with ENOMEM, live blocks
// keep their contents, and allocation works again once memory is freed.
#include <catch2/catch.hpp>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

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
