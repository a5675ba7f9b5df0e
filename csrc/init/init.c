/* pycontain-init: PID 1 of a container, the program its only child.
 *
 * A program that is PID 1 of its PID namespace gets no signal it has no
 * handler for (so SIGTERM does not end `sleep`), cannot die of its own
 * SIGABRT, and is the reaper of every orphan in the container. This init
 * takes that role instead, as tini and bubblewrap's init do:
 *
 *   1. forks the program, which execs after the same path search as
 *      execvpe; the outcome goes to the parent as an explicit message on the
 *      status pipe (PC_MESSAGE_EXEC_OK, or PC_MESSAGE_ERROR with the exec's
 *      step, errno and path);
 *   2. forwards every signal it receives (all but SIGCHLD; SIGKILL and
 *      SIGSTOP cannot be caught) to the program;
 *   3. reaps every process that ends in the container;
 *   4. when the program ends, kills what is left in the container, sends the
 *      program's wait status (PC_MESSAGE_STATUS) and exits with its exit
 *      code (128 + N for signal N, which the message corrects);
 *   5. with an owner pidfd (die with the parent), kills everything and exits
 *      as soon as the owning process has exited, however it died.
 *
 * In wait mode (a warm pool entry: waiting.c) it first waits for a request
 * that names the program, its environment, cwd and fds.
 *
 * It is exec'd by the container's setup (child.c) by fd, as its last step,
 * with the program's environment and this argv (built by
 * pycontain/_spawn.py):
 *
 *   pycontain-init STATUS_FD OWNER_PIDFD N PATH1 .. PATHN ARGV0 ARGV1 ...
 *
 * STATUS_FD is the write end of the status pipe, OWNER_PIDFD -1 when the
 * container may outlive its owner. In wait mode (waiting.c):
 *
 *   pycontain-init STATUS_FD OWNER_PIDFD wait REQUEST_FD
 * No libc (see sys.h), no allocation: what
 * it needs is on its stack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <sys/wait.h>

#include "../execsearch.h"
#include "../internal.h"
#include "sys.h"
#include "waiting.h"

PC_INIT_ENTRY

/* The compiler may call these for struct copies and initialisers. */
void *memset(void *dest, int c, size_t n)
{
    unsigned char *d = dest;

    while (n--)
        *d++ = (unsigned char)c;
    return dest;
}

void *memcpy(void *dest, const void *src, size_t n)
{
    unsigned char *d = dest;
    const unsigned char *s = src;

    while (n--)
        *d++ = *s++;
    return dest;
}

/* The kernel's sigset: one bit per signal, 64 signals. */
#define SIGSET_SIZE 8
#define SIGBIT(sig) (1ULL << ((sig) - 1))

static __attribute__((noreturn)) void exit_now(int code)
{
    for (;;)
        sys1(SYS_exit_group, code);
}

static int parse_int(const char *text, long *value)
{
    long result = 0;
    int negative = *text == '-';

    if (negative)
        text++;
    if (*text == '\0')
        return -1;
    for (; *text != '\0'; text++) {
        if (*text < '0' || *text > '9' || result > 100000000)
            return -1;
        result = result * 10 + (*text - '0');
    }
    *value = negative ? -result : result;
    return 0;
}

static void send_message(int fd, int kind, int value, const struct pc_error *error)
{
    struct pc_message message;

    memset(&message, 0, sizeof message);
    message.kind = kind;
    message.value = value;
    if (error != NULL)
        message.error = *error;
    /* One write of less than PIPE_BUF: atomic. If it fails, the parent is
     * gone and there is no one to tell. */
    sys3(SYS_write, fd, &message, sizeof message);
}

/* The program's wait status, with what every process of the container
 * used: the container has no process left but this one, so a warm Process
 * (pycontain/_pool.py) may end its wait() here, before this init's exit. */
static void send_status(int fd, int status)
{
    struct pc_message message;

    memset(&message, 0, sizeof message);
    message.kind = PC_MESSAGE_STATUS;
    message.value = status;
    /* The kernel's struct rusage is struct pc_usage (64-bit). */
    if (sys2(SYS_getrusage, RUSAGE_CHILDREN, &message.usage) < 0)
        memset(&message.usage, 0, sizeof message.usage);
    sys3(SYS_write, fd, &message, sizeof message);
}

/* As child.c's exec_program (execvpe, execsearch.h): try each path, skip the missing,
 * remember a permission error, stop at any other error. Returns only on
 * failure, with err filled. */
static void exec_program(char *const *paths, long count, char *const *argv, char *const *envp,
                         struct pc_error *err)
{
    struct pc_exec_search search;

    pc_exec_search_start(&search, paths[0]);
    for (long i = 0; i < count; i++) {
        int errnum = (int)-sys3(SYS_execve, paths[i], argv, envp);

        if (!pc_exec_search_goes_on(&search, errnum, paths[i])) {
            pc_fail(err, PC_STEP_EXEC, errnum, paths[i]);
            return;
        }
    }
    pc_fail(err, PC_STEP_EXEC, search.failed_errno, search.failed_path);
}

/* Close every fd but the init's own: the program's stdio and pass_fds are
 * the program's, and an init that kept them would hold a pipe open that
 * the program closed (the caller's write would then block instead of
 * failing with EPIPE). keep[] is sorted. */
static void close_other_fds(const int *keep, int count)
{
    int next = 0;

    for (int i = 0; i <= count; i++) {
        int until = i < count ? keep[i] - 1 : ~0;

        if (until >= next && sys3(SYS_close_range, next, until, 0) < 0) {
            /* Before Linux 5.9: the usual fd numbers one by one. */
            for (int fd = next; fd <= until && fd < 1024; fd++)
                sys1(SYS_close, fd);
        }
        if (i < count)
            next = keep[i] + 1;
    }
}

static int is_wait_mode(const char *mode)
{
    return mode[0] == 'w' && mode[1] == 'a' && mode[2] == 'i' && mode[3] == 't' && mode[4] == '\0';
}

static void sort(int *fds, int count)
{
    for (int i = 1; i < count; i++)
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int swap = fds[j];

            fds[j] = fds[j - 1];
            fds[j - 1] = swap;
        }
}

/* The kernel's struct sigaction for rt_sigaction; only SIG_DFL and SIG_IGN
 * are ever set here, which need no sa_restorer. */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

/* What the program's process tells the init when its exec failed: in a
 * page both share, so that no fd is needed (under a low RLIMIT_NOFILE the
 * program's stdio and pass_fds may be all the init is allowed). */
struct exec_report {
    int failed;
    struct pc_error error;
};

/* Start the program and wait for its exec. Returns its pid, or -1 after
 * telling the parent why it could not start. */
static long start_program(int status_fd, uint64_t program_mask,
                          const struct kernel_sigaction *program_sigchld, char *const *paths,
                          long count, char *const *argv, char *const *envp)
{
    struct exec_report *report;
    struct pc_error error;
    long pid;

    report = (struct exec_report *)sys6(SYS_mmap, 0, sizeof *report, PROT_READ | PROT_WRITE,
                                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if ((unsigned long)report > -4096UL) {
        pc_fail(&error, PC_STEP_INIT, (int)-(long)report, "mmap");
        send_message(status_fd, PC_MESSAGE_ERROR, 0, &error);
        return -1;
    }
    /* CLONE_VFORK without CLONE_VM: a copy of this small process (its own
     * stack, so nothing it does can disturb this one), and this one sleeps
     * until it has exec'd or exited. So when clone returns, the exec's
     * outcome is known and in the shared page. */
    pid = sys5(SYS_clone, CLONE_VFORK | SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) {
        pc_fail(&error, PC_STEP_INIT, (int)-pid, "fork");
        send_message(status_fd, PC_MESSAGE_ERROR, 0, &error);
        return -1;
    }
    if (pid == 0) {
        /* The program: the caller's signal mask and SIGCHLD disposition;
         * every other disposition is as the init inherited it (it installs
         * no handler). */
        sys4(SYS_rt_sigaction, SIGCHLD, program_sigchld, 0, SIGSET_SIZE);
        sys4(SYS_rt_sigprocmask, SIG_SETMASK, &program_mask, 0, SIGSET_SIZE);
        exec_program(paths, count, argv, envp, &report->error);
        report->failed = 1;
        exit_now(127);
    }
    if (report->failed) {
        int status;

        sys4(SYS_wait4, pid, &status, 0, 0);
        send_message(status_fd, PC_MESSAGE_ERROR, 0, &report->error);
        return -1;
    }
    sys2(SYS_munmap, report, sizeof *report);
    send_message(status_fd, PC_MESSAGE_EXEC_OK, 0, NULL);
    return pid;
}

/* A warm entry (waiting.c): fork the program's process now, before any
 * request, so that a spawn costs neither this fork nor a wake-up of the
 * init. That process waits for the request, then places the program's fds
 * and execs it. The parent learns of the exec from it directly: the init
 * closes its copy of the request socket right after this fork
 * (close_other_fds), so the program's process holds the last one,
 * close-on-exec, and the exec ends the socket (a failure first sends the
 * error record on it). Returns the process's pid, or -1 after telling the
 * parent why not. */
static long fork_waiting_program(int status_fd, int request_fd, int owner_fd,
                                 const struct kernel_sigaction *program_sigchld)
{
    struct init_program program;
    struct pc_error error;
    int malformed;
    long pid = sys5(SYS_clone, SIGCHLD, 0, 0, 0, 0);

    if (pid < 0) {
        pc_fail(&error, PC_STEP_INIT, (int)-pid, "fork");
        send_message(status_fd, PC_MESSAGE_ERROR, 0, &error);
        return -1;
    }
    if (pid != 0)
        return pid;
    /* Until a request comes, every signal stays blocked (the init forwards
     * them here; they reach the program once its mask is set). Without a
     * request (the owner died, the pool let the entry go), this process
     * exits, and the init with it, as when a program ends. */
    if (init_wait_for_request(request_fd, owner_fd, &program, &error, &malformed) < 0) {
        if (malformed)
            send_message(request_fd, PC_MESSAGE_ERROR, 0, &error);
        exit_now(0);
    }
    sys4(SYS_rt_sigaction, SIGCHLD, program_sigchld, 0, SIGSET_SIZE);
    sys4(SYS_rt_sigprocmask, SIG_SETMASK, &program.signal_mask, 0, SIGSET_SIZE);
    if (init_place_program(&program, &request_fd, &error) == 0)
        exec_program(program.paths, program.path_count, program.argv, program.envp, &error);
    send_message(request_fd, PC_MESSAGE_ERROR, 0, &error);
    exit_now(127);
}

/* Everything else in the container: as PID 1, kill(-1) reaches every
 * process of the namespace but the init itself. */
static void kill_the_rest(void)
{
    if (sys0(SYS_getpid) == 1) /* checked at start; cheap to be sure */
        sys2(SYS_kill, -1, SIGKILL);
}

/* Reap every child that has ended: the program, and orphans the kernel
 * reparented to PID 1. When the program has ended, end the container. */
static void reap(long program, int status_fd)
{
    for (;;) {
        int status;
        long pid = sys4(SYS_wait4, -1, &status, WNOHANG, 0);

        if (pid <= 0)
            return;
        if (pid != program)
            continue;
        kill_the_rest();
        /* Reap them here rather than leave it to the kernel's clean-up of
         * the namespace: what they used then counts in the container's
         * rusage (the init's children's times add up in its own). */
        while (sys4(SYS_wait4, -1, 0, __WALL, 0) > 0)
            ;
        send_status(status_fd, status);
        exit_now(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    }
}

static int owner_exited(int owner_fd, int timeout_ms)
{
    struct pollfd owner = {.fd = owner_fd, .events = POLLIN};
    struct timespec timeout = {.tv_sec = timeout_ms / 1000,
                               .tv_nsec = timeout_ms % 1000 * 1000000L};

    return owner_fd >= 0 &&
           sys5(SYS_ppoll, &owner, 1, timeout_ms < 0 ? 0 : &timeout, 0, SIGSET_SIZE) > 0;
}

/* Without a signalfd (RLIMIT_NOFILE of 0): take signals with
 * sigtimedwait, and look at the owner every 100 ms. */
static __attribute__((noreturn)) void serve_without_signalfd(long program, int status_fd,
                                                             int owner_fd, uint64_t forwarded)
{
    struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};

    for (;;) {
        siginfo_t info;
        long sig =
            sys4(SYS_rt_sigtimedwait, &forwarded, &info, owner_fd >= 0 ? &tick : 0, SIGSET_SIZE);

        if (owner_exited(owner_fd, 0)) {
            kill_the_rest();
            exit_now(137);
        }
        if (sig == SIGCHLD)
            reap(program, status_fd);
        else if (sig > 0)
            sys2(SYS_kill, program, sig);
    }
}

__attribute__((noreturn, used)) void init_start(long *stack)
{
    long argc = stack[0], status_fd, owner_fd, count, program, request_fd = -1;
    char **argv = (char **)(stack + 1), **envp = argv + argc + 1;
    uint64_t all = ~0ULL, program_mask = 0, forwarded;
    struct kernel_sigaction default_action = {0}, program_sigchld;
    struct pollfd watched[2];
    int keep[3], signal_fd;

    /* kill(-1, SIGKILL) below means "everything in this container" only
     * for PID 1 of a PID namespace; anywhere else it means every process
     * the caller may signal on the machine. Refuse to run anywhere else. */
    if (sys0(SYS_getpid) != 1)
        exit_now(127);
    if (argc == 5 && is_wait_mode(argv[3])) {
        if (parse_int(argv[1], &status_fd) < 0 || parse_int(argv[2], &owner_fd) < 0 ||
            parse_int(argv[4], &request_fd) < 0 || request_fd < 0)
            exit_now(127);
    } else if (argc < 6 || parse_int(argv[1], &status_fd) < 0 ||
               parse_int(argv[2], &owner_fd) < 0 || parse_int(argv[3], &count) < 0 || count < 1 ||
               4 + count >= argc) {
        exit_now(127);
    }
    /* Signals wait in the queue until the loop below reads them: blocked
     * from the start, so none sent before the program runs is lost. */
    sys4(SYS_rt_sigprocmask, SIG_BLOCK, &all, &program_mask, SIGSET_SIZE);
    /* A caller that ignores SIGCHLD passes that on; the init must see its
     * children's ends (an ignored SIGCHLD reaps them unseen). */
    sys4(SYS_rt_sigaction, SIGCHLD, &default_action, &program_sigchld, SIGSET_SIZE);
    sys3(SYS_fcntl, status_fd, F_SETFD, FD_CLOEXEC);
    if (owner_fd >= 0)
        sys3(SYS_fcntl, owner_fd, F_SETFD, FD_CLOEXEC);

    if (request_fd >= 0) {
        sys3(SYS_fcntl, request_fd, F_SETFD, FD_CLOEXEC);
        /* Nothing of the process that made the entry (its stdio) stays
         * open while it waits. */
        keep[0] = (int)status_fd;
        keep[1] = (int)request_fd;
        keep[2] = owner_fd >= 0 ? (int)owner_fd : (int)status_fd;
        sort(keep, 3);
        close_other_fds(keep, 3);
        program =
            fork_waiting_program((int)status_fd, (int)request_fd, (int)owner_fd, &program_sigchld);
    } else {
        program = start_program((int)status_fd, program_mask, &program_sigchld, argv + 4, count,
                                argv + 4 + count, envp);
    }
    if (program < 0)
        exit_now(127);
    keep[0] = (int)status_fd;
    keep[1] = owner_fd >= 0 ? (int)owner_fd : (int)status_fd;
    sort(keep, 2);
    close_other_fds(keep, 2);

    forwarded = ~0ULL & ~SIGBIT(SIGKILL) & ~SIGBIT(SIGSTOP);
    /* Made now, when 0, 1, 2 are free again, so that it fits under any
     * RLIMIT_NOFILE but 0. */
    signal_fd = (int)sys4(SYS_signalfd4, -1, &forwarded, SIGSET_SIZE, SFD_CLOEXEC);
    if (signal_fd < 0)
        serve_without_signalfd(program, (int)status_fd, (int)owner_fd, forwarded);
    watched[0] = (struct pollfd){.fd = signal_fd, .events = POLLIN};
    /* A pidfd polls readable once its process has exited. */
    watched[1] = (struct pollfd){.fd = (int)owner_fd, .events = POLLIN};
    for (;;) {
        struct signalfd_siginfo info;
        long ready = sys5(SYS_ppoll, watched, owner_fd >= 0 ? 2 : 1, 0, 0, SIGSET_SIZE);

        if (ready < 0)
            continue;
        if (owner_fd >= 0 && watched[1].revents != 0) {
            /* The owner died: no one will ever wait for this container. */
            kill_the_rest();
            exit_now(137);
        }
        if (sys3(SYS_read, signal_fd, &info, sizeof info) != (long)sizeof info)
            continue;
        if (info.ssi_signo == SIGCHLD)
            reap(program, (int)status_fd);
        else
            sys2(SYS_kill, program, info.ssi_signo);
    }
}
