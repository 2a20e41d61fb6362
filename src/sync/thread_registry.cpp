// The thread registry: handing records out, taking them back at thread exit and in a fork child,
// and the writers' fence.
#include "sync/thread_registry.h"

#include <cstdlib>
#include <limits.h>
#include <pthread.h>

#include "cpu.h"
#include "os/message.h"
#include "os/os.h"
#include "os/rseq.h"
#include "sync/mutex.h"

namespace fastmalloc::sync {

bool g_readers_fence = false;

namespace detail {
constinit ThreadRecord g_unregistered{{kFenceFlag}, {kFenceFlag, kFenceFlag, kFenceFlag, kFenceFlag, kFenceFlag}, nullptr, 0};
static_assert(kMaxPrwlocks == 5, "g_unregistered flags every prwlock slot");
__attribute__((tls_model("initial-exec"))) constinit thread_local ThreadRecord* t_record = &g_unregistered;
std::atomic<ThreadRecord*> g_chunks[kMaxChunks];
std::atomic<unsigned> g_records_carved{0};
}  // namespace detail

namespace {

using detail::g_chunks;
using detail::g_records_carved;
using detail::kRecordsPerChunk;
using detail::t_record;

// SYNCHRONIZATION: g_lock guards the free and late lists, carving, the key and the one-time
// setup. Records' words are written by their owner thread only, except while the record is
// free (the registry writes it under g_lock, with no owner) and in a fork child.
Mutex g_lock;
ThreadRecord* g_free = nullptr;
ThreadRecord* g_late = nullptr;  // records of threads that called in after their exit hook
unsigned g_in_use = 0;
std::atomic<bool> g_set_up{false};  // read without g_lock by registry_set_up()
bool g_have_key = false;
pthread_key_t g_key;

// The outermost read sections have ended by the time a record is free: clear it for the next
// owner, keeping each prwlock's version (a writer may compare it) and the fence flag (decided
// once for the process).
void clear(ThreadRecord& r) {
  r.rcu.store(r.rcu.load(std::memory_order_relaxed) & kFenceFlag, std::memory_order_release);
  for (auto& word : r.prw) word.store(word.load(std::memory_order_relaxed) & ~kDepthMask, std::memory_order_release);
}

void release_locked(ThreadRecord* r) {
  clear(*r);
  r->next = g_free;
  g_free = r;
  --g_in_use;
}

// Set by the exit hook: whatever this thread calls from now on runs in its last moments.
__attribute__((tls_model("initial-exec"))) constinit thread_local bool t_exit_hook_ran = false;

// Takes back the late records whose threads the kernel no longer knows: they can read nothing.
// One system call per late record, and a record is late only for the moments between its
// thread's exit hook and its end, so the list stays as short as the threads ending together.
void reclaim_late_records_locked() {
  ThreadRecord** link = &g_late;
  while (ThreadRecord* r = *link) {
    if (os::thread_has_ended(r->late_owner)) {
      *link = r->next;
      release_locked(r);
    } else {
      link = &r->next;
    }
  }
}

// Runs at thread exit (glibc calls key destructors from pthread_exit and a thread's return).
// The thread may have been inside a read section (pthread_exit from a signal handler, a
// cancellation): clearing its words ends those sections for the writers.
void on_thread_exit(void* record) {
  LockGuard guard(g_lock);
  release_locked(static_cast<ThreadRecord*>(record));
  t_record = &detail::g_unregistered;
  t_exit_hook_ran = true;
}

// Once, before the first record is handed out: how writers fence, and the exit hook. A key
// below PTHREAD_KEY_2NDLEVEL_SIZE (32) keeps its value in the thread descriptor itself, so
// pthread_setspecific never allocates; a higher key could call malloc, so it is not used and
// records of exited threads are then not recycled (they read as outside any section).
void set_up_locked() {
  g_readers_fence = !os::membarrier_private_register();
  pthread_key_t key;
  if (pthread_key_create(&key, on_thread_exit) == 0) {
    if (key < 32) {
      g_key = key;
      g_have_key = true;
    } else {
      pthread_key_delete(key);
    }
  }
  g_set_up.store(true, std::memory_order_release);
}

ThreadRecord* take_record_locked() {
  if (g_late != nullptr) reclaim_late_records_locked();
  if (g_free != nullptr) {
    ThreadRecord* r = g_free;
    g_free = r->next;
    return r;
  }
  unsigned index = g_records_carved.load(std::memory_order_relaxed);
  unsigned chunk = index / kRecordsPerChunk;
  if (chunk >= detail::kMaxChunks) return nullptr;
  if (index % kRecordsPerChunk == 0) {
    void* memory = os::map(kRecordsPerChunk * sizeof(ThreadRecord), 4096);
    if (memory == nullptr) return nullptr;
    g_chunks[chunk].store(static_cast<ThreadRecord*>(memory), std::memory_order_release);
  }
  // Published after the chunk: a writer that sees the count sees the chunk.
  g_records_carved.store(index + 1, std::memory_order_release);
  return &g_chunks[chunk].load(std::memory_order_relaxed)[index % kRecordsPerChunk];
}

}  // namespace

namespace detail {

ThreadRecord* register_current_thread() {
  ThreadRecord* r;
  {
    LockGuard guard(g_lock);
    if (!g_set_up.load(std::memory_order_relaxed)) set_up_locked();
    r = take_record_locked();
    if (r != nullptr) {
      ++g_in_use;
      // Past its exit hook, no destructor will run for this thread again: the record waits on
      // the late list for the thread to end.
      if (t_exit_hook_ran) {
        r->late_owner = os::current_thread_id();
        r->next = g_late;
        g_late = r;
      }
    }
  }
  // No memory for even 64 bytes of bookkeeping: there is no safe way to read on.
  if (r == nullptr) os::fatal_misuse("thread start", nullptr, "out of memory for the thread registry");
  if (g_readers_fence) {
    r->rcu.store(r->rcu.load(std::memory_order_relaxed) | kFenceFlag, std::memory_order_relaxed);
    for (auto& word : r->prw) word.store(word.load(std::memory_order_relaxed) | kFenceFlag, std::memory_order_relaxed);
  }
  t_record = r;
  if (g_have_key && !t_exit_hook_ran) pthread_setspecific(g_key, r);
  return r;
}

}  // namespace detail

void registry_set_up() {
  if (g_set_up.load(std::memory_order_acquire)) return;
  LockGuard guard(g_lock);
  if (!g_set_up.load(std::memory_order_relaxed)) set_up_locked();
}

void writer_fence() {
  // Writers may fence before any reader has registered: they decide how, the same way.
  registry_set_up();
  if (g_readers_fence) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return;
  }
  if (FM_LIKELY(os::membarrier_private())) return;
  // Registered at setup, refused now: a seccomp filter installed since. Readers do not fence, so
  // a reader's publishing store may still sit in its CPU's store buffer, unseen by our scan,
  // while it reads what we are about to change. A store buffer empties on its own within
  // microseconds (and at once at any interrupt or context switch): fence, then let a
  // millisecond pass before the scan. Slow, but only in this case.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  os::sleep_us(kRefusedFenceWaitUs);
}

void backoff(unsigned round) {
  if (round < 64) arch::cpu_relax();
  else if (round < 256) os::yield_cpu();
  else os::sleep_us(50);
}

void registry_fork_prepare() { g_lock.lock(); }
void registry_fork_parent() { g_lock.unlock(); }

// Only the forking thread lives on: every other record is free, whatever it held.
void registry_fork_child() {
  g_lock.reset_after_fork();
  g_free = nullptr;
  g_late = nullptr;
  g_in_use = 0;
  for_each_record([](ThreadRecord& r) {
    if (&r == t_record) {
      ++g_in_use;
      return;
    }
    clear(r);
    r.next = g_free;
    g_free = &r;
  });
}

unsigned records_in_use() {
  LockGuard guard(g_lock);
  return g_in_use;
}

}  // namespace fastmalloc::sync
