// fault_bench: what the first write to a page costs when the kernel faults it in, against
// faulting the same pages in ahead with MADV_POPULATE_WRITE, one call per run of pages. The
// allocator populates the pages it is about to carve objects into (central_free_list.cpp);
// this is the measurement behind that. Prints key=value lines, microseconds per 4 KiB page,
// medians of 5 rounds over 64 MiB each:
//   fault_us_per_page             one write per page, each a page fault
//   populate_8k_us_per_page       one MADV_POPULATE_WRITE per 8 KiB, then the writes
//   populate_64k_us_per_page      the same per 64 KiB
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <vector>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

constexpr size_t kBytes = size_t{64} << 20, kPage = 4096;

// Microseconds per page to write one byte of every page of a fresh mapping, after populating it
// in runs of `populate_run` bytes (0: no populating).
double us_per_page(size_t populate_run) {
  void* mapping = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) {
    perror("fault_bench: mmap");
    return -1;
  }
  auto* bytes = static_cast<volatile char*>(mapping);
  auto start = std::chrono::steady_clock::now();
  if (populate_run != 0)
    for (size_t off = 0; off < kBytes; off += populate_run)
      if (madvise(static_cast<char*>(mapping) + off, populate_run, MADV_POPULATE_WRITE) != 0) {
        perror("fault_bench: MADV_POPULATE_WRITE");
        munmap(mapping, kBytes);
        return -1;
      }
  for (size_t off = 0; off < kBytes; off += kPage) bytes[off] = 1;
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  munmap(mapping, kBytes);
  return us / (kBytes / kPage);
}

}  // namespace

int main() {
  const size_t runs[] = {0, 8 << 10, 64 << 10};
  const char* names[] = {"fault_us_per_page", "populate_8k_us_per_page", "populate_64k_us_per_page"};
  std::vector<double> results[3];
  for (int round = 0; round < 5; ++round)  // interleaved, so drift on a shared machine hits all
    for (int i = 0; i < 3; ++i) results[i].push_back(us_per_page(runs[i]));
  for (int i = 0; i < 3; ++i) {
    std::sort(results[i].begin(), results[i].end());
    printf("%s=%.2f\n", names[i], results[i][2]);
  }
  return 0;
}
