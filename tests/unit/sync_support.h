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
struct Object {
  std::atomic<uint64_t> words[8];
  Object* next_free;
  void* rcu_head[2];  // room for an RcuHead
  void make_live(uint64_t tag) {
    for (auto& w : words) w.store(kLive ^ tag, std::memory_order_relaxed);
  }
  void poison() {
    for (auto& w : words) w.store(kPoison, std::memory_order_relaxed);
  }
  // True when every word carries the same live pattern.
  bool live() const {
    uint64_t first = words[0].load(std::memory_order_relaxed);
    if (first == kPoison) return false;
    for (const auto& w : words)
      if (w.load(std::memory_order_relaxed) != first) return false;
    return true;
  }
};

// Elapsed time in seconds since `start`.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace sync_test
