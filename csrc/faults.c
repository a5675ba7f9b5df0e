/* Fault injection for the tests (faults.h); empty unless built with
 * PC_FAULTS. */
#include "faults.h"

#ifdef PC_FAULTS
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

const char *const pc_fault_names[PC_FAULT_COUNT] = {
    [PC_FAULT_HELPER_START] = "helper-start",
    [PC_FAULT_HELPER_CLONED] = "helper-cloned",
    [PC_FAULT_HELPER_REPORTED] = "helper-reported",
    [PC_FAULT_CONTAINER_START] = "container-start",
    [PC_FAULT_CONTAINER_GO] = "container-go",
    [PC_FAULT_BEFORE_HOOK] = "before-hook",
    [PC_FAULT_AFTER_HOOK] = "after-hook",
    [PC_FAULT_BEFORE_EXEC] = "before-exec",
    [PC_FAULT_COLLECT_PID] = "collect-pid",
    [PC_FAULT_WORKER_REFILL] = "worker-refill",
    [PC_FAULT_CLOSE_RANGE_ENOSYS] = "close-range-enosys",
    [PC_FAULT_CLONE3_EINVAL] = "clone3-einval",
    [PC_FAULT_NOMEM_AFTER_SPAWN] = "nomem-after-spawn",
};

volatile unsigned long pc_fault_settings[PC_FAULT_COUNT];

void pc_fault_delay(enum pc_fault_point point)
{
    unsigned long us = pc_fault_settings[point];
    struct timespec delay = {.tv_sec = (time_t)(us / 1000000),
                             .tv_nsec = (long)(us % 1000000) * 1000};

    /* Raw: nanosleep(3) is a cancellation point (see nocancel.h). */
    if (us != 0)
        syscall(SYS_nanosleep, &delay, NULL);
}
#else
/* ISO C wants at least one declaration in a translation unit. */
typedef int pc_faults_compiled_out;
#endif
