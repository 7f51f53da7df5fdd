// kiln-init: the first process of every workload, between the server and the workload.
//
//   kiln-init <join> <count> <path> <argv0> [<arg>...]
//
// The server starts it with a vfork-like clone (the child borrows the server's memory
// until it execs this small program), so no workload start copies the server's page
// tables, and the server's pages are never copy-on-write shared with a workload's
// lifetime. When the server asked for a PID namespace, this is its init (pid 1): it reaps
// whatever the workload orphans, and its exit tears the namespace down.
//
// <join> says how the workload gets into its cgroup, and fds 3 .. 3+<count>-1 hold it:
//   v2    fd 3 is the v2 cgroup folder: the workload starts inside it (clone3 with
//         CLONE_INTO_CGROUP, Linux 5.7+), so no cgroup.procs write makes its start wait
//         for the kernel's threadgroup lock and an RCU grace period. On older kernels,
//         fd 3's cgroup.procs is written instead.
//   v1    fds 3.. are cgroup.procs files of the v1 hierarchies: this process joins them
//         (the workload inherits them) before it forks.
//   none  no cgroup.
// stdin, stdout, stderr, the working folder, the rlimits and the environment are already
// the workload's. Exit status: the workload's, or 128+N when signal N ended it; 126 when
// it could not be started, 127 when it could not be executed.
//
// Written by hand: what an init does here (join a cgroup, fork, reap, forward the status)
// is a few system calls, and a general init such as tini knows nothing of cgroups.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *text) {
    ssize_t ignored = write(2, text, strlen(text));
    (void)ignored;
}

static int join_by_writing(int fd) {
    return write(fd, "0", 1) == 1 ? 0 : -1;
}

static void on_stop_signal(int sig) { (void)sig; }

int main(int argc, char **argv, char **envp) {
    if (argc < 5) {
        say("kiln-init: usage: kiln-init v1|v2|none COUNT PATH ARGV0 [ARG...]\n");
        return 126;
    }
    const char *join = argv[1];
    int count = atoi(argv[2]);
    const char *path = argv[3];
    char **workload_argv = argv + 4;
    if (count < 0 || count > 8) return 126;
    for (int i = 0; i < count; i++) fcntl(3 + i, F_SETFD, FD_CLOEXEC);

    // Kiln stops a workload by sending SIGTERM to its process group, then SIGKILL after a
    // grace: this process outlives the SIGTERM so the workload gets its grace (it dies
    // with SIGKILL, or by its parent-death signal when this one goes). A handler rather
    // than SIG_IGN, because exec resets handlers and keeps what is ignored.
    struct sigaction stop;
    memset(&stop, 0, sizeof stop);
    stop.sa_handler = on_stop_signal;
    int stop_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    for (unsigned i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) sigaction(stop_signals[i], &stop, NULL);
    // The server's child blocked every signal across its clone; the workload gets none blocked.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (strcmp(join, "v1") == 0) {
        for (int i = 0; i < count; i++) {
            if (join_by_writing(3 + i) != 0) {
                say("kiln: cannot join the workload's cgroup\n");
                return 126;
            }
        }
    }

    pid_t self = getpid();
    pid_t worker = -1;
    int write_after_fork = 0;
#if defined(SYS_clone3) && defined(CLONE_INTO_CGROUP)
    if (strcmp(join, "v2") == 0 && count == 1) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = 3;
        worker = (pid_t)syscall(SYS_clone3, &args, sizeof args);
        // ENOSYS (before 5.3), E2BIG or EINVAL (before 5.7): fork, then join by writing.
        if (worker < 0 && (errno == ENOSYS || errno == E2BIG || errno == EINVAL)) write_after_fork = 1;
        else if (worker < 0) {
            say("kiln: cannot start the workload in its cgroup\n");
            return 126;
        }
    }
#else
    if (strcmp(join, "v2") == 0) write_after_fork = 1;
#endif
    if (worker < 0) worker = fork();
    if (worker < 0) return 126;
    if (worker == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != self) _exit(126);
        if (write_after_fork) {
            int procs = openat(3, "cgroup.procs", O_WRONLY | O_CLOEXEC);
            if (procs < 0 || join_by_writing(procs) != 0) {
                say("kiln: cannot join the workload's cgroup\n");
                _exit(126);
            }
        }
        for (int i = 0; i < count; i++) close(3 + i);
        execve(path, workload_argv, envp);
        _exit(127);
    }
    for (int i = 0; i < count; i++) close(3 + i);
    // Reap everything (orphans reparent here in a PID namespace) until the workload ends.
    for (;;) {
        int status = 0;
        pid_t done = waitpid(-1, &status, 0);
        if (done < 0) {
            if (errno == EINTR) continue;
            return 126;
        }
        if (done != worker) continue;
        if (WIFEXITED(status)) return WEXITSTATUS(status);
        if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
        return 126;
    }
}

// SwiftPM links every executable with the Swift driver, which adds the Swift runtime
// (-lswiftCore, and through it libstdc++ and libm): loading those took longer than
// everything else kiln-init does. This program has no Swift in it. Package.swift passes
// -nostartfiles (no Swift startup object, which is what referred to the runtime), and
// this entry, which the driver reads from the object's autolink section and passes to the
// linker ahead of -lswiftCore, makes the linker record only the libraries that are used:
// libc. (The DockerFiles and KilnProcess tests check that kiln-init needs no Swift library.)
__attribute__((section(".swift1_autolink_entries"), used))
static const char kiln_autolink_entries[] = "-Wl,--as-needed";
