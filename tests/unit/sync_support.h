// Helpers for the RCU and prwlock tests: a watchdog for operations whose failure is a hang, and
// objects that are poisoned when reclaimed, so a reader that sees a reclaimed one can tell.
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unistd.h>
#include <vector>

namespace sync_test {

// Runs fn on its own thread and fails the whole test program (a hang cannot be unwound) if it
// has not returned within `seconds`.
template <class Fn>
void require_finishes(const char* what, double seconds, Fn fn) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread([done, fn] {
    fn();
    done->store(true);
  }).detach();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done->load()) {
    if (std::chrono::steady_clock::now() > deadline) {
      fprintf(stderr, "FAIL: %s did not finish within %.0f s\n", what, seconds);
      fflush(stderr);
      _exit(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

constexpr uint64_t kLive = 0x1151'1151'1151'1151, kPoison = 0xdead'dead'dead'dead;

// A pool of objects that are never returned to malloc, so a reader holding a stale pointer reads
// poison, not freed memory.
// Words are relaxed atomics: a broken lock shows up as poison read, not as a compiler's guess.
// `plain` is an ordinary field written and read beside them, so that ThreadSanitizer (which sees
// no race on atomics) reports a reader and a reclaimer that the lock failed to order.
struct Object {
  std::atomic<uint64_t> words[8];
  uint64_t plain;
  Object* next_free;
  void* rcu_head[2];  // room for an RcuHead
  void make_live(uint64_t tag) {
    for (auto& w : words) w.store(kLive ^ tag, std::memory_order_relaxed);
    plain = kLive ^ tag;
  }
  void poison() {
    for (auto& w : words) w.store(kPoison, std::memory_order_relaxed);
    plain = kPoison;
  }
  // True when every word carries the same live pattern.
  bool live() const {
    uint64_t first = words[0].load(std::memory_order_relaxed);
    if (first == kPoison || plain != first) return false;
    for (const auto& w : words)
      if (w.load(std::memory_order_relaxed) != first) return false;
    return true;
  }
};

// The readers of a stress test: four per CPU, each calling read_once(n) (n counts its calls)
// until stopped; read_once returns how many stale objects it saw. Half of them yield now and
// then, so readers are also preempted inside their sections.
class StressReaders {
 public:
  template <class ReadOnce>
  explicit StressReaders(ReadOnce read_once) {
    int count = 4 * static_cast<int>(std::thread::hardware_concurrency());
    for (int t = 0; t < count; ++t)
      threads_.emplace_back([this, t, read_once] {
        uint64_t n = 0;
        while (!stop_.load(std::memory_order_relaxed)) {
          if (uint64_t stale = read_once(n)) bad_.fetch_add(stale);
          ++n;
          if (n % 64 == 0) {
            reads_.fetch_add(64, std::memory_order_relaxed);  // progress, for the writer's loop
            if (t % 2 == 0) std::this_thread::yield();
          }
        }
        reads_.fetch_add(n % 64);
      });
  }
  ~StressReaders() { stop(); }

  void stop() {
    stop_.store(true);
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  uint64_t bad() const { return bad_.load(); }
  uint64_t reads() const { return reads_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> bad_{0}, reads_{0};
  std::vector<std::thread> threads_;
};

// Elapsed time in seconds since `start`.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace sync_test
