"""The Process object: a running container, shaped like subprocess.Popen."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
import select
import selectors
import signal as signal_module
import subprocess
import threading
import time
import types
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Unpack, overload

from . import (
    _callbacks,
    _cgroup,
    _changes,
    _container,
    _core,
    _display,
    _io,
    _lifecycle,
    _netns,
    _spawn,
)
from ._changes import Change
from ._container import Container, ProcessSettings, ProgramSettings
from ._errors import TimeoutExpired
from ._io import Stream
from ._spawn import Env, StrOrBytesPath

if TYPE_CHECKING:
    from . import _pool

__all__ = ["Process"]


def _returncode(code: int, status: int) -> int:
    # Same convention as subprocess: -N when killed by signal N.
    return status if code == os.CLD_EXITED else -status


class Process:
    """Run ``args`` in a new container and return once it has been exec'd.

    ``layers`` are read-only directories stacked with overlayfs as the
    container's ``/``; the first one is the uppermost, as in overlayfs'
    lowerdir. Writes go to a tmpfs that vanishes with the container, or to
    ``writedir`` if given (kept; overlayfs' work directory is made beside it
    and removed after the container ends, unless ``workdir`` names one).

    The program runs in new mount, PID, network, UTS and IPC namespaces, with
    its own ``/proc``, a read-only ``/sys`` and a minimal ``/dev``, in
    ``cwd`` (default ``/``) with ``env`` (default: this process's
    environment). ``executable`` (default ``args[0]``) is searched in the
    ``PATH`` of ``env`` inside the container when it has no slash.

    Streams (``stdin``, ``stdout``, ``stderr``, ``text``, ``encoding``,
    ``errors``, ``bufsize``, ``pass_fds``) are as for ``subprocess.Popen``.
    ``hostname``, ``rlimits``, ``groups``, ``gid``, ``uid`` and ``umask`` are
    applied inside the container by the C core.

    Privileges (docs/security.md): the program keeps only
    ``capabilities`` (names such as ``"CAP_NET_RAW"`` or ``"net_raw"``;
    default :data:`pycontain.DEFAULT_CAPABILITIES` for root, none for a
    non-root ``uid``), runs with ``no_new_privs``, its own session keyring
    and process group, and behind ``seccomp`` (``"default"``: the filter of
    docs/seccomp.md; ``None``: none; or bytes of a BPF program of your own).
    ``privileged=True`` keeps every capability, sets no ``no_new_privs`` and
    loads no default filter. ``network="none"`` (default) gives the program a
    network namespace of its own with ``lo`` up; ``network="host"`` shares
    this host's network (no network isolation). ``pre_pivot``/``pre_exec``
    are Python callbacks run during set-up (docs/callbacks.md); ``timeout``
    bounds the whole spawn. The new network namespace comes from a pool made
    ahead of time (:func:`pycontain.set_netns_pool`) when it has one ready;
    ``netns_pool=False`` makes it during the spawn instead.

    ``limits`` (``{"memory": "512M", "swap": 0, "pids": 64, "cpu": 1.5,
    "cpu_weight": 100}``, any subset; ``{}`` counts without limiting) gives
    the container a cgroup of its own. After the reap, ``rusage`` (always)
    and, with ``limits``, ``memory_peak``, ``cpu_time`` and ``oom_killed``
    say what it used.

    Raises ``ValueError``/``TypeError`` for bad arguments, an ``OSError``
    subclass naming the directory for a missing or non-directory layer, and a
    :class:`pycontain.SpawnError` (also the matching ``OSError`` subclass)
    when a setup step or the exec fails. Nothing is left behind then.
    """

    # Class-level defaults so __del__ and __repr__ work even when __init__
    # raised before setting them.
    pid: int | None = None
    returncode: int | None = None
    _pidfd: int = -1
    _mntns: int = -1
    _status_fd: int = -1
    _workdir: bytes | None = None
    _writedir_lock: int = -1
    _kept_upper: int = -1  # the throwaway upper (keep_upper=True), until close()
    _cgroup: _cgroup.Cgroup | None = None
    # Accounting, set when the program has been reaped: its rusage (with the
    # processes it waited for), and from its cgroup (limits= only) the peak
    # memory in bytes, the CPU seconds of every process in it, and whether
    # the OOM killer ended one of them.
    rusage: resource.struct_rusage | None = None
    memory_peak: int | None = None
    cpu_time: float | None = None
    oom_killed: bool | None = None
    _started: float | None = None
    _ended: float | None = None
    # A warm Process without limits= (pycontain/_pool.py): wait() ends on the
    # init's status message, once the container has no process left but the
    # init, which is exiting; its reap is then the pool's (_init_exiting).
    _status_first: bool = False
    _init_exiting: bool = False
    # The pool, weakly: a Process does not keep its pool alive.
    _reaper: weakref.ref[_pool.Pool] | None = None

    def __init__(
        self,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        layers: Iterable[StrOrBytesPath],
        **settings: Unpack[ProcessSettings],
    ) -> None:
        container, program = _container.split(
            "Process", layers, settings, ProgramSettings.__annotations__
        )
        self._start(container, args, **program)

    @classmethod
    def _spawn(
        cls,
        container: Container,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        **program: Unpack[ProgramSettings],
    ) -> Process:
        """Container.spawn: a Process started in ``container``."""
        process = cls.__new__(cls)
        process._start(container, args, **program)
        return process

    def _start(
        self,
        container: Container,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        executable: StrOrBytesPath | None = None,
        cwd: StrOrBytesPath | None = None,
        env: Env | None = None,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        pass_fds: Iterable[int] = (),
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        bufsize: int | None = -1,
        universal_newlines: bool | None = None,
        pre_exec: _callbacks.Callback | None = None,
        timeout: float | None = None,
        _force_legacy_clone: bool = False,
        _main: _callbacks.Callback | None = None,
        _pool: _pool.Pool | None = None,
    ) -> None:
        """The one declaration of the program's keywords and their defaults.

        ``_main`` (pycontain.call) runs in place of the exec, as the program.
        ``_pool``: start it in one of that pool's warm entries when one is
        ready (pycontain/_pool.py), else as always.
        """
        self.args = args
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        # Guards _pidfd, returncode and _users: the pidfd is closed only when
        # the process has been reaped and no thread is still using the fd, so
        # a signal can never reach a recycled pid or a reused fd number.
        self._lock = threading.Lock()
        self._users = 0
        self._communication: _io.Communication | None = None
        self._started = time.monotonic()
        if (
            universal_newlines is not None
            and text is not None
            and bool(universal_newlines) != bool(text)
        ):
            raise subprocess.SubprocessError(
                "Cannot disambiguate when both text and universal_newlines are supplied "
                "but different. Pass one or the other."
            )
        self.text_mode = bool(text or universal_newlines or encoding or errors)
        if bufsize is None:
            bufsize = -1  # as Popen
        _io.check_options(encoding, errors, bufsize)
        self.container = container
        passed = _pass_fds(pass_fds)
        _callbacks.check(container.pre_pivot, pre_exec, _main)
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
        # Streams first: a stale fd number given as a stream must fail with
        # EBADF now, before opening the layers could give the number to one
        # of pycontain's own fds.
        streams = _io.open_streams(stdin, stdout, stderr)
        if _pool is not None:
            # A warm entry: everything but the program is made already.
            try:
                entry = _pool._start_program(
                    args,
                    executable,
                    cwd,
                    env,
                    streams.child,
                    passed,
                    timeout,
                    callbacks=pre_exec is not None or _main is not None,
                )
            except BaseException:
                streams.close_all()
                raise
            if entry is not None:
                (
                    self.pid,
                    self._pidfd,
                    self._mntns,
                    self._status_fd,
                    self._cgroup,
                    self._kept_upper,
                ) = entry.started()
                if self._cgroup is None:  # a cgroup's accounting needs the init gone
                    self._status_first, self._reaper = True, weakref.ref(_pool)
                streams.close_child_ends()
                self._wrap_streams(streams, encoding, errors, bufsize)
                return
        try:
            prepared = _spawn.prepare(
                container._plan, args, executable=executable, cwd=cwd, env=env
            )
        except BaseException:
            streams.close_all()
            raise
        prepared.pass_fds = passed
        prepared.stdio = (streams.child[0], streams.child[1], streams.child[2])
        cgroup = None
        try:
            if container._plan.netns_pool:  # off in a user namespace
                _netns.ensure_pool()
            if container._plan.limits is not None:
                cgroup = _cgroup.create(container._plan.limits)
            self.pid, self._pidfd, self._mntns, self._status_fd = _spawn.spawn(
                prepared,
                force_legacy_clone=_force_legacy_clone,
                hooks=_callbacks.spawn_arguments(container.pre_pivot, pre_exec, _main),
                timeout=timeout,
                args=args,
                cgroup=cgroup,
            )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            prepared.release()
            streams.close_all()
            raise
        if cgroup is not None:
            cgroup.close_fds()
            self._cgroup = cgroup
        prepared.close_fds()
        streams.close_child_ends()
        self._workdir = prepared.created_workdir
        self._writedir_lock = prepared.writedir_lock
        self._kept_upper, prepared.kept_upper = prepared.kept_upper, -1
        self._wrap_streams(streams, encoding, errors, bufsize)

    def _wrap_streams(
        self, streams: _io.Streams, encoding: str | None, errors: str | None, bufsize: int
    ) -> None:
        files: list[IO[Any] | None] = [None, None, None]
        try:
            for index, fd in enumerate(streams.parent):
                if fd >= 0:
                    files[index] = _io.wrap(
                        fd,
                        index,
                        text=self.text_mode,
                        encoding=encoding,
                        errors=errors,
                        bufsize=bufsize,
                    )
                    streams.parent[index] = -1  # the file owns it now
        except BaseException:
            # Checked before the spawn; a MemoryError, say: leave nothing running.
            for file in files:
                if file is not None:
                    file.close()
            streams.close_all()
            self.close()
            raise
        self.stdin, self.stdout, self.stderr = files

    # Process[bytes], Process[str], as Popen[bytes] in type hints.
    __class_getitem__: Any = classmethod(types.GenericAlias)

    @property
    def universal_newlines(self) -> bool:
        return self.text_mode

    # -- waiting ---------------------------------------------------------

    def poll(self) -> int | None:
        """Return the exit code if the program has ended, else None."""
        if self.returncode is None:
            with self._lock:
                if self._pidfd >= 0:
                    self._reap_locked(self._pidfd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the program to end and return its exit code.

        A negative code -N means it was killed by signal N. Raises
        :class:`pycontain.TimeoutExpired` after ``timeout`` seconds. Waits on
        the pidfd with the GIL released; safe to call from several threads
        and again after the program has ended.
        """
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self._use_pidfd()
        if fd < 0:
            assert self.returncode is not None
            return self.returncode
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                # A pidfd polls readable once the process has exited; a warm
                # Process's status pipe when the init reports (or ends).
                watched = self._status_fd if self._status_first else fd
                if _readable(watched, remaining):
                    with self._lock:
                        code = self._reap_locked(fd)
                    if code is not None:
                        return code
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        finally:
            self._release_pidfd()

    def _use_pidfd(self) -> int:
        with self._lock:
            if self._pidfd < 0:
                return -1
            self._users += 1
            return self._pidfd

    def _release_pidfd(self) -> None:
        with self._lock:
            self._users -= 1
            self._close_if_done_locked()

    def _reap_locked(self, fd: int) -> int | None:
        if self.returncode is None and self._status_first and self._take_status_locked(fd):
            self._ended = time.monotonic()
            self._close_if_done_locked()
        if self.returncode is None:
            try:
                reaped = _core.wait_pidfd(fd, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                # Reaped behind our back (SIGCHLD set to SIG_IGN, or a stray
                # os.wait()): the init's status is lost; subprocess reports 0.
                code = 0
            else:
                if reaped is None:
                    return None
                code = _returncode(reaped[0], reaped[1])
                self.rusage = resource.struct_rusage(reaped[2])
            if self._status_fd >= 0:
                # The init's exit is not the program's: its status message
                # is (a PID 1 cannot die of its own SIGABRT).
                code = _lifecycle.program_returncode(self._status_fd, code)
            self.returncode = code
            self._finish_cgroup()
            self._ended = time.monotonic()
            self._close_if_done_locked()
        return self.returncode

    def _take_status_locked(self, pidfd: int) -> bool:
        """A warm Process: the program's status and rusage from the init's
        message, sent once every other process of the container has been
        killed and reaped; True once taken. The init's end of file without
        one (it was killed) falls back to reaping the init."""
        while True:
            try:
                message = _core.read_message(self._status_fd)
            except OSError:
                message = (0, 0, "", 0, b"", 0, None)
            if message is None:
                return False
            if message[0] == 0:
                self._status_first = False
                return False
            if message[0] == _core.MESSAGE_STATUS and message[6] is not None:
                break
        self.returncode = os.waitstatus_to_exitcode(message[1])
        self.rusage = resource.struct_rusage(message[6])
        try:
            # Exiting now: most often already gone by the time we get here.
            self._init_exiting = _core.wait_pidfd(pidfd, os.WEXITED | os.WNOHANG) is None
        except ChildProcessError:
            pass  # reaped behind our back
        return True

    def _finish_cgroup(self) -> None:
        # Every process of the container is gone once its PID 1 is reaped.
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            usage = cgroup.usage()
            self.memory_peak, self.cpu_time = usage.memory_peak, usage.cpu_time
            self.oom_killed = usage.oom_killed
            cgroup.remove()

    def _close_if_done_locked(self) -> None:
        if self.returncode is not None and self._users == 0 and self._pidfd >= 0:
            pool = None if self._reaper is None else self._reaper()
            if self._init_exiting and pool is not None:
                pool._reap_later(self._pidfd)  # it owns the pidfd now
            elif self._init_exiting:
                _lifecycle.reap_exiting(self._pidfd)  # the pool is gone: here
            else:
                os.close(self._pidfd)
            self._pidfd = -1
            if self._status_fd >= 0:
                os.close(self._status_fd)
                self._status_fd = -1
            if self._mntns >= 0:
                # The last reference to the container's mounts: unmounting
                # them happens on the worker thread, not in this wait().
                # Not with a writedir: its overlay must be gone before the
                # writedir is free for another container and its work
                # directory is removed.
                _core.release(self._mntns, self._writedir_lock < 0)
                self._mntns = -1
            _spawn.remove_workdir(self._workdir)
            self._workdir = None
            _spawn.release_writedir(self._writedir_lock)
            self._writedir_lock = -1

    # -- communicating -------------------------------------------------

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Send ``input`` to stdin, read stdout and stderr to the end, wait.

        As ``subprocess.Popen.communicate``: returns ``(stdout, stderr)``
        (``None`` for a stream that is not a pipe; ``str`` in text mode). On
        timeout raises :class:`pycontain.TimeoutExpired` carrying the output
        read so far; calling ``communicate()`` again continues where it left.
        """
        if self._communication is not None and input:
            raise ValueError("Cannot send input after starting communication")
        if self._communication is None and self.stdin is self.stdout is self.stderr is None:
            self.wait(timeout)  # nothing to send or read (as Popen)
            return None, None
        if (
            timeout is None
            and self._communication is None
            and self.stdin is not None
            and self.stdout is None
            and self.stderr is None
        ):
            return self._communicate_stdin_only(input)
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self._communication
        if state is None:
            state = self._communication = self._start_communication(input)
        if not _io.pump(state, self.stdin, deadline):
            raise TimeoutExpired(
                self.args,
                timeout,  # type: ignore[arg-type]
                output=state.output(0, self.stdout, decode=False),
                stderr=state.output(1, self.stderr, decode=False),
            )
        output, errors = self._collected(state)
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            self.wait(remaining)
        except TimeoutExpired as expired:
            expired.timeout = timeout  # type: ignore[assignment]
            expired.output, expired.stderr = output, errors
            raise
        return output, errors

    def _communicate_stdin_only(self, input: Any) -> tuple[None, None]:
        """Popen's path for stdin as the only pipe and no timeout: through
        the file object, as Popen does (code that swaps stdin for a
        file-like object relies on it). A program that closed its stdin is
        not an error here. (With output pipes, the resumable pump below
        serves, as Popen's own selector loop does.)"""
        assert self.stdin is not None
        try:
            if input:
                self.stdin.write(input)
        except BrokenPipeError:
            pass  # communicate() ignores a program that stopped reading
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass
        self.wait()
        return None, None

    def _start_communication(self, input: Any) -> _io.Communication:
        state = _io.Communication()
        if self.stdin is not None:
            try:
                self.stdin.flush()
            except BrokenPipeError:
                pass  # the program is gone; as subprocess, not an error here
            if input:
                if self.text_mode:
                    input = input.encode(self.stdin.encoding, self.stdin.errors)  # type: ignore[attr-defined]
                state.input = memoryview(input).cast("B")
                state.open_fds[self.stdin.fileno()] = selectors.EVENT_WRITE
            else:
                try:
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        fds = [-1, -1]
        for index, stream in enumerate((self.stdout, self.stderr)):
            if stream is not None:
                fds[index] = stream.fileno()
                state.open_fds[fds[index]] = selectors.EVENT_READ
                state.chunks[fds[index]] = []
        state.output_fds = (fds[0], fds[1])
        return state

    def _collected(self, state: _io.Communication) -> tuple[Any, Any]:
        return state.output(0, self.stdout), state.output(1, self.stderr)

    # -- signals ---------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send signal ``sig`` to the container's PID 1 through its pidfd.

        Raises ``ProcessLookupError`` once the program has been waited for.
        By default PID 1 is pycontain's init, which passes every signal on to
        the program, so signals act as on a Popen child; SIGKILL ends the
        init and everything in the container, SIGSTOP stops only the init.
        With ``init=False`` the program is PID 1, and the kernel delivers to
        a PID 1 only the signals it has a handler for, plus SIGKILL and
        SIGSTOP: SIGTERM then ends a program that handles it (shells with a
        ``trap``, servers) and is ignored by one that does not.
        """
        with self._lock:
            if self.returncode is not None or self._pidfd < 0:
                raise ProcessLookupError(
                    errno.ESRCH, f"pycontain: process {self.pid} has already been waited for"
                )
            signal_module.pidfd_send_signal(self._pidfd, sig)

    signal = send_signal

    def terminate(self) -> None:
        """Send SIGTERM (with ``init=False``, ignored by a program without a handler)."""
        self.send_signal(signal_module.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL: always ends the program and everything in its container."""
        self.send_signal(signal_module.SIGKILL)
        cgroup = self._cgroup
        if cgroup is not None:
            cgroup.kill()  # cgroup v2: all at once, rather than PID 1's exit doing it

    # -- what it changed ----------------------------------------------------

    @overload
    def changes(self, format: None = None) -> list[Change]: ...
    @overload
    def changes(self, format: Literal["docker"]) -> list[str]: ...
    def changes(self, format: str | None = None) -> list[Change] | list[str]:
        """What the program changed in its root filesystem, during or after its run.

        A sorted list of :class:`pycontain.Change` (path inside the container,
        ``added``/``modified``/``deleted``, kind, size), decoded from the
        writable layer against the layers (docs/changes.md); with
        ``format="docker"``, ``docker diff``'s lines (``A /path``, ``C``,
        ``D``). Needs a ``writedir`` or ``Container(keep_upper=True)``.
        """
        _changes.check_format(format)  # before anything else can fail
        with self._upper() as upper:
            plan = self.container._plan
            return _changes.report(
                upper, plan.layer_paths, self.container._mount_points(), format, plan.xattr_prefix
            )

    def commit(self, path: StrOrBytesPath) -> StrOrBytesPath:
        """Copy the writable layer to ``path`` (which must not exist) as a new layer.

        Deletions stay deleted (whiteouts and opaque directories are kept),
        so ``container.replace(layers=[path, *container.layers])`` starts
        where this program left off. Written beside ``path`` and renamed into
        place. Returns ``path``.
        """
        destination = _spawn.to_bytes(path, "path")
        with self._upper() as upper:
            _changes.commit(upper, destination, self.container._plan.xattr_prefix)
        return path

    def apply_to(self, host_dir: StrOrBytesPath, select: _changes.Select = None) -> list[Change]:
        """Make ``host_dir`` show the chosen changes ("review, then keep").

        ``select``: a callable taking a :class:`pycontain.Change`, or a list
        of container paths (each with what is below it); default all.
        Files, symlinks and directories are copied, deletions removed;
        device nodes, fifos and sockets are not applied and set-user-ID and
        set-group-ID bits are dropped. Never follows a symlink. Returns the
        changes applied.
        """
        with self._upper() as upper:
            plan = self.container._plan
            found = _changes.read_changes(
                upper, plan.layer_paths, self.container._mount_points(), plan.xattr_prefix
            )
            return _changes.apply_to(upper, found, _spawn.to_bytes(host_dir, "host_dir"), select)

    @contextlib.contextmanager
    def _upper(self) -> Iterator[int]:
        """An fd of the writable layer, for the caller to use and close."""
        plan = self.container._plan
        with self._lock:
            # A copy: close() may close the kept one meanwhile.
            fd = os.dup(self._kept_upper) if self._kept_upper >= 0 else -1
        if fd < 0 and plan.writedir_path is not None:
            fd = os.open(plan.writedir_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0 and plan.keep_upper:
            raise ValueError(
                "pycontain: the throwaway writable layer is kept only until the Process is "
                "closed, and this one has been"
            )
        if fd < 0:
            raise ValueError(
                "pycontain: changes(), commit() and apply_to() need Container(keep_upper=True) "
                "(the throwaway writable layer, kept until close()) or a writedir="
            )
        try:
            yield fd
        finally:
            os.close(fd)

    # -- cleanup ---------------------------------------------------------

    def close(self) -> None:
        """Kill the program if it is still running, close the pipes, reap it.

        Afterwards no fd, process, mount or directory of this container
        remains. Safe to call more than once.
        """
        self._kill_if_running()
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # unflushed input for a program that is gone
        self.wait()
        self._release_upper()

    def _release_upper(self) -> None:
        with self._lock:
            fd, self._kept_upper = self._kept_upper, -1
        if fd >= 0:
            os.close(fd)  # the throwaway writable layer's memory goes with it

    def _kill_if_running(self) -> bool:
        """SIGKILL the program unless it has ended; True if it was running."""
        if self._pidfd < 0 or self.poll() is not None:
            return False
        try:
            self.kill()
        except ProcessLookupError:
            pass  # ended and reaped by another thread meanwhile
        return True

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Unlike Popen, a running program is killed, not waited for; like
        # Popen, the streams are closed and a flush error of stdin (input
        # the program never got) is raised, once the container is reaped.
        try:
            self._kill_if_running()
            self._close_streams()
        finally:
            self.close()

    def _close_streams(self) -> None:
        """Close our ends of the pipes as Popen.__exit__ does: stdout and
        stderr, then stdin, whose flush error (BrokenPipeError) is raised."""
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        if self.stdin is not None:
            self.stdin.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._kept_upper >= 0:
            os.close(self._kept_upper)
            self._kept_upper = -1
        if self._pidfd < 0:
            return
        if self._kill_if_running():
            _warn(f"pycontain: {self!r} was still running; killed it", ResourceWarning, source=self)
        # The pipes are left to their own finalizers: the caller may still
        # hold them.
        self.wait()

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<pycontain.Process pid={self.pid} args={self.args!r} {state}>"

    def _repr_html_(self) -> str:
        return _display.html_table("pycontain.Process", _display.process_rows(self), [])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _display.pretty(printer, "Process", _display.process_rows(self))


_container.check_declaration(ProgramSettings, Process._start)
_container.keyword_signature(Process.__init__, ProcessSettings, Container, Process._start)


def _pass_fds(fds: Iterable[int]) -> tuple[int, ...]:
    checked = []
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"pass_fds items must be ints, not {type(fd).__name__}")
        if not 0 <= fd < 2**31:
            raise ValueError(f"pass_fds: invalid fd {fd}")
        os.fstat(fd)  # EBADF now, rather than in the container
        checked.append(fd)
    return tuple(sorted(set(checked)))


# poll() takes an int of milliseconds; a longer wait is done in pieces.
_POLL_MAX_MS = 2**31 - 1


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if timeout is None:
        return bool(poller.poll())
    # Round up, so that a short timeout still waits.
    milliseconds = (
        min(math.ceil(timeout * 1000), _POLL_MAX_MS) if timeout < math.inf else _POLL_MAX_MS
    )
    return bool(poller.poll(milliseconds))
