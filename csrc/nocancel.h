/* open, openat, close, read, write and ppoll for the child, as raw system
 * calls.
 *
 * The libc wrappers of these are pthread cancellation points: they check
 * the calling thread's cancellation state in its struct pthread. A
 * CLONE_VM child runs on the parent thread's struct pthread (the thread
 * pointer is shared), so a cancellation pending on that thread would start
 * unwinding the parent's stack in the child. glibc's own posix_spawn uses
 * its internal _nocancel forms for the same reason; these are ours. Like
 * every libc call in the child they still set errno, which lives in the
 * parent thread's TLS: the parent reads errno only after clone returns.
 *
 * Async-signal-safe.
 */
#ifndef PYCONTAIN_NOCANCEL_H
#define PYCONTAIN_NOCANCEL_H

#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static inline int pc_open_nocancel(const char *path, int flags)
{
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, 0);
}

static inline int pc_openat_nocancel(int dir, const char *path, int flags)
{
    return (int)syscall(SYS_openat, dir, path, flags, 0);
}

static inline int pc_close_nocancel(int fd)
{
    return (int)syscall(SYS_close, fd);
}

static inline ssize_t pc_read_nocancel(int fd, void *buf, size_t count)
{
    return (ssize_t)syscall(SYS_read, fd, buf, count);
}

static inline ssize_t pc_write_nocancel(int fd, const void *buf, size_t count)
{
    return (ssize_t)syscall(SYS_write, fd, buf, count);
}

/* poll(2) with a timeout in ms (-1: forever), no signal mask change. */
static inline int pc_poll_nocancel(struct pollfd *fds, nfds_t count, int timeout_ms)
{
    struct timespec timeout = {.tv_sec = timeout_ms / 1000,
                               .tv_nsec = (long)(timeout_ms % 1000) * 1000000L};

    return (int)syscall(SYS_ppoll, fds, count, timeout_ms < 0 ? NULL : &timeout, NULL, (size_t)0);
}

#endif
