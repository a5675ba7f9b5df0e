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
#include <unistd.h>
#include <sched.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#include "pycontain.h"

/* Raised with args (step, errno, detail): Python turns it into a SpawnError. */
static PyObject *StepError;

/* A NULL-terminated array of pointers into the bytes objects of `seq` (a
 * list or tuple of bytes). The bytes must outlive the array. */
static char **bytes_array(PyObject *seq, const char *what)
{
    Py_ssize_t n;
    char **array;

    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return NULL;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    array = PyMem_New(char *, (size_t)n + 1);
    if (array == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);

        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
            PyMem_Free(array);
            return NULL;
        }
        array[i] = PyBytes_AS_STRING(item);
    }
    array[n] = NULL;
    return array;
}

/* Conversions for PyArg_ParseTupleAndKeywords ("O&"). Each fills a
 * struct the cleanup at the end of core_spawn releases. */
struct int_list {
    int *items;
    size_t count;
};

static int convert_int_list(PyObject *seq, void *out)
{
    struct int_list *list = out;
    Py_ssize_t n;

    if (seq == NULL) { /* cleanup call: parsing failed after this argument */
        PyMem_Free(list->items);
        list->items = NULL;
        return 1;
    }
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "expected a list of int");
        return 0;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    list->items = PyMem_New(int, (size_t)n + 1);
    if (list->items == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));

        if (value < INT_MIN || value > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_OverflowError, "value out of range for int");
        }
        if (PyErr_Occurred()) {
            PyMem_Free(list->items);
            list->items = NULL;
            return 0;
        }
        list->items[i] = (int)value;
    }
    list->count = (size_t)n;
    return Py_CLEANUP_SUPPORTED;
}

/* "O&" converter: bytes (no NUL inside) or None to a C string or NULL. */
static int convert_optional_bytes(PyObject *value, void *out)
{
    const char **string = out;

    if (value == Py_None) {
        *string = NULL;
        return 1;
    }
    if (!PyBytes_Check(value)) {
        PyErr_Format(PyExc_TypeError, "expected bytes or None, not %.100s",
                     Py_TYPE(value)->tp_name);
        return 0;
    }
    if ((size_t)PyBytes_GET_SIZE(value) != strlen(PyBytes_AS_STRING(value))) {
        PyErr_SetString(PyExc_ValueError, "embedded NUL byte");
        return 0;
    }
    *string = PyBytes_AS_STRING(value);
    return 1;
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

/* binds: a list of (source: bytes, source_fd: int, target: bytes, read_only:
 * bool); the bytes stay referenced by the list, which the caller's kwargs
 * keep alive. */
static int convert_binds(PyObject *list, struct pc_bind **out, struct pc_spawn_request *request)
{
    Py_ssize_t n;

    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "binds must be a list");
        return -1;
    }
    n = PyList_GET_SIZE(list);
    *out = PyMem_New(struct pc_bind, (size_t)n + 1);
    if (*out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        struct pc_bind *bind = &(*out)[i];

        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i),
                              "yiyp;binds items are (source, source_fd, target, read_only)",
                              &bind->source, &bind->source_fd, &bind->target, &bind->read_only))
            return -1;
    }
    request->binds = *out;
    request->bind_count = (size_t)n;
    return 0;
}

/* tmpfs: a list of (target: bytes, size: int, mode: int). */
static int convert_tmpfs(PyObject *list, struct pc_tmpfs **out, struct pc_spawn_request *request)
{
    Py_ssize_t n;

    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "tmpfs must be a list");
        return -1;
    }
    n = PyList_GET_SIZE(list);
    *out = PyMem_New(struct pc_tmpfs, (size_t)n + 1);
    if (*out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        struct pc_tmpfs *mount = &(*out)[i];

        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "yKI;tmpfs items are (target, size, mode)",
                              &mount->target, &mount->size, &mount->mode))
            return -1;
    }
    request->tmpfs = *out;
    request->tmpfs_count = (size_t)n;
    return 0;
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
             "      seccomp=None, new_session=True, upper_socket=-1, main=None)\n"
             "      -> (pid, pidfd, mntns_fd)\n\n"
             "Start a container. Arguments are pre-validated bytes, ints and fds (see\n"
             "pycontain/_spawn.py); rlimits is a list of (resource, soft, hard), groups\n"
             "None or a list of gids. Raises StepError(step, errno, detail) on failure.\n"
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
             "main (a callable) runs instead of the exec, as the program (pycontain.call).");

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
                               NULL};
    PyObject *argv_list, *envp_list, *exec_list, *cwd, *layer_path_list, *rlimit_list;
    PyObject *group_list, *result = NULL, *trace = Py_None;
    PyObject *pre_pivot = Py_None, *pre_exec = Py_None, *format_exception = Py_None;
    PyObject *seccomp = Py_None;
    int privileged = 0, last_capability = CAP_LAST_CAP, new_session = 1;
    unsigned long long capabilities = 0;
    PyObject *main_hook = Py_None;
    struct python_hooks python_hooks = {0};
    struct pc_hooks hooks = {.run = run_python_hook, .context = &python_hooks};
    int timeout_ms = -1, use_netns_pool = 1, cgroup_fd = -1, force_resolve_walk = 0;
    int upper_socket = -1;
    unsigned long long scratch_size = 0, dev_size = 0, dev_inodes = 0, shm_size = 0;
    PyObject *bind_list = Py_None, *tmpfs_list = Py_None;
    struct pc_bind *binds = NULL;
    struct pc_tmpfs *tmpfs = NULL;
    Py_buffer trace_buffer = {0};
    const char *scratch_dir, *upper_path, *work_path, *hostname;
    unsigned long namespaces;
    long long gid, uid;
    int upper_fd, work_fd, umask_value, force_legacy_clone = 0, rc;
    struct int_list layer_fds = {0}, stdio = {0}, pass_fds = {0}, cgroup_procs_fds = {0};
    struct pc_spawn_request request = {0};
    struct pc_rlimit *rlimits = NULL;
    gid_t *groups = NULL;
    struct pc_process process;
    struct pc_error err;
    char **argv = NULL, **envp = NULL, **exec_paths = NULL, **layer_paths = NULL;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOOO&O&iO&iykO&O&O&OOLLi|pOOOOipiO&KKKKOOppKiOpiO", keywords,
            &argv_list, &envp_list, &exec_list, &cwd, &layer_path_list, convert_int_list,
            &layer_fds, convert_optional_bytes, &upper_path, &upper_fd, convert_optional_bytes,
            &work_path, &work_fd, &scratch_dir, &namespaces, convert_int_list, &stdio,
            convert_int_list, &pass_fds, convert_optional_bytes, &hostname, &rlimit_list,
            &group_list, &gid, &uid, &umask_value, &force_legacy_clone, &trace, &pre_pivot,
            &pre_exec, &format_exception, &timeout_ms, &use_netns_pool, &cgroup_fd,
            convert_int_list, &cgroup_procs_fds, &scratch_size, &dev_size, &dev_inodes, &shm_size,
            &bind_list, &tmpfs_list, &force_resolve_walk, &privileged, &capabilities,
            &last_capability, &seccomp, &new_session, &upper_socket, &main_hook))
        return NULL;
    if (cwd != Py_None && !PyBytes_Check(cwd)) {
        PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
        goto done;
    }
    if (stdio.count != 3) {
        PyErr_SetString(PyExc_ValueError, "stdio must have 3 items");
        goto done;
    }
    if ((argv = bytes_array(argv_list, "argv")) == NULL ||
        (envp = bytes_array(envp_list, "envp")) == NULL ||
        (exec_paths = bytes_array(exec_list, "exec_paths")) == NULL ||
        (layer_paths = bytes_array(layer_path_list, "layer_paths")) == NULL)
        goto done;
    if ((size_t)PySequence_Fast_GET_SIZE(layer_path_list) != layer_fds.count) {
        PyErr_SetString(PyExc_ValueError, "layer_paths and layer_fds differ in length");
        goto done;
    }
    if ((upper_fd >= 0) != (upper_path != NULL) || (work_fd >= 0) != (upper_fd >= 0) ||
        (work_fd >= 0) != (work_path != NULL)) {
        PyErr_SetString(PyExc_ValueError, "upper and work need a path and an fd each, or neither");
        goto done;
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
        request.seccomp_filter = PyBytes_AS_STRING(seccomp);
        request.seccomp_length = (size_t)PyBytes_GET_SIZE(seccomp) / 8;
    }
    if (last_capability < 0 || last_capability > 63) {
        PyErr_SetString(PyExc_ValueError, "last_capability must be from 0 to 63");
        goto done;
    }
    if (!PyList_Check(rlimit_list)) {
        PyErr_SetString(PyExc_TypeError, "rlimits must be a list");
        goto done;
    }
    rlimits = PyMem_New(struct pc_rlimit, (size_t)PyList_GET_SIZE(rlimit_list) + 1);
    if (rlimits == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rlimit_list); i++)
        if (!PyArg_ParseTuple(PyList_GET_ITEM(rlimit_list, i),
                              "iKK;rlimits items are (resource, soft, hard)", &rlimits[i].resource,
                              &rlimits[i].soft, &rlimits[i].hard))
            goto done;
    if (group_list != Py_None) {
        if (!PyList_Check(group_list)) {
            PyErr_SetString(PyExc_TypeError, "groups must be a list or None");
            goto done;
        }
        groups = PyMem_New(gid_t, (size_t)PyList_GET_SIZE(group_list) + 1);
        if (groups == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(group_list); i++) {
            unsigned long value = PyLong_AsUnsignedLong(PyList_GET_ITEM(group_list, i));

            if (PyErr_Occurred())
                goto done;
            groups[i] = (gid_t)value;
        }
        request.set_groups = 1;
        request.groups = groups;
        request.group_count = (size_t)PyList_GET_SIZE(group_list);
    }
    if (bind_list != Py_None && convert_binds(bind_list, &binds, &request) < 0)
        goto done;
    if (tmpfs_list != Py_None && convert_tmpfs(tmpfs_list, &tmpfs, &request) < 0)
        goto done;
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
    request.layer_paths = (const char *const *)layer_paths;
    request.layer_fds = layer_fds.items;
    request.layer_count = layer_fds.count;
    request.upper_path = upper_path;
    request.upper_fd = upper_fd;
    request.work_path = work_path;
    request.work_fd = work_fd;
    request.cwd = cwd == Py_None ? NULL : PyBytes_AS_STRING(cwd);
    request.exec_paths = (const char *const *)exec_paths;
    request.argv = argv;
    request.envp = envp;
    for (int i = 0; i < 3; i++)
        request.stdio[i] = stdio.items[i];
    request.pass_fds = pass_fds.items;
    request.pass_fd_count = pass_fds.count;
    request.hostname = hostname;
    request.rlimits = rlimits;
    request.rlimit_count = (size_t)PyList_GET_SIZE(rlimit_list);
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

    /* The argument objects stay referenced by `args`/`kwargs` while the GIL
     * is released, so the borrowed string pointers remain valid. */
    if (request.hooks != NULL || timeout_ms >= 0) {
        rc = spawn_forked(&request, &python_hooks, timeout_ms, &process, &err);
    } else {
        Py_BEGIN_ALLOW_THREADS rc = pc_spawn(&request, &process, &err);
        Py_END_ALLOW_THREADS
    }

    if (rc == 0) {
        result = Py_BuildValue("(iii)", (int)process.pid, process.pidfd, process.mntns_fd);
    } else {
        PyObject *error_args = Py_BuildValue("(siyi)", pc_step_name(err.step), (int)err.err,
                                             err.detail, (int)err.status);
        if (error_args != NULL) {
            PyErr_SetObject(StepError, error_args);
            Py_DECREF(error_args);
        }
    }
done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(exec_paths);
    PyMem_Free(layer_paths);
    PyMem_Free(layer_fds.items);
    PyMem_Free(stdio.items);
    PyMem_Free(pass_fds.items);
    PyMem_Free(cgroup_procs_fds.items);
    PyMem_Free(rlimits);
    PyMem_Free(groups);
    PyMem_Free(binds);
    PyMem_Free(tmpfs);
    if (trace_buffer.obj != NULL)
        PyBuffer_Release(&trace_buffer);
    return result;
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
    int size = -1;
    unsigned int configured, ready;
    unsigned long handed_out;
    struct pc_error err;
    int stopped;

    (void)module;
    if (!PyArg_ParseTuple(args, "|i", &size))
        return NULL;
    if (size >= 0 && pc_netns_pool_configure((unsigned int)size, &err) < 0) {
        errno = err.err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    stopped = pc_netns_pool_status(&configured, &ready, &handed_out);
    return Py_BuildValue("(IIik)", configured, ready, stopped, handed_out);
}

static PyObject *core_release(PyObject *module, PyObject *arg)
{
    long fd = PyLong_AsLong(arg);

    (void)module;
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "not an fd: %ld", fd);
    return PyBool_FromLong(pc_nsworker_release((int)fd) == 0);
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

static PyMethodDef core_methods[] = {
    {"wait_pidfd", core_wait_pidfd, METH_VARARGS,
     "wait_pidfd(pidfd, options) -> None | (si_code, si_status, rusage fields): waitid(P_PIDFD)\n"
     "with the rusage os.waitid leaves out; None when WNOHANG found it still running"},
    {"release", core_release, METH_O,
     "release(fd) -> bool: close a namespace reference on the worker thread (True), or\n"
     "here when it is not running (False)"},
    {"netns_pool", core_netns_pool, METH_VARARGS,
     "netns_pool([size]) -> (size, ready, errno, handed_out): configure (size >= 0) and\n"
     "report the pool"},
    {"step_names", core_step_names, METH_NOARGS, "step_names() -> tuple of every step's name"},
    {"spawn", (PyCFunction)(void (*)(void))core_spawn, METH_VARARGS | METH_KEYWORDS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static int core_exec(PyObject *module)
{
    StepError = PyErr_NewException("pycontain._core.StepError", NULL, NULL);
    if (StepError == NULL || PyModule_AddObjectRef(module, "StepError", StepError) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "DEFAULT_NAMESPACES", PC_DEFAULT_NAMESPACES) < 0 ||
        PyModule_AddIntConstant(module, "STEP_COUNT", PC_STEP_COUNT) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWNS", CLONE_NEWNS) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWPID", CLONE_NEWPID) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWNET", CLONE_NEWNET) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWUTS", CLONE_NEWUTS) < 0 ||
        PyModule_AddIntConstant(module, "CLONE_NEWIPC", CLONE_NEWIPC) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pycontain._core",
    .m_doc = "C core of pycontain: spawn a container (internal).",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
