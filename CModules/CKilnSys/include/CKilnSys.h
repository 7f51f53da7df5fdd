#ifndef KILN_SYS_H
#define KILN_SYS_H

// Linux process shims for what Swift cannot do safely between fork and exec. Built as a
// C target with _GNU_SOURCE (as swift-nio's CNIOLinux is), so clone flags and syscall
// numbers come from the system headers; the Glibc module Swift imports has no
// _GNU_SOURCE, so nothing here needs it in the header.

#include <sys/types.h>

/// What a workload's process gets. Every pointer stays valid for the call.
struct kiln_spawn_opts {
    const char *path;          // absolute path of the program
    char *const *argv;         // NULL-terminated
    char *const *envp;         // NULL-terminated
    const char *cwd;           // work folder
    int stdin_fd;              // becomes fd 0
    int stdout_fd;             // becomes fd 1
    int stderr_fd;             // becomes fd 2
    long long mem_bytes;       // RLIMIT_AS; 0 = not set
    long long cpu_seconds;     // RLIMIT_CPU; 0 = not set
    int use_pid_namespace;     // try a new PID namespace (falls back when refused)
    const int *cgroup_fds;     // kiln_spawn: cgroup.procs files the child joins (writes "0")
    int cgroup_fd_count;       // before anything else; kiln_spawn_through_init: fds 3..
};

/// Starts a workload. Returns the pid of the direct child (> 0) or -errno.
/// `*in_pid_namespace` says whether the child is the init of a new PID namespace.
///
/// With a PID namespace the direct child is a tiny init: it forks the workload,
/// reaps everything, and exits with the workload's status; its exit tears the
/// namespace down, so every grandchild dies with it. Both carry a parent-death
/// signal, so a SIGKILLed server still takes the whole tree with it. The parent-death
/// signal follows the *thread* that spawned: call this from a thread that lives
/// as long as the server.
int kiln_spawn(const struct kiln_spawn_opts *o, int *in_pid_namespace);

/// Starts kiln-init (`o->path`, with `o->argv` naming the workload) the way posix_spawn
/// starts a program: a CLONE_VM | CLONE_VFORK clone that borrows the server's memory
/// until it execs, so the server's page tables are never copied. With
/// `use_pid_namespace` it is the init of a new PID namespace. Its fds 0-2 are the
/// workload's, and `cgroup_fds` become fds 3.. (kiln-init's `join` argument says what
/// they are). Returns the pid (> 0) or -errno.
int kiln_spawn_through_init(const struct kiln_spawn_opts *o, int *in_pid_namespace);

/// Whether `kiln_spawn_through_init` may be used: not under ThreadSanitizer, whose
/// interceptors would run in the borrowed memory.
int kiln_can_spawn_through_init(void);

/// A pollable descriptor that becomes readable when `pid` exits (Linux 5.3+); -errno on failure.
int kiln_pidfd_open(pid_t pid);

int kiln_errno(void);

/// pipe2 with O_CLOEXEC (and O_NONBLOCK when asked); 0 or -errno.
int kiln_pipe(int fds[2], int nonblock);

#endif
