/* Child side: the caller's bind mounts and tmpfs mounts.
 *
 * Runs between clone and exec: async-signal-safe only.
 *
 * Sources are host paths the caller opened and checked; they are reopened
 * here (bind mounts, like overlayfs, only take paths of the mounting
 * process's mount namespace) and must still be what the caller opened.
 * Destinations are opened beneath the container's root, never through a
 * symlink, and created in the writable layer when missing (beneath.c).
 * Every mount is nosuid and nodev; a bind keeps its source's read-only and
 * noexec flags and is read-only on request.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

int pc_binds_open_sources(const struct pc_spawn_request *request, struct pc_error *err)
{
    for (size_t i = 0; i < request->bind_count; i++) {
        const struct pc_bind *bind = &request->binds[i];
        struct stat checked, now;
        int reopened = pc_open_nocancel(bind->source, O_PATH | O_CLOEXEC), failed = 0;

        if (reopened < 0)
            return pc_fail(err, PC_STEP_OPEN_BIND, errno, bind->source);
        if (fstat(bind->source_fd, &checked) < 0 || fstat(reopened, &now) < 0)
            failed = errno;
        else if (checked.st_dev != now.st_dev || checked.st_ino != now.st_ino)
            failed = ESTALE; /* the caller checked another file */
        else if (dup3(reopened, bind->source_fd, O_CLOEXEC) < 0)
            failed = errno;
        pc_close_nocancel(reopened);
        if (failed != 0)
            return pc_fail(err, PC_STEP_OPEN_BIND, failed, bind->source);
    }
    return 0;
}

static int mount_bind(const struct pc_bind *bind, const struct pc_root *root, struct pc_error *err)
{
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV;
    struct pc_fd_path source;
    struct statfs source_flags;
    struct stat info;
    enum pc_node kind;
    int target, failed = 0;

    if (fstat(bind->source_fd, &info) < 0 || fstatfs(bind->source_fd, &source_flags) < 0)
        return pc_fail(err, PC_STEP_MOUNT_BIND, errno, bind->source);
    kind = S_ISDIR(info.st_mode) ? PC_NODE_DIRECTORY : PC_NODE_FILE;
    if (bind->read_only)
        flags |= MS_RDONLY;
    flags |= pc_locked_mount_flags(&source_flags);
    pc_fd_path(&source, bind->source_fd);
    if (pc_mount_beneath(root->fd, bind->target, kind, 0755, root->force_walk, source.text, NULL,
                         MS_BIND, NULL, PC_STEP_MOUNT_BIND, err) < 0)
        return -1;
    /* The flags go on with a remount of the new bind, at its root: open the
     * destination again, which now crosses into it. */
    target = pc_open_beneath(root->fd, bind->target, kind, 0, 0, root->force_walk);
    if (target < 0)
        return pc_fail(err, PC_STEP_MOUNT_BIND, errno, bind->target);
    if (pc_mount_on_fd(NULL, target, NULL, flags, NULL) < 0)
        failed = errno;
    pc_close_nocancel(target);
    return failed == 0 ? 0 : pc_fail(err, PC_STEP_MOUNT_BIND, failed, bind->target);
}

int pc_binds_mount(const struct pc_spawn_request *request, const struct pc_root *root,
                   struct pc_error *err)
{
    for (size_t i = 0; i < request->bind_count; i++)
        if (mount_bind(&request->binds[i], root, err) < 0)
            return -1;
    return 0;
}

int pc_binds_mount_tmpfs(const struct pc_spawn_request *request, const struct pc_root *root,
                         struct pc_error *err)
{
    for (size_t i = 0; i < request->tmpfs_count; i++) {
        const struct pc_tmpfs *tmpfs = &request->tmpfs[i];
        char options[PC_TMPFS_OPTIONS_MAX];

        pc_tmpfs_options(options, tmpfs->mode, tmpfs->size, 0);
        if (pc_mount_beneath(root->fd, tmpfs->target, PC_NODE_DIRECTORY, 0755, root->force_walk,
                             "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, options, PC_STEP_MOUNT_TMPFS,
                             err) < 0)
            return -1;
    }
    return 0;
}
