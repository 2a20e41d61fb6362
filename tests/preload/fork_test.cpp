// fork() from several threads of a program while other threads allocate: every child can
// allocate and exit. A child stuck on a lock held by a thread that does not exist in it dies by SIGALRM.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

// A child that allocates, reallocates and frees, then exits; 0 if it got that far.
[[noreturn]] void child_allocates_and_exits() {
  alarm(10);
  std::vector<void*> blocks;
  for (int i = 0; i < 200; ++i) {
    void* p = malloc(static_cast<size_t>(i) * 37 + 1);
    memset(p, i, static_cast<size_t>(i) * 37 + 1);
    blocks.push_back(p);
  }
  void* big = realloc(malloc(100), 2 << 20);
  for (void* p : blocks) free(p);
  free(big);
  _exit(0);
}

}  // namespace

TEST_CASE("1000 forks from several threads while other threads allocate; every child allocates and exits") {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&stop, t] {
      std::vector<void*> held(256, nullptr);
      unsigned i = static_cast<unsigned>(t);
      while (!stop.load(std::memory_order_relaxed)) {
        i = i * 1103515245 + 12345;
        void*& slot = held[i % held.size()];
        free(slot);
        slot = malloc((i >> 8) % 3000 + ((i & 0x10000) ? 300000 : 0));
      }
      for (void* p : held) free(p);
    });
  }
  constexpr int kForkers = 4, kForksEach = 250;
  std::atomic<int> failures{0}, forks{0};
  std::vector<std::thread> forkers;
  for (int f = 0; f < kForkers; ++f) {
    forkers.emplace_back([&] {
      for (int round = 0; round < kForksEach && failures.load() == 0; ++round) {
        pid_t pid = fork();
        if (pid == 0) child_allocates_and_exits();
        int status = 0;
        // One stuck child is enough; the rest would each wait for their alarm.
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
        else ++forks;
      }
    });
  }
  for (auto& th : forkers) th.join();
  stop = true;
  for (auto& th : threads) th.join();
  REQUIRE(failures.load() == 0);
  REQUIRE(forks.load() == kForkers * kForksEach);
}

TEST_CASE("a forked child can run exit() with its atexit handlers and destructors") {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    atexit([] { free(malloc(123)); });
    exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}
