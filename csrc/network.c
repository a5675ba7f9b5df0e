/* The container's network: bringing up the loopback device of a new network
 * namespace.
 *
 * A new network namespace has only `lo`, and it is down: nothing inside could
 * even talk to itself over 127.0.0.1. Bringing it up is one ioctl on any
 * socket of that namespace; the kernel then adds 127.0.0.1/8 and ::1 itself.
 *
 * Async-signal-safe (socket, ioctl, close): it runs in the child between
 * clone and exec when the child's namespace was made by clone or unshare,
 * and on the namespace worker's thread for the namespaces of its pool, so
 * that a spawn that takes one from the pool does not pay for it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "nocancel.h"

int pc_network_loopback_up(struct pc_error *err)
{
    struct ifreq request = {.ifr_name = "lo"};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return pc_fail(err, PC_STEP_LOOPBACK, errno, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &request) < 0)
        goto fail;
    request.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &request) < 0)
        goto fail;
    pc_close_nocancel(fd);
    return 0;
fail:
    pc_fail(err, PC_STEP_LOOPBACK, errno, "lo");
    pc_close_nocancel(fd);
    return -1;
}
