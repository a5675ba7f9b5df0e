/* Declarations shared between the C core's files; not part of the public
 * interface (pycontain.h). Each file owns one concern:
 *
 *   spawn.c    parent side: prepares, clones, collects the child's verdict
 *   forkspawn.c the fork path, for requests with hooks (caller code)
 *   messages.c the error pipe's messages
 *   nsworker.c namespace work off the critical path: a pool of network
 *              namespaces, releasing mount namespaces
 *   clone.c    clone3 with a pidfd and a separate stack, clone(2) fallback
 *   child.c    the child's setup sequence, top to bottom, then exec
 *   request.c  parent side: refusing a request the steps cannot run safely
 *   rootfs.c   child side: overlay, /proc, /sys, /dev, pivot_root
 *   beneath.c  child side: paths resolved beneath a held fd, mounts onto fds
 *   kernelfs.c child side: masking and read-only parts of /proc and /sys
 *   binds.c    child side: the caller's bind mounts and tmpfs mounts
 *   fds.c      child side: standard streams, pass_fds, closing the rest
 *   identity.c child side: hostname, rlimits, groups, gid, uid
 *   cgroup.c   child side: joining the container's cgroup
 *   privileges.c child side: session, keyring, capabilities, no_new_privs,
 *              seccomp
 *   network.c  the loopback device of a new network namespace
 *   lifecycle.c child side: exec of the init (init/init.c)
 *   overlay.c  parent side: the overlayfs mount options
 *   upper.c    child side: the throwaway upper directory's fd, to the parent
 *   userns.c   child side: a new user namespace's id maps, /dev nodes bound
 *              from the host (rootless mode)
 *   priority.c child side: the niceness a pool's entry is made with, undone
 *   error.c    error records (convention in error.h)
 */
#ifndef PYCONTAIN_INTERNAL_H
#define PYCONTAIN_INTERNAL_H

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "pycontain.h"

/* What travels on the error pipe: one message per write(2), each smaller
 * than PIPE_BUF. pc_spawn's child only ever sends one ERROR. The fork path
 * (forkspawn.c) talks over a socket pair and never takes EOF for an
 * answer: the helper sends PID with the container's pidfd, the caller
 * answers GO, the container's process brackets each hook with
 * HOOK_ENTER / HOOK_LEAVE and, after its last hook, sends EXEC_CHANNEL with
 * the read end of a pipe that only it holds: EOF there is the exec (of the
 * program, or of an init, which then reports the program's exec itself on
 * a channel of its own). */
enum pc_message_kind {
    PC_MESSAGE_ERROR = 1,
    PC_MESSAGE_PID,        /* value: the container's pid; carries its pidfd */
    PC_MESSAGE_HOOK_ENTER, /* value: enum pc_hook */
    PC_MESSAGE_HOOK_LEAVE,
    PC_MESSAGE_GO,           /* caller to container: it has the pidfd, go on */
    PC_MESSAGE_EXEC_CHANNEL, /* carries the read end of the exec pipe */
    PC_MESSAGE_UPPER,        /* on request->upper_socket: carries the upper's fd */
    /* From the init (init/init.c), on its status pipe, not the error pipe: */
    PC_MESSAGE_EXEC_OK, /* the program has been exec'd */
    PC_MESSAGE_STATUS,  /* value: the program's wait status, usage: the init's
                         * RUSAGE_CHILDREN (every process of the container, all
                         * reaped); the init exits next */
};

/* The kernel's struct rusage (64-bit: timevals of two longs). */
struct pc_usage {
    int64_t utime_sec, utime_usec, stime_sec, stime_usec;
    int64_t counters[14]; /* ru_maxrss .. ru_nivcsw, in struct rusage's order */
};

struct pc_message {
    int32_t kind;
    int32_t value;
    union {
        struct pc_error error;
        struct pc_usage usage; /* PC_MESSAGE_STATUS only */
    };
};

/* A warm pool entry's request (pycontain/_pool.py to init/waiting.c): one
 * SOCK_SEQPACKET message, this header then the strings, each NUL-terminated:
 * argc argv items, envc environment items, pathc candidate paths, and the
 * cwd when has_cwd. The fds (SCM_RIGHTS, in order) go to targets[i] in the
 * program. Python packs the same layout (_pool.py's _HEADER). */
#define PC_WARM_MAGIC    0x70637731U /* "pcw1" */
#define PC_WARM_MAX_FDS  250         /* below the kernel's SCM_MAX_FD (253) */
#define PC_WARM_MAX_SIZE (128 * 1024)
struct pc_warm_request {
    uint32_t magic;
    uint32_t argc, envc, pathc;
    uint32_t has_cwd;
    uint32_t fd_count;
    uint64_t signal_mask; /* the caller's, for the program */
    int32_t targets[PC_WARM_MAX_FDS];
};

/* Write a message without error fields (async-signal-safe); returns 0 or
 * -1 (errno). pc_send_fd attaches `passed_fd` (SCM_RIGHTS) on a socket. */
int pc_send(int fd, enum pc_message_kind kind, int value);
int pc_send_fd(int fd, enum pc_message_kind kind, int value, int passed_fd);
/* Receive one message from a socket without blocking: returns the bytes
 * read (0: EOF), or -1 (errno; EAGAIN: nothing there). *passed_fd gets an
 * fd that came with it (close-on-exec), else -1; extra fds are closed. */
ssize_t pc_receive(int fd, struct pc_message *message, int *passed_fd);
/* Make a received message safe to use: the detail NUL-terminated, the step
 * a known one. The parent never trusts what arrives on a pipe. */
void pc_message_sanitize(struct pc_message *message);

/* Everything the child reads: prepared by the parent before clone. */
struct pc_child_args {
    const struct pc_spawn_request *request;
    const struct pc_overlay *overlay;
    sigset_t parent_mask; /* the caller's signal mask, restored before exec */
    int error_fd;         /* write end of the close-on-exec error pipe */
    int netns_fd;         /* a pooled network namespace to join, or -1 */
    int handlers_cleared; /* the kernel reset caught signals (CLONE_CLEAR_SIGHAND) */
    int in_cgroup;        /* the clone put it in its cgroup (CLONE_INTO_CGROUP) */
    /* The fork path only (0 and unused on pc_spawn's CLONE_VM path). */
    int fork_path;
    int caller_pidfd;  /* the caller, to notice its death before PDEATHSIG holds */
    dev_t channel_dev; /* error_fd's identity, to notice a hook that closed or */
    ino_t channel_ino; /* replaced it */
};

/* nsworker.c: a fresh network namespace's fd (close-on-exec), or -1 when
 * the pool is off or empty; whether the worker runs in this process. */
int pc_netns_pool_take(void);
int pc_nsworker_running(void);
/* nsworker.c: take a reference to a running container's mount namespace
 * and keep it in the table a fork() clears; returns its handle or -1. */
int pc_nsworker_hold_mntns(pid_t pid, int pidfd);

/* Record when `step` ended in request->trace_ns, if tracing. The vDSO
 * clock_gettime is async-signal-safe. */
static inline void pc_trace(const struct pc_spawn_request *request, enum pc_step step)
{
    struct timespec now;

    if (request->trace_ns != NULL && clock_gettime(CLOCK_MONOTONIC, &now) == 0)
        request->trace_ns[step] =
            (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
}

/* overlay.c (parent side): reserve the scratch fd and build the mount's
 * options and target; release closes the fd. */
int pc_overlay_prepare(const struct pc_spawn_request *request, struct pc_overlay *overlay,
                       struct pc_error *err);
void pc_overlay_release(struct pc_overlay *overlay);

/* clone.c (parent side): start fn(arg) on `stack` in a new process with
 * CLONE_VM | CLONE_VFORK | CLONE_PIDFD | `namespaces`. Returns the pid, or -1
 * with errno set. The calling thread is suspended until the child execs or
 * exits. *handlers_cleared says whether the kernel has reset the child's
 * caught signals to their defaults; *in_cgroup whether it started the child
 * in the cgroup v2 directory `cgroup_fd` (-1: none). */
pid_t pc_clone(unsigned long namespaces, int (*fn)(void *), void *arg, void *stack,
               size_t stack_size, int *pidfd, int force_legacy, int *handlers_cleared,
               int cgroup_fd, int *in_cgroup);

/* child.c: the child's entry point; never returns. */
int pc_child_main(void *child_args);

/* spawn.c: the error pipe, close-on-exec, non-blocking, above fd 2. */
int pc_open_error_pipe(int pipe_fds[2], struct pc_error *err);
/* spawn.c: move *fd (close-on-exec) above 2 if it is 0, 1 or 2. */
int pc_move_above_stdio(int *fd);

/* forkspawn.c, container side (async-signal-safe; each does nothing on the
 * CLONE_VM path): wait until the caller holds our pidfd; after a hook,
 * check that it left our channel alone; after the last hook, switch to the
 * exec pipe. */
int pc_fork_container_start(struct pc_child_args *args, struct pc_error *err);
void pc_fork_after_hook(const struct pc_child_args *args);
int pc_fork_exec_channel(struct pc_child_args *args, struct pc_error *err);

/* messages.c: read messages until EOF, or only what is there when
 * `nonblocking`; returns 0 (exec'd), 1 (err filled with a failure), or -1
 * on a timeout or read error (errno). `pid`/`hook` receive the PID message
 * and the hook the child was in when the pipe closed (-1: none). */
int pc_read_messages(int fd, int timeout_ms, pid_t *pid, int *hook, struct pc_error *err);

/* fds.c (child side, async-signal-safe) */
int pc_fds_setup_stdio(const struct pc_spawn_request *request, struct pc_error *err);
int pc_fds_close_others(const struct pc_spawn_request *request, struct pc_error *err);

/* cgroup.c (child side, async-signal-safe) */
int pc_cgroup_join(const struct pc_child_args *args, struct pc_error *err);

/* lifecycle.c (child side, async-signal-safe): exec the init (returns
 * only on failure). */
int pc_lifecycle_exec_init(const struct pc_spawn_request *request, struct pc_error *err);

/* identity.c (child side, async-signal-safe) */
int pc_identity_apply(const struct pc_spawn_request *request, struct pc_error *err);

/* request.c (parent side): -1 with err (PC_STEP_PREPARE, EINVAL) for a
 * request whose steps would not run inside namespaces of their own, or with
 * a container path the child must not resolve. */
int pc_request_check(const struct pc_spawn_request *request, struct pc_error *err);

/* The container's root while the child builds it: held from the overlay's
 * mount until pivot_root, so that no path string and no current directory
 * (a pre_pivot hook may change it) decides where anything goes. */
struct pc_root {
    int fd;    /* the overlay's root directory */
    dev_t dev; /* what fd was when opened, checked before pivot_root */
    ino_t ino;
    int scratch_fd;     /* the scratch tmpfs's root (the overlay's reserved fd) */
    int masked_dir_fd;  /* an empty directory and an empty file on a read-only */
    int masked_file_fd; /* bind of the scratch tmpfs, bound over masked paths */
    int force_walk;     /* request->force_resolve_walk */
};
/* privileges.c (child side, async-signal-safe; the order is in its header) */
int pc_privileges_leave_process_group(const struct pc_spawn_request *request, struct pc_error *err);
int pc_privileges_join_session_keyring(struct pc_error *err);
int pc_privileges_limit_bounding_set(const struct pc_spawn_request *request, struct pc_error *err);
int pc_privileges_set_capabilities(const struct pc_spawn_request *request, struct pc_error *err);
int pc_privileges_no_new_privs(const struct pc_spawn_request *request, struct pc_error *err);
int pc_privileges_load_seccomp(const struct pc_spawn_request *request, struct pc_error *err);

/* network.c (async-signal-safe): bring up lo in this thread's network
 * namespace. */
int pc_network_loopback_up(struct pc_error *err);

/* rootfs.c (child side, async-signal-safe) */
int pc_rootfs_make_private(struct pc_error *err);
int pc_rootfs_open_layers(const struct pc_spawn_request *request, struct pc_error *err);
int pc_rootfs_mount_overlay(const struct pc_spawn_request *request,
                            const struct pc_overlay *overlay, struct pc_root *root,
                            struct pc_error *err);
int pc_rootfs_mount_dev(const struct pc_spawn_request *request, const struct pc_root *root,
                        struct pc_error *err);
int pc_rootfs_mount_proc(struct pc_root *root, struct pc_error *err);
int pc_rootfs_mount_sys(const struct pc_spawn_request *request, const struct pc_root *root,
                        struct pc_error *err);
int pc_rootfs_seal_dev(const struct pc_root *root, struct pc_error *err);
int pc_rootfs_pivot(struct pc_root *root, struct pc_error *err);

/* beneath.c (child side, async-signal-safe) */
enum pc_node {
    PC_NODE_DIRECTORY, /* a directory; created with mkdir when missing */
    PC_NODE_FILE,      /* anything but a directory; created as an empty file */
    PC_NODE_ANY,       /* anything; never created */
};
/* "/proc/self/fd/N": how mount(2) is pointed at an fd. */
struct pc_fd_path {
    char text[32];
};
void pc_fd_path(struct pc_fd_path *path, int fd);
#define PC_TMPFS_OPTIONS_MAX 96
/* A tmpfs's inodes are kernel memory its size= does not count (the kernel's
 * default allows half the RAM's pages of them), so a sized tmpfs gets one inode
 * per this many bytes unless told otherwise: a tree of empty files stops at
 * ENOSPC as a large file does. ext4 gives one per 16 KiB; a tmpfs holds more
 * small files, so 4 KiB (1 GiB: 262,144 files). */
#define PC_TMPFS_BYTES_PER_INODE 4096ULL
/* "mode=0MMM[,size=N][,nr_inodes=N]"; size 0 leaves both out, inodes 0 means
 * size / PC_TMPFS_BYTES_PER_INODE (rounded up). */
void pc_tmpfs_options(char options[PC_TMPFS_OPTIONS_MAX], unsigned int mode,
                      unsigned long long size, unsigned long long inodes);
/* An O_PATH fd (close-on-exec) of `path` (absolute inside `base`) opened
 * beneath `base`, never through a symlink (ELOOP) or a non-directory
 * (ENOTDIR) and never above `base`; missing components are created when
 * `create` (directories 0755, the last one `mode`). openat2 where the kernel
 * has it, else (or with force_walk) one component at a time. -1 and errno
 * on failure. */
int pc_open_beneath(int base, const char *path, enum pc_node kind, int create, mode_t mode,
                    int force_walk);
/* The flags of a mount (its statfs) that a bind of it must repeat when it
 * is remounted: in a user namespace a mount of the host keeps them locked
 * (read-only, noexec, its access-time mode), and a remount that changed one
 * would be refused. */
struct statfs;
unsigned long pc_locked_mount_flags(const struct statfs *source);
/* mount(2) with the target given as an fd (through /proc/self/fd). */
int pc_mount_on_fd(const char *source, int target_fd, const char *fstype, unsigned long flags,
                   const void *data);

/* pc_open_beneath (creating), then mount onto it; fills err with `step` and
 * `path`. */
int pc_mount_beneath(int base, const char *path, enum pc_node kind, mode_t mode, int force_walk,
                     const char *source, const char *fstype, unsigned long flags, const void *data,
                     enum pc_step step, struct pc_error *err);

/* kernelfs.c (child side, async-signal-safe) */
int pc_kernelfs_prepare_masks(struct pc_root *root, struct pc_error *err);
int pc_kernelfs_protect_proc(const struct pc_root *root, int proc_fd, struct pc_error *err);
int pc_kernelfs_protect_sys(const struct pc_root *root, int sys_fd, struct pc_error *err);

/* upper.c (child side, async-signal-safe): send an fd of the throwaway
 * upper directory over request->upper_socket, when there is one. */
int pc_upper_share(const struct pc_spawn_request *request, const struct pc_root *root,
                   struct pc_error *err);

/* userns.c (child side, async-signal-safe): with CLONE_NEWUSER, write
 * this process's setgroups ("deny"), uid_map and gid_map (else nothing);
 * bind the host's device node `path` ("/dev/null") onto an empty file made
 * in the new /dev `dev`, where mknod is not allowed. */
int pc_userns_write_maps(const struct pc_spawn_request *request, struct pc_error *err);
int pc_userns_bind_device(int dev, const char *path, struct pc_error *err);
/* priority.c (child side, async-signal-safe) */
int pc_priority_restore(const struct pc_spawn_request *request, struct pc_error *err);

/* binds.c (child side, async-signal-safe) */
int pc_binds_open_sources(const struct pc_spawn_request *request, struct pc_error *err);
int pc_binds_mount(const struct pc_spawn_request *request, const struct pc_root *root,
                   struct pc_error *err);
int pc_binds_mount_tmpfs(const struct pc_spawn_request *request, const struct pc_root *root,
                         struct pc_error *err);

#endif
