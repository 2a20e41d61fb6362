// The front end: what every exported entry point calls. It owns the allocation and free paths
// (size class, fast path, miss), realloc, alignment and usable size, with malloc's contract:
// failures return nullptr with errno = ENOMEM and leave live blocks intact; a pointer that was
// never handed out stops the process with a one-line report naming `call`.
#pragma once

#include <cstddef>

namespace fastmalloc {

void* allocate(size_t size);
void* allocate_zeroed(size_t count, size_t size);
// `align` is a power of two (callers check and report their own errors).
void* allocate_aligned(size_t align, size_t size);
void* reallocate(void* p, size_t size, const char* call);
void deallocate(void* p, const char* call);
size_t usable_size(const void* p, const char* call);

}  // namespace fastmalloc
