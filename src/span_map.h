// The span map: from any address the allocator handed out to the span descriptor that owns it.
// A two-level radix tree over 8 KiB page numbers: a root of 2^17 leaf pointers in .bss (1 MiB of
// address space, touched only where used) and leaves of 2^18 entries (2 GiB of address space
// each) mapped on demand, and unmapped again (release_unused_leaves) once they hold no entry,
// unless pinned (the page heap's). Inside a leaf, the pages of entries that describe only
// released free pages are given back too (forget_range).
//
// The first leaf the map creates, the home leaf, lives inside the map object (.bss) and is never
// released. It covers the page heap's first growth (unless a large block came first), and most
// programs' heaps stay within its 2 GiB. A lookup there is one load at a fixed address instead
// of the root's load and then the leaf's. free() pushes the block to the cache of the class
// that lookup finds, so the push's addresses wait on it: where classes vary from call to call
// (alloc_bench workingset, one thread) the root's load cost 10% of the throughput.
//
// Lookups that may reach a leaf that can be released (every lookup of a pointer the program
// passes in: free, realloc, malloc_usable_size) hold the read side of structure_lock(), a
// passive reader-writer lock (sync/prwlock.h): one plain store in, one out, no atomic
// instruction. Removing a leaf is its only writer. Adding a leaf needs no lock from readers: the
// leaf is zeroed before its pointer is published with a release store. See the
// SYNCHRONIZATION note in front_end.cpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "base.h"
#include "span.h"
#include "sync/mutex.h"
#include "sync/prwlock.h"

namespace fastmalloc {

class SpanMap {
 public:
  static constexpr unsigned kPageBits = kAddressBits - kPageShift;
  static constexpr unsigned kLeafBits = 18;
  static constexpr unsigned kRootBits = kPageBits - kLeafBits;

  // An entry packs the descriptor with what free() needs to know without reading it:
  //   bits  0-47  the Span* (descriptors live in user space, below 2^47)
  //   bits 48-55  the page's index within its small span
  //   bits 56-63  the size class, for a page of a small span; 0 for every other page
  // so for a block in a small span, class and offset in the span come from the entry alone. The
  // class is on top so that free gets it, and its test for 0, from one shift.
  static constexpr unsigned kPageIndexShift = 48, kClassShift = 56;
  static constexpr uintptr_t kSpanMask = (uintptr_t{1} << kPageIndexShift) - 1;

  static Span* entry_span(uintptr_t entry) { return reinterpret_cast<Span*>(entry & kSpanMask); }
  static unsigned entry_class(uintptr_t entry) { return static_cast<unsigned>(entry >> kClassShift); }
  // The offset of addr from the start of its small span, given addr's entry.
  static uintptr_t entry_offset(uintptr_t entry, uintptr_t addr) {
    return (entry >> kPageIndexShift & 0xff) << kPageShift | (addr & (kPageSize - 1));
  }

  // The entry for the page holding `addr`, or 0. Any address is safe to ask about. An entry may
  // be stale for a page no live span covers (its class is then 0): callers that take the span
  // check that it really contains the address, in the state they expect.
  FM_ALWAYS_INLINE uintptr_t lookup_entry(uintptr_t addr) const {
    uintptr_t page = addr >> kPageShift;
    // Until the home leaf is given out, its index reads 0 and its entries are all zero: right
    // for the region at 0 too, which no leaf covers yet.
    if (FM_LIKELY(page >> kLeafBits == home_index_.load(std::memory_order_relaxed)))
      return home_leaf_.entries[page & (kLeafEntries - 1)].load(std::memory_order_relaxed);
    if (FM_UNLIKELY(page >> kPageBits)) return 0;
    Leaf* leaf = root_[page >> kLeafBits].load(std::memory_order_acquire);
    if (FM_UNLIKELY(leaf == nullptr)) return 0;
    return leaf->entries[page & (kLeafEntries - 1)].load(std::memory_order_relaxed);
  }
  FM_ALWAYS_INLINE Span* lookup(uintptr_t addr) const { return entry_span(lookup_entry(addr)); }

  // Makes sure entries exist for every page of [start, start + bytes). False when the OS
  // refuses memory for a leaf.
  bool ensure(uintptr_t start, size_t bytes);
  // The same with lock() held; a leaf the OS refuses comes from the spare, if one is reserved.
  bool ensure_locked(uintptr_t start, size_t bytes);
  // With lock() held: maps a spare leaf now, so that a later ensure_locked() of one page cannot
  // fail. For moving a block (mremap) to an address not known in advance.
  bool reserve_spare_locked();

  // Records `span` (class 0) for the page holding `addr`: a large block's first page. The page
  // must have been ensure()d, and the caller owns it (holds the lock that owns it). The entry is
  // counted in its leaf, and a leaf whose counted entries are all cleared can be released, so
  // whoever ensures and then sets an entry in a leaf that may be empty does both under lock().
  void set(uintptr_t addr, Span* span) { store(addr, reinterpret_cast<uintptr_t>(span)); }
  // The same for pages in pinned leaves (the page heap's), whose entries are not counted: a
  // pinned leaf stays whatever it holds. For the page holding `addr`, for every page of a range,
  // or for a small span, whose entries record its class and each page's index too. The page
  // heap writes these on every span it carves, grows and frees, up to 128 entries a span:
  // counting each (a load of the old entry and an atomic add where it turned zero or non-zero)
  // took a third of a loop of vectors doubled to 1 MiB by realloc.
  void set_pinned(uintptr_t addr, Span* span) { store_pinned(addr >> kPageShift, 1, reinterpret_cast<uintptr_t>(span), 0); }
  void set_range(uintptr_t start, size_t bytes, Span* span);
  void set_small_span(Span* span, unsigned size_class);

  // Keeps the leaves of an ensure()d range mapped for good, entries or not: for memory that
  // never goes back to the OS (the page heap's), whose entries forget_range() may clear. Called
  // by the range's owner, which must keep release_unused_leaves() from running meanwhile.
  void pin(uintptr_t start, size_t bytes);
  // For a released free span, which needs entries only at its ends: clears the entries of the
  // pages of [start, start + bytes), in pinned leaves (uncounted, as set_pinned() wrote them),
  // then gives back to the OS the pages of entries, among those the range touches, that are
  // all zero and describe only pages of [owned_start, owned_end). The caller owns that range:
  // nobody else writes its entries meanwhile (the page heap's lock). Readers may still look:
  // they find 0, which they take for an address the allocator never handed out.
  void forget_range(uintptr_t start, size_t bytes, uintptr_t owned_start, uintptr_t owned_end);

  // Clears the entry of the page holding `addr` (a large block's first page), and gives back
  // the page of entries around it once that leaves it all zero: large blocks land all over the
  // address space, and each would otherwise keep a page of entries resident after it is gone.
  // The caller holds lock() and the page heap's lock, so no writer of any entry runs meanwhile.
  void forget_entry(uintptr_t addr);

  Mutex& lock() { return lock_; }

  // Unmaps every leaf that holds no entry; returns the bytes given back. Takes lock() and the
  // write side of structure_lock(); the caller must hold no lock below lock() (it is called
  // with the page heap's lock held, which keeps the page heap from filling a leaf meanwhile).
  // Readers that hold the write side up for kWriterPatienceMs (a signal handler may be waiting
  // for one of those locks in the middle of a section) make it keep the rest for another time.
  static constexpr uint64_t kWriterPatienceMs = 500;
  size_t release_unused_leaves();
  size_t leaf_bytes() const { return leaves_.load(std::memory_order_relaxed) * sizeof(Leaf); }
  // For tests: the pins and counted entries of the leaf holding addr.
  int32_t leaf_count(uintptr_t addr) const { return live_[(addr >> kPageShift) >> kLeafBits].load(std::memory_order_relaxed); }
  // What the leaves hold resident (mincore). Takes lock().
  size_t resident_leaf_bytes();
  static constexpr size_t leaf_bytes_per_leaf() { return sizeof(Leaf); }

  using StructureLock = sync::Prwlock<0>;
  StructureLock& structure_lock() { return structure_lock_; }

 private:
  static constexpr size_t kLeafEntries = size_t{1} << kLeafBits;
  struct Leaf {
    std::atomic<uintptr_t> entries[kLeafEntries];
  };

  // Counts each leaf's non-zero entries outside pinned memory, so empty leaves can be found. An
  // entry has one writer at a time (its page's owner), so reading the old value apart from the
  // store loses nothing.
  void store(uintptr_t addr, uintptr_t entry) {
    uintptr_t page = addr >> kPageShift;
    std::atomic<uintptr_t>& slot = leaf_of(page)->entries[page & (kLeafEntries - 1)];
    uintptr_t old = slot.load(std::memory_order_relaxed);
    slot.store(entry, std::memory_order_release);
    if ((old == 0) != (entry == 0)) live_[page >> kLeafBits].fetch_add(entry != 0 ? 1 : -1, std::memory_order_relaxed);
  }
  // Writes `pages` entries from page number `first`, in pinned leaves, uncounted: the i-th is
  // base | i * index_step (index_step 0: all the same; 1 << kPageIndexShift: a small span's).
  void store_pinned(uintptr_t first, size_t pages, uintptr_t base, uintptr_t index_step);
  template <class Fn>
  void for_each_entry(uintptr_t first, uintptr_t end, Fn fn);
  Leaf* leaf_of(uintptr_t page) const { return root_[page >> kLeafBits].load(std::memory_order_relaxed); }
  // With lock_ held: the home leaf, for the first leaf index ever needed.
  Leaf* take_home_leaf(uintptr_t index);
  // madvises the runs of all-zero entry pages for heap pages [first, end) within [owned_first, owned_end).
  void release_zero_entry_pages(uintptr_t first, uintptr_t end, uintptr_t owned_first, uintptr_t owned_end);

  // Page-aligned, so that none of it shares a page with the library's .data: release() of its
  // pages of entries (madvise) must find anonymous memory, which reads back as zero.
  alignas(4096) Leaf home_leaf_ = {};
  std::atomic<uintptr_t> home_index_{0};  // set once, under lock_, before root_ names the leaf
  bool home_given_ = false;
  std::atomic<Leaf*> root_[size_t{1} << kRootBits] = {};
  // Per leaf: its pins, plus its non-zero entries outside pinned memory (large blocks').
  std::atomic<int32_t> live_[size_t{1} << kRootBits] = {};
  std::atomic<size_t> leaves_{0};
  // The root indexes ever given a leaf (none while end is 0). Zero-initialized, so that this
  // object stays in .bss: a non-zero member would put its 1.5 MiB into the library's file.
  size_t roots_used_begin_ = 0, roots_used_end_ = 0;
  Leaf* spare_ = nullptr;
  Mutex lock_;  // serializes leaf creation, release and the spare
  StructureLock structure_lock_;
};

extern FM_HIDDEN SpanMap g_span_map;

}  // namespace fastmalloc
