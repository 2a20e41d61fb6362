// RCU: grace periods and callbacks (the read side is inline, in rcu.h).
#include "sync/rcu.h"

#include "os/message.h"
#include "os/os.h"
#include "sync/mutex.h"

namespace fastmalloc::sync {

namespace detail {
CacheLineAlone<std::atomic<uint64_t>> g_rcu_entry_word = {kRcuEpochStep | 1};

void rcu_read_lock_slow() {
  ThreadRecord* r = current_record();
  uint64_t word = r->rcu.load(std::memory_order_relaxed);
  if ((word & kDepthMask) != 0) {
    r->rcu.store(word + 1, std::memory_order_relaxed);  // nested: already in
    return;
  }
  const uint64_t flag = word & kFenceFlag;
  r->rcu.store(g_rcu_entry_word.value.load(std::memory_order_relaxed) | flag, std::memory_order_relaxed);
  if (flag != 0) std::atomic_thread_fence(std::memory_order_seq_cst);  // writers cannot fence for us
  else std::atomic_signal_fence(std::memory_order_seq_cst);
}
}  // namespace detail

namespace {

using detail::g_rcu_entry_word;
using detail::kRcuEpochStep;

// SYNCHRONIZATION: g_gp_lock serializes grace periods and guards the waiting batch; g_cb_lock
// guards the queue call_rcu appends to. Order: g_gp_lock, then g_cb_lock. call_rcu takes only
// g_cb_lock, so it may be called under any allocator lock; the writer side takes g_gp_lock
// with no other lock held.
Mutex g_gp_lock;
Mutex g_cb_lock;

struct Queue {
  RcuHead* head = nullptr;
  RcuHead* tail = nullptr;

  void append(Queue& other) {
    if (other.head == nullptr) return;
    if (head == nullptr) head = other.head;
    else tail->next = other.head;
    tail = other.tail;
    other = Queue{};
  }
};

Queue g_queued;            // under g_cb_lock: not yet covered by a grace period
Queue g_waiting;           // under g_gp_lock: covered by the grace period ending at g_waiting_target
uint64_t g_waiting_target = 0;
uint64_t g_last_start_ms = 0;  // under g_gp_lock: when rcu_poll last started a grace period

// rcu_poll starts a grace period (a membarrier: an interrupt on every CPU running one of our
// threads) at most once per kPollIntervalMs, unless kPollBacklog callbacks wait: a workload that
// retires descriptors all the time then pays a few membarriers per second, not one per miss.
// What waits is memory (a span descriptor takes 128 bytes): at 1024, realloc's benchmark at one
// thread held about 100 KiB more at its peak than at 256, with the same number of membarriers.
constexpr uint64_t kPollIntervalMs = 10, kPollBacklog = 256;
std::atomic<uint64_t> g_pending{0};    // queued or waiting, not yet taken to run
std::atomic<uint64_t> g_in_flight{0};  // taken to run, not yet run

bool past(const ThreadRecord& r, uint64_t target) {
  uint64_t word = r.rcu.load(std::memory_order_acquire);
  return (word & kDepthMask) == 0 || (word >> kRcuNestBits) >= target;
}

bool readers_past(uint64_t target) {
  bool all = true;
  for_each_record([&](ThreadRecord& r) { all = all && past(r, target); });
  return all;
}

void wait_for_readers(uint64_t target) {
  for_each_record([&](ThreadRecord& r) {
    for (unsigned round = 0; !past(r, target); ++round) backoff(round);
  });
}

// The fence first: whatever the caller unlinked is visible to every reader that starts after
// it, and every reader that could have missed the unlink is visible to the scan. Readers that
// enter after the epoch advance need no wait.
uint64_t start_grace_period_locked() {
  writer_fence();
  return (g_rcu_entry_word.value.fetch_add(kRcuEpochStep, std::memory_order_seq_cst) + kRcuEpochStep) >> kRcuNestBits;
}

Queue take_queued() {
  LockGuard guard(g_cb_lock);
  Queue q = g_queued;
  g_queued = Queue{};
  return q;
}

uint64_t count(const Queue& q) {
  uint64_t n = 0;
  for (RcuHead* h = q.head; h != nullptr; h = h->next) ++n;
  return n;
}

// Takes the batch out of the books before running it, so rcu_barrier can wait for it.
void mark_taken(uint64_t n) {
  g_in_flight.fetch_add(n, std::memory_order_relaxed);
  g_pending.fetch_sub(n, std::memory_order_relaxed);
}

unsigned run(Queue q) {
  unsigned n = 0;
  for (RcuHead* h = q.head; h != nullptr;) {
    RcuHead* next = h->next;  // fn may reuse the head
    h->fn(h);
    h = next;
    ++n;
  }
  g_in_flight.fetch_sub(n, std::memory_order_release);
  return n;
}

void check_not_reading(const char* call) {
  ThreadRecord* r = detail::t_record;
  if ((r->rcu.load(std::memory_order_relaxed) & kDepthMask) != 0)
    os::fatal_misuse(call, r, "called inside an RCU read-side critical section");
}

}  // namespace

void synchronize_rcu() {
  check_not_reading("synchronize_rcu");
  LockGuard guard(g_gp_lock);
  wait_for_readers(start_grace_period_locked());
}

void call_rcu(RcuHead* head, void (*fn)(RcuHead*)) {
  head->fn = fn;
  head->next = nullptr;
  Queue one{head, head};
  LockGuard guard(g_cb_lock);
  g_queued.append(one);
  g_pending.fetch_add(1, std::memory_order_relaxed);
}

unsigned rcu_poll() {
  if (g_pending.load(std::memory_order_relaxed) == 0) return 0;
  if (!g_gp_lock.try_lock()) return 0;
  Queue ready;
  if (g_waiting.head != nullptr && readers_past(g_waiting_target)) {
    ready = g_waiting;
    g_waiting = Queue{};
    mark_taken(count(ready));
  }
  if (g_waiting.head == nullptr) {
    uint64_t now = os::now_ms();
    if (now - g_last_start_ms >= kPollIntervalMs || g_pending.load(std::memory_order_relaxed) >= kPollBacklog) {
      g_waiting = take_queued();
      if (g_waiting.head != nullptr) {
        g_waiting_target = start_grace_period_locked();
        g_last_start_ms = now;
      }
    }
  }
  g_gp_lock.unlock();
  return run(ready);
}

void rcu_barrier() {
  check_not_reading("rcu_barrier");
  Queue all;
  {
    LockGuard guard(g_gp_lock);
    all = g_waiting;
    g_waiting = Queue{};
    Queue queued = take_queued();
    all.append(queued);
    mark_taken(count(all));
    wait_for_readers(start_grace_period_locked());
  }
  run(all);
  // Batches other threads took before us may still be running.
  for (unsigned round = 0; g_in_flight.load(std::memory_order_acquire) != 0; ++round) backoff(round);
}

uint64_t rcu_pending() { return g_pending.load(std::memory_order_relaxed); }

void rcu_fork_prepare() { g_gp_lock.lock(); }
void rcu_fork_prepare_queue() { g_cb_lock.lock(); }

void rcu_fork_parent() {
  g_cb_lock.unlock();
  g_gp_lock.unlock();
}

// Batches that other threads were running are gone with them (their objects are leaked in the
// child, never reused while a reader might hold them).
void rcu_fork_child() {
  g_cb_lock.reset_after_fork();
  g_gp_lock.reset_after_fork();
  g_in_flight.store(0, std::memory_order_relaxed);
}

}  // namespace fastmalloc::sync
