/* pycontain-init's wait mode: the init of a warm pool entry.
 *
 * A pool (pycontain/_pool.py) makes its entries ahead of time through the
 * ordinary spawn path, every container-level step done (mounts, pivot,
 * identity, capabilities, no_new_privs, seccomp, cgroup), with this init
 * exec'd as
 *
 *   pycontain-init STATUS_FD OWNER_PIDFD wait REQUEST_FD
 *
 * It waits for one request (internal.h: struct pc_warm_request) on the
 * SOCK_SEQPACKET socket REQUEST_FD: the program's paths, argv, environment,
 * cwd and signal mask, its stdio and pass_fds as SCM_RIGHTS. Then it starts
 * the program as it does without a request (init.c), and is an ordinary
 * init from there on. While it waits it watches its owner: it exits when
 * the owner has exited (OWNER_PIDFD, with die_with_parent) or when the
 * pool's end of the socket is closed (every copy of it: the owner died, or
 * the pool let the entry go).
 *
 * No libc, no allocation but one mapping made when the init starts: see
 * init.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "../internal.h"
#include "sys.h"
#include "waiting.h"

/* Where the request is received: the message, then the pointer arrays
 * built from it (at most one string per byte of the message). */
#define POINTERS_MAX (PC_WARM_MAX_SIZE + 3)
#define AREA_SIZE    (PC_WARM_MAX_SIZE + POINTERS_MAX * sizeof(char *))

/* Point `into[0..count-1]` at the next `count` strings of [*cursor, end),
 * NULL after them; -1 if they do not fit. */
static int take_strings(char **cursor, char *end, char **into, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        char *start = *cursor;

        while (*cursor < end && **cursor != '\0')
            (*cursor)++;
        if (*cursor == end)
            return -1;
        (*cursor)++;
        into[i] = start;
    }
    into[count] = 0;
    return 0;
}

static int parse(char *message, long size, struct init_program *program)
{
    const struct pc_warm_request *header = (const struct pc_warm_request *)message;
    char **pointers = (char **)(message + PC_WARM_MAX_SIZE);
    char *cursor = message + sizeof *header, *end = message + size;
    uint64_t strings;

    if (size < (long)sizeof *header || header->magic != PC_WARM_MAGIC ||
        header->fd_count != (uint32_t)program->fd_count || header->argc < 1 || header->pathc < 1 ||
        header->has_cwd > 1)
        return -1;
    strings = (uint64_t)header->argc + header->envc + header->pathc;
    if (strings + 3 > POINTERS_MAX)
        return -1;
    program->argv = pointers;
    program->envp = program->argv + header->argc + 1;
    program->paths = program->envp + header->envc + 1;
    program->path_count = header->pathc;
    if (take_strings(&cursor, end, program->argv, header->argc) < 0 ||
        take_strings(&cursor, end, program->envp, header->envc) < 0 ||
        take_strings(&cursor, end, program->paths, header->pathc) < 0)
        return -1;
    program->cwd = 0;
    if (header->has_cwd) {
        char *cwd[2];

        if (take_strings(&cursor, end, cwd, 1) < 0)
            return -1;
        program->cwd = cwd[0];
    }
    for (int i = 0; i < program->fd_count; i++)
        if (header->targets[i] < 0)
            return -1;
    program->targets = header->targets;
    program->signal_mask = header->signal_mask;
    return 0;
}

/* One message with its fds; returns its size, 0 at the end, -1 (-errno in
 * *error) on failure. */
static long receive(int request_fd, char *message, int *fds, int *fd_count)
{
    union {
        char buffer[CMSG_SPACE(PC_WARM_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = message, .iov_len = PC_WARM_MAX_SIZE};
    struct msghdr header = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof control.buffer,
    };
    long size = sys3(SYS_recvmsg, request_fd, &header, MSG_CMSG_CLOEXEC);

    *fd_count = 0;
    if (size <= 0)
        return size;
    /* The pool sends one SCM_RIGHTS header (CMSG_NXTHDR is libc's). */
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header);

    if (cmsg != 0 && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS)
        for (size_t i = 0; (i + 1) * sizeof(int) <= cmsg->cmsg_len - CMSG_LEN(0); i++)
            if (*fd_count < PC_WARM_MAX_FDS)
                __builtin_memcpy(&fds[(*fd_count)++], CMSG_DATA(cmsg) + i * sizeof(int),
                                 sizeof(int));
    /* Cut short (a message too long, or fds beyond RLIMIT_NOFILE): not the
     * request the pool sent. */
    if (header.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
        return -EMSGSIZE;
    return size;
}

int init_wait_for_request(int request_fd, int owner_fd, struct init_program *program,
                          struct pc_error *err, int *malformed)
{
    static int fds[PC_WARM_MAX_FDS];
    char *area = (char *)sys6(SYS_mmap, 0, AREA_SIZE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct pollfd watched[2] = {
        {.fd = request_fd, .events = POLLIN},
        {.fd = owner_fd, .events = POLLIN},
    };

    *malformed = 0;
    if ((unsigned long)area > -4096UL)
        return -1; /* cannot take a request: the pool sees the entry end */
    for (;;) {
        long ready = sys5(SYS_ppoll, watched, owner_fd >= 0 ? 2 : 1, 0, 0, 8);
        long size;

        if (ready < 0)
            continue;
        /* The owner died: no one will ever send a request. */
        if (owner_fd >= 0 && watched[1].revents != 0)
            return -1;
        if (watched[0].revents == 0)
            continue;
        size = receive(request_fd, area, fds, &program->fd_count);
        if (size == -EINTR || size == -EAGAIN)
            continue;
        if (size == 0)
            return -1; /* the pool let this entry go */
        program->fds = fds;
        if (size < 0 || parse(area, size, program) < 0) {
            *malformed = 1;
            pc_fail(err, PC_STEP_INIT, size < 0 ? (int)-size : EPROTO, "request");
            return -1;
        }
        return 0;
    }
}

/* Runs in the program's process (a copy of the init, which sleeps until
 * its exec). */
int init_place_program(const struct init_program *program, int *request_fd, struct pc_error *err)
{
    int high[PC_WARM_MAX_FDS], above = 2;

    if (program->cwd != 0) {
        long failed = sys1(SYS_chdir, program->cwd);

        if (failed < 0)
            return pc_fail(err, PC_STEP_CHDIR, (int)-failed, program->cwd);
    }
    for (int i = 0; i < program->fd_count; i++)
        if (program->targets[i] > above)
            above = program->targets[i];
    /* The request socket first: its number is free in the caller, so a
     * target may have it, and the placed fd would replace the socket (the
     * caller would take the end of the socket for an exec, and an error
     * record would go to the program's fd). */
    {
        long moved = sys3(SYS_fcntl, *request_fd, F_DUPFD_CLOEXEC, above + 1);

        if (moved < 0)
            return pc_fail(err, PC_STEP_STDIO, (int)-moved, "fds");
        sys1(SYS_close, *request_fd);
        *request_fd = (int)moved;
    }
    /* First every fd above every target, so that placing one cannot replace
     * another not yet placed; all of these are close-on-exec, as is every
     * fd the init holds, so only the placed copies reach the program. */
    for (int i = 0; i < program->fd_count; i++) {
        long fd = sys3(SYS_fcntl, program->fds[i], F_DUPFD_CLOEXEC, above + 1);

        if (fd < 0)
            return pc_fail(err, PC_STEP_STDIO, (int)-fd, "fds");
        high[i] = (int)fd;
    }
    for (int i = 0; i < program->fd_count; i++) {
        long placed = sys3(SYS_dup3, high[i], program->targets[i], 0);

        if (placed < 0)
            return pc_fail(err, PC_STEP_STDIO, (int)-placed, "fds");
    }
    return 0;
}
