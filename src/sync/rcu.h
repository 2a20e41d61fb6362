// Read-copy update: readers of a shared structure run without locks, atomic read-modify-writes
// or fences; a writer that unlinks an object frees it only after a grace period, once no reader
// that might still hold it is left. Written for the allocator (liburcu's call_rcu allocates and
// starts a thread; this never allocates and never starts a thread).
//
// Read side: the thread's record (sync/thread_registry.h) holds (epoch << 16) | depth, written
// with one plain store at the outermost lock and unlock, so a signal handler that reads under
// RCU in the middle of either sees a consistent word. Nestable. The inline lock tests the
// word's low bits once: anything but an outermost section of a registered thread whose writers
// fence for it goes to rcu_read_lock_slow().
//
// Grace period (synchronize_rcu): writer_fence() (membarrier), then advance the epoch, then wait
// until every record is outside a section or entered it at the new epoch. Why that suffices: a
// reader whose publishing store the fence did not expose had not yet loaded what the writer
// unlinked before the fence, so it will load the new version; any other reader is seen and
// waited for.
//
// Callbacks (call_rcu) are queued on an intrusive head and run by rcu_poll(), which the
// allocator calls from its slow paths with no lock held: it never blocks, and starts a grace
// period for the queued callbacks only when the previous one is over, and at most every 10 ms
// unless a thousand callbacks wait. rcu_barrier() runs every callback queued before it.
// Callbacks must not call into RCU's writer side.
#pragma once

#include <atomic>
#include <cstdint>

#include "base.h"
#include "sync/thread_registry.h"

namespace fastmalloc::sync {

struct RcuHead {
  RcuHead* next;
  void (*fn)(RcuHead*);
};

namespace detail {
// What an outermost rcu_read_lock stores in its record: the epoch, shifted up, and a depth of 1
// (kept whole, so the read side stores what it loads). The epoch starts at 1, so a record's
// epoch is never 0 inside.
inline constexpr uint64_t kRcuEpochStep = uint64_t{1} << kRcuNestBits;
// Read by every read side, written by grace periods only: on a line of its own.
extern FM_HIDDEN CacheLineAlone<std::atomic<uint64_t>> g_rcu_entry_word;
// What rcu_read_lock's one test sends away: a nested section, a thread that must fence, or one
// not registered yet (kFenceFlag, thread_registry.h).
FM_NOINLINE void rcu_read_lock_slow();
}  // namespace detail

FM_ALWAYS_INLINE void rcu_read_lock() {
  ThreadRecord* r = detail::t_record;
  if (FM_LIKELY((r->rcu.load(std::memory_order_relaxed) & kNestMask) == 0)) {
    r->rcu.store(detail::g_rcu_entry_word.value.load(std::memory_order_relaxed), std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // writers fence for us (membarrier)
  } else {
    detail::rcu_read_lock_slow();
  }
}

FM_ALWAYS_INLINE void rcu_read_unlock() {
  ThreadRecord* r = detail::t_record;
  // Release: the section's loads happen before a writer can see it ended. Leaving the outermost
  // section keeps the epoch bits: a depth of 0 means outside whatever they say.
  r->rcu.store(r->rcu.load(std::memory_order_relaxed) - 1, std::memory_order_release);
}

// Waits for a grace period: every read section that began before the call has ended.
void synchronize_rcu();

// fn(head) runs after a grace period (from a later rcu_poll, rcu_barrier or synchronize_rcu).
void call_rcu(RcuHead* head, void (*fn)(RcuHead*));

// Runs the callbacks whose grace period is over and starts the next one if callbacks wait.
// Non-blocking (returns at once if another thread is at it); returns the callbacks it ran.
unsigned rcu_poll();

// Waits until every callback queued before the call has run.
void rcu_barrier();

// How many callbacks are queued and not yet run.
uint64_t rcu_pending();

// Fork: RCU's two locks sit at two places in a lock order (the grace-period lock before
// anything a writer holds, the callback queue's after whatever call_rcu is called under), so
// they are taken by two calls; parent unlocks both, the child resets both.
void rcu_fork_prepare();
void rcu_fork_prepare_queue();
void rcu_fork_parent();
void rcu_fork_child();

}  // namespace fastmalloc::sync
