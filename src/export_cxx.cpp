// C++ operators new and delete: every form libstdc++ declares (20 symbols), forwarding to the
// front end. Throwing forms follow the standard: on failure call the new-handler and retry, and
// throw std::bad_alloc when there is none.
#include <cstddef>
#include <new>

#include "base.h"
#include "front_end.h"

using namespace fastmalloc;

namespace {

void* allocate_or_throw(size_t size, size_t align) {
  for (;;) {
    void* p = align == 0 ? allocate(size) : allocate_aligned(align, size);
    if (FM_LIKELY(p != nullptr)) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
  }
}

void* allocate_or_null(size_t size, size_t align) noexcept {
  try {
    return allocate_or_throw(size, align);
  } catch (...) {
    return nullptr;
  }
}

size_t align_of(std::align_val_t align) { return static_cast<size_t>(align); }

}  // namespace

FM_EXPORT void* operator new(size_t size) { return allocate_or_throw(size, 0); }
FM_EXPORT void* operator new[](size_t size) { return allocate_or_throw(size, 0); }
FM_EXPORT void* operator new(size_t size, const std::nothrow_t&) noexcept { return allocate_or_null(size, 0); }
FM_EXPORT void* operator new[](size_t size, const std::nothrow_t&) noexcept { return allocate_or_null(size, 0); }
FM_EXPORT void* operator new(size_t size, std::align_val_t a) { return allocate_or_throw(size, align_of(a)); }
FM_EXPORT void* operator new[](size_t size, std::align_val_t a) { return allocate_or_throw(size, align_of(a)); }
FM_EXPORT void* operator new(size_t size, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate_or_null(size, align_of(a));
}
FM_EXPORT void* operator new[](size_t size, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate_or_null(size, align_of(a));
}

// The size and alignment arguments of delete are not needed: the span map knows the block.
FM_EXPORT void operator delete(void* p) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, size_t) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p, size_t) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, std::align_val_t) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p, std::align_val_t) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  deallocate(p, "operator delete");
}
FM_EXPORT void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  deallocate(p, "operator delete[]");
}
FM_EXPORT void operator delete(void* p, size_t, std::align_val_t) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p, size_t, std::align_val_t) noexcept { deallocate(p, "operator delete[]"); }
