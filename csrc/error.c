/* Error records; the convention is described in error.h. */
#include "error.h"

#include <stddef.h>

static const char *const step_names[PC_STEP_COUNT] = {
    [PC_STEP_NONE] = "none",
    [PC_STEP_PREPARE] = "prepare",
    [PC_STEP_CLONE] = "clone",
    [PC_STEP_JOIN_CGROUP] = "join-cgroup",
    [PC_STEP_SIGNALS] = "reset-signals",
    [PC_STEP_JOIN_NETNS] = "join-netns",
    [PC_STEP_MAKE_PRIVATE] = "make-private",
    [PC_STEP_OPEN_LAYER] = "open-layer",
    [PC_STEP_OPEN_BIND] = "open-bind",
    [PC_STEP_MOUNT_SCRATCH] = "mount-scratch",
    [PC_STEP_MKDIR] = "mkdir",
    [PC_STEP_MOUNT_OVERLAY] = "mount-overlay",
    [PC_STEP_SHARE_UPPER] = "share-upper",
    [PC_STEP_MOUNT_PROC] = "mount-proc",
    [PC_STEP_MOUNT_SYS] = "mount-sys",
    [PC_STEP_MASK] = "mask",
    [PC_STEP_MOUNT_DEV] = "mount-dev",
    [PC_STEP_MKNOD] = "mknod",
    [PC_STEP_SYMLINK] = "symlink",
    [PC_STEP_MOUNT_BIND] = "mount-bind",
    [PC_STEP_MOUNT_TMPFS] = "mount-tmpfs",
    [PC_STEP_SEAL_DEV] = "seal-dev",
    [PC_STEP_PIVOT_ROOT] = "pivot-root",
    [PC_STEP_DETACH_OLD_ROOT] = "detach-old-root",
    [PC_STEP_CHDIR] = "chdir",
    [PC_STEP_HOSTNAME] = "hostname",
    [PC_STEP_RLIMIT] = "rlimit",
    [PC_STEP_SETGROUPS] = "setgroups",
    [PC_STEP_SETGID] = "setgid",
    [PC_STEP_SETUID] = "setuid",
    [PC_STEP_STDIO] = "stdio",
    [PC_STEP_CLOSE_FDS] = "close-fds",
    [PC_STEP_EXEC] = "exec",
    [PC_STEP_PRE_PIVOT] = "pre_pivot",
    [PC_STEP_PRE_EXEC] = "pre_exec",
    [PC_STEP_TIMEOUT] = "timeout",
    [PC_STEP_UNSHARE] = "unshare",
    [PC_STEP_PROCESS_GROUP] = "process-group",
    [PC_STEP_LOOPBACK] = "loopback",
    [PC_STEP_SESSION_KEYRING] = "session-keyring",
    [PC_STEP_CAPABILITIES] = "capabilities",
    [PC_STEP_NO_NEW_PRIVS] = "no-new-privs",
    [PC_STEP_SECCOMP] = "seccomp",
    [PC_STEP_INIT] = "init",
    [PC_STEP_USERNS_MAP] = "userns-map",
    [PC_STEP_PRIORITY] = "priority",
};

int pc_fail(struct pc_error *err, enum pc_step step, int errnum, const char *detail)
{
    size_t i = 0;

    err->step = (int32_t)step;
    err->err = errnum;
    err->status = 0;
    /* A hand-written strlcpy: the libc string functions are not on the
     * async-signal-safe list everywhere, and this runs in the child. */
    if (detail != NULL)
        for (; i < PC_DETAIL_MAX - 1 && detail[i] != '\0'; i++)
            err->detail[i] = detail[i];
    err->detail[i] = '\0';
    return -1;
}

const char *pc_step_name(int step)
{
    if (step < 0 || step >= PC_STEP_COUNT || step_names[step] == NULL)
        return "unknown";
    return step_names[step];
}

#include <limits.h>
_Static_assert(sizeof(struct pc_error) + 8 <= PIPE_BUF, "a message must fit one atomic write");
