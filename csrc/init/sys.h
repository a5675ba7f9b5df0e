/* The init's only contact with the kernel: raw system calls, no libc.
 *
 * The init is exec'd at every spawn, so its start-up is on every spawn's
 * critical path. A static glibc program spends ~300 us before main() on
 * this project's VMs (CPU feature probing with CPUID, which traps to the
 * hypervisor, and IRELATIVE relocations); a -nostdlib one starts in the
 * time the kernel takes to map it (bench: docs/init.md). So on x86-64 and
 * arm64 the init is built -nostdlib with the syscalls below and its own
 * _start; elsewhere (PC_INIT_LIBC, set by setup.py) glibc's syscall() and
 * main() stand in, linked -static.
 */
#ifndef PYCONTAIN_INIT_SYS_H
#define PYCONTAIN_INIT_SYS_H

#include <stddef.h>
#include <sys/syscall.h>

#if !defined(PC_INIT_LIBC) && defined(__x86_64__)
static inline long sys6(long nr, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;

    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* The kernel starts a process with argc at the stack pointer, then argv,
 * NULL, envp, NULL. The ABI wants a 16-byte aligned stack at a call. */
#define PC_INIT_ENTRY                                                                              \
    __asm__(".text\n"                                                                              \
            ".global _start\n"                                                                     \
            "_start:\n"                                                                            \
            "    xor %rbp, %rbp\n"                                                                 \
            "    mov %rsp, %rdi\n"                                                                 \
            "    and $-16, %rsp\n"                                                                 \
            "    call init_start\n"                                                                \
            "    hlt\n");
#elif !defined(PC_INIT_LIBC) && defined(__aarch64__)
static inline long sys6(long nr, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;

    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}

#define PC_INIT_ENTRY                                                                              \
    __asm__(".text\n"                                                                              \
            ".global _start\n"                                                                     \
            "_start:\n"                                                                            \
            "    mov x29, #0\n"                                                                    \
            "    mov x30, #0\n"                                                                    \
            "    mov x0, sp\n"                                                                     \
            "    bl init_start\n"                                                                  \
            "    brk #0\n");
#else
#ifndef PC_INIT_LIBC
#define PC_INIT_LIBC 1
#endif
#include <errno.h>
#include <unistd.h>
/* glibc's syscall() returns -1 and sets errno; the raw convention is -errno. */
static inline long sys6(long nr, long a, long b, long c, long d, long e, long f)
{
    long ret = syscall(nr, a, b, c, d, e, f);

    return ret < 0 ? -errno : ret;
}

#define PC_INIT_ENTRY                                                                              \
    void init_start(long *stack);                                                                  \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        (void)argc;                                                                                \
        init_start((long *)argv - 1);                                                              \
        return 127;                                                                                \
    }
#endif

#define sys0(nr)                sys6((nr), 0, 0, 0, 0, 0, 0)
#define sys1(nr, a)             sys6((nr), (long)(a), 0, 0, 0, 0, 0)
#define sys2(nr, a, b)          sys6((nr), (long)(a), (long)(b), 0, 0, 0, 0)
#define sys3(nr, a, b, c)       sys6((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(nr, a, b, c, d)    sys6((nr), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define sys5(nr, a, b, c, d, e) sys6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

#endif
