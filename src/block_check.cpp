// The free signature's secret, span free-list links and hardened mode's switch.
#include "block_check.h"

#include "options.h"
#include "os/os.h"
#include "sync/mutex.h"

namespace fastmalloc {

// Before prepare_block_checks() (and in the unit tests, which never call it) the signature is
// this constant: any value works as long as it does not change while blocks carry it.
constinit CacheLineAlone<uint64_t> g_free_signature = {0xa5c3'96e1'0f2d'b47bu};
constinit CacheLineAlone<bool> g_hardened = {false};

namespace {

Mutex g_prepare_lock;
std::atomic<bool> g_prepared{false};

// Keeps the secret away from the values programs store most: pointers, small and negative
// integers (top 16 bits all 0 or all 1).
uint64_t make_secret() {
  uint64_t secret = os::random_u64();
  uint64_t top = secret >> 48;
  if (top == 0 || top == 0xffff) secret ^= uint64_t{0x5a5a} << 48;
  return secret;
}

}  // namespace

void prepare_block_checks() {
  if (g_prepared.load(std::memory_order_acquire)) return;
  LockGuard guard(g_prepare_lock);
  if (g_prepared.load(std::memory_order_relaxed)) return;
  // No block has been handed out yet: every allocating path calls this first.
  __atomic_store_n(&g_free_signature.value, make_secret(), __ATOMIC_RELAXED);
  g_hardened.value = options().harden;
  g_prepared.store(true, std::memory_order_release);
}

bool decode_link(const void* block, uintptr_t span_start, unsigned cls, void** next) {
  if (!is_link(block)) return false;
  uint64_t offset = *static_cast<const Word*>(block) ^ free_signature() ^ kLinkTag;
  if (offset == 0) {
    *next = nullptr;
    return true;
  }
  --offset;
  if (!is_object_boundary_any(cls, offset)) return false;  // the word may hold anything
  *next = reinterpret_cast<void*>(span_start + offset);
  return true;
}

}  // namespace fastmalloc
