"""asyncio: containers driven by the running event loop.

``await pycontain.create_subprocess_exec(...)`` mirrors
``asyncio.create_subprocess_exec`` and gives an object shaped like
``asyncio.subprocess.Process``. Its exit is watched through the pidfd with
``loop.add_reader`` and its pipes are the loop's pipe transports: no thread
per process, no child watcher, no SIGCHLD handler. It works in any running
loop, a Jupyter kernel's included.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Iterable
from typing import Any, Unpack

from . import _container
from ._container import AsyncSettings, Container, ProgramSettings
from ._io import Stream
from ._process import Process
from ._spawn import StrOrBytesPath

__all__ = ["AsyncProcess", "create_subprocess_exec"]


class AsyncProcess:
    """A running container, as ``asyncio.subprocess.Process``."""

    def __init__(
        self,
        process: Process,
        loop: asyncio.AbstractEventLoop,
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
    ) -> None:
        self._process = process
        self._loop = loop
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._exited: asyncio.Future[int] | None = None
        self._watched_fd = -1  # the pidfd, held (Process._use_pidfd) while watched
        self._reader_fd = -1  # what the loop watches: the pidfd or the status pipe

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    # What the container used, once it has ended: see Process.
    @property
    def rusage(self) -> resource.struct_rusage | None:
        return self._process.rusage

    @property
    def memory_peak(self) -> int | None:
        return self._process.memory_peak

    @property
    def cpu_time(self) -> float | None:
        return self._process.cpu_time

    @property
    def oom_killed(self) -> bool | None:
        return self._process.oom_killed

    def __repr__(self) -> str:
        return f"<pycontain.AsyncProcess {self._process!r}>"

    def _repr_html_(self) -> str:
        return self._process._repr_html_()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        self._process._repr_pretty_(printer, cycle)

    # -- waiting ---------------------------------------------------------

    def _watch(self) -> asyncio.Future[int]:
        if self._exited is None:
            self._exited = self._loop.create_future()
            # Hold the pidfd open (Process closes it only when no one uses
            # it) for as long as the loop watches it.
            fd = self._process._use_pidfd()
            if fd < 0:
                assert self._process.returncode is not None
                self._exited.set_result(self._process.returncode)
            else:
                self._watched_fd = fd
                # A warm Process ends on the init's status message
                # (Process._take_status_locked): watch its status pipe.
                process = self._process
                self._reader_fd = process._status_fd if process._status_first else fd
                self._loop.add_reader(self._reader_fd, self._on_pidfd_readable)
        return self._exited

    def _on_pidfd_readable(self) -> None:
        code = self._process.poll()
        if code is None:
            if self._reader_fd != self._watched_fd and not self._process._status_first:
                # The init ended without a status (killed): its pidfd tells.
                self._loop.remove_reader(self._reader_fd)
                self._reader_fd = self._watched_fd
                self._loop.add_reader(self._reader_fd, self._on_pidfd_readable)
            return
        self._loop.remove_reader(self._reader_fd)
        self._watched_fd = self._reader_fd = -1
        self._process._release_pidfd()
        assert self._exited is not None
        if not self._exited.done():
            self._exited.set_result(code)

    def __del__(self) -> None:
        # Dropped while the loop still watched the pidfd (the loop ended
        # with a wait pending): give the fd back so the Process can close it.
        if self._watched_fd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._reader_fd)
            self._watched_fd = self._reader_fd = -1
            self._process._release_pidfd()

    async def wait(self) -> int:
        """Wait for the program to end; returns its exit code."""
        return await asyncio.shield(self._watch())

    # -- signals ---------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        self._process.send_signal(sig)

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    # -- communicating -------------------------------------------------

    async def _feed_stdin(self, input: bytes | None) -> None:
        assert self.stdin is not None
        try:
            if input:
                self.stdin.write(input)
                await self.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the program exited or closed its stdin: as asyncio does
        self.stdin.close()

    async def _nothing(self) -> None:
        return None

    async def _read(self, stream: asyncio.StreamReader | None) -> bytes | None:
        if stream is None:
            return None
        return await stream.read()

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """Send ``input``, read stdout and stderr to EOF, wait for the exit."""
        feeding = self._feed_stdin(input) if self.stdin is not None else self._nothing()
        _, stdout, stderr = await asyncio.gather(
            feeding, self._read(self.stdout), self._read(self.stderr)
        )
        await self.wait()
        return stdout, stderr


async def create_subprocess_exec(
    program: StrOrBytesPath,
    *args: StrOrBytesPath,
    layers: Iterable[StrOrBytesPath],
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    limit: int = 2**16,
    **settings: Unpack[AsyncSettings],
) -> AsyncProcess:
    """Start ``program`` with ``args`` in a container, from a running loop.

    Keywords are those of :class:`pycontain.Process`; as with asyncio,
    streams are bytes only (no ``text``/``encoding``/``errors``). The spawn
    itself (about as long as a fork) runs in the loop's thread. For many
    programs in one container, see :meth:`Container.create_subprocess_exec`.
    """
    # The text keywords are let through to be refused with a clear message.
    container, program_settings = _container.split(
        "create_subprocess_exec", layers, settings, ProgramSettings.__annotations__
    )
    return await create_subprocess_exec_in(
        container,
        program,
        *args,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        limit=limit,
        **program_settings,
    )


async def create_subprocess_exec_in(
    container: Container,
    program: StrOrBytesPath,
    *args: StrOrBytesPath,
    stdin: Stream,
    stdout: Stream,
    stderr: Stream,
    limit: int,
    **settings: Any,
) -> AsyncProcess:
    """create_subprocess_exec and Container.create_subprocess_exec."""
    for key in ("text", "universal_newlines", "encoding", "errors"):
        if settings.get(key):
            raise ValueError(f"{key} is not supported: asyncio streams carry bytes")
    if settings.get("bufsize", 0) != 0:
        raise ValueError("bufsize must be 0")
    settings.pop("bufsize", None)
    loop = asyncio.get_running_loop()
    process = Process._spawn(
        container,
        [program, *args],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        bufsize=0,
        **settings,
    )
    try:
        writer = reader_out = reader_err = None
        if process.stdin is not None:
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop),
                process.stdin,
            )
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
        if process.stdout is not None:
            reader_out = await _reader(loop, process.stdout, limit)
        if process.stderr is not None:
            reader_err = await _reader(loop, process.stderr, limit)
    except BaseException:
        process.close()
        raise
    return AsyncProcess(process, loop, writer, reader_out, reader_err)


async def _reader(loop: asyncio.AbstractEventLoop, pipe: Any, limit: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


_container.keyword_signature(create_subprocess_exec, AsyncSettings, Container, Process._start)
