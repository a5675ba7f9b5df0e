/* Parent side: the overlayfs mount options of a request.
 *
 * Layers are named as /proc/self/fd/N (N an fd the child has reopened on the
 * layer, see rootfs.c) rather than by path. Overlayfs treats ',' ':' and '\' in option
 * values as syntax, and mount(2) only reads one page of options; naming the
 * fds sidesteps both for any path, and the directory mounted is exactly the
 * one the caller opened and checked, even if the path changes meanwhile.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

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

int pc_overlay_options(const struct pc_spawn_request *request, char *buf, size_t size,
                       struct pc_error *err)
{
    size_t used = 0;
    int too_long = 0;

    if (request->layer_count == 0)
        return pc_fail(err, PC_STEP_PREPARE, EINVAL, "no layers");
    buf[0] = '\0';
    for (size_t i = 0; i < request->layer_count && !too_long; i++)
        too_long = append(buf, size, &used, i == 0 ? "lowerdir=/proc/self/fd/%d" : ":/proc/self/fd/%d",
                          request->layer_fds[i]);
    if (request->upper_fd >= 0) {
        too_long = too_long || append(buf, size, &used, ",upperdir=/proc/self/fd/%d", request->upper_fd);
        too_long = too_long || append(buf, size, &used, ",workdir=/proc/self/fd/%d", request->work_fd);
    } else {
        /* Relative to the scratch tmpfs, the child's cwd when it mounts. */
        too_long = too_long || append(buf, size, &used, ",upperdir=upper,workdir=work");
    }
    if (too_long)
        return pc_fail(err, PC_STEP_PREPARE, E2BIG, "overlay options");
    return 0;
}
