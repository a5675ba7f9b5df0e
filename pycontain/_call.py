"""pycontain.call: a Python function run inside a container, its result returned.

The function runs in a copy of this interpreter made through the fork path
(docs/callbacks.md): the container is set up as for any program, and where
the exec would be, the C core calls :func:`_run_as_program` instead
(``PC_HOOK_MAIN`` in csrc/child.c). It closes the error pipe first, which
tells this side that the set-up is done, exactly as an exec does; from then
on the function's process is the container's program, with a pid, a pidfd
and an exit status like any other.

The function and its arguments reach the copy through the fork itself (no
pickling: a lambda or a closure works). Its result, or its exception with
the formatted traceback, comes back pickled over a pipe passed to it
(``pass_fds``); see docs/call.md for the message and what the function can
reach.
"""

from __future__ import annotations

import asyncio
import codecs
import math
import os
import pickle
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, Unpack

from . import _container
from ._container import CallProgramSettings, CallSettings, Container
from ._errors import TimeoutExpired
from ._io import PIPE
from ._process import Process
from ._spawn import Env, StrOrBytesPath

__all__ = ["CallError", "CallExitedError", "RemoteError", "RemoteTraceback", "call", "call_async"]

T = TypeVar("T")

# The message the function's process writes before it exits with status 0:
# a header (kind, length of the description), the description (pickled
# plain values: for an exception its type name, message and formatted
# traceback), then the pickled value or exception, up to EOF.
_HEADER = struct.Struct("!cQ")
_RESULT, _RAISED = b"R", b"E"
# Asked for; the kernel gives what /proc/sys/fs/pipe-max-size allows.
_PIPE_SIZE = 1 << 20
_READ_CHUNK = 1 << 20


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception re-raised by :func:`call`: the
    traceback as formatted in the container (as ``concurrent.futures`` does)."""

    def __init__(self, traceback: str) -> None:
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback}"""'


class CallError(Exception):
    """:func:`pycontain.call` could not give the function's result or exception."""


class RemoteError(CallError):
    """The function raised an exception that did not travel back as itself
    (it could not be pickled in the container or unpickled here).

    ``exception_type`` is its qualified class name, ``exception_message``
    its ``str()``, ``child_traceback`` the traceback formatted in the
    container (also the message's end, and the ``__cause__``).
    """

    def __init__(self, exception_type: str, exception_message: str, child_traceback: str) -> None:
        super().__init__(exception_type, exception_message, child_traceback)
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.child_traceback = child_traceback

    def __str__(self) -> str:
        what = self.exception_type
        if self.exception_message:
            what += f": {self.exception_message}"
        return f"the function raised {what}\n\n{self.child_traceback}"


class CallExitedError(CallError, ChildProcessError):
    """The function's process ended without a result: ``sys.exit()``,
    ``os._exit()``, a signal (a crash, an out-of-memory kill), ``kill()``.

    ``exit_status`` is the exit status, or ``-N`` when signal N ended it
    (as ``Popen.returncode``).
    """

    def __init__(self, function: str, exit_status: int) -> None:
        super().__init__(function, exit_status)
        self.function = function
        self.exit_status = exit_status

    def __str__(self) -> str:
        if self.exit_status >= 0:
            how = f"exited with status {self.exit_status}"
        else:
            try:
                how = f"was killed by {signal.Signals(-self.exit_status).name}"
            except ValueError:
                how = f"was killed by signal {-self.exit_status}"
        return f"pycontain.call: {self.function} {how} before returning a result"


for _cls in (RemoteTraceback, CallError, RemoteError, CallExitedError):
    _cls.__module__ = "pycontain"


# -- the container's side --------------------------------------------------------------------


def _close_inherited_fds(keep: int) -> None:
    """Cut this process off from every fd an exec would have closed
    (close-on-exec: the caller's files, sockets, pipes). Only 0, 1, 2,
    pass_fds and the result pipe are not close-on-exec here (csrc/fds.c).

    Each such fd is replaced by the container's /dev/null rather than
    closed: the caller's file objects live on in this copy, and one that is
    garbage-collected while the function runs closes its fd number, which
    must not be a file the function has opened since.
    """
    import fcntl

    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (keep, null):
            continue
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                os.dup2(null, fd, inheritable=False)
        except OSError:
            pass  # listdir's own fd, already closed
    os.close(null)


def _rebind_standard_streams() -> None:
    """sys.stdin/stdout/stderr on the container's fds 0, 1, 2: the caller's
    may be objects that write elsewhere (pytest's capture, a Jupyter
    kernel's socket), which this copy must not use."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            stream = None
        else:
            stream = open(  # noqa: SIM115 (lives as long as the process)
                fd, mode, buffering=1, errors="backslashreplace", closefd=False
            )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _describe(exc: BaseException) -> tuple[str, str, str]:
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name} object>"
    return name, message, "".join(traceback.format_exception(exc))


def _message(kind: bytes, description: Any, body: bytes) -> list[bytes]:
    described = pickle.dumps(description, pickle.HIGHEST_PROTOCOL)
    return [_HEADER.pack(kind, len(described)), described, body]


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...], env: Env | None) -> list[bytes]:
    """Run the function; the message that tells what happened."""
    try:
        if env is not None:
            os.environ.clear()
            for key, value in env.items():
                os.environb[os.fsencode(key)] = os.fsencode(value)
        value = fn(*args)
    except SystemExit:
        raise
    except BaseException as exc:
        description = _describe(exc)
        exc.__traceback__ = None
        try:
            body = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        except Exception:
            body = b""  # the parent raises RemoteError from the description
        return _message(_RAISED, description, body)
    try:
        return _message(_RESULT, None, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        # The result cannot be pickled: raise that in the parent instead.
        description = _describe(exc)
        exc.__traceback__ = None
        try:
            body = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        except Exception:
            body = b""
        return _message(_RAISED, description, body)


def _write_all(fd: int, parts: list[bytes]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _run_as_program(
    fn: Callable[..., Any], args: tuple[Any, ...], env: Env | None, result_fd: int
) -> None:
    """Runs in the container's process, in place of an exec; never returns."""
    status = 0
    try:
        _close_inherited_fds(result_fd)
        _rebind_standard_streams()
        try:
            message = _outcome(fn, args, env)
        except SystemExit as exit:
            # sys.exit() in the function ends its process, as os._exit does.
            code = exit.code
            if code is None or isinstance(code, int):
                status = code or 0
            else:
                print(code, file=sys.stderr)
                status = 1
        else:
            _write_all(result_fd, message)
    except BaseException:
        status = 1  # no one to tell but the exit status (a broken pipe, say)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass
    os._exit(status & 0xFF)


# -- the caller's side --------------------------------------------------------------------------


def _function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _result(data: bytearray, returncode: int, function: str) -> Any:
    """The function's value, or raise what it raised (or how it ended)."""
    if returncode != 0 or len(data) < _HEADER.size:
        raise CallExitedError(function, returncode)
    view = memoryview(data)
    kind, length = _HEADER.unpack_from(view)
    start = _HEADER.size + length
    description = pickle.loads(view[_HEADER.size : start])
    body = view[start:]
    if kind == _RESULT:
        return pickle.loads(body)
    name, message, child_traceback = description
    try:
        exc = pickle.loads(body) if body else None
    except Exception:
        exc = None
    if not isinstance(exc, BaseException):
        raise RemoteError(name, message, child_traceback) from RemoteTraceback(child_traceback)
    exc.__cause__ = RemoteTraceback(child_traceback)
    raise exc


def _start(
    container: Container,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    result_fd: int,
    *,
    cwd: StrOrBytesPath | None = None,
    env: Env | None = None,
    pass_fds: Iterable[int] = (),
    timeout: float | None = None,
    **streams: Any,
) -> Process:
    if not callable(fn):
        raise TypeError(f"pycontain.call: fn must be callable, not {type(fn).__name__}")
    for name, stream in streams.items():
        if isinstance(stream, int) and stream == PIPE:
            # No one would read it: the function would block once it is full.
            raise ValueError(
                f"pycontain.call: {name}=PIPE is not supported (nothing reads it); "
                "pass a file, an fd or DEVNULL"
            )
    if env is not None:
        # Checked here (the C core gets it too, unused), applied in the copy.
        env = dict(env)
    # What this process has buffered would otherwise be written twice: by
    # this process and by the copy, if the function prints.
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    return Process._spawn(
        container,
        ["pycontain.call", _function_name(fn)],
        executable="/",
        cwd=cwd,
        env=env,
        pass_fds=[*pass_fds, result_fd],
        timeout=timeout,
        _main=lambda: _run_as_program(fn, args, env, result_fd),
        **streams,
    )


def _open_pipe() -> tuple[int, int]:
    """A pipe from the function's process: (read end, non-blocking; write end)."""
    import fcntl

    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only means more round trips
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


class _Pipes:
    """What comes back from the function's process: the result pipe, and
    the streams forwarded to this process's ``sys.stdout``/``sys.stderr``
    where those are not the process's own fds (a Jupyter kernel's, pytest's
    capture, ``contextlib.redirect_stdout``): there the function's prints
    go where the caller's own prints go."""

    def __init__(self, program: dict[str, Any]) -> None:
        self.result = bytearray()
        self.read_fds: list[int] = []
        self.child_fds: list[int] = []
        self.writers: dict[int, Callable[[bytes], None]] = {}
        try:
            read_fd, self.result_fd = self._add()
            self.writers[read_fd] = self.result.extend
            for name in ("stdout", "stderr"):
                target = getattr(sys, name)
                if name not in program and target is not getattr(sys, f"__{name}__"):
                    read_fd, program[name] = self._add()
                    self.writers[read_fd] = _text_writer(target)
        except BaseException:
            self.close()
            raise

    def _add(self) -> tuple[int, int]:
        read_fd, write_fd = _open_pipe()
        self.read_fds.append(read_fd)
        self.child_fds.append(write_fd)
        return read_fd, write_fd

    def started(self) -> None:
        """The function's process has its copies: drop ours, so its exit ends the pipes."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds = []

    def drain(self, fd: int) -> bool:
        """Pass on what ``fd`` holds now; True at its end."""
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return False
            self.writers[fd](chunk)
            if not chunk:
                return True

    def drain_all(self) -> None:
        for fd in self.read_fds:
            self.drain(fd)

    def close(self) -> None:
        for fd in [*self.read_fds, *self.child_fds]:
            os.close(fd)
        self.read_fds, self.child_fds = [], []


def _text_writer(target: Any) -> Callable[[bytes], None]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(chunk: bytes) -> None:
        text = decoder.decode(chunk, final=not chunk)
        if text:
            try:
                target.write(text)
                target.flush()
            except (OSError, ValueError):
                pass  # the caller's stream is closed: as for a print of its own

    return write


def call_in(
    container: Container,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    **program: Unpack[CallProgramSettings],
) -> T:
    """pycontain.call and Container.call.

    Reads what comes back until the function's process has exited, not
    until the pipes' end: another container being set up at the same moment
    (forked from this process by another thread) may hold copies of their
    write ends for a while.
    """
    timeout = program.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    pipes = _Pipes(program)  # type: ignore[arg-type]
    try:
        with _start(container, fn, args, pipes.result_fd, **program) as process:
            pipes.started()
            pidfd = process._use_pidfd()
            try:
                poller = select.poll()
                for fd in pipes.read_fds:
                    poller.register(fd, select.POLLIN)
                if pidfd >= 0:
                    poller.register(pidfd, select.POLLIN)
                while pidfd >= 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutExpired(process.args, timeout)  # type: ignore[arg-type]
                    ready = {fd for fd, _ in poller.poll(_milliseconds(remaining))}
                    if pidfd in ready:
                        break  # exited: everything it wrote is in the pipes
                    for fd in ready:
                        if pipes.drain(fd):
                            poller.unregister(fd)
                pipes.drain_all()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                returncode = process.wait(remaining)
            except BaseException:
                # A timeout, Ctrl-C: the container ends with the call.
                process._kill_if_running()
                raise
            finally:
                if pidfd >= 0:
                    process._release_pidfd()
    finally:
        pipes.close()
    result: T = _result(pipes.result, returncode, _function_name(fn))
    return result


def _milliseconds(timeout: float | None) -> int | None:
    if timeout is None:
        return None
    return min(math.ceil(timeout * 1000), 2**31 - 1)


async def call_in_async(
    container: Container,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    **program: Unpack[CallProgramSettings],
) -> T:
    """pycontain.call_async and Container.call_async (read as call_in does)."""
    from ._asyncio import AsyncProcess

    loop = asyncio.get_running_loop()
    timeout = program.get("timeout")
    pipes = _Pipes(program)  # type: ignore[arg-type]
    watched: list[int] = []
    try:
        # The spawn (set-up only) runs in the loop's thread, as
        # create_subprocess_exec's does; the function then runs on its own.
        with _start(container, fn, args, pipes.result_fd, **program) as process:
            pipes.started()

            def on_readable(fd: int) -> None:
                if pipes.drain(fd):
                    loop.remove_reader(fd)
                    watched.remove(fd)

            for fd in pipes.read_fds:
                loop.add_reader(fd, on_readable, fd)
                watched.append(fd)
            try:
                async with asyncio.timeout(timeout):
                    returncode = await AsyncProcess(process, loop, None, None, None).wait()
                pipes.drain_all()
            except TimeoutError:
                process._kill_if_running()
                raise TimeoutExpired(process.args, timeout) from None  # type: ignore[arg-type]
            except BaseException:
                process._kill_if_running()
                raise
            finally:
                for fd in watched:
                    loop.remove_reader(fd)
    finally:
        pipes.close()
    result: T = _result(pipes.result, returncode, _function_name(fn))
    return result


def call(
    fn: Callable[..., T],
    /,
    *args: Any,
    layers: Iterable[StrOrBytesPath],
    **settings: Unpack[CallSettings],
) -> T:
    """Run ``fn(*args)`` inside a new container; return its result.

    ``fn`` runs in a copy of this interpreter, forked after the container
    has been set up (so the layers need no Python of their own): it sees
    this module state as of the call, the container's ``/`` (no host file
    except through the layers), and runs with the container's hostname,
    ids, limits. Keywords are the Container's (``layers``, ``writedir``,
    ``hostname``, ``uid``, ``rlimits``, ...) and ``cwd``, ``env`` (becomes
    ``os.environ``), ``stdin``/``stdout``/``stderr`` (fds or files; by
    default this process's), ``pass_fds``, and ``timeout`` (bounds the whole
    call; the container is killed and :class:`pycontain.TimeoutExpired`
    raised). Pass the function's own keywords with ``functools.partial``.

    The result travels back pickled; an exception raised by ``fn`` is raised
    here as itself, with the traceback formatted in the container as its
    ``__cause__`` (a :class:`pycontain.RemoteTraceback`), or as a
    :class:`pycontain.RemoteError` if it cannot be pickled.
    ``sys.exit()``, ``os._exit()`` or a signal in the function raise
    :class:`pycontain.CallExitedError` with its ``exit_status``.
    """
    container, program = _container.split(
        "call", layers, settings, CallProgramSettings.__annotations__
    )
    return call_in(container, fn, args, **program)


async def call_async(
    fn: Callable[..., T],
    /,
    *args: Any,
    layers: Iterable[StrOrBytesPath],
    **settings: Unpack[CallSettings],
) -> T:
    """As :func:`call`, awaited: the event loop runs on while ``fn`` runs.

    The result is read and the exit watched by the loop (no thread);
    cancelling the task kills the container.
    """
    container, program = _container.split(
        "call_async", layers, settings, CallProgramSettings.__annotations__
    )
    return await call_in_async(container, fn, args, **program)


_container.keyword_signature(call, CallSettings, Container, Process._start)
_container.keyword_signature(call_async, CallSettings, Container, Process._start)
