/* Parent side: refuse a request whose steps cannot run safely.
 *
 * The child's steps assume things about the request that the kernel would
 * not check for them: without CLONE_NEWNS, make-private, the scratch tmpfs
 * and pivot_root would act on the caller's own mount namespace; without
 * CLONE_NEWPID, the container's /proc would show the host's processes. And
 * container paths must be plain absolute paths, resolved beneath the root
 * without "." or ".." (beneath.c). A new user namespace comes with the
 * maps the child writes for it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>

#include "internal.h"

#define REQUIRED_NAMESPACES (CLONE_NEWNS | CLONE_NEWPID)
#define KNOWN_NAMESPACES                                                                           \
    (CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP |   \
     CLONE_NEWUSER)

/* Absolute, not "/" itself, no "." or ".." component. */
static int plain_container_path(const char *path)
{
    const char *component;

    if (path == NULL || path[0] != '/')
        return 0;
    for (component = path; *component != '\0';) {
        size_t n = 0;

        while (*component == '/')
            component++;
        while (component[n] != '\0' && component[n] != '/')
            n++;
        if ((n == 1 && component[0] == '.') ||
            (n == 2 && component[0] == '.' && component[1] == '.'))
            return 0;
        component += n;
    }
    for (component = path; *component == '/'; component++)
        ;
    return *component != '\0';
}

int pc_request_check(const struct pc_spawn_request *request, struct pc_error *err)
{
    if ((request->namespaces & REQUIRED_NAMESPACES) != REQUIRED_NAMESPACES)
        return pc_fail(err, PC_STEP_PREPARE, EINVAL,
                       "namespaces must include CLONE_NEWNS and CLONE_NEWPID");
    if (request->namespaces & ~(unsigned long)KNOWN_NAMESPACES)
        return pc_fail(err, PC_STEP_PREPARE, EINVAL,
                       "namespaces has flags other than CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, "
                       "CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWCGROUP, CLONE_NEWUSER");
    /* A user namespace without maps leaves the child nobody, unable to
     * mount or create anything (userns.c). */
    if ((request->namespaces & CLONE_NEWUSER) &&
        (request->uid_map == NULL || request->gid_map == NULL))
        return pc_fail(err, PC_STEP_PREPARE, EINVAL,
                       "namespaces has CLONE_NEWUSER without uid_map and gid_map");
    if (request->scratch_dir == NULL || request->scratch_dir[0] != '/')
        return pc_fail(err, PC_STEP_PREPARE, EINVAL, "scratch_dir must be an absolute path");
    if (request->exec_paths == NULL || request->exec_paths[0] == NULL)
        return pc_fail(err, PC_STEP_PREPARE, EINVAL, "no program to exec");
    for (size_t i = 0; i < request->bind_count; i++) {
        if (!plain_container_path(request->binds[i].target))
            return pc_fail(err, PC_STEP_PREPARE, EINVAL, request->binds[i].target);
        if (request->binds[i].source == NULL || request->binds[i].source[0] != '/' ||
            request->binds[i].source_fd < 0)
            return pc_fail(err, PC_STEP_PREPARE, EINVAL, request->binds[i].source);
    }
    for (size_t i = 0; i < request->tmpfs_count; i++)
        if (!plain_container_path(request->tmpfs[i].target))
            return pc_fail(err, PC_STEP_PREPARE, EINVAL, request->tmpfs[i].target);
    return 0;
}
