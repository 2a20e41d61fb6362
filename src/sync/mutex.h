// A small futex-based mutex (the three-state lock from Drepper's "Futexes Are Tricky"): an
// uncontended lock/unlock is one atomic each; waiters sleep in the kernel instead of spinning,
// which matters when threads outnumber CPUs and a lock holder gets preempted. Zero-initialized
// means unlocked, so mutexes in static storage need no constructor.
#pragma once

#include <atomic>
#include <cstdint>

#include "base.h"
#include "cpu.h"
#include "os/os.h"

namespace fastmalloc {

class Mutex {
 public:
  constexpr Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  FM_ALWAYS_INLINE void lock() {
    uint32_t expected = kUnlocked;
    if (FM_LIKELY(state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire))) return;
    lock_contended();
  }

  FM_ALWAYS_INLINE void unlock() {
    if (FM_UNLIKELY(state_.exchange(kUnlocked, std::memory_order_release) == kContended)) wake_one();
  }

  bool try_lock() {
    uint32_t expected = kUnlocked;
    return state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire);
  }

  // For fork's child: the forking thread owned every lock, and it is the only thread left.
  void reset_after_fork() { state_.store(kUnlocked, std::memory_order_relaxed); }

 private:
  static constexpr uint32_t kUnlocked = 0, kLocked = 1, kContended = 2;

  FM_NOINLINE void lock_contended() {
    for (int spin = 0; spin < 100; ++spin) {
      arch::cpu_relax();
      uint32_t expected = kUnlocked;
      if (state_.load(std::memory_order_relaxed) == kUnlocked &&
          state_.compare_exchange_weak(expected, kLocked, std::memory_order_acquire))
        return;
    }
    while (state_.exchange(kContended, std::memory_order_acquire) != kUnlocked)
      os::futex_wait(reinterpret_cast<uint32_t*>(&state_), kContended);
  }

  FM_NOINLINE void wake_one() { os::futex_wake(reinterpret_cast<uint32_t*>(&state_), 1); }

  std::atomic<uint32_t> state_{kUnlocked};
};

class LockGuard {
 public:
  explicit LockGuard(Mutex& m) : m_(m) { m_.lock(); }
  ~LockGuard() { m_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  Mutex& m_;
};

}  // namespace fastmalloc
