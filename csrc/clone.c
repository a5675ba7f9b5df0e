/* Parent side: start the child with clone3, or clone(2) where clone3 is
 * missing.
 *
 * CLONE_VM | CLONE_VFORK is how posix_spawn starts a process: no page tables
 * are copied (cheap even from a large Python process), and the calling
 * thread sleeps until the child has exec'd or exited, so the child may use
 * the parent's prepared memory read-only and on return the parent knows the
 * outcome. The child gets its own stack (spawn.c maps one); it shares the
 * parent's memory, which is why everything it runs is async-signal-safe and
 * writes nothing the parent thread reads before clone returns: its own
 * stack, the parent thread's errno (libc writes it through the shared
 * thread pointer), the trace stamps (child.c).
 *
 * CLONE_PIDFD gives a pidfd for waiting and signalling without pid reuse
 * races.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "faults.h"
#include "internal.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL /* clone3 only, Linux 5.5 */
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL /* clone3 only, Linux 5.7 */
#endif
/* The first version of struct clone_args (Linux 5.3): asking for no more
 * than this keeps clone3 usable on every kernel that has it. The third
 * (Linux 5.7) adds the cgroup, asked for only with CLONE_INTO_CGROUP. */
#define CLONE_ARGS_SIZE_VER0 64
#define CLONE_ARGS_SIZE_VER2 88

#if defined(__x86_64__)
#define HAVE_CLONE3_TRAMPOLINE 1
/* long pc_clone3_raw(struct clone_args *args, size_t size,
 *                    int (*fn)(void *), void *arg);
 *
 * clone3 has no libc wrapper that takes a function: with a new stack the
 * child returns from the syscall on that stack, where no C frame exists. So
 * the child must never return into C: it calls fn(arg) and exits with its
 * result, all in this trampoline. fn and arg travel in r8/r9, which the
 * syscall instruction preserves. Returns the child's pid or -errno. */
__asm__(".text\n"
        ".p2align 4\n"
        ".type pc_clone3_raw, @function\n"
        ".hidden pc_clone3_raw\n"
        "pc_clone3_raw:\n"
        "    mov %rdx, %r8\n"
        "    mov %rcx, %r9\n"
        "    mov $435, %eax\n" /* __NR_clone3 */
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jz 1f\n"
        "    ret\n"
        "1:  xor %ebp, %ebp\n" /* child: outermost frame for debuggers */
        "    mov %r9, %rdi\n"
        "    call *%r8\n"
        "    mov %eax, %edi\n"
        "    mov $60, %eax\n" /* __NR_exit */
        "    syscall\n"
        "    hlt\n"
        ".size pc_clone3_raw, .-pc_clone3_raw\n");

long pc_clone3_raw(struct clone_args *args, size_t size, int (*fn)(void *), void *arg);
#else
#define HAVE_CLONE3_TRAMPOLINE 0
#endif

/* Set once clone3 said ENOSYS (old kernel, or a seccomp policy that hides
 * it), refused CLONE_CLEAR_SIGHAND (Linux 5.3, 5.4), or CLONE_INTO_CGROUP
 * (before Linux 5.7: E2BIG or EINVAL). EINVAL has other causes (the
 * namespace flags, say): a flag is taken for refused only when the same
 * call works without it. Racing threads at worst both try once. */
static volatile int clone3_missing, clear_sighand_missing, into_cgroup_missing;

static pid_t clone_legacy(unsigned long flags, int (*fn)(void *), void *arg, void *stack,
                          size_t stack_size, int *pidfd)
{
    /* clone(2) takes the top of the stack (it grows down on every arch
     * pycontain builds on) and stores the pidfd through parent_tid. */
    return clone(fn, (char *)stack + stack_size, (int)(flags | SIGCHLD), arg, pidfd);
}

int pc_clone_clear_sighand_supported(void)
{
    return !clear_sighand_missing;
}

pid_t pc_clone(unsigned long namespaces, int (*fn)(void *), void *arg, void *stack,
               size_t stack_size, int *pidfd, int force_legacy, int *handlers_cleared,
               int cgroup_fd, int *in_cgroup)
{
    unsigned long flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | namespaces;

    *handlers_cleared = 0;
    *in_cgroup = 0;
#if HAVE_CLONE3_TRAMPOLINE
    if (!force_legacy && !clone3_missing) {
        struct clone_args args;
        int into_cgroup = cgroup_fd >= 0 && !into_cgroup_missing;
        int clear_sighand = !clear_sighand_missing;
        int dropped_clear_sighand = 0, dropped_cgroup_on_einval = 0;
        long ret;

        for (;;) {
            memset(&args, 0, sizeof args);
            /* CLONE_CLEAR_SIGHAND: the kernel resets every caught signal to
             * its default in the child, instead of the child asking about
             * all 64. CLONE_INTO_CGROUP: the child starts in its cgroup,
             * atomically, rather than moving itself there. */
            args.flags = flags | (clear_sighand ? CLONE_CLEAR_SIGHAND : 0) |
                         (into_cgroup ? CLONE_INTO_CGROUP : 0);
            args.pidfd = (uint64_t)(uintptr_t)pidfd;
            args.exit_signal = SIGCHLD;
            args.stack = (uint64_t)(uintptr_t)stack;
            args.stack_size = stack_size;
            args.cgroup = into_cgroup ? (uint64_t)cgroup_fd : 0;
            /* Written before the child exists; it reads them from shared
             * memory. */
            *handlers_cleared = clear_sighand;
            *in_cgroup = into_cgroup;
            ret = pc_fault_on(PC_FAULT_CLONE3_EINVAL)
                      ? -EINVAL
                      : pc_clone3_raw(&args,
                                      into_cgroup ? CLONE_ARGS_SIZE_VER2 : CLONE_ARGS_SIZE_VER0, fn,
                                      arg);
            if (ret >= 0) {
                if (dropped_clear_sighand)
                    clear_sighand_missing = 1;
                else if (dropped_cgroup_on_einval)
                    into_cgroup_missing = 1;
                return (pid_t)ret;
            }
            if (into_cgroup) {
                /* Whatever the reason (an old kernel, or one the child's
                 * own write to cgroup.procs will then name precisely), the
                 * child joins the cgroup itself. */
                if (ret == -E2BIG)
                    into_cgroup_missing = 1;
                dropped_cgroup_on_einval = ret == -EINVAL;
                into_cgroup = 0;
                continue;
            }
            if (ret == -EINVAL && clear_sighand) {
                clear_sighand = 0;
                dropped_clear_sighand = 1;
                continue;
            }
            break;
        }
        *handlers_cleared = 0;
        *in_cgroup = 0;
        if (ret != -ENOSYS) {
            errno = (int)-ret;
            return -1;
        }
        clone3_missing = 1;
    }
#else
    (void)force_legacy;
    (void)cgroup_fd;
#endif
    return clone_legacy(flags, fn, arg, stack, stack_size, pidfd);
}
