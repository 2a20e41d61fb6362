// Size classes: every size round-trips to the smallest class that holds it, the waste bound,
// alignment, and span geometry.
#include <catch2/catch.hpp>

#include "size_classes.h"

using namespace fastmalloc;

TEST_CASE("every small size maps to the smallest class that holds it") {
  for (size_t size = 0; size <= kMaxSmallSize; ++size) {
    unsigned cls = size_to_class(size);
    REQUIRE(cls >= 1);
    REQUIRE(cls < kNumClasses);
    REQUIRE(size_class(cls).size >= size);
    if (cls > 1) REQUIRE(size_class(cls - 1).size < size);
  }
}

TEST_CASE("the lookup table gives the computed class for every size it covers") {
  for (size_t size = 0; size <= kMaxLookupSize; ++size) {
    INFO("size " << size);
    REQUIRE(size_to_class(size) == size_class_detail::class_of_size_computed(size));
  }
}

TEST_CASE("classes grow strictly and end at kMaxSmallSize") {
  for (unsigned cls = 2; cls < kNumClasses; ++cls) REQUIRE(size_class(cls).size > size_class(cls - 1).size);
  REQUIRE(size_class(kNumClasses - 1).size == kMaxSmallSize);
}

TEST_CASE("rounding wastes less than a quarter above 128 bytes, and under 16 bytes below") {
  for (size_t size = 1; size <= kMaxSmallSize; ++size) {
    size_t waste = size_class(size_to_class(size)).size - size;
    if (size <= 128) REQUIRE(waste < 16);
    else REQUIRE(waste * 4 < size);
  }
}

TEST_CASE("classes from 16 up are multiples of 16, and every power of two is a class") {
  for (unsigned cls = 2; cls < kNumClasses; ++cls) REQUIRE(size_class(cls).size % 16 == 0);
  for (size_t p = 8; p <= kMaxSmallSize; p *= 2) REQUIRE(size_class(size_to_class(p)).size == p);
}

TEST_CASE("spans hold their objects with at most 1/8 left over") {
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    const SizeClass& sc = size_class(cls);
    size_t bytes = sc.pages * kPageSize;
    INFO("class " << cls << " size " << sc.size);
    REQUIRE(sc.objects >= 1);
    REQUIRE(sc.objects == bytes / sc.size);
    REQUIRE(bytes - sc.objects * sc.size <= bytes / 8);
  }
}

TEST_CASE("object boundaries are recognized exactly") {
  // Every offset of two spans' worth (the second: what a page index past the span would give),
  // and then a sparse walk up to 2^32 through the multiples of the class's size and their
  // neighbours, where a wrong residue bound would accept too many objects.
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    const SizeClass& sc = size_class(cls);
    uint64_t span_bytes = uint64_t{sc.pages} * kPageSize, wrong = 0, first_wrong = 0;
    auto check = [&](uint64_t offset) {
      bool expected = offset % sc.size == 0 && offset < sc.used_bytes();
      if (is_object_boundary(cls, offset) != expected && wrong++ == 0) first_wrong = offset;
    };
    for (uint64_t offset = 0; offset < 2 * span_bytes; ++offset) check(offset);
    for (uint64_t multiple = 2 * span_bytes / sc.size * sc.size; multiple < (uint64_t{1} << 32); multiple += 4099 * uint64_t{sc.size}) {
      check(multiple - 1);
      check(multiple);
      check(multiple + 1);
    }
    INFO("class " << cls << " size " << sc.size << ": first wrong offset " << first_wrong);
    REQUIRE(wrong == 0);
  }
}

// The inverse of an odd x modulo 2^64 (Newton's iteration: each step doubles the correct bits).
static uint64_t inverse_mod_2_64(uint64_t x) {
  uint64_t y = x;  // right to 3 bits for any odd x
  for (int i = 0; i < 5; ++i) y *= 2 - x * y;
  return y;
}

TEST_CASE("offsets of any size are bounded before the boundary check") {
  // Above 2^32 the one-compare check accepts offsets it should not: for an odd div_magic, the
  // offset t * div_magic^-1 (mod 2^64) gives the product t, at most last_residue, for every t.
  // A corrupted link or a descriptor read in a newer state can hold such an offset.
  unsigned covered = 0;
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    const SizeClass& sc = size_class(cls);
    INFO("class " << cls << " size " << sc.size);
    REQUIRE(is_object_boundary_any(cls, 0));
    REQUIRE_FALSE(is_object_boundary_any(cls, sc.used_bytes()));
    uint64_t magic = size_class_detail::kTable.boundary.div_magic[cls];
    // Product 1 must pass the check (a residue bound of at least 1) without being an object's
    // (err, the residue of the first multiple, above 1).
    uint64_t err = magic * sc.size;
    if (magic % 2 == 0 || size_class_detail::kTable.boundary.last_residue[cls] == 0 || err == 1) continue;
    ++covered;
    uint64_t wild = inverse_mod_2_64(magic);  // the product is 1
    REQUIRE(wild * magic == 1);
    REQUIRE(wild >= (uint64_t{1} << 32));
    REQUIRE(is_object_boundary(cls, wild));  // what the bound is there for
    REQUIRE_FALSE(is_object_boundary_any(cls, wild));
  }
  REQUIRE(covered > 10);
}

TEST_CASE("between 4 and 8 KiB the classes are 512 bytes apart, so a page plus a header wastes little") {
  for (size_t size = 4097; size <= 8192; ++size) {
    size_t waste = size_class(size_to_class(size)).size - size;
    REQUIRE(waste < 512);
  }
  REQUIRE(size_class(size_to_class(4368)).size == 4608);  // SQLite's page-cache buffer
  // Around the finer group the classes keep the pattern of the others.
  REQUIRE(size_class(size_to_class(4096)).size == 4096);
  REQUIRE(size_class(size_to_class(8193)).size == 9216);
  REQUIRE(size_class(size_to_class(9217)).size == 10240);
  REQUIRE(size_class(size_to_class(3073)).size == 3584);
}

TEST_CASE("from 512 bytes to 16 KiB, a power of two plus a header is rounded up by at most an eighth") {
  for (size_t power = 512; power <= 16384; power *= 2) {
    INFO("power " << power);
    for (size_t header = 1; header <= power / 8; header += (header < 64 ? 1 : 61)) {
      size_t size = power + header;
      REQUIRE(size_class(size_to_class(size)).size == power + power / 8);
    }
    // Just above the header class: the class a quarter up (in the 4-8 KiB group, two eighths).
    REQUIRE(size_class(size_to_class(power + power / 8 + 1)).size == (power == 4096 ? 4096 + 1024 : power + power / 4));
  }
  REQUIRE(size_class(size_to_class(1032)).size == 1152);  // 16,000 of them live in the SQLite workload
  REQUIRE(size_class(size_to_class(520)).size == 576);
  REQUIRE(size_class(size_to_class(512)).size == 512);
  // Above, where every span holds one block, the classes stay a quarter apart.
  REQUIRE(size_class(size_to_class(32769)).size == 40960);
}
