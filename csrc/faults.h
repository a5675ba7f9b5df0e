/* Fault injection for the tests: delays and failures at named points of a
 * spawn, so that a test can land a timeout, a signal or a parent's death at
 * each of them.
 *
 * Compiled in only when setup.py builds with PYCONTAIN_FAULTS=1 (the test
 * builds of ./run.sh); otherwise every pc_fault_* is an empty inline and
 * _core has no _set_fault. The settings live in this process's memory: the
 * forked helper and the container's process inherit them, a CLONE_VM child
 * reads them.
 */
#ifndef PYCONTAIN_FAULTS_H
#define PYCONTAIN_FAULTS_H

enum pc_fault_point {
    /* delays (microseconds), fork path */
    PC_FAULT_HELPER_START = 0, /* helper: after the fork, before unshare */
    PC_FAULT_HELPER_CLONED,    /* helper: after clone, before it reports the pid */
    PC_FAULT_HELPER_REPORTED,  /* helper: after it reported the pid, before _exit */
    PC_FAULT_CONTAINER_START,  /* container: first thing, before waiting for "go" */
    PC_FAULT_CONTAINER_GO,     /* container: after "go", before its first step */
    PC_FAULT_BEFORE_HOOK,      /* container: before a hook runs */
    PC_FAULT_AFTER_HOOK,       /* container: after a hook returned */
    PC_FAULT_BEFORE_EXEC,      /* container: exec channel sent, before exec */
    PC_FAULT_COLLECT_PID,      /* caller: pid received, before "go" is sent */
    PC_FAULT_WORKER_REFILL,    /* namespace worker: before it makes each namespace */
    /* failures (any value but 0 turns them on) */
    PC_FAULT_CLOSE_RANGE_ENOSYS, /* child: close_range says ENOSYS (pre-5.11 kernel) */
    PC_FAULT_CLONE3_EINVAL,      /* parent: clone3 says EINVAL, with or without a flag */
    PC_FAULT_NOMEM_AFTER_SPAWN,  /* _core: building the result fails after a spawn */
    PC_FAULT_COUNT
};

#ifdef PC_FAULTS
extern const char *const pc_fault_names[PC_FAULT_COUNT];
extern volatile unsigned long pc_fault_settings[PC_FAULT_COUNT];
/* Sleep for the delay set at `point`, if any. Async-signal-safe. */
void pc_fault_delay(enum pc_fault_point point);
static inline int pc_fault_on(enum pc_fault_point point)
{
    return pc_fault_settings[point] != 0;
}
#else
static inline void pc_fault_delay(enum pc_fault_point point)
{
    (void)point;
}
static inline int pc_fault_on(enum pc_fault_point point)
{
    (void)point;
    return 0;
}
#endif

#endif
