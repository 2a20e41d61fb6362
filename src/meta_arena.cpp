// The metadata arena's bump allocator.
#include "meta_arena.h"

#include "base.h"
#include "os/os.h"

namespace fastmalloc {

MetaArena g_meta_arena;

void* MetaArena::allocate(size_t bytes) {
  bytes = round_up(bytes, 64);
  if (static_cast<size_t>(limit_ - cursor_) < bytes) {
    constexpr size_t kChunk = 256 * 1024;
    size_t chunk = bytes > kChunk ? round_up(bytes, 4096) : kChunk;
    void* fresh = os::map(chunk, 4096);
    if (fresh == nullptr) return nullptr;
    cursor_ = static_cast<char*>(fresh);
    limit_ = cursor_ + chunk;
    mapped_ += chunk;
  }
  void* p = cursor_;
  cursor_ += bytes;
  return p;
}

}  // namespace fastmalloc
