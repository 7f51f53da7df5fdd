#ifndef KILN_SYS_SHIM_H
#define KILN_SYS_SHIM_H

// Linux shims for what Swift cannot do safely between fork and exec.
// Everything here is static inline: a system-library target holds no .c files.

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

// The Glibc module is built without _GNU_SOURCE, so these are spelled out.
#define KILN_CLONE_NEWPID 0x20000000
#define KILN_SYS_CLOSE_RANGE 436
#define KILN_SYS_PIDFD_OPEN 434

/// Binds and listens on host:port (IPv4 or IPv6 literal or name). Returns the
/// socket, or -errno. `*bound_port` receives the port actually bound, which is
/// how port 0 is resolved.
static inline int kiln_listen(const char *host, const char *port, int backlog, int *bound_port) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) return -EADDRNOTAVAIL;
    int err = EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) { err = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
            struct sockaddr_storage ss;
            socklen_t len = sizeof ss;
            *bound_port = 0;
            if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
                if (ss.ss_family == AF_INET) *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
                else if (ss.ss_family == AF_INET6) *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            }
            freeaddrinfo(res);
            return fd;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return -err;
}

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
};

static inline void kiln_child_reset_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < 32; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        signal(s, SIG_DFL);
    }
}

static inline void kiln_close_from(int lowfd) {
    if (syscall(KILN_SYS_CLOSE_RANGE, (unsigned int)lowfd, ~0U, 0) == 0) return;
    struct rlimit rl;
    long max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) max = (long)rl.rlim_cur;
    for (long fd = lowfd; fd < max; fd++) close((int)fd);
}

/// In the child: wire the fds, apply limits, exec. Only async-signal-safe calls.
static inline void kiln_exec_workload(const struct kiln_spawn_opts *o) {
    if (dup2(o->stdin_fd, 0) < 0 || dup2(o->stdout_fd, 1) < 0 || dup2(o->stderr_fd, 2) < 0) _exit(126);
    kiln_close_from(3);
    if (chdir(o->cwd) != 0) _exit(126);
    if (o->mem_bytes > 0) {
        struct rlimit rl = {(rlim_t)o->mem_bytes, (rlim_t)o->mem_bytes};
        setrlimit(RLIMIT_AS, &rl);
    }
    if (o->cpu_seconds > 0) {
        struct rlimit rl = {(rlim_t)o->cpu_seconds, (rlim_t)o->cpu_seconds + 1};
        setrlimit(RLIMIT_CPU, &rl);
    }
    struct rlimit core = {0, 0};
    setrlimit(RLIMIT_CORE, &core);
    execve(o->path, o->argv, o->envp);
    _exit(127);
}

/// Present only when ThreadSanitizer's runtime is linked in.
extern void __tsan_init(void) __attribute__((weak));

/// Starts a workload. Returns the pid of the direct child (> 0) or -errno.
/// `*in_pid_namespace` says whether the child is the init of a new PID namespace.
///
/// With a PID namespace the direct child is a tiny init: it forks the workload,
/// reaps everything, and exits with the workload's status; its exit tears the
/// namespace down, so every grandchild dies with it. Both carry a parent-death
/// signal, so a SIGKILLed server still takes the whole tree with it. The parent-death
/// signal follows the *thread* that spawned: call this from a thread that lives
/// as long as the server.
static inline int kiln_spawn(const struct kiln_spawn_opts *o, int *in_pid_namespace) {
    pid_t parent = getpid();
    pid_t pid = -1;
    *in_pid_namespace = 0;
    if (o->use_pid_namespace) {
        pid = (pid_t)syscall(SYS_clone, KILN_CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0);
        if (pid >= 0) *in_pid_namespace = 1;
    }
    // Raw clone, like fork without glibc's atfork handlers: the child only makes
    // plain system calls until execve, so no lock another thread held can bite.
    if (pid < 0) pid = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) return -errno;
    if (pid > 0) {
        setpgid(pid, pid);
        return pid;
    }
    // Child.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent && !*in_pid_namespace) _exit(125);
    if (!*in_pid_namespace) {
        kiln_child_reset_signals();
        kiln_exec_workload(o);
    }
    // Init of the new PID namespace (its getppid() is 0).
    kiln_child_reset_signals();
    // vfork: the init is a single-threaded copy of the server, and the workload execs at
    // once, so it borrows the init's memory instead of copying the server's page tables a
    // second time (about half a millisecond per workload; issue 6, B3). ThreadSanitizer
    // turns vfork into fork, whose handlers take locks that another thread of the server
    // may have held at the clone: under it (its runtime is linked in), a raw clone as before.
    pid_t worker = &__tsan_init != 0 ? (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0) : vfork();
    if (worker < 0) _exit(126);
    if (worker == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        kiln_exec_workload(o);
    }
    kiln_close_from(0);
    for (;;) {
        int status = 0;
        pid_t done = waitpid(-1, &status, 0);
        if (done < 0 && errno != EINTR) _exit(126);
        if (done == worker) {
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
            _exit(126);
        }
    }
}

/// A pollable descriptor that becomes readable when `pid` exits (Linux 5.3+); -errno on failure.
static inline int kiln_pidfd_open(pid_t pid) {
    int fd = (int)syscall(KILN_SYS_PIDFD_OPEN, pid, 0);
    return fd < 0 ? -errno : fd;
}

static inline int kiln_errno(void) { return errno; }

/// pipe2 with O_CLOEXEC (and O_NONBLOCK when asked); 0 or -errno. pipe2's prototype
/// needs _GNU_SOURCE, which the Glibc module is built without.
static inline int kiln_pipe(int fds[2], int nonblock) {
    int flags = O_CLOEXEC | (nonblock ? O_NONBLOCK : 0);
    return syscall(SYS_pipe2, fds, flags) == 0 ? 0 : -errno;
}

#endif
