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
//   soak [--seconds S] [--threads N] [--interval S] [--max-growth F]
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <unistd.h>
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

}  // namespace

int main(int argc, char** argv) {
  double seconds = 60, interval = 1, max_growth = 1.15;
  int threads = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--seconds") == 0) seconds = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--interval") == 0) interval = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--max-growth") == 0) max_growth = atof(argv[i + 1]);
    else {
      fprintf(stderr, "usage: soak [--seconds S] [--threads N] [--interval S] [--max-growth F]\n");
      return 2;
    }
  }
  if (threads < 1 || seconds <= 0 || interval <= 0) return 2;
  std::vector<Mailbox> boxes(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) workers.emplace_back(worker, t, threads, std::ref(boxes));

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
  return !g_corrupt.load() && flat ? 0 : 1;
}
