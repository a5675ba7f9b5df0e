/* pycontain._core: the CPython glue around the C core (csrc/).
 *
 * Thin on purpose: it converts arguments Python has already validated into
 * a struct pc_spawn_request, runs pc_spawn with the GIL released, and hands
 * back either (pid, pidfd) or the raw error record. Exception classes,
 * messages and every policy decision live in Python (pycontain/_spawn.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults.h"
#include "internal.h"
#include "pycontain.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

/* Per-interpreter state: each interpreter that imports the module gets its
 * own exception class, so that `except StepError` matches in each. */
struct core_state {
    PyObject *step_error; /* raised with args (step, errno, detail, status) */
};

static struct core_state *core_state_of(PyObject *module)
{
    return PyModule_GetState(module);
}

/* Argument conversion. As CPython's _posixsubprocess does, everything is
 * copied into memory this call owns before the GIL is released: a list's
 * items are read from a tuple snapshot of it (so no Python code run during
 * the conversion can change its length or free its items under us), and
 * strings and numbers are copied into C arrays. Only exact types are
 * accepted (int, bytes, list/tuple), so no __index__ or __len__ of the
 * caller runs at all. Python (pycontain/_spawn.py) has checked the values
 * already; these checks keep a direct caller of _core from crashing it. */

/* A snapshot of a list or tuple (a new reference), or NULL with TypeError. */
static PyObject *snapshot(PyObject *seq, const char *what)
{
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list or tuple, not %.100s", what,
                     Py_TYPE(seq)->tp_name);
        return NULL;
    }
    return PySequence_Tuple(seq);
}

/* A snapshot of `seq` (a new reference), and in *array a zeroed block for
 * one element of `size` bytes per item and one more (a terminator); NULL
 * with an exception, and nothing to release, on failure. */
static PyObject *snapshot_with_array(PyObject *seq, const char *what, size_t size, void **array)
{
    PyObject *items = snapshot(seq, what);

    if (items == NULL)
        return NULL;
    *array = PyMem_Calloc((size_t)PyTuple_GET_SIZE(items) + 1, size);
    if (*array == NULL) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return NULL;
    }
    return items;
}

/* A NULL-terminated array of C strings, allocated in one block with the
 * strings after the pointers. */
struct string_array {
    char **items;
    size_t count;
};

static int convert_string_array(PyObject *seq, struct string_array *out, const char *what)
{
    PyObject *items = snapshot(seq, what);
    Py_ssize_t n;
    size_t size;
    char *storage;

    if (items == NULL)
        return -1;
    n = PyTuple_GET_SIZE(items);
    size = ((size_t)n + 1) * sizeof(char *);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);

        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s items must be bytes, not %.100s", what,
                         Py_TYPE(item)->tp_name);
            goto fail;
        }
        if ((size_t)PyBytes_GET_SIZE(item) != strlen(PyBytes_AS_STRING(item))) {
            PyErr_Format(PyExc_ValueError, "%s items must not contain a NUL byte", what);
            goto fail;
        }
        size += (size_t)PyBytes_GET_SIZE(item) + 1;
    }
    out->items = PyMem_Malloc(size);
    if (out->items == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    storage = (char *)(out->items + n + 1);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        size_t length = (size_t)PyBytes_GET_SIZE(item) + 1;

        memcpy(storage, PyBytes_AS_STRING(item), length);
        out->items[i] = storage;
        storage += length;
    }
    out->items[n] = NULL;
    out->count = (size_t)n;
    Py_DECREF(items);
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

/* An exact int in [low, high] into *out; ValueError when out of range. */
static int convert_int(PyObject *value, long long low, long long high, long long *out,
                       const char *what)
{
    int overflow;
    long long number;

    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number == -1 && PyErr_Occurred())
        return -1;
    if (overflow != 0 || number < low || number > high) {
        PyErr_Format(PyExc_ValueError, "%s out of range", what);
        return -1;
    }
    *out = number;
    return 0;
}

/* A list of ints that fit in an int (fds). */
struct int_array {
    int *items;
    size_t count;
};

static int convert_int_array(PyObject *seq, struct int_array *out, const char *what)
{
    void *block;
    PyObject *items = snapshot_with_array(seq, what, sizeof(int), &block);
    Py_ssize_t n;

    if (items == NULL)
        return -1;
    out->items = block;
    n = PyTuple_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        long long value;

        if (convert_int(PyTuple_GET_ITEM(items, i), INT_MIN, INT_MAX, &value, what) < 0) {
            Py_DECREF(items);
            return -1;
        }
        out->items[i] = (int)value;
    }
    out->count = (size_t)n;
    Py_DECREF(items);
    return 0;
}

/* An rlimit value: 0 to 2**64 - 1, or -1 (resource.RLIM_INFINITY, which
 * is 2**64 - 1 to the kernel). */
static int convert_u64(PyObject *value, unsigned long long *out, const char *what)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (PyLong_AsLong(value) == -1 && !PyErr_Occurred()) {
        *out = RLIM_INFINITY;
        return 0;
    }
    PyErr_Clear();
    *out = PyLong_AsUnsignedLongLong(value);
    if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Format(PyExc_ValueError, "%s out of range (0 to 2**64 - 1)", what);
        return -1;
    }
    return 0;
}

/* rlimits: a list of (resource, soft, hard). */
static int convert_rlimits(PyObject *seq, struct pc_rlimit **out, size_t *count)
{
    void *block;
    PyObject *items = snapshot_with_array(seq, "rlimits", sizeof(struct pc_rlimit), &block);
    Py_ssize_t n;

    if (items == NULL)
        return -1;
    *out = block;
    n = PyTuple_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        long long resource;

        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "rlimits items are (resource, soft, hard)");
            goto fail;
        }
        if (convert_int(PyTuple_GET_ITEM(item, 0), 0, INT_MAX, &resource, "rlimit resource") < 0 ||
            convert_u64(PyTuple_GET_ITEM(item, 1), &(*out)[i].soft, "rlimit soft") < 0 ||
            convert_u64(PyTuple_GET_ITEM(item, 2), &(*out)[i].hard, "rlimit hard") < 0)
            goto fail;
        (*out)[i].resource = (int)resource;
    }
    *count = (size_t)n;
    Py_DECREF(items);
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

/* groups: None, or a list of gids. */
static int convert_groups(PyObject *seq, gid_t **out, size_t *count)
{
    void *block;
    PyObject *items = snapshot_with_array(seq, "groups", sizeof(gid_t), &block);
    Py_ssize_t n;

    if (items == NULL)
        return -1;
    *out = block;
    n = PyTuple_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        long long gid;

        /* (gid_t)-1 means "no change" to the kernel: not a group. */
        if (convert_int(PyTuple_GET_ITEM(items, i), 0, (long long)UINT32_MAX - 1, &gid,
                        "groups item") < 0) {
            Py_DECREF(items);
            return -1;
        }
        (*out)[i] = (gid_t)gid;
    }
    *count = (size_t)n;
    Py_DECREF(items);
    return 0;
}

/* A copy of bytes (no NUL inside) in memory this call owns, or NULL. */
static char *copy_bytes(PyObject *value, const char *what)
{
    size_t length;
    char *copy;

    if (!PyBytes_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return NULL;
    }
    length = (size_t)PyBytes_GET_SIZE(value);
    if (length != strlen(PyBytes_AS_STRING(value))) {
        PyErr_Format(PyExc_ValueError, "%s must not contain a NUL byte", what);
        return NULL;
    }
    copy = PyMem_Malloc(length + 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, PyBytes_AS_STRING(value), length + 1);
    return copy;
}

/* bytes (no NUL inside) or None to an owned C string or NULL. */
static int convert_optional_string(PyObject *value, char **out, const char *what)
{
    *out = NULL;
    if (value == Py_None)
        return 0;
    if (!PyBytes_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes or None, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    *out = copy_bytes(value, what);
    return *out == NULL ? -1 : 0;
}

/* binds: a list of (source: bytes, source_fd: int, target: bytes,
 * read_only: bool), copied; free_binds releases the strings too. */
static void free_binds(struct pc_bind *binds, size_t count)
{
    for (size_t i = 0; binds != NULL && i < count; i++) {
        PyMem_Free((char *)binds[i].source);
        PyMem_Free((char *)binds[i].target);
    }
    PyMem_Free(binds);
}

static int convert_binds(PyObject *list, struct pc_bind **out, size_t *count)
{
    void *block;
    PyObject *items = snapshot_with_array(list, "binds", sizeof(struct pc_bind), &block);
    Py_ssize_t n;

    if (items == NULL)
        return -1;
    *out = block;
    n = PyTuple_GET_SIZE(items);
    /* Zeroed: free_binds(*out, *count) is right whenever this stops. */
    *count = (size_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        struct pc_bind *bind = &(*out)[i];
        long long fd;

        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 4 ||
            !PyBool_Check(PyTuple_GET_ITEM(item, 3))) {
            PyErr_SetString(PyExc_TypeError,
                            "binds items are (source, source_fd, target, read_only)");
            goto fail;
        }
        if (convert_int(PyTuple_GET_ITEM(item, 1), 0, INT_MAX, &fd, "bind source_fd") < 0 ||
            (bind->source = copy_bytes(PyTuple_GET_ITEM(item, 0), "bind source")) == NULL ||
            (bind->target = copy_bytes(PyTuple_GET_ITEM(item, 2), "bind target")) == NULL)
            goto fail;
        bind->source_fd = (int)fd;
        bind->read_only = PyTuple_GET_ITEM(item, 3) == Py_True;
    }
    Py_DECREF(items);
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

/* tmpfs: a list of (target: bytes, size: int, mode: int), copied. */
static void free_tmpfs(struct pc_tmpfs *mounts, size_t count)
{
    for (size_t i = 0; mounts != NULL && i < count; i++)
        PyMem_Free((char *)mounts[i].target);
    PyMem_Free(mounts);
}

static int convert_tmpfs(PyObject *list, struct pc_tmpfs **out, size_t *count)
{
    void *block;
    PyObject *items = snapshot_with_array(list, "tmpfs", sizeof(struct pc_tmpfs), &block);
    Py_ssize_t n;

    if (items == NULL)
        return -1;
    *out = block;
    n = PyTuple_GET_SIZE(items);
    *count = (size_t)n; /* zeroed: free_tmpfs(*out, *count) is right */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        struct pc_tmpfs *mount = &(*out)[i];
        long long mode;

        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "tmpfs items are (target, size, mode)");
            goto fail;
        }
        if (convert_u64(PyTuple_GET_ITEM(item, 1), &mount->size, "tmpfs size") < 0 ||
            convert_int(PyTuple_GET_ITEM(item, 2), 0, 07777, &mode, "tmpfs mode") < 0 ||
            (mount->target = copy_bytes(PyTuple_GET_ITEM(item, 0), "tmpfs target")) == NULL)
            goto fail;
        mount->mode = (unsigned int)mode;
    }
    Py_DECREF(items);
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

/* The trampoline: the only way Python code runs between clone and exec.
 *
 * It runs in the container's process on the fork path only: a forked copy
 * of this process in which PyOS_AfterFork_Child has made the interpreter
 * usable, with the GIL released by the helper right after the fork. The
 * GIL is held just for the call. An exception is formatted (by Python, by
 * `format_exception`, bounded in size) into the error record; the C
 * sequence then reports it and exits, so control never returns into the
 * parent's Python code paths. */
struct python_hooks {
    PyObject *callables[3];     /* indexed by enum pc_hook; NULL: none */
    PyObject *format_exception; /* exc -> (errno, bytes) */
    PyThreadState *thread_state;
};

static void record_exception(struct python_hooks *hooks, enum pc_hook hook, struct pc_error *err)
{
    enum pc_step step = hook == PC_HOOK_PRE_PIVOT ? PC_STEP_PRE_PIVOT : PC_STEP_PRE_EXEC;
    PyObject *type, *value, *traceback, *formatted;
    /* In the report format of pycontain._callbacks.format_exception. */
    const char *text =
        "BaseException\nthe callback raised an exception that could not be formatted\n";
    int errnum = 0;

    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    formatted = PyObject_CallOneArg(hooks->format_exception, value != NULL ? value : Py_None);
    if (formatted != NULL && PyTuple_Check(formatted) && PyTuple_GET_SIZE(formatted) == 2 &&
        PyBytes_Check(PyTuple_GET_ITEM(formatted, 1))) {
        errnum = (int)PyLong_AsLong(PyTuple_GET_ITEM(formatted, 0));
        text = PyBytes_AS_STRING(PyTuple_GET_ITEM(formatted, 1));
    }
    PyErr_Clear();
    pc_fail(err, step, errnum < 0 ? 0 : errnum, text);
    Py_XDECREF(formatted);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

static int run_python_hook(void *context, enum pc_hook hook, struct pc_error *err)
{
    struct python_hooks *hooks = context;
    PyObject *result;

    PyEval_RestoreThread(hooks->thread_state);
    result = PyObject_CallNoArgs(hooks->callables[hook]);
    if (result == NULL)
        record_exception(hooks, hook, err);
    Py_XDECREF(result);
    hooks->thread_state = PyEval_SaveThread();
    return result == NULL ? -1 : 0;
}

/* The fork path (pycontain.h): fork with CPython's own at-fork handling,
 * then wait with the GIL released. */
static int spawn_forked(const struct pc_spawn_request *request, struct python_hooks *hooks,
                        int timeout_ms, struct pc_process *process, struct pc_error *err)
{
    struct pc_fork_state state;
    pid_t helper;
    int rc, fork_errno;

    if (pc_fork_prepare(request, &state, err) < 0)
        return -1;
    PyOS_BeforeFork();
    helper = fork();
    if (helper == 0) {
        pc_fork_helper_early(&state);
        PyOS_AfterFork_Child();
        hooks->thread_state = PyEval_SaveThread();
        pc_fork_helper(&state);
    }
    fork_errno = errno;
    PyOS_AfterFork_Parent();
    if (helper < 0) {
        pc_fork_abandon(&state);
        return pc_fail(err, PC_STEP_CLONE, fork_errno, "fork");
    }
    Py_BEGIN_ALLOW_THREADS rc = pc_fork_collect(&state, helper, timeout_ms, process, err);
    Py_END_ALLOW_THREADS return rc;
}

/* The container started but this call cannot return it (no memory for the
 * result): kill it, reap it, release what it held. */
static void abandon_process(struct pc_process *process)
{
    siginfo_t info;

    syscall(SYS_pidfd_send_signal, process->pidfd, SIGKILL, NULL, 0);
    while (syscall(SYS_waitid, P_PIDFD, process->pidfd, &info, WEXITED, NULL) < 0 && errno == EINTR)
        ;
    close(process->pidfd);
    if (process->mntns >= 0)
        pc_nsworker_drop_mntns(process->mntns, 0);
}

PyDoc_STRVAR(spawn_doc,
             "spawn(*, argv, envp, exec_paths, cwd, layer_paths, layer_fds, upper_path,\n"
             "      upper_fd, work_path, work_fd, scratch_dir, namespaces, stdio, pass_fds,\n"
             "      hostname, rlimits, groups, gid, uid, umask, force_legacy_clone=False,\n"
             "      trace=None, pre_pivot=None, pre_exec=None, format_exception=None,\n"
             "      timeout_ms=-1, use_netns_pool=True, cgroup_fd=-1, cgroup_procs_fds=[],\n"
             "      scratch_size=0, dev_size=0, dev_inodes=0, shm_size=0, binds=None,\n"
             "      tmpfs=None, force_resolve_walk=False,\n"
             "      privileged=False, capabilities=0, last_capability=CAP_LAST_CAP,\n"
             "      seccomp=None, new_session=True, upper_socket=-1, main=None, init_fd=-1,\n"
             "      init_argv=None, init_keep_fds=(), stay_in_caller_group=False,\n"
             "      uid_map=None, gid_map=None, nice=None)\n"
             "      -> (pid, pidfd, mntns)\n\n"
             "Start a container. Arguments are pre-validated bytes, ints and fds (see\n"
             "pycontain/_spawn.py); rlimits is a list of (resource, soft, hard), groups\n"
             "None or a list of gids. Raises StepError(step, errno, detail) on failure.\n"
             "mntns is -1 or a handle for release() (the container's mount namespace).\n"
             "trace: a writable buffer of STEP_COUNT native unsigned long longs that\n"
             "receives when each step ended (CLOCK_MONOTONIC ns), for benchmarks.\n"
             "With pre_pivot/pre_exec (callables) or timeout_ms >= 0 the fork path is\n"
             "used; format_exception(exc) -> (errno, bytes) formats a hook's exception.\n"
             "cgroup_fd: a cgroup v2 directory to clone into; cgroup_procs_fds: the\n"
             "cgroup.procs files the child writes \"0\" to otherwise.\n"
             "Sizes are bytes (0: the kernel's default); binds is a list of (source,\n"
             "source_fd, target, read_only), tmpfs of (target, size, mode).\n"
             "capabilities: a mask of the capabilities the program keeps (bit N:\n"
             "capability N); seccomp: None or bytes of struct sock_filter to load last.\n"
             "upper_socket: an AF_UNIX datagram socket the child sends an fd of the\n"
             "throwaway upper directory over (csrc/upper.c), or -1.\n"
             "main (a callable) runs instead of the exec, as the program (pycontain.call).\n"
             "init_fd >= 0: exec that init with init_argv as the last step (csrc/init/).\n"
             "uid_map, gid_map: bytes the child writes to its maps when namespaces has\n"
             "CLONE_NEWUSER (csrc/userns.c).\n"
             "nice: None, or the niceness the child sets before it drops its\n"
             "capabilities (csrc/priority.c).");

static PyObject *core_spawn(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"argv",
                               "envp",
                               "exec_paths",
                               "cwd",
                               "layer_paths",
                               "layer_fds",
                               "upper_path",
                               "upper_fd",
                               "work_path",
                               "work_fd",
                               "scratch_dir",
                               "namespaces",
                               "stdio",
                               "pass_fds",
                               "hostname",
                               "rlimits",
                               "groups",
                               "gid",
                               "uid",
                               "umask",
                               "force_legacy_clone",
                               "trace",
                               "pre_pivot",
                               "pre_exec",
                               "format_exception",
                               "timeout_ms",
                               "use_netns_pool",
                               "cgroup_fd",
                               "cgroup_procs_fds",
                               "scratch_size",
                               "dev_size",
                               "dev_inodes",
                               "shm_size",
                               "binds",
                               "tmpfs",
                               "force_resolve_walk",
                               "privileged",
                               "capabilities",
                               "last_capability",
                               "seccomp",
                               "new_session",
                               "upper_socket",
                               "main",
                               "init_fd",
                               "init_argv",
                               "init_keep_fds",
                               "stay_in_caller_group",
                               "uid_map",
                               "gid_map",
                               "nice",
                               NULL};
    PyObject *argv_list, *envp_list, *exec_list, *cwd_object, *layer_path_list, *rlimit_list;
    PyObject *group_list, *layer_fd_list, *stdio_list, *pass_fd_list, *result = NULL;
    PyObject *upper_path_object, *work_path_object, *hostname_object, *scratch_object;
    PyObject *trace = Py_None, *cgroup_procs_list = NULL;
    PyObject *uid_map_object = Py_None, *gid_map_object = Py_None;
    char *uid_map = NULL, *gid_map = NULL;
    PyObject *pre_pivot = Py_None, *pre_exec = Py_None, *format_exception = Py_None;
    PyObject *seccomp = Py_None, *bind_list = Py_None, *tmpfs_list = Py_None;
    int privileged = 0, last_capability = CAP_LAST_CAP, new_session = 1, force_resolve_walk = 0;
    unsigned long long capabilities = 0;
    PyObject *main_hook = Py_None;
    int upper_socket = -1;
    int init_fd = -1, stay_in_caller_group = 0;
    PyObject *init_argv_list = Py_None, *init_keep_list = NULL, *nice = Py_None;
    struct string_array init_argv = {0};
    struct int_array init_keep_fds = {0};
    unsigned long long scratch_size = 0, dev_size = 0, dev_inodes = 0, shm_size = 0;
    struct pc_bind *binds = NULL;
    struct pc_tmpfs *tmpfs = NULL;
    size_t bind_count = 0, tmpfs_count = 0;
    char *seccomp_filter = NULL;
    struct python_hooks python_hooks = {0};
    struct pc_hooks hooks = {.run = run_python_hook, .context = &python_hooks};
    int timeout_ms = -1, use_netns_pool = 1, cgroup_fd = -1;
    Py_buffer trace_buffer = {0};
    char *cwd = NULL, *scratch_dir = NULL, *upper_path = NULL, *work_path = NULL;
    char *hostname = NULL;
    unsigned long namespaces;
    long long gid, uid;
    int upper_fd, work_fd, umask_value, force_legacy_clone = 0, rc;
    struct int_array layer_fds = {0}, stdio = {0}, pass_fds = {0}, cgroup_procs_fds = {0};
    struct string_array argv = {0}, envp = {0}, exec_paths = {0}, layer_paths = {0};
    struct pc_spawn_request request = {0};
    struct pc_rlimit *rlimits = NULL;
    gid_t *groups = NULL;
    struct pc_process process;
    struct pc_error err;

    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOOOOiOiOkOOOOOLLi|pOOOOipiOKKKKOOppKiOpiOiOOpOOO", keywords,
            &argv_list, &envp_list, &exec_list, &cwd_object, &layer_path_list, &layer_fd_list,
            &upper_path_object, &upper_fd, &work_path_object, &work_fd, &scratch_object,
            &namespaces, &stdio_list, &pass_fd_list, &hostname_object, &rlimit_list, &group_list,
            &gid, &uid, &umask_value, &force_legacy_clone, &trace, &pre_pivot, &pre_exec,
            &format_exception, &timeout_ms, &use_netns_pool, &cgroup_fd, &cgroup_procs_list,
            &scratch_size, &dev_size, &dev_inodes, &shm_size, &bind_list, &tmpfs_list,
            &force_resolve_walk, &privileged, &capabilities, &last_capability, &seccomp,
            &new_session, &upper_socket, &main_hook, &init_fd, &init_argv_list, &init_keep_list,
            &stay_in_caller_group, &uid_map_object, &gid_map_object, &nice))
        return NULL;
    if (convert_string_array(argv_list, &argv, "argv") < 0 ||
        convert_string_array(envp_list, &envp, "envp") < 0 ||
        convert_string_array(exec_list, &exec_paths, "exec_paths") < 0 ||
        convert_string_array(layer_path_list, &layer_paths, "layer_paths") < 0 ||
        convert_int_array(layer_fd_list, &layer_fds, "layer_fds") < 0 ||
        convert_int_array(stdio_list, &stdio, "stdio") < 0 ||
        convert_int_array(pass_fd_list, &pass_fds, "pass_fds") < 0 ||
        (init_fd >= 0 && convert_string_array(init_argv_list, &init_argv, "init_argv") < 0) ||
        (init_keep_list != NULL &&
         convert_int_array(init_keep_list, &init_keep_fds, "init_keep_fds") < 0) ||
        (cgroup_procs_list != NULL &&
         convert_int_array(cgroup_procs_list, &cgroup_procs_fds, "cgroup_procs_fds") < 0) ||
        convert_optional_string(cwd_object, &cwd, "cwd") < 0 ||
        convert_optional_string(upper_path_object, &upper_path, "upper_path") < 0 ||
        convert_optional_string(work_path_object, &work_path, "work_path") < 0 ||
        convert_optional_string(hostname_object, &hostname, "hostname") < 0 ||
        convert_optional_string(uid_map_object, &uid_map, "uid_map") < 0 ||
        convert_optional_string(gid_map_object, &gid_map, "gid_map") < 0 ||
        convert_optional_string(scratch_object, &scratch_dir, "scratch_dir") < 0 ||
        convert_rlimits(rlimit_list, &rlimits, &request.rlimit_count) < 0)
        goto done;
    if (group_list != Py_None) {
        if (convert_groups(group_list, &groups, &request.group_count) < 0)
            goto done;
        request.set_groups = 1;
        request.groups = groups;
    }
    if (bind_list != Py_None) {
        if (convert_binds(bind_list, &binds, &bind_count) < 0)
            goto done;
        request.binds = binds;
        request.bind_count = bind_count;
    }
    if (tmpfs_list != Py_None) {
        if (convert_tmpfs(tmpfs_list, &tmpfs, &tmpfs_count) < 0)
            goto done;
        request.tmpfs = tmpfs;
        request.tmpfs_count = tmpfs_count;
    }
    if (seccomp != Py_None) {
        /* struct sock_filter is 8 bytes; the kernel takes 1 to BPF_MAXINSNS
         * (4096) instructions. */
        if (!PyBytes_Check(seccomp)) {
            PyErr_SetString(PyExc_TypeError, "seccomp must be bytes or None");
            goto done;
        }
        if (PyBytes_GET_SIZE(seccomp) == 0 || PyBytes_GET_SIZE(seccomp) % 8 != 0 ||
            PyBytes_GET_SIZE(seccomp) / 8 > 4096) {
            PyErr_SetString(PyExc_ValueError, "seccomp must hold 1 to 4096 8-byte instructions");
            goto done;
        }
        seccomp_filter = PyMem_Malloc((size_t)PyBytes_GET_SIZE(seccomp));
        if (seccomp_filter == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(seccomp_filter, PyBytes_AS_STRING(seccomp), (size_t)PyBytes_GET_SIZE(seccomp));
        request.seccomp_filter = seccomp_filter;
        request.seccomp_length = (size_t)PyBytes_GET_SIZE(seccomp) / 8;
    }
    if (last_capability < 0 || last_capability > 63) {
        PyErr_SetString(PyExc_ValueError, "last_capability must be from 0 to 63");
        goto done;
    }
    if (scratch_dir == NULL) {
        PyErr_SetString(PyExc_TypeError, "scratch_dir must be bytes");
        goto done;
    }
    if (stdio.count != 3) {
        PyErr_SetString(PyExc_ValueError, "stdio must have 3 items");
        goto done;
    }
    if (layer_paths.count != layer_fds.count) {
        PyErr_SetString(PyExc_ValueError, "layer_paths and layer_fds differ in length");
        goto done;
    }
    if ((upper_fd >= 0) != (upper_path != NULL) || (work_fd >= 0) != (upper_fd >= 0) ||
        (work_fd >= 0) != (work_path != NULL)) {
        PyErr_SetString(PyExc_ValueError, "upper and work need a path and an fd each, or neither");
        goto done;
    }
    if (trace != Py_None) {
        if (PyObject_GetBuffer(trace, &trace_buffer, PyBUF_WRITABLE) < 0)
            goto done;
        if ((size_t)trace_buffer.len < PC_STEP_COUNT * sizeof(unsigned long long)) {
            PyErr_Format(PyExc_ValueError, "trace must hold %d unsigned long longs", PC_STEP_COUNT);
            goto done;
        }
        request.trace_ns = trace_buffer.buf;
    }

    request.namespaces = namespaces;
    request.scratch_dir = scratch_dir;
    request.layer_paths = (const char *const *)layer_paths.items;
    request.layer_fds = layer_fds.items;
    request.layer_count = layer_fds.count;
    request.upper_path = upper_path;
    request.upper_fd = upper_fd;
    request.work_path = work_path;
    request.work_fd = work_fd;
    request.cwd = cwd;
    request.exec_paths = (const char *const *)exec_paths.items;
    request.argv = argv.items;
    request.envp = envp.items;
    for (int i = 0; i < 3; i++)
        request.stdio[i] = stdio.items[i];
    request.pass_fds = pass_fds.items;
    request.pass_fd_count = pass_fds.count;
    request.hostname = hostname;
    request.uid_map = uid_map;
    request.gid_map = gid_map;
    request.rlimits = rlimits;
    request.gid = gid;
    request.uid = uid;
    request.umask = umask_value;
    request.force_legacy_clone = force_legacy_clone;
    request.use_netns_pool = use_netns_pool;
    request.cgroup_fd = cgroup_fd;
    request.cgroup_procs_fds = cgroup_procs_fds.items;
    request.cgroup_procs_fd_count = cgroup_procs_fds.count;
    request.scratch_size = scratch_size;
    request.dev_size = dev_size;
    request.dev_inodes = dev_inodes;
    request.shm_size = shm_size;
    request.force_resolve_walk = force_resolve_walk;
    request.upper_socket = upper_socket;
    request.privileged = privileged;
    request.capabilities = capabilities;
    request.last_capability = last_capability;
    request.new_session = new_session;
    request.stay_in_caller_group = stay_in_caller_group;
    if (nice != Py_None) {
        long value = PyLong_AsLong(nice);

        if (value == -1 && PyErr_Occurred())
            goto done;
        if (value < -20 || value > 19) {
            PyErr_SetString(PyExc_ValueError, "nice must be from -20 to 19");
            goto done;
        }
        request.set_nice = 1;
        request.nice = (int)value;
    }
    request.init_fd = init_fd;
    request.init_argv = init_argv.items;
    request.init_keep_fds = init_keep_fds.items;
    request.init_keep_fd_count = init_keep_fds.count;

    if (pre_pivot != Py_None || pre_exec != Py_None || main_hook != Py_None) {
        if ((pre_pivot != Py_None && !PyCallable_Check(pre_pivot)) ||
            (pre_exec != Py_None && !PyCallable_Check(pre_exec)) ||
            (main_hook != Py_None && !PyCallable_Check(main_hook)) ||
            !PyCallable_Check(format_exception)) {
            PyErr_SetString(PyExc_TypeError, "hooks and format_exception must be callable");
            goto done;
        }
        python_hooks.callables[PC_HOOK_PRE_PIVOT] = pre_pivot == Py_None ? NULL : pre_pivot;
        python_hooks.callables[PC_HOOK_PRE_EXEC] = pre_exec == Py_None ? NULL : pre_exec;
        python_hooks.callables[PC_HOOK_MAIN] = main_hook == Py_None ? NULL : main_hook;
        python_hooks.format_exception = format_exception;
        hooks.points = (pre_pivot != Py_None ? 1U << PC_HOOK_PRE_PIVOT : 0) |
                       (pre_exec != Py_None ? 1U << PC_HOOK_PRE_EXEC : 0) |
                       (main_hook != Py_None ? 1U << PC_HOOK_MAIN : 0);
        request.hooks = &hooks;
    }

    /* Everything the spawn reads is in memory this call owns (the hooks'
     * callables are held by kwargs, which outlives it). */
    if (request.hooks != NULL || timeout_ms >= 0) {
        /* A fork of a subinterpreter is refused by os.fork too. */
        if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
            PyErr_SetString(PyExc_RuntimeError,
                            "pre_pivot, pre_exec and timeout= fork the interpreter, which "
                            "only the main interpreter may do");
            goto done;
        }
        rc = spawn_forked(&request, &python_hooks, timeout_ms, &process, &err);
    } else {
        Py_BEGIN_ALLOW_THREADS rc = pc_spawn(&request, &process, &err);
        Py_END_ALLOW_THREADS
    }

    if (rc == 0) {
        if (pc_fault_on(PC_FAULT_NOMEM_AFTER_SPAWN))
            PyErr_NoMemory();
        else
            result = Py_BuildValue("(iii)", (int)process.pid, process.pidfd, process.mntns);
        if (result == NULL)
            abandon_process(&process);
    } else {
        PyObject *error_args = Py_BuildValue("(siyi)", pc_step_name(err.step), (int)err.err,
                                             err.detail, (int)err.status);
        if (error_args != NULL) {
            PyErr_SetObject(core_state_of(module)->step_error, error_args);
            Py_DECREF(error_args);
        }
    }
done:
    PyMem_Free(argv.items);
    PyMem_Free(envp.items);
    PyMem_Free(exec_paths.items);
    PyMem_Free(layer_paths.items);
    PyMem_Free(layer_fds.items);
    PyMem_Free(stdio.items);
    PyMem_Free(pass_fds.items);
    PyMem_Free(cgroup_procs_fds.items);
    PyMem_Free(rlimits);
    PyMem_Free(groups);
    PyMem_Free(cwd);
    PyMem_Free(scratch_dir);
    PyMem_Free(upper_path);
    PyMem_Free(work_path);
    PyMem_Free(hostname);
    PyMem_Free(uid_map);
    PyMem_Free(gid_map);
    PyMem_Free(seccomp_filter);
    PyMem_Free(init_argv.items);
    PyMem_Free(init_keep_fds.items);
    free_binds(binds, bind_count);
    free_tmpfs(tmpfs, tmpfs_count);
    if (trace_buffer.obj != NULL)
        PyBuffer_Release(&trace_buffer);
    return result;
}

_Static_assert(sizeof(struct pc_usage) == sizeof(struct rusage), "pc_usage is the kernel's rusage");

/* One message of the init's status pipe (init/init.c), read without
 * blocking (the pipe is O_NONBLOCK): None when nothing is there yet. */
static PyObject *core_read_message(PyObject *module, PyObject *arg)
{
    struct pc_message message;
    long fd = PyLong_AsLong(arg);
    ssize_t n;

    (void)module;
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    memset(&message, 0, sizeof message);
    do
        n = read((int)fd, &message, sizeof message);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        Py_RETURN_NONE;
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (n != 0 && n != (ssize_t)sizeof message) {
        errno = EIO;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (message.kind == PC_MESSAGE_STATUS) {
        const struct pc_usage *u = &message.usage;
        const int64_t *c = u->counters;

        return Py_BuildValue("(iisiyi(ddLLLLLLLLLLLLLL))", (int)message.kind, (int)message.value,
                             "", 0, "", 0, (double)u->utime_sec + (double)u->utime_usec * 1e-6,
                             (double)u->stime_sec + (double)u->stime_usec * 1e-6, (long long)c[0],
                             (long long)c[1], (long long)c[2], (long long)c[3], (long long)c[4],
                             (long long)c[5], (long long)c[6], (long long)c[7], (long long)c[8],
                             (long long)c[9], (long long)c[10], (long long)c[11], (long long)c[12],
                             (long long)c[13]);
    }
    message.error.detail[PC_DETAIL_MAX - 1] = '\0';
    return Py_BuildValue("(iisiyiO)", (int)message.kind, (int)message.value,
                         pc_step_name(message.error.step), (int)message.error.err,
                         message.error.detail, (int)message.error.status, Py_None);
}

static PyObject *core_step_names(PyObject *module, PyObject *unused)
{
    PyObject *names = PyTuple_New(PC_STEP_COUNT);

    (void)module;
    (void)unused;
    for (int i = 0; names != NULL && i < PC_STEP_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(pc_step_name(i));
        if (name == NULL) {
            Py_CLEAR(names);
            break;
        }
        PyTuple_SET_ITEM(names, i, name);
    }
    return names;
}

static PyObject *core_netns_pool(PyObject *module, PyObject *args)
{
    int size = -1, rc = 0;
    unsigned int configured, ready;
    unsigned long handed_out;
    struct pc_error err;
    int stopped;

    (void)module;
    if (!PyArg_ParseTuple(args, "|i", &size))
        return NULL;
    /* Stopping the worker joins its thread, which may be in the middle of
     * an idle-priority refill: not with the GIL held. */
    if (size >= 0) {
        Py_BEGIN_ALLOW_THREADS rc = pc_netns_pool_configure((unsigned int)size, &err);
        Py_END_ALLOW_THREADS
    }
    if (rc < 0) {
        errno = err.err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    stopped = pc_netns_pool_status(&configured, &ready, &handed_out);
    return Py_BuildValue("(IIik)", configured, ready, stopped, handed_out);
}

static PyObject *core_release(PyObject *module, PyObject *args)
{
    int handle, on_worker = 1;

    (void)module;
    if (!PyArg_ParseTuple(args, "i|p", &handle, &on_worker))
        return NULL;
    return PyBool_FromLong(pc_nsworker_drop_mntns(handle, on_worker) == 0);
}

/* os.waitid does not pass the raw syscall's fifth argument, the rusage of
 * the child and the children it waited for. */
static PyObject *core_wait_pidfd(PyObject *module, PyObject *args)
{
    int pidfd, options, rc;
    siginfo_t info;
    struct rusage usage;

    (void)module;
    if (!PyArg_ParseTuple(args, "ii", &pidfd, &options))
        return NULL;
    memset(&info, 0, sizeof info);
    memset(&usage, 0, sizeof usage);
    do {
        Py_BEGIN_ALLOW_THREADS rc =
            (int)syscall(SYS_waitid, P_PIDFD, pidfd, &info, options, &usage);
        Py_END_ALLOW_THREADS
    } while (rc < 0 && errno == EINTR && PyErr_CheckSignals() == 0);
    if (rc < 0)
        return PyErr_Occurred() ? NULL : PyErr_SetFromErrno(PyExc_OSError);
    if (info.si_pid == 0) /* WNOHANG, and it has not exited yet */
        Py_RETURN_NONE;
    return Py_BuildValue("(ii(ddllllllllllllll))", info.si_code, info.si_status,
                         (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec * 1e-6,
                         (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec * 1e-6,
                         usage.ru_maxrss, usage.ru_ixrss, usage.ru_idrss, usage.ru_isrss,
                         usage.ru_minflt, usage.ru_majflt, usage.ru_nswap, usage.ru_inblock,
                         usage.ru_oublock, usage.ru_msgsnd, usage.ru_msgrcv, usage.ru_nsignals,
                         usage.ru_nvcsw, usage.ru_nivcsw);
}

static PyObject *core_clear_sighand_supported(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(pc_clone_clear_sighand_supported());
}

#ifdef PC_FAULTS
static PyObject *core_set_fault(PyObject *module, PyObject *args)
{
    const char *name;
    unsigned long value;

    (void)module;
    if (!PyArg_ParseTuple(args, "sk", &name, &value))
        return NULL;
    for (int i = 0; i < PC_FAULT_COUNT; i++)
        if (strcmp(pc_fault_names[i], name) == 0) {
            pc_fault_settings[i] = value;
            Py_RETURN_NONE;
        }
    return PyErr_Format(PyExc_ValueError, "no fault point %s", name);
}
#endif

static PyMethodDef core_methods[] = {
    {"release", core_release, METH_VARARGS,
     "release(mntns, on_worker=True) -> bool: drop a container's mount namespace\n"
     "reference (spawn's mntns) on the worker thread (True), or here when it does\n"
     "not run or on_worker is false (False); a stale handle does nothing"},
    {"wait_pidfd", core_wait_pidfd, METH_VARARGS,
     "wait_pidfd(pidfd, options) -> None | (si_code, si_status, rusage fields): waitid(P_PIDFD)\n"
     "with the rusage os.waitid leaves out; None when WNOHANG found it still running"},
    {"netns_pool", core_netns_pool, METH_VARARGS,
     "netns_pool([size]) -> (size, ready, errno, handed_out): configure (size >= 0) and\n"
     "report the pool"},
    {"read_message", core_read_message, METH_O,
     "read_message(fd) -> None | (kind, value, step, errno, detail, status, usage): one message "
     "of\n"
     "the init's status pipe, without blocking (kind 0: end of file); usage: for a\n"
     "MESSAGE_STATUS the rusage fields of every process of the container (as wait_pidfd's),\n"
     "else None"},
    {"step_names", core_step_names, METH_NOARGS, "step_names() -> tuple of every step's name"},
    {"spawn", (PyCFunction)(void (*)(void))core_spawn, METH_VARARGS | METH_KEYWORDS, spawn_doc},
    {"_clear_sighand_supported", core_clear_sighand_supported, METH_NOARGS,
     "whether clone3 is still used with CLONE_CLEAR_SIGHAND (for the tests)"},
#ifdef PC_FAULTS
    {"_set_fault", core_set_fault, METH_VARARGS,
     "_set_fault(point, value): a delay in us, or 1/0 for a failure (test builds only)"},
#endif
    {NULL, NULL, 0, NULL},
};

static int core_exec(PyObject *module)
{
    struct core_state *state = core_state_of(module);

    state->step_error = PyErr_NewException("pycontain._core.StepError", NULL, NULL);
    if (state->step_error == NULL ||
        PyModule_AddObjectRef(module, "StepError", state->step_error) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "DEFAULT_NAMESPACES", PC_DEFAULT_NAMESPACES) < 0 ||
        PyModule_AddIntConstant(module, "STEP_COUNT", PC_STEP_COUNT) < 0 ||
        PyModule_AddIntConstant(module, "MESSAGE_ERROR", PC_MESSAGE_ERROR) < 0 ||
        PyModule_AddIntConstant(module, "MESSAGE_EXEC_OK", PC_MESSAGE_EXEC_OK) < 0 ||
        PyModule_AddIntConstant(module, "MESSAGE_STATUS", PC_MESSAGE_STATUS) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWNS", CLONE_NEWNS) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWPID", CLONE_NEWPID) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWNET", CLONE_NEWNET) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWUTS", CLONE_NEWUTS) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWIPC", CLONE_NEWIPC) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWUSER", CLONE_NEWUSER) < 0)
        return -1;
    return 0;
}

static int core_traverse(PyObject *module, visitproc visit, void *arg)
{
    struct core_state *state = core_state_of(module);

    Py_VISIT(state->step_error);
    return 0;
}

static int core_clear(PyObject *module)
{
    struct core_state *state = core_state_of(module);

    Py_CLEAR(state->step_error);
    return 0;
}

static void core_free(void *module)
{
    core_clear(module);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#ifdef Py_mod_multiple_interpreters
    /* The C core's own state is process-wide and thread-safe (atomics, one
     * mutex); the fork path refuses to run outside the main interpreter. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* Arguments are copied from tuple snapshots; nothing else here touches
     * a Python object that another thread could change. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pycontain._core",
    .m_doc = "C core of pycontain: spawn a container (internal).",
    .m_size = sizeof(struct core_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
