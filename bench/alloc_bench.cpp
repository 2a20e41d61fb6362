// The allocator benchmark: one workload, at one thread count, under whatever malloc the process
// runs on (the driver, scripts/bench.sh, preloads each allocator in turn). Prints one line of
// key=value pairs: throughput and memory.
//
//   alloc_bench --workload NAME --threads N [--scale F] [--pin] [--touch ends|all]
//   alloc_bench --topology        the machine, as hwloc sees it
//   alloc_bench --list            the workloads
//
// Each workload has a fixed amount of total work (times --scale), split among the threads, so
// runs at different thread counts take comparable time and their ops/s compare directly.
#include <hwloc.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

// --touch all: the workloads write every byte of their blocks instead of the first and last.
bool g_touch_all = false;

// The allocator cannot see through this: every block is really used. By default only the first
// and last bytes are written, so only the pages they fall on become resident; what a program
// that fills its blocks would hold is what --touch all shows.
void touch(void* p, size_t size) {
  if (g_touch_all) {
    memset(p, 1, size);
    return;
  }
  auto* bytes = static_cast<volatile unsigned char*>(p);
  bytes[0] = 1;
  if (size > 1) bytes[size - 1] = 2;
}

struct Options {
  std::string workload;
  int threads = 1;
  double scale = 1.0;
  bool pin = false;
};

// Loaded only for --topology and --pin: loading it costs about 16 MiB of RSS, which would hide
// the workloads' own peak.
hwloc_topology_t g_topology;

void load_topology() {
  hwloc_topology_init(&g_topology);
  hwloc_topology_load(g_topology);
}

void pin_thread(int index) {
  int pus = hwloc_get_nbobjs_by_type(g_topology, HWLOC_OBJ_PU);
  if (pus <= 0) return;
  hwloc_obj_t pu = hwloc_get_obj_by_type(g_topology, HWLOC_OBJ_PU, static_cast<unsigned>(index % pus));
  hwloc_set_cpubind(g_topology, pu->cpuset, HWLOC_CPUBIND_THREAD);
}

// Runs body(thread_index, per_thread_ops) on n threads released together; returns seconds.
double run_threads(const Options& o, uint64_t total_ops, const std::function<void(int, uint64_t)>& body) {
  uint64_t per_thread = total_ops / static_cast<uint64_t>(o.threads);
  if (per_thread == 0) per_thread = 1;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) {
    threads.emplace_back([&, t] {
      if (o.pin) pin_thread(t);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t, per_thread);
    });
  }
  while (ready.load() != o.threads) std::this_thread::yield();
  auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Result {
  uint64_t ops;
  double seconds;
  long extra_rss_kb = -1;  // idle-threads workload: RSS while the threads hold their blocks
  // held-set workload: RSS while every thread holds its full set, after filling and after churn
  long filled_rss_kb = -1, churned_rss_kb = -1;
  // large blocks: the most KiB of pages the live blocks had touched at once, a floor under any
  // allocator's true peak RSS (VmHWM is kept up to date only when the kernel lowers RSS, and
  // can read below it)
  long live_peak_kb = -1;
};

Result pairs(const Options& o, size_t size) {
  uint64_t total = static_cast<uint64_t>(10'000'000 * o.scale);
  double s = run_threads(o, total, [size](int, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) {
      void* p = malloc(size);
      touch(p, size);
      free(p);
    }
  });
  return {total, s};
}

// A server's mix: most blocks 8 B to 1 KiB, a tail up to 64 KiB, replaced at random.
size_t mixed_size(Rng& rng) {
  uint64_t r = rng.next();
  if (r % 100 < 95) return 8 + (r >> 8) % 1017;
  return 1024 + (r >> 8) % (63 * 1024);
}

// From /proc/self/status: VmRSS now, or VmHWM, the peak since exec. (getrusage's ru_maxrss is
// no use here: it keeps the parent's peak across fork and exec, so every run would report at
// least the driver's size.)
long status_kb(const char* field) {
  FILE* f = fopen("/proc/self/status", "r");
  long kb = -1;
  char line[256];
  size_t len = strlen(field);
  while (f != nullptr && fgets(line, sizeof line, f) != nullptr)
    if (strncmp(line, field, len) == 0 && line[len] == ':') kb = atol(line + len + 1);
  if (f != nullptr) fclose(f);
  return kb;
}

constexpr size_t kWorkingSetSlots = 2000;

// Frees the block in a random slot and puts a new one of a mixed size there.
void replace_random(Rng& rng, std::vector<void*>& slots) {
  size_t k = rng.below(slots.size());
  free(slots[k]);
  size_t size = mixed_size(rng);
  slots[k] = malloc(size);
  touch(slots[k], size);
}

Result workingset(const Options& o) {
  uint64_t total = static_cast<uint64_t>(8'000'000 * o.scale);
  double s = run_threads(o, total, [](int t, uint64_t n) {
    Rng rng(static_cast<uint64_t>(t) + 1);
    std::vector<void*> slots(kWorkingSetSlots, nullptr);
    for (uint64_t i = 0; i < n; ++i) replace_random(rng, slots);
    for (void* p : slots) free(p);
  });
  return {total, s};
}

// The working set again, with every thread holding its whole set at the two moments RSS is
// read: once all threads have filled their sets, and once all have replaced blocks as many
// times as workingset does. workingset's peak depends on how many threads the scheduler lets
// hold their sets at once; this one does not, so its figures compare allocators' footprints.
Result held_set(const Options& o) {
  uint64_t total = static_cast<uint64_t>(8'000'000 * o.scale);
  long filled = -1, churned = -1;
  long* reading = &filled;
  // The completion step runs once per phase, on the last thread to arrive, while all wait.
  std::barrier all_holding(o.threads, [&]() noexcept {
    *reading = status_kb("VmRSS");
    reading = &churned;
  });
  double s = run_threads(o, total, [&](int t, uint64_t n) {
    Rng rng(static_cast<uint64_t>(t) + 1);
    std::vector<void*> slots(kWorkingSetSlots, nullptr);
    for (void*& slot : slots) {
      size_t size = mixed_size(rng);
      slot = malloc(size);
      touch(slot, size);
    }
    all_holding.arrive_and_wait();
    for (uint64_t i = 0; i < n; ++i) replace_random(rng, slots);
    all_holding.arrive_and_wait();
    for (void* p : slots) free(p);
  });
  Result r{total + kWorkingSetSlots * static_cast<uint64_t>(o.threads), s};
  r.filled_rss_kb = filled;
  r.churned_rss_kb = churned;
  return r;
}

// Batches of 1000 blocks, allocated and then freed: of 16-512 bytes at random, or all of
// `fixed` bytes. With one size, each thread cycles a thousand blocks of one class: where two
// CPUs' blocks sit side by side in memory, each CPU's prefetches pull in lines the other is
// writing (docs/design.md, "Spans of their own").
Result batch(const Options& o, size_t fixed) {
  constexpr size_t kBatch = 1000;
  uint64_t total = static_cast<uint64_t>(10'000'000 * o.scale);
  double s = run_threads(o, total, [fixed](int t, uint64_t n) {
    Rng rng(static_cast<uint64_t>(t) + 7);
    void* blocks[kBatch];
    for (uint64_t done = 0; done < n; done += kBatch) {
      for (size_t i = 0; i < kBatch; ++i) {
        size_t size = fixed != 0 ? fixed : 16 + rng.below(497);
        blocks[i] = malloc(size);
        touch(blocks[i], size);
      }
      for (size_t i = 0; i < kBatch; ++i) free(blocks[i]);
    }
  });
  return {total, s};
}

// Producer/consumer pairs joined by a single-producer single-consumer ring: every block is
// allocated on one thread and freed on another.
Result prodcons(const Options& o) {
  uint64_t total = static_cast<uint64_t>(1'000'000 * o.scale);
  int pairs = o.threads / 2 > 0 ? o.threads / 2 : 1;
  constexpr size_t kRing = 1024;
  struct alignas(64) Ring {
    std::atomic<uint64_t> head{0};
    alignas(64) std::atomic<uint64_t> tail{0};
    alignas(64) void* slots[kRing];
  };
  std::vector<Ring> rings(static_cast<size_t>(pairs));
  Options two = o;
  two.threads = pairs * 2;
  uint64_t per_pair = total / static_cast<uint64_t>(pairs);
  double s = run_threads(two, total, [&](int t, uint64_t) {
    Ring& ring = rings[static_cast<size_t>(t / 2)];
    if (t % 2 == 0) {
      Rng rng(static_cast<uint64_t>(t) + 3);
      for (uint64_t i = 0; i < per_pair; ++i) {
        size_t size = 16 + rng.below(241);
        void* p = malloc(size);
        touch(p, size);
        uint64_t head = ring.head.load(std::memory_order_relaxed);
        while (head - ring.tail.load(std::memory_order_acquire) == kRing) std::this_thread::yield();
        ring.slots[head % kRing] = p;
        ring.head.store(head + 1, std::memory_order_release);
      }
    } else {
      for (uint64_t i = 0; i < per_pair; ++i) {
        uint64_t tail = ring.tail.load(std::memory_order_relaxed);
        while (ring.head.load(std::memory_order_acquire) == tail) std::this_thread::yield();
        free(ring.slots[tail % kRing]);
        ring.tail.store(tail + 1, std::memory_order_release);
      }
    }
  });
  return {per_pair * static_cast<uint64_t>(pairs), s};
}

// False sharing (after Hoard's cache-scratch): small objects the main thread allocated side by
// side are handed one to each thread, which frees it and then allocates, writes and frees its
// own objects of that size. An allocator that gives threads neighbouring objects makes their
// writes fight over cache lines.
Result scratch(const Options& o) {
  constexpr size_t kSize = 8;
  constexpr int kWrites = 100;
  uint64_t total = static_cast<uint64_t>(1'000'000 * o.scale);
  std::vector<void*> initial(static_cast<size_t>(o.threads));
  for (auto& p : initial) p = malloc(kSize);
  double s = run_threads(o, total, [&](int t, uint64_t n) {
    free(initial[static_cast<size_t>(t)]);
    for (uint64_t i = 0; i < n; ++i) {
      auto* p = static_cast<volatile char*>(malloc(kSize));
      for (int w = 0; w < kWrites; ++w) p[w % kSize] = static_cast<char>(p[w % kSize] + 1);
      free(const_cast<char*>(p));
    }
  });
  return {total, s};
}

// realloc growth: strings grown a few bytes at a time, vectors doubled.
Result realloc_growth(const Options& o) {
  uint64_t total = static_cast<uint64_t>(1'000'000 * o.scale);
  double s = run_threads(o, total, [](int t, uint64_t n) {
    Rng rng(static_cast<uint64_t>(t) + 11);
    uint64_t done = 0;
    while (done < n) {
      // A string to 4..8 KiB, 1 to 32 bytes at a time.
      size_t limit = 4096 + rng.below(4096), len = 0;
      char* str = nullptr;
      while (len < limit && done < n) {
        len += 1 + rng.below(32);
        str = static_cast<char*>(realloc(str, len));
        str[len - 1] = 'x';
        ++done;
      }
      free(str);
      // A vector doubled from 16 bytes to 1 MiB.
      char* vec = nullptr;
      for (size_t cap = 16; cap <= (1u << 20) && done < n; cap *= 2, ++done) {
        vec = static_cast<char*>(realloc(vec, cap));
        touch(vec, cap);
      }
      free(vec);
    }
  });
  return {total, s};
}

Result large(const Options& o) {
  uint64_t total = static_cast<uint64_t>(10'000 * o.scale);
  // KiB of pages touched in the blocks held now: counted down before a free and up after the
  // touches, so it never counts more than is resident.
  static std::atomic<long> live_kb{0}, live_peak_kb{0};
  static const long page_kb = sysconf(_SC_PAGESIZE) / 1024;
  double s = run_threads(o, total, [](int t, uint64_t n) {
    Rng rng(static_cast<uint64_t>(t) + 5);
    void* held[4] = {};
    long held_kb[4] = {};
    for (uint64_t i = 0; i < n; ++i) {
      size_t k = i % 4;
      live_kb.fetch_sub(held_kb[k]);
      free(held[k]);
      // 256 KiB to 32 MiB, spread evenly over the powers of two.
      size_t size = (size_t{256} << 10) << rng.below(8);
      size += rng.below(size);
      if (size > (size_t{32} << 20)) size = size_t{32} << 20;
      held[k] = malloc(size);
      auto* bytes = static_cast<volatile char*>(held[k]);
      for (size_t off = 0; off < size; off += 256 * 1024) bytes[off] = 1;
      held_kb[k] = static_cast<long>((size + 256 * 1024 - 1) / (256 * 1024)) * page_kb;
      long now = live_kb.fetch_add(held_kb[k]) + held_kb[k];
      for (long peak = live_peak_kb.load(); now > peak && !live_peak_kb.compare_exchange_weak(peak, now);) {
      }
    }
    for (int k = 0; k < 4; ++k) {
      live_kb.fetch_sub(held_kb[k]);
      free(held[k]);
    }
  });
  Result r{total, s};
  r.live_peak_kb = live_peak_kb.load();
  return r;
}

// Thread churn: many short-lived threads, each doing a little allocation.
Result churn(const Options& o) {
  uint64_t total_threads = static_cast<uint64_t>(4000 * o.scale);
  constexpr int kPerThread = 100;
  double s = run_threads(o, total_threads, [](int t, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) {
      std::thread([t] {
        Rng rng(static_cast<uint64_t>(t) + 13);
        void* blocks[kPerThread];
        for (auto& b : blocks) {
          size_t size = 16 + rng.below(1000);
          b = malloc(size);
          touch(b, size);
        }
        for (auto& b : blocks) free(b);
      }).join();
    }
  });
  return {total_threads * kPerThread, s};
}

// 256 threads that each allocate a few small blocks and then sit idle: how much memory does the
// allocator keep per thread? (--threads is ignored: the count is the point.)
Result idle_threads(const Options&) {
  constexpr int kThreads = 256, kBlocks = 8;
  std::atomic<int> holding{0};
  std::atomic<bool> release{false};
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(static_cast<uint64_t>(t) + 17);
      void* blocks[kBlocks];
      for (auto& b : blocks) {
        size_t size = 16 + rng.below(240);
        b = malloc(size);
        touch(b, size);
      }
      holding.fetch_add(1);
      while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      for (auto& b : blocks) free(b);
    });
  }
  while (holding.load() != kThreads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  long rss = status_kb("VmRSS");
  release = true;
  for (auto& th : threads) th.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Result r{static_cast<uint64_t>(kThreads) * kBlocks, s};
  r.extra_rss_kb = rss;
  return r;
}

struct Workload {
  const char* name;
  const char* what;
  std::function<Result(const Options&)> run;
};

const std::vector<Workload>& workloads() {
  static const std::vector<Workload> list = {
      {"pairs16", "malloc/free pairs of 16 bytes", [](const Options& o) { return pairs(o, 16); }},
      {"pairs64", "malloc/free pairs of 64 bytes", [](const Options& o) { return pairs(o, 64); }},
      {"pairs256", "malloc/free pairs of 256 bytes", [](const Options& o) { return pairs(o, 256); }},
      {"pairs4096", "malloc/free pairs of 4096 bytes", [](const Options& o) { return pairs(o, 4096); }},
      {"workingset", "random replacement in a per-thread working set, 8 B-1 KiB, tail to 64 KiB", workingset},
      {"heldset", "workingset with all threads holding their sets: RSS after filling and after churn", held_set},
      {"batch", "allocate 1000 objects, then free them all", [](const Options& o) { return batch(o, 0); }},
      {"batch64", "allocate 1000 objects of 64 bytes, then free them all", [](const Options& o) { return batch(o, 64); }},
      {"prodcons", "allocated on one thread, freed on another (thread pairs)", prodcons},
      {"scratch", "false sharing: write to fresh small objects (cache-scratch)", scratch},
      {"realloc", "realloc growth of strings (small steps) and vectors (doubling)", realloc_growth},
      {"large", "large blocks, 256 KiB to 32 MiB", large},
      {"churn", "short-lived threads, 100 allocations each", churn},
      {"idle256", "RSS of 256 idle threads holding 8 small blocks each", idle_threads},
  };
  return list;
}

void print_topology() {
  auto count = [](hwloc_obj_type_t type) { return hwloc_get_nbobjs_by_type(g_topology, type); };
  printf("packages=%d cores=%d pus=%d numa_nodes=%d", count(HWLOC_OBJ_PACKAGE), count(HWLOC_OBJ_CORE),
         count(HWLOC_OBJ_PU), count(HWLOC_OBJ_NUMANODE));
  const struct {
    hwloc_obj_type_t type;
    const char* name;
  } caches[] = {{HWLOC_OBJ_L1CACHE, "l1d"}, {HWLOC_OBJ_L2CACHE, "l2"}, {HWLOC_OBJ_L3CACHE, "l3"}};
  for (const auto& c : caches) {
    int n = count(c.type);
    if (n <= 0) continue;
    hwloc_obj_t obj = hwloc_get_obj_by_type(g_topology, c.type, 0);
    printf(" %s=%dx%lluKiB", c.name, n, static_cast<unsigned long long>(obj->attr->cache.size / 1024));
  }
  hwloc_obj_t root = hwloc_get_root_obj(g_topology);
  const char* model = hwloc_obj_get_info_by_name(root, "CPUModel");
  if (model == nullptr) {
    hwloc_obj_t pkg = hwloc_get_obj_by_type(g_topology, HWLOC_OBJ_PACKAGE, 0);
    if (pkg != nullptr) model = hwloc_obj_get_info_by_name(pkg, "CPUModel");
  }
  std::string name = model ? model : "unknown";
  while (!name.empty() && name.back() == ' ') name.pop_back();
  printf(" model=\"%s\"\n", name.c_str());
}

[[noreturn]] void usage(const char* why) {
  fprintf(stderr,
          "alloc_bench: %s\n"
          "usage: alloc_bench --workload NAME --threads N [--scale F] [--pin] [--touch ends|all]\n"
          "       alloc_bench --topology | --list\n",
          why);
  exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + arg).c_str());
      return argv[++i];
    };
    if (arg == "--workload") o.workload = value();
    else if (arg == "--threads") o.threads = atoi(value().c_str());
    else if (arg == "--scale") o.scale = atof(value().c_str());
    else if (arg == "--pin") o.pin = true;
    else if (arg == "--touch") {
      std::string how = value();
      if (how != "ends" && how != "all") usage("--touch takes ends or all");
      g_touch_all = how == "all";
    }
    else if (arg == "--topology") {
      load_topology();
      print_topology();
      return 0;
    } else if (arg == "--list") {
      for (const auto& w : workloads()) printf("%s\t%s\n", w.name, w.what);
      return 0;
    } else usage(("unknown option " + arg).c_str());
  }
  if (o.threads < 1) usage("--threads must be at least 1");
  if (!(o.scale > 0)) usage("--scale must be positive");
  if (o.pin) load_topology();
  for (const auto& w : workloads()) {
    if (o.workload != w.name) continue;
    Result r = w.run(o);
    printf("workload=%s threads=%d ops=%llu seconds=%.6f ops_per_sec=%.0f peak_rss_kb=%ld", w.name, o.threads,
           static_cast<unsigned long long>(r.ops), r.seconds, static_cast<double>(r.ops) / r.seconds,
           status_kb("VmHWM"));
    if (r.extra_rss_kb >= 0) printf(" idle_rss_kb=%ld", r.extra_rss_kb);
    if (r.filled_rss_kb >= 0) printf(" filled_rss_kb=%ld churned_rss_kb=%ld", r.filled_rss_kb, r.churned_rss_kb);
    if (r.live_peak_kb >= 0) printf(" live_peak_kb=%ld", r.live_peak_kb);
    printf("\n");
    return 0;
  }
  usage(("unknown workload '" + o.workload + "' (--list shows them)").c_str());
}
