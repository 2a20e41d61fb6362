// The thread registry: one record per live thread, where the read sides of RCU (sync/rcu.h) and
// of the passive reader-writer locks (sync/prwlock.h) publish, with plain stores, whether the
// thread is inside a read-side critical section. Writers scan every record; readers touch only
// their own, so reading needs no atomic read-modify-write and no fence.
//
// Records come from memory this module maps itself (never from malloc) and are never unmapped.
// A thread gets one on its first read-side section and gives it back when it exits (through a
// pthread key destructor, which runs even when the thread exits inside a section), so the
// records a writer scans stay about as many as the live threads. A thread that calls in again
// after that destructor (glibc's own cleanup runs after every key destructor and frees what the
// thread left, such as strerror's and dlerror's buffers) gets a record that no destructor will
// give back: the registry keeps it on a list of late records, with the thread's id, and takes it
// back once the kernel no longer knows the thread. A fork child keeps only the forking thread's
// record.
//
// The heavy fence: writers order their stores before their scan of the records with
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which runs a full barrier on every CPU running
// one of our threads. Where the kernel refuses it (decided once, before the first record is
// handed out), readers fence instead: `g_readers_fence` is then true and every outermost read
// lock pays one mfence. Where it is refused only later (a sandbox installed after the library
// loaded), writers wait for readers' store buffers to empty instead (writer_fence).
#pragma once

#include <atomic>
#include <cstdint>

#include "base.h"

namespace fastmalloc::sync {

// How many prwlocks can be live at once: each owns one status word in every record.
inline constexpr unsigned kMaxPrwlocks = 5;

struct alignas(64) ThreadRecord {
  // RCU: (epoch at the outermost rcu_read_lock << kRcuNestBits) | kFenceFlag if this thread's
  // read sides must fence | nesting depth (below kFenceFlag); a depth of 0 is outside (the
  // epoch bits are then stale).
  std::atomic<uint64_t> rcu;
  // Per prwlock slot: (lock version its last outermost section saw << kPrwNestBits) | kFenceFlag
  // | nesting depth.
  std::atomic<uint64_t> prw[kMaxPrwlocks];
  // The registry's, under its mutex: the next record on the free list, or on the late list.
  ThreadRecord* next;
  int late_owner;  // on the late list: the kernel id of the thread that holds the record
};
static_assert(sizeof(ThreadRecord) == 64);

inline constexpr unsigned kRcuNestBits = 16, kPrwNestBits = 16;
inline constexpr uint64_t kNestMask = 0xffff;
// In every word of a record when its readers must fence (g_readers_fence), and in every word of
// g_unregistered: the read sides' one test of the word's low bits (nested?) then also sends
// those readers to their slow paths, without reading a global.
inline constexpr uint64_t kFenceFlag = 0x8000, kDepthMask = kFenceFlag - 1;

namespace detail {
// What t_record points at before the thread's first read side registers it and after it exits:
// a record no thread owns, whose words all carry kFenceFlag, so every read side's first test
// turns the thread away to a slow path that registers it; the fast read sides need no null
// test. Never written.
extern FM_HIDDEN ThreadRecord g_unregistered;
// constinit: with no dynamic initializer, the compiler reads the slot directly instead of
// calling a TLS init wrapper on every read-side section.
extern FM_HIDDEN __attribute__((tls_model("initial-exec"))) constinit thread_local ThreadRecord* t_record;
FM_NOINLINE ThreadRecord* register_current_thread();
}  // namespace detail

// Set once, before any record is handed out: membarrier is unavailable, so readers fence.
extern FM_HIDDEN bool g_readers_fence;

// The calling thread's record, registering the thread on first use.
FM_ALWAYS_INLINE ThreadRecord* current_record() {
  ThreadRecord* r = detail::t_record;
  if (FM_UNLIKELY(r == &detail::g_unregistered)) r = detail::register_current_thread();
  return r;
}

// Decides, once, how writers fence (registering the process for membarrier) and sets up the
// exit hook. The first record or writer fence does it by itself; the library calls it at load,
// because the kernel makes the registration wait for one of its RCU grace periods (10-20 ms on
// the development machine) once the process has a second thread, and not before.
void registry_set_up();

// A writer's heavy fence, between its stores and its scan of the records (membarrier, or a
// full fence when readers fence). If membarrier worked at setup and is refused later (a seccomp
// filter installed since), readers do not fence: the writer then fences and waits
// kRefusedFenceWaitUs for their store buffers to empty.
inline constexpr unsigned kRefusedFenceWaitUs = 1000;
void writer_fence();

// Calls visit(record) for every record ever handed out (free ones read as outside any section).
template <class Visit>
void for_each_record(Visit&& visit);

// Wait helper for writers: spins briefly, then yields, then sleeps; `round` counts calls.
void backoff(unsigned round);

// Fork: the registry's lock is taken before fork; the child frees every record but its own.
void registry_fork_prepare();
void registry_fork_parent();
void registry_fork_child();

// For tests: how many records are handed out now.
unsigned records_in_use();

namespace detail {
inline constexpr unsigned kRecordsPerChunk = 1024;
inline constexpr unsigned kMaxChunks = 1024;  // a million threads at once
extern FM_HIDDEN std::atomic<ThreadRecord*> g_chunks[kMaxChunks];
extern FM_HIDDEN std::atomic<unsigned> g_records_carved;  // records [0, this) have been handed out once
}  // namespace detail

template <class Visit>
void for_each_record(Visit&& visit) {
  unsigned carved = detail::g_records_carved.load(std::memory_order_acquire);
  for (unsigned n = 0; n < carved; n += detail::kRecordsPerChunk) {
    ThreadRecord* chunk = detail::g_chunks[n / detail::kRecordsPerChunk].load(std::memory_order_acquire);
    unsigned count = carved - n < detail::kRecordsPerChunk ? carved - n : detail::kRecordsPerChunk;
    for (unsigned i = 0; i < count; ++i) visit(chunk[i]);
  }
}

}  // namespace fastmalloc::sync
