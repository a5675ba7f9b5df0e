"""The Process object: waiting, polling, timeouts, signals (with PID 1
semantics), cleanup (close, context manager, garbage collection), repr and
thread safety."""

from __future__ import annotations

import contextlib
import gc
import signal
import subprocess
import threading
import time
import warnings

import pytest
from helpers import (
    BB_ENV,
    TIMEOUT,
    child_pids,
    children_of,
    fd_count,
    is_gone,
    is_init,
    proc_state,
    program_pid,
    wait_for_handler,
    wait_until,
)

import pycontain

# A shell that ends with `code` on SIGTERM. Short sleeps: busybox sh runs a
# trap only once the foreground command has finished.
TRAP_TERM = 'trap "exit {code}" TERM; while :; do sleep 0.05; done'


def start(rootfs, args, **kwargs):
    return pycontain.Process(args, layers=[rootfs], env=BB_ENV, **kwargs)


def start_trap(rootfs, code=3, sig=signal.SIGTERM, name="TERM", **kwargs):
    script = TRAP_TERM.format(code=code).replace("TERM", name)
    p = start(rootfs, ["/bin/sh", "-c", script], **kwargs)
    wait_for_handler(p.pid, sig)
    return p


# -- wait and poll ---------------------------------------------------------------


def test_wait_returns_the_same_code_every_time(rootfs, legacy):
    with start(rootfs, ["/bin/sh", "-c", "exit 3"], _force_legacy_clone=legacy) as p:
        assert p.wait() == 3
        assert p.wait() == 3
        assert p.wait(timeout=0) == 3
        assert p.poll() == 3
        assert p.returncode == 3


def test_poll_while_running_and_after(rootfs):
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        assert p.poll() is None
        assert p.returncode is None
        p.kill()
        assert wait_until(lambda: p.poll() is not None)
        assert p.poll() == -signal.SIGKILL
        assert p.wait() == -signal.SIGKILL


def test_poll_reaps_the_process(rootfs):
    with start(rootfs, ["/bin/true"]) as p:
        pid = p.pid
        assert pid in child_pids()
        assert wait_until(lambda: p.poll() is not None)
        assert p.returncode == 0
        assert is_gone(pid)
        assert pid not in child_pids()


@pytest.mark.parametrize("init", [True, False], ids=["init", "no-init"])
def test_pid_is_the_host_pid_of_the_containers_pid_1(rootfs, init):
    with start(rootfs, ["/bin/sleep", "100"], init=init, die_with_parent=init) as p:
        assert p.pid in child_pids()

        def cmdline(pid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()

        # The kernel wakes a vfork parent a moment before the new program's
        # argument area is published, so /proc/PID/cmdline may briefly be empty.
        assert wait_until(lambda: cmdline(p.pid) != b"")
        assert is_init(p.pid) == init
        if init:
            # pycontain's init; the program is its one child.
            assert children_of(p.pid) == [program_pid(p.pid)]
        program = program_pid(p.pid)
        assert wait_until(lambda: cmdline(program) == b"/bin/sleep\x00100\x00")


def test_communicate_without_pipes_only_waits(rootfs):
    # As Popen: nothing to send or read, so communicate() is wait().
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        with pytest.raises(pycontain.TimeoutExpired) as info:
            p.communicate(timeout=0.2)
        assert info.value.timeout == 0.2 and info.value.output is None
        assert info.value.stderr is None and p.returncode is None
        p.kill()
        assert p.communicate() == (None, None) and p.returncode == -signal.SIGKILL
        assert p.communicate(timeout=0) == (None, None)


def test_wait_timeout(rootfs):
    args = ["/bin/sleep", "100"]
    with start(rootfs, args) as p:
        began = time.monotonic()
        with pytest.raises(pycontain.TimeoutExpired) as info:
            p.wait(timeout=0.3)
        elapsed = time.monotonic() - began
        assert 0.3 <= elapsed < 5
        assert isinstance(info.value, subprocess.TimeoutExpired)
        assert info.value.timeout == 0.3
        assert info.value.cmd == args
        assert p.returncode is None
        assert p.poll() is None
        # A timeout changes nothing: the program can still be waited for.
        p.kill()
        assert p.wait(timeout=TIMEOUT) == -signal.SIGKILL


def test_wait_timeout_is_caught_as_subprocess_timeout_expired(rootfs):
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        try:
            p.wait(timeout=0)
        except subprocess.TimeoutExpired as error:
            assert type(error) is pycontain.TimeoutExpired
        else:
            pytest.fail("no TimeoutExpired")


def test_wait_with_timeout_returns_when_the_program_ends(rootfs):
    with start(rootfs, ["/bin/sleep", "0.2"]) as p:
        began = time.monotonic()
        assert p.wait(timeout=TIMEOUT) == 0
        assert time.monotonic() - began < 5


def test_wait_is_not_disturbed_by_signals_to_the_caller(rootfs):
    calls = []
    old = signal.signal(signal.SIGALRM, lambda *a: calls.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        with start(rootfs, ["/bin/sleep", "0.4"]) as p:
            assert p.wait() == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(calls) >= 2


def test_a_stopped_program_is_not_ended(rootfs):
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        p.send_signal(signal.SIGSTOP)  # SIGSTOP from outside reaches PID 1
        assert wait_until(lambda: proc_state(p.pid) == "T")
        with pytest.raises(pycontain.TimeoutExpired):
            p.wait(timeout=0.2)
        p.send_signal(signal.SIGCONT)
        assert wait_until(lambda: proc_state(p.pid) == "S")
        assert p.poll() is None
        p.kill()
        assert p.wait(timeout=TIMEOUT) == -signal.SIGKILL


# -- signals -------------------------------------------------------------------------


def test_kill(rootfs, legacy):
    with start(rootfs, ["/bin/sleep", "100"], _force_legacy_clone=legacy) as p:
        p.kill()
        assert p.wait(timeout=TIMEOUT) == -9
        assert p.returncode == -signal.SIGKILL


def test_terminate_is_ignored_by_a_pid_1_without_handler(rootfs):
    # init=False: the program is PID 1 (tests/test_lifecycle.py: with the init).
    with start(rootfs, ["/bin/sleep", "100"], init=False, die_with_parent=False) as p:
        p.terminate()
        with pytest.raises(pycontain.TimeoutExpired):
            p.wait(timeout=0.5)
        assert p.poll() is None
        assert proc_state(p.pid) in ("S", "R")
        p.kill()
        assert p.wait(timeout=TIMEOUT) == -signal.SIGKILL


def test_terminate_ends_a_program_that_handles_it(rootfs, legacy):
    with start_trap(rootfs, code=3, _force_legacy_clone=legacy) as p:
        p.terminate()
        assert p.wait(timeout=TIMEOUT) == 3


@pytest.mark.parametrize("method", ["send_signal", "signal"])
def test_send_signal_to_a_shell_trap(rootfs, method):
    # init=False: the program is PID 1, which gets only handled signals.
    with start_trap(
        rootfs, code=10, sig=signal.SIGUSR1, name="USR1", init=False, die_with_parent=False
    ) as p:
        # An unhandled signal (SIGUSR2, SIGTERM) is dropped by PID 1...
        p.send_signal(signal.SIGUSR2)
        p.terminate()
        with pytest.raises(pycontain.TimeoutExpired):
            p.wait(timeout=0.3)
        # ...the handled one is delivered.
        getattr(p, method)(signal.SIGUSR1)
        assert p.wait(timeout=TIMEOUT) == 10


@pytest.mark.parametrize("method", ["kill", "terminate", "send_signal", "signal"])
def test_signal_after_wait_raises_process_lookup_error(rootfs, method):
    with start(rootfs, ["/bin/true"]) as p:
        assert p.wait(timeout=TIMEOUT) == 0
        args = () if method in ("kill", "terminate") else (signal.SIGTERM,)
        with pytest.raises(ProcessLookupError):
            getattr(p, method)(*args)
        assert p.returncode == 0


def test_kill_ends_every_process_of_the_container(rootfs):
    script = "sleep 100 & sleep 100 & sleep 100; wait"
    with start(rootfs, ["/bin/sh", "-c", script]) as p:
        shell = program_pid(p.pid)
        assert wait_until(lambda: len(children_of(shell)) == 3)
        inner = [shell, *children_of(shell)]
        p.kill()
        assert p.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert all(is_gone(pid) for pid in inner)


def test_exit_of_pid_1_ends_the_rest_of_the_container(rootfs):
    script = 'trap "exit 0" USR1; sleep 100 & while :; do sleep 0.05; done'
    with start(rootfs, ["/bin/sh", "-c", script]) as p:
        wait_for_handler(p.pid, signal.SIGUSR1)
        shell = program_pid(p.pid)
        assert wait_until(lambda: _sleepers(shell))
        background = _sleepers(shell)
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=TIMEOUT) == 0
    assert wait_until(lambda: all(is_gone(pid) for pid in background))


def _sleepers(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if f.read() == b"sleep\x00100\x00":
                    found.append(child)
        except FileNotFoundError:
            pass
    return found


# -- cleanup: close, context manager, garbage collection ----------------------------------


def test_context_manager_kills_a_running_container(rootfs):
    before = child_pids()
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        pid = p.pid
        assert pid in child_pids()
    assert p.returncode == -signal.SIGKILL
    assert is_gone(pid)
    assert child_pids() == before


def test_context_manager_on_exception(rootfs):
    before = child_pids()
    with pytest.raises(RuntimeError, match="boom"), start(rootfs, ["/bin/sleep", "100"]) as p:
        raise RuntimeError("boom")
    assert p.returncode == -signal.SIGKILL
    assert child_pids() == before


def test_context_manager_keeps_the_code_of_an_ended_program(rootfs):
    with start(rootfs, ["/bin/sh", "-c", "exit 4"]) as p:
        assert wait_until(lambda: proc_state(p.pid) == "Z")
    assert p.returncode == 4


def test_context_manager_returns_the_process(rootfs):
    p = start(rootfs, ["/bin/true"])
    with p as entered:
        assert entered is p
        assert p.wait(timeout=TIMEOUT) == 0
    assert p.returncode == 0


def test_close(rootfs):
    before, fds = child_pids(), fd_count()
    p = start(rootfs, ["/bin/sleep", "100"])
    assert fd_count() == fds + 2  # the pidfd, the init's status pipe
    p.close()
    assert p.returncode == -signal.SIGKILL
    assert fd_count() == fds
    assert child_pids() == before
    p.close()  # idempotent
    assert p.wait() == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        p.kill()


def test_pidfd_is_released_after_wait(rootfs):
    fds = fd_count()
    p = start(rootfs, ["/bin/true"])
    assert fd_count() == fds + 2  # the pidfd, the init's status pipe
    assert p.wait(timeout=TIMEOUT) == 0
    assert fd_count() == fds


def test_garbage_collected_running_process_warns_and_is_reaped(rootfs):
    before = child_pids()
    p = start(rootfs, ["/bin/sleep", "100"])
    pid = p.pid
    with pytest.warns(ResourceWarning, match="still running"):
        del p
        gc.collect()
    assert is_gone(pid)  # killed and reaped: not even a zombie
    assert child_pids() == before


def test_garbage_collected_ended_process_is_reaped(rootfs):
    before = child_pids()
    p = start(rootfs, ["/bin/true"])
    pid = p.pid
    p.wait(timeout=TIMEOUT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del p
        gc.collect()
    assert is_gone(pid)
    assert child_pids() == before


def test_garbage_collected_exited_but_unwaited_process_does_not_claim_it_is_running(rootfs):
    p = start(rootfs, ["/bin/true"])
    pid = p.pid
    assert wait_until(lambda: proc_state(pid) == "Z")  # exited, not yet reaped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    assert is_gone(pid)  # reaped either way
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not [m for m in messages if "still running" in m], messages


# -- repr ------------------------------------------------------------------------------


def test_repr(rootfs):
    args = ["/bin/sleep", "100"]
    with start(rootfs, args) as p:
        text = repr(p)
        assert text.startswith("<pycontain.Process ")
        assert f"pid={p.pid}" in text
        assert repr(args) in text
        assert "running" in text
        p.kill()
        p.wait()
        text = repr(p)
        assert "returncode=-9" in text
        assert "running" not in text
        assert f"pid={p.pid}" in text


def test_repr_of_an_ended_program(rootfs):
    with start(rootfs, ["/bin/sh", "-c", "exit 2"]) as p:
        p.wait(timeout=TIMEOUT)
        assert repr(p).endswith("returncode=2>")


# -- threads ---------------------------------------------------------------------------------


def test_wait_in_one_thread_kill_from_another(rootfs):
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        results, errors = [], []

        def waiter():
            try:
                results.append(p.wait())
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        assert thread.is_alive()  # wait() blocks without holding the GIL...
        p.kill()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert errors == []
        assert results == [-signal.SIGKILL]


def test_racing_wait_and_kill(rootfs):
    # The program may end by itself before, during or after the kill: kill
    # either works or raises ProcessLookupError, and wait gets 0 or -9.
    before, fds = child_pids(), fd_count()
    for _ in range(40):
        p = start(rootfs, ["/bin/true"])
        results, errors = [], []

        def waiter(p=p, results=results, errors=errors):
            try:
                results.append(p.wait(timeout=TIMEOUT))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=waiter)
        thread.start()
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        thread.join(TIMEOUT)
        assert errors == []
        assert results in ([0], [-signal.SIGKILL])
        assert p.wait() == results[0]
    assert child_pids() == before
    assert fd_count() == fds


def test_several_threads_waiting_get_the_same_code(rootfs):
    with start_trap(rootfs, code=7) as p:
        results, errors = [], []
        lock = threading.Lock()

        def waiter(timeout):
            try:
                code = p.wait(timeout=timeout)
            except BaseException as error:
                errors.append(error)
            else:
                with lock:
                    results.append(code)

        threads = [threading.Thread(target=waiter, args=(t,)) for t in (None, None, TIMEOUT, 60)]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        p.terminate()
        for thread in threads:
            thread.join(TIMEOUT)
        assert errors == []
        assert results == [7, 7, 7, 7]
        assert p.returncode == 7


def test_poll_from_many_threads(rootfs):
    with start(rootfs, ["/bin/sleep", "0.2"]) as p:
        seen = []

        def poller():
            while (code := p.poll()) is None:
                time.sleep(0.005)
            seen.append(code)

        threads = [threading.Thread(target=poller) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert seen == [0] * 6


@pytest.mark.parametrize("init", [True, False], ids=["init", "no-init"])
def test_wait_when_sigchld_is_ignored(rootfs, init):
    # With SIGCHLD ignored the kernel reaps children itself and the status of
    # the container's PID 1 is lost: wait() must still return and not hang.
    # With the init, the program's status still comes on the init's pipe;
    # without, the code is 0, as subprocess reports.
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with start(rootfs, ["/bin/sh", "-c", "exit 3"], init=init, die_with_parent=init) as p:
            assert p.wait(timeout=TIMEOUT) == (3 if init else 0)
            assert p.poll() == (3 if init else 0)
    finally:
        signal.signal(signal.SIGCHLD, old)
