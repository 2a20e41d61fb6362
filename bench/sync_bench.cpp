// sync_bench: what the read sides of fastmalloc's RCU and prwlock cost next to no
// synchronization, pthread_rwlock and a mutex, and how long their writers take while readers
// run. Prints key=value lines (see --help for the keys).
//
// Read-side figures are nanoseconds per critical section around one load from a 2^20-entry
// array at a pseudo-random index (the load a hash-table lookup does), computed as
//   wall time x min(threads, CPUs) / sections
// so they are CPU time per section and comparable across thread counts. The `_l1` variants load
// one hot word instead, which shows the bare cost of the read side. `padded` is a control: the
// unsynchronized section made as long, in instructions, as the prwlock's.
//
// The "table" lines redo, on this machine, the experiment the design starts from: 2 threads,
// 75% get / 25% put on a 2^20-entry array, with no synchronization, a compiler fence in put, an
// mfence in put, and an mfence in both.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "sync/prwlock.h"
#include "sync/rcu.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = fastmalloc::sync;

constexpr size_t kEntries = size_t{1} << 20;
std::vector<uint64_t> g_table(kEntries, 1);
uint64_t g_hot_word = 1;
fs::Prwlock<1> g_prwlock;
pthread_rwlock_t g_rwlock = PTHREAD_RWLOCK_INITIALIZER;
pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
double g_scale = 1.0;

unsigned cpus() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : n;
}

struct Lcg {
  uint64_t state;
  uint64_t next() { return state = state * 6364136223846793005u + 1442695040888963407u; }
};

// Runs `body(thread, iterations)` on `threads` threads released together; returns the wall
// time of the slowest.
template <class Body>
double run_threads(int threads, uint64_t iterations, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      body(t, iterations);
    });
  while (ready.load() != threads) std::this_thread::yield();
  auto start = Clock::now();
  go.store(true);
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::atomic<uint64_t> g_sink{0};

// One read section per iteration around one load; Section provides lock() and unlock().
template <class Section>
double read_ns(int threads, bool hot) {
  uint64_t iterations = static_cast<uint64_t>(4'000'000 * g_scale);
  double seconds = run_threads(threads, iterations, [hot](int t, uint64_t n) {
    Lcg rng{static_cast<uint64_t>(t) * 7919 + 1};
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t index = rng.next() >> 44;  // 20 bits
      auto held = Section::lock();
      sum += hot ? *const_cast<volatile uint64_t*>(&g_hot_word) : const_cast<volatile uint64_t*>(g_table.data())[index];
      Section::unlock(held);
    }
    g_sink.fetch_add(sum, std::memory_order_relaxed);
  });
  unsigned used = std::min<unsigned>(static_cast<unsigned>(threads), cpus());
  return seconds * 1e9 * used / (static_cast<double>(iterations) * threads);
}

// lock() returns what unlock() needs (a token where nothing is needed), so the prwlock's section
// stays in registers as it would in real code.
struct Plain {
  static int lock() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return 0;
  }
  static void unlock(int) { std::atomic_signal_fence(std::memory_order_seq_cst); }
};
// The unsynchronized section again, with as many instructions as the prwlock's read side adds
// to this loop, none of which touches memory: nops. If a read side costs what these cost, its
// price is the room its instructions take in the out-of-order window while the load misses,
// not the synchronization it does. kPadding is the difference between the loop bodies of
// read_ns<Prw> and read_ns<Plain> in the disassembly (objdump -d of this program: 25 against 13
// instructions around the array load since the read side loads the lock's word once, 29 before
// that and 32 before it lost its null test and its load of the lock's slot); recount it when the
// read side changes.
constexpr int kPadding = 12;
struct Padded {
  static int lock() {
    asm volatile(".rept %c0\n\tnop\n\t.endr" : : "i"(kPadding / 2) : "memory");
    return 0;
  }
  static void unlock(int) { asm volatile(".rept %c0\n\tnop\n\t.endr" : : "i"(kPadding - kPadding / 2) : "memory"); }
};
struct Rcu {
  static int lock() {
    fs::rcu_read_lock();
    return 0;
  }
  static void unlock(int) { fs::rcu_read_unlock(); }
};
struct Prw {
  static fs::PrwlockReadSection lock() { return g_prwlock.read_lock(); }
  static void unlock(fs::PrwlockReadSection section) { g_prwlock.read_unlock(section); }
};
struct RwLock {
  static int lock() { return pthread_rwlock_rdlock(&g_rwlock); }
  static void unlock(int) { pthread_rwlock_unlock(&g_rwlock); }
};
struct MutexLock {
  static int lock() { return pthread_mutex_lock(&g_mutex); }
  static void unlock(int) { pthread_mutex_unlock(&g_mutex); }
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

// Writer latency (µs per write_lock..write_unlock, or per synchronize_rcu) while `readers`
// threads run read sections in a loop.
template <class Section, class Write>
void writer_latency(const char* key, int readers, Write write) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < readers; ++t)
    pool.emplace_back([&, t] {
      Lcg rng{static_cast<uint64_t>(t) + 11};
      uint64_t sum = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 1000; ++i) {
          auto held = Section::lock();
          sum += const_cast<volatile uint64_t*>(g_table.data())[rng.next() >> 44];
          Section::unlock(held);
        }
      }
      g_sink.fetch_add(sum, std::memory_order_relaxed);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  int samples = std::max(50, static_cast<int>(400 * g_scale));
  std::vector<double> us;
  for (int i = 0; i < samples; ++i) {
    auto start = Clock::now();
    write();
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  stop.store(true);
  for (auto& th : pool) th.join();
  printf("%s_us_p50=%.1f\n%s_us_p99=%.1f\n", key, percentile(us, 0.5), key, percentile(us, 0.99));
}

// The design notes' experiment: get = load, put = store, at random indexes, 3 gets per put.
enum class Fences { kNone, kCompilerPut, kMfencePut, kMfenceBoth };

double table_ns(Fences fences) {
  uint64_t iterations = static_cast<uint64_t>(4'000'000 * g_scale);
  std::vector<uint64_t> table(kEntries, 1);
  uint64_t* data = table.data();
  double seconds = run_threads(2, iterations, [&](int t, uint64_t n) {
    Lcg rng{static_cast<uint64_t>(t) + 3};
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t r = rng.next();
      uint64_t index = r >> 44;
      if ((r & 3) == 0) {  // put
        if (fences == Fences::kCompilerPut) std::atomic_signal_fence(std::memory_order_seq_cst);
        if (fences == Fences::kMfencePut || fences == Fences::kMfenceBoth) std::atomic_thread_fence(std::memory_order_seq_cst);
        __atomic_store_n(&data[index], i, __ATOMIC_RELAXED);
      } else {  // get
        if (fences == Fences::kMfenceBoth) std::atomic_thread_fence(std::memory_order_seq_cst);
        sum += __atomic_load_n(&data[index], __ATOMIC_RELAXED);
      }
    }
    g_sink.fetch_add(sum, std::memory_order_relaxed);
  });
  unsigned used = std::min(2u, cpus());
  return seconds * 1e9 * used / (static_cast<double>(iterations) * 2);
}

void usage(FILE* out) {
  fprintf(out,
          "usage: sync_bench [--scale F]\n"
          "prints key=value lines:\n"
          "  {plain,rcu,prwlock,pthread_rwlock,mutex}_read_ns_t{1,2,16}   ns per read section around a\n"
          "      load from a 2^20-entry array (CPU time: wall x min(threads, CPUs) / sections);\n"
          "      ..._l1_t{1,2,16}: the same around a load of one hot word; each a median of 5 runs\n"
          "  padded_read_ns_...   the unsynchronized section with as many nops as the prwlock's read\n"
          "      side has instructions: what those instructions cost by taking room, not by syncing\n"
          "  {padded,rcu,prwlock}_over_plain[_l1]_t{1,2,16}   the median over the 5 runs of each run's\n"
          "      section time over the plain loop's time in the same run\n"
          "  prwlock_write_us_p50/p99, synchronize_rcu_us_p50/p99   writer latency, 16 readers running\n"
          "  prwlock_unlink_us_p50/p99   the same for write_lock, synchronize, write_unlock\n"
          "  table_{plain,compiler_fence_put,mfence_put,mfence_put_get}_ns   2 threads, 75%% get / 25%% put\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--scale") == 0 && i + 1 < argc) {
      g_scale = atof(argv[++i]);
      if (g_scale <= 0) {
        usage(stderr);
        return 2;
      }
    } else if (strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "sync_bench: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  printf("cpus=%u\n", cpus());
  // Each figure is the median of kRounds runs, the six kinds of section interleaved within a
  // round, so a burst of noise on this shared machine lands on one run, not on one kind. Each
  // round starts with the next kind, so that no kind always pays for coming first: when the
  // plain loop always did, the sections came out at 0.80-0.86x of it at one thread in some runs.
  constexpr int kRounds = 5;
  const int thread_counts[] = {1, 2, 16};
  for (bool hot : {false, true}) {
    const char* suffix = hot ? "_l1" : "";
    for (int threads : thread_counts) {
      struct Kind {
        const char* name;
        double (*run)(int, bool);
        bool over_plain;  // also printed as paired ratios over the plain loop (kinds[0])
        std::vector<double> ns;
      } kinds[] = {{"plain", read_ns<Plain>, false, {}},
                   {"padded", read_ns<Padded>, true, {}},
                   {"rcu", read_ns<Rcu>, true, {}},
                   {"prwlock", read_ns<Prw>, true, {}},
                   {"pthread_rwlock", read_ns<RwLock>, false, {}},
                   {"mutex", read_ns<MutexLock>, false, {}}};
      const Kind& plain = kinds[0];
      constexpr int kKinds = sizeof kinds / sizeof kinds[0];
      for (int round = 0; round < kRounds; ++round)
        for (int i = 0; i < kKinds; ++i) {
          Kind& kind = kinds[(round + i) % kKinds];
          kind.ns.push_back(kind.run(threads, hot));
        }
      for (Kind& kind : kinds) printf("%s_read_ns%s_t%d=%.2f\n", kind.name, suffix, threads, percentile(kind.ns, 0.5));
      // The same comparison as paired ratios: each round's section over that round's plain loop.
      // The machine's speed can change by half from one second to the next, which moves the
      // medians above apart; within a round the kinds run back to back and see the same speed.
      for (const Kind& kind : kinds) {
        if (!kind.over_plain) continue;
        std::vector<double> ratios;
        for (int round = 0; round < kRounds; ++round) ratios.push_back(kind.ns[round] / plain.ns[round]);
        printf("%s_over_plain%s_t%d=%.3f\n", kind.name, suffix, threads, percentile(ratios, 0.5));
      }
      fflush(stdout);
    }
  }
  // After the read runs, so the registry has decided how writers fence.
  printf("readers_fence=%d\n", fs::g_readers_fence ? 1 : 0);
  writer_latency<Prw>("prwlock_write", 16, [] {
    g_prwlock.write_lock();
    g_prwlock.write_unlock();
  });
  // What a writer that frees what it unlinked pays (the span map's, releasing leaves).
  writer_latency<Prw>("prwlock_unlink", 16, [] {
    g_prwlock.write_lock();
    g_prwlock.synchronize(fs::PrwlockCore::kWaitForever);
    g_prwlock.write_unlock();
  });
  writer_latency<Rcu>("synchronize_rcu", 16, [] { fs::synchronize_rcu(); });
  printf("table_plain_ns=%.2f\n", table_ns(Fences::kNone));
  printf("table_compiler_fence_put_ns=%.2f\n", table_ns(Fences::kCompilerPut));
  printf("table_mfence_put_ns=%.2f\n", table_ns(Fences::kMfencePut));
  printf("table_mfence_put_get_ns=%.2f\n", table_ns(Fences::kMfenceBoth));
  printf("sink=%llu\n", static_cast<unsigned long long>(g_sink.load() & 1));
  return 0;
}
