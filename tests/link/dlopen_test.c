// The library loaded with dlopen, used, and dlclose()d while its work is not done: a thread
// that called into it is still alive (its exit runs the registry's pthread-key destructor), a
// block it handed out is still live, and fork() runs its fork handlers. The library marks
// itself never to be unloaded (-z nodelete), so all of that must work after dlclose.
//   dlopen_test PATH/TO/libfastmalloc.so   prints "dlopen ok" and exits 0
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void* (*library_malloc)(size_t);
static void (*library_free)(void*);
static sem_t called_in, closed;

static void* worker(void* arg) {
  library_free(library_malloc(100));  // registers this thread with the library
  sem_post(&called_in);
  sem_wait(&closed);
  return arg;  // the thread's exit runs the library's key destructor
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  void* handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  library_malloc = (void* (*)(size_t))dlsym(handle, "malloc");
  library_free = (void (*)(void*))dlsym(handle, "free");
  if (library_malloc == NULL || library_free == NULL) return 3;
  sem_init(&called_in, 0, 0);
  sem_init(&closed, 0, 0);
  pthread_t thread;
  if (pthread_create(&thread, NULL, worker, NULL) != 0) return 4;
  sem_wait(&called_in);
  char* live = library_malloc(64);
  strcpy(live, "still here");

  if (dlclose(handle) != 0) return 5;
  sem_post(&closed);
  pthread_join(thread, NULL);
  pid_t child = fork();
  if (child == 0) _exit(strcmp(live, "still here") == 0 ? 0 : 1);
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 6;
  library_free(live);
  puts("dlopen ok");
  return 0;
}
