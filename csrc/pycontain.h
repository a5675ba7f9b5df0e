/* pycontain: run a program in a lightweight Linux container.
 *
 * The public interface of the C core. It has no Python in it: the CPython
 * module (pycontain/_core.c) is one client, a C program can be another.
 *
 * A spawn is described by a `struct pc_spawn_request`, every string of which
 * the caller builds beforehand: the code that runs in the child between
 * clone and exec never allocates (see docs/spawn.md).
 */
#ifndef PYCONTAIN_H
#define PYCONTAIN_H

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#include "error.h"

/* Which namespaces a container gets: CLONE_NEW* flags from <sched.h>. */
#define PC_DEFAULT_NAMESPACES                                                                      \
    (CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC)

/* Points in the child's sequence where caller code may run. */
enum pc_hook {
    PC_HOOK_PRE_PIVOT = 0, /* every mount made; cwd is the new root (pivot_root does not
                            * depend on it) */
    PC_HOOK_PRE_EXEC = 1,  /* after pivot_root, cwd and stdio; before uid/gid and exec */
    PC_HOOK_MAIN = 2,      /* instead of the exec, as the program itself (pycontain.call) */
};

/* Caller code to run at hook points. It runs in the container's process,
 * which is then made with fork semantics (see pc_fork_prepare), never in a
 * CLONE_VM child. Returns 0, or -1 after filling err (pc_fail). */
struct pc_hooks {
    int (*run)(void *context, enum pc_hook hook, struct pc_error *err);
    void *context;
    unsigned int points; /* bit (1 << PC_HOOK_*) set for each hook to run */
};

struct pc_rlimit {
    int resource; /* RLIMIT_* */
    unsigned long long soft, hard;
};

/* A host file or directory bound into the container (binds.c). */
struct pc_bind {
    /* Absolute host path, and an fd (O_PATH is enough) the caller opened on
     * it after checking it: the child reopens the path in its own mount
     * namespace, checks it is the same file, and puts it on that fd number,
     * as for layers. */
    const char *source;
    int source_fd;
    /* Absolute path inside the container, without "." or ".." components:
     * resolved beneath the container's root with no symlink on the way,
     * created in the writable layer when missing. */
    const char *target;
    int read_only;
};

/* A tmpfs mounted inside the container (binds.c). */
struct pc_tmpfs {
    const char *target;      /* as pc_bind.target */
    unsigned long long size; /* bytes; 0: the kernel's default, half the RAM */
    unsigned int mode;
};

struct pc_spawn_request {
    /* CLONE_NEW* flags. CLONE_NEWNS and CLONE_NEWPID are required (all
     * mounts live in the new mount namespace, and /proc shows the new PID
     * namespace); pc_spawn refuses a request without them (EINVAL). */
    unsigned long namespaces;

    /* An existing directory of the caller's filesystem over which the child
     * mounts its private tmpfs. The tmpfs holds the overlay's mount point
     * and, without upper_fd, the overlay's upper and work directories. It
     * exists only in the child's mount namespace. */
    const char *scratch_dir;

    /* Read-only layers, uppermost first: absolute paths, each with an fd
     * the caller opened on it (O_PATH is enough) after checking it. The
     * child reopens each path in its own mount namespace (overlayfs only
     * takes directories of the mounting namespace), checks that it is still
     * the same directory, and puts it on the same fd number; overlayfs is
     * then told the fd number, relative to /proc/self/fd (overlay.c). */
    const char *const *layer_paths;
    const int *layer_fds;
    size_t layer_count;

    /* The writable layer and its overlayfs work directory (same mount), as
     * path and fd like the layers, or NULL and -1 for a throwaway upper
     * layer on the private tmpfs. */
    const char *upper_path;
    int upper_fd;
    const char *work_path;
    int work_fd;
    /* Without upper_fd: -1, or a socket (SOCK_DGRAM, AF_UNIX) over which the
     * child sends an fd of the throwaway upper directory (upper.c), so that
     * the caller can read what the program changed after pivot_root has
     * made it unreachable by path. */
    int upper_socket;

    /* Sizes of the tmpfs mounts pycontain makes, in bytes (0: the kernel's
     * default, half the RAM, each): the scratch tmpfs (the writable layer,
     * without upper_fd), /dev (and its inode count) and /dev/shm. */
    unsigned long long scratch_size;
    unsigned long long dev_size;
    unsigned long long dev_inodes;
    unsigned long long shm_size;

    /* Bind mounts and tmpfs mounts inside the container, made in order
     * after /proc, /sys and /dev. */
    const struct pc_bind *binds;
    size_t bind_count;
    const struct pc_tmpfs *tmpfs;
    size_t tmpfs_count;

    /* With CLONE_NEWUSER in namespaces: the lines the child writes to its
     * own uid_map and gid_map (userns.c), built by the caller, e.g.
     * "0 1000 1" (container id, caller's id, count); NULL otherwise. */
    const char *uid_map;
    const char *gid_map;

    /* Directory to chdir to inside the container (NULL: "/"). */
    const char *cwd;

    /* Paths to try with execve, in order, NULL-terminated: one entry for a
     * program named with a slash, one per PATH entry otherwise. */
    const char *const *exec_paths;
    char *const *argv;
    char *const *envp;

    /* Standard streams: the fd to put on 0, 1 and 2, or -1 to inherit. */
    int stdio[3];
    /* Further fds the program inherits, at the same numbers. */
    const int *pass_fds;
    size_t pass_fd_count;

    /* Settings applied inside the container, in this order, after
     * pivot_root: hostname (NULL: keep the copy of the host's), rlimits,
     * supplementary groups (when set_groups), gid, uid (-1: keep), umask
     * (-1: the caller's). */
    const char *hostname;
    const struct pc_rlimit *rlimits;
    size_t rlimit_count;
    int set_groups;
    const gid_t *groups;
    size_t group_count;
    long long gid;
    long long uid;
    int umask;

    /* Privileges (privileges.c). Unless `privileged`, every capability
     * not in `capabilities` (bit N: capability N) is dropped from the
     * bounding set, the program runs with exactly `capabilities` (in its
     * ambient set when `uid` is a non-root uid), and no_new_privs is set.
     * `last_capability` is the kernel's (/proc/sys/kernel/cap_last_cap).
     * With `privileged`, capabilities and no_new_privs are left alone. */
    int privileged;
    unsigned long long capabilities;
    int last_capability;

    /* The program gets a process group of its own, and with new_session
     * (for a caller with a controlling terminal) a session of its own;
     * with stay_in_caller_group, neither (the caller's opt-out). */
    int new_session;
    int stay_in_caller_group;

    /* With set_nice, the child sets its niceness to `nice` before it drops
     * its capabilities (priority.c): a pool's refill thread spawns at a
     * lowered priority, which the program must not inherit. */
    int set_nice;
    int nice;

    /* A seccomp BPF program (an array of struct sock_filter) loaded as the
     * last step before exec, or NULL for none. */
    const void *seccomp_filter;
    size_t seccomp_length; /* instructions */

    /* The init (csrc/init/init.c): when init_fd >= 0 (an fd of its
     * executable, typically a sealed memfd), the child's last step execs it
     * by fd with init_argv (which names the program's paths and argv) and
     * envp, instead of the program; the init starts the program and stays
     * PID 1. init_keep_fds (the init's status pipe, the owner's pidfd)
     * stay open across that exec; the init keeps them from the program. */
    int init_fd;
    char *const *init_argv;
    const int *init_keep_fds;
    size_t init_keep_fd_count;

    /* Take the new network namespace from the pool (nsworker.c) when it
     * has one ready; 0: always make it during clone. */
    int use_netns_pool;

    /* The container's cgroup, which the caller created (pycontain/_cgroup.py):
     * `cgroup_fd` is a cgroup v2 directory for clone3's CLONE_INTO_CGROUP
     * (-1: none), and `cgroup_procs_fds` are its cgroup.procs (or one per
     * cgroup v1 hierarchy), opened for writing, which the child writes "0"
     * to as its first step when the clone did not already put it there.
     * No count: no cgroup. */
    int cgroup_fd;
    const int *cgroup_procs_fds;
    size_t cgroup_procs_fd_count;

    /* NULL, or code to run at hook points: such a request must be spawned
     * with the fork path (pc_fork_*), not pc_spawn. */
    const struct pc_hooks *hooks;

    /* Testing knob: skip clone3 and use the clone(2) fallback. */
    int force_legacy_clone;
    /* Testing knob: resolve container paths one component at a time, as
     * where openat2 is missing (beneath.c). */
    int force_resolve_walk;

    /* Diagnostics for benchmarks, normally NULL: an array of PC_STEP_COUNT
     * CLOCK_MONOTONIC times in ns. The child fills in when each of its steps
     * ended (slot PC_STEP_NONE: when it started), the parent when it
     * entered clone (PC_STEP_PREPARE) and when clone returned
     * (PC_STEP_CLONE). The child writes it through the memory it shares
     * with the parent. */
    unsigned long long *trace_ns;
};

/* A started container: its pid in the caller's PID namespace and a pidfd
 * (close-on-exec) for race-free waiting and signalling. When the namespace
 * worker runs, also a handle on a reference to the container's mount
 * namespace that the worker holds for this process (else -1): pass it to
 * pc_nsworker_drop_mntns once the container has been reaped, so that its
 * mounts are torn down there rather than in the container's exit, which
 * the caller's wait would pay for. A child of fork() holds none of these
 * references (its handles match nothing). */
struct pc_process {
    pid_t pid;
    int pidfd;
    int mntns;
};

/* Start a container. Returns 0 once the program has been exec'd, or -1 with
 * `err` filled in if any step failed (nothing is left running then). */
int pc_spawn(const struct pc_spawn_request *request, struct pc_process *process,
             struct pc_error *err);

/* Whether clone3 is still asked for CLONE_CLEAR_SIGHAND (0 once the kernel
 * has refused it); for the tests. */
int pc_clone_clear_sighand_supported(void);

/* The namespace worker (nsworker.c): a background thread that keeps `size`
 * fresh network namespaces ready (0: no thread), so that pc_spawn need not
 * create one while the caller waits (each is used once), and releases
 * mount namespaces handed to it. Not thread-safe against itself: configure
 * from one thread. */
int pc_netns_pool_configure(unsigned int size, struct pc_error *err);
/* Drop the mount namespace reference behind `handle` (pc_process.mntns):
 * on the worker when `on_worker` and it runs, else here. Returns 0 when
 * handed to the worker, 1 when closed here, -1 for a handle that holds
 * nothing (already dropped, or made before a fork()). */
int pc_nsworker_drop_mntns(int handle, int on_worker);
/* The configured size, how many are ready, and how many were handed out
 * since the process started; returns the errno that stopped the pool's
 * thread, or 0. */
int pc_netns_pool_status(unsigned int *size, unsigned int *ready, unsigned long *handed_out);

/* The fork path, for requests with hooks. A CLONE_VM child must not run
 * arbitrary code (it shares the parent's memory, and locks other threads
 * held stay held), so hooks run in a child made by the caller's own fork(),
 * which runs the runtime's at-fork handlers (glibc resets malloc's locks;
 * CPython's PyOS_AfterFork_Child makes the interpreter usable):
 *
 *     pc_fork_prepare(request, &state, err)      parent, before fork
 *     pid = fork();
 *     child:  pc_fork_helper(&state)             never returns
 *     parent: pc_fork_collect(&state, pid, timeout_ms, process, err)
 *
 *     child:  pc_fork_helper_early(&state); (runtime's after-fork code);
 *             pc_fork_helper(&state)             never returns
 *
 * The forked helper enters the new namespaces with unshare and clones the
 * container's process with CLONE_PARENT and CLONE_PIDFD, so that process is
 * PID 1 of its namespace and the caller's own child; the helper sends the
 * pidfd and exits. Collect waits (up to timeout_ms, -1: forever) for the
 * exec or a failure, kills everything on timeout (err: PC_STEP_TIMEOUT),
 * and reaps the helper (see forkspawn.c for how each outcome is known). */
/* The overlay mount the parent prepares (overlay.c); part of the fork
 * state, otherwise internal. */
struct pc_overlay {
    int scratch_fd;     /* an fd number reserved for the scratch tmpfs's root */
    char options[4096]; /* mount(2) reads one page of options */
    char target[32];    /* the mount point, relative to /proc/self/fd */
};

struct pc_fork_state {
    const struct pc_spawn_request *request;
    pid_t caller;
    int channel[2];       /* socket pair: [0] the caller's end, [1] the helper's and container's */
    sigset_t caller_mask; /* prepare blocks all signals; collect restores */
    struct pc_overlay overlay;
};

int pc_fork_prepare(const struct pc_spawn_request *request, struct pc_fork_state *state,
                    struct pc_error *err);
/* In the helper right after fork(), before the runtime's own after-fork
 * code: its process group, and death with the caller. */
void pc_fork_helper_early(struct pc_fork_state *state);
__attribute__((noreturn)) void pc_fork_helper(struct pc_fork_state *state);
int pc_fork_collect(struct pc_fork_state *state, pid_t helper, int timeout_ms,
                    struct pc_process *process, struct pc_error *err);
/* Release what pc_fork_prepare made, when fork() itself failed. */
void pc_fork_abandon(struct pc_fork_state *state);

#endif
