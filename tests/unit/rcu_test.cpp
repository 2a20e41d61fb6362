// RCU (src/sync/rcu.*): grace periods wait for exactly the readers they must, callbacks run
// after them, and threads that exit or fork leave it working. The stress test poisons every
// object it reclaims, so a reader that could still see a reclaimed object fails.
#include <catch2/catch.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <pthread.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "../refuse_syscalls.h"
#include "os/os.h"
#include "sync/rcu.h"
#include "sync/thread_registry.h"
#include "sync_support.h"

using namespace fastmalloc::sync;
using namespace sync_test;
using namespace std::chrono_literals;

namespace {

// Holds an RCU read section open on its own thread until released.
class Reader {
 public:
  Reader() : thread_([this] {
      rcu_read_lock();
      inside_.store(true);
      while (!release_.load()) std::this_thread::sleep_for(1ms);
      rcu_read_unlock();
    }) {
    while (!inside_.load()) std::this_thread::sleep_for(1ms);
  }
  void release() { release_.store(true); }
  ~Reader() {
    release_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> inside_{false}, release_{false};
  std::thread thread_;
};

// Forks with RCU's and the registry's locks taken, as the allocator's fork handlers take them;
// the child fixes them up, runs `child` (a hang fails it after 10 s) and exits with what it
// returns. Returns the child's exit code.
template <class Fn>
int run_forked(Fn child) {
  rcu_fork_prepare();
  rcu_fork_prepare_queue();
  registry_fork_prepare();
  pid_t pid = fork();
  if (pid == 0) {
    rcu_fork_child();
    registry_fork_child();
    alarm(10);
    _exit(child());
  }
  rcu_fork_parent();
  registry_fork_parent();
  REQUIRE(pid > 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("synchronize_rcu waits for a reader that started before it, and only that long", "[sync]") {
  Reader reader;
  std::atomic<bool> released{false}, synchronized{false};
  std::thread writer([&] {
    synchronize_rcu();
    synchronized.store(true);
    REQUIRE(released.load());
  });
  std::this_thread::sleep_for(50ms);
  REQUIRE_FALSE(synchronized.load());
  released.store(true);
  reader.release();
  writer.join();
  REQUIRE(synchronized.load());
}

TEST_CASE("a reader that starts after synchronize_rcu began does not hold it up", "[sync]") {
  // The writer's own read sections, and sections begun later, do not block it.
  rcu_read_lock();
  rcu_read_unlock();
  require_finishes("synchronize_rcu with no reader", 10, [] { synchronize_rcu(); });
}

TEST_CASE("nested read sections end at the outermost unlock", "[sync]") {
  std::atomic<int> stage{0};
  std::atomic<bool> synchronized{false};
  std::thread reader([&] {
    rcu_read_lock();
    rcu_read_lock();
    rcu_read_unlock();  // still inside the outer section
    stage.store(1);
    while (stage.load() != 2) std::this_thread::sleep_for(1ms);
    REQUIRE_FALSE(synchronized.load());
    rcu_read_unlock();
  });
  while (stage.load() != 1) std::this_thread::sleep_for(1ms);
  std::thread writer([&] {
    synchronize_rcu();
    synchronized.store(true);
  });
  std::this_thread::sleep_for(50ms);
  REQUIRE_FALSE(synchronized.load());
  stage.store(2);
  reader.join();
  writer.join();
  REQUIRE(synchronized.load());
}

namespace {
std::atomic<int> g_callbacks_run{0};
void count_callback(RcuHead*) { g_callbacks_run.fetch_add(1); }
}  // namespace

TEST_CASE("call_rcu callbacks wait for the readers of their time, then run", "[sync]") {
  rcu_barrier();
  g_callbacks_run.store(0);
  RcuHead heads[3];
  {
    Reader reader;
    for (auto& h : heads) call_rcu(&h, count_callback);
    REQUIRE(rcu_pending() == 3);
    // However often it is polled, nothing runs while the reader is inside.
    for (int i = 0; i < 50; ++i) {
      rcu_poll();
      std::this_thread::sleep_for(1ms);
    }
    REQUIRE(g_callbacks_run.load() == 0);
    reader.release();
  }
  for (int i = 0; i < 1000 && g_callbacks_run.load() < 3; ++i) {
    rcu_poll();
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(g_callbacks_run.load() == 3);
  REQUIRE(rcu_pending() == 0);
}

TEST_CASE("a backlog of 256 callbacks starts a grace period without waiting out the interval", "[sync]") {
  // rcu_poll starts grace periods at most every 10 ms, unless 256 callbacks wait (each a retired
  // span descriptor, memory held until it runs). A trial counts only if it took under 5 ms of
  // real time: the poll's clock is coarse (one tick, 4 ms at most here, behind), so the
  // interval cannot have run out by then.
  bool decided = false;
  for (int trial = 0; trial < 100 && !decided; ++trial) {
    rcu_barrier();
    g_callbacks_run.store(0);
    RcuHead first;
    call_rcu(&first, count_callback);
    for (int i = 0; i < 1000 && g_callbacks_run.load() < 1; ++i) rcu_poll();  // starts one, then runs it
    auto started = std::chrono::steady_clock::now();
    std::vector<RcuHead> heads(256);
    for (auto& h : heads) call_rcu(&h, count_callback);
    rcu_poll();  // the backlog starts a grace period; with no reader inside, the next poll ends it
    rcu_poll();
    int run = g_callbacks_run.load() - 1;
    if (std::chrono::steady_clock::now() - started >= 5ms) continue;
    decided = true;
    INFO("callbacks run after two polls: " << run << " of 256");
    REQUIRE(run == 256);
  }
  rcu_barrier();
  REQUIRE(decided);
}

TEST_CASE("rcu_barrier runs every callback queued before it", "[sync]") {
  rcu_barrier();
  g_callbacks_run.store(0);
  std::vector<RcuHead> heads(100);
  for (auto& h : heads) call_rcu(&h, count_callback);
  rcu_barrier();
  REQUIRE(g_callbacks_run.load() == 100);
  REQUIRE(rcu_pending() == 0);
}

TEST_CASE("RCU stress: readers never see an object reclaimed under them", "[sync][stress]") {
  constexpr int kObjects = 1024;
  static Object pool[kObjects];
  static Object* free_list;  // the writer's thread only (callbacks run there too)
  static std::atomic<Object*> current;
  free_list = nullptr;
  for (auto& o : pool) {
    o.poison();
    o.next_free = free_list;
    free_list = &o;
  }
  auto take = [] {
    Object* o = free_list;
    free_list = o->next_free;
    return o;
  };
  Object* first = take();
  first->make_live(0);
  current.store(first);

  StressReaders readers([](uint64_t n) {
    uint64_t stale = 0;
    rcu_read_lock();
    if (n % 7 == 0) rcu_read_lock();  // nested sections protect as well
    Object* o = current.load(std::memory_order_acquire);
    for (int k = 0; k < 4; ++k)
      if (!o->live()) ++stale;
    if (n % 7 == 0) rcu_read_unlock();
    rcu_read_unlock();
    return stale;
  });
  // Half the updates wait with synchronize_rcu, half defer with call_rcu.
  static auto reclaim = [](RcuHead* head) {
    Object* o = reinterpret_cast<Object*>(reinterpret_cast<char*>(head) - offsetof(Object, rcu_head));
    o->poison();
    o->next_free = free_list;
    free_list = o;
  };
  uint64_t updates = 0;
  auto start = std::chrono::steady_clock::now();
  // At least a second, and on until both sides have done enough, however slowly a loaded
  // machine (or a sanitizer) lets them run.
  while (seconds_since(start) < 1.0 || ((updates <= 100 || readers.reads() <= 1000) && seconds_since(start) < 60.0)) {
    if (free_list == nullptr) rcu_barrier();
    Object* next = take();
    next->make_live(++updates);
    Object* old = current.exchange(next, std::memory_order_acq_rel);
    if (updates % 2 == 0) {
      synchronize_rcu();
      reclaim(reinterpret_cast<RcuHead*>(old->rcu_head));
    } else {
      call_rcu(reinterpret_cast<RcuHead*>(old->rcu_head), reclaim);
      rcu_poll();
    }
  }
  readers.stop();
  rcu_barrier();
  INFO("updates " << updates << ", reads " << readers.reads());
  REQUIRE(readers.bad() == 0);
  REQUIRE(updates > 100);
  REQUIRE(readers.reads() > 1000);
}

TEST_CASE("a thread that exits inside a read section does not block grace periods", "[sync]") {
  pthread_t thread;
  pthread_create(
      &thread, nullptr,
      [](void*) -> void* {
        rcu_read_lock();
        pthread_exit(nullptr);
      },
      nullptr);
  pthread_join(thread, nullptr);
  require_finishes("synchronize_rcu after a thread exited inside a section", 10, [] { synchronize_rcu(); });
}

TEST_CASE("records of exited threads are reused", "[sync]") {
  auto run_readers = [] {
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i)
      threads.emplace_back([] {
        rcu_read_lock();
        rcu_read_unlock();
      });
    for (auto& t : threads) t.join();
  };
  run_readers();
  unsigned after_first = records_in_use();
  for (int round = 0; round < 200; ++round) run_readers();
  // 1608 threads came and went; the records in use stay those of the threads alive now.
  REQUIRE(records_in_use() <= after_first);
}

// Read sections after the thread's exit hook has given its record back, as in glibc's last
// cleanup, which runs after every pthread-key destructor and frees what the thread left. The
// key below re-arms itself for every destructor round and reads in each: a thread that
// registers again during the rounds sets the registry's key, which brings its hook back for
// the next round, so only the reads of the last round are late for good. In the last round, one
// thread may also hold a section open. (ThreadSanitizer ends its own record of a thread in that
// round, and instrumented code run after that crashes, so its build leaves this test out.)
#if !defined(__SANITIZE_THREAD__)
namespace late {
pthread_key_t g_key;
std::atomic<bool> g_hold{false}, g_inside{false}, g_release{false};

void read_each_round(void* value) {
  auto round = reinterpret_cast<uintptr_t>(value);
  bool last = round == PTHREAD_DESTRUCTOR_ITERATIONS;
  rcu_read_lock();
  if (last && g_hold.exchange(false)) {  // one thread holds; those after it do not
    g_inside.store(true);
    while (!g_release.load()) std::this_thread::sleep_for(1ms);
  }
  rcu_read_unlock();
  if (!last) pthread_setspecific(g_key, reinterpret_cast<void*>(round + 1));
}

void start_reading_late() {
  rcu_read_lock();
  rcu_read_unlock();
  pthread_setspecific(g_key, reinterpret_cast<void*>(uintptr_t{1}));
}
}  // namespace late

TEST_CASE("a thread that reads after its exit hook keeps a record until it ends, then gives it back", "[sync]") {
  registry_set_up();  // the registry's key first, as in a program whose threads use the allocator
  REQUIRE(pthread_key_create(&late::g_key, late::read_each_round) == 0);
  for (int i = 0; i < 4; ++i) std::thread(late::start_reading_late).join();
  unsigned before = records_in_use();

  // Inside a section in its last moments: another thread's registration must not take its
  // record (it would be cleared, or handed to that thread), so a grace period waits for it.
  late::g_hold.store(true);
  std::thread holder(late::start_reading_late);
  while (!late::g_inside.load()) std::this_thread::sleep_for(1ms);
  std::thread(late::start_reading_late).join();
  std::atomic<bool> synchronized{false};
  std::thread grace([&] {
    synchronize_rcu();
    synchronized.store(true);
  });
  std::this_thread::sleep_for(50ms);
  CHECK_FALSE(synchronized.load());
  late::g_release.store(true);
  grace.join();
  holder.join();

  // Ended threads' late records are taken back by the next registration: 500 threads leave the
  // last one's, and maybe one or two more (a joined thread can still be known to the kernel for
  // a moment after pthread_join returns).
  for (int i = 0; i < 500; ++i) std::thread(late::start_reading_late).join();
  REQUIRE(records_in_use() <= before + 3);
  pthread_key_delete(late::g_key);
}
#endif

// A writer that waits for readers ends up sleeping between checks, holding the grace-period
// lock. Were that sleep a cancellation point (glibc's nanosleep is one), a thread cancelled
// while it waited, in a malloc or free that waited for a grace period or a prwlock writer, would
// unwind out of the allocator with the lock held (the library is built without exceptions, so
// no destructor unlocks it), and every later grace period would wait forever.
namespace cancel {
struct Waiter {
  std::atomic<int> tid{0};
  std::atomic<bool> synchronized{false};
};

// The state letter of thread `tid` of this process ('S' while it sleeps), or 0 once it is gone.
char thread_state(int tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
  FILE* f = fopen(path, "r");
  if (f == nullptr) return 0;
  char line[512] = {};
  size_t n = fread(line, 1, sizeof line - 1, f);
  fclose(f);
  line[n] = 0;
  const char* after_name = strrchr(line, ')');
  return after_name != nullptr && after_name[1] == ' ' ? after_name[2] : 0;
}
}  // namespace cancel

TEST_CASE("a pending cancellation does not act inside a grace period", "[sync]") {
  cancel::Waiter waiter;
  Reader reader;  // keeps the grace period waiting
  pthread_t thread;
  REQUIRE(pthread_create(
              &thread, nullptr,
              [](void* arg) -> void* {
                auto* w = static_cast<cancel::Waiter*>(arg);
                pthread_cancel(pthread_self());  // deferred: pending until a cancellation point
                w->tid.store(fastmalloc::os::current_thread_id());
                synchronize_rcu();
                w->synchronized.store(true);
                pthread_testcancel();
                return nullptr;
              },
              &waiter) == 0);
  while (waiter.tid.load() == 0) std::this_thread::sleep_for(1ms);
  // Spinning, then yielding, then sleeping: wait for the sleep (or for the thread to be gone).
  auto deadline = std::chrono::steady_clock::now() + 10s;
  char state;
  while ((state = cancel::thread_state(waiter.tid.load())) != 'S' && state != 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  CHECK(state == 'S');
  reader.release();
  void* result = nullptr;
  pthread_join(thread, &result);
  CHECK(result == PTHREAD_CANCELED);
  REQUIRE(waiter.synchronized.load());
  require_finishes("synchronize_rcu after a cancelled writer", 10, [] { synchronize_rcu(); });
}

TEST_CASE("a fork child whose parent had readers inside can still synchronize", "[sync]") {
  Reader reader;  // inside a section when the fork happens; absent from the child
  int code = run_forked([] {
    synchronize_rcu();
    rcu_read_lock();
    rcu_read_unlock();
    rcu_barrier();
    return 0;
  });
  REQUIRE(code == 0);
}

TEST_CASE("readers fence exactly when membarrier is unavailable", "[sync]") {
  rcu_read_lock();  // makes sure the registry has decided
  rcu_read_unlock();
  // The seccomp run of this suite (CTest "unit/sync without membarrier") sets this.
  bool membarrier_denied = getenv("FASTMALLOC_TEST_NO_MEMBARRIER") != nullptr;
  REQUIRE(g_readers_fence == membarrier_denied);
  // A reader's fast path fences only in the slow path its record's flag sends it to, in this
  // thread and in a new one (whose record is taken, or reused, after the decision).
  REQUIRE(((current_record()->rcu.load() & kFenceFlag) != 0) == membarrier_denied);
  uint64_t word = 0;
  std::thread fresh([&] {
    rcu_read_lock();
    word = current_record()->rcu.load();
    rcu_read_unlock();
  });
  fresh.join();
  REQUIRE(((word & kFenceFlag) != 0) == membarrier_denied);
  REQUIRE((word & kDepthMask) == 1);
}

namespace {

// From now on membarrier fails with EPERM, as under a sandbox set up after the program started.
bool refuse_membarrier_from_now_on() {
  const int refused[] = {SYS_membarrier};
  return refuse_syscalls(refused, 1, EPERM) == 0;
}

}  // namespace

// Not in [sync]: the suite's run without membarrier refuses it from the start, where readers
// fence instead and this case cannot arise.
TEST_CASE("a writer whose membarrier is refused after setup waits for readers' stores to drain") {
  rcu_read_lock();  // the registry decides how to fence, with membarrier available
  rcu_read_unlock();
  REQUIRE_FALSE(g_readers_fence);
  int code = run_forked([] {
    if (!refuse_membarrier_from_now_on()) return 2;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 || errno != EPERM) return 3;
    // No reader is inside: all the grace period waits for is the writer's own fallback.
    auto start = std::chrono::steady_clock::now();
    synchronize_rcu();
    auto waited = std::chrono::steady_clock::now() - start;
    return waited >= std::chrono::microseconds(kRefusedFenceWaitUs) ? 0 : 4;
  });
  INFO("child's exit code: 2 no seccomp, 3 membarrier not refused, 4 the writer did not wait");
  REQUIRE(code == 0);
}
