// Pointers fastmalloc never handed out stop the process with one line naming the call and the
// address, then abort(): never a segfault, never silent corruption.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <sys/mman.h>

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
// names the call and the address.
template <class F>
void expect_report(const char* call, void* p, F misuse) {
  ChildResult r = run_in_child([&] { misuse(p); });
  INFO("stderr: " << r.err);
  REQUIRE(r.signal == SIGABRT);
  std::string expected = std::string("fastmalloc: ") + call + "(): ";
  REQUIRE(r.err.rfind(expected, 0) == 0);
  REQUIRE(r.err.find(hex(p)) != std::string::npos);
  REQUIRE(r.err.find('\n') == r.err.size() - 1);  // one line
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

TEST_CASE("wild addresses are reported, not dereferenced into a segfault") {
  check_all_calls(reinterpret_cast<void*>(0x10));
  check_all_calls(reinterpret_cast<void*>(0x7fff'dead'b000));
  check_all_calls(reinterpret_cast<void*>(0xdead'beef'dead'beef));
}

TEST_CASE("interior pointers of small and large blocks are reported") {
  char* small = static_cast<char*>(malloc(100));
  check_all_calls(small + 8);
  check_all_calls(small + 1);
  char* large = static_cast<char*>(malloc(1 << 20));
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
