/* Child side: paths resolved beneath a held directory, and mounts made
 * through file descriptors.
 *
 * Runs between clone and exec: async-signal-safe only.
 *
 * Layers are hostile: any name in them may be a symlink, to "/", to a host
 * directory or to "../..". Until pivot_root the process root is still the
 * host's "/", so a mount point or a device node named by a path string
 * relative to the new root could land on the host. Instead, every path
 * inside the container is opened beneath an fd of its root (or of a mount
 * pycontain made), and the mount goes onto that fd (through its
 * /proc/self/fd link), never onto a path string.
 *
 * The rule, the same with openat2 and without it: no component of a
 * destination may be a symlink (ELOOP) or, before the last, anything but a
 * directory (ENOTDIR); "." and ".." are refused up front (pc_check_path).
 * A resolution that can follow no symlink and never goes up stays beneath
 * the directory it started from. Missing components are created (in the
 * writable layer: mkdir -p through fds).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* Write `value` in decimal at out; returns the number of digits. */
static size_t format_decimal(char *out, unsigned long long value)
{
    char digits[24];
    size_t n = 0, i;

    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    for (i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    return n;
}

void pc_fd_path(struct pc_fd_path *path, int fd)
{
    static const char prefix[] = "/proc/self/fd/";
    size_t n = sizeof prefix - 1;

    for (size_t i = 0; i < n; i++)
        path->text[i] = prefix[i];
    n += format_decimal(path->text + n, (unsigned long long)(fd < 0 ? 0 : fd));
    path->text[n] = '\0';
}

/* Append `text` to options[*used..PC_TMPFS_OPTIONS_MAX). */
static void append_text(char *options, size_t *used, const char *text)
{
    for (; *text != '\0' && *used < PC_TMPFS_OPTIONS_MAX - 1; text++)
        options[(*used)++] = *text;
    options[*used] = '\0';
}

void pc_tmpfs_options(char options[PC_TMPFS_OPTIONS_MAX], unsigned int mode,
                      unsigned long long size, unsigned long long inodes)
{
    char number[24];
    size_t used = 0, n;

    options[0] = '\0';
    /* mode= in octal */
    n = 0;
    number[n++] = '0';
    for (int shift = 9; shift >= 0; shift -= 3)
        number[n++] = (char)('0' + ((mode >> shift) & 7));
    number[n] = '\0';
    append_text(options, &used, "mode=");
    append_text(options, &used, number);
    if (size == 0)
        return;
    number[format_decimal(number, size)] = '\0';
    append_text(options, &used, ",size=");
    append_text(options, &used, number);
    if (inodes == 0)
        inodes = (size + PC_TMPFS_BYTES_PER_INODE - 1) / PC_TMPFS_BYTES_PER_INODE;
    number[format_decimal(number, inodes)] = '\0';
    append_text(options, &used, ",nr_inodes=");
    append_text(options, &used, number);
}

unsigned long pc_locked_mount_flags(const struct statfs *source)
{
    unsigned long flags = 0;

    if (source->f_flags & ST_RDONLY)
        flags |= MS_RDONLY;
    if (source->f_flags & ST_NOEXEC)
        flags |= MS_NOEXEC;
    if (source->f_flags & ST_NOATIME)
        flags |= MS_NOATIME;
    else if (source->f_flags & ST_RELATIME)
        flags |= MS_RELATIME;
    else
        flags |= MS_STRICTATIME;
    if (source->f_flags & ST_NODIRATIME)
        flags |= MS_NODIRATIME;
    return flags;
}

int pc_mount_on_fd(const char *source, int target_fd, const char *fstype, unsigned long flags,
                   const void *data)
{
    struct pc_fd_path target;

    pc_fd_path(&target, target_fd);
    return mount(source, target.text, fstype, flags, data);
}

/* Check what a resolved component is. */
static int check_node(int fd, int last, enum pc_node kind)
{
    struct stat info;

    if (fstat(fd, &info) < 0)
        return -1;
    if (S_ISLNK(info.st_mode)) {
        errno = ELOOP;
        return -1;
    }
    if ((!last || kind == PC_NODE_DIRECTORY) && !S_ISDIR(info.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    if (last && kind == PC_NODE_FILE && S_ISDIR(info.st_mode)) {
        errno = EISDIR;
        return -1;
    }
    return 0;
}

/* Open `name` in `dir`, creating it when missing and `create` says so: a
 * directory with `mode`, or (the last component of a file destination) an
 * empty regular file. Never follows a symlink. */
static int open_component(int dir, const char *name, int last, enum pc_node kind, int create,
                          mode_t mode)
{
    int fd = pc_openat_nocancel(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);

    if (fd >= 0 || errno != ENOENT || !create)
        return fd;
    if (last && kind == PC_NODE_FILE) {
        if (mknodat(dir, name, S_IFREG | 0644, 0) < 0 && errno != EEXIST)
            return -1;
    } else if (mkdirat(dir, name, last ? mode : 0755) < 0 && errno != EEXIST) {
        return -1;
    }
    return pc_openat_nocancel(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
}

/* The fallback, and how missing components get created: one component at
 * a time, each opened O_NOFOLLOW beneath the previous one. */
static int walk(int base, const char *path, enum pc_node kind, int create, mode_t mode)
{
    char name[256];
    int dir = base, fd = -1;

    while (*path != '\0') {
        size_t n = 0;
        int last;

        while (*path == '/')
            path++;
        if (*path == '\0')
            break;
        while (path[n] != '\0' && path[n] != '/') {
            if (n == sizeof name - 1) {
                errno = ENAMETOOLONG;
                goto fail;
            }
            name[n] = path[n];
            n++;
        }
        name[n] = '\0';
        path += n;
        while (*path == '/')
            path++;
        last = *path == '\0';
        fd = open_component(dir, name, last, kind, create, mode);
        if (fd < 0 || check_node(fd, last, kind) < 0)
            goto fail;
        if (dir != base)
            pc_close_nocancel(dir);
        dir = fd;
        fd = -1;
    }
    if (dir == base) /* the path named the base itself */
        return fcntl(base, F_DUPFD_CLOEXEC, 3);
    return dir;
fail:
    {
        int saved = errno;

        if (fd >= 0)
            pc_close_nocancel(fd);
        if (dir != base)
            pc_close_nocancel(dir);
        errno = saved;
        return -1;
    }
}

/* Whether `path` has a "." or ".." component: the parent refuses such paths
 * (request.c), and this keeps the walk from ever going up should one come. */
static int has_dot_component(const char *path)
{
    while (*path != '\0') {
        size_t n = 0;

        while (*path == '/')
            path++;
        while (path[n] != '\0' && path[n] != '/')
            n++;
        if ((n == 1 && path[0] == '.') || (n == 2 && path[0] == '.' && path[1] == '.'))
            return 1;
        path += n;
    }
    return 0;
}

int pc_open_beneath(int base, const char *path, enum pc_node kind, int create, mode_t mode,
                    int force_walk)
{
    struct open_how how = {
        .flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    const char *relative = path;
    int fd;

    while (*relative == '/')
        relative++;
    if (has_dot_component(relative)) {
        errno = EINVAL;
        return -1;
    }
    if (force_walk || *relative == '\0')
        return walk(base, relative, kind, create, mode);
    /* One syscall for the whole path, with the kernel enforcing the rule. */
    fd = (int)syscall(SYS_openat2, base, relative, &how, sizeof how);
    if (fd >= 0) {
        if (check_node(fd, 1, kind) < 0) {
            int saved = errno;

            pc_close_nocancel(fd);
            errno = saved;
            return -1;
        }
        return fd;
    }
    /* ENOSYS: before Linux 5.6 (or hidden by a seccomp policy); ENOENT: a
     * component to create. Other errors (ELOOP for a symlink on the way)
     * stand. */
    if (errno == ENOSYS || (errno == ENOENT && create))
        return walk(base, relative, kind, create, mode);
    return -1;
}

int pc_mount_beneath(int base, const char *path, enum pc_node kind, mode_t mode, int force_walk,
                     const char *source, const char *fstype, unsigned long flags, const void *data,
                     enum pc_step step, struct pc_error *err)
{
    int fd = pc_open_beneath(base, path, kind, 1, mode, force_walk);

    if (fd < 0)
        return pc_fail(err, step, errno, path);
    if (pc_mount_on_fd(source, fd, fstype, flags, data) < 0) {
        int saved = errno;

        pc_close_nocancel(fd);
        return pc_fail(err, step, saved, path);
    }
    pc_close_nocancel(fd);
    return 0;
}
