// Does the allocator give memory back? Two threads allocate 1 GiB (by default) of mixed small
// and medium blocks, touch every byte, and free them all; then RSS is followed over time, either
// right after malloc_trim(0) (--trim) or with no call at all while a little allocation goes on.
// Runs under any allocator (LD_PRELOAD) and prints key=value lines; with --max-percent P it also
// fails (exit 1) unless RSS falls to P% of the peak within --within seconds.
//
//   memory_return [--trim] [--mib N] [--within S] [--max-percent P]
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <unistd.h>
#include <vector>

#include "tool_support.h"

namespace {

using Clock = std::chrono::steady_clock;

// Four in five blocks 16 B to 1 KiB, the rest 1 KiB to 32 KiB.
size_t block_size(Rng& rng) {
  uint64_t r = rng.next();
  return r % 5 != 0 ? 16 + (r >> 8) % 1009 : 1024 + (r >> 8) % (31 * 1024);
}

// Allocates `bytes` in blocks, touching all of them; returns them.
std::vector<void*> fill(uint64_t seed, size_t bytes) {
  Rng rng{seed};
  std::vector<void*> blocks;
  blocks.reserve(bytes / 2048);
  for (size_t total = 0; total < bytes;) {
    size_t size = block_size(rng);
    void* p = malloc(size);
    if (p == nullptr) {
      fprintf(stderr, "memory_return: malloc(%zu) failed\n", size);
      exit(2);
    }
    memset(p, 0x5a, size);
    blocks.push_back(p);
    total += size;
  }
  return blocks;
}

}  // namespace

int main(int argc, char** argv) {
  bool trim = false;
  double within = 10, max_percent = -1;
  size_t mib = 1024;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--trim") == 0) trim = true;
    else if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc) mib = strtoul(argv[++i], nullptr, 10);
    else if (strcmp(argv[i], "--within") == 0 && i + 1 < argc) within = atof(argv[++i]);
    else if (strcmp(argv[i], "--max-percent") == 0 && i + 1 < argc) max_percent = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: memory_return [--trim] [--mib N] [--within S] [--max-percent P]\n");
      return 2;
    }
  }
  long base_kib = rss_kib();
  std::vector<void*> blocks[2];
  {
    std::thread a([&] { blocks[0] = fill(1, mib << 19); });
    std::thread b([&] { blocks[1] = fill(2, mib << 19); });
    a.join();
    b.join();
  }
  long peak_kib = rss_kib();
  // Each thread frees the other's blocks, in the order they were allocated.
  {
    std::thread a([&] { for (void* p : blocks[1]) free(p); });
    std::thread b([&] { for (void* p : blocks[0]) free(p); });
    a.join();
    b.join();
  }
  long freed_kib = rss_kib();
  printf("mode=%s base_kib=%ld peak_kib=%ld after_free_kib=%ld\n", trim ? "trim" : "no_trim", base_kib, peak_kib,
         freed_kib);
  auto start = Clock::now();
  if (trim) malloc_trim(0);
  Rng rng{3};
  std::vector<void*> little(64, nullptr);
  double reached = -1;
  long last_kib = freed_kib;
  for (int tick = 0;; ++tick) {
    double t = std::chrono::duration<double>(Clock::now() - start).count();
    last_kib = rss_kib();
    double percent = 100.0 * static_cast<double>(last_kib) / static_cast<double>(peak_kib);
    if (tick % 10 == 0) printf("t=%.2f rss_kib=%ld percent_of_peak=%.1f\n", t, last_kib, percent);
    if (max_percent >= 0 && percent <= max_percent && reached < 0) reached = t;
    if (t >= within || reached >= 0) break;
    // A little allocation goes on: replace a few blocks every 10 ms.
    for (int k = 0; k < 4; ++k) {
      size_t slot = rng.next() % little.size();
      free(little[slot]);
      little[slot] = malloc(block_size(rng));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (void* p : little) free(p);
  printf("final_percent_of_peak=%.1f\n", 100.0 * static_cast<double>(last_kib) / static_cast<double>(peak_kib));
  if (max_percent < 0) return 0;
  if (reached < 0) {
    printf("FAIL: RSS stayed above %.0f%% of the peak for %.0f s\n", max_percent, within);
    return 1;
  }
  printf("reached %.0f%% of the peak after %.2f s\n", max_percent, reached);
  return 0;
}
