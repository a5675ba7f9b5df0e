/* The fork path: spawning a container whose setup runs caller code (hooks).
 *
 * The sequence and why it is safe are described in pycontain.h (pc_fork_*)
 * and docs/callbacks.md. In short: the caller forks (with its runtime's
 * at-fork handlers, so the child's copies of locks are usable), the forked
 * helper unshares the namespaces and clones the container's process with
 * CLONE_PARENT and fork semantics, sends its pid and exits. The container's
 * process then runs the same steps as pc_spawn's child (child.c), calling
 * the hooks on the way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int pc_fork_prepare(const struct pc_spawn_request *request, struct pc_fork_state *state,
                    struct pc_error *err)
{
    sigset_t all_signals;

    state->request = request;
    if (pc_request_check(request, err) < 0)
        return -1;
    if (pc_overlay_prepare(request, &state->overlay, err) < 0)
        return -1;
    if (pc_open_error_pipe(state->pipe_fds, err) < 0) {
        pc_overlay_release(&state->overlay);
        return -1;
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
    close(state->pipe_fds[0]);
    close(state->pipe_fds[1]);
    pc_overlay_release(&state->overlay);
}

void pc_fork_helper(struct pc_fork_state *state)
{
    const struct pc_spawn_request *request = state->request;
    struct pc_child_args args = {
        .request = request,
        .overlay = &state->overlay,
        .parent_mask = state->caller_mask,
        .error_fd = state->pipe_fds[1],
        .netns_fd = -1,
    };
    struct pc_message message = {.kind = PC_MESSAGE_ERROR};
    pid_t pid;

    close(state->pipe_fds[0]);
    /* unshare(CLONE_NEWPID) makes the helper's next child PID 1 of a new
     * namespace; the helper itself stays where it is. */
    if (unshare((int)request->namespaces) < 0) {
        pc_fail(&message.error, PC_STEP_UNSHARE, errno, NULL);
        goto fail;
    }
    /* Fork semantics (no CLONE_VM): the container's process gets its own
     * copy of this single-threaded process, Python included, so hooks may
     * run arbitrary code. CLONE_PARENT makes it the caller's child, which
     * waits for it through a pidfd; the helper can exit at once. */
    pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) {
        pc_fail(&message.error, PC_STEP_CLONE, errno, NULL);
        goto fail;
    }
    if (pid == 0)
        pc_child_main(&args);
    pc_send(args.error_fd, PC_MESSAGE_PID, pid);
    _exit(0);
fail:
    (void)!write(args.error_fd, &message, sizeof message);
    _exit(1);
}

static void reap(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

int pc_fork_collect(struct pc_fork_state *state, pid_t helper, int timeout_ms,
                    struct pc_process *process, struct pc_error *err)
{
    pid_t pid = -1;
    int hook = -1, outcome, read_errno, pidfd;
    siginfo_t info;

    pthread_sigmask(SIG_SETMASK, &state->caller_mask, NULL);
    close(state->pipe_fds[1]);
    pc_overlay_release(&state->overlay);
    /* EOF comes when the helper has exited and the container's process has
     * exec'd or died; a read of nothing before then just waits. */
    outcome = pc_read_messages(state->pipe_fds[0],
                               timeout_ms < 0    ? -1
                               : timeout_ms == 0 ? 1
                                                 : timeout_ms,
                               &pid, &hook, err);
    read_errno = errno;
    close(state->pipe_fds[0]);
    if (outcome < 0) {
        /* Timed out (or the pipe broke): end the helper and the container.
         * Both are still our unreaped children, so their pids are theirs. */
        kill(helper, SIGKILL);
        if (pid > 0)
            kill(pid, SIGKILL);
        pc_fail(err, read_errno == ETIMEDOUT ? PC_STEP_TIMEOUT : PC_STEP_PREPARE, read_errno, NULL);
    }
    reap(helper);
    if (pid <= 0) {
        if (outcome == 0)
            return pc_fail(err, PC_STEP_CLONE, ECHILD, "the helper exited without a word");
        return -1;
    }
    if (outcome == 0 && hook < 0) {
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) {
            int saved = errno;

            kill(pid, SIGKILL);
            reap(pid);
            return pc_fail(err, PC_STEP_CLONE, saved, "pidfd_open");
        }
        fcntl(pidfd, F_SETFD, FD_CLOEXEC);
        process->pid = pid;
        process->pidfd = pidfd;
        process->mntns_fd = -1;
        return 0;
    }
    /* It failed, or the pipe closed while it was inside a hook: the hook
     * exited or was killed. Reap it and say how it ended. */
    while (waitid(P_PID, (id_t)pid, &info, WEXITED) < 0 && errno == EINTR)
        ;
    if (outcome == 0) {
        pc_fail(err, hook == PC_HOOK_PRE_PIVOT ? PC_STEP_PRE_PIVOT : PC_STEP_PRE_EXEC, 0, NULL);
        err->status = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    }
    return -1;
}
