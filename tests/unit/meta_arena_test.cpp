// The metadata pools: recycled objects, and freed objects' whole pages given back to the OS.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "meta_arena.h"

using namespace fastmalloc;

namespace {

struct Record {
  uint64_t words[16];  // 128 bytes, like a span descriptor
};

// How many of the pages the objects lie on are resident (mincore, page by page: the arena's
// chunks need not be next to each other).
size_t resident_pages(const std::vector<Record*>& objects) {
  uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  std::set<uintptr_t> pages;
  for (Record* r : objects) {
    pages.insert(reinterpret_cast<uintptr_t>(r) & ~(page - 1));
    pages.insert((reinterpret_cast<uintptr_t>(r) + sizeof(Record) - 1) & ~(page - 1));
  }
  size_t resident = 0;
  for (uintptr_t p : pages) {
    unsigned char in_core = 0;
    REQUIRE(mincore(reinterpret_cast<void*>(p), page, &in_core) == 0);
    resident += in_core & 1;
  }
  return resident;
}

std::vector<Record*> create_filled(MetaPool<Record>& pool, size_t n, uint64_t pattern) {
  std::vector<Record*> objects;
  for (size_t i = 0; i < n; ++i) {
    Record* r = pool.create();
    REQUIRE(r != nullptr);
    for (uint64_t w : r->words) REQUIRE(w == 0);
    std::fill(std::begin(r->words), std::end(r->words), pattern + i);
    objects.push_back(r);
  }
  return objects;
}

}  // namespace

TEST_CASE("meta pool: freed objects' pages go back to the OS, and the objects are used again") {
  static MetaPool<Record> pool;
  constexpr size_t kObjects = 4096;  // 512 KiB: at least two of the arena's chunks
  std::vector<Record*> objects = create_filled(pool, kObjects, 1000);
  size_t resident_before = resident_pages(objects);
  REQUIRE(resident_before >= kObjects * sizeof(Record) / static_cast<size_t>(sysconf(_SC_PAGESIZE)));

  // Freed in random order, so the pool has to sort them into runs.
  std::vector<Record*> shuffled = objects;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937_64(7));
  for (Record* r : shuffled) pool.destroy(r);
  size_t released = pool.release_free_pages();
  CHECK(released >= kObjects * sizeof(Record) * 9 / 10);
  // One header page per run is kept; the objects fill a few runs (the chunks they came from).
  CHECK(resident_pages(objects) <= 8);
  CHECK(pool.release_free_pages() == 0);  // nothing changed since

  // The same objects come back (no new memory), zeroed, and usable.
  size_t mapped = g_meta_arena.mapped_bytes();
  std::vector<Record*> again = create_filled(pool, kObjects, 5000);
  CHECK(g_meta_arena.mapped_bytes() == mapped);
  CHECK(std::set<Record*>(again.begin(), again.end()) == std::set<Record*>(objects.begin(), objects.end()));
  for (size_t i = 0; i < kObjects; ++i)
    for (uint64_t w : again[i]->words) REQUIRE(w == 5000 + i);
  for (Record* r : again) pool.destroy(r);
}

TEST_CASE("meta pool: a page with a live object on it is never released") {
  static MetaPool<Record> pool;
  constexpr size_t kObjects = 2048;
  std::vector<Record*> objects = create_filled(pool, kObjects, 77);
  // Every other object freed: no page is wholly free.
  for (size_t i = 0; i < kObjects; i += 2) pool.destroy(objects[i]);
  CHECK(pool.release_free_pages() == 0);
  for (size_t i = 1; i < kObjects; i += 2)
    for (uint64_t w : objects[i]->words) REQUIRE(w == 77 + i);
  // The rest freed too: now whole pages are free and go back.
  for (size_t i = 1; i < kObjects; i += 2) pool.destroy(objects[i]);
  CHECK(pool.release_free_pages() > 0);
  std::vector<Record*> again = create_filled(pool, kObjects, 9);
  CHECK(std::set<Record*>(again.begin(), again.end()) == std::set<Record*>(objects.begin(), objects.end()));
  for (Record* r : again) pool.destroy(r);
}

TEST_CASE("meta pool: a release that asks for growth waits until that much has been freed") {
  static MetaPool<Record> pool;
  constexpr size_t kObjects = 4096;
  constexpr size_t kMinGrowth = 1024 * sizeof(Record);  // what the periodic release asks for
  std::vector<Record*> objects = create_filled(pool, kObjects, 300);
  for (size_t i = 0; i < 512; ++i) pool.destroy(objects[i]);
  CHECK(pool.release_free_pages(kMinGrowth) == 0);  // 512 freed: not yet
  for (size_t i = 512; i < kObjects; ++i) pool.destroy(objects[i]);
  CHECK(pool.release_free_pages(kMinGrowth) >= kObjects * sizeof(Record) * 9 / 10);
  CHECK(resident_pages(objects) <= 8);

  // Churn takes objects and gives the same number back: the list never grows past its low point
  // by the amount asked for, so nothing is sorted again.
  for (int round = 0; round < 4; ++round) {
    std::vector<Record*> taken = create_filled(pool, 700, 1);
    for (Record* r : taken) pool.destroy(r);
    CHECK(pool.release_free_pages(kMinGrowth) == 0);
  }
  // Without a minimum, what the churn left on fresh pages goes back.
  CHECK(pool.release_free_pages() > 0);
}
