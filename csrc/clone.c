/* Parent side: start the child with clone3, or clone(2) where clone3 is
 * missing.
 *
 * CLONE_VM | CLONE_VFORK is how posix_spawn starts a process: no page tables
 * are copied (cheap even from a large Python process), and the calling
 * thread sleeps until the child has exec'd or exited, so the child may use
 * the parent's prepared memory read-only and on return the parent knows the
 * outcome. The child gets its own stack (spawn.c maps one); it shares the
 * parent's memory, which is why everything it runs is async-signal-safe and
 * writes nothing but its own stack.
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

#include "internal.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL /* clone3 only, Linux 5.5 */
#endif
/* The first version of struct clone_args (Linux 5.3): asking for no more
 * than this keeps clone3 usable on every kernel that has it. */
#define CLONE_ARGS_SIZE_VER0 64

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
 * it), or EINVAL to CLONE_CLEAR_SIGHAND (Linux 5.3, 5.4); racing threads at
 * worst both try once. */
static volatile int clone3_missing, clear_sighand_missing;

static pid_t clone_legacy(unsigned long flags, int (*fn)(void *), void *arg, void *stack,
                          size_t stack_size, int *pidfd)
{
    /* clone(2) takes the top of the stack (it grows down on every arch
     * pycontain builds on) and stores the pidfd through parent_tid. */
    return clone(fn, (char *)stack + stack_size, (int)(flags | SIGCHLD), arg, pidfd);
}

pid_t pc_clone(unsigned long namespaces, int (*fn)(void *), void *arg, void *stack,
               size_t stack_size, int *pidfd, int force_legacy, int *handlers_cleared)
{
    unsigned long flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | namespaces;

    *handlers_cleared = 0;
#if HAVE_CLONE3_TRAMPOLINE
    if (!force_legacy && !clone3_missing) {
        struct clone_args args;
        long ret;

        memset(&args, 0, sizeof args);
        /* CLONE_CLEAR_SIGHAND: the kernel resets every caught signal to its
         * default in the child, instead of the child asking about all 64. */
        args.flags = flags | (clear_sighand_missing ? 0 : CLONE_CLEAR_SIGHAND);
        args.pidfd = (uint64_t)(uintptr_t)pidfd;
        args.exit_signal = SIGCHLD;
        args.stack = (uint64_t)(uintptr_t)stack;
        args.stack_size = stack_size;
        /* Written before the child exists; it reads it from shared memory. */
        *handlers_cleared = !clear_sighand_missing;
        ret = pc_clone3_raw(&args, CLONE_ARGS_SIZE_VER0, fn, arg);
        if (ret == -EINVAL && !clear_sighand_missing) {
            clear_sighand_missing = 1;
            *handlers_cleared = 0;
            args.flags = flags;
            ret = pc_clone3_raw(&args, CLONE_ARGS_SIZE_VER0, fn, arg);
        }
        if (ret >= 0)
            return (pid_t)ret;
        if (ret != -ENOSYS) {
            errno = (int)-ret;
            return -1;
        }
        clone3_missing = 1;
        *handlers_cleared = 0;
    }
#else
    (void)force_legacy;
#endif
    return clone_legacy(flags, fn, arg, stack, stack_size, pidfd);
}
