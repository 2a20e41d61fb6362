// Soak: the stress workloads for a long time in one process, with RSS followed throughout. It
// must stay flat: an allocator that leaks, or that fragments without bound, grows.
//
// Threads (default 8, so more than the CPUs here) each keep a working set of blocks (8 B to
// 64 KiB, one in a hundred up to 1 MiB, one in a thousand up to 4 MiB) and replace them at
// random; one in 32 comes from posix_memalign with an alignment of 16 B to 1 MiB; one in eight
// of the blocks is handed to the next thread through a mailbox and freed there; some are grown
// or shrunk with realloc. Every block carries a pattern derived from its address and a tag,
// checked before it is freed. The main thread samples RSS every --interval seconds and prints
//   t=SECONDS rss_kib=N ops=N
// then a summary line; the exit code is 0 only if no block was corrupted and the largest RSS of
// the second half of the run is at most --max-growth (default 1.15) times the largest of the
// first half.
//
// --chaos adds, all through the run, what a program may do around its allocations, so that the
// allocator's slow paths meet each other in every order: malloc_trim(0) every 20 ms (it drains
// every CPU's cache with membarrier while the workers run), a worker moved to another CPU every
// 2 ms, a timer signal at 10 kHz that lands in the workers' allocations (restarting their rseq
// sections), and a fork every 200 ms whose child allocates, checks and frees blocks of every
// kind before it exits. A child that fails or does not exit within 60 s counts as corruption.
//
//   soak [--seconds S] [--threads N] [--interval S] [--max-growth F] [--chaos]
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tool_support.h"

namespace {

using Clock = std::chrono::steady_clock;

// The block's size and tag in its first 16 bytes, then a pattern of both (blocks are at least
// 16 bytes).
struct Block {
  static unsigned char pattern(size_t i, uint64_t tag) { return static_cast<unsigned char>((i * 131) ^ tag); }
  static void fill(void* p, size_t size, uint64_t tag) {
    auto* b = static_cast<unsigned char*>(p);
    memcpy(b, &size, 8);
    memcpy(b + 8, &tag, 8);
    for (size_t i = 16; i < size; ++i) b[i] = pattern(i, tag);
  }
  static bool check(const void* p) {
    auto* b = static_cast<const unsigned char*>(p);
    size_t size;
    uint64_t tag;
    memcpy(&size, b, 8);
    memcpy(&tag, b + 8, 8);
    for (size_t i = 16; i < size; ++i)
      if (b[i] != pattern(i, tag)) return false;
    return true;
  }
};

std::atomic<bool> g_stop{false}, g_corrupt{false};
std::atomic<uint64_t> g_ops{0};

struct Mailbox {
  std::mutex lock;
  std::vector<void*> blocks;
};

size_t pick_size(Rng& rng) {
  uint64_t r = rng.next();
  if (r % 1000 == 0) return (size_t{1} << 20) + (r >> 16) % (size_t{3} << 20);
  if (r % 100 == 0) return 16 + r % (1 << 20);
  if (r % 4 == 0) return 16 + (r >> 8) % 65536;
  return 16 + (r >> 8) % 1024;
}

// A new block: mostly malloc, sometimes aligned (a misaligned block counts as corruption).
void* allocate(Rng& rng, size_t size) {
  uint64_t r = rng.next();
  if (r % 32 != 0) return malloc(size);
  size_t align = size_t{16} << (r >> 8) % 17;
  void* p = nullptr;
  if (posix_memalign(&p, align, size) != 0) return nullptr;
  if (reinterpret_cast<uintptr_t>(p) % align != 0) g_corrupt = true;
  return p;
}

void worker(int id, int threads, std::vector<Mailbox>& boxes) {
  Rng rng{0x9e3779b97f4a7c15u * static_cast<uint64_t>(id + 1)};
  constexpr size_t kSlots = 2000;
  std::vector<void*> slots(kSlots, nullptr);
  uint64_t tag = static_cast<uint64_t>(id) << 40;
  auto release = [](void* p) {
    if (!Block::check(p)) g_corrupt = true;
    free(p);
  };
  uint64_t ops = 0;
  while (!g_stop.load(std::memory_order_relaxed)) {
    size_t i = rng.next() % kSlots;
    void*& slot = slots[i];
    if (slot != nullptr) {
      uint64_t what = rng.next() % 16;
      if (what < 2) {  // hand it to the next thread, which frees it
        Mailbox& box = boxes[(id + 1) % threads];
        std::lock_guard<std::mutex> guard(box.lock);
        box.blocks.push_back(slot);
      } else if (what < 4) {  // grow or shrink it
        if (!Block::check(slot)) g_corrupt = true;
        size_t size = pick_size(rng);
        void* q = realloc(slot, size);
        if (q == nullptr) abort();
        Block::fill(q, size, ++tag);
        slot = q;
        ++ops;
        continue;
      } else {
        release(slot);
      }
    }
    size_t size = pick_size(rng);
    slot = allocate(rng, size);
    if (slot == nullptr) abort();
    Block::fill(slot, size, ++tag);
    if (++ops % 1024 == 0) {
      g_ops.fetch_add(1024, std::memory_order_relaxed);
      Mailbox& mine = boxes[id];
      std::vector<void*> arrived;
      {
        std::lock_guard<std::mutex> guard(mine.lock);
        arrived.swap(mine.blocks);
      }
      for (void* p : arrived) release(p);
    }
  }
  for (void* p : slots)
    if (p != nullptr) release(p);
}

// --chaos. The child of a fork: it inherits the heap as the fork found it, mid-call on other
// threads included, and must be able to allocate all the same.
int forked_child(uint64_t seed) {
  g_corrupt = false;  // the parent's verdict stays the parent's; allocate() sets it on misalignment
  Rng rng{seed | 1};
  bool intact = true;
  std::vector<void*> blocks;
  blocks.reserve(4096);
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 1000; ++i) {
      size_t size = pick_size(rng);
      void* p = allocate(rng, size);
      if (p == nullptr) return 2;
      Block::fill(p, size, seed + static_cast<uint64_t>(i));
      blocks.push_back(p);
    }
    malloc_trim(0);
    for (void* p : blocks) {
      intact = intact && Block::check(p);
      free(p);
    }
    blocks.clear();
  }
  return intact && !g_corrupt.load() ? 0 : 1;
}

std::atomic<uint64_t> g_signals{0}, g_trims{0}, g_moves{0}, g_forks{0}, g_slowest_child_ms{0};

void on_timer(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }

// how: SIG_BLOCK or SIG_UNBLOCK, for the calling thread.
void mask_timer_signal(int how) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGRTMIN);
  pthread_sigmask(how, &set, nullptr);
}

// Runs the chaos threads until g_stop; the timer's signal goes to the workers only (the chaos
// threads and the main thread block it).
class Chaos {
 public:
  explicit Chaos(std::vector<std::thread>& workers) : workers_(workers) {
    struct sigaction action {};
    action.sa_handler = on_timer;
    action.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN, &action, nullptr);
    sigevent event{};
    event.sigev_notify = SIGEV_SIGNAL;
    event.sigev_signo = SIGRTMIN;
    timer_create(CLOCK_MONOTONIC, &event, &timer_);
    itimerspec every{{0, 100'000}, {0, 100'000}};  // 10 kHz
    timer_settime(timer_, 0, &every, nullptr);
    threads_.emplace_back([] {
      mask_timer_signal(SIG_BLOCK);
      while (!g_stop.load()) {
        malloc_trim(0);
        g_trims.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    threads_.emplace_back([this] { move_workers(); });
    threads_.emplace_back([] { fork_children(); });
  }
  ~Chaos() {
    for (auto& t : threads_) t.join();
    timer_delete(timer_);
  }
 private:
  void move_workers() {
    mask_timer_signal(SIG_BLOCK);
    Rng rng{0x5eed};
    int cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    while (!g_stop.load()) {
      std::thread& w = workers_[rng.next() % workers_.size()];
      cpu_set_t set;
      CPU_ZERO(&set);
      uint64_t r = rng.next();
      if (r % 4 == 0) {
        for (int c = 0; c < cpus; ++c) CPU_SET(c, &set);
      } else {
        CPU_SET(static_cast<int>(r % static_cast<uint64_t>(cpus)), &set);
      }
      if (pthread_setaffinity_np(w.native_handle(), sizeof set, &set) == 0) g_moves.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  static void fork_children() {
    mask_timer_signal(SIG_BLOCK);
    for (uint64_t n = 1; !g_stop.load(); ++n) {
      pid_t pid = fork();
      if (pid == 0) _exit(forked_child(n * 0x9e3779b97f4a7c15u));
      if (pid < 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      // A child that hangs (a lock the fork left taken) fails the run instead of stalling it.
      // It shares the CPUs with all the workers, so it is given plenty of time.
      int status = 0;
      pid_t done = 0;
      auto forked = Clock::now();
      uint64_t waited_ms = 0;
      while ((done = waitpid(pid, &status, WNOHANG)) == 0 && waited_ms < 60'000) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        waited_ms = static_cast<uint64_t>(std::chrono::duration<double, std::milli>(Clock::now() - forked).count());
      }
      if (waited_ms > g_slowest_child_ms.load()) g_slowest_child_ms = waited_ms;
      if (done != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fprintf(stderr, "soak: forked child %d did not exit within 60 s\n", static_cast<int>(pid));
        g_corrupt = true;
      } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "soak: forked child %d failed (status %d)\n", static_cast<int>(pid), status);
        g_corrupt = true;
      }
      g_forks.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  std::vector<std::thread>& workers_;
  std::vector<std::thread> threads_;
  timer_t timer_{};
};

}  // namespace

int main(int argc, char** argv) {
  double seconds = 60, interval = 1, max_growth = 1.15;
  int threads = 8;
  bool chaos = false;
  for (int i = 1; i < argc; ++i) {
    bool has_value = i + 1 < argc;
    if (strcmp(argv[i], "--chaos") == 0) chaos = true;
    else if (strcmp(argv[i], "--seconds") == 0 && has_value) seconds = atof(argv[++i]);
    else if (strcmp(argv[i], "--threads") == 0 && has_value) threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--interval") == 0 && has_value) interval = atof(argv[++i]);
    else if (strcmp(argv[i], "--max-growth") == 0 && has_value) max_growth = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: soak [--seconds S] [--threads N] [--interval S] [--max-growth F] [--chaos]\n");
      return 2;
    }
  }
  if (threads < 1 || seconds <= 0 || interval <= 0) return 2;
  // The main thread samples RSS; under --chaos the timer's signals go to the workers.
  if (chaos) mask_timer_signal(SIG_BLOCK);
  std::vector<Mailbox> boxes(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([t, threads, &boxes, chaos] {
      // Threads inherit the creator's mask; the workers take the signals.
      if (chaos) mask_timer_signal(SIG_UNBLOCK);
      worker(t, threads, boxes);
    });
  std::unique_ptr<Chaos> disorder;
  if (chaos) disorder = std::make_unique<Chaos>(workers);

  std::vector<std::pair<double, long>> samples;
  auto start = Clock::now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::duration<double>(interval));
    double t = std::chrono::duration<double>(Clock::now() - start).count();
    long rss = rss_kib();
    samples.emplace_back(t, rss);
    printf("t=%.1f rss_kib=%ld ops=%llu\n", t, rss, static_cast<unsigned long long>(g_ops.load()));
    fflush(stdout);
    if (t >= seconds) break;
  }
  g_stop = true;
  disorder.reset();  // first: it moves the workers by their handles
  for (auto& w : workers) w.join();
  for (Mailbox& box : boxes)
    for (void* p : box.blocks) {
      if (!Block::check(p)) g_corrupt = true;
      free(p);
    }

  long first = 0, second = 0;
  for (auto& [t, rss] : samples) {
    long& half = t <= seconds / 2 ? first : second;
    if (rss > half) half = rss;
  }
  double growth = first > 0 ? static_cast<double>(second) / static_cast<double>(first) : 0;
  bool flat = first > 0 && second > 0 && growth <= max_growth;
  printf("soak: seconds=%.0f threads=%d ops=%llu max_rss_first_half_kib=%ld max_rss_second_half_kib=%ld "
         "growth=%.3f corrupt=%d flat=%d\n",
         seconds, threads, static_cast<unsigned long long>(g_ops.load()), first, second, growth,
         g_corrupt.load() ? 1 : 0, flat ? 1 : 0);
  if (chaos)
    printf("soak: chaos signals=%llu trims=%llu moves=%llu forks=%llu slowest_child_ms=%llu\n",
           static_cast<unsigned long long>(g_signals.load()), static_cast<unsigned long long>(g_trims.load()),
           static_cast<unsigned long long>(g_moves.load()), static_cast<unsigned long long>(g_forks.load()),
           static_cast<unsigned long long>(g_slowest_child_ms.load()));
  return !g_corrupt.load() && flat ? 0 : 1;
}
