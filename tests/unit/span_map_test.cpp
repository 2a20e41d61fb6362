// The span map: lookups of recorded, unrecorded and impossible addresses.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "os/os.h"
#include "span_map.h"

using namespace fastmalloc;

TEST_CASE("span map records pages and answers nullptr for everything else") {
  static SpanMap map;  // 1 MiB: not on the stack
  Span a{}, b{};
  uintptr_t base = uintptr_t{0x7f12'3450'0000};
  REQUIRE(map.ensure(base, 4 * kPageSize));
  map.pin(base, 4 * kPageSize);  // set_range() is for pinned leaves (the page heap's)
  map.set_range(base, 3 * kPageSize, &a);
  map.set(base + 3 * kPageSize, &b);

  REQUIRE(map.lookup(base) == &a);
  REQUIRE(map.lookup(base + 1) == &a);
  REQUIRE(map.lookup(base + 3 * kPageSize - 1) == &a);
  REQUIRE(map.lookup(base + 3 * kPageSize) == &b);
  REQUIRE(map.lookup(base + 4 * kPageSize) == nullptr);
  REQUIRE(map.lookup(base - 1) == nullptr);
  // Leaves never created, and addresses beyond the 48-bit user space, are safe to ask about.
  REQUIRE(map.lookup(0) == nullptr);
  REQUIRE(map.lookup(0x1000) == nullptr);
  REQUIRE(map.lookup(uintptr_t{0xdead'beef'0000'0000}) == nullptr);
  REQUIRE(map.lookup(~uintptr_t{0}) == nullptr);
  REQUIRE_FALSE(map.ensure(uintptr_t{1} << 48, kPageSize));
}

TEST_CASE("span map ranges that cross a leaf boundary") {
  static SpanMap map;
  Span s{};
  uintptr_t leaf_span = kPageSize << SpanMap::kLeafBits;  // 2 GiB
  uintptr_t start = 3 * leaf_span - 2 * kPageSize;
  REQUIRE(map.ensure(start, 4 * kPageSize));
  map.pin(start, 4 * kPageSize);
  map.set_range(start, 4 * kPageSize, &s);
  for (uintptr_t p = start; p < start + 4 * kPageSize; p += kPageSize / 2) REQUIRE(map.lookup(p) == &s);
  REQUIRE(map.lookup(start + 4 * kPageSize) == nullptr);
}

TEST_CASE("forgetting a range clears its entries and drops the pages of entries left all zero") {
  static SpanMap map;
  Span s{}, neighbour{};
  const uintptr_t page = os::hardware_page_size();
  const uintptr_t leaf_span = kPageSize << SpanMap::kLeafBits;  // 2 GiB
  const uintptr_t group = page / sizeof(uintptr_t) * kPageSize;  // what one page of entries describes
  // Ten groups' worth, unaligned, across the boundary of two leaves; a neighbour right after.
  const uintptr_t boundary = 5 * leaf_span, start = boundary - 5 * group + 3 * kPageSize, bytes = 10 * group;
  const uintptr_t end = start + bytes;
  REQUIRE(map.ensure(start, bytes + kPageSize));
  map.pin(start, bytes);
  map.set_range(start, bytes, &s);
  map.set(end, &neighbour);
  REQUIRE(map.resident_leaf_bytes() >= 11 * page);

  map.forget_range(start + kPageSize, bytes - 2 * kPageSize, start + kPageSize, end - kPageSize);
  // Left: the page of entries holding `start`, and the one holding the last page and the
  // neighbour (not wholly inside the range, so never dropped).
  REQUIRE(map.resident_leaf_bytes() <= 2 * page);
  REQUIRE(map.lookup(start) == &s);
  REQUIRE(map.lookup(end - 1) == &s);
  REQUIRE(map.lookup(end) == &neighbour);
  for (uintptr_t addr : {start + kPageSize, boundary - kPageSize, boundary, boundary + 3 * group, end - 2 * kPageSize})
    REQUIRE(map.lookup(addr) == nullptr);
  // The second leaf now holds only the neighbour's entry; cleared, it stays mapped (pinned).
  map.set(end, nullptr);
  map.set_pinned(end - kPageSize, nullptr);
  map.release_unused_leaves();
  REQUIRE(map.leaf_bytes() == 2 * SpanMap::leaf_bytes_per_leaf());
  map.set(boundary + 3 * group, &s);
  REQUIRE(map.lookup(boundary + 3 * group) == &s);
}

TEST_CASE("a leaf counts its pins and its large blocks' entries, whatever the page heap writes in it") {
  // Page-heap entries (pinned memory) are written uncounted; large blocks' entries are counted,
  // so that a leaf they alone used can be released. Mixing the two on one entry would let the
  // count drift, and a leaf that reached 0 while in use would be unmapped under the heap.
  static SpanMap map;
  Span heap_span{}, large{};
  const uintptr_t start = uintptr_t{0x7e00'0000'0000}, bytes = 64 * kPageSize;
  REQUIRE(map.ensure(start, bytes + kPageSize));
  map.pin(start, bytes);
  const int32_t pinned = map.leaf_count(start);
  REQUIRE(pinned >= 1);
  map.set(start + bytes, &large);  // a large block mapped right after the heap's memory
  REQUIRE(map.leaf_count(start) == pinned + 1);
  for (int round = 0; round < 100; ++round) {
    heap_span.start = start;
    heap_span.bytes = (1 + round % 64) * kPageSize;
    map.set_small_span(&heap_span, 5);
    map.set_range(start, bytes, &heap_span);
    map.forget_range(start + kPageSize, bytes - 2 * kPageSize, start, start + bytes);
    map.set_pinned(start, nullptr);  // an entry set_range() wrote, cleared
    map.set_pinned(start + bytes - kPageSize, &heap_span);
  }
  map.set_pinned(start, &heap_span);
  REQUIRE(map.leaf_count(start) == pinned + 1);
  map.set(start + bytes, nullptr);
  REQUIRE(map.leaf_count(start) == pinned);
  REQUIRE(map.lookup(start) == &heap_span);
}

TEST_CASE("the first leaf the map creates is kept for good, and answers only for its own region") {
  static SpanMap map;
  Span home{}, other{};
  const uintptr_t leaf_span = kPageSize << SpanMap::kLeafBits;  // 2 GiB
  const uintptr_t in_home = 0x7f00'0000'0000 + 5 * kPageSize, elsewhere = in_home + 2 * leaf_span;
  const uintptr_t same_offset_below = in_home % leaf_span;  // region 0, where an unset home index points
  REQUIRE(map.lookup(same_offset_below) == nullptr);
  REQUIRE(map.ensure(in_home, kPageSize));
  REQUIRE(map.ensure(elsewhere, kPageSize));
  map.set(in_home, &home);
  map.set(elsewhere, &other);
  REQUIRE(map.lookup(in_home) == &home);
  REQUIRE(map.lookup(elsewhere) == &other);
  REQUIRE(map.lookup(same_offset_below) == nullptr);
  REQUIRE(map.lookup(in_home + leaf_span) == nullptr);
  REQUIRE(map.lookup(in_home - leaf_span) == nullptr);

  // Emptied, the other leaf goes back and the home leaf stays, and works as before.
  map.set(in_home, nullptr);
  map.set(elsewhere, nullptr);
  REQUIRE(map.release_unused_leaves() == SpanMap::leaf_bytes_per_leaf());
  REQUIRE(map.leaf_bytes() == SpanMap::leaf_bytes_per_leaf());
  REQUIRE(map.lookup(in_home) == nullptr);
  map.set(in_home, &home);
  REQUIRE(map.lookup(in_home) == &home);
  REQUIRE(map.lookup(elsewhere) == nullptr);
  // A region given a leaf again later is an ordinary leaf.
  REQUIRE(map.ensure(elsewhere, kPageSize));
  map.set(elsewhere, &other);
  REQUIRE(map.lookup(elsewhere) == &other);
  REQUIRE(map.leaf_bytes() == 2 * SpanMap::leaf_bytes_per_leaf());
}

TEST_CASE("a reader that stays inside makes the map keep its empty leaves, whole, for later") {
  // A signal handler that waits for a lock the releasing thread holds, in the middle of a read
  // section, would otherwise hold it up for ever; a reader held up this long stands in for it.
  static SpanMap map;
  Span home{}, other{};
  const uintptr_t leaf_span = kPageSize << SpanMap::kLeafBits;
  const uintptr_t in_home = 0x7d00'0000'0000, elsewhere = in_home + 2 * leaf_span;
  REQUIRE(map.ensure(in_home, kPageSize));
  map.set(in_home, &home);
  REQUIRE(map.ensure(elsewhere, kPageSize));
  map.set(elsewhere, &other);
  map.set(elsewhere, nullptr);
  std::atomic<bool> inside{false}, release{false};
  std::thread reader([&] {
    sync::PrwlockReadSection section = map.structure_lock().read_lock();
    inside.store(true);
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    map.structure_lock().read_unlock(section);
  });
  while (!inside.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto start = std::chrono::steady_clock::now();
  REQUIRE(map.release_unused_leaves() == 0);
  const double waited_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(waited_ms >= SpanMap::kWriterPatienceMs - 10);  // the coarse clock's tick
  REQUIRE(map.leaf_bytes() == 2 * SpanMap::leaf_bytes_per_leaf());
  map.set(elsewhere, &other);  // the leaf is still mapped and linked
  REQUIRE(map.lookup(elsewhere) == &other);
  map.set(elsewhere, nullptr);
  release.store(true);
  reader.join();
  REQUIRE(map.release_unused_leaves() == SpanMap::leaf_bytes_per_leaf());
  REQUIRE(map.lookup(elsewhere) == nullptr);
  REQUIRE(map.lookup(in_home) == &home);
}

TEST_CASE("a reserved spare leaf lets ensure_locked succeed") {
  static SpanMap map;
  LockGuard guard(map.lock());
  REQUIRE(map.reserve_spare_locked());
  REQUIRE(map.ensure_locked(uintptr_t{0x5555'0000'0000}, kPageSize));
}

TEST_CASE("empty span-map leaves are released, and never under a reader", "[sync][stress]") {
  // A writer fills and empties one leaf and releases it each time, while readers look the
  // address up under the read side. Without the prwlock a reader would load from an unmapped
  // leaf and crash.
  static SpanMap map;
  Span s{};
  const uintptr_t addr = uintptr_t{0x6000'0000'0000};
  REQUIRE(map.ensure(uintptr_t{0x7000'0000'0000}, kPageSize));  // the home leaf, never released, goes elsewhere
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, lookups{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&] {
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        sync::PrwlockReadSection section = map.structure_lock().read_lock();
        Span* found = map.lookup(addr);
        map.structure_lock().read_unlock(section);
        if (found != nullptr && found != &s) bad.fetch_add(1);
        ++n;
      }
      lookups.fetch_add(n);
    });
  size_t released = 0, rounds = 0;
  auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(500)) {
    {
      LockGuard guard(map.lock());
      REQUIRE(map.ensure_locked(addr, kPageSize));
      map.set(addr, &s);
    }
    REQUIRE(map.release_unused_leaves() == 0);  // the leaf holds an entry
    map.set(addr, nullptr);
    released += map.release_unused_leaves();
    ++rounds;
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  REQUIRE(bad.load() == 0);
  REQUIRE(released == rounds * map.leaf_bytes_per_leaf());
  REQUIRE(map.leaf_bytes() == map.leaf_bytes_per_leaf());  // the home leaf
  REQUIRE(map.lookup(addr) == nullptr);
  REQUIRE(lookups.load() > 1000);
}
