"""pycontain.run(): subprocess.run for a container (CompletedProcess, check,
capture_output, input, timeout that kills the whole container)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from helpers import BB_ENV, TIMEOUT, program_pid, wait_until

import pycontain
from pycontain import DEVNULL, PIPE


def run(rootfs, args, **kwargs):
    kwargs.setdefault("env", BB_ENV)
    return pycontain.run(args, layers=[rootfs], **kwargs)


def sh(rootfs, script, **kwargs):
    return run(rootfs, ["/bin/sh", "-c", script], **kwargs)


def processes_with(*argv: str) -> list[int]:
    """Host pids of every process whose command line is exactly ``argv``."""
    wanted = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == wanted:
                    found.append(int(entry))
        except OSError:
            pass
    return found


def unique_seconds() -> str:
    """A sleep duration no other process on the machine is likely to use."""
    return f"{random.randint(1000, 9999)}.{random.randint(100, 999)}"


def test_returns_a_completed_process(rootfs, no_leaks):
    result = sh(rootfs, "exit 3")
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.args == ["/bin/sh", "-c", "exit 3"]
    assert result.returncode == 3
    assert result.stdout is None and result.stderr is None


def test_output_is_inherited_by_default(rootfs, capfd):
    assert sh(rootfs, "echo out; echo err >&2").returncode == 0
    assert capfd.readouterr() == ("out\n", "err\n")


def test_capture_output(rootfs, no_leaks):
    result = sh(rootfs, "echo out; echo err >&2", capture_output=True)
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")


def test_capture_output_text(rootfs):
    result = sh(rootfs, r"printf 'a\r\nb\n'; echo é >&2", capture_output=True, text=True)
    assert (result.stdout, result.stderr) == ("a\nb\n", "é\n")


def test_stdout_pipe_alone(rootfs, capfd):
    result = sh(rootfs, "echo out; echo err >&2", stdout=PIPE)
    assert (result.stdout, result.stderr) == (b"out\n", None)
    assert capfd.readouterr() == ("", "err\n")


def test_stderr_to_stdout(rootfs):
    result = sh(rootfs, "echo out; echo err >&2", stdout=PIPE, stderr=subprocess.STDOUT)
    assert (result.stdout, result.stderr) == (b"out\nerr\n", None)


def test_devnull(rootfs, capfd):
    result = sh(
        rootfs, "cat; echo out; echo err >&2", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
    )
    assert result.returncode == 0 and result.stdout is None
    assert capfd.readouterr() == ("", "")


def test_input_bytes(rootfs, no_leaks):
    result = run(rootfs, ["/bin/cat"], input=b"hello", capture_output=True)
    assert result.stdout == b"hello"


def test_input_text(rootfs):
    result = run(rootfs, ["/bin/cat"], input="héllo", capture_output=True, text=True)
    assert result.stdout == "héllo"


def test_empty_input_closes_stdin(rootfs):
    result = run(rootfs, ["/bin/cat"], input=b"", stdout=PIPE, timeout=TIMEOUT)
    assert (result.returncode, result.stdout) == (0, b"")


def test_large_input_and_output(rootfs):
    data = os.urandom(5_000_000)
    result = run(rootfs, ["/bin/cat"], input=data, capture_output=True, timeout=60)
    assert result.stdout == data


def test_input_to_a_program_that_reads_none(rootfs):
    result = run(rootfs, ["/bin/true"], input=b"x" * 1_000_000, capture_output=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_input_and_stdin_together_are_refused(rootfs, no_leaks):
    with pytest.raises(ValueError, match="stdin and input"):
        run(rootfs, ["/bin/cat"], input=b"x", stdin=PIPE)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_capture_output_with_stdout_or_stderr_is_refused(rootfs, stream, no_leaks):
    with pytest.raises(ValueError, match="capture_output"):
        run(rootfs, ["/bin/true"], capture_output=True, **{stream: PIPE})


def test_check_passes_on_success(rootfs):
    result = sh(rootfs, "echo fine", check=True, capture_output=True)
    assert result.stdout == b"fine\n"
    result.check_returncode()


def test_check_raises_called_process_error(rootfs, no_leaks):
    with pytest.raises(subprocess.CalledProcessError) as info:
        sh(rootfs, "echo out; echo err >&2; exit 7", check=True, capture_output=True)
    error = info.value
    assert error.returncode == 7
    assert error.cmd == ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"]
    assert (error.output, error.stdout, error.stderr) == (b"out\n", b"out\n", b"err\n")


def test_check_text_mode_error_carries_str(rootfs):
    with pytest.raises(subprocess.CalledProcessError) as info:
        sh(rootfs, "echo out; exit 1", check=True, stdout=PIPE, text=True)
    assert info.value.stdout == "out\n" and info.value.stderr is None


def test_nonzero_without_check_is_just_returned(rootfs):
    result = sh(rootfs, "exit 255")
    assert result.returncode == 255
    with pytest.raises(subprocess.CalledProcessError):
        result.check_returncode()


def test_timeout_not_reached(rootfs):
    assert sh(rootfs, "sleep 0.1; echo ok", timeout=TIMEOUT, stdout=PIPE).stdout == b"ok\n"


def test_processes_with_sees_a_running_container(rootfs):
    # The control for the "is gone" checks below.
    seconds = unique_seconds()
    with pycontain.Process(["sleep", seconds], layers=[rootfs], env=BB_ENV) as p:
        # (argv shows in /proc a moment after the spawn returns: see test_asyncio)
        assert wait_until(lambda: processes_with("sleep", seconds) == [program_pid(p.pid)])
    assert processes_with("sleep", seconds) == []


def test_timeout_kills_the_whole_container(rootfs, no_leaks):
    background, foreground = unique_seconds(), unique_seconds()
    script = f"sleep {background} & echo started; echo e >&2; sleep {foreground}; true"
    started = time.monotonic()
    with pytest.raises(pycontain.TimeoutExpired) as info:
        sh(rootfs, script, timeout=0.5, capture_output=True)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    expired = info.value
    assert isinstance(expired, subprocess.TimeoutExpired)
    assert expired.timeout == 0.5
    assert expired.cmd == ["/bin/sh", "-c", script]
    assert expired.output == b"started\n"
    assert expired.stderr == b"e\n"
    # Neither the shell (PID 1) nor its background sleep survives.
    assert processes_with("sleep", background) == []
    assert processes_with("sleep", foreground) == []


def test_timeout_with_inherited_output(rootfs, no_leaks):
    seconds = unique_seconds()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run(rootfs, ["sleep", seconds], timeout=0.2)
    assert info.value.output is None and info.value.stderr is None
    assert processes_with("sleep", seconds) == []


def test_timeout_while_input_is_being_sent(rootfs, no_leaks):
    seconds = unique_seconds()
    with pytest.raises(pycontain.TimeoutExpired):
        run(rootfs, ["sleep", seconds], input=b"x" * 1_000_000, timeout=0.3)
    assert processes_with("sleep", seconds) == []


def test_timeout_wins_over_check(rootfs):
    with pytest.raises(pycontain.TimeoutExpired):
        sh(rootfs, "sleep 5; exit 1", timeout=0.2, check=True)


def test_timeout_with_large_output_keeps_what_was_read(rootfs):
    # The program writes more than a pipe holds, then hangs.
    with pytest.raises(pycontain.TimeoutExpired) as info:
        sh(rootfs, "head -c 1000000 /dev/zero; sleep 5", timeout=0.5, stdout=PIPE)
    assert info.value.output == bytes(1_000_000)


class Interrupted(Exception):
    pass


def test_an_exception_during_run_kills_the_container(rootfs, no_leaks):
    seconds = unique_seconds()

    def interrupt(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            run(rootfs, ["sleep", seconds], stdout=PIPE)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert processes_with("sleep", seconds) == []


def test_spawn_error_propagates_and_leaves_nothing(rootfs, no_leaks):
    with pytest.raises(FileNotFoundError) as info:
        run(rootfs, ["/bin/nosuch"], input=b"x", capture_output=True, timeout=TIMEOUT)
    assert isinstance(info.value, pycontain.SpawnError)
    assert info.value.step == "exec"


def test_other_keywords_reach_process(rootfs):
    result = run(
        rootfs,
        ["/bin/sh", "-c", "echo $V; pwd; hostname"],
        env={"V": "x"},
        cwd="/bin",
        hostname="runbox",
        capture_output=True,
        text=True,
    )
    assert result.stdout == "x\n/bin\nrunbox\n"


def test_host_root_python(host_root):
    result = pycontain.run(
        ["python3", "-c", "import sys; print(sys.stdin.read().upper())"],
        layers=[host_root],
        input="abc",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert result.stdout == "ABC\n"
