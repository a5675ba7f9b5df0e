/* A pool of fresh, empty network namespaces, made ahead of time.
 *
 * Creating a network namespace is the single most expensive part of a
 * spawn (about 0.4-0.8 ms of a ~2 ms spawn here, see docs/spawn.md). With
 * the pool on, a background thread keeps a few namespaces ready; a spawn
 * takes one, the child joins it with setns, and it is never used again:
 * the container gets exactly what CLONE_NEWNET would have given it (a new
 * namespace with only a loopback device, down), made a little earlier.
 *
 * No locks: slots are taken and filled with atomic operations, and the
 * producer sleeps on an eventfd, so a fork() at any moment cannot leave a
 * lock held in the child. The child of a fork() drops its copies (at-fork
 * handler), since two processes must never hand out the same namespace.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

#define POOL_SLOTS 16

static _Atomic int slots[POOL_SLOTS] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};
static _Atomic int target_size;   /* how many to keep ready; 0: pool off */
static _Atomic pid_t owner;       /* the process the pool belongs to */
static _Atomic int producer_errno; /* why the producer stopped, or 0 */
static _Atomic unsigned long taken; /* namespaces handed out, ever */
static int wake_fd = -1;           /* eventfd: "a slot was emptied" or "stop" */
static pthread_t producer;
static int producer_running;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void drain_slots(void)
{
    for (int i = 0; i < POOL_SLOTS; i++) {
        int fd = atomic_exchange(&slots[i], -1);

        if (fd >= 0)
            close(fd);
    }
}

/* In the child of fork(): the namespaces in the slots are the parent's to
 * hand out, and the producer thread did not survive the fork. */
static void forget_pool_in_child(void)
{
    drain_slots();
    atomic_store(&target_size, 0);
    if (wake_fd >= 0)
        close(wake_fd);
    wake_fd = -1;
    producer_running = 0;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, forget_pool_in_child);
}

static void *produce(void *unused)
{
    sigset_t all_signals;

    (void)unused;
    /* This thread runs no Python and must not take the caller's signals. */
    sigfillset(&all_signals);
    pthread_sigmask(SIG_SETMASK, &all_signals, NULL);
    /* Make namespaces only with CPU time nobody else wants: a refill that
     * competes with the next spawn (or the program it starts) for a CPU
     * costs that spawn more than the pool saves it. */
    struct sched_param idle = {.sched_priority = 0};
    sched_setscheduler(0, SCHED_IDLE, &idle);
    for (;;) {
        uint64_t wakeups;
        int size = atomic_load(&target_size);

        if (size == 0)
            return NULL;
        for (int i = 0; i < size && i < POOL_SLOTS; i++) {
            int expected = -1, fd;

            if (atomic_load(&slots[i]) >= 0)
                continue;
            /* Moves this thread (only) into a new namespace, which the fd
             * then keeps alive after the next unshare moves it on. */
            if (unshare(CLONE_NEWNET) < 0 ||
                (fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) {
                atomic_store(&producer_errno, errno);
                atomic_store(&target_size, 0);
                return NULL;
            }
            if (!atomic_compare_exchange_strong(&slots[i], &expected, fd))
                close(fd);
        }
        while (read(wake_fd, &wakeups, sizeof wakeups) < 0 && errno == EINTR)
            ;
    }
}

int pc_netns_pool_configure(unsigned int size, struct pc_error *err)
{
    uint64_t one = 1;

    pthread_once(&atfork_once, register_atfork);
    if (size > POOL_SLOTS)
        size = POOL_SLOTS;
    if (producer_running) {
        /* Stop the producer, then start again at the new size. */
        atomic_store(&target_size, 0);
        (void)!write(wake_fd, &one, sizeof one);
        pthread_join(producer, NULL);
        producer_running = 0;
        close(wake_fd);
        wake_fd = -1;
        drain_slots();
    }
    atomic_store(&producer_errno, 0);
    if (size == 0)
        return 0;
    wake_fd = eventfd(0, EFD_CLOEXEC);
    if (wake_fd < 0)
        return pc_fail(err, PC_STEP_PREPARE, errno, "eventfd");
    atomic_store(&owner, getpid());
    atomic_store(&target_size, (int)size);
    errno = pthread_create(&producer, NULL, produce, NULL);
    if (errno != 0) {
        atomic_store(&target_size, 0);
        close(wake_fd);
        wake_fd = -1;
        return pc_fail(err, PC_STEP_PREPARE, errno, "netns pool thread");
    }
    producer_running = 1;
    return 0;
}

int pc_netns_pool_take(void)
{
    uint64_t one = 1;

    if (atomic_load(&target_size) == 0 || atomic_load(&owner) != getpid())
        return -1;
    for (int i = 0; i < POOL_SLOTS; i++) {
        int fd = atomic_exchange(&slots[i], -1);

        if (fd >= 0) {
            atomic_fetch_add(&taken, 1);
            (void)!write(wake_fd, &one, sizeof one);
            return fd;
        }
    }
    return -1; /* empty for now: the caller makes a namespace itself */
}

int pc_netns_pool_status(unsigned int *size, unsigned int *ready, unsigned long *handed_out)
{
    int count = 0;

    for (int i = 0; i < POOL_SLOTS; i++)
        count += atomic_load(&slots[i]) >= 0;
    *size = (unsigned int)atomic_load(&target_size);
    *ready = (unsigned int)count;
    *handed_out = atomic_load(&taken);
    return atomic_load(&producer_errno);
}
