// The span map: lookups of recorded, unrecorded and impossible addresses.
#include <catch2/catch.hpp>

#include <memory>

#include "span_map.h"

using namespace fastmalloc;

TEST_CASE("span map records pages and answers nullptr for everything else") {
  static SpanMap map;  // 1 MiB: not on the stack
  Span a{}, b{};
  uintptr_t base = uintptr_t{0x7f12'3450'0000};
  REQUIRE(map.ensure(base, 4 * kPageSize));
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
  map.set_range(start, 4 * kPageSize, &s);
  for (uintptr_t p = start; p < start + 4 * kPageSize; p += kPageSize / 2) REQUIRE(map.lookup(p) == &s);
  REQUIRE(map.lookup(start + 4 * kPageSize) == nullptr);
}

TEST_CASE("a reserved spare leaf lets ensure_locked succeed") {
  static SpanMap map;
  LockGuard guard(map.lock());
  REQUIRE(map.reserve_spare_locked());
  REQUIRE(map.ensure_locked(uintptr_t{0x5555'0000'0000}, kPageSize));
}
