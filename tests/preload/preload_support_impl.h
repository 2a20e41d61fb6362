// run_in_child: fork, capture stderr through a pipe, wait, report.
#pragma once

#include <csignal>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

template <class F>
ChildResult run_in_child(F body) {
  int fds[2];
  ChildResult result;
  if (pipe(fds) != 0) return result;
  pid_t pid = fork();
  if (pid == 0) {
    // The child dies the way the code under test makes it die: not through Catch2's handlers,
    // which would print a failure report of their own.
    signal(SIGABRT, SIG_DFL);
    signal(SIGSEGV, SIG_DFL);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, STDOUT_FILENO);
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    alarm(60);  // a deadlock in the child shows as SIGALRM, not as a hung suite
    body();
    _exit(0);
  }
  close(fds[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) result.err.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exited = WIFEXITED(status);
  result.exit_code = result.exited ? WEXITSTATUS(status) : -1;
  result.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  return result;
}
