/* Child side: which file descriptors the program gets.
 *
 * Runs between clone and exec: async-signal-safe only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "faults.h"
#include "internal.h"
#include "nocancel.h"

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

/* struct linux_dirent64, as getdents64(2) fills it. */
struct dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Mark every fd from 3 up close-on-exec, one by one (kernels before 5.11).
 * The open ones are listed in /proc/self/fd (the container's /proc is
 * mounted by now); RLIMIT_NOFILE is no bound, since the program's limit,
 * set just before, may be below fds that are open. Without /proc, every
 * number up to the kernel's default nr_open. */
static void mark_cloexec_one_by_one(void)
{
    char buffer[1024] __attribute__((aligned(8)));
    long n;
    int dir = pc_open_nocancel("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dir < 0) {
        for (int fd = 3; fd < (1 << 20); fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        return;
    }
    while ((n = syscall(SYS_getdents64, dir, buffer, sizeof buffer)) > 0) {
        for (long offset = 0; offset < n;) {
            const struct dirent64 *entry = (const struct dirent64 *)(buffer + offset);
            int fd = 0, digits = 0;

            for (const char *c = entry->d_name; *c >= '0' && *c <= '9'; c++, digits++)
                fd = fd * 10 + (*c - '0');
            if (digits > 0 && fd > 2 && fd != dir)
                fcntl(fd, F_SETFD, FD_CLOEXEC);
            offset += entry->d_reclen;
        }
    }
    pc_close_nocancel(dir);
}

int pc_fds_close_others(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* Only 0, 1, 2 and pass_fds reach the program: every other inherited fd
     * is marked close-on-exec rather than closed, so the error pipe stays
     * open until the exec itself. */
    long rc = -1;

    errno = ENOSYS;
    if (!pc_fault_on(PC_FAULT_CLOSE_RANGE_ENOSYS))
        rc = syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    if (rc < 0) {
        if (errno != ENOSYS && errno != EINVAL)
            return pc_fail(err, PC_STEP_CLOSE_FDS, errno, NULL);
        mark_cloexec_one_by_one();
    }
    for (size_t i = 0; i < request->pass_fd_count; i++)
        if (fcntl(request->pass_fds[i], F_SETFD, 0) < 0)
            return pc_fail(err, PC_STEP_CLOSE_FDS, errno, "pass_fds");
    return 0;
}
