/* Child side: handing the throwaway writable layer to the parent.
 *
 * Runs between clone and exec: async-signal-safe only (the fd goes as an
 * UPPER message through pc_send_fd, messages.c: the raw sendmsg).
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

#include "internal.h"
#include "nocancel.h"

int pc_upper_share(const struct pc_spawn_request *request, const struct pc_root *root,
                   struct pc_error *err)
{
    int upper, sent;

    if (request->upper_socket < 0 || request->upper_fd >= 0)
        return 0;
    upper = pc_openat_nocancel(root->scratch_fd, "upper",
                               O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (upper < 0)
        return pc_fail(err, PC_STEP_SHARE_UPPER, errno, "upper");
    sent = pc_send_fd(request->upper_socket, PC_MESSAGE_UPPER, 0, upper);
    pc_close_nocancel(upper);
    if (sent < 0)
        return pc_fail(err, PC_STEP_SHARE_UPPER, errno, "upper");
    return 0;
}
