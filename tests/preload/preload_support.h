// Helpers for tests that run with libfastmalloc.so preloaded: checking the library is really the
// one answering, blocks that carry a check pattern, the CPUs a test may use, running code in a
// child process and reading how it ended.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>
#include <string>
#include <vector>

// True when the suite runs with FASTMALLOC_HARDEN=1 (the mode the CTest case "mode: harden" sets).
inline bool hardened() {
  const char* value = getenv("FASTMALLOC_HARDEN");
  return value != nullptr && strcmp(value, "1") == 0;
}

// One of the library's numbers (fastmalloc_get_property); fails the test if it cannot be read.
inline size_t property(const char* name) {
  using GetProperty = int (*)(const char*, size_t*);
  static auto get_property = reinterpret_cast<GetProperty>(dlsym(RTLD_DEFAULT, "fastmalloc_get_property"));
  size_t value = 0;
  if (get_property == nullptr || get_property(name, &value) != 0) FAIL("fastmalloc_get_property(" << name << ")");
  return value;
}

// True when `symbol` resolves (for the whole process) to a definition inside libfastmalloc.so.
inline bool resolves_to_fastmalloc(const char* symbol) {
  void* address = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info{};
  return address != nullptr && dladdr(address, &info) != 0 && info.dli_fname != nullptr &&
         std::string(info.dli_fname).find("libfastmalloc.so") != std::string::npos;
}

// The CPUs this process may run on, and pinning the calling thread to one of them.
inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

inline void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

struct ChildResult {
  bool exited = false;
  int exit_code = -1;
  int signal = 0;
  std::string err;  // what the child wrote to stderr
};

// Each block carries its own size and a pattern derived from its address and a tag, so a block
// handed out twice, or written by someone else, fails the check.
struct Checked {
  static void* make(size_t size, uint32_t tag) {
    size = size < 16 ? 16 : size;
    auto* p = static_cast<unsigned char*>(malloc(size));
    if (p == nullptr) abort();  // called from threads, where Catch2 assertions are not safe
    fill(p, size, tag);
    return p;
  }
  static void fill(unsigned char* p, size_t size, uint32_t tag) {
    memcpy(p, &size, sizeof size);
    memcpy(p + 8, &tag, sizeof tag);
    for (size_t i = 16; i < size; ++i) p[i] = static_cast<unsigned char>(tag + i);
  }
  static bool check(const void* block, uint32_t tag) {
    size_t size;
    memcpy(&size, block, sizeof size);
    return check_first(block, tag, size);
  }
  // The first `size` bytes only, for a block realloc has shrunk since it was filled.
  static bool check_first(const void* block, uint32_t tag, size_t size) {
    auto* p = static_cast<const unsigned char*>(block);
    uint32_t stored;
    memcpy(&stored, p + 8, sizeof stored);
    if (stored != tag || malloc_usable_size(const_cast<void*>(block)) < size) return false;
    for (size_t i = 16; i < size; ++i)
      if (p[i] != static_cast<unsigned char>(tag + i)) return false;
    return true;
  }
};

// Runs `body` in a forked child with stderr captured; the child exits 0 if body returns.
template <class F>
ChildResult run_in_child(F body);

#include "preload_support_impl.h"
