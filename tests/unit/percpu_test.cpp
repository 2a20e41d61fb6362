// The rseq critical sections of arch/x86_64/percpu.h, run on slabs of the test's own rather than
// the allocator's, so that what each one leaves behind can be compared slot by slot.
#include <catch2/catch.hpp>

#include <cstdint>
#include <sys/mman.h>

#include "os/rseq.h"
#include "percpu.h"

using namespace fastmalloc;

namespace {

// One slab per possible index, in zeroed memory of the test's own (mapped: pages no section
// touches stay untouched, however many CPUs the machine may have).
struct TestSlabs {
  uint32_t count = os::possible_cpus();
  size_t bytes = size_t{count} * arch::kSlabBytes;
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

  TestSlabs() { REQUIRE(memory != MAP_FAILED); }
  ~TestSlabs() { munmap(memory, bytes); }
  TestSlabs(const TestSlabs&) = delete;
  TestSlabs& operator=(const TestSlabs&) = delete;
  uintptr_t base() const { return reinterpret_cast<uintptr_t>(memory); }
  uint64_t* slab(uint32_t index) { return arch::slab_of(base(), index); }
};

// The index the sections read for this thread now (it may change at once).
uint32_t current_index(const os::RseqSetup& rseq) {
  auto area = reinterpret_cast<uintptr_t>(__builtin_thread_pointer()) + rseq.area_offset;
  return __atomic_load_n(reinterpret_cast<const uint32_t*>(area + rseq.index_field), __ATOMIC_RELAXED);
}

constexpr uint64_t kClass = 5;
constexpr uint16_t kBegin = 100, kEnd = 160, kTo = 1000, kNewEnd = 1100;

uint64_t object(uint32_t index, int i) { return uint64_t{index} << 32 | static_cast<uint64_t>(0x1000 + i); }

// Gives class kClass `n` objects in [kBegin, kEnd) on every slab, each slab's objects its own.
void fill(TestSlabs& slabs, int n) {
  for (uint32_t index = 0; index < slabs.count; ++index) {
    uint64_t* s = slabs.slab(index);
    for (int i = 0; i < n; ++i) s[kBegin + i] = object(index, i);
    arch::store_header(s, kClass, arch::make_header(static_cast<uint16_t>(kBegin + n), kBegin, kEnd));
  }
}

// Moves kClass to [kTo, kNewEnd) on the slab of whatever index the thread has when the section
// commits; returns that index. A section that the kernel restarts (preemption, migration) is
// tried again, as cpu_cache.cpp would on a later miss.
uint32_t move_on_current_slab(const os::RseqSetup& rseq, TestSlabs& slabs, uint64_t from_bounds) {
  const uintptr_t base = slabs.base();
  const uint64_t to_bounds = (uint64_t{kTo} | uint64_t{kNewEnd} << 16) << 32;
  for (int attempt = 0; attempt < 100000; ++attempt) {
    const uint64_t index = current_index(rseq);
    REQUIRE(index < slabs.count);  // a registered thread's index; the section trusts it
    if (arch::percpu_move_class(rseq.area_offset, rseq.index_field, index, base, kClass, from_bounds, kTo, to_bounds))
      return static_cast<uint32_t>(index);
  }
  FAIL("the section never committed");
  return 0;
}

}  // namespace

TEST_CASE("moving a class to new slots carries every object there and commits the new bounds") {
  const os::RseqSetup rseq = os::rseq_setup(true);
  REQUIRE(rseq.kind != os::RseqKind::kNone);  // this kernel has rseq; the test needs it
  const uint64_t from_bounds = uint64_t{kBegin} | uint64_t{kEnd} << 16;

  for (int n : {0, 1, 37, kEnd - kBegin}) {
    INFO("objects: " << n);
    TestSlabs slabs;
    fill(slabs, n);
    const uint32_t moved = move_on_current_slab(rseq, slabs, from_bounds);
    REQUIRE(moved < slabs.count);
    const uint64_t* s = slabs.slab(moved);
    CHECK(arch::load_header(s, kClass) == arch::make_header(static_cast<uint16_t>(kTo + n), kTo, kNewEnd));
    for (int i = 0; i < n; ++i) REQUIRE(s[kTo + i] == object(moved, i));
    CHECK(s[kTo + n] == 0);  // nothing past the objects written
    // The other slabs are left as they were.
    for (uint32_t index = 0; index < slabs.count; ++index) {
      if (index == moved) continue;
      CHECK(arch::load_header(slabs.slab(index), kClass) ==
            arch::make_header(static_cast<uint16_t>(kBegin + n), kBegin, kEnd));
    }
  }
}

TEST_CASE("moving a class whose bounds changed meanwhile changes nothing") {
  const os::RseqSetup rseq = os::rseq_setup(true);
  REQUIRE(rseq.kind != os::RseqKind::kNone);
  TestSlabs slabs;
  fill(slabs, 20);
  // Bounds as a drain that stopped the class would have left them (cpu_cache.cpp's set_stopped).
  const uint64_t stale = uint64_t{kBegin} | uint64_t{kEnd + 1} << 16;
  const uint64_t to_bounds = (uint64_t{kTo} | uint64_t{kNewEnd} << 16) << 32;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t index = current_index(rseq);
    REQUIRE(index < slabs.count);
    REQUIRE_FALSE(arch::percpu_move_class(rseq.area_offset, rseq.index_field, index, slabs.base(), kClass, stale,
                                          kTo, to_bounds));
  }
  for (uint32_t index = 0; index < slabs.count; ++index) {
    const uint64_t* s = slabs.slab(index);
    REQUIRE(arch::load_header(s, kClass) == arch::make_header(kBegin + 20, kBegin, kEnd));
    for (int i = 0; i < 20; ++i) REQUIRE(s[kBegin + i] == object(index, i));
    REQUIRE(s[kTo] == 0);
  }
}

// How cpu_cache.cpp's ensure_slab gives a slab its first headers: a move of nothing from the
// all-zero header, on the slab's own CPU (or mm_cid) only.
TEST_CASE("a zero header gets its first bounds from a move of nothing, on its own slab only") {
  const os::RseqSetup rseq = os::rseq_setup(true);
  REQUIRE(rseq.kind != os::RseqKind::kNone);
  TestSlabs slabs;
  const uint32_t moved = move_on_current_slab(rseq, slabs, 0);
  REQUIRE(moved < slabs.count);
  CHECK(arch::load_header(slabs.slab(moved), kClass) == arch::make_header(kTo, kTo, kNewEnd));
  for (uint32_t index = 0; index < slabs.count; ++index)
    if (index != moved) CHECK(arch::load_header(slabs.slab(index), kClass) == 0);
  // Asked for a slab the thread is not on, the section misses and writes nothing.
  if (slabs.count > 1) {
    TestSlabs fresh;
    const uint64_t to_bounds = (uint64_t{kTo} | uint64_t{kNewEnd} << 16) << 32;
    int missed = 0;
    for (int i = 0; i < 1000; ++i) {
      const uint64_t other = (current_index(rseq) + 1) % fresh.count;
      missed += !arch::percpu_move_class(rseq.area_offset, rseq.index_field, other, fresh.base(), kClass, 0, kTo,
                                         to_bounds);
    }
    CHECK(missed > 0);
    for (uint32_t index = 0; index < fresh.count; ++index) {
      uint64_t header = arch::load_header(fresh.slab(index), kClass);
      // Only a thread that moved to `other` between reading its index and the section commits.
      CHECK((header == 0 || header == arch::make_header(kTo, kTo, kNewEnd)));
    }
  }
}
