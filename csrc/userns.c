/* Child side: what a new user namespace (rootless mode) needs.
 *
 * Runs between clone and exec: async-signal-safe only.
 *
 * A caller without CAP_SYS_ADMIN gets its namespaces through a new user
 * namespace (CLONE_NEWUSER), in which it holds every capability over what
 * that namespace owns. Until the namespace has id maps, its processes are
 * nobody: they can neither mount nor create a file. The parent cannot
 * write the maps on the CLONE_VM path (it sleeps until the exec), so the
 * child writes its own, which the kernel allows for a single line mapping
 * the caller's own id (user_namespaces(7)); the lines are built by the
 * caller (pycontain/_userns.py).
 *
 * Inside such a namespace mknod is refused, so /dev's device nodes are
 * bind mounts of the host's own (as bubblewrap's --dev does): a bind keeps
 * the flags of the host's /dev mount, so the nodes work there, and reach
 * the same devices a root container's mknod would make.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

static int write_file(const char *path, const char *text, struct pc_error *err)
{
    size_t length = 0;
    ssize_t written;
    int fd = pc_open_nocancel(path, O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return pc_fail(err, PC_STEP_USERNS_MAP, errno, path);
    while (text[length] != '\0')
        length++;
    /* A map is taken whole from one write, or refused. */
    written = pc_write_nocancel(fd, text, length);
    if (written != (ssize_t)length) {
        int saved = written < 0 ? errno : EIO;

        pc_close_nocancel(fd);
        return pc_fail(err, PC_STEP_USERNS_MAP, saved, path);
    }
    pc_close_nocancel(fd);
    return 0;
}

int pc_userns_write_maps(const struct pc_spawn_request *request, struct pc_error *err)
{
    if (!(request->namespaces & CLONE_NEWUSER))
        return 0;
    /* "deny" first: an unprivileged gid_map is only taken once setgroups
     * is off for good, so that no process inside can drop a supplementary
     * group the caller was denied access through. */
    if (write_file("/proc/self/setgroups", "deny", err) < 0 ||
        write_file("/proc/self/uid_map", request->uid_map, err) < 0 ||
        write_file("/proc/self/gid_map", request->gid_map, err) < 0)
        return -1;
    return 0;
}

/* A bind keeps the flags of the host's /dev mount, which may lack nosuid
 * and noexec: add them (a device node needs no exec or setuid), keeping
 * what the user namespace locked (read-only, the access-time mode), which
 * a remount may not change. Returns 0 or an errno. */
static int seal_device(int dev, const char *path, int source)
{
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC;
    struct statfs host;
    int bound, failed = 0;

    if (fstatfs(source, &host) < 0)
        return errno;
    flags |= pc_locked_mount_flags(&host);
    /* Opened again: the remount applies to the bind at its root. */
    bound = pc_openat_nocancel(dev, path + 5, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (bound < 0)
        return errno;
    if (pc_mount_on_fd(NULL, bound, NULL, flags, NULL) < 0)
        failed = errno;
    pc_close_nocancel(bound);
    return failed;
}

int pc_userns_bind_device(int dev, const char *path, struct pc_error *err)
{
    struct pc_fd_path source_path;
    int source, target, failed = 0;

    /* The host's node, by its host path: the child's root is still the
     * host's "/", and nothing of a layer is on the way. */
    source = pc_open_nocancel(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (source < 0)
        return pc_fail(err, PC_STEP_MOUNT_DEV, errno, path);
    /* An empty file in the new /dev (path + 5: relative to it) to bind
     * onto; made where no layer reaches, like the nodes it replaces. */
    if (mknodat(dev, path + 5, S_IFREG | 0666, 0) < 0) {
        failed = errno;
        pc_close_nocancel(source);
        return pc_fail(err, PC_STEP_MKNOD, failed, path);
    }
    target = pc_openat_nocancel(dev, path + 5, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (target < 0) {
        failed = errno;
        pc_close_nocancel(source);
        return pc_fail(err, PC_STEP_MOUNT_DEV, failed, path);
    }
    pc_fd_path(&source_path, source);
    if (pc_mount_on_fd(source_path.text, target, NULL, MS_BIND, NULL) < 0)
        failed = errno;
    pc_close_nocancel(target);
    if (failed == 0)
        failed = seal_device(dev, path, source);
    pc_close_nocancel(source);
    return failed == 0 ? 0 : pc_fail(err, PC_STEP_MOUNT_DEV, failed, path);
}
