/* Child side: the init (csrc/init/init.c) as the container's PID 1, which
 * outlives the exec and starts the program.
 *
 * Runs between clone and exec: async-signal-safe only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

int pc_lifecycle_exec_init(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* close-fds marked every fd close-on-exec; the init's own ones must
     * cross this exec (it marks them again for the program's). */
    for (size_t i = 0; i < request->init_keep_fd_count; i++)
        if (fcntl(request->init_keep_fds[i], F_SETFD, 0) < 0)
            return pc_fail(err, PC_STEP_INIT, errno, "status pipe");
    /* By fd: the init's executable need not exist in the container's
     * root, and a sealed memfd cannot be changed by what runs there. */
    syscall(SYS_execveat, request->init_fd, "", request->init_argv, request->envp, AT_EMPTY_PATH);
    return pc_fail(err, PC_STEP_INIT, errno, "pycontain-init");
}
