// Statistics that add up across threads, and giving memory back while other threads allocate.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <dlfcn.h>
#include <malloc.h>
#include <random>
#include <thread>
#include <vector>

#include "preload_support.h"

namespace {

size_t property(const char* name) {
  using GetProperty = int (*)(const char*, size_t*);
  static auto get_property = reinterpret_cast<GetProperty>(dlsym(RTLD_DEFAULT, "fastmalloc_get_property"));
  size_t value = 0;
  if (get_property == nullptr || get_property(name, &value) != 0) FAIL("fastmalloc_get_property(" << name << ")");
  return value;
}

size_t release_memory() {
  using Release = size_t (*)();
  static auto release = reinterpret_cast<Release>(dlsym(RTLD_DEFAULT, "fastmalloc_release_memory"));
  if (release == nullptr) FAIL("fastmalloc_release_memory is not exported");
  return release();
}

// Within 1% (plus 64 KiB for what the test's own threads and vectors allocate).
bool close_to(size_t actual, size_t expected) {
  size_t slack = expected / 100 + (64 << 10);
  return actual + slack >= expected && actual <= expected + slack;
}

}  // namespace

TEST_CASE("allocated bytes go up by what threads allocate and back down when others free it") {
  constexpr int kThreads = 4, kBlocks = 3000;
  const size_t sizes[] = {24, 100, 700, 3000, 20000};
  std::vector<std::vector<void*>> blocks(kThreads);
  for (auto& b : blocks) b.reserve(kBlocks);  // the vectors' own memory is counted before
  size_t before = property("allocated_bytes");

  std::vector<size_t> held(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kBlocks; ++i) {
        void* p = malloc(sizes[(i + t) % 5]);
        if (p == nullptr) abort();
        held[t] += malloc_usable_size(p);  // a small block counts at its class size
        blocks[t].push_back(p);
      }
    });
  for (auto& th : threads) th.join();
  threads.clear();
  size_t expected = 0;
  for (size_t h : held) expected += h;
  size_t during = property("allocated_bytes");
  INFO("before " << before << ", during " << during << ", expected increase " << expected);
  REQUIRE(close_to(during - before, expected));

  // Each thread frees another's blocks: the objects end in other CPUs' caches, which are not
  // counted as allocated.
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (void* p : blocks[(t + 1) % kThreads]) free(p);
    });
  for (auto& th : threads) th.join();
  size_t after = property("allocated_bytes");
  INFO("after " << after);
  REQUIRE(close_to(after, before));
  REQUIRE(property("heap_bytes") >= property("cpu_cache_bytes") + property("transfer_cache_bytes"));
}

TEST_CASE("malloc_trim and fastmalloc_release_memory while other threads allocate lose nothing") {
  constexpr int kThreads = 3, kSlots = 500;
  std::atomic<bool> stop{false}, ok{true};
  std::atomic<uint64_t> ops{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(77 + t);
      std::vector<void*> slots(kSlots, nullptr);
      std::vector<uint32_t> tags(kSlots, 0);
      uint64_t n = 0;
      for (uint32_t tag = 1; !stop.load(std::memory_order_relaxed); ++tag, ++n) {
        size_t i = rng() % kSlots;
        if (slots[i] != nullptr) {
          if (!Checked::check(slots[i], tags[i])) ok = false;
          free(slots[i]);
        }
        size_t size = rng() % 4 == 0 ? rng() % 40000 : rng() % 600;
        slots[i] = Checked::make(size, tag);
        tags[i] = tag;
      }
      for (size_t i = 0; i < kSlots; ++i)
        if (slots[i] != nullptr) {
          if (!Checked::check(slots[i], tags[i])) ok = false;
          free(slots[i]);
        }
      ops += n;
    });
  int trims = 0;
  auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(1)) {
    if (trims % 2 == 0) malloc_trim(0);
    else release_memory();
    ++trims;
  }
  stop = true;
  for (auto& th : threads) th.join();
  INFO(trims << " trims during " << ops.load() << " operations");
  REQUIRE(ok.load());
  REQUIRE(trims > 20);
  REQUIRE(ops.load() > 10000);
}

TEST_CASE("the cache of a CPU that has gone idle is drained by the slow paths of others") {
  // A thread fills its CPU's cache with freed blocks of many classes and exits.
  std::thread([] {
    std::mt19937_64 rng(5);
    std::vector<void*> blocks;
    for (int i = 0; i < 20000; ++i) blocks.push_back(malloc(16 + rng() % 60000));
    for (void* p : blocks) free(p);
  }).join();
  size_t before = property("cpu_cache_bytes");
  REQUIRE(before > (size_t{1} << 20));
  // Then only blocks too large for the per-CPU caches: each one takes the slow path, which
  // scans for idle slabs once per decay period (FASTMALLOC_DECAY, 1 s by default).
  size_t after = before;
  auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    void* volatile p = malloc(100 << 10);
    free(p);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = property("cpu_cache_bytes");
    if (after < before / 4) break;
  }
  INFO("cached before " << before << ", after " << after);
  if (property("remote_drain") == 1) {
    REQUIRE(after < before / 4);
  } else {
    // rseq without membarrier: another CPU's slab cannot be emptied safely, so it is left.
    REQUIRE(after >= before / 4);
  }
}
