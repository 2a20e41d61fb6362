// C++ operators new and delete: every form libstdc++ declares (20 symbols), forwarding to the
// front end. Throwing forms follow the standard: on failure call the new-handler and retry, and
// throw std::bad_alloc when there is none.
//
// The C++ runtime is reached through weak references only, so the library does not need
// libstdc++: a C program that preloads it does not load libstdc++ and libm (about 1.3 MB of
// resident pages) for operators it never calls. In a C++ program the references bind to
// libstdc++ when the library is loaded. C++ code that arrives later through dlopen finds them
// unbound: its operator new then reports running out of memory and aborts instead of throwing.
#include <cstddef>
#include <new>

#include "base.h"
#include "front_end.h"
#include "os/message.h"

extern "C" {
// What the nothrow forms' catch uses: declared weak before the compiler asks for them, so the
// calls and the unwind tables it generates refer to them weakly.
void* __cxa_begin_catch(void*) noexcept __attribute__((weak));
void __cxa_end_catch() __attribute__((weak));
std::new_handler fm_get_new_handler() noexcept __asm__("_ZSt15get_new_handlerv") __attribute__((weak));
[[noreturn]] void fm_throw_bad_alloc() __asm__("_ZSt17__throw_bad_allocv") __attribute__((weak));
}

// The personality routine is named only by the unwind tables, which no declaration reaches.
// clang also calls the catch functions and std::terminate (its guard of noexcept around a catch)
// through declarations of its own, which the ones above do not make weak.
asm(".weak __gxx_personality_v0\n\t.weak __cxa_begin_catch\n\t.weak __cxa_end_catch\n\t.weak _ZSt9terminatev");

using namespace fastmalloc;

namespace {

void* allocate_or_throw(size_t size, size_t align) {
  for (;;) {
    void* p = align == 0 ? allocate(size) : allocate_aligned(align, size);
    if (FM_LIKELY(p != nullptr)) return p;
    std::new_handler handler = fm_get_new_handler != nullptr ? fm_get_new_handler() : nullptr;
    if (handler == nullptr) {
      if (fm_throw_bad_alloc != nullptr) fm_throw_bad_alloc();
      os::fatal_misuse("operator new", nullptr, "out of memory, and no C++ runtime was loaded to throw std::bad_alloc");
    }
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

// The span map knows each block; a size given to delete is checked against it.
FM_EXPORT void operator delete(void* p) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, size_t size) noexcept { deallocate_sized(p, size, "operator delete"); }
FM_EXPORT void operator delete[](void* p, size_t size) noexcept { deallocate_sized(p, size, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, std::align_val_t) noexcept { deallocate(p, "operator delete"); }
FM_EXPORT void operator delete[](void* p, std::align_val_t) noexcept { deallocate(p, "operator delete[]"); }
FM_EXPORT void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  deallocate(p, "operator delete");
}
FM_EXPORT void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  deallocate(p, "operator delete[]");
}
FM_EXPORT void operator delete(void* p, size_t size, std::align_val_t) noexcept {
  deallocate_sized_aligned(p, size, "operator delete");
}
FM_EXPORT void operator delete[](void* p, size_t size, std::align_val_t) noexcept {
  deallocate_sized_aligned(p, size, "operator delete[]");
}
