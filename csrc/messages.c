/* The error pipe and the fork path's channel: what the child (and the fork
 * path's helper) tell the parent. The message format is in internal.h.
 *
 * The sending side runs between clone and exec (async-signal-safe, raw
 * system calls: nocancel.h); the receiving side checks everything it reads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

static void fill(struct pc_message *message, enum pc_message_kind kind, int value)
{
    /* memset is on POSIX's async-signal-safe list since 2016; the record is
     * zeroed so no stack garbage reaches the parent. */
    memset(message, 0, sizeof *message);
    message->kind = kind;
    message->value = value;
}

int pc_send(int fd, enum pc_message_kind kind, int value)
{
    struct pc_message message;

    fill(&message, kind, value);
    return pc_write_nocancel(fd, &message, sizeof message) == (ssize_t)sizeof message ? 0 : -1;
}

int pc_send_fd(int fd, enum pc_message_kind kind, int value, int passed_fd)
{
    struct pc_message message;
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = &message, .iov_len = sizeof message};
    struct msghdr header = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof control.buffer,
    };
    struct cmsghdr *cmsg;

    fill(&message, kind, value);
    memset(&control, 0, sizeof control);
    cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &passed_fd, sizeof passed_fd);
    /* sendmsg(3) is a cancellation point: the raw call (nocancel.h). */
    return syscall(SYS_sendmsg, fd, &header, MSG_NOSIGNAL) == (long)sizeof message ? 0 : -1;
}

ssize_t pc_receive(int fd, struct pc_message *message, int *passed_fd)
{
    union {
        char buffer[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = message, .iov_len = sizeof *message};
    struct msghdr header = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof control.buffer,
    };
    ssize_t n;

    *passed_fd = -1;
    do
        n = recvmsg(fd, &header, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header); cmsg != NULL;
         cmsg = CMSG_NXTHDR(&header, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; (i + 1) * sizeof(int) <= cmsg->cmsg_len - CMSG_LEN(0); i++) {
            int received;

            memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof received);
            if (*passed_fd < 0)
                *passed_fd = received;
            else
                close(received); /* one fd per message, never more */
        }
    }
    /* A message cut short (MSG_TRUNC) is not one of ours. */
    if (header.msg_flags & MSG_TRUNC) {
        if (*passed_fd >= 0)
            close(*passed_fd);
        *passed_fd = -1;
        errno = EIO;
        return -1;
    }
    return n;
}

void pc_message_sanitize(struct pc_message *message)
{
    message->error.detail[PC_DETAIL_MAX - 1] = '\0';
    if (message->error.step <= PC_STEP_NONE || message->error.step >= PC_STEP_COUNT)
        message->error.step = PC_STEP_NONE;
}

static long long now_ms(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int pc_read_messages(int fd, int timeout_ms, pid_t *pid, int *hook, struct pc_error *err)
{
    long long deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    int failed = 0;

    *hook = -1;
    for (;;) {
        struct pc_message message;
        ssize_t n = read(fd, &message, sizeof message);

        if (n == 0)
            return failed;
        if (n < 0) {
            int wait_ms = -1;

            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -1;
            /* Nothing there. timeout 0: the writers are known to be done. */
            if (timeout_ms == 0)
                return failed;
            if (timeout_ms > 0) {
                long long left = deadline - now_ms();

                if (left <= 0) {
                    errno = ETIMEDOUT;
                    return -1;
                }
                wait_ms = left > 1000000 ? 1000000 : (int)left;
            }
            struct pollfd readable = {.fd = fd, .events = POLLIN};
            if (poll(&readable, 1, wait_ms) < 0 && errno != EINTR)
                return -1;
            continue;
        }
        if (n != (ssize_t)sizeof message) {
            errno = EIO;
            return -1;
        }
        pc_message_sanitize(&message);
        switch (message.kind) {
        case PC_MESSAGE_ERROR:
            *err = message.error;
            failed = 1;
            break;
        case PC_MESSAGE_PID:
            *pid = message.value;
            break;
        case PC_MESSAGE_HOOK_ENTER:
        case PC_MESSAGE_HOOK_LEAVE:
            if (message.value != PC_HOOK_PRE_PIVOT && message.value != PC_HOOK_PRE_EXEC) {
                errno = EIO;
                return -1;
            }
            *hook = message.kind == PC_MESSAGE_HOOK_ENTER ? message.value : -1;
            break;
        default:
            errno = EIO;
            return -1;
        }
    }
}
