/* Child side: which file descriptors the program gets.
 *
 * Runs between clone and exec: async-signal-safe only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static const char *const stream_names[3] = {"stdin", "stdout", "stderr"};

int pc_fds_setup_stdio(const struct pc_spawn_request *request, struct pc_error *err)
{
    int source[3];

    /* A source that is itself 0, 1 or 2 (stdout=sys.stderr, say) could be
     * overwritten by an earlier dup2: move such sources above 2 first. */
    for (int i = 0; i < 3; i++) {
        source[i] = request->stdio[i];
        if (source[i] >= 0 && source[i] < 3 && source[i] != i) {
            source[i] = fcntl(source[i], F_DUPFD_CLOEXEC, 3);
            if (source[i] < 0)
                return pc_fail(err, PC_STEP_STDIO, errno, stream_names[i]);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (source[i] < 0)
            continue;
        if (source[i] == i) {
            /* dup2 onto itself does nothing; the fd may still be
             * close-on-exec. */
            if (fcntl(i, F_SETFD, 0) < 0)
                return pc_fail(err, PC_STEP_STDIO, errno, stream_names[i]);
        } else if (dup2(source[i], i) < 0) {
            return pc_fail(err, PC_STEP_STDIO, errno, stream_names[i]);
        }
    }
    return 0;
}

int pc_fds_close_others(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* Only 0, 1, 2 and pass_fds reach the program: every other inherited fd
     * is marked close-on-exec rather than closed, so the error pipe stays
     * open until the exec itself. */
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        struct rlimit limit;

        if (errno != ENOSYS && errno != EINVAL)
            return pc_fail(err, PC_STEP_CLOSE_FDS, errno, NULL);
        /* Kernels before 5.11: one by one. */
        if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
            return pc_fail(err, PC_STEP_CLOSE_FDS, errno, NULL);
        for (rlim_t fd = 3; fd < limit.rlim_cur && fd < (1U << 20); fd++)
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
    for (size_t i = 0; i < request->pass_fd_count; i++)
        if (fcntl(request->pass_fds[i], F_SETFD, 0) < 0)
            return pc_fail(err, PC_STEP_CLOSE_FDS, errno, "pass_fds");
    return 0;
}
