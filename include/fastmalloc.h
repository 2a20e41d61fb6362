/* fastmalloc: a drop-in malloc for Linux.
 *
 * Programs need no header to use fastmalloc: it replaces malloc, free, the other functions of
 * <stdlib.h> and <malloc.h>, and C++'s operator new and delete, when preloaded
 * (LD_PRELOAD=libfastmalloc.so) or linked (-lfastmalloc). This header declares what it offers
 * beyond that standard interface. */
#ifndef FASTMALLOC_H
#define FASTMALLOC_H

#ifdef __cplusplus
extern "C" {
#endif

/* Prints the allocator's statistics to stderr, one "fastmalloc: ..." line per level: the same
 * text as malloc_stats() and as FASTMALLOC_STATS=1 at exit. Safe to call from any thread. */
void fastmalloc_stats_print(void);

#ifdef __cplusplus
}
#endif

#endif /* FASTMALLOC_H */
