// Built with _GNU_SOURCE (Package.swift): CLONE_NEWPID, SYS_close_range, SYS_pidfd_open
// and pipe2 come from the system headers.
#include "CKilnSys.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/// How the child ends between clone and exec: the raw exit_group system call. libc's
/// `_exit` is intercepted under ThreadSanitizer, whose handler takes the runtime's thread
/// registry lock; another thread of the server may have held it at the clone, and the
/// init then never exited (seen as a hung engine test under make test-tsan).
__attribute__((noreturn))
static void kiln_child_exit(int code) {
    syscall(SYS_exit_group, code);
    __builtin_unreachable();
}

// What a child does between clone and exec is made of raw system calls, never libc's
// wrappers: under ThreadSanitizer, signal, sigprocmask, dup2, close and others are
// intercepted, and an interceptor in a forked child can wait forever for a lock of the
// sanitizer's that another thread of the server held at the clone (seen: an engine test's
// `printf` workload hung until its 30 s timeout under make test-tsan).

/// Every handler back to SIG_DFL. The kernel's sigaction for SIG_DFL is all zeros,
/// whatever the architecture's layout.
__attribute__((no_sanitize("thread")))
static void kiln_child_default_handlers(void) {
    unsigned long none[4] = {0, 0, 0, 0};
    for (int s = 1; s < 32; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        syscall(SYS_rt_sigaction, s, none, NULL, 8);
    }
}

/// Default handlers, and no signal blocked.
__attribute__((no_sanitize("thread")))
static void kiln_child_reset_signals(void) {
    kiln_child_default_handlers();
    unsigned long none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
}

__attribute__((no_sanitize("thread")))
static void kiln_close_from(int lowfd) {
    if (syscall(SYS_close_range, (unsigned int)lowfd, ~0U, 0) == 0) return;
    struct rlimit rl;
    long max = 65536;
    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) max = (long)rl.rlim_cur;
    for (long fd = lowfd; fd < max; fd++) syscall(SYS_close, (int)fd);
}

__attribute__((no_sanitize("thread")))
static void kiln_set_limit(int resource, rlim_t soft, rlim_t hard) {
    struct rlimit rl = {soft, hard};
    syscall(SYS_prlimit64, 0, resource, &rl, NULL);
}

/// In the child: the work folder and the per-process limits.
__attribute__((no_sanitize("thread")))
static void kiln_enter_work_folder_with_limits(const struct kiln_spawn_opts *o) {
    if (syscall(SYS_chdir, o->cwd) != 0) kiln_child_exit(126);
    if (o->mem_bytes > 0) kiln_set_limit(RLIMIT_AS, (rlim_t)o->mem_bytes, (rlim_t)o->mem_bytes);
    if (o->cpu_seconds > 0) kiln_set_limit(RLIMIT_CPU, (rlim_t)o->cpu_seconds, (rlim_t)o->cpu_seconds + 1);
    kiln_set_limit(RLIMIT_CORE, 0, 0);
}

/// dup2 as a system call (aarch64 has only dup3, which refuses equal fds: ours never are).
__attribute__((no_sanitize("thread")))
static int kiln_move_fd(int from, int to) {
    if (from == to) return 0;
    return (int)syscall(SYS_dup3, from, to, 0);
}

/// In the child: wire the fds, apply limits, exec. Only async-signal-safe calls.
__attribute__((no_sanitize("thread")))
static void kiln_exec_workload(const struct kiln_spawn_opts *o) {
    if (kiln_move_fd(o->stdin_fd, 0) < 0 || kiln_move_fd(o->stdout_fd, 1) < 0 || kiln_move_fd(o->stderr_fd, 2) < 0) kiln_child_exit(126);
    kiln_close_from(3);
    kiln_enter_work_folder_with_limits(o);
    syscall(SYS_execve, o->path, o->argv, o->envp);
    kiln_child_exit(127);
}

/// Present only when ThreadSanitizer's runtime is linked in.
extern void __tsan_init(void) __attribute__((weak));

int kiln_can_spawn_through_init(void) { return &__tsan_init == 0; }

/// What the vfork-like child of `kiln_spawn_through_init` needs, on the server's memory.
struct kiln_init_child {
    const struct kiln_spawn_opts *o;
    pid_t parent;
    int in_pid_namespace;
};

/// The child of a CLONE_VM | CLONE_VFORK clone: it runs on its own stack in the server's
/// memory while the spawning thread waits, so it only makes system calls (no malloc, no
/// lock) until it execs kiln-init. Every signal is blocked across the clone, so no
/// handler of the server can run here; the handlers are reset before the exec, and
/// kiln-init unblocks the signals.
__attribute__((no_sanitize("thread")))
static int kiln_init_child_main(void *arg) {
    const struct kiln_init_child *c = arg;
    const struct kiln_spawn_opts *o = c->o;
    syscall(SYS_setpgid, 0, 0);
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (!c->in_pid_namespace && syscall(SYS_getppid) != c->parent) kiln_child_exit(125);
    // stdin, stdout, stderr to 0-2 and the cgroup fds to 3.., through copies above
    // them all, so that no source is overwritten before it is moved.
    int count = o->cgroup_fd_count;
    int sources[3 + 8];
    if (count > 8) kiln_child_exit(126);
    sources[0] = o->stdin_fd;
    sources[1] = o->stdout_fd;
    sources[2] = o->stderr_fd;
    for (int i = 0; i < count; i++) sources[3 + i] = o->cgroup_fds[i];
    for (int i = 0; i < 3 + count; i++) {
        sources[i] = (int)syscall(SYS_fcntl, sources[i], F_DUPFD, 64);
        if (sources[i] < 0) kiln_child_exit(126);
    }
    for (int i = 0; i < 3 + count; i++) {
        if (kiln_move_fd(sources[i], i) < 0) kiln_child_exit(126);
    }
    kiln_close_from(3 + count);
    kiln_enter_work_folder_with_limits(o);
    // Dispositions only (the signals stay blocked until kiln-init has its own handlers):
    // this child has its own copy of the handler table (no CLONE_SIGHAND), and SIG_IGN
    // (the server ignores SIGPIPE) would survive the exec.
    kiln_child_default_handlers();
    syscall(SYS_execve, o->path, o->argv, o->envp);
    kiln_child_exit(127);
    return 127;
}

__attribute__((no_sanitize("thread")))
int kiln_spawn_through_init(const struct kiln_spawn_opts *o, int *in_pid_namespace) {
    enum { stack_size = 64 * 1024 };
    char *stack = malloc(stack_size);
    if (!stack) return -ENOMEM;
    struct kiln_init_child c = {o, getpid(), 0};
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    pid_t pid = -1;
    int error = 0;
    *in_pid_namespace = 0;
    if (o->use_pid_namespace) {
        c.in_pid_namespace = 1;
        pid = clone(kiln_init_child_main, stack + stack_size, CLONE_VM | CLONE_VFORK | CLONE_NEWPID | SIGCHLD, &c);
        if (pid > 0) *in_pid_namespace = 1;
    }
    if (pid < 0) {
        c.in_pid_namespace = 0;
        pid = clone(kiln_init_child_main, stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &c);
    }
    if (pid < 0) error = errno;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    // CLONE_VFORK: the child has exec'd or exited, and no longer uses the stack.
    free(stack);
    if (pid < 0) return -error;
    setpgid(pid, pid);
    return pid;
}

// What runs in the child between clone and exec must not be instrumented: under
// ThreadSanitizer a sanitizer call there could take a lock another thread held.
__attribute__((no_sanitize("thread")))
int kiln_spawn(const struct kiln_spawn_opts *o, int *in_pid_namespace) {
    pid_t parent = getpid();
    pid_t pid = -1;
    *in_pid_namespace = 0;
    if (o->use_pid_namespace) {
        pid = (pid_t)syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0);
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
    syscall(SYS_setpgid, 0, 0);
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    // Into the workload's cgroup before anything runs, so that every process it ever
    // starts is inside. A child that cannot join never runs unlimited.
    for (int i = 0; i < o->cgroup_fd_count; i++) {
        if (syscall(SYS_write, o->cgroup_fds[i], "0", 1) != 1) {
            static const char msg[] = "kiln: cannot join the workload's cgroup\n";
            syscall(SYS_write, o->stderr_fd, msg, sizeof msg - 1);
            kiln_child_exit(126);
        }
    }
    if (syscall(SYS_getppid) != parent && !*in_pid_namespace) kiln_child_exit(125);
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
    if (worker < 0) kiln_child_exit(126);
    if (worker == 0) {
        syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        kiln_exec_workload(o);
    }
    kiln_close_from(0);
    for (;;) {
        int status = 0;
        pid_t done = (pid_t)syscall(SYS_wait4, -1, &status, 0, NULL);
        if (done < 0 && errno != EINTR) kiln_child_exit(126);
        if (done == worker) {
            if (WIFEXITED(status)) kiln_child_exit(WEXITSTATUS(status));
            if (WIFSIGNALED(status)) kiln_child_exit(128 + WTERMSIG(status));
            kiln_child_exit(126);
        }
    }
}

int kiln_pidfd_open(pid_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : fd;
}

int kiln_errno(void) { return errno; }

int kiln_pipe(int fds[2], int nonblock) {
    int flags = O_CLOEXEC | (nonblock ? O_NONBLOCK : 0);
    return pipe2(fds, flags) == 0 ? 0 : -errno;
}

