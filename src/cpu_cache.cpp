// Per-CPU caches: setup, the slow paths, draining, statistics.
//
// A slab's header words change only as arch/slab.h allows. The fast paths own a slab through
// rseq; everything else that writes a slab (setting it up, draining it, and every access in
// locked mode) holds the slab's control lock. In rseq mode a thread that has no usable rseq
// index never touches a slab: it goes to the transfer cache directly.
#include "cpu_cache.h"

#include <algorithm>
#include <atomic>

#include "block_check.h"
#include "options.h"
#include "os/os.h"
#include "os/rseq.h"
#include "page_heap.h"
#include "sync/mutex.h"
#include "sync/rcu.h"
#include "transfer_cache.h"

namespace fastmalloc {

constinit PerCpuConfig g_percpu{};

namespace {

// The most room a class can grow to on one CPU, for classes up to 64 KiB: 128 KiB of objects
// (at most 2048), and never less than two transfer batches. A room of one batch (what 128 KiB
// left the classes above 32 KiB, whose batch is 2) is emptied by a refill's worth of
// allocations and filled by a drain's worth of frees, so a program that takes and returns such
// blocks in turn missed on a third of its calls to them; with two, a refill leaves room for the
// frees and a drain leaves objects for the allocations.
constexpr uint16_t capacity_of(unsigned cls) {
  size_t size = size_class_detail::size_of_class(cls);
  if (size > kMaxCachedSize) return 0;
  size_t n = 128 * 1024 / size, floor = 2 * static_cast<size_t>(batch_size(cls));
  return static_cast<uint16_t>(n < floor ? floor : n > 2048 ? 2048 : n);
}

// A class's first room: one transfer batch, or all it may have if that is less.
constexpr uint16_t initial_room_of(unsigned cls) {
  return capacity_of(cls) < batch_size(cls) ? capacity_of(cls) : static_cast<uint16_t>(batch_size(cls));
}

// Whether the class can grow past its first room, and so has a region of its own (a home).
constexpr bool has_home(unsigned cls) { return capacity_of(cls) > initial_room_of(cls); }

// The most room the class can ever have on one CPU: its home region, or its nursery room.
constexpr uint16_t max_room_of(unsigned cls) { return has_home(cls) ? capacity_of(cls) : initial_room_of(cls); }

// Where each class's slots are. Every class starts in the nursery: one run of small rooms right
// after the headers, its initial room each, so the classes a program uses only a little share
// a page or two of slots on each CPU instead of writing one page each. A class that grows moves
// to its own region (home), sized for its largest room, and stays there until the slab is
// drained. Slot indexes count 8-byte words from the slab's start.
struct Layout {
  uint16_t nursery[kNumClasses];  // initial_room_of(cls) slots
  uint16_t home[kNumClasses];     // capacity_of(cls) slots, where has_home(cls)
  uint16_t end;                   // one past the last region
};

constexpr Layout make_layout() {
  Layout layout{};
  uint16_t next = kNumClasses;  // the first words hold the headers
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    layout.nursery[cls] = next;
    next = static_cast<uint16_t>(next + initial_room_of(cls));
  }
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    layout.home[cls] = next;
    if (has_home(cls)) next = static_cast<uint16_t>(next + capacity_of(cls));
  }
  layout.end = next;
  return layout;
}

constexpr Layout kLayout = make_layout();
static_assert(kLayout.end <= arch::kFreeHitsWord, "slots must fit in a slab, below its counter");
static_assert(kLayout.home[1] * sizeof(uint64_t) <= 2 * 4096, "the headers and the nursery fit in two 4 KiB pages");

// Capacities move: a class starts with its initial room in the nursery (less if the budget
// cannot hold that for every class), grows by a batch on misses (record_miss) while the CPU's
// total stays within FASTMALLOC_CPU_CACHE_SIZE (g_budget_bytes), up to max_room_of(), moving
// home when it outgrows its nursery room, and gives back half its room above its quiet floor,
// and the objects it holds, when it went a whole period with fewer than kBusyMisses misses
// (scan_slabs); while the heap shrinks, at once (shrink_room_to_floor).
uint16_t g_initial_room[kNumClasses];
uint64_t g_budget_bytes;

// The misses in one period (both kinds together) from which a class is busy: room saves it
// time. Below that its misses cost next to nothing (a few dozen microseconds a period at most)
// while every object its room holds keeps a span resident: it does not grow, and it shrinks.
constexpr uint32_t kBusyMisses = 16;

// The least room a class that is not busy is shrunk to: 8 KiB of objects (at least one), or
// its initial room if that is less. Below its initial room, because a class that a program uses
// a little (a few blocks of it live) has no use for a batch of 32 KiB sitting on each CPU; if
// it gets busy, it grows again.
int quiet_floor_of(unsigned cls) {
  size_t n = 8192 / size_class_detail::size_of_class(cls);
  if (n < 1) n = 1;
  return n < g_initial_room[cls] ? static_cast<int>(n) : g_initial_room[cls];
}

uint64_t class_bytes(unsigned cls, uint64_t objects) { return objects * size_class_detail::size_of_class(cls); }

void set_capacity(uint64_t budget_bytes) {
  g_budget_bytes = budget_bytes;
  uint64_t initial_bytes = 0;
  for (unsigned cls = 1; cls < kNumClasses; ++cls) initial_bytes += class_bytes(cls, initial_room_of(cls));
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    uint64_t slots = initial_room_of(cls);
    if (budget_bytes < initial_bytes) slots = slots * budget_bytes / initial_bytes;
    g_initial_room[cls] = static_cast<uint16_t>(slots);
  }
}

enum class ScanAction : uint8_t { kNone, kDrain, kShrink };

struct alignas(64) SlabControl {
  Mutex lock;
  std::atomic<bool> ready;
  // Under lock: the slab's headers at the last idle scan (slab_signature), what the scan or
  // malloc_trim drain in progress stopped it for, each class's room (what set_stopped
  // restores; read without the lock only as a hint, room_of) and the bytes those capacities add
  // up to.
  uint64_t signature;
  ScanAction scan_action;
  std::atomic<uint32_t> room[kNumClasses];  // a Room (below): the class's slots, in the nursery or home
  uint16_t shrink_to[kNumClasses];  // during a scan: the new end, or 0
  bool empty_out[kNumClasses];       // during a scan: whether the class's objects all go
  uint64_t capacity_bytes;
  // Misses since the last scan, per class, of pops (alloc) and pushes (free): written by the
  // slow paths without the lock (a lost count only delays a change).
  std::atomic<uint32_t> alloc_misses[kNumClasses], free_misses[kNumClasses];
};

// A class's room as its control keeps it: slots [begin, end), begin in the low half of one word,
// so that a reader without the lock never pairs the begin of one room with the end of another.
// It did, when they were two words: a refill read a drained class's new nursery end with its old
// home begin, asked the transfer cache for -21076 objects, and memcpy crashed (docs/design.md,
// "The torn room").
struct Room {
  uint16_t begin, end;
  int size() const { return end - begin; }
};

Room room_in_books(const SlabControl& control, unsigned cls) {
  uint32_t word = control.room[cls].load(std::memory_order_relaxed);
  return Room{static_cast<uint16_t>(word), static_cast<uint16_t>(word >> 16)};
}

void set_room(SlabControl& control, unsigned cls, uint16_t begin, uint16_t end) {
  control.room[cls].store(uint32_t{begin} | uint32_t{end} << 16, std::memory_order_relaxed);
}

constexpr uint32_t kNoSlab = ~0u;

Mutex g_setup_lock;
// vfork (cache_vfork_child_started): the children alive now, counted under g_vfork_lock, which
// also orders every store of g_percpu.fast_num_slabs after setup's. t_vfork_depth is raised by
// a vfork child, in the TLS it shares with its parent thread, which is suspended until the
// child is done and then lowers it: a depth, not a flag, so that a child that itself vforks
// is still marked once its own child is done.
Mutex g_vfork_lock;
uint32_t g_vfork_children = 0;
constinit thread_local uint32_t t_vfork_depth = 0;
Mutex g_scan_lock;  // one scan_slabs or cache_drain_all at a time
bool g_setup_failed = false;
CacheMode g_mode = CacheMode::kNotSetUp;
bool g_own_registration = false;
bool g_membarrier = false;
bool g_count_hits = false;  // FASTMALLOC_STATS: the slow paths run the counting pops and pushes
SlabControl* g_control = nullptr;
// Every CPU adds to these on each slab miss: each on a line of its own, away from the flags
// above, which every slow path reads.
CacheLineAlone<std::atomic<uint64_t>> g_alloc_misses = {0}, g_free_misses = {0};

void count(std::atomic<uint64_t>& counter, uint64_t n) { counter.fetch_add(n, std::memory_order_relaxed); }

uint64_t* slab(uint32_t index) { return arch::slab_of(g_percpu.slabs, index); }

// Slow paths test setup with an acquire load, so the mode and the rest of g_percpu written
// before the release store of `slabs` are seen too.
bool is_set_up() { return __atomic_load_n(&g_percpu.slabs, __ATOMIC_ACQUIRE) != 0; }

uintptr_t rseq_area() { return reinterpret_cast<uintptr_t>(__builtin_thread_pointer()) + g_percpu.rseq_area_offset; }

// Lets the inline paths run, once set up and while no vfork child lives, in the modes that have
// them (not locked mode; not statistics or hardened mode, which do their work in the slow path).
// With g_vfork_lock held, or in a fork child.
void publish_inline_paths() {
  if (g_vfork_children != 0 || !is_set_up()) return;
  bool inline_paths = g_mode != CacheMode::kLocked && !g_count_hits && !hardened_mode();
  __atomic_store_n(&g_percpu.fast_num_slabs, inline_paths ? g_percpu.num_slabs : 0, __ATOMIC_RELEASE);
}

void setup() {
  prepare_block_checks();  // whether hardened mode is on
  LockGuard guard(g_setup_lock);
  if (g_percpu.slabs != 0 || g_setup_failed) return;
  uint32_t num_slabs = os::possible_cpus();
  os::RseqSetup rseq = os::rseq_setup(options().rseq);
  void* slabs = os::map(size_t{num_slabs} << arch::kSlabShift, 4096);
  size_t control_bytes = round_up(num_slabs * sizeof(SlabControl), 4096);
  void* control = os::map(control_bytes, 4096);
  if (slabs == nullptr || control == nullptr) {
    // No per-CPU level: every call goes to the transfer cache.
    if (slabs != nullptr) os::unmap(slabs, size_t{num_slabs} << arch::kSlabShift);
    if (control != nullptr) os::unmap(control, control_bytes);
    g_setup_failed = true;
    g_mode = CacheMode::kLocked;
    return;
  }
  g_control = static_cast<SlabControl*>(control);
  if (rseq.kind == os::RseqKind::kNone) {
    g_mode = CacheMode::kLocked;
  } else {
    g_mode = rseq.mm_cid ? CacheMode::kRseqMmCid : CacheMode::kRseqCpuId;
    g_own_registration = rseq.kind == os::RseqKind::kOwn;
    g_membarrier = os::membarrier_rseq_register();
  }
  g_percpu.rseq_area_offset = rseq.area_offset;
  g_percpu.index_field = rseq.index_field;
  g_percpu.num_slabs = num_slabs;
  g_count_hits = options().stats;
  set_capacity(options().cpu_cache_size.value);
  // The slow paths test `slabs`, the fast paths `fast_num_slabs`: each is stored after
  // everything it guards.
  __atomic_store_n(&g_percpu.slabs, reinterpret_cast<uintptr_t>(slabs), __ATOMIC_RELEASE);
  LockGuard vfork_guard(g_vfork_lock);
  publish_inline_paths();
}

// Gives class `cls` of a slab its initial room in the nursery, in the control's books (bounds
// and capacity), and returns it. The caller owns the slab and writes its header.
Room give_initial_room(SlabControl& control, unsigned cls) {
  const Room room{kLayout.nursery[cls], static_cast<uint16_t>(kLayout.nursery[cls] + g_initial_room[cls])};
  set_room(control, cls, room.begin, room.end);
  control.capacity_bytes += class_bytes(cls, room.size());
  return room;
}

// Gives slab `index` its headers, each class empty in its initial room, and marks it ready.
// Until then its headers are all zero, and a section that read a zero bound and then a `current`
// written meanwhile would pair them (arch/slab.h: sections load the bound first), so in rseq
// mode each header is written by a critical section on the slab's own CPU, as move_home writes
// one: no other section can run on that slab between its load and its commit. The thread may
// have moved since it read its index; the section then misses, the headers written so far stay
// (each is whole, and its objects are the slab's), a later miss on the slab finishes, and until
// then the slab is not ready: false, and the caller must not work on the slab (a class whose
// header is still zero has bounds in the control already, and a growth there would give it
// those bounds over a `current` of 0: the slots of the headers).
bool ensure_slab(uint32_t index) {
  SlabControl& control = g_control[index];
  if (FM_LIKELY(control.ready.load(std::memory_order_acquire))) return true;
  LockGuard guard(control.lock);
  if (control.ready.load(std::memory_order_relaxed)) return true;
  uint64_t* s = slab(index);
  const PerCpuConfig& c = g_percpu;
  const uint64_t expected_index = index;
  control.capacity_bytes = 0;  // an attempt that missed counted its rooms: count them afresh
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    auto [begin, end] = give_initial_room(control, cls);
    if (g_mode == CacheMode::kLocked) {
      arch::store_header(s, cls, arch::make_header(begin, begin, end));
    } else if (arch::load_header(s, cls) >> 32 == 0 &&
               !arch::percpu_move_class(c.rseq_area_offset, c.index_field, expected_index, c.slabs, cls, 0, begin,
                                        arch::make_header(0, begin, end))) {
      return false;
    }
  }
  control.ready.store(true, std::memory_order_release);
  return true;
}

// The slab index the fast path would use for this thread, registering the thread first where
// this library registers its own rseq area. kNoSlab when the thread has no usable index.
uint32_t rseq_index() {
  if (FM_UNLIKELY(t_vfork_depth != 0)) return kNoSlab;  // the area holds its parent's index
  auto read_index = [] {
    return __atomic_load_n(reinterpret_cast<const uint32_t*>(rseq_area() + g_percpu.index_field), __ATOMIC_RELAXED);
  };
  uint32_t index = read_index();
  if (index < g_percpu.num_slabs) return index;
  if (g_own_registration && os::rseq_register_current_thread()) {
    index = read_index();
    if (index < g_percpu.num_slabs) return index;
  }
  return kNoSlab;
}

// Classes above kMaxCachedSize skip the caches.
void* take_from_central(unsigned cls) {
  void* p;
  return central_list(cls).allocate_batch(&p, 1) == 1 ? p : nullptr;
}

// Moves class `cls` of slab `index`, whose room is [begin, end) in the nursery, to its home
// region with room up to new_end. Only from the slab's CPU (rseq: a critical section, which
// misses if the thread has moved or been preempted; the class then stays and tries again on a
// later miss) or under the slab's lock in locked mode. The caller holds the slab's lock.
bool move_home(uint32_t index, unsigned cls, uint16_t begin, uint16_t end, uint16_t new_end, bool locked) {
  uint16_t home = kLayout.home[cls];
  if (locked) {
    arch::slab_move_class_owned(slab(index), cls, home, new_end);
    return true;
  }
  const PerCpuConfig& c = g_percpu;
  const uint64_t expected_index = index;
  const uint64_t to_bounds = arch::make_header(0, home, new_end);
  return arch::percpu_move_class(c.rseq_area_offset, c.index_field, expected_index, c.slabs, cls,
                                 uint64_t{begin} | uint64_t{end} << 16, home, to_bounds);
}

// The size of the class's room on slab `index` as its control last set it: a hint without the
// lock, from 0 to max_room_of(cls).
int room_of(uint32_t index, unsigned cls) { return room_in_books(g_control[index], cls).size(); }

// A miss on slab `index` (a pop if `alloc`, else a push): counts it, and grows the class by a
// batch if it has missed both ways since the last scan (its objects come and go, and the room
// was too small to absorb that; a class that only ever fills or only ever empties, like either
// end of a producer/consumer pair, would gain nothing), kBusyMisses times in all, and the
// CPU's budget allows. Growth past the nursery room moves the class home (move_home); the rest
// only raises `end`, so a section that read the old header commits within the old bounds. The
// slab's lock keeps a drain or scan from being undone. `locked`: the caller holds it (locked
// mode). Returns the misses of this kind since the last scan, this one included.
uint32_t record_miss(uint32_t index, unsigned cls, bool alloc, bool locked) {
  SlabControl& control = g_control[index];
  std::atomic<uint32_t>& mine = alloc ? control.alloc_misses[cls] : control.free_misses[cls];
  std::atomic<uint32_t>& other = alloc ? control.free_misses[cls] : control.alloc_misses[cls];
  uint32_t misses = mine.load(std::memory_order_relaxed) + 1;
  mine.store(misses, std::memory_order_relaxed);
  uint32_t other_misses = other.load(std::memory_order_relaxed);
  if (other_misses == 0 || misses + other_misses < kBusyMisses || g_page_heap.shrinking()) return misses;
  if (room_of(index, cls) >= max_room_of(cls)) return misses;  // full grown
  if (!locked && !control.lock.try_lock()) return misses;
  auto [begin, end] = room_in_books(control, cls);
  int grown = end - begin + batch_size(cls);
  if (grown > max_room_of(cls)) grown = max_room_of(cls);
  uint64_t bytes = class_bytes(cls, grown - (end - begin));
  if (grown > end - begin && control.capacity_bytes + bytes <= g_budget_bytes) {
    // A room the budget cut below its nursery slots grows there first.
    bool leaves_nursery = begin == kLayout.nursery[cls] && grown > initial_room_of(cls);
    uint16_t to = leaves_nursery ? kLayout.home[cls] : begin, new_end = static_cast<uint16_t>(to + grown);
    bool grew = true;
    if (leaves_nursery) grew = move_home(index, cls, begin, end, new_end, locked);
    else arch::store_bounds(slab(index), cls, begin, new_end);
    if (grew) {
      set_room(control, cls, to, new_end);
      control.capacity_bytes += bytes;
    }
  }
  if (!locked) control.lock.unlock();
  return misses;
}

// While the heap is shrinking (PageHeap::shrinking: the program has given up most of it), a
// class whose slab overflows gives up its room above the quiet floor: what is freed now is not
// wanted again soon, and each object a cache holds keeps a span resident until a scan, which
// needs slow-path calls that a program living on its caches may not make for seconds. A class
// that the program still uses both ways grows again (record_miss). A push that read the old
// bounds may still commit below the old end; `current` above `end` only makes pushes miss. The
// slab's lock keeps a scan or drain (which stop the slab) from being undone. `locked` as for
// record_miss.
void shrink_room_to_floor(uint32_t index, unsigned cls, bool locked) {
  SlabControl& control = g_control[index];
  if (!locked && !control.lock.try_lock()) return;
  auto [begin, end] = room_in_books(control, cls);
  int floor = quiet_floor_of(cls);
  if (end - begin > floor) {
    uint16_t new_end = static_cast<uint16_t>(begin + floor);
    arch::store_bounds(slab(index), cls, begin, new_end);
    set_room(control, cls, begin, new_end);
    control.capacity_bytes -= class_bytes(cls, end - new_end);
  }
  if (!locked) control.lock.unlock();
}

// A slab, reached either through rseq (the fast-path sections on the current CPU's slab) or
// owned under its lock (locked mode): the miss handling below is the same for both.
struct RseqSlab {
  uint32_t index;
  uint32_t note_miss(unsigned cls, bool alloc) const { return record_miss(index, cls, alloc, false); }
  void shrink_to_floor(unsigned cls) const { shrink_room_to_floor(index, cls, false); }
  bool pop(unsigned cls, void** out) const {
    const PerCpuConfig& c = g_percpu;
    return g_count_hits ? arch::percpu_pop<true>(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, out)
                        : arch::percpu_pop<false>(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, out);
  }
  bool push(unsigned cls, void* p, bool count_hit = g_count_hits) const {
    const PerCpuConfig& c = g_percpu;
    return count_hit ? arch::percpu_push<true>(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, p)
                     : arch::percpu_push<false>(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, p);
  }
  int pop_batch(unsigned cls, void** out, int n) const {
    const PerCpuConfig& c = g_percpu;
    return arch::percpu_pop_batch(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, out,
                                  static_cast<uint64_t>(n));
  }
  int push_batch(unsigned cls, void* const* in, int n) const {
    const PerCpuConfig& c = g_percpu;
    return arch::percpu_push_batch(c.rseq_area_offset, c.index_field, c.num_slabs, c.slabs, cls, in,
                                   static_cast<uint64_t>(n));
  }
};
struct OwnedSlab {
  uint64_t* slab;
  uint32_t index;  // its lock is held
  uint32_t note_miss(unsigned cls, bool alloc) const { return record_miss(index, cls, alloc, true); }
  void shrink_to_floor(unsigned cls) const { shrink_room_to_floor(index, cls, true); }
  bool pop(unsigned cls, void** out) const { return arch::slab_pop_owned(slab, cls, out, g_count_hits); }
  bool push(unsigned cls, void* p, bool count_hit = g_count_hits) const {
    return arch::slab_push_owned(slab, cls, p, count_hit);
  }
  int pop_batch(unsigned cls, void** out, int n) const { return arch::slab_pop_batch_owned(slab, cls, out, n); }
  int push_batch(unsigned cls, void* const* in, int n) const {
    return arch::slab_push_batch_owned(slab, cls, in, n);
  }
};

// How many objects a pop miss brings, the `misses`-th of its class on this slab since the last
// scan: 4 KiB of objects (at least one) the first time, twice as many each time after, up to a
// transfer batch. What a refill brings stays on this CPU (and what it carves is faulted in); a
// class that a program passes through (a string grown by realloc, a few blocks of one size)
// keeps a page's worth on each CPU instead of a batch (32 KiB for the classes from 1 KiB), and
// one in steady use reaches whole batches after a few misses.
int refill_size(unsigned cls, uint32_t misses) {
  constexpr size_t kFirstRefillBytes = 4096;
  unsigned doublings = misses > 8 ? 7 : misses - 1;
  size_t n = (kFirstRefillBytes << doublings) / size_class_detail::size_of_class(cls);
  return n < 1 ? 1 : n > static_cast<size_t>(batch_size(cls)) ? batch_size(cls) : static_cast<int>(n);
}

// After a miss that may not be real (an abort, a slab or thread just set up, or a fast path
// that is off because hits are counted), tries once more; then takes objects from the
// transfer cache (refill_size), keeps all but one in the slab and returns that one.
//
// Objects carved from a span come in address order, and the slab is a stack: pushed as they
// come, they would be handed out from the highest address down. Reversed, consecutive mallocs
// of a class get ascending addresses, as with tcmalloc and mimalloc, and a program that later
// walks its objects in the order it made them (Python's garbage collector walks every container)
// reads memory forward: Python's own time fell by a quarter (bench/RESULTS.md).
//
// It asks for no more than the class's room on this slab holds, plus the one it returns: what
// the slab cannot keep would go straight back on top of the transfer cache's stock. With a room
// of 0 (a FASTMALLOC_CPU_CACHE_SIZE too small for every class to have one), each malloc took a
// batch and returned its oldest object, and the newest went back on top, again and again: a
// block freed twice could circulate there unseen while everything else was handed out.
template <class Slab>
void* refill_pop(const Slab& slab, unsigned cls) {
  void* p;
  if (slab.pop(cls, &p)) return p;
  count(g_alloc_misses.value, 1);
  uint32_t misses = slab.note_miss(cls, true);
  void* batch[kMaxBatch];
  int want = refill_size(cls, misses), room = room_of(slab.index, cls);
  int got = transfer_cache(cls).remove(batch, want < room + 1 ? want : room + 1, slab.index);
  if (got == 0) return nullptr;
  std::reverse(batch, batch + got);
  int kept = got > 1 ? slab.push_batch(cls, batch, got - 1) : 0;
  if (kept < got - 1) transfer_cache(cls).insert(batch + kept, got - 1 - kept);
  return batch[got - 1];
}

// The same for a push: when the slab is full, a batch of its objects goes, with p, to the
// transfer cache. Returns whether it did.
template <class Slab>
bool overflow_push(const Slab& slab, unsigned cls, void* p) {
  if (slab.push(cls, p)) return false;
  count(g_free_misses.value, 1);
  slab.note_miss(cls, false);
  if (slab.push(cls, p, false)) return false;  // the class grew (the free counted as a miss)
  void* batch[kMaxBatch + 1];
  if (g_page_heap.shrinking()) {
    // Everything goes, and the room shrinks: see shrink_room_to_floor.
    slab.shrink_to_floor(cls);
    while (int n = slab.pop_batch(cls, batch, kMaxBatch)) transfer_cache(cls).insert(batch, n);
    transfer_cache(cls).insert(&p, 1);
    return true;
  }
  int n = slab.pop_batch(cls, batch, batch_size(cls));
  batch[n++] = p;
  transfer_cache(cls).insert(batch, n);
  return true;
}

// Locked mode: the slab of the CPU we are on now, under its lock.
uint32_t locked_slab_index() {
  uint32_t index = os::current_cpu() % static_cast<uint32_t>(g_percpu.num_slabs);
  ensure_slab(index);  // never fails in locked mode: no section is involved
  return index;
}

void* take_one(unsigned cls) {
  void* p;
  return transfer_cache(cls).remove(&p, 1) == 1 ? p : nullptr;
}

// Moves the objects of one class of slab `s` that sit at or above slot `keep` to the transfer
// cache, or past it to the central list.
void move_out(uint64_t* s, unsigned cls, uint16_t keep, bool to_central = false) {
  uint16_t current = arch::header_current(arch::load_header(s, cls));
  for (uint16_t top = current; top > keep;) {
    uint16_t bottom = top - keep > kMaxBatch ? static_cast<uint16_t>(top - kMaxBatch) : keep;
    void* const* objects = reinterpret_cast<void* const*>(&s[bottom]);
    if (to_central) central_list(cls).deallocate_batch(objects, top - bottom);
    else transfer_cache(cls).insert(objects, top - bottom);
    top = bottom;
  }
  if (current > keep) arch::store_current(s, cls, keep);
}

// Moves the objects of slab `index` to the transfer caches and gives every class its initial
// room in the nursery back (set_stopped(index, false) then writes the bounds). The caller owns
// the slab: it holds its lock and, in rseq mode, has stopped it and fenced every critical
// section that could still commit on it.
void drain_owned_slab(uint32_t index) {
  uint64_t* s = slab(index);
  SlabControl& control = g_control[index];
  control.capacity_bytes = 0;
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    move_out(s, cls, room_in_books(control, cls).begin);
    arch::store_current(s, cls, give_initial_room(control, cls).begin);
    // It starts afresh: a class grows again only after missing both ways from here on.
    control.alloc_misses[cls].store(0, std::memory_order_relaxed);
    control.free_misses[cls].store(0, std::memory_order_relaxed);
  }
  // Its slots hold nothing now, and no section can commit on it: their pages go back to the OS
  // (a quarter of a megabyte per CPU) and come back zeroed as pushes reach them. The first page
  // holds the headers and the last the free-hit counter, so both stay.
  uintptr_t page = os::hardware_page_size();
  uintptr_t slots = round_up(reinterpret_cast<uintptr_t>(s + kNumClasses), page);
  uintptr_t slots_end = reinterpret_cast<uintptr_t>(s + arch::kFreeHitsWord) & ~(page - 1);
  if (slots < slots_end) os::release(reinterpret_cast<void*>(slots), slots_end - slots);
}

// Lowers each class's end to its shrink_to (where set), moving out what sits above; the class
// stays where it is. The caller owns the slab as for drain_owned_slab, and set_stopped(index,
// false) then writes the bounds.
void shrink_owned_slab(uint32_t index) {
  uint64_t* s = slab(index);
  SlabControl& control = g_control[index];
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    const Room room = room_in_books(control, cls);
    if (control.empty_out[cls]) move_out(s, cls, room.begin, true);
    uint16_t target = control.shrink_to[cls];
    if (target == 0) continue;
    move_out(s, cls, target);
    control.capacity_bytes -= class_bytes(cls, room.end - target);
    set_room(control, cls, room.begin, target);
  }
}

// Stop: begin = 0xffff and end = 0 (the upper half of each header, one 32-bit store), so every
// pop and push on the slab misses; current is left to any commit still in flight. Restart
// writes the bounds the control keeps, which is also how a drain or shrink under the lock
// takes effect in locked mode.
void set_stopped(uint32_t index, bool stopped) {
  uint64_t* s = slab(index);
  const SlabControl& control = g_control[index];
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    if (stopped) {
      arch::store_bounds(s, cls, arch::kStoppedBegin, arch::kStoppedEnd);
    } else {
      const Room room = room_in_books(control, cls);
      arch::store_bounds(s, cls, room.begin, room.end);
    }
  }
}

// What changes whenever a pop or push commits on the slab (barring pops and pushes that cancel
// out exactly between two scans, which only delays a drain).
uint64_t slab_signature(uint32_t index) {
  const uint64_t* s = slab(index);
  uint64_t signature = 0;
  for (unsigned cls = 1; cls < kNumClasses; ++cls)
    signature = signature * 31 + arch::header_current(arch::load_header(s, cls));
  return signature;
}

bool slab_holds_objects(uint32_t index) {
  const uint64_t* s = slab(index);
  for (unsigned cls = 1; cls < kNumClasses; ++cls)
    if (arch::header_current(arch::load_header(s, cls)) != room_in_books(g_control[index], cls).begin)
      return true;
  return false;
}

// Once per period. A slab untouched since the last scan (a CPU, or mm_cid, gone idle) that
// holds objects is drained; in the others, each class that missed fewer than kBusyMisses times
// gives back half its room above its quiet floor, for the classes that miss, and sends the
// objects it holds to the central list: the objects of a class a program uses a little come
// from anywhere (the last frees of a phase long past) and each keeps a span resident, while a
// refill takes them from the spans the central list hands out from. Both
// need the slab stopped and fenced in rseq mode; slabs whose lock is busy wait for the next scan.
// Holds g_scan_lock: scan_action is the scan's own note on the slabs it stopped.
void scan_slabs_locked() {
  uint32_t num_slabs = static_cast<uint32_t>(g_percpu.num_slabs);
  bool locked_mode = g_mode == CacheMode::kLocked;
  if (!locked_mode && !g_membarrier) return;  // no safe way to change another CPU's slab
  bool any = false, fenced = true;
  for (uint32_t i = 0; i < num_slabs; ++i) {
    SlabControl& control = g_control[i];
    if (!control.ready.load(std::memory_order_acquire) || !control.lock.try_lock()) continue;
    uint64_t signature = slab_signature(i);
    bool idle = signature == control.signature && slab_holds_objects(i);
    control.signature = signature;
    bool shrink = false;
    for (unsigned cls = 1; cls < kNumClasses; ++cls) {
      uint32_t misses = control.alloc_misses[cls].load(std::memory_order_relaxed) +
                        control.free_misses[cls].load(std::memory_order_relaxed);
      control.alloc_misses[cls].store(0, std::memory_order_relaxed);
      control.free_misses[cls].store(0, std::memory_order_relaxed);
      auto [begin, end] = room_in_books(control, cls);
      int room = end - begin, floor = quiet_floor_of(cls);
      bool quiet = misses < kBusyMisses;
      control.shrink_to[cls] = quiet && room > floor ? static_cast<uint16_t>(begin + floor + (room - floor) / 2) : 0;
      control.empty_out[cls] = quiet && arch::header_current(arch::load_header(slab(i), cls)) > begin;
      shrink |= control.shrink_to[cls] != 0 || control.empty_out[cls];
    }
    if (!idle && !shrink) {
      control.lock.unlock();
      continue;
    }
    any = true;
    control.scan_action = idle ? ScanAction::kDrain : ScanAction::kShrink;
    if (!locked_mode) {
      set_stopped(i, true);
      if (g_mode == CacheMode::kRseqCpuId) fenced &= os::membarrier_rseq_fence(static_cast<int>(i));
    }
  }
  if (!any) return;
  if (g_mode == CacheMode::kRseqMmCid) fenced = os::membarrier_rseq_fence(-1);
  for (uint32_t i = 0; i < num_slabs; ++i) {
    SlabControl& control = g_control[i];
    if (control.scan_action == ScanAction::kNone) continue;
    // A refused fence leaves the slab as it was: a commit might still land on it.
    if (fenced) {
      if (control.scan_action == ScanAction::kDrain) drain_owned_slab(i);
      else shrink_owned_slab(i);
    }
    control.scan_action = ScanAction::kNone;
    set_stopped(i, false);  // in locked mode: the bounds the drain or shrink left
    control.signature = slab_signature(i);
    control.lock.unlock();
  }
}

void scan_slabs() {
  if (!g_scan_lock.try_lock()) return;  // another thread is at it
  scan_slabs_locked();
  g_scan_lock.unlock();
}

// Work that needs time to pass, run from the slow paths (a miss every few dozen calls at most)
// with no lock held: the page heap's decay, and once per decay period (at least 100 ms) the
// idle slabs, the transfer caches' idle stock, the central lists' idle empty spans and the
// pages of freed metadata. One coarse clock read (vDSO) per call.
std::atomic<uint64_t> g_next_idle_scan_ms{0};

// Freed span descriptors give their pages back once this much has been freed, net, since the
// last time (MetaFreeRuns::release): after a peak (4.4 MB of descriptors for a 1.1 GB heap), and
// again as its last spans empty over the next seconds, but not for the few that a program's
// steady churn frees and takes again. With 256 KiB, the release that came in the middle of
// memory_return's frees found the free runs split by descriptors still live, and the 1,000 to
// 2,000 freed after it never added up to the threshold: in half the runs 1.5-2 MB of descriptor
// pages stayed resident. The release sorts the free runs (merged at each release), not every
// free descriptor, so a low threshold costs little.
constexpr size_t kMetadataReleaseMinBytes = 32 * 1024;

void periodic_work() {
  uint64_t now = os::now_ms();
  g_page_heap.decay_tick(now);
  uint64_t due = g_next_idle_scan_ms.load(std::memory_order_relaxed);
  if (now < due) return;
  uint64_t period = g_page_heap.decay_ms() > 100 ? g_page_heap.decay_ms() : 100;
  if (!g_next_idle_scan_ms.compare_exchange_strong(due, now + period, std::memory_order_relaxed)) return;
  // The first call only sets the clock: nothing has sat idle for a period yet, and a scan would
  // touch every class's caches, a handful of page faults in a program that runs for a millisecond.
  if (due == 0) return;
  if (is_set_up()) scan_slabs();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    transfer_cache(cls).release_idle();
    central_list(cls).release_idle();
  }
  g_span_pool.release_free_pages(kMetadataReleaseMinBytes);
}

// Runs op(slab) on the calling thread's slab, owned the way the mode requires: under its lock
// in locked mode, through rseq sections otherwise; no_slab() where the thread has no rseq index
// or has moved off a slab it was setting up.
template <class Op, class NoSlab>
auto on_current_slab(Op op, NoSlab no_slab) {
  if (g_mode == CacheMode::kLocked) {
    uint32_t index = locked_slab_index();
    LockGuard guard(g_control[index].lock);
    return op(OwnedSlab{slab(index), index});
  }
  uint32_t index = rseq_index();
  if (index == kNoSlab || !ensure_slab(index)) return no_slab();
  return op(RseqSlab{index});
}

// Where the inline paths are off (statistics, hardened mode, locked mode) every call comes here,
// and most of them find their object in the slab: they return before the periodic work, as
// inline hits do.
bool slab_hit_pop(unsigned cls, void** out) {
  if (capacity_of(cls) == 0 || !is_set_up()) return false;
  return on_current_slab([&](const auto& s) { return s.pop(cls, out); }, [] { return false; });
}

// Returns whether p, or objects it displaced, went below the slab.
bool overflow_to_lower_levels(unsigned cls, void* p) {
  auto to_transfer_cache = [&] {
    transfer_cache(cls).insert(&p, 1);
    return true;
  };
  if (capacity_of(cls) == 0) {
    central_list(cls).deallocate_batch(&p, 1);
    return true;
  }
  if (FM_UNLIKELY(!is_set_up())) {
    setup();
    if (!is_set_up()) return to_transfer_cache();
  }
  return on_current_slab([&](const auto& s) { return overflow_push(s, cls, p); }, to_transfer_cache);
}

}  // namespace

void* cache_refill_pop(unsigned cls) {
  void* hit;
  if (slab_hit_pop(cls, &hit)) return hit;
  periodic_work();
  if (capacity_of(cls) == 0) return take_from_central(cls);
  if (FM_UNLIKELY(!is_set_up())) {
    setup();
    if (!is_set_up()) return take_one(cls);
  }
  return on_current_slab([&](const auto& s) { return refill_pop(s, cls); }, [&] { return take_one(cls); });
}

void* cache_take_uncached(unsigned cls, bool* untouched) {
  periodic_work();
  return central_list(cls).allocate_one(untouched);
}

void cache_overflow_push(unsigned cls, void* p) {
  // A push the slab took is a hit (see slab_hit_pop): no periodic work.
  if (!overflow_to_lower_levels(cls, p)) return;
  // Frees that reach the central lists may have emptied spans and retired their descriptors.
  sync::rcu_poll();
  periodic_work();
}

void cache_drain_all() {
  if (!is_set_up()) return;
  uint32_t num_slabs = static_cast<uint32_t>(g_percpu.num_slabs);
  if (g_mode == CacheMode::kLocked) {
    for (uint32_t i = 0; i < num_slabs; ++i) {
      if (!g_control[i].ready.load(std::memory_order_acquire)) continue;
      LockGuard guard(g_control[i].lock);
      drain_owned_slab(i);
      set_stopped(i, false);  // writes the bounds the drain left
    }
    return;
  }
  if (!g_membarrier) return;
  // Stop every slab in use, fence once (mm_cid indexes are not tied to CPUs, so the fence
  // covers every CPU running our threads), then drain and restart them. The second pass takes
  // only the slabs the first one stopped (marked in scan_action, which the scan lock makes
  // ours): a slab set up in between is in use unstopped, and we do not hold its lock.
  LockGuard one_at_a_time(g_scan_lock);
  bool fenced = true;
  for (uint32_t i = 0; i < num_slabs; ++i) {
    SlabControl& control = g_control[i];
    if (!control.ready.load(std::memory_order_acquire)) continue;
    control.lock.lock();
    control.scan_action = ScanAction::kDrain;
    set_stopped(i, true);
    if (g_mode == CacheMode::kRseqCpuId) fenced &= os::membarrier_rseq_fence(static_cast<int>(i));
  }
  if (g_mode == CacheMode::kRseqMmCid) fenced = os::membarrier_rseq_fence(-1);
  for (uint32_t i = 0; i < num_slabs; ++i) {
    SlabControl& control = g_control[i];
    if (control.scan_action == ScanAction::kNone) continue;
    // A refused fence leaves the slab as it was: a commit might still land on it.
    if (fenced) drain_owned_slab(i);
    control.scan_action = ScanAction::kNone;
    set_stopped(i, false);
    control.lock.unlock();
  }
}

void cache_set_up() {
  if (!is_set_up()) setup();
}

void cache_vfork_child_started() {
  ++t_vfork_depth;
  LockGuard guard(g_vfork_lock);
  if (g_vfork_children++ == 0) __atomic_store_n(&g_percpu.fast_num_slabs, uint64_t{0}, __ATOMIC_RELAXED);
}

void cache_vfork_parent_resumed() {
  if (t_vfork_depth == 0) return;  // the child never got as far as cache_vfork_child_started
  --t_vfork_depth;
  LockGuard guard(g_vfork_lock);
  --g_vfork_children;
  publish_inline_paths();
}

CacheMode cache_mode() {
  cache_set_up();
  return g_mode;
}

const char* cache_mode_name(CacheMode mode) {
  switch (mode) {
    case CacheMode::kRseqMmCid: return "rseq-mmcid";
    case CacheMode::kRseqCpuId: return "rseq-cpu";
    case CacheMode::kLocked: return "fallback";
    case CacheMode::kNotSetUp: break;
  }
  return "not-set-up";
}

CacheStats cache_stats() {
  CacheStats stats{};
  stats.hits_counted = g_count_hits;
  stats.alloc_misses = g_alloc_misses.value.load(std::memory_order_relaxed);
  stats.free_misses = g_free_misses.value.load(std::memory_order_relaxed);
  if (!is_set_up()) return stats;
  stats.can_drain_remote = g_membarrier || g_mode == CacheMode::kLocked;
  for (uint32_t i = 0; i < g_percpu.num_slabs; ++i) {
    if (!g_control[i].ready.load(std::memory_order_acquire)) continue;
    ++stats.slabs_in_use;
    const uint64_t* s = slab(i);
    stats.resident_bytes += os::resident_bytes(s, arch::kSlabBytes);
    stats.alloc_hits += __atomic_load_n(&s[arch::kAllocHitsWord], __ATOMIC_RELAXED);
    stats.free_hits += __atomic_load_n(&s[arch::kFreeHitsWord], __ATOMIC_RELAXED);
    for (unsigned cls = 1; cls < kNumClasses; ++cls) {
      uint64_t header = arch::load_header(s, cls);
      if (arch::header_begin(header) == arch::kStoppedBegin) continue;  // stopped for a drain
      uint64_t objects = arch::header_current(header) - arch::header_begin(header);
      stats.class_objects[cls] += objects;
      stats.cached_bytes += uint64_t{size_class(cls).size} * objects;
    }
  }
  return stats;
}

void cache_lock_all() {
  g_setup_lock.lock();
  g_scan_lock.lock();
  if (g_control != nullptr)
    for (uint32_t i = 0; i < g_percpu.num_slabs; ++i) g_control[i].lock.lock();
  g_vfork_lock.lock();
}

void cache_unlock_all() {
  g_vfork_lock.unlock();
  if (g_control != nullptr)
    for (uint32_t i = g_percpu.num_slabs; i-- > 0;) g_control[i].lock.unlock();
  g_scan_lock.unlock();
  g_setup_lock.unlock();
}

void cache_reset_locks_after_fork() {
  g_vfork_lock.reset_after_fork();
  // Only the forking thread lives on in the child: the vfork children of the others are not its.
  g_vfork_children = t_vfork_depth;
  publish_inline_paths();
  if (g_control != nullptr)
    for (uint32_t i = 0; i < g_percpu.num_slabs; ++i) g_control[i].lock.reset_after_fork();
  g_scan_lock.reset_after_fork();
  g_setup_lock.reset_after_fork();
}

}  // namespace fastmalloc
