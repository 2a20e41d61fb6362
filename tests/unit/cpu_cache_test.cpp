// The per-CPU caches' guard for vfork children: while one lives, the inline fast paths are off
// for every thread, and the child's own calls keep off the slabs.
#include <catch2/catch.hpp>

#include <semaphore>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "cpu_cache.h"
#include "front_end.h"
#include "size_classes.h"

using namespace fastmalloc;

namespace {
uint64_t inline_paths() { return __atomic_load_n(&g_percpu.fast_num_slabs, __ATOMIC_ACQUIRE); }

uint64_t slab_objects(unsigned cls) { return cache_stats().class_objects[cls]; }
}  // namespace

TEST_CASE("the inline fast paths are off from the first vfork child's start to the last parent's resumption") {
  cache_set_up();
  const uint64_t on = inline_paths();
  REQUIRE(on == (cache_mode() == CacheMode::kLocked ? 0 : g_percpu.num_slabs));

  // A parent thread that never saw its child start changes nothing.
  cache_vfork_parent_resumed();
  REQUIRE(inline_paths() == on);

  // Children of two threads live at once (a vfork child shares its parent thread's TLS, so a
  // thread here stands for both): the first parent to resume leaves the paths off.
  std::binary_semaphore first_started{0}, first_may_resume{0};
  std::thread first([&] {
    cache_vfork_child_started();
    first_started.release();
    first_may_resume.acquire();
    cache_vfork_parent_resumed();
  });
  first_started.acquire();
  CHECK(inline_paths() == 0);
  uint64_t while_second_lived = on;
  std::thread second([&] {
    cache_vfork_child_started();
    while_second_lived = inline_paths();
    cache_vfork_parent_resumed();
  });
  second.join();
  CHECK(while_second_lived == 0);
  CHECK(inline_paths() == 0);
  // A thread whose child never started cannot resume for first.
  std::thread stranger([] { cache_vfork_parent_resumed(); });
  stranger.join();
  CHECK(inline_paths() == 0);
  // CHECKs above, so that first is always released and joined.
  first_may_resume.release();
  first.join();
  REQUIRE(inline_paths() == on);
}

TEST_CASE("a vfork child's allocations and frees keep off the per-CPU slabs") {
  cache_set_up();
  REQUIRE(cache_mode() != CacheMode::kLocked);  // the rseq modes are the ones a child endangers
  const unsigned cls = size_to_class(64);
  std::vector<void*> blocks;
  for (int i = 0; i < 200; ++i) blocks.push_back(allocate(64));
  for (void* p : blocks) deallocate(p, "free");
  blocks.clear();
  // Normal calls do use the slab: its frees land there.
  REQUIRE(slab_objects(cls) > 0);

  // One thread stands for the parent, its child and the child's own vfork child, which share
  // its TLS; the slab is read while the child lives, before and after its child. (Read there,
  // checked here: Catch2's assertions are not for other threads.)
  uint64_t before = 0, after_own_calls = 0, after_nested_child = 0;
  std::thread child([&] {
    cache_vfork_child_started();
    before = slab_objects(cls);
    auto allocate_and_free = [&] {
      for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 300; ++i) blocks.push_back(allocate(64));
        for (void* p : blocks) deallocate(p, "free");
        blocks.clear();
      }
    };
    allocate_and_free();
    after_own_calls = slab_objects(cls);
    cache_vfork_child_started();
    allocate_and_free();
    cache_vfork_parent_resumed();
    allocate_and_free();
    after_nested_child = slab_objects(cls);
    cache_vfork_parent_resumed();
  });
  child.join();
  CHECK(after_own_calls == before);
  CHECK(after_nested_child == before);
  REQUIRE(inline_paths() == g_percpu.num_slabs);
}

TEST_CASE("a fork child turns the inline fast paths back on when only other threads had vfork children") {
  cache_set_up();
  const uint64_t on = inline_paths();
  std::binary_semaphore started{0}, may_resume{0};
  std::thread vforking([&] {  // stands for a thread whose vfork child lives during the fork
    cache_vfork_child_started();
    started.release();
    may_resume.acquire();
    cache_vfork_parent_resumed();
  });
  started.acquire();
  // What the library's fork handlers do around fork() (bootstrap.cpp), for this module.
  cache_lock_all();
  pid_t pid = fork();
  if (pid == 0) {
    cache_reset_locks_after_fork();
    _exit(inline_paths() == on ? 0 : 1);
  }
  cache_unlock_all();
  CHECK(inline_paths() == 0);  // the parent's vfork child still lives
  may_resume.release();
  vforking.join();
  REQUIRE(pid > 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(inline_paths() == on);
}
