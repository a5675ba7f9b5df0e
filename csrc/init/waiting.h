/* pycontain-init's wait mode (waiting.c): a warm pool entry's init, which
 * waits for the program it is to start (pycontain/_pool.py). */
#ifndef PYCONTAIN_INIT_WAITING_H
#define PYCONTAIN_INIT_WAITING_H

#include <stdint.h>

#include "../error.h"

/* What one request asks for (internal.h: struct pc_warm_request), parsed:
 * every pointer points into memory the init mapped for it. */
struct init_program {
    char **paths; /* the candidates, as child.c's exec_paths */
    long path_count;
    char **argv;
    char **envp;
    const char *cwd; /* NULL: stay in / */
    const int *fds;  /* received, close-on-exec */
    const int32_t *targets;
    int fd_count;
    uint64_t signal_mask;
};

/* Wait for one request on `request_fd`, watching the owner's pidfd
 * (`owner_fd`, -1: none). Returns 0 with `program` filled, or -1 when
 * the init should just exit: the owner died, the pool closed its end, or
 * the request was not one of ours (then `err` says so and `*malformed` is 1). */
int init_wait_for_request(int request_fd, int owner_fd, struct init_program *program,
                          struct pc_error *err, int *malformed);

/* In the program's process, before its exec: cwd and the fds at their
 * numbers (everything else the init holds is close-on-exec). The request
 * socket `*request_fd` is moved above every target first (the new number is
 * stored there), so that no placed fd replaces it. */
int init_place_program(const struct init_program *program, int *request_fd, struct pc_error *err);

#endif
