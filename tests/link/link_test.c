/* A C program linked with -lfastmalloc (no preload): malloc and free must resolve into the
 * library, and the public header's functions must link. Exit code 0 means every check held. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fastmalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int from_fastmalloc(void* fn) {
  Dl_info info;
  return dladdr(fn, &info) != 0 && info.dli_fname != NULL && strstr(info.dli_fname, "libfastmalloc.so") != NULL;
}

int main(void) {
  void* (*volatile malloc_fn)(size_t) = malloc;
  if (!from_fastmalloc(dlsym(RTLD_DEFAULT, "malloc")) || !from_fastmalloc(dlsym(RTLD_DEFAULT, "free"))) {
    fprintf(stderr, "malloc/free do not come from libfastmalloc.so\n");
    return 1;
  }
  char* p = malloc_fn(1000);
  memset(p, 'x', 1000);
  p = realloc(p, 4 << 20);  /* small to large: a copy into a fresh mapping */
  if (p[999] != 'x') return 2;
  free(p);
  fastmalloc_stats_print();
  puts("linked ok");
  return 0;
}
