"""The program's standard streams, as subprocess.Popen offers them.

Same constants and meanings as subprocess (the values are subprocess's, so
``subprocess.PIPE`` works too): ``None`` inherits, ``PIPE`` makes a pipe to
this process, ``DEVNULL`` is /dev/null, ``STDOUT`` (for stderr) joins
stdout, an int is an fd, and a file object stands for its ``fileno()``.
"""

from __future__ import annotations

import codecs
import io
import os
import select
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Any

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL

Stream = int | IO[Any] | None

_STREAM_NAMES = ("stdin", "stdout", "stderr")


@dataclass
class Streams:
    """fds for the child's 0, 1, 2 and the parent's ends of any pipes."""

    child: list[int] = field(default_factory=lambda: [-1, -1, -1])
    parent: list[int] = field(default_factory=lambda: [-1, -1, -1])
    # Opened here for the child only: closed once it has started.
    child_only: list[int] = field(default_factory=list)

    def close_child_ends(self) -> None:
        for fd in self.child_only:
            os.close(fd)
        self.child_only = []

    def close_all(self) -> None:
        self.close_child_ends()
        for fd in self.parent:
            if fd >= 0:
                os.close(fd)
        self.parent = [-1, -1, -1]


def _fd_of(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be None, PIPE, DEVNULL, an fd or a file object")
    if isinstance(value, int):
        if not 0 <= value < 2**31:
            raise ValueError(f"{name}: invalid value {value}")
        os.fstat(value)  # EBADF now, not in the child
        return value
    fileno = getattr(value, "fileno", None)
    if fileno is None:
        raise TypeError(f"{name} must be None, PIPE, DEVNULL, an fd or a file object")
    return int(fileno())


def open_streams(stdin: Stream, stdout: Stream, stderr: Stream) -> Streams:
    """Make the pipes and find the fds; on error nothing stays open."""
    streams = Streams()
    devnull = -1
    try:
        for index, value in enumerate((stdin, stdout, stderr)):
            name = _STREAM_NAMES[index]
            if value is None:
                continue
            if value == PIPE and not isinstance(value, bool):
                read_end, write_end = os.pipe()
                child_end, parent_end = (
                    (read_end, write_end) if index == 0 else (write_end, read_end)
                )
                streams.child[index], streams.parent[index] = child_end, parent_end
                streams.child_only.append(child_end)
            elif value == DEVNULL and not isinstance(value, bool):
                if devnull < 0:
                    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    streams.child_only.append(devnull)
                streams.child[index] = devnull
            elif value == STDOUT and not isinstance(value, bool):
                if index != 2:
                    raise ValueError(f"STDOUT is only valid for stderr, not {name}")
                # Join stdout: whatever the program's fd 1 will be.
                streams.child[2] = streams.child[1] if streams.child[1] >= 0 else 1
            else:
                streams.child[index] = _fd_of(value, name)
    except BaseException:
        streams.close_all()
        raise
    return streams


def check_options(encoding: str | None, errors: str | None, bufsize: int) -> None:
    """Refuse what wrap() would refuse, before anything is spawned."""
    if isinstance(bufsize, bool) or not isinstance(bufsize, int):
        raise TypeError("bufsize must be an int")
    # open() takes a C int.
    if not -(2**31) <= bufsize < 2**31:
        raise ValueError(f"bufsize out of range: {bufsize}")
    if encoding is not None:
        if not isinstance(encoding, str):
            raise TypeError(f"encoding must be str or None, not {type(encoding).__name__}")
        codecs.lookup(encoding)  # LookupError, as subprocess would raise
    if errors is not None and not isinstance(errors, str):
        raise TypeError(f"errors must be str or None, not {type(errors).__name__}")


def wrap(
    fd: int, index: int, *, text: bool, encoding: str | None, errors: str | None, bufsize: int
) -> IO[Any]:
    """The file object for our end of a pipe, as Popen makes it."""
    mode = "wb" if index == 0 else "rb"
    line_buffering = False
    if text and bufsize == 1:
        # Line buffering is the text layer's; the binary one below it gets
        # the default buffer, as in Popen.
        line_buffering, bufsize = True, -1
    raw: IO[Any] = open(fd, mode, bufsize)  # noqa: SIM115 - owned by the Process
    if not text:
        return raw
    if index == 0:
        return io.TextIOWrapper(
            raw, encoding=encoding, errors=errors, write_through=True, line_buffering=line_buffering
        )
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors)


@dataclass
class Communication:
    """State of a communicate() that may be resumed after a timeout."""

    input: memoryview | None = None
    offset: int = 0
    # fds of our ends of stdout and stderr (-1: not a pipe) and what came.
    output_fds: tuple[int, int] = (-1, -1)
    chunks: dict[int, list[bytes]] = field(default_factory=dict)
    # fds still to serve, with the selector event each waits for.
    open_fds: dict[int, int] = field(default_factory=dict)

    def output(self, index: int, stream: IO[Any] | None, decode: bool = True) -> Any:
        """All of stdout (index 0) or stderr (1) so far; decoded in text mode
        unless ``decode`` is false (partial output may end inside a character,
        so TimeoutExpired carries bytes, as in subprocess)."""
        fd = self.output_fds[index]
        if fd < 0 or stream is None:
            return None
        data = b"".join(self.chunks[fd])
        encoding = getattr(stream, "encoding", None)
        if encoding is None or not decode:
            return data
        # As subprocess does in text mode: decode, then universal newlines.
        text = data.decode(encoding, getattr(stream, "errors", None) or "strict")
        return text.replace("\r\n", "\n").replace("\r", "\n")


def pump(state: Communication, stdin: IO[Any] | None, deadline: float | None) -> bool:
    """Move input and output until all pipes are done or the deadline passes.

    Returns True when done. Works on the raw fds with non-blocking-safe
    reads and writes of at most PIPE_BUF, so a program that stops reading
    (or exits) cannot block us, and large outputs cannot deadlock.
    """
    with selectors.PollSelector() as selector:
        for fd, events in state.open_fds.items():
            selector.register(fd, events)
        while selector.get_map():
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return False
            if timeout is not None:
                timeout = min(timeout, 86400.0)  # poll() takes an int of ms
            for key, _ in selector.select(timeout):
                fd = key.fd
                if key.events & selectors.EVENT_WRITE:
                    assert state.input is not None and stdin is not None
                    # At most PIPE_BUF: a write of that much to a writable
                    # pipe never blocks.
                    chunk = state.input[state.offset : state.offset + select.PIPE_BUF]
                    try:
                        state.offset += os.write(fd, chunk)
                    except BrokenPipeError:
                        # The program exited or closed stdin: the rest of the
                        # input is discarded, as subprocess does.
                        state.offset = len(state.input)
                    if state.offset >= len(state.input):
                        selector.unregister(fd)
                        state.open_fds.pop(fd, None)
                        try:
                            stdin.close()
                        except BrokenPipeError:
                            pass  # as subprocess: the program is gone
                else:
                    data = os.read(fd, 32768)
                    if data:
                        state.chunks[fd].append(data)
                    else:
                        selector.unregister(fd)
                        state.open_fds.pop(fd, None)
    return True
