/* Parent side: the overlayfs mount of a request.
 *
 * The child mounts with /proc/self/fd as its working directory, and every
 * directory in the options is named by an fd number relative to it: the
 * layers (fds the child has reopened on them, see rootfs.c), the writable
 * layer, and the scratch tmpfs holding the default upper and work
 * directories and the mount point. So no path needs escaping (overlayfs
 * treats ',' ':' and '\\' as syntax), and the options stay short enough
 * for overlayfs' limit of 500 layers within mount(2)'s one page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

/* Append to buf[*used..size); -1 when it does not fit. */
__attribute__((format(printf, 4, 5))) static int append(char *buf, size_t size, size_t *used,
                                                        const char *format, ...)
{
    va_list ap;
    int n;

    va_start(ap, format);
    n = vsnprintf(buf + *used, size - *used, format, ap);
    va_end(ap);

    if (n < 0 || (size_t)n >= size - *used)
        return -1;
    *used += (size_t)n;
    return 0;
}

int pc_overlay_prepare(const struct pc_spawn_request *request, struct pc_overlay *overlay,
                       struct pc_error *err)
{
    size_t used = 0, target_used = 0;
    int too_long = 0;

    if (request->layer_count == 0)
        return pc_fail(err, PC_STEP_PREPARE, EINVAL, "no layers");
    overlay->options[0] = '\0';
    for (size_t i = 0; i < request->layer_count && !too_long; i++)
        too_long = append(overlay->options, sizeof overlay->options, &used,
                          i == 0 ? "lowerdir=%d" : ":%d", request->layer_fds[i]);
    if (too_long)
        return pc_fail(err, PC_STEP_PREPARE, E2BIG, "overlay options");
    /* The child mounts its tmpfs over scratch_dir and puts the tmpfs's root
     * on this fd number. */
    overlay->scratch_fd = open(request->scratch_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (overlay->scratch_fd < 0)
        return pc_fail(err, PC_STEP_PREPARE, errno, request->scratch_dir);
    if (request->upper_fd >= 0)
        too_long = append(overlay->options, sizeof overlay->options, &used,
                          ",upperdir=%d,workdir=%d", request->upper_fd, request->work_fd);
    else
        too_long =
            append(overlay->options, sizeof overlay->options, &used,
                   ",upperdir=%d/upper,workdir=%d/work", overlay->scratch_fd, overlay->scratch_fd);
    /* In a user namespace overlayfs keeps its markers (whiteouts' and
     * opaque directories' xattrs) in user.overlay.*, since trusted.* is
     * real root's only (Linux 5.11). */
    if (request->namespaces & CLONE_NEWUSER)
        too_long =
            too_long || append(overlay->options, sizeof overlay->options, &used, ",userxattr");
    too_long = too_long || append(overlay->target, sizeof overlay->target, &target_used, "%d/root",
                                  overlay->scratch_fd);
    if (too_long) {
        pc_overlay_release(overlay);
        return pc_fail(err, PC_STEP_PREPARE, E2BIG, "overlay options");
    }
    return 0;
}

void pc_overlay_release(struct pc_overlay *overlay)
{
    if (overlay->scratch_fd >= 0)
        close(overlay->scratch_fd);
    overlay->scratch_fd = -1;
}
