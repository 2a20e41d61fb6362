// Pointers fastmalloc never handed out stop the process with one line naming the call and the
// address, then abort(): never a segfault, never silent corruption.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <new>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <thread>
#include <vector>

#include "preload_support.h"

namespace {

void (*volatile free_fn)(void*) = free;
void* (*volatile realloc_fn)(void*, size_t) = realloc;
size_t (*volatile usable_fn)(void*) = malloc_usable_size;

int static_object[64];

std::string hex(const void* p) {
  char buf[32];
  snprintf(buf, sizeof buf, "%#lx", reinterpret_cast<unsigned long>(p));
  return buf;
}

// Runs `misuse` on `p` in a child and checks it died by SIGABRT after exactly one line that
// names the call (one of `calls`, separated by '|') and the address.
template <class F>
void expect_report(const std::string& calls, void* p, F misuse) {
  ChildResult r = run_in_child([&] { misuse(p); });
  INFO("stderr: " << r.err);
  REQUIRE(r.signal == SIGABRT);
  bool named = false;
  for (size_t from = 0; from <= calls.size();) {
    size_t bar = calls.find('|', from);
    if (bar == std::string::npos) bar = calls.size();
    std::string expected = "fastmalloc: " + calls.substr(from, bar - from) + "(): ";
    named = named || r.err.rfind(expected, 0) == 0;
    from = bar + 1;
  }
  REQUIRE(named);
  REQUIRE(r.err.find(hex(p)) != std::string::npos);
  REQUIRE(r.err.find('\n') == r.err.size() - 1);  // one line
}

// The child runs on one CPU, so every copy of a block lands in the same per-CPU cache and the
// allocations that follow reach it, whatever the rseq or membarrier mode.
void pin_to_one_cpu() {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);
    return;
  }
}

// Allocates blocks of `size` (and keeps them) until the allocator has handed out, or refused
// to hand out, every free block of that size class: a copy of a doubly freed block among them
// is reported.
void allocate_everything_of(size_t size) {
  for (int i = 0; i < 200000; ++i)
    if (malloc(size) == nullptr) break;
}

void check_all_calls(void* p) {
  expect_report("free", p, [](void* q) { free_fn(q); });
  expect_report("realloc", p, [](void* q) { realloc_fn(q, 100); });
  expect_report("malloc_usable_size", p, [](void* q) { usable_fn(q); });
}

}  // namespace

TEST_CASE("a stack address is reported") {
  int local[16];
  check_all_calls(local + 3);
}

TEST_CASE("a static address is reported") { check_all_calls(static_object + 5); }

// The report's write is a raw system call: glibc's write() is a cancellation point, where a
// thread with a cancellation pending would be cancelled instead of stopping the process, and
// the program would go on after the misuse (with whatever lock the report was made under).
TEST_CASE("a misuse stops the process on a thread with a cancellation pending") {
  expect_report("free", static_object + 9, [](void* p) {
    pthread_t thread;
    pthread_create(
        &thread, nullptr,
        [](void* q) -> void* {
          pthread_cancel(pthread_self());  // deferred: acts at the next cancellation point
          free_fn(q);
          return nullptr;
        },
        p);
    pthread_join(thread, nullptr);
  });
}

TEST_CASE("wild addresses are reported, not dereferenced into a segfault") {
  check_all_calls(reinterpret_cast<void*>(0x10));
  check_all_calls(reinterpret_cast<void*>(0x7fff'dead'b000));
  check_all_calls(reinterpret_cast<void*>(0xdead'beef'dead'beef));
}

TEST_CASE("interior pointers of small and large blocks are reported") {
  char* small = static_cast<char*>(malloc(100));
  check_all_calls(small + 8);
  check_all_calls(small + 1);
  char* large = static_cast<char*>(malloc(4 << 20));  // above the largest class
  check_all_calls(large + 4096);
  check_all_calls(large + 16);
  free(small);
  free(large);
}

TEST_CASE("memory from another allocator (a raw mapping) is reported") {
  void* foreign = mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(foreign != MAP_FAILED);
  check_all_calls(static_cast<char*>(foreign) + 64);
  munmap(foreign, 1 << 16);
}

TEST_CASE("double free of a large block, and of a lone small block, is reported") {
  // Allocated here, freed twice in the child (which has its own copy of the heap).
  for (size_t size : {size_t{1} << 20, size_t{150000}}) {
    INFO(size);
    void* p = malloc(size);
    expect_report("free", p, [](void* q) {
      free_fn(q);
      free_fn(q);
    });
    free(p);
  }
}

TEST_CASE("a small block freed twice is reported before it is handed out twice") {
  for (size_t size : {size_t{8}, size_t{48}, size_t{5000}}) {
    INFO(size);
    void* p = malloc(size);
    expect_report("malloc|free", p, [size](void* q) {
      pin_to_one_cpu();
      free_fn(q);
      free_fn(q);
      allocate_everything_of(size);
    });
    free(p);
  }
}

TEST_CASE("a double free is reported when the second free comes much later, from another thread") {
  void* p = malloc(48);
  expect_report("malloc|free", p, [](void* q) {
    pin_to_one_cpu();
    free_fn(q);
    // Much later: a million calls of every size in between, the block's own class included.
    std::vector<void*> held;
    for (int round = 0; round < 4000; ++round) {
      for (size_t size = 8; size <= 4096; size += 16 + size / 4) held.push_back(malloc(size));
      for (void* h : held) free(h);
      held.clear();
    }
    std::thread([q] { free_fn(q); }).join();
    allocate_everything_of(48);
  });
  free(p);
}

TEST_CASE("realloc and malloc_usable_size of a freed small block are reported") {
  void* p = malloc(48);
  expect_report("realloc", p, [](void* q) {
    free_fn(q);
    realloc_fn(q, 100);
  });
  // A size of the block's own class takes realloc's shortest path, which checks too.
  expect_report("realloc", p, [](void* q) {
    free_fn(q);
    realloc_fn(q, 47);
  });
  expect_report("malloc_usable_size", p, [](void* q) {
    free_fn(q);
    usable_fn(q);
  });
  free(p);
}

TEST_CASE("a free block overwritten after free is reported when its free list is used") {
  // Every other block stays live, so the spans of the freed ones stay with their class; the
  // trim moves the freed ones into their spans' free lists, where the first word is a link.
  constexpr int kBlocks = 256;
  void* blocks[kBlocks];
  for (void*& b : blocks) b = malloc(48);
  expect_report("malloc", blocks[101], [&blocks](void* victim) {
    pin_to_one_cpu();
    for (int i = 1; i < kBlocks; i += 2) free_fn(blocks[i]);
    malloc_trim(0);
    memset(victim, 0x41, 8);  // the use after free
    allocate_everything_of(48);
  });
  for (void* b : blocks) free(b);
}

TEST_CASE("sized delete with a size the block was not allocated with is reported") {
  void* small = operator new(100);
  expect_report("operator delete", small, [](void* q) { operator delete(q, 300); });
  expect_report("operator delete", small, [](void* q) { operator delete(q, 16); });
  void* large = operator new(4 << 20);  // above the largest class
  expect_report("operator delete", large, [](void* q) { operator delete(q, 100); });
  expect_report("operator delete", large, [](void* q) { operator delete(q, 8 << 20); });
  void* aligned = operator new(100, std::align_val_t{64});
  expect_report("operator delete", aligned, [](void* q) { operator delete(q, 4096, std::align_val_t{64}); });
  // The right sizes pass.
  operator delete(small, 100);
  operator delete(large, 4 << 20);
  operator delete(aligned, 100, std::align_val_t{64});
}
