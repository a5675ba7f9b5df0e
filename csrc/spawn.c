/* Parent side of a spawn: prepare, clone, collect the child's verdict.
 *
 * Runs in the caller's thread (with the GIL released, when the caller is
 * Python). Other threads may run meanwhile, so everything it creates is
 * close-on-exec, and the child only uses what is prepared here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* The child's setup needs a few KiB; the guard page below turns an overflow
 * into a crash of the child instead of silent corruption of the parent's
 * memory, which the child shares. */
#define CHILD_STACK_SIZE (64 * 1024)

/* Each thread keeps its child stack for its next spawn: mapping and
 * unmapping one per spawn costs TLB shootdowns across CPUs (the child ran
 * on this mm elsewhere). A thread's stack is only in use while that thread
 * sleeps in clone (CLONE_VFORK), so one per thread is enough; it is
 * unmapped when the thread exits. */
static pthread_key_t stack_key;
static pthread_once_t stack_key_once = PTHREAD_ONCE_INIT;
static size_t stack_guard_size;

static void unmap_child_stack(void *base)
{
    munmap(base, stack_guard_size + CHILD_STACK_SIZE);
}

static void make_stack_key(void)
{
    stack_guard_size = (size_t)sysconf(_SC_PAGESIZE);
    if (pthread_key_create(&stack_key, unmap_child_stack) != 0)
        stack_guard_size = 0; /* no caching: see child_stack() */
}

/* This thread's child stack (its lowest usable byte), or NULL. */
static char *child_stack(int *cached)
{
    size_t mapped;
    char *base;

    pthread_once(&stack_key_once, make_stack_key);
    *cached = stack_guard_size != 0;
    if (*cached && (base = pthread_getspecific(stack_key)) != NULL)
        return base + stack_guard_size;
    mapped = (size_t)sysconf(_SC_PAGESIZE) + CHILD_STACK_SIZE;
    base =
        mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    if (mprotect(base, mapped - CHILD_STACK_SIZE, PROT_NONE) < 0 ||
        (*cached && pthread_setspecific(stack_key, base) != 0)) {
        munmap(base, mapped);
        return NULL;
    }
    return base + (mapped - CHILD_STACK_SIZE);
}

int pc_move_above_stdio(int *fd)
{
    int moved;

    if (*fd > 2)
        return 0;
    moved = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    if (moved < 0)
        return -1;
    close(*fd);
    *fd = moved;
    return 0;
}

int pc_open_error_pipe(int pipe_fds[2], struct pc_error *err)
{
    /* Non-blocking: pc_spawn reads it when the child is known to be done,
     * so a concurrent fork in another thread holding the write end cannot
     * stall it; the fork path polls. */
    if (pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return pc_fail(err, PC_STEP_PREPARE, errno, "pipe");
    /* Keep the pipe off 0, 1, 2 (free when the caller closed its stdio), or
     * setting up the program's stdio would overwrite it. */
    if (pc_move_above_stdio(&pipe_fds[0]) < 0 || pc_move_above_stdio(&pipe_fds[1]) < 0) {
        int saved = errno;

        close(pipe_fds[0]);
        close(pipe_fds[1]);
        return pc_fail(err, PC_STEP_PREPARE, saved, "pipe");
    }
    return 0;
}

int pc_spawn(const struct pc_spawn_request *request, struct pc_process *process,
             struct pc_error *err)
{
    struct pc_overlay overlay;
    struct pc_child_args child_args = {.request = request, .overlay = &overlay, .netns_fd = -1};
    unsigned long namespaces = request->namespaces;
    sigset_t all_signals;
    int pipe_fds[2], pidfd = -1, clone_errno, stack_cached, failed, read_errno, unused_hook;
    pid_t pid, unused_pid;
    char *stack;

    if (pc_request_check(request, err) < 0)
        return -1;
    if (request->hooks != NULL)
        return pc_fail(err, PC_STEP_PREPARE, EINVAL, "hooks need the fork path");
    if (pc_overlay_prepare(request, &overlay, err) < 0)
        return -1;
    if (pc_open_error_pipe(pipe_fds, err) < 0) {
        pc_overlay_release(&overlay);
        return -1;
    }
    child_args.error_fd = pipe_fds[1];
    stack = child_stack(&stack_cached);
    if (stack == NULL) {
        pc_overlay_release(&overlay);
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        return pc_fail(err, PC_STEP_PREPARE, errno, "child stack");
    }

    /* A network namespace made ahead of time, if the pool has one: the
     * child joins it instead of the kernel making one during clone. */
    if ((namespaces & CLONE_NEWNET) && request->use_netns_pool) {
        child_args.netns_fd = pc_netns_pool_take();
        if (child_args.netns_fd >= 0)
            namespaces &= ~(unsigned long)CLONE_NEWNET;
    }

    /* No signal handler may run in the child on the parent's memory: block
     * everything across clone; the child resets its handlers, then restores
     * this thread's mask before exec. */
    sigfillset(&all_signals);
    pthread_sigmask(SIG_SETMASK, &all_signals, &child_args.parent_mask);
    pc_trace(request, PC_STEP_PREPARE);
    pid = pc_clone(namespaces, pc_child_main, &child_args, stack, CHILD_STACK_SIZE, &pidfd,
                   request->force_legacy_clone, &child_args.handlers_cleared,
                   request->cgroup_procs_fd_count > 0 ? request->cgroup_fd : -1,
                   &child_args.in_cgroup);
    clone_errno = errno;
    pc_trace(request, PC_STEP_CLONE);
    pthread_sigmask(SIG_SETMASK, &child_args.parent_mask, NULL);

    if (!stack_cached)
        munmap(stack - sysconf(_SC_PAGESIZE), (size_t)sysconf(_SC_PAGESIZE) + CHILD_STACK_SIZE);
    close(pipe_fds[1]);
    pc_overlay_release(&overlay);
    if (child_args.netns_fd >= 0)
        close(child_args.netns_fd);
    if (pid < 0) {
        close(pipe_fds[0]);
        return pc_fail(err, PC_STEP_CLONE, clone_errno, NULL);
    }

    /* When clone returns, the child has exec'd or exited: whatever it had
     * to say is already in the pipe. */
    failed = pc_read_messages(pipe_fds[0], 0, &unused_pid, &unused_hook, err);
    read_errno = errno;
    close(pipe_fds[0]);
    if (failed != 0) {
        /* The child failed and has exited: reap it so no zombie remains. */
        siginfo_t info;

        while (syscall(SYS_waitid, P_PIDFD, pidfd, &info, WEXITED, NULL) < 0 && errno == EINTR)
            ;
        close(pidfd);
        if (failed < 0)
            return pc_fail(err, PC_STEP_PREPARE, read_errno, "error pipe");
        return -1;
    }
    process->pid = pid;
    process->pidfd = pidfd;
    process->mntns = pc_nsworker_running() ? pc_nsworker_hold_mntns(pid, pidfd) : -1;
    return 0;
}
