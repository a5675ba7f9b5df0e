"""pre_pivot / pre_exec callbacks, the spawn timeout, and CallbackError.

A callback runs in a forked copy of this process, inside the container's
process: nothing it changes in memory comes back. To get data out the tests
write files (pre_pivot: into a host directory, which is still visible then),
write to the container's stdout pipe with os.write (pre_exec: stdio is
already set up), or write into the container's root for the program to read.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest
from helpers import BB_ENV, NEEDS_OTHER_IDS, TIMEOUT

import pycontain
from pycontain import PIPE, _spawn  # _spawn: only for scratch_dir(), pre_pivot's cwd

HOOKS = ["pre_pivot", "pre_exec"]


def start(rootfs, args, **kwargs):
    kwargs.setdefault("env", BB_ENV)
    return pycontain.Process(args, layers=[rootfs], **kwargs)


def run_out(rootfs, args, **kwargs) -> bytes:
    """Run to the end with stdout piped; returns stdout, asserts exit 0."""
    with start(rootfs, args, stdout=PIPE, **kwargs) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0
    return out


def spawn_error(rootfs, hook, callback, **kwargs) -> pycontain.CallbackError:
    """Spawn with ``callback`` as ``hook``; it must fail with a CallbackError."""
    with pytest.raises(pycontain.CallbackError) as info:
        start(rootfs, ["/bin/true"], **{hook: callback}, **kwargs)
    return info.value


@pytest.fixture
def host_dir():
    """A host directory that pre_pivot can still see.

    Not under the scratch directory (/tmp here): the container's private
    tmpfs is mounted over it before pre_pivot runs, hiding the host's files
    there (pytest's tmp_path among them).
    """
    scratch = os.fsdecode(_spawn.scratch_dir())
    for parent in ("/var/tmp", "/root", "/srv", "/opt", "/mnt"):
        real = os.path.realpath(parent)
        if os.path.isdir(real) and not (real + "/").startswith(scratch.rstrip("/") + "/"):
            break
    else:
        pytest.skip("no host directory outside the scratch directory")
    path = tempfile.mkdtemp(prefix="pycontain-test-", dir=real)
    try:
        yield path
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


@pytest.fixture
def quiet():
    """Callbacks warn when the process has threads; not what these tests check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -- where each callback runs --------------------------------------------------------


def test_pre_pivot_runs_in_the_future_root_before_pivot_root(rootfs, host_dir, quiet):
    marker = os.path.join(host_dir, "made-on-the-host")
    with open(marker, "w") as f:
        f.write("host data")
    report = os.path.join(host_dir, "report.json")

    def pre_pivot():
        with open(marker) as f:
            host_file = f.read()
        facts = {
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "here": sorted(os.listdir(".")),
            "busybox": os.path.isfile("bin/busybox"),
            "host_file": host_file,
            "host_root_has_etc": os.path.isdir("/etc/"),
            "procs": sorted(e for e in os.listdir("proc") if e.isdigit()),
            "sys_read_only": bool(os.statvfs("sys").f_flag & os.ST_RDONLY),
            "dev_null": sorted(os.listdir("dev")),
        }
        with open(report, "w") as f:
            json.dump(facts, f)

    assert run_out(rootfs, ["/bin/true"], pre_pivot=pre_pivot) == b""
    with open(report) as f:
        facts = json.load(f)
    assert facts["pid"] == 1
    assert facts["cwd"] == os.path.join(os.fsdecode(_spawn.scratch_dir()), "root")
    assert facts["cwd"] == "/mnt/root" or not os.path.isdir("/mnt")
    # "." is the overlay: the busybox layer plus the mounted /proc, /sys, /dev.
    assert facts["here"] == ["bin", "dev", "proc", "sys"]
    assert facts["busybox"] is True
    # "/" is still the host's.
    assert facts["host_file"] == "host data"
    assert facts["host_root_has_etc"] is True
    assert facts["procs"] == ["1"]
    assert facts["sys_read_only"] is True
    assert {"null", "zero", "urandom", "pts", "shm"} <= set(facts["dev_null"])


def test_pre_pivot_sees_the_host_except_the_scratch_directory(rootfs, tmp_path, quiet):
    """pre_pivot sees the host's "/" (here the test's tmp_path), except the
    scratch directory (/mnt here): the container's private tmpfs, holding the
    overlay's upper, work and mount point directories, /dev's mount point (it
    is built there, then moved into the container) and the read-only copies
    that mask /proc's host interfaces, is mounted over it."""
    scratch = os.fsdecode(_spawn.scratch_dir())
    (tmp_path / "visible").write_text("x")
    report = tmp_path / "seen"

    def pre_pivot():
        seen = [os.path.exists(tmp_path / "visible"), sorted(os.listdir(scratch))]
        report.write_text(repr(seen))

    run_out(rootfs, ["/bin/true"], pre_pivot=pre_pivot)
    assert report.read_text() == repr(
        [True, ["dev", "empty", "masked", "proc", "root", "upper", "work"]]
    )


def test_pre_pivot_writes_land_in_the_containers_root(rootfs, quiet):
    def pre_pivot():
        with open("from-pre-pivot", "w") as f:
            f.write("written before pivot_root\n")

    out = run_out(rootfs, ["/bin/cat", "/from-pre-pivot"], pre_pivot=pre_pivot)
    assert out == b"written before pivot_root\n"


def test_pre_pivot_does_not_touch_the_layers(rootfs, quiet):
    before = sorted(os.listdir(rootfs))

    def pre_pivot():
        with open("new-file", "w") as f:
            f.write("x")
        os.unlink("bin/sh")

    run_out(rootfs, ["/bin/busybox", "true"], pre_pivot=pre_pivot)
    assert sorted(os.listdir(rootfs)) == before
    assert os.path.lexists(os.path.join(rootfs, "bin", "sh"))


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_pre_exec_runs_inside_the_container(rootfs, quiet):
    def pre_exec():
        facts = {
            "pid": os.getpid(),
            "root": sorted(os.listdir("/")),
            "procs": sorted(e for e in os.listdir("/proc") if e.isdigit()),
            "cwd": os.getcwd(),
            "uid": os.getuid(),
            "host_usr": os.path.exists("/usr"),
        }
        os.write(1, json.dumps(facts).encode() + b"\n")
        os.write(2, b"stderr is set up too\n")

    with start(
        rootfs,
        ["/bin/sh", "-c", "id -u; pwd"],
        cwd="/bin",
        uid=1000,
        stdout=PIPE,
        stderr=PIPE,
        pre_exec=pre_exec,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    first, uid, cwd = out.decode().splitlines()
    facts = json.loads(first)
    assert facts == {
        "pid": 1,
        "root": ["bin", "dev", "proc", "sys"],
        "procs": ["1"],
        "cwd": "/bin",  # after the chdir to cwd
        "uid": 0,  # uid= is applied after pre_exec
        "host_usr": False,
    }
    assert (uid, cwd) == ("1000", "/bin")
    assert err == b"stderr is set up too\n"


def test_pre_pivot_runs_before_pre_exec(rootfs, quiet):
    def pre_pivot():
        with open("order", "a") as f:
            f.write("pre_pivot\n")

    def pre_exec():
        with open("/order", "a") as f:
            f.write("pre_exec\n")

    out = run_out(rootfs, ["/bin/cat", "/order"], pre_pivot=pre_pivot, pre_exec=pre_exec)
    assert out == b"pre_pivot\npre_exec\n"


def test_pre_exec_side_effects_reach_the_program(rootfs, quiet):
    def pre_exec():
        os.chdir("/dev")

    assert run_out(rootfs, ["/bin/pwd"], pre_exec=pre_exec) == b"/dev\n"


def test_callbacks_run_with_the_callers_umask(rootfs, quiet):
    def pre_exec():
        with open("/made-by-pre-exec", "w"):
            pass

    old = os.umask(0o022)
    try:
        out = run_out(rootfs, ["/bin/stat", "-c", "%a", "/made-by-pre-exec"], pre_exec=pre_exec)
    finally:
        os.umask(old)
    assert out == b"644\n"


def test_callback_runs_in_a_copy_of_this_process(rootfs, quiet):
    seen = []

    def pre_exec():
        seen.append("in the child")
        os.write(1, f"{len(seen)}\n".encode())

    assert run_out(rootfs, ["/bin/true"], pre_exec=pre_exec) == b"1\n"
    assert seen == []  # the append happened in the child's memory only


def test_callback_return_value_is_ignored(rootfs, quiet):
    assert (
        run_out(rootfs, ["/bin/echo", "ok"], pre_exec=lambda: 42, pre_pivot=lambda: "x") == b"ok\n"
    )


def test_callback_may_use_closures_and_modules(rootfs, quiet):
    data = {"greeting": "hi from the parent's memory"}

    def pre_exec():
        import hashlib  # an import inside the child works

        os.write(1, (data["greeting"] + " " + hashlib.sha1(b"").hexdigest()[:8]).encode())

    assert (
        run_out(rootfs, ["/bin/true"], pre_exec=pre_exec) == b"hi from the parent's memory da39a3ee"
    )


# -- exceptions --------------------------------------------------------------------


class CustomError(Exception):
    pass


class CustomOSError(OSError):
    pass


def _raise_value_error():
    raise ValueError("bad value")


def _nested():
    def inner():
        raise KeyError("k")

    inner()


@pytest.mark.parametrize("hook", HOOKS)
def test_exception_is_raised_as_callback_error(rootfs, hook, quiet, no_leaks):
    error = spawn_error(rootfs, hook, _raise_value_error)
    assert isinstance(error, pycontain.SpawnError) and isinstance(error, OSError)
    assert error.hook == error.step == hook
    assert error.exception_type == "ValueError"
    assert error.exit_status is None
    assert error.errno is None
    assert error.child_traceback.startswith("Traceback (most recent call last):")
    assert "_raise_value_error" in error.child_traceback
    assert error.child_traceback.rstrip().endswith("ValueError: bad value")
    message = str(error)
    assert message.startswith(f"pycontain: {hook} callback raised ValueError: bad value")
    assert error.child_traceback in message


@pytest.mark.parametrize("hook", HOOKS)
def test_key_error_from_a_nested_call(rootfs, hook, quiet):
    error = spawn_error(rootfs, hook, _nested)
    assert error.exception_type == "KeyError"
    assert "KeyError: 'k'" in str(error)
    assert "in inner" in error.child_traceback and "in _nested" in error.child_traceback


def test_custom_exception_class(rootfs, quiet):
    def callback():
        raise CustomError("mine")

    error = spawn_error(rootfs, "pre_exec", callback)
    assert error.exception_type.endswith("CustomError")
    assert error.exception_type.split(".")[-1] == "CustomError"
    assert "mine" in str(error)


@pytest.mark.parametrize(
    "exc, number, type_name",
    [
        (FileNotFoundError(errno.ENOENT, "gone", "/nowhere"), errno.ENOENT, "FileNotFoundError"),
        (PermissionError(errno.EACCES, "no"), errno.EACCES, "PermissionError"),
        (CustomOSError(errno.EXDEV, "cross"), errno.EXDEV, "CustomOSError"),
        (OSError("no errno"), None, "OSError"),
    ],
)
def test_oserror_errno_round_trips(rootfs, exc, number, type_name, quiet):
    def callback():
        raise exc

    error = spawn_error(rootfs, "pre_pivot", callback)
    assert error.errno == number
    assert error.exception_type.split(".")[-1] == type_name


def test_chained_exception_reports_the_last_one(rootfs, quiet):
    def callback():
        try:
            {}["missing"]
        except KeyError as e:
            raise RuntimeError("while handling") from e

    error = spawn_error(rootfs, "pre_exec", callback)
    assert error.exception_type == "RuntimeError"
    assert "KeyError: 'missing'" in error.child_traceback
    assert "direct cause" in error.child_traceback


def test_exception_whose_str_fails(rootfs, quiet):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    def callback():
        raise Unprintable()

    error = spawn_error(rootfs, "pre_exec", callback)
    assert error.exception_type.endswith("Unprintable")


def test_very_long_traceback_is_cut_but_keeps_the_exception(rootfs, quiet):
    # Two functions taking turns: the traceback module would fold a run of
    # identical frames into one "[Previous line repeated N more times]".
    def ping(n):
        if n == 0:
            raise ValueError("at the bottom")
        pong(n - 1)

    def pong(n):
        ping(n - 1)

    error = spawn_error(rootfs, "pre_exec", lambda: ping(150))
    assert "[... traceback cut ...]" in error.child_traceback
    assert error.child_traceback.startswith("Traceback (most recent call last):")
    assert error.exception_type == "ValueError"
    assert error.child_traceback.rstrip().endswith("ValueError: at the bottom")
    assert len(error.child_traceback.encode()) < 4000


def test_non_ascii_exception_message(rootfs, quiet):
    def callback():
        raise ValueError("naïve ✓")

    error = spawn_error(rootfs, "pre_exec", callback)
    assert error.child_traceback.rstrip().endswith("ValueError: naïve ✓")


@pytest.mark.parametrize("message", ["line1\nline2", "x" * 5000], ids=["multi-line", "long"])
def test_exception_type_with_an_unusual_message(rootfs, message, quiet):
    def callback():
        raise ValueError(message)

    error = spawn_error(rootfs, "pre_exec", callback)
    assert error.exception_type == "ValueError"
    assert str(error).startswith("pycontain: pre_exec callback raised ValueError")


def test_callback_error_pickles(rootfs, quiet):
    import pickle

    error = spawn_error(rootfs, "pre_exec", _raise_value_error)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is pycontain.CallbackError
    assert (copy.hook, copy.step, copy.exception_type, copy.child_traceback) == (
        error.hook,
        error.step,
        error.exception_type,
        error.child_traceback,
    )
    assert str(copy) == str(error)


# -- callbacks that end their process -------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_sys_exit_is_reported_as_raising_system_exit(rootfs, hook, quiet, no_leaks):
    error = spawn_error(rootfs, hook, lambda: sys.exit(3))
    assert error.exception_type == "SystemExit"
    assert error.exit_status is None
    assert "SystemExit: 3" in str(error)


def test_keyboard_interrupt_is_reported(rootfs, quiet):
    def callback():
        raise KeyboardInterrupt

    error = spawn_error(rootfs, "pre_exec", callback)
    assert error.exception_type == "KeyboardInterrupt"


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("status", [3, 0])
def test_os_exit_gives_exit_status(rootfs, hook, status, quiet, no_leaks):
    """Even os._exit(0) fails the spawn: the program was never executed."""
    error = spawn_error(rootfs, hook, lambda: os._exit(status))
    assert error.exit_status == status
    assert error.exception_type is None
    assert error.child_traceback == ""
    assert error.hook == hook
    assert f"exit status {status}" in str(error)


@pytest.mark.parametrize("hook", HOOKS)
def test_os_abort_gives_a_negative_exit_status(rootfs, hook, quiet, no_leaks):
    """abort() ends the process by a signal: exit_status is -N.

    Note that N is not SIGABRT here: the process is PID 1 of its namespace,
    where the kernel drops a SIGABRT it sends itself (no handler), so glibc's
    abort() falls back to a faulting instruction, and the kernel's forced
    SIGSEGV is what ends it.
    """
    error = spawn_error(rootfs, hook, os.abort)
    assert error.exit_status is not None and error.exit_status < 0
    assert error.exit_status in (-signal.SIGABRT, -signal.SIGSEGV)
    assert "killed by SIG" in str(error)


@pytest.mark.parametrize("hook", HOOKS)
def test_sigkill_to_itself_is_ignored_by_pid_1(rootfs, hook, quiet, no_leaks):
    """os.kill(os.getpid(), SIGKILL) in a callback does NOT fail the spawn.

    The callback runs as PID 1 of the new PID namespace, and the kernel
    ignores signals sent to a namespace's init from inside the namespace
    unless it has a handler (SIGKILL can have none). So the kill is a no-op,
    the callback returns normally and the program runs.
    """

    def callback():
        os.kill(os.getpid(), signal.SIGKILL)

    assert run_out(rootfs, ["/bin/echo", "still here"], **{hook: callback}) == b"still here\n"


def test_failing_pre_pivot_runs_neither_pre_exec_nor_the_program(rootfs, quiet, no_leaks):
    read_end, write_end = os.pipe()
    try:

        def pre_exec():
            os.write(write_end, b"pre_exec ran\n")

        with pytest.raises(pycontain.CallbackError):
            start(
                rootfs,
                ["/bin/sh", "-c", f"echo program ran >&{write_end}"],
                pass_fds=[write_end],
                pre_pivot=_raise_value_error,
                pre_exec=pre_exec,
            )
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_many_failing_callbacks_leave_nothing_behind(rootfs, quiet, no_leaks):
    callbacks = [_raise_value_error, lambda: os._exit(1), lambda: sys.exit(2), os.abort]
    for i in range(20):
        hook = HOOKS[i % 2]
        with pytest.raises(pycontain.CallbackError):
            start(
                rootfs,
                ["/bin/true"],
                stdin=PIPE,
                stdout=PIPE,
                stderr=PIPE,
                **{hook: callbacks[i % len(callbacks)]},
            )


# -- timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_blocking_callback_is_killed_by_the_timeout(rootfs, hook, quiet, no_leaks):
    started = time.monotonic()
    with pytest.raises(pycontain.TimeoutExpired) as info:
        start(rootfs, ["/bin/true"], stdout=PIPE, timeout=1, **{hook: lambda: time.sleep(3600)})
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 2
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert info.value.timeout == 1
    assert info.value.cmd == ["/bin/true"]


def test_callback_waiting_on_an_event_is_killed_by_the_timeout(rootfs, quiet, no_leaks):
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(pycontain.TimeoutExpired):
        start(rootfs, ["/bin/true"], timeout=0.5, pre_exec=never.wait)
    assert time.monotonic() - started < 1.5


def test_callback_shorter_than_the_timeout(rootfs, quiet):
    out = run_out(
        rootfs,
        ["/bin/echo", "done"],
        timeout=TIMEOUT,
        pre_pivot=lambda: time.sleep(0.2),
        pre_exec=lambda: time.sleep(0.2),
    )
    assert out == b"done\n"


def test_timeout_without_callbacks(rootfs, no_leaks):
    assert run_out(rootfs, ["/bin/echo", "ok"], timeout=TIMEOUT) == b"ok\n"


def test_timeout_counts_the_spawn_not_the_program(rootfs):
    with start(rootfs, ["/bin/sleep", "0.5"], timeout=0.2) as p:
        assert p.wait(TIMEOUT) == 0


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan")])
def test_bad_timeout(rootfs, timeout, no_leaks):
    with pytest.raises(ValueError):
        start(rootfs, ["/bin/true"], timeout=timeout)


@pytest.mark.parametrize("timeout", [float("inf"), 1e7])
def test_huge_spawn_timeout_means_no_timeout(rootfs, timeout):
    with start(rootfs, ["/bin/true"], timeout=timeout) as p:
        assert p.wait(TIMEOUT) == 0


# -- checks and warnings ----------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("value", ["print", 3, object()])
def test_non_callable_callback_is_a_type_error(rootfs, hook, value, no_leaks):
    with pytest.raises(TypeError, match=hook):
        start(rootfs, ["/bin/true"], stdout=PIPE, **{hook: value})


def _callback_warnings(rootfs, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_out(rootfs, ["/bin/true"], **kwargs)
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.fixture
def another_thread():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join(TIMEOUT)


@pytest.mark.parametrize("hook", HOOKS)
def test_callbacks_warn_when_other_threads_exist(rootfs, hook, another_thread):
    caught = _callback_warnings(rootfs, **{hook: lambda: None})
    assert len(caught) == 1
    assert "multi-threaded" in str(caught[0].message)


def test_no_warning_without_callbacks_even_with_threads(rootfs, another_thread):
    assert _callback_warnings(rootfs, timeout=TIMEOUT) == []


def test_no_warning_when_single_threaded(rootfs):
    if not single_threaded():
        pytest.skip(
            f"this test process has {len(os.listdir('/proc/self/task'))} threads "
            "(a plugin's?), so the warning is due"
        )
    assert _callback_warnings(rootfs, pre_pivot=lambda: None, pre_exec=lambda: None) == []


def test_warning_from_run_points_at_the_caller(rootfs, another_thread):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pycontain.run(["/bin/true"], layers=[rootfs], env=BB_ENV, pre_exec=lambda: None)
    [warning] = [w for w in caught if w.category is RuntimeWarning]
    assert warning.filename == __file__


def test_warning_from_process_points_at_the_caller(rootfs, another_thread):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pycontain.Process(
            ["/bin/true"], layers=[rootfs], env=BB_ENV, pre_exec=lambda: None
        ) as p:
            p.wait(TIMEOUT)
    [warning] = [w for w in caught if w.category is RuntimeWarning]
    assert warning.filename == __file__
