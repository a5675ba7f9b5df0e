/* Child side: the parts of /proc and /sys that reach the host, masked or
 * made read-only, as container runtimes do.
 *
 * Runs between clone and exec: async-signal-safe only.
 *
 * /proc and /sys are the container's own instances, but some of their
 * files are the host kernel's: its settings (/proc/sys), its memory
 * (/proc/kcore), its keys, timers and interrupts, SysRq. The lists are
 * the union of Docker's, Podman's and runc's example spec: read-only binds
 * over what a program may read, an empty directory or file over what it
 * should not see.
 * A path the kernel does not have (configuration-dependent) is skipped.
 * Every path is opened beneath the instance's root (beneath.c), every mount
 * is nosuid, nodev, noexec.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

#define PROTECTED_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)

/* Paths for error messages; opened relative to the instance's root. */
static const char *const proc_read_only[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};
static const char *const proc_masked[] = {
    "/proc/acpi",        "/proc/asound", "/proc/interrupts",
    "/proc/kcore",       "/proc/keys",   "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi",   "/proc/timer_list",
};
static const char *const sys_masked[] = {
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
};

static int read_only_copy(const struct pc_root *root, int directory, const char *name,
                          struct pc_error *err);

/* The part of `path` below its instance ("/proc/kcore" -> "/kcore"). */
static const char *below(const char *path)
{
    const char *rest = path + 1;

    while (*rest != '/' && *rest != '\0')
        rest++;
    return rest;
}

int pc_kernelfs_prepare_masks(struct pc_root *root, struct pc_error *err)
{
    int empty, masked;

    /* An empty directory and an empty file in the scratch tmpfs, under a
     * read-only bind (read_only_copy) of their directory. */
    if ((mkdirat(root->scratch_fd, "empty", 0555) < 0 && errno != EEXIST) ||
        (mkdirat(root->scratch_fd, "empty/dir", 0555) < 0 && errno != EEXIST) ||
        (mknodat(root->scratch_fd, "empty/file", S_IFREG | 0444, 0) < 0 && errno != EEXIST))
        return pc_fail(err, PC_STEP_MASK, errno, "empty");
    empty = pc_openat_nocancel(root->scratch_fd, "empty",
                               O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (empty < 0)
        return pc_fail(err, PC_STEP_MASK, errno, "empty");
    masked = read_only_copy(root, empty, "masked", err);
    pc_close_nocancel(empty);
    if (masked < 0)
        return -1;
    root->masked_dir_fd =
        pc_openat_nocancel(masked, "dir", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    root->masked_file_fd = pc_openat_nocancel(masked, "file", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    pc_close_nocancel(masked);
    if (root->masked_dir_fd < 0 || root->masked_file_fd < 0)
        return pc_fail(err, PC_STEP_MASK, errno, "masked");
    return 0;
}

/* Bind the empty directory or file over `path`, whichever it is. */
static int mask(const struct pc_root *root, int instance, const char *path, struct pc_error *err)
{
    struct pc_fd_path source;
    struct stat info;
    int target = pc_open_beneath(instance, below(path), PC_NODE_ANY, 0, 0, root->force_walk);
    int failed = 0;

    if (target < 0)
        return errno == ENOENT ? 0 : pc_fail(err, PC_STEP_MASK, errno, path);
    if (fstat(target, &info) < 0)
        failed = errno;
    if (failed == 0) {
        pc_fd_path(&source, S_ISDIR(info.st_mode) ? root->masked_dir_fd : root->masked_file_fd);
        if (pc_mount_on_fd(source.text, target, NULL, MS_BIND, NULL) < 0)
            failed = errno;
    }
    pc_close_nocancel(target);
    return failed == 0 ? 0 : pc_fail(err, PC_STEP_MASK, failed, path);
}

/* A read-only bind of `directory` (the new /proc, or the directory holding
 * the empty directory and file), made on `name` in the scratch tmpfs: a
 * bind from it copies its flags (read-only, nosuid, nodev, noexec), so each
 * path then needs a single mount. Returns an fd of it. */
static int read_only_copy(const struct pc_root *root, int directory, const char *name,
                          struct pc_error *err)
{
    struct pc_fd_path source, target;
    int under, copy, failed = 0;

    if (mkdirat(root->scratch_fd, name, 0555) < 0 && errno != EEXIST)
        return pc_fail(err, PC_STEP_MASK, errno, name);
    under =
        pc_openat_nocancel(root->scratch_fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (under < 0)
        return pc_fail(err, PC_STEP_MASK, errno, name);
    pc_fd_path(&source, directory);
    pc_fd_path(&target, under);
    if (mount(source.text, target.text, NULL, MS_BIND, NULL) < 0)
        failed = errno;
    pc_close_nocancel(under);
    if (failed != 0)
        return pc_fail(err, PC_STEP_MASK, failed, name);
    /* A remount applies to the mount at its root: open the name again,
     * which now crosses into the new bind. */
    copy =
        pc_openat_nocancel(root->scratch_fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (copy < 0)
        return pc_fail(err, PC_STEP_MASK, errno, name);
    if (pc_mount_on_fd(NULL, copy, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | PROTECTED_FLAGS, NULL) <
        0) {
        failed = errno;
        pc_close_nocancel(copy);
        return pc_fail(err, PC_STEP_MASK, failed, name);
    }
    return copy;
}

/* Bind `path` of the read-only copy over the same path of the instance. */
static int make_read_only(const struct pc_root *root, int instance, int read_only_copy_fd,
                          const char *path, struct pc_error *err)
{
    struct pc_fd_path source;
    int target = pc_open_beneath(instance, below(path), PC_NODE_ANY, 0, 0, root->force_walk);
    int copy, failed = 0;

    if (target < 0)
        return errno == ENOENT ? 0 : pc_fail(err, PC_STEP_MASK, errno, path);
    copy = pc_open_beneath(read_only_copy_fd, below(path), PC_NODE_ANY, 0, 0, root->force_walk);
    if (copy < 0)
        failed = errno;
    if (failed == 0) {
        pc_fd_path(&source, copy);
        if (pc_mount_on_fd(source.text, target, NULL, MS_BIND, NULL) < 0)
            failed = errno;
        pc_close_nocancel(copy);
    }
    pc_close_nocancel(target);
    return failed == 0 ? 0 : pc_fail(err, PC_STEP_MASK, failed, path);
}

int pc_kernelfs_protect_proc(const struct pc_root *root, int proc_fd, struct pc_error *err)
{
    int copy = read_only_copy(root, proc_fd, "proc", err);

    if (copy < 0)
        return -1;
    for (size_t i = 0; i < sizeof proc_read_only / sizeof proc_read_only[0]; i++)
        if (make_read_only(root, proc_fd, copy, proc_read_only[i], err) < 0) {
            pc_close_nocancel(copy);
            return -1;
        }
    pc_close_nocancel(copy);
    for (size_t i = 0; i < sizeof proc_masked / sizeof proc_masked[0]; i++)
        if (mask(root, proc_fd, proc_masked[i], err) < 0)
            return -1;
    return 0;
}

int pc_kernelfs_protect_sys(const struct pc_root *root, int sys_fd, struct pc_error *err)
{
    for (size_t i = 0; i < sizeof sys_masked / sizeof sys_masked[0]; i++)
        if (mask(root, sys_fd, sys_masked[i], err) < 0)
            return -1;
    return 0;
}
