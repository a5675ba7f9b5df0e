"""pycontain.call: a Python function run in a container, its result or exception returned."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import io
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import time
import warnings
import weakref

import pytest
from helpers import NEEDS_HOST_ROOT_LAYER, NEEDS_OTHER_IDS, TIMEOUT, child_pids, wait_until

import pycontain


def look_around() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "root": sorted(os.listdir("/")),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
    }


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not today")


class NeedsTwo(Exception):
    def __init__(self, a, b):  # unpickles without b: TypeError
        super().__init__(a)


def raise_unpicklable() -> None:
    raise Unpicklable("kept in the container")


def raise_needs_two() -> None:
    raise NeedsTwo("a", "b")


def crash() -> None:
    ctypes.string_at(0)  # SIGSEGV


@pytest.mark.needs_root(NEEDS_HOST_ROOT_LAYER)
def test_modules_not_imported_before_the_call_are_not_there(rootfs):
    # The container's / is the busybox layer: no Python library in it.
    def load(name: str) -> str:
        return __import__(name).__name__

    with pytest.raises(ModuleNotFoundError):
        pycontain.call(load, "xml.dom.minidom", layers=[rootfs])
    assert pycontain.call(load, "xml.dom.minidom", layers=["/"]) == "xml"


def test_returns_the_result_from_inside_the_container(rootfs, no_leaks):
    # The busybox rootfs has no Python: the function runs in a copy of this one.
    seen = pycontain.call(look_around, layers=[rootfs], hostname="callbox", cwd="/bin")
    assert seen["pid"] == 1
    assert seen["hostname"] == "callbox"
    assert "bin" in seen["root"] and "usr" not in seen["root"]
    assert seen["cwd"] == "/bin"


def test_arguments_reach_the_function_through_the_fork(rootfs):
    lock = threading.Lock()  # unpicklable, and a closure: neither needs pickling
    factor = 3
    assert pycontain.call(lambda x, y: (x + y) * factor, 4, 5, layers=[rootfs]) == 27
    assert pycontain.call(lambda: type(lock).__name__, layers=[rootfs]) == "lock"
    assert pycontain.call(functools.partial(int, base=16), "ff", layers=[rootfs]) == 255


def test_the_function_runs_with_a_programs_privileges(rootfs):
    def effective_capabilities() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
        raise AssertionError("no CapEff")

    def no_new_privs() -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("NoNewPrivs:")).split()[1])

    assert pycontain.call(effective_capabilities, layers=[rootfs], capabilities=[]) == 0
    assert pycontain.call(no_new_privs, layers=[rootfs]) == 1
    box = pycontain.Container(layers=[rootfs], privileged=True)
    assert box.call(no_new_privs) == 0


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_container_keywords_apply(rootfs, tmp_path):
    writedir = tmp_path / "upper"
    writedir.mkdir()
    (writedir / "data").mkdir()
    os.chown(writedir / "data", 1000, 1000)

    def work() -> tuple[int, int, str, int]:
        with open("/data/note", "w") as f:
            f.write("kept")
        return (
            os.getuid(),
            os.getgid(),
            os.environ.get("GREETING", ""),
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )

    box = pycontain.Container(
        layers=[rootfs], writedir=writedir, uid=1000, gid=1000, rlimits={"nofile": 64}
    )
    assert box.call(work, env={"GREETING": "hi"}) == (1000, 1000, "hi", 64)
    assert (writedir / "data" / "note").read_text() == "kept"


def test_the_exception_keeps_its_type_and_carries_the_child_traceback(rootfs):
    def fail(key: str) -> None:
        raise KeyError(key)

    with pytest.raises(KeyError) as caught:
        pycontain.call(fail, "missing", layers=[rootfs])
    assert caught.value.args == ("missing",)
    cause = caught.value.__cause__
    assert isinstance(cause, pycontain.RemoteTraceback)
    assert "in fail" in cause.traceback and "KeyError: 'missing'" in cause.traceback


def test_an_exception_that_does_not_pickle_is_a_remote_error(rootfs):
    with pytest.raises(pycontain.RemoteError) as caught:
        pycontain.call(raise_unpicklable, layers=[rootfs])
    assert caught.value.exception_type == "test_call.Unpicklable"
    assert caught.value.exception_message == "kept in the container"
    assert "raise_unpicklable" in caught.value.child_traceback
    assert isinstance(caught.value.__cause__, pycontain.RemoteTraceback)


def test_an_exception_that_does_not_unpickle_is_a_remote_error(rootfs):
    with pytest.raises(pycontain.RemoteError) as caught:
        pycontain.call(raise_needs_two, layers=[rootfs])
    assert caught.value.exception_type == "test_call.NeedsTwo"


def test_a_result_that_does_not_pickle_raises_the_pickling_error(rootfs):
    with pytest.raises((TypeError, pickle.PicklingError)) as caught:
        pycontain.call(threading.Lock, layers=[rootfs])
    assert "pickle" in str(caught.value)
    assert isinstance(caught.value.__cause__, pycontain.RemoteTraceback)


@pytest.mark.parametrize(
    ("function", "status"),
    [
        (functools.partial(os._exit, 3), 3),
        (functools.partial(sys.exit, 4), 4),
        (functools.partial(sys.exit, 0), 0),
        (crash, -signal.SIGSEGV),
    ],
    ids=["os._exit", "sys.exit", "sys.exit-0", "segfault"],
)
def test_an_ended_process_is_reported_with_its_status(rootfs, function, status, no_leaks):
    with pytest.raises(pycontain.CallExitedError) as caught:
        pycontain.call(function, layers=[rootfs])
    assert caught.value.exit_status == status
    if status < 0:
        assert "killed by SIGSEGV" in str(caught.value)


def test_a_large_result(rootfs, no_leaks):
    # 100 MiB through the pipe: limited by memory only (it is held in both
    # processes while it travels).
    data = pycontain.call(os.urandom, 100 << 20, layers=[rootfs], timeout=TIMEOUT * 4)
    assert len(data) == 100 << 20


def test_the_callers_files_are_closed_in_the_container(rootfs, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host")
    with open(secret) as f:
        fd = f.fileno()

        def peek() -> tuple[str, str]:
            return os.read(fd, 100).decode(), os.readlink(f"/proc/self/fd/{fd}")

        # The number now names the container's /dev/null.
        assert pycontain.call(peek, layers=[rootfs]) == ("", "/dev/null")
        r, w = os.pipe()
        try:
            # ...except the ones passed on purpose.
            assert pycontain.call(lambda: os.write(w, b"x"), layers=[rootfs], pass_fds=[w]) == 1
            assert os.read(r, 1) == b"x"
        finally:
            os.close(r)
            os.close(w)


def test_the_callers_file_objects_cannot_close_the_functions_files(rootfs):
    # A file object of this process, reachable only through a cycle, is
    # collected in the copy while the function runs: its close() must not
    # hit a file the function opened under the same number.
    class Holder:
        pass

    gc.disable()
    try:
        holder = Holder()
        holder.me = holder
        holder.file = open(__file__, "rb")  # noqa: SIM115
        stale = weakref.ref(holder.file)
        number = holder.file.fileno()
        del holder

        def work() -> bool:
            fds = [os.open("/bin/busybox", os.O_RDONLY)]
            while fds[-1] < number and len(fds) < 1000:  # up to the stale number, if free
                fds.append(os.open("/bin/busybox", os.O_RDONLY))
            gc.collect()
            for fd in fds:
                os.fstat(fd)
            return True

        assert pycontain.call(work, layers=[rootfs])
    finally:
        file = stale()
        if file is not None:
            file.close()
        gc.enable()


def _slow_setup(flag: str) -> None:
    # pre_pivot of the other container: sees the host's /, so it can say it
    # is running; then holds its set-up (and its fork's copies of fds) a while.
    with open(flag, "w"):
        pass
    time.sleep(4)


def test_another_containers_set_up_does_not_delay_the_result(rootfs, tmp_path, monkeypatch):
    # Another thread's container, forked while this call's result pipe is
    # open, holds a copy of its write end during its set-up: the result is
    # complete once the function's process has exited, not only at the
    # pipe's end.
    from pycontain import _call

    flag = str(tmp_path / "other-started")
    slow = pycontain.Container(layers=[rootfs], pre_pivot=functools.partial(_slow_setup, flag))
    other: list[threading.Thread] = []
    original = _call._open_pipe

    def open_pipe_then_fork_another() -> tuple[int, int]:
        fds = original()
        if not other:
            thread = threading.Thread(target=lambda: slow.run(["/bin/true"], timeout=TIMEOUT))
            other.append(thread)
            thread.start()
            assert wait_until(lambda: os.path.exists(flag), TIMEOUT)
        return fds

    monkeypatch.setattr(_call, "_open_pipe", open_pipe_then_fork_another)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the other thread, on purpose
        started = time.monotonic()
        assert pycontain.call(os.getpid, layers=[rootfs]) == 1
        elapsed = time.monotonic() - started
    other[0].join(TIMEOUT)
    assert elapsed < 3, elapsed


def test_prints_go_where_the_callers_prints_go(rootfs, no_leaks):
    # sys.stdout replaced (as in Jupyter, pytest's capture, redirect_stdout):
    # the function's output is forwarded to it, as it comes.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        value = pycontain.call(
            lambda: print("to stdout \u00e9") or print("to stderr", file=sys.stderr) or 3,
            layers=[rootfs],
        )
    assert (value, out.getvalue(), err.getvalue()) == (3, "to stdout \u00e9\n", "to stderr\n")

    async def main() -> int:
        return await pycontain.call_async(lambda: print("async") or 4, layers=[rootfs])

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert asyncio.run(main()) == 4
    assert out.getvalue() == "async\n"


def test_prints_go_to_the_given_stdout(rootfs, tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as f:
        assert pycontain.call(lambda: print("inside") or 5, layers=[rootfs], stdout=f) == 5
    assert out.read_text() == "inside\n"


def test_timeout_kills_the_container(rootfs, no_leaks):
    started = time.monotonic()
    with pytest.raises(pycontain.TimeoutExpired):
        pycontain.call(time.sleep, 60, layers=[rootfs], timeout=0.5)
    assert time.monotonic() - started < 10


def test_an_interrupt_kills_the_container(rootfs, no_leaks):
    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    before = child_pids()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            pycontain.call(time.sleep, 60, layers=[rootfs])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert wait_until(lambda: child_pids() <= before)


def test_bad_input_raises_before_anything_starts(rootfs, no_leaks):
    with pytest.raises(TypeError, match="callable"):
        pycontain.call(42, layers=[rootfs])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword argument 'hostnam'"):
        pycontain.call(print, layers=[rootfs], hostnam="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'executable'"):
        pycontain.call(print, layers=[rootfs], executable="/bin/sh")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="stdout=PIPE is not supported"):
        pycontain.call(print, layers=[rootfs], stdout=pycontain.PIPE)


def test_call_async(rootfs, no_leaks):
    async def main() -> list[object]:
        box = pycontain.Container(layers=[rootfs])
        results = await asyncio.gather(
            *(box.call_async(lambda i=i: (i, os.getpid())) for i in range(4))
        )
        with pytest.raises(KeyError):
            await pycontain.call_async(dict().__getitem__, "k", layers=[rootfs])
        with pytest.raises(pycontain.TimeoutExpired):
            await box.call_async(time.sleep, 60, timeout=0.3)
        task = asyncio.ensure_future(box.call_async(time.sleep, 60))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return results

    assert asyncio.run(main()) == [(i, 1) for i in range(4)]


def test_signature_lists_the_container_keywords():
    import inspect

    parameters = inspect.signature(pycontain.call).parameters
    assert {"layers", "writedir", "hostname", "uid", "cwd", "env", "timeout"} <= set(parameters)
    assert "executable" not in parameters and "pre_exec" not in parameters
