/* The fork path: spawning a container whose setup runs caller code (hooks),
 * or that a timeout must be able to interrupt.
 *
 * The sequence and why it is safe are described in pycontain.h (pc_fork_*)
 * and docs/callbacks.md. In short: the caller forks (with its runtime's
 * at-fork handlers, so the child's copies of locks are usable); the forked
 * helper unshares the namespaces, clones the container's process with
 * CLONE_PARENT | CLONE_PIDFD and fork semantics, sends the pidfd and exits.
 * The container's process then runs the same steps as pc_spawn's child
 * (child.c), calling the hooks on the way.
 *
 * Every outcome is an explicit message or a process's exit seen through a
 * pidfd; EOF on a channel that other processes may hold (a fork in another
 * thread, a process a hook forked) is never taken for an answer:
 *
 *   - Until the caller holds the container's pidfd, the container's process
 *     waits for GO, in the process group of the helper (the helper's pid,
 *     which stays ours while the helper is unreaped): a timeout kills that
 *     group and reaps it, so a container whose pid never arrived does not
 *     run on. With the pidfd, the caller moves it back to its own group.
 *   - The container's process dies with the caller while it sets up
 *     (PR_SET_PDEATHSIG, armed before it checks, through a pidfd, that the
 *     caller is still there); it disarms that just before exec.
 *   - After its last hook it sends the read end of a pipe created then,
 *     which only it holds: EOF there is the exec (or its death), a record
 *     a failure.
 *   - A hook that closes or replaces the channel cannot be told apart from
 *     a hook that exits, so the process exits (127) instead of going on
 *     unobserved.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "faults.h"
#include "internal.h"
#include "nocancel.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* Exit status of a container's process whose hook closed or replaced its
 * channel: it can no longer report, so it does not go on. */
#define CHANNEL_LOST_STATUS 127

static int pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_kill(int pidfd)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
}

int pc_fork_prepare(const struct pc_spawn_request *request, struct pc_fork_state *state,
                    struct pc_error *err)
{
    sigset_t all_signals;

    state->request = request;
    state->caller = getpid();
    if (pc_request_check(request, err) < 0)
        return -1;
    if (pc_overlay_prepare(request, &state->overlay, err) < 0)
        return -1;
    /* SEQPACKET: one message per send, as on the pipe, in both directions. */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, state->channel) < 0 ||
        pc_move_above_stdio(&state->channel[0]) < 0 ||
        pc_move_above_stdio(&state->channel[1]) < 0) {
        int saved = errno;

        pc_overlay_release(&state->overlay);
        return pc_fail(err, PC_STEP_PREPARE, saved, "socketpair");
    }
    /* Until the container's process has reset its handlers, no signal
     * handler of the caller may run in the helper or in it. */
    sigfillset(&all_signals);
    pthread_sigmask(SIG_SETMASK, &all_signals, &state->caller_mask);
    return 0;
}

void pc_fork_abandon(struct pc_fork_state *state)
{
    pthread_sigmask(SIG_SETMASK, &state->caller_mask, NULL);
    close(state->channel[0]);
    close(state->channel[1]);
    pc_overlay_release(&state->overlay);
}

void pc_fork_helper_early(struct pc_fork_state *state)
{
    /* A process group of its own, which the container's process is born
     * into: until the caller holds the container's pidfd, the group is how
     * a timeout reaches it. The caller does the same from its side, so the
     * group exists whichever runs first. */
    setpgid(0, 0);
    /* The helper dies with the caller's thread, which waits for it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != state->caller)
        _exit(1);
    pc_fault_delay(PC_FAULT_HELPER_START);
}

/* clone with fork semantics, CLONE_PARENT and a pidfd made with the
 * process. */
static pid_t clone_container(int *pidfd)
{
    struct clone_args args;
    pid_t pid;

    memset(&args, 0, sizeof args);
    args.flags = CLONE_PARENT | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    /* With CLONE_PARENT the exit signal is the helper's own (SIGCHLD, from
     * fork); clone3 wants 0 here. */
    args.exit_signal = 0;
    pid = (pid_t)syscall(SYS_clone3, &args, (size_t)64 /* CLONE_ARGS_SIZE_VER0 */);
    if (pid >= 0 || errno != ENOSYS)
        return pid;
    /* No clone3 (or a seccomp policy hides it): the container's process
     * waits for GO, so it is alive and the caller's unreaped child while
     * the helper opens its pidfd. */
    pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
    if (pid > 0 && (*pidfd = pidfd_open(pid)) < 0) {
        kill(pid, SIGKILL);
        return -1;
    }
    return pid;
}

void pc_fork_helper(struct pc_fork_state *state)
{
    const struct pc_spawn_request *request = state->request;
    struct pc_child_args args = {
        .request = request,
        .overlay = &state->overlay,
        .parent_mask = state->caller_mask,
        .error_fd = state->channel[1],
        .netns_fd = -1,
        .fork_path = 1,
    };
    struct pc_message message = {.kind = PC_MESSAGE_ERROR};
    int pidfd = -1;
    pid_t pid;

    close(state->channel[0]);
    /* The container's process checks through this that the caller is alive
     * once it has armed PR_SET_PDEATHSIG. Opened while the caller is still
     * our parent, so it is the caller's. */
    args.caller_pidfd = pidfd_open(state->caller);
    if (args.caller_pidfd < 0 || pc_move_above_stdio(&args.caller_pidfd) < 0) {
        pc_fail(&message.error, PC_STEP_CLONE, errno, "pidfd_open");
        goto fail;
    }
    if (getppid() != state->caller)
        _exit(1);
    /* unshare(CLONE_NEWPID) makes the helper's next child PID 1 of a new
     * namespace; the helper itself stays where it is. */
    if (unshare((int)request->namespaces) < 0) {
        pc_fail(&message.error, PC_STEP_UNSHARE, errno, NULL);
        goto fail;
    }
    /* Fork semantics (no CLONE_VM): the container's process gets its own
     * copy of this single-threaded process, Python included, so hooks may
     * run arbitrary code. CLONE_PARENT makes it the caller's child, which
     * waits for it through the pidfd; the helper can exit at once. */
    pid = clone_container(&pidfd);
    if (pid < 0) {
        pc_fail(&message.error, PC_STEP_CLONE, errno, NULL);
        goto fail;
    }
    if (pid == 0)
        pc_child_main(&args);
    pc_fault_delay(PC_FAULT_HELPER_CLONED);
    pc_send_fd(args.error_fd, PC_MESSAGE_PID, pid, pidfd);
    pc_fault_delay(PC_FAULT_HELPER_REPORTED);
    _exit(0);
fail:
    (void)!pc_write_nocancel(args.error_fd, &message, sizeof message);
    _exit(1);
}

/* -- container side: runs between clone and exec, async-signal-safe only -- */

int pc_fork_container_start(struct pc_child_args *args, struct pc_error *err)
{
    struct pc_message message;
    struct stat channel;

    if (!args->fork_path)
        return 0;
    pc_fault_delay(PC_FAULT_CONTAINER_START);
    /* Die with the caller's thread (it waits in pc_fork_collect until the
     * exec); armed before the check, so a death just before is seen too. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        return pc_fail(err, PC_STEP_CLONE, errno, "PR_SET_PDEATHSIG");
    for (;;) {
        struct pollfd fds[2] = {
            {.fd = args->error_fd, .events = POLLIN},
            {.fd = args->caller_pidfd, .events = POLLIN},
        };

        if (pc_poll_nocancel(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return pc_fail(err, PC_STEP_CLONE, errno, "waiting for the caller");
        }
        if (fds[1].revents != 0)
            _exit(1); /* the caller is gone: no one to tell */
        if (pc_read_nocancel(args->error_fd, &message, sizeof message) != (ssize_t)sizeof message ||
            message.kind != PC_MESSAGE_GO)
            _exit(1); /* not the caller speaking: do nothing */
        break;
    }
    if (fstat(args->error_fd, &channel) < 0)
        return pc_fail(err, PC_STEP_CLONE, errno, "channel");
    args->channel_dev = channel.st_dev;
    args->channel_ino = channel.st_ino;
    pc_fault_delay(PC_FAULT_CONTAINER_GO);
    return 0;
}

void pc_fork_after_hook(const struct pc_child_args *args)
{
    struct stat channel;

    pc_fault_delay(PC_FAULT_AFTER_HOOK);
    if (fcntl(args->error_fd, F_GETFD) < 0 || fstat(args->error_fd, &channel) < 0 ||
        channel.st_dev != args->channel_dev || channel.st_ino != args->channel_ino)
        _exit(CHANNEL_LOST_STATUS);
}

int pc_fork_exec_channel(struct pc_child_args *args, struct pc_error *err)
{
    int exec_pipe[2];

    if (!args->fork_path)
        return 0;
    /* Made after the last hook, so no process a hook forked holds it. */
    if (pipe2(exec_pipe, O_CLOEXEC) < 0)
        return pc_fail(err, PC_STEP_PREPARE, errno, "exec pipe");
    if (pc_send_fd(args->error_fd, PC_MESSAGE_EXEC_CHANNEL, 0, exec_pipe[0]) < 0) {
        int saved = errno;

        pc_close_nocancel(exec_pipe[0]);
        pc_close_nocancel(exec_pipe[1]);
        return pc_fail(err, PC_STEP_PREPARE, saved, "exec pipe");
    }
    pc_close_nocancel(exec_pipe[0]);
    pc_close_nocancel(args->error_fd);
    pc_close_nocancel(args->caller_pidfd);
    args->error_fd = exec_pipe[1];
    args->caller_pidfd = -1;
    /* The program must not die with the thread that spawned it (the thread
     * may be a pool's, and the signal survives exec). */
    prctl(PR_SET_PDEATHSIG, 0);
    pc_fault_delay(PC_FAULT_BEFORE_EXEC);
    return 0;
}

/* -- caller side -------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* The pid `pidfd` refers to, from the kernel (fdinfo), or -1. */
static pid_t pidfd_pid(int pidfd)
{
    char path[64], buffer[1024];
    ssize_t n;
    const char *line;
    int fd;

    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buffer[n] = '\0';
    line = strstr(buffer, "\nPid:");
    return line == NULL ? -1 : (pid_t)strtol(line + 5, NULL, 10);
}

/* Whether `fd` is a pidfd of a child of ours that has not been reaped. */
static int is_pidfd_of_child(int fd)
{
    siginfo_t info;

    memset(&info, 0, sizeof info);
    return syscall(SYS_waitid, P_PIDFD, fd, &info, WEXITED | WNOHANG | WNOWAIT, NULL) == 0;
}

/* Reap the process behind `pidfd`; its status (exit status, or -N for
 * signal N) in *status, or -1 with *status 0 when it could not be had (it
 * was reaped elsewhere: SIGCHLD ignored, a stray wait()). */
static int reap_pidfd(int pidfd, int *status)
{
    siginfo_t info;
    long rc;

    memset(&info, 0, sizeof info);
    while ((rc = syscall(SYS_waitid, P_PIDFD, pidfd, &info, WEXITED, NULL)) < 0 && errno == EINTR)
        ;
    *status = rc < 0 ? 0 : info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    return rc < 0 ? -1 : 0;
}

struct collect {
    pid_t helper;
    int helper_pidfd;  /* -1 once reaped, or if it could not be opened */
    int helper_exited; /* seen through the pidfd, not reaped yet */
    int group_alive;   /* the helper is unreaped: its pid (the group) is ours */
    pid_t pid;         /* the container's process, once PID came */
    int pidfd;
    int exited;  /* the container's process exited (not reaped) */
    int exec_fd; /* the exec pipe's read end, once EXEC_CHANNEL came */
    int channel_open;
    int hook;     /* the hook it is in, -1: none */
    int failed;   /* err holds a record */
    int execed;   /* EOF on the exec pipe without a record */
    int exec_eof; /* EOF on the exec pipe */
    int broken;   /* a message that is not ours */
};

static void handle(struct collect *c, const struct pc_message *message, int passed_fd, int channel,
                   struct pc_error *err)
{
    switch (message->kind) {
    case PC_MESSAGE_ERROR:
        *err = message->error;
        c->failed = 1;
        break;
    case PC_MESSAGE_PID:
        if (c->pidfd >= 0 || passed_fd < 0 || message->value <= 0 ||
            !is_pidfd_of_child(passed_fd) || pidfd_pid(passed_fd) != message->value) {
            c->broken = 1;
            break;
        }
        c->pid = message->value;
        c->pidfd = passed_fd;
        passed_fd = -1;
        pc_fault_delay(PC_FAULT_COLLECT_PID);
        /* Back into the caller's process group (the program's terminal
         * and job control are the caller's), then let it go on. */
        setpgid(c->pid, getpgrp());
        pc_send(channel, PC_MESSAGE_GO, 0);
        break;
    case PC_MESSAGE_HOOK_ENTER:
    case PC_MESSAGE_HOOK_LEAVE:
        if (message->value != PC_HOOK_PRE_PIVOT && message->value != PC_HOOK_PRE_EXEC) {
            c->broken = 1;
            break;
        }
        c->hook = message->kind == PC_MESSAGE_HOOK_ENTER ? message->value : -1;
        break;
    case PC_MESSAGE_EXEC_CHANNEL:
        /* Read without blocking: the deadline is polled for. */
        if (c->exec_fd >= 0 || passed_fd < 0 || fcntl(passed_fd, F_SETFL, O_NONBLOCK) < 0) {
            c->broken = 1;
            break;
        }
        c->exec_fd = passed_fd;
        passed_fd = -1;
        break;
    default:
        c->broken = 1;
    }
    if (passed_fd >= 0)
        close(passed_fd);
}

/* Everything waiting on the channel. */
static void drain_channel(struct collect *c, int channel, struct pc_error *err)
{
    while (c->channel_open && !c->broken) {
        struct pc_message message;
        int passed_fd;
        ssize_t n = pc_receive(channel, &message, &passed_fd);

        if (n < 0 && errno == EAGAIN)
            return;
        if (n == 0) {
            c->channel_open = 0; /* every holder closed it: nothing more comes */
            return;
        }
        if (n != (ssize_t)sizeof message) {
            if (passed_fd >= 0)
                close(passed_fd);
            c->broken = 1;
            return;
        }
        pc_message_sanitize(&message);
        handle(c, &message, passed_fd, channel, err);
    }
}

/* Everything waiting on the exec pipe; EOF is the exec. */
static void drain_exec_pipe(struct collect *c, struct pc_error *err)
{
    while (!c->execed && !c->broken && !c->exec_eof) {
        struct pc_message message;
        ssize_t n = read(c->exec_fd, &message, sizeof message);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n == 0) {
            c->exec_eof = 1;
            c->execed = !c->failed;
            return;
        }
        if (n != (ssize_t)sizeof message || message.kind != PC_MESSAGE_ERROR) {
            c->broken = 1;
            return;
        }
        pc_message_sanitize(&message);
        handle(c, &message, -1, -1, err);
    }
}

static int outcome_known(const struct collect *c)
{
    if (c->broken || c->execed)
        return 1;
    if (c->failed && (c->pidfd < 0 ? c->helper_exited : c->exited))
        return 1; /* the one that failed has exited */
    if (c->pidfd >= 0 && c->exited && c->exec_fd < 0)
        return 1; /* died before its exec pipe (in a hook, or killed) */
    if (c->pidfd < 0 && c->helper_exited)
        return 1; /* the helper ended (what it sent before is read): no pid comes */
    return 0;
}

/* Kill what may still run: the container through its pidfd, and, while
 * the helper is unreaped (its pid, our group's id, cannot be reused), the
 * whole group, which holds the container's process if its pidfd has not
 * come. Then reap everything. */
static void end_all(struct collect *c)
{
    int status;

    if (c->pidfd >= 0)
        pidfd_kill(c->pidfd);
    if (c->group_alive) {
        kill(-c->helper, SIGKILL);
        if (c->helper_pidfd >= 0)
            pidfd_kill(c->helper_pidfd);
    }
    if (c->pidfd >= 0) {
        reap_pidfd(c->pidfd, &status);
        close(c->pidfd);
        c->pidfd = -1;
    }
    if (c->group_alive) {
        /* The helper and a container's process still in its group. */
        while (waitpid(-c->helper, NULL, 0) > 0 || errno == EINTR)
            ;
        c->group_alive = 0;
    }
    /* The helper itself, should the group not have been made (ECHILD when
     * the loop above reaped it). */
    if (c->helper_pidfd >= 0) {
        reap_pidfd(c->helper_pidfd, &status);
        close(c->helper_pidfd);
    } else {
        while (waitpid(c->helper, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    c->helper_pidfd = -1;
}

int pc_fork_collect(struct pc_fork_state *state, pid_t helper, int timeout_ms,
                    struct pc_process *process, struct pc_error *err)
{
    struct collect c = {
        .helper = helper,
        .helper_pidfd = -1,
        .group_alive = 1,
        .pid = -1,
        .pidfd = -1,
        .exec_fd = -1,
        .channel_open = 1,
        .hook = -1,
    };
    int channel = state->channel[0], timed_out = 0, status;

    long long deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : 0;

    pthread_sigmask(SIG_SETMASK, &state->caller_mask, NULL);
    close(state->channel[1]);
    pc_overlay_release(&state->overlay);
    setpgid(helper, helper); /* as the helper does: see pc_fork_helper_early */
    /* The helper is our unreaped child: its pid is its own. */
    c.helper_pidfd = pidfd_open(helper);
    if (c.helper_pidfd >= 0 && !is_pidfd_of_child(c.helper_pidfd)) {
        close(c.helper_pidfd); /* reaped elsewhere already (SIGCHLD ignored) */
        c.helper_pidfd = -1;
        c.helper_exited = 1;
    } else if (c.helper_pidfd < 0) {
        c.helper_exited = 1;
    }

    drain_channel(&c, channel, err);
    while (!outcome_known(&c)) {
        struct pollfd fds[4];
        nfds_t count = 0;
        int wait_ms = -1;

        if (c.channel_open)
            fds[count++] = (struct pollfd){.fd = channel, .events = POLLIN};
        if (c.exec_fd >= 0 && !c.exec_eof)
            fds[count++] = (struct pollfd){.fd = c.exec_fd, .events = POLLIN};
        if (c.helper_pidfd >= 0 && !c.helper_exited)
            fds[count++] = (struct pollfd){.fd = c.helper_pidfd, .events = POLLIN};
        if (c.pidfd >= 0 && !c.exited)
            fds[count++] = (struct pollfd){.fd = c.pidfd, .events = POLLIN};
        if (timeout_ms >= 0) {
            long long left = deadline - now_ms();

            if (left <= 0) {
                timed_out = 1;
                break;
            }
            wait_ms = left > 1000000 ? 1000000 : (int)left;
        }
        if (poll(fds, count, wait_ms) < 0 && errno != EINTR) {
            c.broken = 1;
            break;
        }
        /* Processes first, then messages: what a process sent before it
         * exited is read before its exit is acted on. */
        if (c.helper_pidfd >= 0 && !c.helper_exited) {
            struct pollfd probe = {.fd = c.helper_pidfd, .events = POLLIN};
            c.helper_exited = poll(&probe, 1, 0) > 0;
        }
        if (c.pidfd >= 0 && !c.exited) {
            struct pollfd probe = {.fd = c.pidfd, .events = POLLIN};
            c.exited = poll(&probe, 1, 0) > 0;
        }
        drain_channel(&c, channel, err);
        if (c.exec_fd >= 0)
            drain_exec_pipe(&c, err);
    }

    close(channel);
    if (c.exec_fd >= 0)
        close(c.exec_fd);
    if (c.execed && c.pidfd < 0)
        c.broken = 1; /* an exec before we had its pidfd: not our sequence */
    if (timed_out || c.broken || !c.execed) {
        int status_lost = 1, had_pidfd = c.pidfd >= 0;

        status = 0;
        /* A process that failed exits on its own: its status says how. */
        if (had_pidfd && c.exited && !timed_out && !c.broken) {
            status_lost = reap_pidfd(c.pidfd, &status) < 0;
            close(c.pidfd);
            c.pidfd = -1;
        }
        /* Whatever still runs (a timeout, a broken channel) is killed. */
        end_all(&c);
        if (timed_out)
            return pc_fail(err, PC_STEP_TIMEOUT, ETIMEDOUT, NULL);
        if (c.broken)
            return pc_fail(err, PC_STEP_PREPARE, EIO, "the fork path's channel");
        if (c.failed)
            return -1;
        if (!had_pidfd)
            return pc_fail(err, PC_STEP_CLONE, ECHILD, "the helper exited without a word");
        if (c.hook >= 0)
            /* It went quiet inside a hook: the hook ended the process
             * (os._exit, a signal) or closed its channel (status 127). */
            pc_fail(err, c.hook == PC_HOOK_PRE_PIVOT ? PC_STEP_PRE_PIVOT : PC_STEP_PRE_EXEC,
                    status_lost ? ECHILD : 0, NULL);
        else
            pc_fail(err, PC_STEP_CLONE, status_lost ? ECHILD : 0,
                    "the container's process ended during set-up");
        err->status = status;
        return -1;
    }
    /* Exec'd. The helper has sent everything it had to, and may be slow to
     * exit: end it rather than wait (the container is no longer in its
     * group), and reap it. */
    if (c.helper_pidfd >= 0) {
        pidfd_kill(c.helper_pidfd);
        reap_pidfd(c.helper_pidfd, &status);
        close(c.helper_pidfd);
    } else {
        while (waitpid(helper, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    (void)status;
    process->pid = c.pid;
    process->pidfd = c.pidfd;
    process->mntns = -1;
    return 0;
}
