/* Child side: build the container's root filesystem and move into it.
 *
 * Runs between clone and exec: async-signal-safe only (no malloc, stdio,
 * strerror, locks). Every path is a literal or was prepared by the parent.
 *
 * The layout, all inside the child's own mount namespace (so nothing of it
 * is ever visible on the host, and it all vanishes with the namespace):
 *
 *   <scratch_dir>          tmpfs, private to this namespace (its root also on
 *                          the fd number the parent reserved)
 *     upper/ work/         the overlay's writable layer, unless a writedir
 *     root/                the overlay: layers + writable layer
 *       proc sys dev ...   kernel filesystems, mounted before pivot_root
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "internal.h"

/* mkdir that accepts an existing directory: mount points are created in the
 * writable layer only where the layers lack them. */
static int make_dir(const char *path, mode_t mode, struct pc_error *err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return pc_fail(err, PC_STEP_MKDIR, errno, path);
    return 0;
}

int pc_rootfs_make_private(struct pc_error *err)
{
    /* The new mount namespace starts as a copy of the host's, with shared
     * propagation: without this, our mounts would propagate to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return pc_fail(err, PC_STEP_MAKE_PRIVATE, errno, "/");
    return 0;
}

/* Reopen `path` here and put it on fd number `fd`, which the caller opened
 * on the same path: overlayfs refuses directories of another mount
 * namespace, and the caller's fds are of the caller's namespace. */
static int reopen_directory(const char *path, int fd, struct pc_error *err)
{
    struct stat checked, now;
    int reopened = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);

    if (reopened < 0)
        return pc_fail(err, PC_STEP_OPEN_LAYER, errno, path);
    /* The caller checked the directory it opened; mount no other one. */
    if (fstat(fd, &checked) < 0 || fstat(reopened, &now) < 0 || checked.st_dev != now.st_dev ||
        checked.st_ino != now.st_ino) {
        close(reopened);
        return pc_fail(err, PC_STEP_OPEN_LAYER, ESTALE, path);
    }
    if (dup3(reopened, fd, O_CLOEXEC) < 0) {
        close(reopened);
        return pc_fail(err, PC_STEP_OPEN_LAYER, errno, path);
    }
    close(reopened);
    return 0;
}

int pc_rootfs_open_layers(const struct pc_spawn_request *request, struct pc_error *err)
{
    for (size_t i = 0; i < request->layer_count; i++)
        if (reopen_directory(request->layer_paths[i], request->layer_fds[i], err) < 0)
            return -1;
    if (request->upper_fd >= 0 &&
        (reopen_directory(request->upper_path, request->upper_fd, err) < 0 ||
         reopen_directory(request->work_path, request->work_fd, err) < 0))
        return -1;
    return 0;
}

int pc_rootfs_mount_overlay(const struct pc_spawn_request *request,
                            const struct pc_overlay *overlay, struct pc_error *err)
{
    const char *scratch = request->scratch_dir;
    int scratch_root;

    /* A tmpfs private to this namespace holds the overlay's mount point and
     * its throwaway writable layer: nothing is left on disk, and a crash of
     * the caller cannot leave a mount behind. */
    if (mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700") < 0)
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, errno, scratch);
    /* The options name the tmpfs by the fd number the parent reserved. */
    scratch_root = open(scratch, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (scratch_root < 0 || dup3(scratch_root, overlay->scratch_fd, O_CLOEXEC) < 0)
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, errno, scratch);
    close(scratch_root);
    if (fchdir(overlay->scratch_fd) < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, scratch);
    if (request->upper_fd < 0) {
        /* 0755: this becomes the mode of the container's "/". */
        if (make_dir("upper", 0755, err) < 0 || make_dir("work", 0700, err) < 0)
            return -1;
    }
    if (make_dir("root", 0755, err) < 0)
        return -1;
    /* Every directory in the options and the target are fd numbers,
     * relative to here (see overlay.c). */
    if (chdir("/proc/self/fd") < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, "/proc/self/fd");
    if (mount("overlay", overlay->target, "overlay", 0, overlay->options) < 0)
        return pc_fail(err, PC_STEP_MOUNT_OVERLAY, errno, NULL);
    if (chdir(overlay->target) < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, "root");
    return 0;
}

int pc_rootfs_mount_proc_sys(struct pc_error *err)
{
    /* Mounted before pivot_root: the kernel allows proc and sysfs in a user
     * namespace only while a fully visible instance is still reachable. This
     * proc shows the child's own PID namespace. */
    if (make_dir("proc", 0555, err) < 0)
        return -1;
    if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        return pc_fail(err, PC_STEP_MOUNT_PROC, errno, "/proc");
    if (make_dir("sys", 0555, err) < 0)
        return -1;
    /* sysfs shows the child's network namespace; read-only as in other
     * container runtimes. */
    if (mount("sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        return pc_fail(err, PC_STEP_MOUNT_SYS, errno, "/sys");
    return 0;
}

/* Paths are absolute for error messages; the calls use path + 1, relative to
 * the new root (the cwd until pivot_root). */
static const struct device {
    const char *path;
    unsigned int major, minor;
} devices[] = {
    {"/dev/null", 1, 3},   {"/dev/zero", 1, 5},    {"/dev/full", 1, 7},
    {"/dev/random", 1, 8}, {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0},
};

static const struct link {
    const char *target, *path;
} dev_links[] = {
    {"/proc/self/fd", "/dev/fd"},       {"/proc/self/fd/0", "/dev/stdin"},
    {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
    {"pts/ptmx", "/dev/ptmx"},
};

int pc_rootfs_mount_dev(struct pc_error *err)
{
    /* A fresh, minimal /dev rather than the host's: only the devices
     * ordinary programs expect, none that reach hardware. */
    if (make_dir("dev", 0755, err) < 0)
        return -1;
    if (mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755") < 0)
        return pc_fail(err, PC_STEP_MOUNT_DEV, errno, "/dev");
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++)
        if (mknod(devices[i].path + 1, S_IFCHR | 0666,
                  makedev(devices[i].major, devices[i].minor)) < 0)
            return pc_fail(err, PC_STEP_MKNOD, errno, devices[i].path);
    for (size_t i = 0; i < sizeof dev_links / sizeof dev_links[0]; i++)
        if (symlink(dev_links[i].target, dev_links[i].path + 1) < 0)
            return pc_fail(err, PC_STEP_SYMLINK, errno, dev_links[i].path);
    if (make_dir("dev/shm", 01777, err) < 0 || make_dir("dev/pts", 0755, err) < 0)
        return -1;
    if (mount("tmpfs", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
        return pc_fail(err, PC_STEP_MOUNT_DEV, errno, "/dev/shm");
    /* newinstance: the container's ptys are its own, not the host's. */
    if (mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0)
        return pc_fail(err, PC_STEP_MOUNT_DEV, errno, "/dev/pts");
    return 0;
}

int pc_rootfs_pivot(struct pc_error *err)
{
    /* pivot_root(".", ".") stacks the old root on top of the new one at "/";
     * detaching "." then removes it (and the scratch tmpfs with it; the
     * overlay keeps what it uses alive). No directory for the old root is
     * needed. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        return pc_fail(err, PC_STEP_PIVOT_ROOT, errno, NULL);
    if (umount2(".", MNT_DETACH) < 0)
        return pc_fail(err, PC_STEP_DETACH_OLD_ROOT, errno, NULL);
    if (chdir("/") < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, "/");
    return 0;
}
