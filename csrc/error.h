/* Error records: the one error convention of the C core.
 *
 *   A function that can fail returns -1 and fills a `struct pc_error`
 *   (which step, errno, and a short detail such as the path involved).
 *   It never allocates, never calls strerror, and never prints: the record
 *   is plain bytes so that the child can send it to the parent over the
 *   error pipe with a single write(2), and the parent (Python) turns it
 *   into the matching OSError subclass and its message.
 *
 * pc_fail() is async-signal-safe and may be called between clone and exec.
 */
#ifndef PYCONTAIN_ERROR_H
#define PYCONTAIN_ERROR_H

#include <stdint.h>

/* Every step of a spawn that can fail, in the order they run. The names
 * (pc_step_name) are part of the Python API: SpawnError.step. */
enum pc_step {
    PC_STEP_NONE = 0,
    /* parent side */
    PC_STEP_PREPARE, /* building overlay options, stack, pipe */
    PC_STEP_CLONE,   /* clone3 / clone with the namespace flags */
    /* child side, see child.c */
    PC_STEP_JOIN_CGROUP,  /* writing "0" to the container's cgroup.procs */
    PC_STEP_SIGNALS,      /* resetting signal dispositions */
    PC_STEP_JOIN_NETNS,   /* setns into a pooled network namespace */
    PC_STEP_MAKE_PRIVATE, /* mount --make-rprivate / */
    PC_STEP_OPEN_LAYER,   /* reopening layers in the child's namespace */
    PC_STEP_OPEN_BIND,    /* reopening bind sources in the child's namespace */
    PC_STEP_MOUNT_SCRATCH,
    PC_STEP_MKDIR,
    PC_STEP_MOUNT_OVERLAY,
    PC_STEP_SHARE_UPPER, /* sending the throwaway upper's fd to the parent */
    PC_STEP_MOUNT_PROC,
    PC_STEP_MOUNT_SYS,
    PC_STEP_MASK, /* masking or making read-only parts of /proc and /sys */
    PC_STEP_MOUNT_DEV,
    PC_STEP_MKNOD,
    PC_STEP_SYMLINK,
    PC_STEP_MOUNT_BIND,
    PC_STEP_MOUNT_TMPFS,
    PC_STEP_SEAL_DEV, /* remounting /dev read-only */
    PC_STEP_PIVOT_ROOT,
    PC_STEP_DETACH_OLD_ROOT,
    PC_STEP_CHDIR,
    PC_STEP_HOSTNAME,
    PC_STEP_RLIMIT,
    PC_STEP_SETGROUPS,
    PC_STEP_SETGID,
    PC_STEP_SETUID,
    PC_STEP_STDIO,
    PC_STEP_CLOSE_FDS,
    PC_STEP_EXEC,
    /* hooks (fork path) */
    PC_STEP_PRE_PIVOT,
    PC_STEP_PRE_EXEC,
    PC_STEP_TIMEOUT, /* the spawn took longer than its timeout */
    PC_STEP_UNSHARE, /* the fork path's helper entering the namespaces */
    /* child side: network and privileges (network.c, privileges.c) */
    PC_STEP_PROCESS_GROUP,   /* setpgid, or setsid */
    PC_STEP_LOOPBACK,        /* bringing lo up in a new network namespace */
    PC_STEP_SESSION_KEYRING, /* joining a new session keyring */
    PC_STEP_CAPABILITIES,    /* bounding, permitted, effective, ambient sets */
    PC_STEP_NO_NEW_PRIVS,
    PC_STEP_SECCOMP,
    PC_STEP_INIT,       /* exec'ing the init, or the init starting the program */
    PC_STEP_USERNS_MAP, /* writing the new user namespace's setgroups, uid_map, gid_map */
    PC_STEP_PRIORITY,   /* setting the niceness (priority.c) */
    PC_STEP_COUNT
};

/* Long enough for any path, and for the end of a callback's traceback;
 * longer ones are cut. */
#define PC_DETAIL_MAX 3980

/* Fixed size and smaller than PIPE_BUF, so one write(2) sends it whole. */
struct pc_error {
    int32_t step;
    int32_t err;    /* errno; 0 for a hook that raised or died */
    int32_t status; /* how a process that died in a hook ended: exit status,
                     * or -N for signal N; else 0 */
    char detail[PC_DETAIL_MAX];
};

/* Fill `err` and return -1. `detail` may be NULL. Async-signal-safe. */
int pc_fail(struct pc_error *err, enum pc_step step, int errnum, const char *detail);

/* The stable lower-case name of a step ("mount-overlay", "exec", ...). */
const char *pc_step_name(int step);

#endif
