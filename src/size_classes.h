// Size classes: the fixed set of object sizes small requests are rounded up to, and for each
// the span (run of pages) its objects are carved from.
//
// Classes: 8; 16 to 128 in steps of 16; then, for the sizes in each group (2^k, 2^(k+1)], four
// classes a quarter of 2^k apart (2^k + 2^(k-2), ... 2^(k+1)), up to kMaxSmallSize = 1 MiB.
// Two refinements, for what programs ask for:
//   - from 512 bytes to 32 KiB, each group has a class at 2^k + 2^(k-3), for the common request
//     of a power of two plus a small header (SQLite holds 16,000 blocks of 1032 bytes at its peak,
//     which the 1280 class would round up by a quarter);
//   - (4 KiB, 8 KiB] has eight classes, 512 bytes apart (SQLite's page cache asks 4368 bytes a
//     page: 5% over in the 4608 class, 17% in 5120).
// Every class from 16 up is a multiple of 16, so objects carved from a page-aligned span are
// 16-byte aligned; every power of two is a class, so an aligned request can be served by a class
// that is a multiple of the alignment. Rounding wastes less than 1/4 of a request above 128
// bytes (one step over the smallest size of its group), at most 1/8 just above a power of two
// from 512 bytes to 16 KiB, and at most 15 bytes below 128.
//
// Why 1 MiB: a block above it gets its own mapping and is unmapped on free, so every new one
// costs an mmap, a munmap and a page fault per page touched. Up to 1 MiB (the buffers that
// programs grow by doubling, and realloc through) blocks come from spans and are used again;
// with a 256 KiB limit the realloc workload of bench/ ran 9-13x slower.
//
// Class 0 is not a class: span descriptors use it to mean "not a small-object span".
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "base.h"

namespace fastmalloc {

inline constexpr size_t kMaxSmallSize = 1024 * 1024;
// Requests up to kMaxLookupSize find their class in a table (kTable.lookup): in 8-byte steps
// up to kMaxFineLookupSize, where the classes are 16 bytes apart, and in 128-byte steps above,
// where every class is a multiple of 128. Above kMaxLookupSize it is computed; blocks that big
// bypass the caches (kMaxCachedSize), so the computation is the least of their cost.
inline constexpr size_t kMaxFineLookupSize = 1024;
inline constexpr size_t kMaxLookupSize = 64 * 1024;
inline constexpr size_t kCoarseLookupStep = 128;
inline constexpr unsigned kNumClasses = 71;  // 1..70 are classes

struct SizeClass {
  uint32_t size;     // bytes per object
  uint32_t pages;    // pages per span (at most 255: the span map stores a page's index in 8 bits)
  uint32_t objects;  // objects per span

  // Offsets at or above it in a span hold no object.
  constexpr uint64_t used_bytes() const { return uint64_t{objects} * size; }
};

namespace size_class_detail {

// Group lg holds the sizes (2^lg, 2^(lg+1)]. Groups kHeaderLg to kLastHeaderLg start with a
// header class at 2^lg + 2^(lg-3); group kFineLg has eight classes 2^(lg-3) apart instead.
// The header classes stop below the classes of one block per span (from 40 KiB), whose spans
// are whole pages anyway: a 36 KiB class would take the 40 KiB class's five pages.
inline constexpr unsigned kFirstGroupLg = 7, kFirstGroupClass = 10;
inline constexpr unsigned kHeaderLg = 9, kLastHeaderLg = 14, kFineLg = 12, kLastGroupLg = 19;

constexpr bool has_header_class(unsigned lg) { return lg >= kHeaderLg && lg <= kLastHeaderLg && lg != kFineLg; }
constexpr unsigned classes_in_group(unsigned lg) { return lg == kFineLg ? 8 : has_header_class(lg) ? 5 : 4; }

struct GroupFirsts {
  uint8_t of[kLastGroupLg + 2];  // the first class of each group; of[kLastGroupLg + 1] = kNumClasses
};
constexpr GroupFirsts make_group_firsts() {
  GroupFirsts firsts{};
  unsigned cls = kFirstGroupClass;
  for (unsigned lg = kFirstGroupLg; lg <= kLastGroupLg + 1; ++lg) {
    firsts.of[lg] = static_cast<uint8_t>(cls);
    cls += classes_in_group(lg);
  }
  return firsts;
}
inline constexpr GroupFirsts kGroupFirsts = make_group_firsts();

constexpr size_t size_of_class(unsigned cls) {
  if (cls == 1) return 8;
  if (cls < kFirstGroupClass) return 16 * (cls - 1);
  unsigned lg = kFirstGroupLg;
  while (cls >= kGroupFirsts.of[lg + 1]) ++lg;
  size_t base = size_t{1} << lg;
  unsigned i = cls - kGroupFirsts.of[lg];
  if (lg == kFineLg) return base + (i + 1) * (base >> 3);
  if (has_header_class(lg)) return i == 0 ? base + (base >> 3) : base + i * (base >> 2);
  return base + (i + 1) * (base >> 2);
}

// The class of a size above kMaxLookupSize; below it, what the lookup table is built from.
constexpr unsigned class_of_size_computed(size_t size) {
  if (size <= 8) return 1;
  if (size <= 128) return static_cast<unsigned>((size + 15) >> 4) + 1;
  unsigned lg = 63u - static_cast<unsigned>(__builtin_clzll(size - 1));
  size_t offset = size - 1 - (size_t{1} << lg);
  unsigned eighth = static_cast<unsigned>(offset >> (lg - 3)), quarter = eighth >> 1, first = kGroupFirsts.of[lg];
  if (lg == kFineLg) return first + eighth;
  if (has_header_class(lg)) return first + (eighth == 0 ? 0 : quarter + 1);
  return first + quarter;
}

// The smallest span of at least 32 KiB that holds a few objects (up to 8, or 64 KiB worth) with
// at most 1/8 of it left over at the end. 32 KiB, not one page: each CPU cache fills from spans
// of its own (CentralFreeList::affine_), and two CPUs' spans side by side still had the CPUs
// pulling each other's lines at every boundary (docs/design.md, "Spans of their own"). Carving
// is lazy, so the pages of a span that nothing has taken cost no memory.
constexpr uint32_t pages_for(size_t size) {
  size_t want_objects = 65536 / size;
  if (want_objects > 8) want_objects = 8;
  if (want_objects < 1) want_objects = 1;
  for (size_t pages = 1;; ++pages) {
    size_t bytes = pages * kPageSize;
    if (bytes >= 32 * 1024 && bytes / size >= want_objects && bytes % size <= bytes / 8) return static_cast<uint32_t>(pages);
  }
}

// Where a request of `size` bytes (at most kMaxLookupSize) finds its class in Table::lookup:
// the fine entries first, one per 8 bytes, then the coarse ones, one per 128 bytes, numbered on
// from the fine ones (both are rounded-up quotients, so each entry stands for the largest size
// that maps to it).
inline constexpr size_t kFineLookupEntries = kMaxFineLookupSize / 8 + 1;
constexpr size_t fine_lookup_index(size_t size) { return (size + 7) / 8; }
constexpr size_t coarse_lookup_index(size_t size) {
  constexpr size_t kStepsBelow = kMaxFineLookupSize / kCoarseLookupStep;  // covered by the fine entries
  return (size + kCoarseLookupStep - 1) / kCoarseLookupStep - kStepsBelow - 1 + kFineLookupEntries;
}
static_assert(coarse_lookup_index(kMaxFineLookupSize + 1) == kFineLookupEntries);
inline constexpr size_t kLookupEntries = coarse_lookup_index(kMaxLookupSize) + 1;

// What free's check (is_object_boundary) reads, as two arrays indexed by class: the check
// addresses both from one base, with the class as a scaled index, and multiplies and compares
// with them in place. div_magic is floor(2^64 / size) + 1, so div_magic * size = 2^64 + err with
// err from 1 to size. For an offset n = q * size + r below 2^32, n * div_magic (mod 2^64) is
// q * err + r * div_magic: at least div_magic (about 2^64 / size, far above any q * err) when r is
// not 0, and q * err when it is (Lemire's divisibility test, with err kept above 0 so that it
// also counts q). So n starts one of a span's objects (r = 0, q below `objects`) exactly when the
// product is at most last_residue = (objects - 1) * err: one multiply and one compare.
struct BoundaryTable {
  uint64_t div_magic[kNumClasses];
  uint64_t last_residue[kNumClasses];
};

struct Table {
  SizeClass classes[kNumClasses];
  BoundaryTable boundary;
  uint8_t lookup[kLookupEntries];
};

constexpr Table make_table() {
  Table t{};
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    size_t size = size_of_class(cls);
    uint32_t pages = pages_for(size);
    uint32_t objects = static_cast<uint32_t>(pages * kPageSize / size);
    t.classes[cls] = SizeClass{static_cast<uint32_t>(size), pages, objects};
    uint64_t magic = (uint64_t{0} - size) / size + 2;  // (2^64 - size) / size is floor(2^64 / size) - 1
    t.boundary.div_magic[cls] = magic;
    t.boundary.last_residue[cls] = (objects - 1) * (magic * size);  // magic * size wraps to err
  }
  for (size_t size = 0; size <= kMaxFineLookupSize; size += 8) t.lookup[fine_lookup_index(size)] = static_cast<uint8_t>(class_of_size_computed(size));
  for (size_t size = kMaxFineLookupSize + kCoarseLookupStep; size <= kMaxLookupSize; size += kCoarseLookupStep)
    t.lookup[coarse_lookup_index(size)] = static_cast<uint8_t>(class_of_size_computed(size));
  return t;
}

inline constexpr Table kTable = make_table();
static_assert(size_of_class(kNumClasses - 1) == kMaxSmallSize);
static_assert(kGroupFirsts.of[kLastGroupLg + 1] == kNumClasses);
static_assert(class_of_size_computed(kMaxSmallSize) == kNumClasses - 1);
// A coarse entry stands for 128 sizes, so no class may end inside its step.
static_assert([] {
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    size_t size = size_of_class(cls);
    if (size > kMaxFineLookupSize && size <= kMaxLookupSize && size % kCoarseLookupStep != 0) return false;
  }
  return true;
}());
static_assert(pages_for(kMaxSmallSize) <= 255 && pages_for(size_of_class(kNumClasses - 2)) <= 255);

}  // namespace size_class_detail

FM_ALWAYS_INLINE const SizeClass& size_class(unsigned cls) { return size_class_detail::kTable.classes[cls]; }

// Whether the spans of class `cls` hold one block each (the classes from 40 KiB up): realloc
// resizes such a block by resizing its span.
FM_ALWAYS_INLINE bool one_block_per_span(unsigned cls) { return size_class(cls).objects == 1; }
// The smallest of them; every class above it holds one block per span too.
inline constexpr unsigned kFirstAloneClass = [] {
  unsigned cls = 1;
  while (size_class_detail::kTable.classes[cls].objects != 1) ++cls;
  return cls;
}();
static_assert([] {
  for (unsigned cls = kFirstAloneClass; cls < kNumClasses; ++cls)
    if (size_class_detail::kTable.classes[cls].objects != 1) return false;
  return true;
}());

// realloc resizes a block alone in its span by giving its span the pages of the new class
// (PageHeap::extend and PageHeap::shrink, which split off the pages the block no longer needs):
// each such class must have more pages than the one below, or a shrink would split off nothing.
static_assert([] {
  for (unsigned cls = kFirstAloneClass + 1; cls < kNumClasses; ++cls)
    if (size_class_detail::kTable.classes[cls].pages <= size_class_detail::kTable.classes[cls - 1].pages) return false;
  return true;
}());

// The class of a request of at most kMaxFineLookupSize bytes, and of one of at most
// kMaxLookupSize bytes above that: one table load each.
FM_ALWAYS_INLINE unsigned fine_lookup_class(size_t size) {
  return size_class_detail::kTable.lookup[size_class_detail::fine_lookup_index(size)];
}
FM_ALWAYS_INLINE unsigned coarse_lookup_class(size_t size) {
  return size_class_detail::kTable.lookup[size_class_detail::coarse_lookup_index(size)];
}

// The class for a request of `size` bytes; size must be at most kMaxSmallSize.
FM_ALWAYS_INLINE unsigned size_to_class(size_t size) {
  if (FM_LIKELY(size <= kMaxFineLookupSize)) return fine_lookup_class(size);
  if (FM_LIKELY(size <= kMaxLookupSize)) return coarse_lookup_class(size);
  return size_class_detail::class_of_size_computed(size);
}

// True when `offset` (below 2^32) is a whole number of objects of class `cls` and lies where an
// object can start in the class's spans. BoundaryTable says how.
FM_ALWAYS_INLINE bool is_object_boundary(unsigned cls, uint64_t offset) {
  const size_class_detail::BoundaryTable& table = size_class_detail::kTable.boundary;
  return offset * table.div_magic[cls] <= table.last_residue[cls];
}

// The same for an offset that may be anything (read from memory the program may have written,
// or from a descriptor read in a newer state): bounded first.
FM_ALWAYS_INLINE bool is_object_boundary_any(unsigned cls, uint64_t offset) {
  return offset < size_class(cls).used_bytes() && is_object_boundary(cls, offset);
}

// One T per size class, each constructed at compile time from its class index (entry 0 is
// unused). For per-class structures that hold a lock and so can be neither copied nor filled
// in by a loop: every entry is built in place.
template <class T>
struct PerClass {
  T of[kNumClasses];
};

namespace size_class_detail {
template <class T, size_t... I>
constexpr PerClass<T> make_per_class(std::index_sequence<I...>) {
  return PerClass<T>{{T(static_cast<unsigned>(I))...}};
}
}  // namespace size_class_detail

template <class T>
constexpr PerClass<T> make_per_class() {
  return size_class_detail::make_per_class<T>(std::make_index_sequence<kNumClasses>{});
}

}  // namespace fastmalloc
