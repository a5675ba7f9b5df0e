/* Child side: the niceness of a warm pool entry's processes.
 *
 * A pool (pycontain/_pool.py) makes its entries on a thread running at a
 * lowered priority, so that its set-up work yields to the caller's own
 * spawns; the entry's processes inherit that priority, and so would the
 * program it runs. Raising it back needs CAP_SYS_NICE, which the child has
 * until its capabilities are dropped: so it is done here, after the mounts
 * (which run at the low priority) and before the drop.
 *
 * Runs between clone and exec: async-signal-safe only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/resource.h>

#include "internal.h"

int pc_priority_restore(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* PRIO_PROCESS with 0: this process (the calling thread, on Linux). */
    if (request->set_nice && setpriority(PRIO_PROCESS, 0, request->nice) < 0)
        return pc_fail(err, PC_STEP_PRIORITY, errno, NULL);
    return 0;
}
