// vfork children that allocate: undefined by POSIX, done by real programs. A vfork child reads
// its parent thread's rseq area, so without the library's vfork it used the slab of a CPU that
// the parent's other threads were using at the same moment; here that handed a block out twice
// within the first few children, in every run.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "preload_support.h"

namespace {

// What a careless child does between vfork and _exit: allocates, writes and frees.
[[noreturn]] void vfork_child_allocates() {
  static void* volatile held[8];  // volatile: the compiler may not fold malloc and free away
  for (int round = 0; round < 500; ++round) {
    for (int k = 0; k < 8; ++k) {
      size_t size = 16 + static_cast<size_t>((round + k) % 48) * 8;
      held[k] = malloc(size);
      memset(held[k], 0x5a, size);
    }
    for (int k = 0; k < 8; ++k) free(held[k]);
  }
  _exit(0);
}

}  // namespace

TEST_CASE("the library defines vfork (on x86-64, where the per-CPU caches use rseq)", "[vfork]") {
#if defined(__x86_64__)
  REQUIRE(resolves_to_fastmalloc("vfork"));
#else
  REQUIRE_FALSE(resolves_to_fastmalloc("vfork"));
#endif
  pid_t pid = vfork();
  if (pid == 0) _exit(7);
  REQUIRE(pid > 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 7);
}

TEST_CASE("vfork children allocate and free while the parent's other threads allocate on every CPU", "[vfork]") {
  ChildResult result = run_in_child([] {
    const std::vector<int> cpus = allowed_cpus();
    std::atomic<bool> stop{false};
    std::atomic<int> corrupt{0};
    std::vector<std::thread> workers;
    for (size_t t = 0; t < 2 * cpus.size(); ++t) {
      workers.emplace_back([&, t] {
        pin_to(cpus[t % cpus.size()]);
        std::vector<void*> held(64, nullptr);
        uint32_t tag = static_cast<uint32_t>(t) << 24, i = 0;
        while (!stop.load(std::memory_order_relaxed)) {
          void*& slot = held[++i % held.size()];
          if (slot != nullptr && !Checked::check(slot, tag + static_cast<uint32_t>(i % held.size()))) ++corrupt;
          free(slot);
          slot = Checked::make(16 + i % 48 * 8, tag + static_cast<uint32_t>(i % held.size()));
        }
        for (void* p : held) free(p);
      });
    }
    int children = 0, failed = 0;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (children < 2000 && std::chrono::steady_clock::now() < end && failed == 0 && corrupt.load() == 0) {
      pid_t pid = vfork();
      if (pid == 0) vfork_child_allocates();
      int status = 0;
      if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
      ++children;
    }
    stop = true;
    for (auto& w : workers) w.join();
    if (failed != 0 || corrupt.load() != 0 || children < 20) {
      fprintf(stderr, "children=%d failed=%d corrupt=%d\n", children, failed, corrupt.load());
      _exit(1);
    }
  });
  INFO(result.err);
  REQUIRE(result.exited);
  REQUIRE(result.exit_code == 0);
}
