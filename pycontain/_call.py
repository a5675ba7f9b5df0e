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


def _open_result_pipe() -> tuple[int, int]:
    import fcntl

    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only means more round trips
    return read_fd, write_fd


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


def _drain(fd: int, data: bytearray) -> bool:
    """Read what the non-blocking pipe ``fd`` holds; True at its end (EOF)."""
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        data += chunk


def call_in(
    container: Container,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    **program: Unpack[CallProgramSettings],
) -> T:
    """pycontain.call and Container.call.

    Reads the result until the pipe's end or the process's exit, whichever
    comes first: another container being set up at the same moment (forked
    from this process by another thread) may hold a copy of the pipe's write
    end for a while, so its end can come later than the exit.
    """
    timeout = program.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    read_fd, write_fd = _open_result_pipe()
    try:
        os.set_blocking(read_fd, False)
        with _start(container, fn, args, write_fd, **program) as process:
            os.close(write_fd)
            write_fd = -1
            data = bytearray()
            pidfd = process._use_pidfd()
            try:
                poller = select.poll()
                poller.register(read_fd, select.POLLIN)
                if pidfd >= 0:
                    poller.register(pidfd, select.POLLIN)
                while True:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutExpired(process.args, timeout)  # type: ignore[arg-type]
                    ready = {fd for fd, _ in poller.poll(_milliseconds(remaining))}
                    if read_fd in ready and _drain(read_fd, data):
                        break
                    if pidfd in ready:
                        # Exited: everything it wrote is in the pipe by now.
                        _drain(read_fd, data)
                        break
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
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    result: T = _result(data, returncode, _function_name(fn))
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
    read_fd, write_fd = _open_result_pipe()
    try:
        os.set_blocking(read_fd, False)
        # The spawn (set-up only) runs in the loop's thread, as
        # create_subprocess_exec's does; the function then runs on its own.
        process = _start(container, fn, args, write_fd, **program)
        os.close(write_fd)
        write_fd = -1
        with process:
            ended: asyncio.Future[None] = loop.create_future()
            data = bytearray()

            def on_readable() -> None:
                if _drain(read_fd, data) and not ended.done():
                    ended.set_result(None)

            loop.add_reader(read_fd, on_readable)
            exited = asyncio.ensure_future(AsyncProcess(process, loop, None, None, None).wait())
            try:
                async with asyncio.timeout(timeout):
                    either: list[asyncio.Future[Any]] = [ended, exited]
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    _drain(read_fd, data)
                    returncode = await exited
            except TimeoutError:
                process._kill_if_running()
                raise TimeoutExpired(process.args, timeout) from None  # type: ignore[arg-type]
            except BaseException:
                process._kill_if_running()
                raise
            finally:
                loop.remove_reader(read_fd)
                if not exited.done():
                    exited.cancel()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    result: T = _result(data, returncode, _function_name(fn))
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
