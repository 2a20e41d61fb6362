// Process life: what runs at load (options, fork handlers), around fork, and at exit.
//
// Nothing here is needed before the first allocation: every structure starts zeroed and ready,
// so allocations from ld.so or libc that come before this library's constructor are served as
// usual. The constructor reads the options, registers the fork handlers, and sets up what
// registers the process for membarrier, while it most likely has one thread.
#include <pthread.h>

#include "central_free_list.h"
#include "cpu_cache.h"
#include "meta_arena.h"
#include "options.h"
#include "page_heap.h"
#include "report.h"
#include "span_map.h"
#include "sync/rcu.h"
#include "sync/thread_registry.h"
#include "transfer_cache.h"

namespace fastmalloc {

namespace {

// Fork: the child must find every lock free and every structure consistent, so the parent takes
// all of them, in the lock order of front_end.cpp, before the fork.
void before_fork() {
  sync::rcu_fork_prepare();
  cache_lock_all();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) transfer_cache(cls).lock().lock();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) central_list(cls).lock().lock();
  g_page_heap.grow_lock().lock();
  g_page_heap.lock().lock();
  g_span_map.lock().lock();
  g_span_map.structure_lock().writer_mutex().lock();
  sync::rcu_fork_prepare_queue();
  g_meta_arena.lock().lock();
  sync::registry_fork_prepare();
}

void after_fork_in_parent() {
  sync::registry_fork_parent();
  g_meta_arena.lock().unlock();
  g_span_map.structure_lock().writer_mutex().unlock();
  g_span_map.lock().unlock();
  g_page_heap.lock().unlock();
  g_page_heap.grow_lock().unlock();
  for (unsigned cls = kNumClasses - 1; cls >= 1; --cls) central_list(cls).lock().unlock();
  for (unsigned cls = kNumClasses - 1; cls >= 1; --cls) transfer_cache(cls).lock().unlock();
  cache_unlock_all();
  sync::rcu_fork_parent();
}

// The child's only thread is the one that forked, which held every lock: none has waiters.
void after_fork_in_child() {
  sync::registry_fork_child();
  g_meta_arena.lock().reset_after_fork();
  g_span_map.structure_lock().writer_mutex().reset_after_fork();
  g_span_map.lock().reset_after_fork();
  g_page_heap.lock().reset_after_fork();
  g_page_heap.grow_lock().reset_after_fork();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) central_list(cls).lock().reset_after_fork();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) transfer_cache(cls).lock().reset_after_fork();
  cache_reset_locks_after_fork();
  sync::rcu_fork_child();
}

__attribute__((constructor(101))) void on_load() {
  options();
  // pthread_atfork may allocate (through us): no lock is held here, so that is fine.
  pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
  // A membarrier registration costs nothing in a process with one thread, and a kernel RCU
  // grace period (10-20 ms here, measured with strace) in one with more: left to the first
  // slow path, it landed on a worker thread in most programs, inside its first free.
  sync::registry_set_up();
  cache_set_up();
}

__attribute__((destructor(101))) void on_unload() {
  if (options().stats) print_stats();
}

}  // namespace

}  // namespace fastmalloc
