/* The child: from clone to exec, top to bottom.
 *
 * Runs between clone and exec: async-signal-safe only. It shares the
 * parent's memory (CLONE_VM) while the parent thread sleeps (CLONE_VFORK),
 * so it reads what the parent prepared and never allocates, locks, or calls
 * into Python. It writes its own stack and, through the thread pointer it
 * shares with the parent thread, that thread's errno (the parent reads it
 * only after clone returns) and, when tracing, the request's trace stamps.
 * It uses raw system calls where libc's are cancellation points
 * (nocancel.h). Any failure is sent to the parent as one message over the
 * close-on-exec error pipe, then the child exits; a successful exec closes
 * the pipe instead.
 *
 * On the fork path (forkspawn.c) the same steps run in a forked copy of the
 * caller, and only there may hooks run caller code.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "execsearch.h"
#include "faults.h"
#include "internal.h"
#include "nocancel.h"

/* The child shares the parent's memory but has its own copy of the signal
 * handlers. A handler inherited from the parent (Python's, say) would run
 * parent code on shared memory, so every caught signal goes back to its
 * default; ignored ones stay ignored, as across exec, except SIGPIPE and
 * SIGXFSZ, which Python ignores for itself (subprocess restores them too).
 * Signals stay blocked until just before exec. */
static int reset_signal_handlers(const struct pc_child_args *args, struct pc_error *err)
{
    struct sigaction default_action = {.sa_handler = SIG_DFL};

    if (args->handlers_cleared) {
        /* clone3 reset the caught ones (CLONE_CLEAR_SIGHAND); the two that
         * Python ignores remain. */
        if (sigaction(SIGPIPE, &default_action, NULL) < 0 ||
            sigaction(SIGXFSZ, &default_action, NULL) < 0)
            return pc_fail(err, PC_STEP_SIGNALS, errno, NULL);
        return 0;
    }
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction current;

        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        /* Fails for the signals libc reserves for itself: nothing to do. */
        if (sigaction(sig, NULL, &current) < 0)
            continue;
        if (current.sa_handler == SIG_DFL)
            continue;
        if (current.sa_handler == SIG_IGN && sig != SIGPIPE && sig != SIGXFSZ)
            continue;
        if (sigaction(sig, &default_action, NULL) < 0)
            return pc_fail(err, PC_STEP_SIGNALS, errno, NULL);
    }
    return 0;
}

/* Try each prepared path as execvpe(3) would: skip the ones that do not
 * exist, remember a permission error, stop at any other error. Returns only
 * on failure. */
static int exec_program(const struct pc_spawn_request *request, struct pc_error *err)
{
    const char *const *paths = request->exec_paths;
    struct pc_exec_search search;

    pc_exec_search_start(&search, paths[0]);
    for (size_t i = 0; paths[i] != NULL; i++) {
        execve(paths[i], request->argv, request->envp);
        if (!pc_exec_search_goes_on(&search, errno, paths[i]))
            return pc_fail(err, PC_STEP_EXEC, errno, paths[i]);
    }
    return pc_fail(err, PC_STEP_EXEC, search.failed_errno, search.failed_path);
}

/* Run the caller's code for `hook`, if any, bracketed by messages so that
 * the parent can tell a hook that exited or was killed from an exec. */
static int run_hook(const struct pc_child_args *args, enum pc_hook hook, struct pc_error *err)
{
    const struct pc_hooks *hooks = args->request->hooks;

    if (hooks == NULL || !(hooks->points & (1U << hook)))
        return 0;
    pc_fault_delay(PC_FAULT_BEFORE_HOOK);
    if (pc_send(args->error_fd, PC_MESSAGE_HOOK_ENTER, hook) < 0)
        return pc_fail(err, hook == PC_HOOK_PRE_PIVOT ? PC_STEP_PRE_PIVOT : PC_STEP_PRE_EXEC, errno,
                       "channel");
    if (hooks->run(hooks->context, hook, err) < 0)
        return -1;
    pc_fork_after_hook(args);
    pc_send(args->error_fd, PC_MESSAGE_HOOK_LEAVE, hook);
    return 0;
}

/* pycontain.call: the caller's code is the program, run where the exec
 * would be, with everything the exec would get (root, cwd, stdio, ids,
 * capabilities, umask, signal mask, no_new_privs, seccomp) and without the
 * error pipe: closing it tells the parent the setup is done, as a successful
 * exec does, and from then on the process's exit status is how the code
 * ended. The code itself cuts off the other close-on-exec fds (no exec
 * closes them here): see docs/call.md. */
static __attribute__((noreturn)) void run_as_program(const struct pc_child_args *args)
{
    const struct pc_hooks *hooks = args->request->hooks;
    struct pc_error unreported;

    pc_close_nocancel(args->error_fd);
    _exit(hooks->run(hooks->context, PC_HOOK_MAIN, &unreported) < 0 ? 1 : 0);
}

/* One step: run it, and on success note when it ended (for benchmarks). */
#define STEP(step, call)                                                                           \
    do {                                                                                           \
        if ((call) < 0)                                                                            \
            return -1;                                                                             \
        pc_trace(request, (step));                                                                 \
    } while (0)

static int run_steps(struct pc_child_args *args, struct pc_error *err)
{
    const struct pc_spawn_request *request = args->request;
    struct pc_root root = {
        .fd = -1,
        .scratch_fd = -1,
        .masked_dir_fd = -1,
        .masked_file_fd = -1,
        .force_walk = request->force_resolve_walk,
    };
    /* So the directories and device nodes made below get exactly their modes. */
    mode_t caller_umask = umask(0);

    pc_trace(request, PC_STEP_NONE);
    /* Fork path: wait until the caller holds our pidfd; die with it. */
    if (pc_fork_container_start(args, err) < 0)
        return -1;
    /* A new user namespace (rootless mode) has no id maps yet: until it
     * has, this process is nobody there and can mount nothing. */
    STEP(PC_STEP_USERNS_MAP, pc_userns_write_maps(request, err));
    /* First, so that all the container does, its own set-up too, is limited and counted. */
    STEP(PC_STEP_JOIN_CGROUP, pc_cgroup_join(args, err));
    STEP(PC_STEP_SIGNALS, reset_signal_handlers(args, err));
    /* Out of the caller's process group (kill(0, ...) from inside), and
     * session when the caller has a terminal (privileges.c). */
    STEP(PC_STEP_PROCESS_GROUP, pc_privileges_leave_process_group(request, err));
    if (args->netns_fd >= 0 && setns(args->netns_fd, CLONE_NEWNET) < 0)
        return pc_fail(err, PC_STEP_JOIN_NETNS, errno, NULL);
    /* A namespace from the pool has lo up already; one clone or unshare
     * just made has it down. */
    if (args->netns_fd < 0 && (request->namespaces & CLONE_NEWNET))
        STEP(PC_STEP_LOOPBACK, pc_network_loopback_up(err));
    STEP(PC_STEP_MAKE_PRIVATE, pc_rootfs_make_private(err));
    STEP(PC_STEP_OPEN_LAYER, pc_rootfs_open_layers(request, err));
    /* Before the scratch tmpfs can hide a source under the scratch dir. */
    STEP(PC_STEP_OPEN_BIND, pc_binds_open_sources(request, err));
    /* From here on, every path inside the container is opened beneath the
     * held root (rootfs.c, beneath.c). */
    STEP(PC_STEP_MOUNT_OVERLAY, pc_rootfs_mount_overlay(request, args->overlay, &root, err));
    /* While the scratch tmpfs is reachable: pivot_root detaches it. */
    STEP(PC_STEP_SHARE_UPPER, pc_upper_share(request, &root, err));
    STEP(PC_STEP_MOUNT_PROC, pc_rootfs_mount_proc(&root, err));
    STEP(PC_STEP_MOUNT_SYS, pc_rootfs_mount_sys(request, &root, err));
    STEP(PC_STEP_MOUNT_DEV, pc_rootfs_mount_dev(request, &root, err));
    /* The caller's mounts last, so that they may go inside /dev or /proc. */
    STEP(PC_STEP_MOUNT_BIND, pc_binds_mount(request, &root, err));
    STEP(PC_STEP_MOUNT_TMPFS, pc_binds_mount_tmpfs(request, &root, err));
    /* After the mount points made in /dev for the caller's mounts. */
    STEP(PC_STEP_SEAL_DEV, pc_rootfs_seal_dev(&root, err));
    umask(caller_umask); /* hooks see the caller's umask, as preexec_fn does */
    STEP(PC_STEP_PRE_PIVOT, run_hook(args, PC_HOOK_PRE_PIVOT, err));
    STEP(PC_STEP_PIVOT_ROOT, pc_rootfs_pivot(&root, err));
    if (request->cwd != NULL && chdir(request->cwd) < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, request->cwd);
    STEP(PC_STEP_STDIO, pc_fds_setup_stdio(request, err));
    STEP(PC_STEP_PRE_EXEC, run_hook(args, PC_HOOK_PRE_EXEC, err));
    /* Fork path: report the exec on a pipe no process a hook made holds. */
    if (pc_fork_exec_channel(args, err) < 0)
        return -1;
    /* From here on nothing runs caller code: hooks keep the caller's keys
     * and every capability. The order of these is explained in
     * privileges.c. */
    /* A pool's entry is made at its refill thread's lower priority; raising
     * it back needs CAP_SYS_NICE, dropped below. */
    STEP(PC_STEP_PRIORITY, pc_priority_restore(request, err));
    STEP(PC_STEP_SESSION_KEYRING, pc_privileges_join_session_keyring(err));
    /* Needs CAP_SETPCAP, which a setresuid to non-root takes away. */
    STEP(PC_STEP_CAPABILITIES, pc_privileges_limit_bounding_set(request, err));
    /* Needs CAP_SYS_ADMIN (hostname), CAP_SYS_RESOURCE, CAP_SETGID, CAP_SETUID. */
    STEP(PC_STEP_SETUID, pc_identity_apply(request, err));
    /* After setresuid, which clears the sets of a non-root uid. */
    STEP(PC_STEP_CAPABILITIES, pc_privileges_set_capabilities(request, err));
    STEP(PC_STEP_CLOSE_FDS, pc_fds_close_others(request, err));
    umask(request->umask >= 0 ? (mode_t)request->umask : caller_umask);
    sigprocmask(SIG_SETMASK, &args->parent_mask, NULL);
    /* No execve may gain privileges (setuid bits, file capabilities). */
    STEP(PC_STEP_NO_NEW_PRIVS, pc_privileges_no_new_privs(request, err));
    /* Last: from here on every system call passes the filter (a caller's
     * own filter need not allow umask or sigprocmask). */
    STEP(PC_STEP_SECCOMP, pc_privileges_load_seccomp(request, err));
    pc_trace(request, PC_STEP_EXEC);
    if (request->hooks != NULL && (request->hooks->points & (1U << PC_HOOK_MAIN)))
        run_as_program(args); /* pycontain.call: no exec; does not return */
    /* The init as PID 1 (it starts the program), or the program itself. */
    if (request->init_fd >= 0)
        return pc_lifecycle_exec_init(request, err);
    return exec_program(request, err);
}

int pc_child_main(void *child_args)
{
    struct pc_child_args *args = child_args;
    struct pc_message message = {.kind = PC_MESSAGE_ERROR};

    run_steps(args, &message.error);
    /* One write of a message smaller than PIPE_BUF is atomic; if it fails
     * there is no one left to tell. */
    (void)!pc_write_nocancel(args->error_fd, &message, sizeof message);
    _exit(127);
}
