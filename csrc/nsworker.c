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
 * No locks on the spawn's path: slots are taken and filled with atomic
 * operations, and the thread sleeps on an eventfd (made once, never closed,
 * so no thread can write to a closed or reused fd number). Configuring
 * (starting, stopping) takes a mutex, which the child of a fork()
 * re-initialises.
 *
 * The child of a fork() (os.fork, multiprocessing) drops its copies of
 * every namespace reference (at-fork handler): two processes must never
 * hand out the same network namespace, and a finished container's overlay
 * must not stay mounted because a forked child holds its mount namespace.
 * Every mount namespace reference this process holds is therefore in a
 * table (held[]), including while it moves between the table and the
 * release slots ("in flight"): such moves are bracketed by enter/leave, and
 * the at-fork prepare handler waits until none is under way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "faults.h"
#include "internal.h"

#ifndef PIDFD_GET_MNT_NAMESPACE
#define PIDFD_GET_MNT_NAMESPACE _IO(0xFF, 3) /* <linux/pidfd.h>, Linux 6.11 */
#endif

#define POOL_SLOTS    16
#define RELEASE_SLOTS 64

/* Mount namespace references held for running containers: a slot is 0 or
 * (generation << 32 | fd); a handle names the slot and its generation, so a
 * handle that outlived its reference (in a forked child, say) matches
 * nothing. */
#define HELD_SLOTS       4096
#define HANDLE_SLOT_BITS 12
#define HANDLE_GEN_MASK  0x7ffffU /* handles stay below 2**31 */

/* A pool slot holds an fd and its namespace's inode number in one atomic
 * word, so that a taker can check the fd still is that namespace (the
 * caller's code could have closed our fd and reused the number); the
 * device is nsfs's, the same for every namespace, kept in nsfs_dev.
 * Namespace inode numbers fit in 32 bits (proc_inum_ida). */
#define EMPTY UINT64_MAX
static _Atomic uint64_t pool[POOL_SLOTS] = {[0 ... POOL_SLOTS - 1] = EMPTY};
static _Atomic int releases[RELEASE_SLOTS] = {[0 ... RELEASE_SLOTS - 1] = -1}; /* fds to close */
static _Atomic uint64_t held[HELD_SLOTS];
static _Atomic uint32_t held_generation;
static _Atomic dev_t nsfs_dev;

static _Atomic int target_size;     /* network namespaces to keep ready; 0: off */
static _Atomic pid_t owner;         /* the process the worker belongs to */
static _Atomic int worker_errno;    /* why the pool stopped, or 0 */
static _Atomic unsigned long taken; /* network namespaces handed out, ever */
static _Atomic int wake_fd = -1;    /* eventfd: "there is work" or "stop"; never closed */
static pthread_t worker;
static _Atomic int worker_running;
static pthread_mutex_t configure_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Moves of a namespace fd that a fork must not split (see the top). */
static _Atomic int moving, forking;

static void enter(void)
{
    for (;;) {
        atomic_fetch_add(&moving, 1);
        if (atomic_load(&forking) == 0)
            return;
        atomic_fetch_sub(&moving, 1);
        while (atomic_load(&forking) != 0)
            sched_yield();
    }
}

static void leave(void)
{
    atomic_fetch_sub(&moving, 1);
}

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

/* Waits for the moves under way, but not for ever: a move is a few system
 * calls, yet the worker runs at idle priority and may be preempted in one;
 * a fork is not held up by more than 50 ms for that (the child may then
 * keep one pool namespace). */
static void before_fork(void)
{
    struct timespec start, now;

    atomic_fetch_add(&forking, 1);
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (atomic_load(&moving) != 0) {
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) > 50000000L)
            break;
    }
}

static void after_fork_in_parent(void)
{
    atomic_fetch_sub(&forking, 1);
}

/* In the child of fork(): the namespaces in the pool are the parent's to
 * hand out, the containers' mount namespaces are the parent's to hold, and
 * the worker did not survive the fork. */
static void forget_worker_in_child(void)
{
    int fresh;

    drain();
    for (int i = 0; i < HELD_SLOTS; i++) {
        uint64_t slot = atomic_exchange(&held[i], 0);

        if (slot != 0)
            close((int)(uint32_t)slot);
    }
    atomic_store(&target_size, 0);
    atomic_store(&worker_running, 0);
    atomic_store(&forking, 0);
    atomic_store(&moving, 0);
    pthread_mutex_init(&configure_lock, NULL);
    /* The eventfd is shared with the parent: give the child its own, on
     * the same number (dup3 replaces it atomically). */
    if (atomic_load(&wake_fd) >= 0 && (fresh = eventfd(0, EFD_CLOEXEC)) >= 0) {
        dup3(fresh, atomic_load(&wake_fd), O_CLOEXEC);
        close(fresh);
    }
}

static void register_atfork(void)
{
    pthread_atfork(before_fork, after_fork_in_parent, forget_worker_in_child);
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
        pc_fault_delay(PC_FAULT_WORKER_REFILL);
        /* Moves this thread (only) into a new namespace, which the fd then
         * keeps alive after the next unshare moves it on. Its lo is brought
         * up here, off the spawn's critical path. */
        if (unshare(CLONE_NEWNET) < 0 || pc_network_loopback_up(&unused) < 0) {
            atomic_store(&worker_errno, errno);
            atomic_store(&target_size, 0);
            return -1;
        }
        enter();
        fd = -1;
        if ((fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0 ||
            fstat(fd, &namespace) < 0) {
            atomic_store(&worker_errno, errno);
            atomic_store(&target_size, 0);
            if (fd >= 0)
                close(fd);
            leave();
            return -1;
        }
        atomic_store(&nsfs_dev, namespace.st_dev);
        if (!atomic_compare_exchange_strong(&pool[i], &expected,
                                            (uint64_t)fd << 32 | (uint32_t)namespace.st_ino))
            close(fd);
        leave();
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
        while (read(atomic_load(&wake_fd), &wakeups, sizeof wakeups) < 0 && errno == EINTR)
            ;
    }
    release_pending();
    return NULL;
}

static void wake(void)
{
    uint64_t one = 1;
    int fd = atomic_load(&wake_fd);

    if (fd >= 0)
        (void)!write(fd, &one, sizeof one);
}

int pc_netns_pool_configure(unsigned int size, struct pc_error *err)
{
    int rc = 0;

    pthread_once(&atfork_once, register_atfork);
    if (size > POOL_SLOTS)
        size = POOL_SLOTS;
    pthread_mutex_lock(&configure_lock);
    if (atomic_load(&worker_running)) {
        /* Stop the worker, then start again at the new size. */
        atomic_store(&worker_running, 0);
        atomic_store(&target_size, 0);
        wake();
        pthread_join(worker, NULL);
        drain();
    }
    atomic_store(&worker_errno, 0);
    if (size == 0)
        goto done;
    if (atomic_load(&wake_fd) < 0) {
        int fd = eventfd(0, EFD_CLOEXEC);

        if (fd < 0 || pc_move_above_stdio(&fd) < 0) {
            rc = pc_fail(err, PC_STEP_PREPARE, errno, "eventfd");
            goto done;
        }
        atomic_store(&wake_fd, fd);
    }
    atomic_store(&owner, getpid());
    atomic_store(&target_size, (int)size);
    atomic_store(&worker_running, 1);
    errno = pthread_create(&worker, NULL, work, NULL);
    if (errno != 0) {
        atomic_store(&worker_running, 0);
        atomic_store(&target_size, 0);
        rc = pc_fail(err, PC_STEP_PREPARE, errno, "namespace worker thread");
    }
done:
    pthread_mutex_unlock(&configure_lock);
    return rc;
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
        if (fstat(fd, &namespace) < 0 || namespace.st_dev != atomic_load(&nsfs_dev) ||
            (uint32_t)namespace.st_ino != (uint32_t)slot)
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

/* Close `fd` (a namespace reference) on the worker, or here when it is
 * not running or is behind. Returns 0 when handed over. Called between
 * enter() and leave(). */
static int hand_to_worker(int fd)
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

/* A reference to the container's mount namespace, or -1 (it may already
 * have exited: then its mounts are gone too). */
static int open_mount_namespace(pid_t pid, int pidfd)
{
    char path[64];
    int fd = ioctl(pidfd, PIDFD_GET_MNT_NAMESPACE, 0);

    if (fd >= 0) {
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        return fd;
    }
    /* Before Linux 6.11. */
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
    return open(path, O_RDONLY | O_CLOEXEC);
}

int pc_nsworker_hold_mntns(pid_t pid, int pidfd)
{
    int fd, handle = -1;

    pthread_once(&atfork_once, register_atfork);
    enter();
    fd = open_mount_namespace(pid, pidfd);
    for (int i = 0; fd >= 0 && i < HELD_SLOTS; i++) {
        uint32_t generation = atomic_fetch_add(&held_generation, 1) + 1;
        uint64_t expected = 0, value = (uint64_t)(generation | 1U) << 32 | (uint32_t)fd;

        if (atomic_load(&held[i]) == 0 &&
            atomic_compare_exchange_strong(&held[i], &expected, value)) {
            handle = (int)(((generation | 1U) & HANDLE_GEN_MASK) << HANDLE_SLOT_BITS | (uint32_t)i);
            break;
        }
    }
    if (fd >= 0 && handle < 0)
        close(fd); /* table full: the container's exit unmounts, as without a worker */
    leave();
    return handle;
}

int pc_nsworker_drop_mntns(int handle, int on_worker)
{
    int slot = handle & ((1 << HANDLE_SLOT_BITS) - 1), rc = -1;
    uint32_t generation = (uint32_t)handle >> HANDLE_SLOT_BITS;
    uint64_t value;

    if (handle < 0)
        return -1;
    enter();
    value = atomic_load(&held[slot]);
    if (value != 0 && ((uint32_t)(value >> 32) & HANDLE_GEN_MASK) == generation &&
        atomic_compare_exchange_strong(&held[slot], &value, 0)) {
        int fd = (int)(uint32_t)value;

        if (on_worker)
            rc = hand_to_worker(fd) == 0 ? 0 : 1;
        else {
            close(fd);
            rc = 1;
        }
    }
    leave();
    return rc;
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
