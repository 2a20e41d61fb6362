// Statistics that add up across threads, and giving memory back while other threads allocate.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <dlfcn.h>
#include <malloc.h>
#include <random>
#include <sched.h>
#include <thread>
#include <vector>

#include "preload_support.h"

namespace {

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

// Runs the test cases matching `pattern` again in a fresh process (this program, those tests
// only), so that no earlier test has grown a class or filled the caches; the seccomp filter and
// LD_PRELOAD of the mode go along. True in that fresh process, where the caller goes on with its
// test; in the first one it checks how the child ended and returns false.
// `option`, when given ("FASTMALLOC_NAME=value"), is set for the fresh process.
bool in_fresh_process(const char* pattern, const char* option = nullptr) {
  if (getenv("FM_TEST_FRESH_PROCESS") != nullptr) return true;
  ChildResult r = run_in_child([pattern, option] {
    setenv("FM_TEST_FRESH_PROCESS", "1", 1);
    if (option != nullptr) putenv(const_cast<char*>(option));
    dup2(STDERR_FILENO, STDOUT_FILENO);  // the suite's report of a failure, for INFO below
    // --warn NoTests: a filter that matched nothing fails instead of passing.
    execl("/proc/self/exe", "preload_tests", "--warn", "NoTests", pattern, nullptr);
    _exit(127);
  });
  INFO(r.err);
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
  return false;
}

// Keeps the calling thread on the CPU it runs on now, so that one per-CPU cache sees all it does.
void stay_on_this_cpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(sched_getcpu(), &set);
  sched_setaffinity(0, sizeof set, &set);
}

// Keeps this CPU's cache busy with small blocks (so the slab is not idle, only the class under
// test is) and takes a slow path often (a block too large for the caches, which runs the
// periodic scan), for three scan periods. The ring's length varies widely, so that the slab
// never reads the same at two scans (it would count as idle and be drained, which empties every
// class).
void keep_this_cpu_busy_for_three_scans(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<void*> ring;
  ring.reserve(512);
  auto begin = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(3500)) {
    size_t want = 20 + rng() % 400;
    while (ring.size() < want) ring.push_back(malloc(16));
    while (ring.size() > want) {
      free(ring.back());
      ring.pop_back();
    }
    void* volatile big = malloc(100 << 10);
    free(big);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (void* p : ring) free(p);
}

// The per-CPU caches' misses so far, allocations' and frees' together.
size_t cache_misses() { return property("cpu_cache_alloc_misses") + property("cpu_cache_free_misses"); }

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
        if (n % 256 == 255) ops += 256;
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
    });
  // Until both sides have done enough, however slowly a loaded machine lets them run.
  int trims = 0;
  auto start = std::chrono::steady_clock::now();
  while ((trims < 20 || ops.load() < 10000) && std::chrono::steady_clock::now() - start < std::chrono::seconds(60)) {
    if (trims % 2 == 0) malloc_trim(0);
    else release_memory();
    ++trims;
  }
  stop = true;
  for (auto& th : threads) th.join();
  INFO(trims << " trims during " << ops.load() << " operations");
  REQUIRE(ok.load());
  REQUIRE(trims >= 20);
  REQUIRE(ops.load() >= 10000);
}

TEST_CASE("the cache of a CPU that has gone idle is drained by the slow paths of others") {
  // A thread fills its CPU's cache with freed blocks of many classes and exits. 40 MB in all:
  // a program that gives up 64 MiB or more makes its caches keep little (the page heap's
  // shrinking mode), which is not what this test is about.
  std::thread([] {
    std::mt19937_64 rng(5);
    std::vector<void*> blocks;
    for (int i = 0; i < 10000; ++i) blocks.push_back(malloc(16 + rng() % 8000));
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

TEST_CASE("a class that misses both ways grows, and gives the room back once it stops missing") {
  if (!in_fresh_process("a class that misses both ways*")) return;
  stay_on_this_cpu();
  // 7000-byte blocks (class 7168): a per-CPU capacity of 4 objects at first (one transfer
  // batch), at most 18.
  constexpr size_t kSize = 7000, kClassSize = 7168;
  constexpr int kBlocks = 18;
  size_t start = property("cpu_cache_bytes");
  void* blocks[kBlocks];
  for (int round = 0; round < 40; ++round) {
    for (void*& p : blocks) p = malloc(kSize);
    for (void* p : blocks) free(p);
  }
  size_t full = property("cpu_cache_bytes");
  INFO("cached: " << start << " at start, " << full << " after the rounds");
  REQUIRE(full >= start + 12 * kClassSize);

  keep_this_cpu_busy_for_three_scans(9);
  // Absolute figures: a scan may also empty what other classes held at the start.
  size_t after = property("cpu_cache_bytes");
  INFO("after the idle period: " << after);
  if (property("remote_drain") == 1) {
    REQUIRE(after + 6 * kClassSize <= full);  // at least one halving of the room above 4
  } else {
    // rseq without membarrier: a slab cannot be stopped and fenced, so room is never taken
    // back (growth stays within the budget); the small blocks' ring is empty again.
    REQUIRE(after + kClassSize >= full);
  }
}

TEST_CASE("a class above 32 KiB grows to two batches, so blocks taken and given back in threes stop missing") {
  if (!in_fresh_process("a class above 32 KiB grows*")) return;
  stay_on_this_cpu();
  // 45000-byte blocks (class 49152; 57344 under FASTMALLOC_HARDEN=1, which takes the class
  // above): a transfer batch is 2 of them, the first room too. Three taken and given back in
  // turn miss both ways on a room of 2, which grows on those misses to its most, 4 (two
  // batches), where all three fit and nothing misses any more.
  constexpr size_t kSize = 45000;
  constexpr int kBlocks = 3;
  void* blocks[kBlocks];
  auto take_and_give_back = [&](int rounds) {
    for (int round = 0; round < rounds; ++round) {
      for (void*& p : blocks) p = malloc(kSize);
      for (void* p : blocks) free(p);
    }
  };
  size_t before = cache_misses();
  take_and_give_back(40);
  size_t warming = cache_misses() - before;
  before = cache_misses();
  take_and_give_back(100);
  size_t grown = cache_misses() - before;
  INFO("misses in the first 40 rounds: " << warming << ", in the next 100: " << grown);
  REQUIRE(warming >= 16);  // it did miss both ways, enough to grow
  REQUIRE(grown == 0);
}

TEST_CASE("with no room on a CPU, a refill takes one block, the last freed, so a double free is still caught") {
  // A per-CPU budget of 4 KiB (FASTMALLOC_CPU_CACHE_SIZE) gives every class a room of 0: every
  // block goes through the transfer cache. A refill that took a batch there handed out the oldest and put the newest
  // back on top; a block freed twice went round and round on top, never handed out, never seen.
  if (!in_fresh_process("with no room on a CPU*", "FASTMALLOC_CPU_CACHE_SIZE=4K")) return;
  stay_on_this_cpu();
  constexpr size_t kSize = 100;
  void* older[64];
  for (void*& p : older) p = malloc(kSize);
  for (void* p : older) free(p);
  void* p = malloc(kSize);
  free(p);
  void* again = malloc(kSize);
  REQUIRE(again == p);
  free(again);

  ChildResult r = run_in_child([] {
    void* volatile twice = malloc(kSize);
    free(twice);
    free(twice);
    for (int i = 0; i < 10000; ++i) (void)malloc(kSize);
    _exit(0);
  });
  INFO("stderr: " << r.err);
  REQUIRE(r.signal == SIGABRT);
  // Reported by malloc (the second copy lost its signature), or by free where hardened mode
  // checks each free exactly.
  REQUIRE((r.err.find("freed twice") != std::string::npos || r.err.find("double free") != std::string::npos));
}

TEST_CASE("a class that stops missing keeps less than its first room on a CPU") {
  if (!in_fresh_process("a class that stops missing*")) return;
  stay_on_this_cpu();
  // 1000-byte blocks (class 1024): a first room of 32 objects (one transfer batch). Sixteen of
  // them, with what the refills left, fit in it when freed (no free misses: it does not grow);
  // a class that misses fewer than 16 times in a period is shrunk towards 8 of them (8 KiB).
  constexpr size_t kSize = 1000;
  constexpr int kBlocks = 16;
  void* blocks[kBlocks];
  for (void*& p : blocks) p = malloc(kSize);
  for (void* p : blocks) free(p);

  keep_this_cpu_busy_for_three_scans(11);

  // The class's share of the cache, seen through its misses: a room of 32 would still hold the
  // 16 blocks and serve them again without one.
  size_t misses_before = property("cpu_cache_alloc_misses");
  for (void*& p : blocks) p = malloc(kSize);
  size_t misses = property("cpu_cache_alloc_misses") - misses_before;
  for (void* p : blocks) free(p);
  INFO("misses taking the 16 blocks again: " << misses);
  if (property("remote_drain") == 1) {
    REQUIRE(misses >= 1);
  } else {
    REQUIRE(misses == 0);  // no slab can be stopped: room is never taken back
  }
}

TEST_CASE("a class used a little keeps no blocks on a CPU after a quiet period") {
  if (!in_fresh_process("a class used a little keeps no blocks*")) return;
  stay_on_this_cpu();
  // Four 1000-byte blocks (class 1024) freed into this CPU's cache; then nothing of the class
  // for a period. A cache that kept them would hand one out again without a miss; emptied,
  // they went back to their spans, which the next refill hands out from first.
  constexpr size_t kSize = 1000;
  void* blocks[4];
  for (void*& p : blocks) p = malloc(kSize);
  for (void* p : blocks) free(p);

  keep_this_cpu_busy_for_three_scans(13);

  size_t misses_before = property("cpu_cache_alloc_misses");
  void* p = malloc(kSize);
  size_t misses = property("cpu_cache_alloc_misses") - misses_before;
  free(p);
  INFO("misses taking one block again: " << misses);
  if (property("remote_drain") == 1) {
    REQUIRE(misses == 1);
  } else {
    REQUIRE(misses == 0);  // no slab can be stopped: what it holds stays
  }
}

TEST_CASE("a program that gives up most of its heap leaves little in the per-CPU caches") {
  if (!in_fresh_process("a program that gives up most of its heap*")) return;
  stay_on_this_cpu();
  // 160 MB of blocks of 16 B to 8 KiB, then all freed: past the first half, the page heap is
  // shrinking (PageHeap::shrinking), and a class whose cache overflows keeps at most its quiet
  // floor, 8 KiB of blocks. Without that, the cache fills to its budget (4 MiB).
  std::mt19937_64 rng(17);
  std::vector<void*> blocks;
  for (size_t total = 0; total < (size_t{160} << 20);) {
    size_t size = 16 + rng() % 8176;
    void* p = malloc(size);
    REQUIRE(p != nullptr);
    blocks.push_back(p);
    total += size;
  }
  // The heap counts as shrinking only once no span has been handed out for 10 ms
  // (PageHeap::kCapIntervalMs); these frees alone take less than that.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (void* p : blocks) free(p);
  size_t cached = property("cpu_cache_bytes");
  INFO("cached after the frees: " << cached);
  REQUIRE(cached < (size_t{1} << 20));
}

TEST_CASE("a class that misses only a few times does not grow") {
  if (!in_fresh_process("a class that misses only a few times*")) return;
  stay_on_this_cpu();
  // 7000-byte blocks (class 7168): a first room of 4 objects. Six taken and given back miss
  // both ways, a handful of times: too few for room to be worth holding (kBusyMisses).
  constexpr size_t kSize = 7000;
  constexpr int kBlocks = 6;
  void* blocks[kBlocks];
  for (void*& p : blocks) p = malloc(kSize);
  for (void* p : blocks) free(p);
  // The second round misses again: the room is still 4.
  size_t before = cache_misses();
  for (void*& p : blocks) p = malloc(kSize);
  for (void* p : blocks) free(p);
  size_t again = cache_misses() - before;
  INFO("misses in the second round: " << again);
  REQUIRE(again >= 1);
}

TEST_CASE("a class's first refill on a CPU brings a page of objects, not a whole batch") {
  // A fresh process, where the class has not been used (the test framework's start-up passes
  // through most classes up to 8 KiB, not this one): its first malloc is its first miss.
  if (!in_fresh_process("a class's first refill on a CPU*")) return;
  stay_on_this_cpu();
  // 9000-byte blocks (class 9216; 10240 in hardened mode, which takes the class above): a
  // transfer batch is 3 of them, 4 KiB holds none, so the first refill brings the one handed
  // out. A whole batch would leave 2 blocks behind in the cache.
  constexpr size_t kSize = 9000, kClassSize = 9216;
  // The bytes the per-CPU caches gained with the first malloc of the class.
  auto first_malloc_caches = [] {
    size_t before = property("cpu_cache_bytes");
    void* first = malloc(kSize);
    size_t after = property("cpu_cache_bytes");
    free(first);
    return static_cast<long>(after) - static_cast<long>(before);
  };
  long gained = first_malloc_caches();
  INFO("the per-CPU caches gained " << gained << " bytes with the first malloc");
  REQUIRE(gained < static_cast<long>(kClassSize));

  // The same after a trim, which empties every cache and counts the class's misses from zero
  // again: where it can (membarrier). Without it, the trim leaves every rseq slab alone, and the
  // next malloc finds what the frees below left.
  // One block in seven stays live (a span holds 7), so the trim keeps every span and the
  // refill finds free blocks in them: only its own size limits what it brings, not the carving
  // of a fresh span.
  if (property("remote_drain") != 1) return;
  constexpr int kBlocks = 210, kPerSpan = 7;
  std::vector<void*> blocks, kept;
  for (int i = 0; i < kBlocks; ++i) blocks.push_back(malloc(kSize));
  for (int i = 0; i < kBlocks; ++i) (i % kPerSpan == 0 ? kept.push_back(blocks[i]) : free(blocks[i]));
  malloc_trim(0);
  gained = first_malloc_caches();
  INFO("after the trim, " << gained << " bytes with the first malloc");
  REQUIRE(gained < static_cast<long>(kClassSize));
  for (void* p : kept) free(p);
}

TEST_CASE("consecutive blocks of a class carved together are handed out at ascending addresses") {
  // A fresh process, so the class (3 KiB blocks, 8 to a 24 KiB span) has nothing cached or
  // freed yet and every block comes from carving, which goes up through each span.
  if (!in_fresh_process("consecutive blocks of a class*")) return;
  stay_on_this_cpu();
  constexpr size_t kSize = 3000, kSpanBytes = 24 << 10;
  constexpr int kBlocks = 64;
  std::vector<uintptr_t> blocks;
  blocks.reserve(kBlocks);
  for (int i = 0; i < kBlocks; ++i) blocks.push_back(reinterpret_cast<uintptr_t>(malloc(kSize)));
  // Neighbours in time that share a span (a new span may lie anywhere) must go up.
  int same_span = 0, descending = 0;
  for (int i = 1; i < kBlocks; ++i) {
    uintptr_t a = blocks[i - 1], b = blocks[i];
    if ((a > b ? a - b : b - a) >= kSpanBytes) continue;
    ++same_span;
    if (b < a) ++descending;
  }
  for (uintptr_t p : blocks) free(reinterpret_cast<void*>(p));
  INFO(same_span << " consecutive pairs in one span, " << descending << " of them descending");
  REQUIRE(same_span >= kBlocks / 2);
  REQUIRE(descending == 0);
}

TEST_CASE("the heap's growths adjoin, so after a trim its free pages lie in a few runs") {
  // Free pages merge only with free pages next to them. Growths with holes between them (two
  // threads racing to grow, or padding left above an aligned mapping) stay separate runs, and
  // each run keeps span-map entries resident at its ends after it is released.
  // Blocks of 4608 bytes: their spans do not tile a growth, so each growth ends in untouched
  // pages beside the growth above it. Where madvise is refused (mode nomadvise), those stay
  // apart from the resident pages next to them unless the heap merges free runs in both states.
  if (!in_fresh_process("the heap's growths adjoin*")) return;
  constexpr size_t kBlock = 4608, kBlocksPerThread = 16384;  // 72 MiB a thread
  malloc_trim(0);
  const size_t heap_before = property("heap_bytes"), runs_before = mallinfo2().ordblks;
  // Both hold their blocks until both have allocated, so the heap holds both at once however
  // the threads are scheduled.
  std::atomic<int> filled{0};
  auto fill_and_free = [&filled] {
    std::vector<void*> blocks(kBlocksPerThread);
    for (void*& p : blocks) {
      p = malloc(kBlock);
      if (p != nullptr) static_cast<char*>(p)[0] = 1;
    }
    filled.fetch_add(1);
    while (filled.load() < 2) std::this_thread::yield();
    for (void* p : blocks) free(p);
  };
  std::thread a(fill_and_free), b(fill_and_free);
  a.join();
  b.join();
  malloc_trim(0);
  // Well over a hundred growths of 1 MiB went into it.
  REQUIRE(property("heap_bytes") >= heap_before + (100 << 20));
  // A new run may start at each mapping made meanwhile by others (thread stacks, the chunks of
  // span descriptors: 3 to 10 new runs here), not at each growth. Growths that left holes made
  // 46 to 63 new runs here.
  const size_t runs_after = mallinfo2().ordblks;
  INFO(runs_before << " free runs before, " << runs_after << " after");
  REQUIRE(runs_after <= runs_before + 24);
}

TEST_CASE("buffers up to 1 MiB come from the heap and are used again; larger ones are mapped alone") {
  // FASTMALLOC_HARDEN=1 carves each request from the class above its own, so there the top
  // class (896 KiB to 1 MiB) is a large block already.
  const size_t largest_small = hardened() ? 896 << 10 : 1 << 20;
  // A vector grown by doubling through realloc, as the realloc benchmark grows them.
  std::vector<size_t> capacities;
  for (size_t capacity = 16; capacity < largest_small; capacity *= 2) capacities.push_back(capacity);
  capacities.push_back(largest_small);

  const size_t large_before = property("large_bytes");
  size_t heap_after_first_round = 0;
  for (int round = 0; round < 50; ++round) {
    char* buffer = nullptr;
    for (size_t capacity : capacities) {
      buffer = static_cast<char*>(realloc(buffer, capacity));
      REQUIRE(buffer != nullptr);
      buffer[capacity - 1] = 1;
    }
    REQUIRE(property("large_bytes") == large_before);  // no mapping of its own
    free(buffer);
    if (round == 0) heap_after_first_round = property("heap_bytes");
  }
  // The rounds after the first reuse its pages (a little slack for the test's own allocations).
  REQUIRE(property("heap_bytes") <= heap_after_first_round + (2 << 20));

  void* large = malloc((size_t{1} << 20) + 1);
  REQUIRE(large != nullptr);
  REQUIRE(property("large_bytes") >= large_before + (size_t{1} << 20) + 1);
  free(large);
  REQUIRE(property("large_bytes") == large_before);  // unmapped on free
}
