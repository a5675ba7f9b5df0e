/* Child side: joining the container's cgroup.
 *
 * Runs between clone and exec: async-signal-safe only. The parent made the
 * cgroup, wrote its limits and opened its cgroup.procs (one per cgroup v1
 * hierarchy) before the clone; writing "0" moves the writing process. This
 * is the child's first step, so that everything the container does, its
 * own set-up included, is limited and counted. Where clone3 already started
 * the child in the cgroup (CLONE_INTO_CGROUP, cgroup v2) there is nothing
 * left to do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

int pc_cgroup_join(const struct pc_child_args *args, struct pc_error *err)
{
    const struct pc_spawn_request *request = args->request;

    if (args->in_cgroup)
        return 0;
    for (size_t i = 0; i < request->cgroup_procs_fd_count; i++) {
        ssize_t written;

        do
            written = pc_write_nocancel(request->cgroup_procs_fds[i], "0", 1);
        while (written < 0 && errno == EINTR);
        if (written < 0)
            return pc_fail(err, PC_STEP_JOIN_CGROUP, errno, NULL);
    }
    return 0;
}
