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
 *       proc sys dev ...   mounted onto fds opened beneath root/ (beneath.c)
 *     dev/                 /dev, built here (where no layer reaches) and
 *                          then moved onto root/dev
 *     masked/              read-only: what is bound over masked paths
 *
 * Nothing a layer provides is ever named by a path string: the overlay's
 * root is held as an fd (struct pc_root) from its mount to pivot_root, and
 * every mount point is opened beneath it. Every mount is nosuid; every
 * mount but /dev and /dev/pts (which hold pycontain's own device nodes) is
 * nodev, so a setuid binary or a device node in a layer gains nothing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

/* From linux/mount.h (5.12), which older headers lack; the syscall's number
 * is the same on every architecture. */
#define PC_SYS_mount_setattr 442
#define PC_MOUNT_ATTR_RDONLY 0x00000001ULL
#define PC_MOUNT_ATTR_NOSUID 0x00000002ULL
#define PC_MOUNT_ATTR_NODEV  0x00000004ULL
#define PC_MOUNT_ATTR_NOEXEC 0x00000008ULL
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

/* mkdir in a directory of the scratch tmpfs, which only pycontain fills. */
static int make_dir_at(int dir, const char *name, mode_t mode, struct pc_error *err)
{
    if (mkdirat(dir, name, mode) < 0 && errno != EEXIST)
        return pc_fail(err, PC_STEP_MKDIR, errno, name);
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
    int reopened = pc_open_nocancel(path, O_PATH | O_DIRECTORY | O_CLOEXEC);

    if (reopened < 0)
        return pc_fail(err, PC_STEP_OPEN_LAYER, errno, path);
    /* The caller checked the directory it opened; mount no other one. */
    if (fstat(fd, &checked) < 0 || fstat(reopened, &now) < 0 || checked.st_dev != now.st_dev ||
        checked.st_ino != now.st_ino) {
        pc_close_nocancel(reopened);
        return pc_fail(err, PC_STEP_OPEN_LAYER, ESTALE, path);
    }
    if (dup3(reopened, fd, O_CLOEXEC) < 0) {
        pc_close_nocancel(reopened);
        return pc_fail(err, PC_STEP_OPEN_LAYER, errno, path);
    }
    pc_close_nocancel(reopened);
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

/* The directory `name` in `dir` (crossing a mount on it), checked to be a
 * mount of filesystem type `magic`: proof that the mount just made is the
 * one the fd is on. */
static int open_mount_root(int dir, const char *name, long magic, int force_walk)
{
    struct statfs info;
    int fd = pc_open_beneath(dir, name, PC_NODE_DIRECTORY, 0, 0, force_walk);

    if (fd < 0)
        return -1;
    if (fstatfs(fd, &info) < 0 || (long)info.f_type != magic) {
        pc_close_nocancel(fd);
        errno = EXDEV;
        return -1;
    }
    return fd;
}

/* The scratch directory is a host path the parent chose and checked (a
 * directory, not a symlink), resolved here before anything of a layer is
 * mounted: no layer can redirect it. Checked again against the parent's fd,
 * so the tmpfs goes exactly where the parent looked. */
static int mount_scratch(const struct pc_spawn_request *request, const struct pc_overlay *overlay,
                         struct pc_error *err)
{
    const char *scratch = request->scratch_dir;
    char options[PC_TMPFS_OPTIONS_MAX];
    struct stat checked, now;
    struct statfs filesystem;
    int under, scratch_root, failed = 0;

    under = pc_open_nocancel(scratch, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (under < 0)
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, errno, scratch);
    if (fstat(overlay->scratch_fd, &checked) < 0 || fstat(under, &now) < 0 ||
        checked.st_dev != now.st_dev || checked.st_ino != now.st_ino) {
        pc_close_nocancel(under);
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, ESTALE, scratch);
    }
    /* A tmpfs private to this namespace holds the overlay's mount point and
     * its throwaway writable layer: nothing is left on disk, and a crash of
     * the caller cannot leave a mount behind. Bounded: an unbounded tmpfs
     * may take half the RAM. */
    pc_tmpfs_options(options, 0700, request->scratch_size, 0);
    if (pc_mount_on_fd("tmpfs", under, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0) {
        int saved = errno;

        pc_close_nocancel(under);
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, saved, scratch);
    }
    pc_close_nocancel(under);
    /* The options name the tmpfs by the fd number the parent reserved. */
    scratch_root = pc_open_nocancel(scratch, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (scratch_root < 0)
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, errno, scratch);
    if (fstatfs(scratch_root, &filesystem) < 0)
        failed = errno;
    else if (filesystem.f_type != TMPFS_MAGIC)
        failed = EXDEV; /* not the tmpfs just mounted */
    else if (dup3(scratch_root, overlay->scratch_fd, O_CLOEXEC) < 0)
        failed = errno;
    pc_close_nocancel(scratch_root);
    if (failed != 0)
        return pc_fail(err, PC_STEP_MOUNT_SCRATCH, failed, scratch);
    return 0;
}

int pc_rootfs_mount_overlay(const struct pc_spawn_request *request,
                            const struct pc_overlay *overlay, struct pc_root *root,
                            struct pc_error *err)
{
    int scratch = overlay->scratch_fd;
    struct stat info;

    if (mount_scratch(request, overlay, err) < 0)
        return -1;
    root->scratch_fd = scratch;
    if (request->upper_fd < 0) {
        /* 0755: this becomes the mode of the container's "/". */
        if (make_dir_at(scratch, "upper", 0755, err) < 0 ||
            make_dir_at(scratch, "work", 0700, err) < 0)
            return -1;
    }
    if (make_dir_at(scratch, "root", 0755, err) < 0)
        return -1;
    /* Every directory in the options and the target are fd numbers,
     * relative to here (see overlay.c). nosuid, nodev: a layer's setuid
     * binaries and device nodes count for nothing. */
    if (chdir("/proc/self/fd") < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, "/proc/self/fd");
    if (mount("overlay", overlay->target, "overlay", MS_NOSUID | MS_NODEV, overlay->options) < 0)
        return pc_fail(err, PC_STEP_MOUNT_OVERLAY, errno, NULL);
    root->fd = open_mount_root(scratch, "root", OVERLAYFS_SUPER_MAGIC, 1);
    if (root->fd < 0 || fstat(root->fd, &info) < 0)
        return pc_fail(err, PC_STEP_MOUNT_OVERLAY, errno, "root");
    root->dev = info.st_dev;
    root->ino = info.st_ino;
    /* Hooks (pre_pivot) start in the new root. Nothing below uses the
     * current directory. */
    if (fchdir(root->fd) < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, "root");
    return 0;
}

int pc_rootfs_mount_proc(struct pc_root *root, struct pc_error *err)
{
    int proc, rc;

    /* Mounted before pivot_root: the kernel allows proc and sysfs in a user
     * namespace only while a fully visible instance is still reachable. This
     * proc shows the child's own PID namespace. */
    if (pc_mount_beneath(root->fd, "/proc", PC_NODE_DIRECTORY, 0555, root->force_walk, "proc",
                         "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, PC_STEP_MOUNT_PROC,
                         err) < 0)
        return -1;
    proc = open_mount_root(root->fd, "/proc", PROC_SUPER_MAGIC, root->force_walk);
    if (proc < 0)
        return pc_fail(err, PC_STEP_MOUNT_PROC, errno, "/proc");
    /* What /proc shows of the host (kernel settings, memory, keys) is
     * made read-only or masked, as container runtimes do (kernelfs.c). */
    rc = pc_kernelfs_prepare_masks(root, err);
    if (rc == 0)
        rc = pc_kernelfs_protect_proc(root, proc, err);
    pc_close_nocancel(proc);
    return rc;
}

/* Every mount of the tree at `fd` read-only, nosuid, nodev, noexec: the
 * host's /sys comes with submounts (cgroup hierarchies, tracing, ...) that a
 * remount of its top would leave writable. mount_setattr (Linux 5.12) sets
 * them all at once; it only adds flags, so the ones a user namespace locks
 * (the source's atime mode) are kept. */
static int make_tree_read_only(int fd)
{
    struct {
        unsigned long long attr_set, attr_clr, propagation, userns_fd;
    } attr = {PC_MOUNT_ATTR_RDONLY | PC_MOUNT_ATTR_NOSUID | PC_MOUNT_ATTR_NODEV |
                  PC_MOUNT_ATTR_NOEXEC,
              0, 0, 0};

    return (int)syscall(PC_SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr,
                        sizeof attr);
}

int pc_rootfs_mount_sys(const struct pc_spawn_request *request, const struct pc_root *root,
                        struct pc_error *err)
{
    /* In a user namespace the kernel mounts sysfs only for a network
     * namespace that user namespace owns; with the host's network the
     * host's /sys (with its submounts, which a user namespace cannot bind
     * apart) is bound instead, then made read-only below. */
    int host_sys = (request->namespaces & (CLONE_NEWUSER | CLONE_NEWNET)) == CLONE_NEWUSER;
    int sys, rc;

    /* sysfs shows the child's network namespace; read-only as in other
     * container runtimes. */
    if (pc_mount_beneath(root->fd, "/sys", PC_NODE_DIRECTORY, 0555, root->force_walk,
                         host_sys ? "/sys" : "sysfs", host_sys ? NULL : "sysfs",
                         host_sys ? MS_BIND | MS_REC : MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                         NULL, PC_STEP_MOUNT_SYS, err) < 0)
        return -1;
    sys = open_mount_root(root->fd, "/sys", SYSFS_MAGIC, root->force_walk);
    if (sys < 0)
        return pc_fail(err, PC_STEP_MOUNT_SYS, errno, "/sys");
    if (host_sys && make_tree_read_only(sys) < 0) {
        rc = errno;
        pc_close_nocancel(sys);
        return pc_fail(err, PC_STEP_MOUNT_SYS, rc, "/sys");
    }
    rc = pc_kernelfs_protect_sys(root, sys, err);
    pc_close_nocancel(sys);
    return rc;
}

/* Paths are absolute for error messages; the calls use path + 5, relative
 * to the new /dev. */
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

/* Fill the new /dev, named by `dev` (its root): nodes and links made
 * relative to the fd, shm and pts mounted onto fds beneath it. */
static int populate_dev(const struct pc_spawn_request *request, int dev, int force_walk,
                        struct pc_error *err)
{
    char options[PC_TMPFS_OPTIONS_MAX];

    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        /* A user namespace may not mknod: bind the host's node instead. */
        if (request->namespaces & CLONE_NEWUSER) {
            if (pc_userns_bind_device(dev, devices[i].path, err) < 0)
                return -1;
        } else if (mknodat(dev, devices[i].path + 5, S_IFCHR | 0666,
                           makedev(devices[i].major, devices[i].minor)) < 0)
            return pc_fail(err, PC_STEP_MKNOD, errno, devices[i].path);
    }
    for (size_t i = 0; i < sizeof dev_links / sizeof dev_links[0]; i++)
        if (symlinkat(dev_links[i].target, dev, dev_links[i].path + 5) < 0)
            return pc_fail(err, PC_STEP_SYMLINK, errno, dev_links[i].path);
    /* nodev, noexec as Docker's /dev/shm; bounded, as Docker's 64 MiB. */
    pc_tmpfs_options(options, 01777, request->shm_size, 0);
    if (pc_mount_beneath(dev, "/shm", PC_NODE_DIRECTORY, 01777, force_walk, "tmpfs", "tmpfs",
                         MS_NOSUID | MS_NODEV | MS_NOEXEC, options, PC_STEP_MOUNT_DEV, err) < 0)
        return -1;
    /* newinstance: the container's ptys are its own, not the host's. */
    if (pc_mount_beneath(dev, "/pts", PC_NODE_DIRECTORY, 0755, force_walk, "devpts", "devpts",
                         MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620",
                         PC_STEP_MOUNT_DEV, err) < 0)
        return -1;
    return 0;
}

int pc_rootfs_mount_dev(const struct pc_spawn_request *request, const struct pc_root *root,
                        struct pc_error *err)
{
    char options[PC_TMPFS_OPTIONS_MAX];
    struct pc_fd_path dev_path;
    int dev, rc;

    /* A fresh, minimal /dev rather than the host's: only the devices
     * ordinary programs expect, none that reach hardware. Built in the
     * scratch tmpfs, where nothing of a layer is, then moved into place:
     * a layer's dev/null or dev/shm cannot redirect what is made here. */
    pc_tmpfs_options(options, 0755, request->dev_size, request->dev_inodes);
    if (pc_mount_beneath(root->scratch_fd, "/dev", PC_NODE_DIRECTORY, 0755, 1, "tmpfs", "tmpfs",
                         MS_NOSUID | MS_NOEXEC, options, PC_STEP_MOUNT_DEV, err) < 0)
        return -1;
    dev = open_mount_root(root->scratch_fd, "/dev", TMPFS_MAGIC, 1);
    if (dev < 0)
        return pc_fail(err, PC_STEP_MOUNT_DEV, errno, "/dev");
    rc = populate_dev(request, dev, root->force_walk, err);
    pc_fd_path(&dev_path, dev);
    if (rc == 0)
        rc = pc_mount_beneath(root->fd, "/dev", PC_NODE_DIRECTORY, 0755, root->force_walk,
                              dev_path.text, NULL, MS_MOVE, NULL, PC_STEP_MOUNT_DEV, err);
    pc_close_nocancel(dev);
    return rc;
}

int pc_rootfs_seal_dev(const struct pc_root *root, struct pc_error *err)
{
    struct pc_fd_path dev_path;
    int dev = open_mount_root(root->fd, "/dev", TMPFS_MAGIC, root->force_walk), rc = 0;

    /* A device node needs a mount without nodev, and in a writable /dev a
     * program given CAP_MKNOD (capabilities=) could make one for any host
     * device: read-only, once the caller's binds and tmpfs mounts inside it
     * have their mount points. shm, pts and those mounts are mounts of their
     * own and keep their flags. */
    if (dev < 0)
        return pc_fail(err, PC_STEP_SEAL_DEV, errno, "/dev");
    pc_fd_path(&dev_path, dev);
    if (mount(NULL, dev_path.text, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC,
              NULL) < 0)
        rc = pc_fail(err, PC_STEP_SEAL_DEV, errno, "/dev");
    pc_close_nocancel(dev);
    return rc;
}

int pc_rootfs_pivot(struct pc_root *root, struct pc_error *err)
{
    struct stat now;

    /* From the held fd, never from the current directory (a pre_pivot hook
     * may have changed it), and only if the fd is still the overlay's root
     * (a hook may have closed it and reused the number). */
    if (fstat(root->fd, &now) < 0 || now.st_dev != root->dev || now.st_ino != root->ino)
        return pc_fail(err, PC_STEP_PIVOT_ROOT, ESTALE, NULL);
    if (fchdir(root->fd) < 0)
        return pc_fail(err, PC_STEP_CHDIR, errno, "/");
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
    pc_close_nocancel(root->fd);
    pc_close_nocancel(root->masked_dir_fd);
    pc_close_nocancel(root->masked_file_fd);
    root->fd = root->masked_dir_fd = root->masked_file_fd = -1;
    return 0;
}
