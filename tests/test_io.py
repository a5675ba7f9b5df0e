"""Standard streams, pass_fds and communicate(), as subprocess.Popen offers them.

Modelled on the behaviours CPython's own subprocess tests check (pipes,
DEVNULL, STDOUT, fd and file-object redirection, text mode, buffering,
communicate with input, timeouts, large data, broken pipes, signals during
wait), written against real containers on the real kernel.
"""

from __future__ import annotations

import fcntl
import io
import os
import select
import signal
import subprocess
import threading
import time
import warnings

import pytest
from helpers import BB_ENV, TIMEOUT, is_gone

import pycontain
from pycontain import DEVNULL, PIPE, STDOUT

# Printed by `stat -L -c %t:%T` for /dev/null (char device 1:3).
DEVNULL_NUMBERS = "1:3"


def start(rootfs, args, **kwargs):
    kwargs.setdefault("env", BB_ENV)
    return pycontain.Process(args, layers=[rootfs], **kwargs)


def sh(rootfs, script, **kwargs):
    return start(rootfs, ["/bin/sh", "-c", script], **kwargs)


def readable(stream, timeout: float) -> bool:
    ready, _, _ = select.select([stream], [], [], timeout)
    return bool(ready)


# -- the constants --------------------------------------------------------------


def test_constants_are_subprocess_constants():
    assert pycontain.PIPE == subprocess.PIPE
    assert pycontain.DEVNULL == subprocess.DEVNULL
    assert pycontain.STDOUT == subprocess.STDOUT


def test_subprocess_constants_work(rootfs):
    with sh(
        rootfs,
        "cat; echo err >&2",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as p:
        assert p.communicate(b"in\n", timeout=TIMEOUT) == (b"in\nerr\n", None)
        assert p.returncode == 0


# -- pipes -----------------------------------------------------------------------


def test_streams_are_none_unless_piped(rootfs):
    with start(rootfs, ["/bin/true"]) as p:
        assert (p.stdin, p.stdout, p.stderr) == (None, None, None)
        assert p.wait(TIMEOUT) == 0


def test_stdout_pipe(rootfs):
    with sh(rootfs, "echo hello", stdout=PIPE) as p:
        assert p.stdin is None and p.stderr is None
        assert p.stdout.read() == b"hello\n"
        assert p.wait(TIMEOUT) == 0


def test_stderr_pipe(rootfs, capfd):
    with sh(rootfs, "echo out; echo oops >&2", stderr=PIPE) as p:
        assert p.stdin is None and p.stdout is None
        assert p.stderr.read() == b"oops\n"
        assert p.wait(TIMEOUT) == 0
    assert capfd.readouterr() == ("out\n", "")


def test_stdin_pipe(rootfs):
    with sh(rootfs, "read x; exit $x", stdin=PIPE) as p:
        p.stdin.write(b"7\n")
        p.stdin.close()
        assert p.wait(TIMEOUT) == 7


def test_stdout_and_stderr_pipes_are_separate(rootfs):
    with sh(rootfs, "echo out; echo err >&2", stdout=PIPE, stderr=PIPE) as p:
        assert p.communicate(timeout=TIMEOUT) == (b"out\n", b"err\n")


def test_stderr_stdout_joins_the_stdout_pipe(rootfs):
    with sh(rootfs, "echo 1; echo 2 >&2; echo 3", stdout=PIPE, stderr=STDOUT) as p:
        assert p.stderr is None
        assert p.communicate(timeout=TIMEOUT) == (b"1\n2\n3\n", None)


def test_stderr_stdout_with_inherited_stdout(rootfs, capfd):
    assert sh(rootfs, "echo out; echo err >&2", stderr=STDOUT).wait(TIMEOUT) == 0
    assert capfd.readouterr() == ("out\nerr\n", "")


def test_stderr_stdout_with_stdout_to_devnull(rootfs, capfd):
    with sh(rootfs, "echo out; echo err >&2", stdout=DEVNULL, stderr=STDOUT) as p:
        assert p.wait(TIMEOUT) == 0
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("stream", ["stdin", "stdout"])
def test_stdout_constant_is_only_for_stderr(rootfs, stream, no_leaks):
    with pytest.raises(ValueError, match="STDOUT"):
        start(rootfs, ["/bin/true"], **{stream: STDOUT})


def test_all_three_pipes(rootfs):
    with sh(rootfs, "tr a-z A-Z; echo done >&2", stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
        out, err = p.communicate(b"hello")
    assert (out, err, p.returncode) == (b"HELLO", b"done\n", 0)


def test_pipes_are_binary_buffered_files_by_default(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
        assert isinstance(p.stdin, io.BufferedWriter)
        assert isinstance(p.stdout, io.BufferedReader)
        assert isinstance(p.stderr, io.BufferedReader)
        assert p.text_mode is False and p.universal_newlines is False
        p.communicate(timeout=TIMEOUT)


def test_background_processes_do_not_hold_the_pipe_open(rootfs):
    # A background process of the container has the pipe too; it is killed
    # with the container when PID 1 exits, so EOF comes then, not 5 s later.
    started = time.monotonic()
    with sh(rootfs, "(sleep 5; echo late) & echo early", stdout=PIPE) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    assert out == b"early\n"
    assert time.monotonic() - started < 4


# -- DEVNULL -----------------------------------------------------------------------


# Prints "major:minor" of the device behind each of fd 0, 1, 2 (or "-" for a
# pipe), on the given fd. With host "/" as layer: exact, no shell involved.
STAT_FDS = (
    "import os, sys\n"
    "def what(fd):\n"
    "    st = os.fstat(fd)\n"
    "    return f'{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}' if st.st_rdev else '-'\n"
    "os.write(int(sys.argv[1]), ' '.join(what(fd) for fd in (0, 1, 2)).encode())\n"
    "print('lost'); print('lost', file=sys.stderr)\n"
)


def test_devnull_stdin(host_root):
    with pycontain.Process(
        ["python3", "-c", STAT_FDS, "1"],
        layers=[host_root],
        stdin=DEVNULL,
        stdout=PIPE,
        stderr=PIPE,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert out == f"{DEVNULL_NUMBERS} - -lost\n".encode()
    assert err == b"lost\n"


def test_devnull_stdout(host_root, capfd):
    with pycontain.Process(
        ["python3", "-c", STAT_FDS, "2"],
        layers=[host_root],
        stdin=PIPE,
        stdout=DEVNULL,
        stderr=PIPE,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert out is None
    assert err == f"- {DEVNULL_NUMBERS} -lost\n".encode()
    assert capfd.readouterr() == ("", "")


def test_devnull_stderr(host_root, capfd):
    with pycontain.Process(
        ["python3", "-c", STAT_FDS, "1"],
        layers=[host_root],
        stdin=PIPE,
        stdout=PIPE,
        stderr=DEVNULL,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert err is None
    assert out == f"- - {DEVNULL_NUMBERS}lost\n".encode()
    assert capfd.readouterr() == ("", "")


def test_devnull_stdin_reads_eof(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=DEVNULL, stdout=PIPE) as p:
        assert p.communicate(timeout=TIMEOUT) == (b"", None)
        assert p.returncode == 0


def test_devnull_for_all_three(rootfs, capfd, no_leaks):
    script = "cat; echo a; echo b >&2"
    with sh(rootfs, script, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL) as p:
        assert p.communicate(timeout=TIMEOUT) == (None, None)
        assert p.returncode == 0
    assert capfd.readouterr() == ("", "")


# -- fds and file objects ------------------------------------------------------------


def test_stdout_to_an_fd(rootfs, tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with sh(rootfs, "echo to-fd; echo err >&2", stdout=fd, stderr=fd) as p:
            assert p.wait(TIMEOUT) == 0
            assert p.stdout is None
        os.fstat(fd)  # still ours, still open
    finally:
        os.close(fd)
    assert path.read_bytes() == b"to-fd\nerr\n"


def test_stdout_and_stderr_to_file_objects(rootfs, tmp_path):
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        with sh(rootfs, "echo o; echo e >&2", stdout=out, stderr=err) as p:
            assert p.wait(TIMEOUT) == 0
        assert not out.closed and not err.closed
    assert (tmp_path / "out").read_bytes() == b"o\n"
    assert (tmp_path / "err").read_bytes() == b"e\n"


def test_stdin_from_a_file_object(rootfs, tmp_path):
    (tmp_path / "in").write_bytes(b"line1\nline2\n")
    with open(tmp_path / "in", "rb") as f:
        with start(rootfs, ["/bin/wc", "-l"], stdin=f, stdout=PIPE) as p:
            out, _ = p.communicate(timeout=TIMEOUT)
        assert not f.closed
    assert out.strip() == b"2"


def test_stdin_from_an_fd_shares_the_file_offset(rootfs, tmp_path):
    (tmp_path / "in").write_bytes(b"skip\nkeep\n")
    fd = os.open(tmp_path / "in", os.O_RDONLY)
    try:
        os.read(fd, 5)
        with start(rootfs, ["/bin/cat"], stdin=fd, stdout=PIPE) as p:
            out, _ = p.communicate(timeout=TIMEOUT)
    finally:
        os.close(fd)
    assert out == b"keep\n"


def test_stdout_appends_to_a_file_opened_for_append(rootfs, tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"before\n")
    with open(path, "ab") as f:
        assert sh(rootfs, "echo after", stdout=f).wait(TIMEOUT) == 0
    assert path.read_bytes() == b"before\nafter\n"


def test_callers_own_stdio_fds_as_targets(rootfs, capfd):
    # stdout=2 and stderr=1: swapped. The C side must not clobber one source
    # with the other while it dup2s them into place.
    with sh(rootfs, "echo to-out; echo to-err >&2", stdout=2, stderr=1) as p:
        assert p.wait(TIMEOUT) == 0
    assert capfd.readouterr() == ("to-err\n", "to-out\n")


@pytest.mark.parametrize(
    "value, error",
    [
        ("out.txt", TypeError),
        (1.5, TypeError),
        (True, TypeError),
        (-5, ValueError),
        (object(), TypeError),
    ],
)
def test_bad_stream_values(rootfs, value, error, no_leaks):
    with pytest.raises(error):
        start(rootfs, ["/bin/true"], stdout=value)


def test_closed_fd_as_stream_is_an_oserror_before_spawning(rootfs, no_leaks):
    # After closing both ends, read_end is the lowest free fd number: the next
    # fd opened (the first layer's) gets it.
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    try:
        p = start(
            rootfs,
            ["/bin/sh", "-c", "stat -L -c %F /proc/$$/fd/0; true"],
            stdin=read_end,
            stdout=PIPE,
        )
    except OSError as error:
        assert error.errno == 9  # EBADF
        assert not isinstance(error, pycontain.SpawnError)
        return
    with p:
        out, _ = p.communicate(timeout=TIMEOUT)
    pytest.fail(f"no error; the program's stdin was a {out.decode().strip()!r}")


# -- pass_fds ------------------------------------------------------------------------

LIST_FDS = "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"


def _listed_fds(host_root, **kwargs):
    result = pycontain.run(
        ["python3", "-c", LIST_FDS],
        layers=[host_root],
        capture_output=True,
        timeout=TIMEOUT,
        **kwargs,
    )
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # a list of ints


def _high_fd(fd: int, inheritable: bool) -> int:
    """A copy of ``fd`` at a number >= 200, far from any the program opens itself."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 200)
    os.set_inheritable(high, inheritable)
    return high


def test_without_pass_fds_only_stdio_reaches_the_program(host_root):
    devnull = os.open("/dev/null", os.O_RDONLY)
    leaked = _high_fd(devnull, inheritable=True)  # inheritable: still must not reach it
    try:
        fds = _listed_fds(host_root)
    finally:
        os.close(leaked)
        os.close(devnull)
    # 0, 1, 2 and the one os.listdir itself opens on /proc/self/fd.
    assert fds == [0, 1, 2, 3]


def test_pass_fds_reach_the_program_at_the_same_numbers(host_root):
    read_end, write_end = os.pipe()
    passed = _high_fd(write_end, inheritable=False)  # close-on-exec: pass_fds clears that
    devnull = os.open("/dev/null", os.O_RDONLY)
    other = _high_fd(devnull, inheritable=False)
    not_passed = _high_fd(devnull, inheritable=True)
    try:
        fds = _listed_fds(host_root, pass_fds=[passed, other, passed])
    finally:
        for fd in (read_end, write_end, passed, devnull, other, not_passed):
            os.close(fd)
    assert fds == [0, 1, 2, 3, passed, other]


def test_passed_fd_carries_data_to_the_host(rootfs):
    read_end, write_end = os.pipe()
    try:
        with sh(rootfs, f"echo through-fd >&{write_end}", pass_fds=[write_end]) as p:
            assert p.wait(TIMEOUT) == 0
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b"through-fd\n"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_pass_fds_of_the_stdio_numbers_change_nothing(rootfs):
    with sh(rootfs, "echo ok", stdout=PIPE, pass_fds=[0, 1, 2]) as p:
        assert p.communicate(timeout=TIMEOUT) == (b"ok\n", None)


@pytest.mark.parametrize(
    "fds, error", [([-1], ValueError), (["3"], TypeError), ([True], TypeError), ([1.0], TypeError)]
)
def test_bad_pass_fds(rootfs, fds, error, no_leaks):
    with pytest.raises(error):
        start(rootfs, ["/bin/true"], pass_fds=fds)


def test_closed_pass_fd_is_ebadf_before_spawning(rootfs, no_leaks):
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(OSError) as info:
        start(rootfs, ["/bin/true"], stdout=PIPE, pass_fds=[write_end])
    assert info.value.errno == 9  # EBADF


# -- text mode ---------------------------------------------------------------------


def test_text_mode_gives_text_wrappers_and_str(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, stderr=PIPE, text=True) as p:
        assert isinstance(p.stdin, io.TextIOWrapper)
        assert isinstance(p.stdout, io.TextIOWrapper)
        assert isinstance(p.stderr, io.TextIOWrapper)
        assert p.text_mode and p.universal_newlines
        assert p.communicate("héllo ✓", timeout=TIMEOUT) == ("héllo ✓", "")


def test_text_mode_readline_and_write(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, text=True) as p:
        p.stdin.write("one\ntwo\n")
        p.stdin.close()
        assert p.stdout.readlines() == ["one\n", "two\n"]
        assert p.wait(TIMEOUT) == 0


@pytest.mark.parametrize("keyword", ["text", "universal_newlines"])
def test_universal_newlines_translate_crlf_and_cr(rootfs, keyword):
    script = r"printf 'a\r\nb\rc\n'"
    with sh(rootfs, script, stdout=PIPE, **{keyword: True}) as p:
        assert p.communicate(timeout=TIMEOUT) == ("a\nb\nc\n", None)
    with sh(rootfs, script, stdout=PIPE, **{keyword: True}) as p:
        assert p.stdout.read() == "a\nb\nc\n"
        assert p.wait(TIMEOUT) == 0


def test_crlf_split_across_reads_is_one_newline(rootfs):
    with sh(rootfs, r"printf 'a\r'; sleep 0.2; printf '\nb'", stdout=PIPE, text=True) as p:
        assert p.communicate(timeout=TIMEOUT) == ("a\nb", None)


def test_binary_mode_keeps_crlf(rootfs):
    with sh(rootfs, r"printf 'a\r\nb\r'", stdout=PIPE) as p:
        assert p.communicate(timeout=TIMEOUT) == (b"a\r\nb\r", None)


def test_encoding_alone_turns_on_text_mode(rootfs):
    with sh(rootfs, r"printf '\377'", stdout=PIPE, encoding="latin-1") as p:
        assert p.text_mode
        assert p.communicate(timeout=TIMEOUT) == ("\xff", None)


def test_encoding_is_used_for_input_too(rootfs):
    with sh(rootfs, "od -An -tx1 | tr -d ' \\n'", stdin=PIPE, stdout=PIPE, encoding="latin-1") as p:
        out, _ = p.communicate("\xe9")
    assert out == "e9"


@pytest.mark.parametrize(
    "errors, expected", [("replace", "a\ufffdb"), ("surrogateescape", "a\udcffb"), ("ignore", "ab")]
)
def test_errors(rootfs, errors, expected):
    with sh(rootfs, r"printf 'a\377b'", stdout=PIPE, encoding="utf-8", errors=errors) as p:
        assert p.communicate(timeout=TIMEOUT) == (expected, None)
    with sh(rootfs, r"printf 'a\377b'", stdout=PIPE, encoding="utf-8", errors=errors) as p:
        assert p.stdout.read() == expected
        assert p.wait(TIMEOUT) == 0


def test_strict_decoding_error_in_communicate(rootfs):
    with (
        sh(rootfs, r"printf 'a\377b'", stdout=PIPE, text=True, encoding="utf-8") as p,
        pytest.raises(UnicodeDecodeError),
    ):
        p.communicate(timeout=TIMEOUT)


def test_text_and_universal_newlines_must_agree(rootfs, no_leaks):
    with pytest.raises(subprocess.SubprocessError):
        start(rootfs, ["/bin/true"], stdout=PIPE, text=True, universal_newlines=False)
    with pytest.raises(subprocess.SubprocessError):
        start(rootfs, ["/bin/true"], stdout=PIPE, text=False, universal_newlines=True)
    with start(rootfs, ["/bin/true"], stdout=PIPE, text=True, universal_newlines=True) as p:
        assert p.communicate(timeout=TIMEOUT) == ("", None)


# -- buffering ------------------------------------------------------------------------


def test_bufsize_0_is_unbuffered(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, bufsize=0) as p:
        assert isinstance(p.stdin, io.FileIO) and isinstance(p.stdout, io.FileIO)
        p.stdin.write(b"ping\n")  # no flush
        assert readable(p.stdout, TIMEOUT)
        assert p.stdout.read(100) == b"ping\n"
        p.stdin.close()
        assert p.wait(TIMEOUT) == 0


def test_default_bufsize_buffers_stdin_until_flush(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE) as p:
        p.stdin.write(b"ping\n")
        assert not readable(p.stdout, 0.3)
        p.stdin.flush()
        assert readable(p.stdout, TIMEOUT)
        assert p.stdout.readline() == b"ping\n"


def test_bufsize_1_in_text_mode_is_line_buffered(rootfs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # see the xfail below
        p = start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, text=True, bufsize=1)
    with p:
        assert p.stdin.line_buffering
        p.stdin.write("ping\n")  # a full line: flushed without flush()
        assert readable(p.stdout, TIMEOUT)
        assert p.stdout.readline() == "ping\n"


def test_bufsize_1_in_text_mode_does_not_warn(rootfs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, text=True, bufsize=1) as p:
            p.communicate("x", timeout=TIMEOUT)
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == []


def test_large_bufsize(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, bufsize=1 << 20) as p:
        assert p.communicate(b"x" * 100_000, timeout=TIMEOUT) == (b"x" * 100_000, None)


@pytest.mark.parametrize("bufsize", ["1", 1.0, True])  # None is -1, as for Popen
def test_bufsize_must_be_an_int(rootfs, bufsize, no_leaks):
    with pytest.raises(TypeError):
        start(rootfs, ["/bin/true"], stdout=PIPE, bufsize=bufsize)


# -- communicate ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"bytes\n", bytearray(b"bytearray\n"), memoryview(b"memoryview\n")]
)
def test_communicate_input(rootfs, data):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE) as p:
        assert p.communicate(data, timeout=TIMEOUT) == (bytes(data), None)
        assert p.returncode == 0


def test_communicate_without_input_closes_stdin(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE) as p:
        assert p.communicate(timeout=TIMEOUT) == (b"", None)
        assert p.stdin.closed


def test_communicate_without_pipes_just_waits(rootfs):
    with sh(rootfs, "exit 4") as p:
        assert p.communicate(timeout=TIMEOUT) == (None, None)
        assert p.returncode == 4


def test_communicate_flushes_what_was_written_first(rootfs):
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE) as p:
        p.stdin.write(b"first ")
        assert p.communicate(b"second", timeout=TIMEOUT) == (b"first second", None)


def test_communicate_closes_the_pipes_and_reaps(rootfs):
    with sh(rootfs, "cat; echo e >&2; exit 2", stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
        p.communicate(b"x", timeout=TIMEOUT)
        assert p.stdin.closed and p.stdout.closed and p.stderr.closed
        assert p.returncode == 2
        assert is_gone(p.pid)


def test_second_communicate_returns_the_same(rootfs):
    with sh(rootfs, "echo out; echo err >&2", stdout=PIPE, stderr=PIPE) as p:
        first = p.communicate(timeout=TIMEOUT)
        assert p.communicate(timeout=TIMEOUT) == first == (b"out\n", b"err\n")


def test_stdin_only_communicate(rootfs, capfd):
    with start(rootfs, ["/bin/cat"], stdin=PIPE) as p:
        assert p.communicate(b"to-inherited-stdout", timeout=TIMEOUT) == (None, None)
    assert capfd.readouterr().out == "to-inherited-stdout"


def test_input_is_ignored_without_a_stdin_pipe(rootfs):
    with sh(rootfs, "echo hi", stdout=PIPE) as p:
        assert p.communicate(b"ignored", timeout=TIMEOUT) == (b"hi\n", None)


def test_100mb_of_output_through_a_pipe(rootfs):
    size = 100_000_000
    with start(rootfs, ["/bin/head", "-c", str(size), "/dev/zero"], stdout=PIPE) as p:
        out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    assert len(out) == size
    assert out.count(0) == size


def test_10mb_in_and_back_out(rootfs):
    data = os.urandom(10_000_000)
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE) as p:
        out, _ = p.communicate(data, timeout=60)
    assert p.returncode == 0
    assert out == data


def test_large_stderr_and_stdout_at_the_same_time_do_not_deadlock(rootfs):
    script = (
        "head -c 3000000 /dev/zero >&2; head -c 3000000 /dev/zero; head -c 300000 /dev/zero >&2"
    )
    with sh(rootfs, script, stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
        out, err = p.communicate(b"i" * 1_000_000, timeout=60)
    assert (len(out), len(err), p.returncode) == (3_000_000, 3_300_000, 0)


def test_communicate_text_mode_large(rootfs):
    line = "ünïcode line\n"
    with start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE, text=True) as p:
        out, _ = p.communicate(line * 100_000, timeout=60)
    assert out == line * 100_000


# -- communicate timeouts ---------------------------------------------------------------


def test_communicate_timeout_carries_partial_output_and_resumes(rootfs):
    script = "echo first; echo e1 >&2; sleep 1; echo second; echo e2 >&2"
    with sh(rootfs, script, stdout=PIPE, stderr=PIPE) as p:
        started = time.monotonic()
        with pytest.raises(pycontain.TimeoutExpired) as info:
            p.communicate(timeout=0.4)
        assert time.monotonic() - started < 0.9
        expired = info.value
        assert isinstance(expired, subprocess.TimeoutExpired)
        assert expired.timeout == 0.4
        assert expired.cmd == ["/bin/sh", "-c", script]
        assert expired.output == b"first\n"
        assert expired.stderr == b"e1\n"
        assert p.returncode is None
        assert p.communicate(timeout=TIMEOUT) == (b"first\nsecond\n", b"e1\ne2\n")
        assert p.returncode == 0


def test_communicate_timeout_while_sending_input_then_resume(rootfs):
    # The program reads nothing for a while: the input fills the pipe, the
    # timeout hits mid-input, and a second communicate sends the rest.
    data = os.urandom(1_000_000)
    with sh(rootfs, "sleep 0.6; cat", stdin=PIPE, stdout=PIPE) as p:
        with pytest.raises(pycontain.TimeoutExpired):
            p.communicate(data, timeout=0.2)
        with pytest.raises(ValueError, match="Cannot send input"):
            p.communicate(b"more", timeout=TIMEOUT)
        out, _ = p.communicate(timeout=TIMEOUT)
    assert out == data


def test_communicate_timeout_in_the_wait_after_the_pipes_closed(rootfs):
    # stdout is closed early, so the pipe is done; the wait times out.
    with sh(rootfs, "echo bye; exec >&-; sleep 0.8", stdout=PIPE) as p:
        with pytest.raises(pycontain.TimeoutExpired) as info:
            p.communicate(timeout=0.3)
        assert info.value.output == b"bye\n"
        assert info.value.timeout == 0.3
        assert p.communicate(timeout=TIMEOUT) == (b"bye\n", None)
        assert p.returncode == 0


def test_communicate_timeout_zero(rootfs):
    with sh(rootfs, "sleep 5", stdout=PIPE) as p:
        with pytest.raises(pycontain.TimeoutExpired) as info:
            p.communicate(timeout=0)
        assert info.value.output == b""


def test_communicate_timeout_text_mode_partial_output(rootfs):
    with sh(rootfs, "echo héllo; sleep 0.8; echo bye", stdout=PIPE, text=True) as p:
        with pytest.raises(pycontain.TimeoutExpired) as info:
            p.communicate(timeout=0.3)
        assert info.value.output in ("héllo\n", b"h\xc3\xa9llo\n")
        assert p.communicate(timeout=TIMEOUT) == ("héllo\nbye\n", None)


def test_communicate_timeout_in_the_middle_of_a_utf8_character(rootfs):
    with sh(rootfs, r"printf '\303'; sleep 0.8; printf '\251'", stdout=PIPE, text=True) as p:
        with pytest.raises(pycontain.TimeoutExpired):
            p.communicate(timeout=0.3)
        assert p.communicate(timeout=TIMEOUT) == ("é", None)


# -- broken pipes ---------------------------------------------------------------------


def test_communicate_ignores_a_program_that_reads_no_input(rootfs):
    with start(rootfs, ["/bin/true"], stdin=PIPE, stdout=PIPE) as p:
        assert p.communicate(b"x" * 1_000_000, timeout=TIMEOUT) == (b"", None)
        assert p.returncode == 0


def test_communicate_ignores_a_program_that_exits_before_input_starts(rootfs):
    with sh(rootfs, "exit 5", stdin=PIPE) as p:
        p.wait(TIMEOUT)
        assert p.communicate(b"x" * 1_000_000, timeout=TIMEOUT) == (None, None)
        assert p.returncode == 5


def test_communicate_text_mode_broken_pipe(rootfs):
    with start(rootfs, ["/bin/true"], stdin=PIPE, stdout=PIPE, text=True) as p:
        assert p.communicate("x" * 1_000_000, timeout=TIMEOUT) == ("", None)


def test_program_that_reads_part_of_the_input(rootfs):
    with start(rootfs, ["/bin/head", "-c", "10"], stdin=PIPE, stdout=PIPE) as p:
        out, _ = p.communicate(b"0123456789" * 100_000, timeout=TIMEOUT)
    assert out == b"0123456789"
    assert p.returncode == 0


def test_program_closes_stdin_but_keeps_running(rootfs):
    with sh(rootfs, "exec <&-; sleep 0.2; echo done", stdin=PIPE, stdout=PIPE) as p:
        assert p.communicate(b"x" * 1_000_000, timeout=TIMEOUT) == (b"done\n", None)


def test_stdin_write_after_exit_raises_broken_pipe_unbuffered(rootfs):
    with start(rootfs, ["/bin/true"], stdin=PIPE, bufsize=0) as p:
        assert p.wait(TIMEOUT) == 0
        with pytest.raises(BrokenPipeError):
            p.stdin.write(b"x")
        assert p.communicate(timeout=TIMEOUT) == (None, None)


def test_stdin_write_after_exit_raises_broken_pipe_on_flush(rootfs):
    with start(rootfs, ["/bin/true"], stdin=PIPE) as p:
        assert p.wait(TIMEOUT) == 0
        p.stdin.write(b"x")  # buffered
        with pytest.raises(BrokenPipeError):
            p.stdin.flush()
        # communicate() and the context manager's close() must not raise.
        assert p.communicate(timeout=TIMEOUT) == (None, None)


def test_large_stdin_write_after_exit_raises_broken_pipe(rootfs):
    with start(rootfs, ["/bin/true"], stdin=PIPE, text=True) as p:
        assert p.wait(TIMEOUT) == 0
        with pytest.raises(BrokenPipeError):
            p.stdin.write("x" * 1_000_000)


def test_close_with_unflushed_input_for_a_gone_program(rootfs, no_leaks):
    p = start(rootfs, ["/bin/true"], stdin=PIPE)
    p.stdin.write(b"never read")
    assert p.wait(TIMEOUT) == 0
    p.close()
    assert p.stdin.closed


# -- waiting while signals arrive ---------------------------------------------------------


@pytest.fixture
def alarm():
    """Install a SIGALRM handler and an interval timer; both are undone after."""
    old_handler = signal.getsignal(signal.SIGALRM)

    def install(handler, first, interval=0.0):
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, first, interval)

    yield install
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old_handler)


def test_wait_continues_after_a_signal_handler_ran(rootfs, alarm):
    fired = []
    with start(rootfs, ["/bin/sleep", "0.6"]) as p:
        alarm(lambda signum, frame: fired.append(signum), 0.05, 0.05)
        started = time.monotonic()
        assert p.wait() == 0
        elapsed = time.monotonic() - started
    assert len(fired) >= 3
    assert elapsed >= 0.4


def test_wait_with_timeout_continues_after_a_signal_handler_ran(rootfs, alarm):
    fired = []
    with start(rootfs, ["/bin/sleep", "0.5"]) as p:
        alarm(lambda signum, frame: fired.append(signum), 0.05, 0.05)
        assert p.wait(timeout=TIMEOUT) == 0
    assert fired


def test_wait_timeout_is_kept_across_signals(rootfs, alarm):
    with start(rootfs, ["/bin/sleep", "5"]) as p:
        alarm(lambda signum, frame: None, 0.05, 0.05)
        started = time.monotonic()
        with pytest.raises(pycontain.TimeoutExpired):
            p.wait(timeout=0.5)
        assert 0.45 <= time.monotonic() - started < 2


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted


def test_a_handler_that_raises_interrupts_wait_and_a_later_wait_works(rootfs, alarm, no_leaks):
    with start(rootfs, ["/bin/sleep", "0.8"]) as p:
        alarm(_raise_interrupted, 0.1)
        with pytest.raises(Interrupted):
            p.wait()
        assert p.returncode is None and p.poll() is None
        assert p.wait(TIMEOUT) == 0
        assert p.wait() == 0


def test_a_handler_that_raises_interrupts_communicate_which_resumes(rootfs, alarm):
    with sh(rootfs, "echo a; sleep 0.6; echo b", stdout=PIPE) as p:
        alarm(_raise_interrupted, 0.2)
        with pytest.raises(Interrupted):
            p.communicate()
        assert p.communicate(timeout=TIMEOUT) == (b"a\nb\n", None)


def test_communicate_continues_after_a_signal_handler_ran(rootfs, alarm):
    fired = []
    with sh(rootfs, "sleep 0.4; echo done", stdout=PIPE) as p:
        alarm(lambda signum, frame: fired.append(signum), 0.05, 0.05)
        assert p.communicate() == (b"done\n", None)
    assert fired


def test_wait_in_one_thread_while_another_kills(rootfs):
    with start(rootfs, ["/bin/sleep", "60"], stdout=PIPE) as p:
        results = []
        waiter = threading.Thread(target=lambda: results.append(p.wait()))
        waiter.start()
        time.sleep(0.2)
        assert waiter.is_alive()
        started = time.monotonic()
        p.kill()
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
        assert time.monotonic() - started < 5
        assert results == [-signal.SIGKILL]
        assert p.stdout.read() == b""
    assert is_gone(p.pid)


def test_communicate_in_one_thread_while_another_kills(rootfs):
    with sh(rootfs, "echo partial; sleep 60", stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
        results = []
        worker = threading.Thread(target=lambda: results.append(p.communicate(b"in")))
        worker.start()
        time.sleep(0.2)
        p.kill()
        worker.join(TIMEOUT)
        assert not worker.is_alive()
        assert results == [(b"partial\n", b"")]
        assert p.returncode == -signal.SIGKILL


# -- context manager and cleanup -------------------------------------------------------


def test_context_manager_closes_the_pipes(rootfs, no_leaks):
    with start(rootfs, ["/bin/sleep", "60"], stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
        pipes = (p.stdin, p.stdout, p.stderr)
        assert not any(f.closed for f in pipes)
    assert all(f.closed for f in pipes)
    assert p.returncode == -signal.SIGKILL
    assert is_gone(p.pid)


def test_context_manager_after_communicate(rootfs, no_leaks):
    with sh(rootfs, "cat", stdin=PIPE, stdout=PIPE, stderr=PIPE, text=True) as p:
        assert p.communicate("x") == ("x", "")
    assert p.returncode == 0


def test_context_manager_closes_pipes_on_exception(rootfs, no_leaks):
    with pytest.raises(KeyError), start(rootfs, ["/bin/cat"], stdin=PIPE, stdout=PIPE) as p:
        p.stdin.write(b"buffered, never flushed")
        raise KeyError("boom")
    assert p.stdin.closed and p.stdout.closed
    assert p.returncode is not None


def test_many_piped_processes_leave_nothing_behind(rootfs, no_leaks):
    for i in range(30):
        args = ["/bin/sh", "-c", "cat; echo $0 >&2", str(i)]
        with start(rootfs, args, stdin=PIPE, stdout=PIPE, stderr=PIPE) as p:
            assert p.communicate(b"%d" % i, timeout=TIMEOUT) == (b"%d" % i, b"%d\n" % i)


def test_failed_spawn_closes_the_pipes_it_made(rootfs, no_leaks):
    with pytest.raises(FileNotFoundError):
        start(rootfs, ["/bin/no-such-program"], stdin=PIPE, stdout=PIPE, stderr=PIPE)


@pytest.mark.parametrize("timeout", [float("inf"), 1e12])
def test_wait_with_an_infinite_or_huge_timeout(rootfs, timeout):
    with start(rootfs, ["/bin/true"]) as p:
        assert p.wait(timeout=timeout) == 0
