// A passive reader-writer lock, after Liu, Zhang and Chen, "Scalable read-mostly
// synchronization using passive reader-writer locks" (USENIX ATC 2014): for data that nearly
// every call reads and almost nothing changes.
//
// The lock is a version number: even while no writer is inside, odd while one is. A reader
// marks itself inside with one plain store into its own thread record (its word there plus one:
// depth 1, with the version it published last), then loads the version: even, it is in; odd, a
// writer is there and it steps out again. On the way out it publishes, with one more plain
// store, the version it has seen and a depth of 0. No atomic read-modify-write, no fence (on
// x86-TSO; see thread_registry.h for kernels without membarrier), and one load of the lock's
// word: the load comes after the store, so it needs no second look. A writer takes the writer
// mutex, makes the version odd, runs writer_fence() (membarrier: the user-space stand-in for
// the paper's IPI, which forces every reader's marking store out, so a reader the writer misses
// is one whose load comes after the fence and sees the odd version), then waits until every
// reader is outside its section. Readers that are not reading at all cost the writer nothing,
// so its latency is bounded by the longest read section in progress, not by readers coming
// back. A reader that blocks inside its section (a page fault, preemption) only delays the
// writer.
//
// A reader that finds a writer inside steps out (publishes that it is outside) and waits for
// the writer to finish. Readers nest (the record keeps a depth), so a signal handler may read
// in the middle of a read section; a writer must not read-lock the same lock, and should block
// signals whose handlers would.
//
// Readers under a writer. A nested section enters at once, on the strength of the section it
// nests in. But a signal can land in an outermost section between its store and its load, and
// if a writer's fence came before that store, the writer found the thread outside and is
// writing: the handler's nested section then reads under it, seeing each word the writer
// stores either before or after that store. It cannot tell that writer from one that found the
// store and waits for the section, so it cannot wait either. What the writer unlinked may
// therefore still be held after its last store: a writer that frees it calls synchronize()
// first, which waits, as a grace period does, until every section that began before is over
// (such a handler returns, and the section it interrupted loads the version and steps out).
//
// Waiting on readers can deadlock where a writer holds a lock that a reader's thread may wait
// for: a signal handler can interrupt a section and then take that lock. Such a writer uses the
// `patience_ms` forms, which give up instead of waiting for ever.
//
// Each live lock owns a slot (0 to kMaxPrwlocks - 1) in every thread record, fixed at compile
// time (Prwlock<kSlot>); the allocator's span map uses slot 0.
#pragma once

#include <atomic>
#include <cstdint>

#include "base.h"
#include "sync/mutex.h"
#include "sync/thread_registry.h"

namespace fastmalloc::sync {

// What read_lock() hands to read_unlock(): the reader's status word for the lock, and what to
// store there on the way out. For a nested section, the word as the section found it (sections
// nest and unwind in order, so by then the word is back to what this one stored); for the
// outermost, the version it saw, with its fence flag and a depth of 0.
struct PrwlockReadSection {
  std::atomic<uint64_t>* status;  // nullptr: try_read_lock() did not enter
  uint64_t exit_word;
};

// What a lock needs whatever its slot: the version, the writer side and the read side's slow
// path. Prwlock<kSlot> below adds the inline read side.
class PrwlockCore {
 public:
  using ReadSection = PrwlockReadSection;

  PrwlockCore(const PrwlockCore&) = delete;
  PrwlockCore& operator=(const PrwlockCore&) = delete;

  static constexpr uint64_t kWaitForever = ~uint64_t{0};

  void write_lock() { try_write_lock(kWaitForever); }
  // write_lock(), or false, with the lock left as it was, once the readers inside have held it
  // up for `patience_ms` (on a clock of tick resolution).
  bool try_write_lock(uint64_t patience_ms);
  // With the write side held, after unlinking what the writer will free: waits until no reader
  // can still hold it (see "readers under a writer" above). False once readers have held it up
  // for `patience_ms`; the writer is still inside and undoes its unlinking before it leaves.
  bool synchronize(uint64_t patience_ms);
  void write_unlock();

  // For tests: whether the calling thread's read sides fence (see kFenceFlag).
  bool caller_fences() const { return (current_record()->prw[slot_].load(std::memory_order_relaxed) & kFenceFlag) != 0; }

  // Fork: prepare takes the writer mutex; the child finds it free.
  Mutex& writer_mutex() { return writer_; }

 protected:
  explicit constexpr PrwlockCore(unsigned slot) : slot_(slot) {}

  // What try_read_lock() left: registers the thread, nests, or enters as the fast path does
  // (keeping the thread's fence flag), fencing if the flag says so, and waits out any writer.
  FM_NOINLINE ReadSection read_lock_slow();
  // Returns the word to store on the way out: the version seen, the fence flag, depth 0.
  uint64_t enter_outermost(std::atomic<uint64_t>& status);
  // The writer's wait: until every record is outside its section, or false once `patience_ms`
  // have passed.
  bool wait_until_readers_outside(uint64_t patience_ms);

  // The version kept where a status word holds it (shifted up by kPrwNestBits), so that the
  // read side's way out stores what it loaded and shifts nothing. Its lowest bit,
  // kWriterInside, makes it odd while a writer is inside; kVersionStep advances it.
  static constexpr uint64_t kVersionStep = uint64_t{1} << kPrwNestBits, kWriterInside = kVersionStep;
  // Zero at start, like everything else in the lock, so a lock inside a large object (the span
  // map) leaves that object in .bss. It starts a cache line, which holds nothing else but the
  // writer side (written only with the version): every free reads it, and the span map's
  // mutex, taken for each large block, used to share its line.
  alignas(kCacheLineBytes) std::atomic<uint64_t> version_word_{0};
  Mutex writer_;
  const unsigned slot_;
};

// The lock whose status word is prw[kSlot] in every thread record. The slot is a constant, so
// the read side finds its word at a fixed offset in the record, with no load of the slot.
template <unsigned kSlot>
class Prwlock : public PrwlockCore {
  static_assert(kSlot < kMaxPrwlocks);

 public:
  constexpr Prwlock() : PrwlockCore(kSlot) {}

  // The read side without a call: enters only when this thread is registered, is not already
  // inside, need not fence, and no writer is about; otherwise it leaves nothing published and
  // returns a section whose status is nullptr, and the caller takes a slow path that uses
  // read_lock(). Every branch out of it leaves the caller's fast path, so a fast path built on
  // it needs no stack frame.
  FM_ALWAYS_INLINE ReadSection try_read_lock() {
    std::atomic<uint64_t>& status = detail::t_record->prw[kSlot];
    uint64_t word = status.load(std::memory_order_relaxed);
    // Nested, or this thread must fence or is not registered (kFenceFlag): all need
    // read_lock().
    if (FM_UNLIKELY((word & kNestMask) != 0)) return {nullptr, 0};
    status.store(word + 1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // writers fence for us (membarrier)
    // Acquire: pairs with write_unlock, so the last writer's changes are seen.
    uint64_t version = version_word_.load(std::memory_order_acquire);
    if (FM_UNLIKELY((version & kWriterInside) != 0)) {
      status.store(word, std::memory_order_release);  // out again: nothing was read
      return {nullptr, 0};
    }
    return {&status, version};
  }

  FM_ALWAYS_INLINE ReadSection read_lock() {
    ReadSection section = try_read_lock();
    if (FM_LIKELY(section.status != nullptr)) return section;
    return read_lock_slow();
  }

  FM_ALWAYS_INLINE void read_unlock(ReadSection section) {
    // Release: the section's loads happen before a writer can see it ended.
    section.status->store(section.exit_word, std::memory_order_release);
  }
};

}  // namespace fastmalloc::sync
