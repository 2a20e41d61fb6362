// Stress for the per-CPU critical sections: many more threads than CPUs, threads moved between
// CPUs while they allocate, and a timer firing signals at 20 kHz, so sections are preempted,
// migrated and aborted constantly. Every block carries a check pattern: a block lost or handed
// out twice by a section that committed when it should have aborted fails the test.
#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <ctime>
#include <pthread.h>
#include <random>
#include <sched.h>
#include <thread>
#include <vector>

#include "preload_support.h"

namespace {

std::atomic<long> signals_seen{0};
void on_signal(int) { signals_seen.fetch_add(1, std::memory_order_relaxed); }

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

}  // namespace

TEST_CASE("per-CPU caches under oversubscription, migration and a 20 kHz signal storm") {
  const std::vector<int> cpus = allowed_cpus();
  REQUIRE(!cpus.empty());
  const int threads = 8 * static_cast<int>(cpus.size()) < 16 ? 16 : 8 * static_cast<int>(cpus.size());
  constexpr int kOps = 150000, kSlots = 64;

  struct sigaction action {};
  action.sa_handler = on_signal;
  action.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &action, nullptr);
  // A process-directed timer: the kernel picks whichever thread is running to take each signal.
  timer_t timer;
  struct sigevent event {};
  event.sigev_notify = SIGEV_SIGNAL;
  event.sigev_signo = SIGUSR1;
  REQUIRE(timer_create(CLOCK_MONOTONIC, &event, &timer) == 0);
  struct itimerspec every {{0, 50000}, {0, 50000}};  // 50 us: 20 kHz
  signals_seen = 0;
  REQUIRE(timer_settime(timer, 0, &every, nullptr) == 0);

  std::atomic<bool> ok{true};
  std::atomic<long> migrations{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(7 + t);
      void* slots[kSlots] = {};
      uint32_t tags[kSlots] = {};
      for (int op = 0; op < kOps; ++op) {
        if (op % 997 == 0) {
          // Move to another CPU in the middle of the work (the kernel migrates us at once).
          pin_to(cpus[rng() % cpus.size()]);
          migrations.fetch_add(1, std::memory_order_relaxed);
        }
        int i = static_cast<int>(rng() % kSlots);
        if (slots[i] != nullptr) {
          if (!Checked::check(slots[i], tags[i])) ok = false;
          free(slots[i]);
          slots[i] = nullptr;
        } else {
          tags[i] = static_cast<uint32_t>(rng());
          // Mostly small (cached) sizes, a few medium ones.
          size_t size = rng() % 16 == 0 ? 1024 + rng() % 30000 : 16 + rng() % 400;
          slots[i] = Checked::make(size, tags[i]);
        }
      }
      for (int i = 0; i < kSlots; ++i) {
        if (slots[i] != nullptr && !Checked::check(slots[i], tags[i])) ok = false;
        free(slots[i]);
      }
    });
  }
  for (auto& w : workers) w.join();
  struct itimerspec stop {};
  timer_settime(timer, 0, &stop, nullptr);
  timer_delete(timer);

  REQUIRE(ok);
  REQUIRE(migrations.load() >= threads * (kOps / 997));
  // The storm really happened: at least a few thousand signals landed during the run.
  REQUIRE(signals_seen.load() > 2000);
}
