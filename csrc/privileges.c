/* Child side: what the program may do to the host beyond its namespaces.
 *
 * Runs between clone and exec: async-signal-safe only (raw syscalls; no
 * libcap, which allocates).
 *
 * The steps, in the order child.c runs them, and why that order:
 *
 *   process group     early (before any hook): a process in a new PID namespace still
 *                     belongs to its parent's process group and session, so
 *                     kill(0, sig) from inside would reach the caller's
 *                     group; and when the caller has a controlling terminal,
 *                     the program could open it as /dev/tty, use TIOCSTI on
 *                     it, and would be stopped by job control as a
 *                     background group: then a session of its own.
 *   session keyring   after the pre_exec hook (caller code, which may use the
 *                     caller's keys); before seccomp, which denies keyctl.
 *   bounding set      before identity.c: dropping from it needs CAP_SETPCAP,
 *                     which setresuid to a non-root uid takes away; it does
 *                     not touch the effective set, so sethostname
 *                     (CAP_SYS_ADMIN), setrlimit (CAP_SYS_RESOURCE) and
 *                     setres[ug]id (CAP_SETUID, CAP_SETGID) still work.
 *   capability sets   after identity.c: setresuid from root to a non-root uid
 *                     clears the permitted and effective sets (unless
 *                     PR_SET_KEEPCAPS, set here only when a non-root program
 *                     is to keep capabilities in its ambient set), so the
 *                     final sets can only be written after it.
 *   no_new_privs      last but one, just before the seccomp filter (which
 *                     needs it without CAP_SYS_ADMIN): from here on, no
 *                     execve can gain privileges (setuid bits and file
 *                     capabilities are ignored).
 *
 * With `privileged`, capabilities and no_new_privs are left alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT       47
#define PR_CAP_AMBIENT_RAISE 2
#endif
#define KEYCTL_JOIN_SESSION_KEYRING 1 /* <linux/keyctl.h> */

static int is_kept(const struct pc_spawn_request *request, int capability)
{
    return capability < 64 && (request->capabilities >> capability) & 1;
}

/* A non-root program keeps capabilities only in its ambient set. */
static int keeps_ambient(const struct pc_spawn_request *request)
{
    return request->uid > 0 && request->capabilities != 0;
}

int pc_privileges_leave_process_group(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* The child is never a process group leader (a new pid, its parent's
     * group), so neither can fail with EPERM. A new session only when it
     * is needed: with scheduler autogroups (most distributions) setsid
     * also moves the process into a new scheduling group, which on a busy
     * machine costs a trip through the scheduler (~0.1-0.5 ms measured).
     * stay_in_caller_group: the caller's opt-out (new_session=False). */
    if (request->stay_in_caller_group)
        return 0;
    if ((request->new_session ? setsid() : setpgid(0, 0)) < 0)
        return pc_fail(err, PC_STEP_PROCESS_GROUP, errno, NULL);
    return 0;
}

int pc_privileges_join_session_keyring(struct pc_error *err)
{
    /* A new anonymous session keyring: the caller's session keys (which the
     * child inherited) are no longer possessed, so they cannot be read. A
     * kernel without keys (ENOSYS) has nothing to hide. */
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS)
        return pc_fail(err, PC_STEP_SESSION_KEYRING, errno, NULL);
    return 0;
}

int pc_privileges_limit_bounding_set(const struct pc_spawn_request *request, struct pc_error *err)
{
    if (request->privileged)
        return 0;
    /* The bounding set caps what any later execve can grant, root's
     * included: after exec, root's permitted set is exactly this set. */
    for (int capability = 0; capability <= request->last_capability; capability++)
        if (!is_kept(request, capability) &&
            prctl(PR_CAPBSET_DROP, (unsigned long)capability, 0UL, 0UL, 0UL) < 0)
            return pc_fail(err, PC_STEP_CAPABILITIES, errno, "bounding set");
    /* Keep the permitted set across setresuid, for the ambient set; the
     * kernel clears this flag at execve. */
    if (keeps_ambient(request) && prctl(PR_SET_KEEPCAPS, 1UL, 0UL, 0UL, 0UL) < 0)
        return pc_fail(err, PC_STEP_CAPABILITIES, errno, "keepcaps");
    return 0;
}

int pc_privileges_set_capabilities(const struct pc_spawn_request *request, struct pc_error *err)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    unsigned long long kept = request->capabilities;
    /* Inheritable stays empty for root, as in runc and crun since
     * CVE-2022-24769: a non-empty one would let a program that switches to
     * another uid gain capabilities from a file's inheritable set. The
     * ambient set needs its capabilities in inheritable. */
    unsigned long long inheritable = keeps_ambient(request) ? kept : 0;

    if (request->privileged)
        return 0;
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
        data[i].effective = data[i].permitted = (__u32)(kept >> (32 * i));
        data[i].inheritable = (__u32)(inheritable >> (32 * i));
    }
    if (syscall(SYS_capset, &header, data) < 0)
        return pc_fail(err, PC_STEP_CAPABILITIES, errno, "capset");
    if (keeps_ambient(request))
        for (int capability = 0; capability <= request->last_capability; capability++)
            if (is_kept(request, capability) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE,
                                                      (unsigned long)capability, 0UL, 0UL) < 0)
                return pc_fail(err, PC_STEP_CAPABILITIES, errno, "ambient set");
    return 0;
}

int pc_privileges_no_new_privs(const struct pc_spawn_request *request, struct pc_error *err)
{
    if (request->privileged)
        return 0;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) < 0)
        return pc_fail(err, PC_STEP_NO_NEW_PRIVS, errno, NULL);
    return 0;
}

int pc_privileges_load_seccomp(const struct pc_spawn_request *request, struct pc_error *err)
{
    /* The program was built in the parent (pycontain/_seccomp.py); the
     * kernel copies it, checks it, and attaches it to this process. From
     * here on every system call of the program passes through it, so this
     * is the last step before exec (whose own syscall it allows). */
    struct sock_fprog program = {
        .len = (unsigned short)request->seccomp_length,
        .filter = (struct sock_filter *)request->seccomp_filter,
    };

    if (request->seccomp_filter == NULL)
        return 0;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) < 0)
        return pc_fail(err, PC_STEP_SECCOMP, errno, NULL);
    return 0;
}
