"""Behaviours CPython's test_subprocess showed to differ from Popen, now as
Popen's (tests/cpython_test_subprocess.py runs that suite itself)."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile

import pytest
from helpers import BB_ENV, TIMEOUT

import pycontain


def start(rootfs, args, **kwargs):
    return pycontain.Process(args, layers=[rootfs], env=BB_ENV, **kwargs)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_standard_fds_given_in_any_order(rootfs, order):
    # As CPython's check_swap_fds: three files on 0, 1, 2, handed to the
    # program in another order, so the child must rearrange them.
    stdin_no, stdout_no, stderr_no = order
    files = [tempfile.TemporaryFile() for _ in range(3)]  # noqa: SIM115 - closed below
    saved = [os.dup(fd) for fd in range(3)]
    try:
        for fd, file in enumerate(files):
            os.dup2(file.fileno(), fd)
        os.write(stdin_no, b"STDIN")
        os.lseek(stdin_no, 0, os.SEEK_SET)
        script = "read x; printf 'got %s' $x; printf err >&2"
        with start(
            rootfs, ["/bin/sh", "-c", script], stdin=stdin_no, stdout=stdout_no, stderr=stderr_no
        ) as p:
            code = p.wait(timeout=TIMEOUT)
        for file in files:
            file.seek(0)
        contents = [file.read() for file in files]
    finally:
        for fd, copy in enumerate(saved):
            os.dup2(copy, fd)
            os.close(copy)
        for file in files:
            file.close()
    assert code == 0
    assert contents[stdout_no] == b"got STDIN"
    assert contents[stderr_no] == b"err"


@pytest.mark.parametrize("stdout", [None, pycontain.PIPE])
def test_communicate_with_a_program_that_does_not_read_its_input(rootfs, stdout):
    # More input than a pipe holds, for a program that closed its stdin: a
    # broken pipe is not an error of communicate(), as with Popen.
    script = "exec 0<&-; echo done"
    with start(rootfs, ["/bin/sh", "-c", script], stdin=pycontain.PIPE, stdout=stdout) as p:
        out, err = p.communicate(b"x" * (1 << 20), timeout=None if stdout is None else TIMEOUT)
        assert p.returncode == 0
    assert out == (None if stdout is None else b"done\n")
    assert err is None


def test_with_exit_raises_the_stdin_flush_error_as_popen(rootfs):
    # As CPython's test_broken_pipe_cleanup: input held in the buffer for a
    # program that has ended cannot be delivered, and __exit__ says so.
    p = start(rootfs, ["/bin/true"], stdin=pycontain.PIPE, bufsize=1 << 21)
    p.__enter__()
    assert p.wait(timeout=TIMEOUT) == 0
    assert p.stdin is not None
    p.stdin.write(b"x" * (1 << 20))  # buffered, not yet written
    with pytest.raises(BrokenPipeError):
        p.__exit__(None, None, None)
    assert p.stdin.closed
    assert p.returncode == 0


def test_popen_spellings(rootfs):
    # bufsize=None is the default buffering; Process[bytes] is a type.
    with start(rootfs, ["/bin/echo", "hi"], stdout=pycontain.PIPE, bufsize=None) as p:
        assert p.communicate()[0] == b"hi\n"
    assert pycontain.Process[bytes].__origin__ is pycontain.Process


def test_a_failing_pre_exec_is_a_subprocess_error(rootfs):
    def refuse():
        raise ValueError("no")

    with pytest.raises(subprocess.SubprocessError) as info:
        start(rootfs, ["/bin/true"], pre_exec=refuse)
    assert isinstance(info.value, pycontain.CallbackError)


def test_a_caller_without_stdio_keeps_its_fds_apart(rootfs):
    # As CPython's check_close_std_fds: with 0, 1, 2 closed, the kernel gives
    # pycontain's fds (pidfd, namespace handle, pipes) those numbers; the
    # caller then puts its own files back there. pycontain must not keep, or
    # later close, any of 0, 1, 2.
    saved = [os.dup(fd) for fd in range(3)]
    try:
        for fd in range(3):
            os.close(fd)
        p = start(rootfs, ["/bin/sleep", "100"])
        owned = [p._pidfd, p._status_fd]
    finally:
        for fd, copy in enumerate(saved):
            os.dup2(copy, fd)
            os.close(copy)
    with p:
        assert all(fd > 2 or fd == -1 for fd in owned), owned
        p.kill()
        assert p.wait(timeout=TIMEOUT) == -9
