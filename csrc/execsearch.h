/*
 * The PATH search's rule for one failed execve, as execvpe(3) has it: shared
 * by the child's exec (child.c) and the init's start of the program
 * (init/init.c), so that a program missing, or not executable, is reported
 * alike on both paths. Header-only: the init is built without libc.
 */
#ifndef PYCONTAIN_EXECSEARCH_H
#define PYCONTAIN_EXECSEARCH_H

#include <errno.h>

/* What to report when no candidate could be run: ENOENT and the first path,
 * unless a candidate was found but not executable (EACCES, the first such). */
struct pc_exec_search {
    int failed_errno;
    const char *failed_path;
};

static inline void pc_exec_search_start(struct pc_exec_search *search, const char *first)
{
    search->failed_errno = ENOENT;
    search->failed_path = first;
}

/* After execve(path) failed with `errnum`: 1 to try the next candidate, 0
 * to stop and report `errnum` for `path`. Runs between clone and exec:
 * async-signal-safe. */
static inline int pc_exec_search_goes_on(struct pc_exec_search *search, int errnum,
                                         const char *path)
{
    switch (errnum) {
    case ENOENT:
    case ENOTDIR:
    case ESTALE:
    case ENODEV:
    case ETIMEDOUT:
        return 1;
    case EACCES:
        if (search->failed_errno != EACCES) {
            search->failed_errno = EACCES;
            search->failed_path = path;
        }
        return 1;
    default:
        return 0;
    }
}

#endif
