// What the stand-alone test tools (memory_return, soak) share, and the suites may use: the
// process's resident size and a small random generator that never allocates.
#pragma once

#include <cstdint>
#include <cstdio>
#include <unistd.h>

// Resident set size in KiB, from /proc/self/statm; -1 if it cannot be read.
inline long rss_kib() {
  FILE* f = fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  long pages_total = 0, pages_resident = 0;
  int n = fscanf(f, "%ld %ld", &pages_total, &pages_resident);
  fclose(f);
  return n == 2 ? pages_resident * (sysconf(_SC_PAGESIZE) / 1024) : -1;
}

// xorshift64: the state must start non-zero.
struct Rng {
  uint64_t state;
  uint64_t next() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  }
};
