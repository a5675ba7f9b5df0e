/* Child side: who the program is inside the container, and its limits.
 *
 * Runs between clone and exec: async-signal-safe only. The order matters:
 * limits and groups need privileges that setuid gives up, so uid is last.
 *
 * The credentials are set with raw syscalls: glibc's setuid() family
 * signals every thread it knows of to change theirs too, and the child,
 * sharing the parent's memory, would reach the parent's threads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

int pc_identity_apply(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* The UTS namespace is the container's own: this is invisible outside. */
    if (request->hostname != NULL) {
        size_t length = 0;

        while (request->hostname[length] != '\0')
            length++;
        if (sethostname(request->hostname, length) < 0)
            return pc_fail(err, PC_STEP_HOSTNAME, errno, request->hostname);
    }
    for (size_t i = 0; i < request->rlimit_count; i++) {
        const struct pc_rlimit *limit = &request->rlimits[i];
        struct rlimit value = {.rlim_cur = limit->soft, .rlim_max = limit->hard};

        if (setrlimit(limit->resource, &value) < 0)
            return pc_fail(err, PC_STEP_RLIMIT, errno, NULL);
    }
    if (request->set_groups && syscall(SYS_setgroups, request->group_count, request->groups) < 0)
        return pc_fail(err, PC_STEP_SETGROUPS, errno, NULL);
    if (request->gid >= 0 &&
        syscall(SYS_setresgid, (gid_t)request->gid, (gid_t)request->gid, (gid_t)request->gid) < 0)
        return pc_fail(err, PC_STEP_SETGID, errno, NULL);
    if (request->uid >= 0 &&
        syscall(SYS_setresuid, (uid_t)request->uid, (uid_t)request->uid, (uid_t)request->uid) < 0)
        return pc_fail(err, PC_STEP_SETUID, errno, NULL);
    return 0;
}
