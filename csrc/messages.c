/* The error pipe: what the child (and the fork path's helper) tell the
 * parent. The message format is in internal.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

void pc_send(int fd, enum pc_message_kind kind, int value)
{
    struct pc_message message;

    /* memset is on POSIX's async-signal-safe list since 2016; the record is
     * zeroed so no stack garbage reaches the parent. */
    memset(&message, 0, sizeof message);
    message.kind = kind;
    message.value = value;
    (void)!write(fd, &message, sizeof message);
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
        switch (message.kind) {
        case PC_MESSAGE_ERROR:
            /* Keep reading: on the fork path the helper's PID message may
             * still come, and the child is reaped by pid. */
            *err = message.error;
            failed = 1;
            break;
        case PC_MESSAGE_PID:
            *pid = message.value;
            break;
        case PC_MESSAGE_HOOK_ENTER:
            *hook = message.value;
            break;
        case PC_MESSAGE_HOOK_LEAVE:
            *hook = -1;
            break;
        default:
            errno = EIO;
            return -1;
        }
    }
}
