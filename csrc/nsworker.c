/* The namespace worker: a background thread that does namespace work off
 * the spawn's critical path.
 *
 * 1. A pool of fresh, empty network namespaces, made ahead of time.
 *    Creating one is the most expensive part of a spawn (see
 *    docs/spawn.md). A spawn takes one, the child joins it with setns, and
 *    it is never used again: the container gets exactly what CLONE_NEWNET
 *    and the child's own loopback step would have given it (a new
 *    namespace with only a loopback device, up), made a little earlier.
 * 2. Releasing mount namespaces. A container's mounts are torn down when
 *    the last reference to its mount namespace goes, which is otherwise its
 *    PID 1's exit, before the parent learns of it: the caller's wait() would
 *    pay for unmounting everything. The parent holds a reference while the
 *    container runs and hands it here once the container has been reaped.
 *
 * No locks: slots are taken and filled with atomic operations, and the
 * thread sleeps on an eventfd, so a fork() at any moment cannot leave a
 * lock held in the child. The child of a fork() drops its copies (at-fork
 * handler): two processes must never hand out the same namespace.
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
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define POOL_SLOTS    16
#define RELEASE_SLOTS 64

/* A pool slot holds an fd and its namespace's inode number in one atomic
 * word, so that a taker can check the fd still is that namespace (the
 * caller's code could have closed our fd and reused the number). Namespace
 * inode numbers fit in 32 bits (proc_inum_ida). */
#define EMPTY UINT64_MAX
static _Atomic uint64_t pool[POOL_SLOTS] = {[0 ... POOL_SLOTS - 1] = EMPTY};
static _Atomic int releases[RELEASE_SLOTS] = {[0 ... RELEASE_SLOTS - 1] = -1}; /* fds to close */

static _Atomic int target_size;     /* network namespaces to keep ready; 0: off */
static _Atomic pid_t owner;         /* the process the worker belongs to */
static _Atomic int worker_errno;    /* why the pool stopped, or 0 */
static _Atomic unsigned long taken; /* network namespaces handed out, ever */
static int wake_fd = -1;            /* eventfd: "there is work" or "stop" */
static pthread_t worker;
static _Atomic int worker_running;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static int slot_fd(uint64_t slot)
{
    return (int)(slot >> 32);
}

static void drain(void)
{
    for (int i = 0; i < POOL_SLOTS; i++) {
        uint64_t slot = atomic_exchange(&pool[i], EMPTY);

        if (slot != EMPTY)
            close(slot_fd(slot));
    }
    for (int i = 0; i < RELEASE_SLOTS; i++) {
        int fd = atomic_exchange(&releases[i], -1);

        if (fd >= 0)
            close(fd);
    }
}

/* In the child of fork(): the namespaces in the pool are the parent's to
 * hand out, and the worker did not survive the fork. */
static void forget_worker_in_child(void)
{
    drain();
    atomic_store(&target_size, 0);
    atomic_store(&worker_running, 0);
    if (wake_fd >= 0)
        close(wake_fd);
    wake_fd = -1;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, forget_worker_in_child);
}

static void set_policy(int policy)
{
    struct sched_param param = {.sched_priority = 0};

    sched_setscheduler(0, policy, &param);
}

static void release_pending(void)
{
    for (int i = 0; i < RELEASE_SLOTS; i++) {
        int fd = atomic_exchange(&releases[i], -1);

        if (fd >= 0)
            close(fd); /* the container's mounts are torn down here */
    }
}

static int refill_pool(void)
{
    int size = atomic_load(&target_size);

    for (int i = 0; i < size && i < POOL_SLOTS; i++) {
        uint64_t expected = EMPTY;
        struct stat namespace;
        struct pc_error unused;
        int fd;

        if (atomic_load(&pool[i]) != EMPTY)
            continue;
        /* Moves this thread (only) into a new namespace, which the fd then
         * keeps alive after the next unshare moves it on. Its lo is brought
         * up here, off the spawn's critical path. */
        if (unshare(CLONE_NEWNET) < 0 || pc_network_loopback_up(&unused) < 0 ||
            (fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0 ||
            fstat(fd, &namespace) < 0) {
            atomic_store(&worker_errno, errno);
            atomic_store(&target_size, 0);
            return -1;
        }
        if (!atomic_compare_exchange_strong(&pool[i], &expected,
                                            (uint64_t)fd << 32 | (uint32_t)namespace.st_ino))
            close(fd);
        /* Releases first: a reference held here keeps a container's mounts. */
        release_pending();
    }
    return 0;
}

static void *work(void *unused)
{
    sigset_t all_signals;

    (void)unused;
    /* This thread runs no Python and must not take the caller's signals. */
    sigfillset(&all_signals);
    pthread_sigmask(SIG_SETMASK, &all_signals, NULL);
    while (atomic_load(&worker_running)) {
        uint64_t wakeups;

        /* Releasing runs at normal priority: it holds the kernel's mount
         * lock while it unmounts, which the next spawn needs. Making
         * namespaces runs only on CPU time nobody else wants: a refill that
         * competes with the next spawn for a CPU costs more than it saves. */
        set_policy(SCHED_OTHER);
        release_pending();
        set_policy(SCHED_IDLE);
        refill_pool();
        while (read(wake_fd, &wakeups, sizeof wakeups) < 0 && errno == EINTR)
            ;
    }
    release_pending();
    return NULL;
}

static void wake(void)
{
    uint64_t one = 1;

    (void)!write(wake_fd, &one, sizeof one);
}

int pc_netns_pool_configure(unsigned int size, struct pc_error *err)
{
    pthread_once(&atfork_once, register_atfork);
    if (size > POOL_SLOTS)
        size = POOL_SLOTS;
    if (atomic_load(&worker_running)) {
        /* Stop the worker, then start again at the new size. */
        atomic_store(&worker_running, 0);
        atomic_store(&target_size, 0);
        wake();
        pthread_join(worker, NULL);
        close(wake_fd);
        wake_fd = -1;
        drain();
    }
    atomic_store(&worker_errno, 0);
    if (size == 0)
        return 0;
    wake_fd = eventfd(0, EFD_CLOEXEC);
    if (wake_fd < 0)
        return pc_fail(err, PC_STEP_PREPARE, errno, "eventfd");
    atomic_store(&owner, getpid());
    atomic_store(&target_size, (int)size);
    atomic_store(&worker_running, 1);
    errno = pthread_create(&worker, NULL, work, NULL);
    if (errno != 0) {
        atomic_store(&worker_running, 0);
        atomic_store(&target_size, 0);
        close(wake_fd);
        wake_fd = -1;
        return pc_fail(err, PC_STEP_PREPARE, errno, "namespace worker thread");
    }
    return 0;
}

static int worker_is_ours(void)
{
    return atomic_load(&worker_running) && atomic_load(&owner) == getpid();
}

int pc_netns_pool_take(void)
{
    if (atomic_load(&target_size) == 0 || !worker_is_ours())
        return -1;
    for (int i = 0; i < POOL_SLOTS; i++) {
        uint64_t slot = atomic_exchange(&pool[i], EMPTY);
        struct stat namespace;
        int fd = slot_fd(slot);

        if (slot == EMPTY)
            continue;
        wake();
        /* Not ours any more (closed and reused behind our back): leave it
         * alone and make the namespace at spawn. */
        if (fstat(fd, &namespace) < 0 || (uint32_t)namespace.st_ino != (uint32_t)slot)
            return -1;
        atomic_fetch_add(&taken, 1);
        return fd;
    }
    return -1; /* empty for now: the caller makes a namespace itself */
}

int pc_nsworker_running(void)
{
    return worker_is_ours();
}

int pc_nsworker_release(int fd)
{
    if (worker_is_ours()) {
        for (int i = 0; i < RELEASE_SLOTS; i++) {
            int expected = -1;

            if (atomic_compare_exchange_strong(&releases[i], &expected, fd)) {
                wake();
                return 0;
            }
        }
    }
    close(fd); /* no worker, or it is behind: release it here */
    return -1;
}

int pc_netns_pool_status(unsigned int *size, unsigned int *ready, unsigned long *handed_out)
{
    int count = 0;

    for (int i = 0; i < POOL_SLOTS; i++)
        count += atomic_load(&pool[i]) != EMPTY;
    *size = (unsigned int)atomic_load(&target_size);
    *ready = (unsigned int)count;
    *handed_out = atomic_load(&taken);
    return atomic_load(&worker_errno);
}
