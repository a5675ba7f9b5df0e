/* Child side: handing the throwaway writable layer to the parent.
 *
 * Runs between clone and exec: async-signal-safe only (sendmsg is; the raw
 * one, as libc's is a cancellation point, see nocancel.h).
 *
 * Without a writedir the overlay's upper directory lives on the scratch
 * tmpfs, which pivot_root detaches from every tree: no path reaches it
 * afterwards, from the container or from the host. When the caller asks to
 * read what the program changed (Process.changes()), the child sends an fd
 * of that directory over a socket the parent made. The fd keeps the tmpfs
 * alive and readable, beneath itself only, after the container's mount
 * namespace is gone, until the parent closes it; the host's mount table
 * never shows it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

int pc_upper_share(const struct pc_spawn_request *request, const struct pc_root *root,
                   struct pc_error *err)
{
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    char byte = 'u';
    struct iovec data = {.iov_base = &byte, .iov_len = 1};
    struct msghdr message = {
        .msg_iov = &data,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof control.buffer,
    };
    struct cmsghdr *header;
    ssize_t sent;
    int upper;

    if (request->upper_socket < 0 || request->upper_fd >= 0)
        return 0;
    upper = pc_openat_nocancel(root->scratch_fd, "upper",
                               O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (upper < 0)
        return pc_fail(err, PC_STEP_SHARE_UPPER, errno, "upper");
    memset(control.buffer, 0, sizeof control.buffer);
    header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &upper, sizeof(int));
    do
        sent = syscall(SYS_sendmsg, request->upper_socket, &message, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    pc_close_nocancel(upper);
    if (sent < 0)
        return pc_fail(err, PC_STEP_SHARE_UPPER, errno, "upper");
    return 0;
}
