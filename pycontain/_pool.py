"""Pool: containers made ahead of time, each waiting for the program it is to run.

A cold spawn does the kernel's namespace and mount work while the caller
waits. A pool does that work before the caller asks: each entry is a
container made by the ordinary spawn path up to its last step (every mount,
``pivot_root``, identity, capabilities, ``no_new_privs``, seccomp, cgroup),
whose PID 1 is pycontain's init in wait mode (csrc/init/waiting.c). A
spawn sends the entry one request over a ``SOCK_SEQPACKET`` socket: the
program's paths, argv, environment, cwd and signal mask, and its stdio and
``pass_fds`` as ``SCM_RIGHTS``; the init starts the program as it always
does, and the caller gets an ordinary :class:`pycontain.Process`.

Each entry is used once. A background thread (at a lowered priority, with
the GIL released while it spawns) keeps ``size`` entries ready; when none is
ready a spawn takes the cold path at once rather than waiting. See README,
"Warm pool", for what is refused and why.
"""

from __future__ import annotations

import array
import errno
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from . import _cgroup, _container, _core, _lifecycle, _netns, _privileges, _spawn
from ._container import (
    CallProgramSettings,
    Container,
    ContainerSettings,
    ProgramSettings,
    RunProgramSettings,
)
from ._io import Stream
from ._spawn import Env, StrOrBytesPath

if TYPE_CHECKING:
    from ._asyncio import AsyncProcess
    from ._process import Process
    from ._run import CompletedProcess

__all__ = ["Pool"]

_T = TypeVar("_T")

# csrc/internal.h, struct pc_warm_request: magic, argc, envc, pathc,
# has_cwd, fd_count, signal_mask, then PC_WARM_MAX_FDS targets.
_MAGIC = 0x70637731
_MAX_FDS = 250
_MAX_SIZE = 128 * 1024
_HEADER = struct.Struct("=6IQ")
_HEADER_SIZE = _HEADER.size + 4 * _MAX_FDS

_CAP_SYS_NICE = 23

# How much nicer than the pool's maker the refill thread runs, so that a
# sustained load is served first; each entry's child sets its niceness back
# before it drops its capabilities (csrc/priority.c), so the program runs at
# the pool maker's.
_REFILL_NICE = 10
# A refill starts once no spawn has asked for an entry for this long: a
# burst is served without the refill's work competing with it, and under a
# sustained load (spawns coming faster than this, the pool empty) the spawns
# go cold without a refill competing for the CPUs and the GIL, so that the
# pool does not make them slower than without it. bench/pool.py measured a
# 5 ms delay as slower than cold in one run of two on a loaded VM.
_REFILL_DELAY = 0.02
# The refill thread looks at least this often whether its pool was dropped.
_IDLE_CHECK = 1.0
# After a failed refill (a layer removed, say), wait this long before the next try.
_RETRY_SECONDS = 1.0

_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
# Entry ends of request sockets while their entry is being made (_make_entry).
_in_flight: set[int] = set()
_in_flight_guard = threading.Lock()


class _Entry:
    """One waiting container: its init, the request socket and what the
    spawn made for it. Owned by the pool until handed to a Process."""

    def __init__(
        self,
        pid: int,
        pidfd: int,
        mntns: int,
        status_fd: int,
        request: socket.socket,
        cgroup: _cgroup.Cgroup | None,
        kept_upper: int,
    ) -> None:
        self.pid, self.pidfd, self.mntns, self.status_fd = pid, pidfd, mntns, status_fd
        self.request: socket.socket | None = request
        self.cgroup, self.kept_upper = cgroup, kept_upper
        self.born = time.monotonic()

    def alive(self) -> bool:
        """Whether the init still runs (a pidfd polls readable once it exited)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def started(self) -> tuple[int, int, int, int, _cgroup.Cgroup | None, int]:
        """Hand (pid, pidfd, mntns, status_fd, cgroup, kept_upper) over to the Process."""
        handed = (self.pid, self.pidfd, self.mntns, self.status_fd, self.cgroup, self.kept_upper)
        self.pidfd = self.mntns = self.status_fd = self.kept_upper = -1
        self.cgroup = None
        return handed

    def close_request(self) -> None:
        if self.request is not None:
            self.request.close()
            self.request = None

    def discard(self) -> None:
        """Kill, reap and release everything; safe to call twice."""
        self.close_request()  # a waiting init exits on its own at EOF
        if self.pidfd >= 0:
            _lifecycle.end_init(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        if self.status_fd >= 0:
            os.close(self.status_fd)
            self.status_fd = -1
        if self.mntns >= 0:
            _core.release(self.mntns, True)
            self.mntns = -1
        if self.kept_upper >= 0:
            os.close(self.kept_upper)
            self.kept_upper = -1
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def forget(self) -> None:
        """In a forked child: close our copies, touch nothing of the parent's."""
        if self.request is not None:
            self.request.close()
            self.request = None
        for fd in (self.pidfd, self.status_fd, self.kept_upper):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd = self.status_fd = self.kept_upper = self.mntns = -1
        self.cgroup = None  # the parent's to remove


def check(container: Container) -> None:
    """Refuse, before anything is made, what an entry cannot be made ahead for."""
    if container.writedir is not None:
        raise ValueError(
            "Pool refuses writedir=: only one container may use a writable layer at a "
            "time, so entries cannot be made ahead (use Container.spawn)"
        )
    if container.pre_pivot is not None:
        raise ValueError(
            "Pool refuses pre_pivot=: it runs Python code in a fork of this process while "
            "the root is built, which a background refill cannot do safely "
            "(use Container.spawn)"
        )
    if not container.init:
        raise ValueError(
            "Pool refuses init=False: a warm entry's PID 1 is pycontain's init, which waits "
            "for the program's request"
        )


class Pool:
    """``size`` containers made ahead of time from one Container, for fast spawns.

    ``Pool(container, size=4)`` or ``Pool(layers=[...], size=4, **settings)``
    (the settings of :class:`pycontain.Container`). ``pool.spawn(args, ...)``
    takes the keywords of :meth:`Container.spawn` and returns an ordinary
    :class:`pycontain.Process`, started in a ready entry, or cold (as
    ``Container.spawn`` would) when none is ready; ``run`` and
    ``create_subprocess_exec`` likewise. Each entry runs one program: no
    program ever sees what an earlier one did. Entries older than ``max_age``
    seconds (None: no limit) are replaced; :meth:`refresh` replaces all of
    them. :meth:`close` (or leaving a ``with`` block) kills and reaps every
    waiting entry; Processes already started are the caller's.

    Refused with a ValueError, before anything is made: ``writedir``,
    ``pre_pivot``, ``init=False``. ``pre_exec`` and :meth:`call` take the
    cold path (they run Python code in the container's process).
    """

    def __init__(
        self,
        container: Container | None = None,
        /,
        *,
        size: int = 4,
        max_age: float | None = None,
        layers: Iterable[StrOrBytesPath] | None = None,
        **settings: Unpack[ContainerSettings],
    ) -> None:
        self._closed = True  # until made, for __del__
        if container is None:
            if layers is None:
                raise TypeError("Pool needs a Container or layers=")
            container = Container(layers=layers, **settings)
        elif not isinstance(container, Container):
            raise TypeError(f"Pool takes a pycontain.Container, not {type(container).__name__}")
        elif layers is not None or settings:
            raise TypeError("Pool takes either a Container or its settings, not both")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, not {size!r}")
        if max_age is not None and not (
            isinstance(max_age, (int, float)) and not isinstance(max_age, bool) and max_age > 0
        ):
            raise ValueError(
                f"max_age must be a positive number of seconds or None, not {max_age!r}"
            )
        check(container)
        self.container = container
        self.size = size
        self.max_age = None if max_age is None else float(max_age)
        # How many spawns an entry served, and how many went cold.
        self.warm_spawns = 0
        self.cold_spawns = 0
        # The error of the last failed refill (entries could not be made).
        self.refill_error: BaseException | None = None
        self._nofile = _nofile_limit(container)
        # The programs' niceness: this thread's (PRIO_PROCESS 0: the calling thread).
        self._nice = os.getpriority(os.PRIO_PROCESS, 0)
        self._reset()
        self._closed = False
        _pools.add(self)
        with self._lock:
            self._start_refill_locked()

    def _reset(self) -> None:
        self._pid = os.getpid()
        # Re-entrant: the refill thread drops its reference to the pool while
        # it holds this lock (to wait on the condition), and when that was the
        # last one, __del__ -> close() runs right there, in that thread.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._ready: deque[_Entry] = deque()
        self._discarded: list[_Entry] = []
        # Pidfds of inits whose warm Process ended on their status message
        # (Process._take_status_locked) and that had not exited yet: reaped
        # by the refill thread, and at the latest by close().
        self._unreaped: list[int] = []
        self._thread: threading.Thread | None = None
        self._last_take = 0.0

    # -- spawning ------------------------------------------------------------

    def spawn(
        self, args: StrOrBytesPath | Sequence[StrOrBytesPath], **program: Unpack[ProgramSettings]
    ) -> Process:
        """As :meth:`Container.spawn`, in a ready entry when there is one."""
        from ._process import Process

        program["_pool"] = self
        return Process._spawn(self.container, args, **program)

    def run(
        self,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        input: Any = None,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        **program: Unpack[RunProgramSettings],
    ) -> CompletedProcess:
        """As :meth:`Container.run` (``subprocess.run``), in a ready entry when there is one."""
        program["_pool"] = self
        return self.container.run(
            args,
            input=input,
            capture_output=capture_output,
            timeout=timeout,
            check=check,
            **program,
        )

    async def create_subprocess_exec(
        self,
        program: StrOrBytesPath,
        *args: StrOrBytesPath,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        limit: int = 2**16,
        **settings: Unpack[_container.AsyncProgramSettings],
    ) -> AsyncProcess:
        """As :meth:`Container.create_subprocess_exec`, in a ready entry when there is one.

        The request is sent and the program's exec awaited in this thread
        (a fraction of a millisecond), as a cold spawn does."""
        settings["_pool"] = self
        return await self.container.create_subprocess_exec(
            program,
            *args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            limit=limit,
            **settings,
        )

    def call(
        self, fn: Callable[..., _T], /, *args: Any, **program: Unpack[CallProgramSettings]
    ) -> _T:
        """``Container.call``: always cold. The function runs in a fork of this
        process made into the container, which a waiting entry cannot be."""
        self._count(cold=True)
        return self.container.call(fn, *args, **program)

    def _start_program(
        self,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        executable: StrOrBytesPath | None,
        cwd: StrOrBytesPath | None,
        env: Env | None,
        stdio: Sequence[int],
        pass_fds: tuple[int, ...],
        timeout: float | None,
        *,
        callbacks: bool,
    ) -> _Entry | None:
        """Start the program in a ready entry (Process._start); None: take the cold path.

        ``callbacks`` (pre_exec, or pycontain.call's function) always take
        the cold path: they run Python code in the container's process.

        Raises what a cold spawn raises for the same program (the exec's
        errors, a bad cwd) and TimeoutExpired after ``timeout``.
        """
        if self._closed:
            raise ValueError("spawn on a closed Pool")
        if callbacks or self._empty():
            self._count(cold=True)
            return None
        prepared = _spawn.prepare_program(
            self.container._plan, args, executable=executable, cwd=cwd, env=env
        )
        request = _request(prepared, stdio, pass_fds, self._nofile)
        if request is None:
            self._count(cold=True)
            return None
        payload, fds = request
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            entry = self._take()
            if entry is None:
                self._count(cold=True)
                return None
            # One that died while it waited is skipped: its pidfd tells, or
            # the send fails on the closed socket.
            try:
                sent = entry.alive() and self._send(entry, payload, fds)
            except BaseException:  # KeyboardInterrupt, say: the entry is ours to end
                entry.discard()
                raise
            if sent:
                break
            self._discard(entry)
        try:
            failed = _await_exec(entry, deadline, args, timeout)
        except BaseException:
            entry.discard()
            raise
        if failed is not None:
            entry.discard()
            raise _spawn.program_failure(prepared, *failed) from None
        self._count(cold=False)
        return entry

    def _count(self, *, cold: bool) -> None:
        with self._lock:  # exact under concurrent spawns
            if cold:
                self.cold_spawns += 1
            else:
                self.warm_spawns += 1

    def _empty(self) -> bool:
        """No entry ready: the spawn goes cold without building a request
        first (under a sustained load the pool is empty most of the time).
        Counts as an ask, as a take does: the refill waits for a pause."""
        if self._pid != os.getpid():
            return False  # _take forgets the parent's entries
        with self._lock:
            if self._ready:
                return False
            self._start_refill_locked()
            self._last_take = time.monotonic()
            return True

    def _take(self) -> _Entry | None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            self._start_refill_locked()
            while self._ready:
                entry = self._ready.popleft()
                if self.max_age is not None and time.monotonic() - entry.born > self.max_age:
                    self._discarded.append(entry)
                    continue
                self._last_take = time.monotonic()
                if len(self._ready) == self.size - 1:
                    # Was full: the refill thread may be in its long wait.
                    # Otherwise it wakes by itself when a refill is due,
                    # and waking it here would only take the GIL from us.
                    self._changed.notify()
                return entry
            self._last_take = time.monotonic()
            return None

    def _send(self, entry: _Entry, payload: bytes, fds: list[int]) -> bool:
        """The request, to an entry that still waits; False if it does not.

        The socket stays open: its end is the program's exec (_await_exec)."""
        assert entry.request is not None
        try:
            if fds:
                entry.request.sendmsg(
                    [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
            else:
                entry.request.send(payload)
        except OSError:
            entry.close_request()
            return False
        return True

    def _reap_later(self, pidfd: int) -> None:
        """Take over an exiting init's pidfd (a warm Process's wait() ended on
        its status message); reap it now if this pool can no longer."""
        with self._lock:
            if not self._closed and self._pid == os.getpid():
                self._unreaped.append(pidfd)
                return
        _lifecycle.reap_exiting(pidfd)

    def _discard(self, entry: _Entry) -> None:
        with self._lock:
            if not self._closed:  # the refill thread ends it
                self._discarded.append(entry)
                self._changed.notify()
                return
        entry.discard()  # closed: no refill thread is left to

    # -- the refill thread ---------------------------------------------------

    def _start_refill_locked(self) -> None:
        if self._thread is None and not self._closed:
            # It holds the pool weakly while it waits, so that a pool dropped
            # without close() is collected, and its __del__ closes it.
            self._thread = threading.Thread(
                target=_refill, args=(weakref.ref(self),), name="pycontain-pool-refill", daemon=True
            )
            self._thread.start()

    def _lower_priority(self) -> int | None:
        """This thread 10 nicer (PRIO_PROCESS of a thread id: this thread only);
        the niceness each entry's child sets back (csrc/priority.c), or None.
        Not in rootless mode, nor without CAP_SYS_NICE: setting a niceness back
        needs CAP_SYS_NICE on the host (which a user namespace does not give),
        so there the refill runs at the maker's priority (and the programs
        have it)."""
        if self.container._plan.userns:
            return None
        if not (_privileges.own_capabilities("CapEff") or 0) >> _CAP_SYS_NICE & 1:
            # Nor without CAP_SYS_NICE (Docker's default set lacks it): the
            # entries could not set the niceness back either.
            return None
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice + _REFILL_NICE)
        except OSError:
            return None
        return self._nice

    def _refill_next_locked(self, retry_at: float) -> str | float:
        """What the refill thread does next: "stop", "discard", "make", or
        wait that many seconds."""
        self._expire_locked()
        if self._closed or self._pid != os.getpid():
            return "stop"
        if self._discarded or self._unreaped:
            return "discard"
        # Not during a burst of spawns: after it.
        start_at = max(retry_at, self._last_take + _REFILL_DELAY)
        short = len(self._ready) < self.size
        if short and time.monotonic() >= start_at:
            return "make"
        wake = self._next_wake(start_at if short else 0.0)
        return _IDLE_CHECK if wake is None else min(wake, _IDLE_CHECK)

    def _add_entry(self, entry: _Entry) -> bool:
        """A new entry, ready; False (and discarded) once the pool closed."""
        with self._lock:
            if self._closed or self._pid != os.getpid():
                self._discarded.append(entry)
                return False
            self._ready.append(entry)
            self._changed.notify_all()
            return True

    def _next_wake(self, start_at: float) -> float | None:
        waits = []
        if start_at:
            waits.append(start_at - time.monotonic())
        if self.max_age is not None and self._ready:
            waits.append(self._ready[0].born + self.max_age - time.monotonic())
        return max(0.0, min(waits)) + 0.001 if waits else None

    def _expire_locked(self) -> None:
        now = time.monotonic()
        while self.max_age is not None and self._ready and now - self._ready[0].born > self.max_age:
            self._discarded.append(self._ready.popleft())

    def _make_entry(self, nice: int | None) -> _Entry:
        container = self.container
        plan = container._plan
        prepared = _spawn.prepare(plan, [_lifecycle.INIT_NAME], executable=None, cwd=None, env={})
        cgroup = None
        ours, theirs_socket = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The entry's end must have no copy but the init's: its last copy's
        # close is how a spawn sees the program's exec (_await_exec). A fork
        # of this process meanwhile would keep one: at-fork closes it there.
        theirs = theirs_socket.detach()
        with _in_flight_guard:
            _in_flight.add(theirs)
        try:
            if plan.netns_pool:  # not container's: rootless mode bypasses the pool
                _netns.ensure_pool()
            if plan.limits is not None:
                cgroup = _cgroup.create(plan.limits)
            pid, pidfd, mntns, status_fd = _spawn.spawn(
                prepared, cgroup=cgroup, request_fd=theirs, nice=nice
            )
        except BaseException:
            ours.close()
            if cgroup is not None:
                cgroup.remove()
            prepared.release()
            raise
        finally:
            with _in_flight_guard:
                _in_flight.discard(theirs)
            os.close(theirs)
        if cgroup is not None:
            cgroup.close_fds()
        prepared.close_fds()
        kept_upper, prepared.kept_upper = prepared.kept_upper, -1
        return _Entry(pid, pidfd, mntns, status_fd, ours, cgroup, kept_upper)

    # -- the pool's life -----------------------------------------------------

    @property
    def ready(self) -> int:
        """How many entries wait for a program now."""
        return len(self._ready) if self._pid == os.getpid() else 0

    def fill(self, timeout: float | None = None) -> bool:
        """Wait until ``size`` entries are ready; False after ``timeout`` seconds.

        The refill starts at once (not after the usual pause since the last spawn)."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._start_refill_locked()
            self._last_take = 0.0
            self._changed.notify_all()
            while len(self._ready) < self.size and not self._closed:
                if self.refill_error is not None and not self._ready:
                    raise self.refill_error
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left if left is not None else 0.5)
            return len(self._ready) >= self.size

    def refresh(self) -> None:
        """Replace every waiting entry with a new one (after a lower layer changed, say)."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            self._discarded.extend(self._ready)
            self._ready.clear()
            self._start_refill_locked()
            self._changed.notify_all()

    def close(self) -> None:
        """Kill and reap every waiting entry and stop refilling; safe to call twice.

        Processes the pool started are the caller's: they run on.
        """
        if self._closed:
            return
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            self._closed = True
            entries = [*self._ready, *self._discarded]
            self._ready.clear()
            self._discarded = []
            thread, self._thread = self._thread, None
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:  # what the thread put there as it stopped
            entries += self._discarded
            self._discarded = []
            unreaped, self._unreaped = self._unreaped, []
        for fd in unreaped:
            _lifecycle.reap_exiting(fd)
        # Every init sees its request socket end first, so they exit together.
        for entry in entries:
            entry.close_request()
        for entry in entries:
            entry.discard()

    def _after_fork(self) -> None:
        """In a forked child: the parent's entries are not ours to use or kill."""
        for entry in [*self._ready, *self._discarded]:
            entry.forget()
        for fd in self._unreaped:  # the parent's children, not ours to reap
            os.close(fd)
        self._reset()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"ready={self.ready}"
        return f"<pycontain.Pool size={self.size} {state} {self.container!r}>"


def _await_exec(
    entry: _Entry, deadline: float | None, args: object, timeout: float | None
) -> tuple[str, int, bytes] | None:
    """Wait for the program's exec: None once it runs, or the failed (step, errno, detail).

    The program's process holds the last copy of the entry's end of the
    request socket, close-on-exec (csrc/init/init.c, start_requested_program):
    the socket's end is the exec, an error record before it a failure. This
    wakes us straight from the program's exec, not through the init. Raises
    TimeoutExpired after ``deadline``.
    """
    assert entry.request is not None
    fd = entry.request.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        while True:
            if not poller.poll(_lifecycle.poll_milliseconds(deadline, args, timeout)):
                continue
            message = _core.read_message(fd)
            if message is None:
                continue
            kind, _, step, err, detail, _, _ = message
            if kind == 0:
                return None
            if kind == _core.MESSAGE_ERROR:
                return step, err, detail
            return "init", errno.EPROTO, b""
    finally:
        entry.close_request()


def _refill(ref: weakref.ref[Pool]) -> None:
    """The refill thread: keeps the pool's entries ready until it closes or is dropped."""
    pool = ref()
    if pool is None:
        return
    nice = pool._lower_priority()
    changed = pool._changed
    retry_at = 0.0
    while True:
        with changed:
            todo = pool._refill_next_locked(retry_at)
            if todo == "discard":
                discarded, pool._discarded = pool._discarded, []
                unreaped, pool._unreaped = pool._unreaped, []
            elif isinstance(todo, float):
                del pool  # not held while it waits
                changed.wait(todo)
                pool = ref()
                if pool is None:
                    return
                continue
        if todo == "stop":
            return
        if todo == "discard":
            for fd in unreaped:
                _lifecycle.reap_exiting(fd)
            for entry in discarded:
                entry.discard()
            continue
        try:
            entry = pool._make_entry(nice)
        except Exception as error:  # kept for fill(); cold spawns raise it themselves
            pool.refill_error = error
            retry_at = time.monotonic() + _RETRY_SECONDS
            continue
        pool.refill_error = None  # fill() raises only a failure that lasts
        if not pool._add_entry(entry):
            return


def _after_fork_in_child() -> None:
    global _in_flight_guard
    for fd in _in_flight:
        os.close(fd)
    _in_flight.clear()
    _in_flight_guard = threading.Lock()
    for pool in list(_pools):
        pool._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _nofile_limit(container: Container) -> int:
    for number, soft, _ in container._plan.settings.rlimits:
        if number == resource.RLIMIT_NOFILE:
            return soft
    # Without rlimits= the entries inherit this process's own.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def _signal_mask() -> int:
    mask = 0
    for number in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        mask |= 1 << (int(number) - 1)
    return mask


def _request(
    prepared: _spawn.Prepared, stdio: Sequence[int], pass_fds: tuple[int, ...], nofile: int
) -> tuple[bytes, list[int]] | None:
    """The request's bytes and fds; None when it cannot go to an entry."""
    fds, targets = [], []
    for index in range(3):
        fd = stdio[index]
        if fd < 0:  # inherit: this process's own, if open
            try:
                os.fstat(index)
            except OSError:
                continue
            fd = index
        fds.append(fd)
        targets.append(index)
    for fd in pass_fds:
        if fd > 2:
            fds.append(fd)
            targets.append(fd)
    # The init receives them all, then places each above the highest target.
    if len(fds) > _MAX_FDS or max(targets, default=2) + len(fds) + 8 >= nofile:
        return None
    strings = [*prepared.argv, *prepared.envp, *prepared.exec_paths]
    if prepared.cwd is not None:
        strings.append(prepared.cwd)
    header = _HEADER.pack(
        _MAGIC,
        len(prepared.argv),
        len(prepared.envp),
        len(prepared.exec_paths),
        prepared.cwd is not None,
        len(fds),
        _signal_mask(),
    )
    payload = b"".join(
        (
            header,
            array.array("i", targets).tobytes(),
            bytes(4 * (_MAX_FDS - len(targets))),
            b"\0".join(strings),
            b"\0",
        )
    )
    if len(payload) > _MAX_SIZE:
        return None
    return payload, fds
