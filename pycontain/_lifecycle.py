"""The container's life: its init as PID 1, dying with its owner, the status.

The init (csrc/init/init.c, shipped as ``pycontain/pycontain-init``) is
exec'd by fd as the container's last setup step. It starts the program,
forwards signals to it, reaps orphans, and reports on its own pipe (the
status pipe, which the Process keeps): first that the program has been
exec'd or why not, at the end the program's wait status. With an owner
pidfd (a pidfd of this process) it kills the container as soon as this
process has exited, however it died.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import select
import signal
import threading
import time
from dataclasses import dataclass

from . import _core
from ._errors import SpawnError, TimeoutExpired, spawn_error

INIT_NAME = "pycontain-init"
INIT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), INIT_NAME)
_MFD_EXEC = 0x10  # <linux/memfd.h>, Linux 6.3; not in Python 3.11's os

_lock = threading.Lock()
_init_fd = -1
_init_id: tuple[int, int] | None = None  # (st_dev, st_ino) of what _init_fd opened
_owner_pid = -1
_owner_fd = -1
_owner_id: tuple[int, int] | None = None


def _still_ours(fd: int, identity: tuple[int, int] | None) -> bool:
    """Whether ``fd`` is still the file we opened: a daemon that closed
    every fd (os.closerange) may have closed it, and the number reused."""
    if fd < 0 or identity is None:
        return False
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == identity


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _above_stdio(fd: int) -> int:
    """Move ``fd`` above 2: the child puts the program's stdio on 0, 1, 2
    before it execs the init, which would replace an fd there."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def lift_above_stdio(fd: int) -> int:
    """``fd`` moved above 2 if it is on 0, 1 or 2 (best effort: where the
    move fails, it stays); -1 stays -1."""
    if fd < 0 or fd > 2:
        return fd
    try:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        return fd
    os.close(fd)
    return moved


def _load_init() -> int:
    try:
        with open(INIT_PATH, "rb") as f:
            image = f.read()
    except OSError as error:
        raise spawn_error(
            "init", error.errno or 0, INIT_PATH, "pycontain's init is missing; rebuild pycontain"
        ) from None
    # A sealed copy in memory, as runc does for itself: the container's
    # root can reach the init's executable through /proc/1/exe, and a copy
    # it cannot write protects the file on the host (CVE-2019-5736).
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        try:
            fd = os.memfd_create(INIT_NAME, flags | _MFD_EXEC)
        except OSError as error:
            if error.errno != errno.EINVAL:  # EINVAL: before Linux 6.3, always executable
                raise
            fd = os.memfd_create(INIT_NAME, flags)
    except OSError:
        # No executable memfds here (vm.memfd_noexec=2): the file itself.
        return _above_stdio(os.open(INIT_PATH, os.O_PATH | os.O_CLOEXEC))
    try:
        view = memoryview(image)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except BaseException:
        os.close(fd)
        raise
    return _above_stdio(fd)


def init_executable() -> int:
    """An fd of the init's executable, made once per process and kept."""
    global _init_fd, _init_id
    if not _still_ours(_init_fd, _init_id):
        with _lock:
            if not _still_ours(_init_fd, _init_id):
                _init_fd = _load_init()
                _init_id = _identity(_init_fd)
    return _init_fd


def owner_pidfd() -> int:
    """A pidfd of this process, for the init to watch; kept, remade after fork."""
    global _owner_pid, _owner_fd, _owner_id
    pid = os.getpid()
    if _owner_pid != pid or not _still_ours(_owner_fd, _owner_id):
        with _lock:
            if _owner_pid != pid or not _still_ours(_owner_fd, _owner_id):
                _owner_fd = _above_stdio(os.pidfd_open(pid))
                _owner_id = _identity(_owner_fd)
                _owner_pid = pid
    return _owner_fd


def _forget_owner_after_fork() -> None:
    # The copy refers to the parent; the child's containers watch the child.
    # Not closed: the fork path's own fork (a callback's helper) still
    # passes it on to the container of the parent it was forked from.
    global _owner_pid, _owner_fd, _owner_id
    _owner_pid = _owner_fd = -1
    _owner_id = None


os.register_at_fork(after_in_child=_forget_owner_after_fork)


def check(init: bool, die_with_parent: bool | None, new_session: bool) -> bool:
    """Check the Container's init, die_with_parent and new_session; returns
    die_with_parent with its default (None: as init) applied."""
    for name, value in (("init", init), ("new_session", new_session)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {value!r}")
    if die_with_parent is None:
        return init
    if not isinstance(die_with_parent, bool):
        raise TypeError(f"die_with_parent must be True, False or None, not {die_with_parent!r}")
    if die_with_parent and not init:
        raise ValueError(
            "die_with_parent=True needs init=True: pycontain's init is what watches this "
            "process (without it, the program is PID 1 and nothing watches)"
        )
    return die_with_parent


@dataclass
class InitPlan:
    """What one spawn with the init needs; ``status_read`` goes to the Process."""

    init_fd: int
    argv: list[bytes]
    keep_fds: list[int]
    status_read: int
    status_write: int

    def close_write_end(self) -> None:
        if self.status_write >= 0:
            os.close(self.status_write)
            self.status_write = -1

    def close(self) -> None:
        self.close_write_end()
        if self.status_read >= 0:
            os.close(self.status_read)
            self.status_read = -1


def plan(
    exec_paths: list[bytes], argv: list[bytes], *, die_with_parent: bool, request_fd: int = -1
) -> InitPlan:
    """The init's fd, argv (see csrc/init/init.c) and status pipe.

    ``request_fd`` >= 0: a warm pool entry's init, which waits for its
    program's request on that socket (csrc/init/waiting.c, pycontain/_pool.py).
    """
    init_fd = init_executable()
    owner = owner_pidfd() if die_with_parent else -1
    # Non-blocking: the parent reads what is there (_core.read_message);
    # the init writes at most three messages, far below the pipe's size.
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        read_end = _above_stdio(read_end)
        write_end = _above_stdio(write_end)
    except BaseException:
        for fd in (read_end, write_end):
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    head = [INIT_NAME.encode(), str(write_end).encode(), str(owner).encode()]
    if request_fd >= 0:
        init_argv = [*head, b"wait", str(request_fd).encode()]
    else:
        init_argv = [*head, str(len(exec_paths)).encode(), *exec_paths, *argv]
    keep = [write_end] if owner < 0 else [write_end, owner]
    if request_fd >= 0:
        keep.append(request_fd)
    return InitPlan(init_fd, init_argv, keep, read_end, write_end)


def poll_milliseconds(deadline: float | None, args: object, timeout: float | None) -> int:
    """poll()'s timeout until ``deadline`` (time.monotonic; None: -1, no
    end); TimeoutExpired(args, timeout) once it has passed."""
    if deadline is None:
        return -1
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutExpired(args, timeout)  # type: ignore[arg-type]
    return min(math.ceil(left * 1000), 2**31 - 1)


def await_program(
    status_read: int, pidfd: int, deadline: float | None, args: object, timeout: float | None
) -> tuple[str, int, bytes] | None:
    """Wait for the init's word on the program's exec.

    Returns None once the program runs, or the failed (step, errno, detail).
    Raises TimeoutExpired after ``deadline`` (the caller kills the init).
    Does not rely on the pipe's end: it watches the init's pidfd too, so a
    copy of the write end in a process forked meanwhile cannot stall it.
    """
    poller = select.poll()
    poller.register(status_read, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    init_ended = False
    while True:
        message = _core.read_message(status_read)
        if message is not None:
            kind, _, step, err, detail, _, _ = message
            if kind == _core.MESSAGE_EXEC_OK:
                return None
            if kind == _core.MESSAGE_ERROR:
                return step, err, detail
            if kind == 0:  # end of file: the init ended without a word
                return "init", errno.ECHILD, b""
            return "init", errno.EPROTO, b""
        if init_ended:
            return "init", errno.ECHILD, b""
        for fd, _ in poller.poll(poll_milliseconds(deadline, args, timeout)):
            if fd == pidfd:
                init_ended = True  # one more read: its last message may be there


def failure(step: str, err: int, detail: bytes) -> SpawnError | None:
    """The exception for a failure of the init itself (None: not the init's)."""
    if step != "init":
        return None
    if err == errno.ECHILD:
        return spawn_error(
            "init", err, None, "pycontain's init ended before it could start the program"
        )
    return spawn_error("init", err, os.fsdecode(detail) or None)


def end_init(pidfd: int) -> None:
    """Kill (if need be) and reap an init whose program did not start."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already ended
    while True:
        try:
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def reap_exiting(pidfd: int) -> None:
    """Reap an init that has sent its status and is exiting (a warm Process
    whose wait() ended on that message: pycontain/_pool.py), and close its pidfd."""
    try:
        _core.wait_pidfd(pidfd, os.WEXITED)
    except ChildProcessError:
        pass  # reaped behind our back (SIGCHLD ignored)
    finally:
        os.close(pidfd)


def program_returncode(status_read: int, init_code: int) -> int:
    """The program's returncode from the init's status message, after the
    init has been reaped; ``init_code`` (the init's own, e.g. -9 when it was
    killed) when the init ended without reporting one."""
    while True:
        try:
            message = _core.read_message(status_read)
        except OSError:
            return init_code
        if message is None or message[0] == 0:
            return init_code
        if message[0] == _core.MESSAGE_STATUS:
            return os.waitstatus_to_exitcode(message[1])
