"""asyncio: create_subprocess_exec / AsyncProcess, shaped like asyncio's own.

Each test runs its coroutine with asyncio.run() under a wait_for() guard, so
a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading

import pytest
from helpers import (
    BB_ENV,
    NEEDS_OTHER_IDS,
    TIMEOUT,
    child_pids,
    fd_count,
    is_gone,
    proc_state,
    program_pid,
    wait_for_handler,
    wait_until,
)

import pycontain
from pycontain import DEVNULL, PIPE, STDOUT


def arun(coro, timeout=TIMEOUT):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


async def spawn(rootfs, *args, **kwargs):
    kwargs.setdefault("env", BB_ENV)
    return await pycontain.create_subprocess_exec(*args, layers=[rootfs], **kwargs)


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.fixture
def no_leaks():
    fds, children = fd_count(), child_pids()
    yield
    gc.collect()
    assert fd_count() == fds
    assert child_pids() <= children


def test_communicate_all_pipes(rootfs, no_leaks):
    async def main():
        p = await spawn(
            rootfs,
            "/bin/sh",
            "-c",
            "tr a-z A-Z; echo err >&2; exit 3",
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        assert isinstance(p, pycontain.AsyncProcess)
        assert isinstance(p.stdin, asyncio.StreamWriter)
        assert isinstance(p.stdout, asyncio.StreamReader)
        assert isinstance(p.stderr, asyncio.StreamReader)
        assert await p.communicate(b"hello") == (b"HELLO", b"err\n")
        assert p.returncode == 3

    arun(main())


def test_fifty_concurrent_containers(rootfs, no_leaks):
    async def one(i):
        p = await spawn(
            rootfs,
            "/bin/sh",
            "-c",
            "cat; echo err$0 >&2; exit $(($0 % 7))",
            str(i),
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        out, err = await p.communicate(b"in%d" % i * 1000)
        return i, p.returncode, out, err

    async def main():
        return await asyncio.gather(*(one(i) for i in range(50)))

    results = arun(main(), timeout=60)
    assert len(results) == 50
    for i, code, out, err in results:
        assert (code, out, err) == (i % 7, b"in%d" % i * 1000, b"err%d\n" % i)


def test_concurrent_containers_really_overlap(rootfs):
    # Ten containers that each sleep 0.5 s take about 0.5 s together.
    async def main():
        procs = [await spawn(rootfs, "/bin/sleep", "0.5") for _ in range(10)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        codes = await asyncio.gather(*(p.wait() for p in procs))
        return codes, loop.time() - started

    codes, elapsed = arun(main())
    assert codes == [0] * 10
    assert elapsed < 3


def test_wait_kill_returncode(rootfs, no_leaks):
    async def main():
        p = await spawn(rootfs, "/bin/sleep", "60")
        assert p.returncode is None
        assert isinstance(p.pid, int) and p.pid > 1
        # The parent resumes while the kernel is still setting up the new
        # image (the vfork wake-up comes before argv is in place): cmdline can
        # be empty for a moment right after the spawn.
        assert wait_until(lambda: cmdline(program_pid(p.pid)) == b"/bin/sleep\x0060\x00")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(p.wait(), 0.2)
        assert p.returncode is None
        p.kill()
        assert await p.wait() == -signal.SIGKILL
        assert p.returncode == -signal.SIGKILL
        assert await p.wait() == -signal.SIGKILL  # again
        with pytest.raises(ProcessLookupError):
            p.kill()
        with pytest.raises(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        return p.pid

    pid = arun(main())
    assert is_gone(pid)


def test_terminate_and_send_signal_reach_a_handler(rootfs):
    async def main():
        codes = []
        for send in ("terminate", "send_signal"):
            p = await spawn(
                rootfs, "/bin/sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.05; done"
            )
            wait_for_handler(p.pid, signal.SIGTERM)
            if send == "terminate":
                p.terminate()
            else:
                p.send_signal(signal.SIGTERM)
            codes.append(await p.wait())
        return codes

    assert arun(main()) == [3, 3]


def test_several_waiters_get_the_same_code(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/sh", "-c", "sleep 0.2; exit 9")
        return await asyncio.gather(p.wait(), p.wait(), p.wait())

    assert arun(main()) == [9, 9, 9]


def test_cancelled_wait_does_not_break_a_later_wait(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/sh", "-c", "sleep 0.3; exit 4")
        task = asyncio.ensure_future(p.wait())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await p.wait()

    assert arun(main()) == 4


def test_wait_for_a_program_that_already_ended(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/sh", "-c", "exit 6")
        await asyncio.sleep(0.3)
        return await p.wait()

    assert arun(main()) == 6


def test_stdout_readline_streams_before_the_program_ends(rootfs):
    # The program prints a line and then waits for input: each readline must
    # return while the program is still running.
    async def main():
        p = await spawn(
            rootfs,
            "/bin/sh",
            "-c",
            "for i in 1 2 3; do echo line$i; read x; echo got$x >&2; done",
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        lines = []
        for i in range(3):
            lines.append(await asyncio.wait_for(p.stdout.readline(), 5))
            assert p.returncode is None
            p.stdin.write(b"%d\n" % i)
            await p.stdin.drain()
        assert await p.stdout.read() == b""
        assert await p.stderr.read() == b"got0\ngot1\ngot2\n"
        assert await p.wait() == 0
        return lines

    assert arun(main()) == [b"line1\n", b"line2\n", b"line3\n"]


def test_stdout_async_iteration(rootfs):
    async def main():
        p = await spawn(
            rootfs, "/bin/sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done", stdout=PIPE
        )
        lines = [line async for line in p.stdout]
        await p.wait()
        return lines

    assert arun(main()) == [b"1\n", b"2\n", b"3\n"]


def test_limit_bounds_readline(rootfs):
    async def main():
        p = await spawn(
            rootfs,
            "/bin/sh",
            "-c",
            "head -c 200 /dev/zero | tr '\\0' x; echo",
            stdout=PIPE,
            limit=64,
        )
        with pytest.raises(ValueError):
            await p.stdout.readline()
        p.kill()
        await p.wait()
        p2 = await spawn(
            rootfs,
            "/bin/sh",
            "-c",
            "head -c 200 /dev/zero | tr '\\0' x; echo",
            stdout=PIPE,
            limit=1024,
        )
        line = await p2.stdout.readline()
        await p2.wait()
        return line

    assert arun(main()) == b"x" * 200 + b"\n"


def test_write_eof(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/wc", "-c", stdin=PIPE, stdout=PIPE)
        p.stdin.write(b"12345")
        assert p.stdin.can_write_eof()
        p.stdin.write_eof()
        out = await p.stdout.read()
        await p.wait()
        return out

    assert arun(main()).strip() == b"5"


def test_broken_pipe_program_exits_without_reading(rootfs, no_leaks):
    async def main():
        p = await spawn(rootfs, "/bin/true", stdin=PIPE, stdout=PIPE)
        assert await p.communicate(b"x" * 4_000_000) == (b"", None)
        return p.returncode

    assert arun(main()) == 0


def test_broken_pipe_program_reads_part(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/head", "-c", "5", stdin=PIPE, stdout=PIPE)
        out = await p.communicate(b"0123456789" * 400_000)
        return out, p.returncode

    assert arun(main()) == ((b"01234", None), 0)


def test_broken_pipe_program_already_gone(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/true", stdin=PIPE)
        await p.wait()
        return await p.communicate(b"x" * 1_000_000)

    assert arun(main()) == (None, None)


def test_large_output(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/head", "-c", "20000000", "/dev/zero", stdout=PIPE)
        out, _ = await p.communicate()
        return len(out), out.count(0)

    assert arun(main(), timeout=60) == (20_000_000, 20_000_000)


def test_communicate_without_pipes(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/sh", "-c", "exit 2", stdout=DEVNULL, stderr=DEVNULL)
        assert (p.stdin, p.stdout, p.stderr) == (None, None, None)
        return await p.communicate(), p.returncode

    assert arun(main()) == ((None, None), 2)


def test_stderr_to_stdout(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/sh", "-c", "echo 1; echo 2 >&2", stdout=PIPE, stderr=STDOUT)
        assert p.stderr is None
        return await p.communicate()

    assert arun(main()) == (b"1\n2\n", None)


def test_kill_during_communicate(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/sh", "-c", "echo partial; sleep 60", stdin=PIPE, stdout=PIPE)
        task = asyncio.ensure_future(p.communicate(b"in"))
        await asyncio.sleep(0.2)
        assert not task.done()
        p.kill()
        return await task, p.returncode

    assert arun(main()) == ((b"partial\n", None), -signal.SIGKILL)


@pytest.mark.parametrize(
    "keyword, value",
    [
        ("text", True),
        ("universal_newlines", True),
        ("encoding", "utf-8"),
        ("errors", "strict"),
        ("bufsize", 1),
        ("bufsize", -1),
    ],
)
def test_text_and_buffering_options_are_refused(rootfs, keyword, value, no_leaks):
    async def main():
        with pytest.raises(ValueError):
            await spawn(rootfs, "/bin/true", stdout=PIPE, **{keyword: value})

    arun(main())


def test_text_false_and_bufsize_0_are_accepted(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/echo", "ok", stdout=PIPE, text=False, bufsize=0)
        return await p.communicate()

    assert arun(main()) == (b"ok\n", None)


def test_spawn_error_is_raised_and_leaves_nothing(rootfs, no_leaks):
    async def main():
        with pytest.raises(FileNotFoundError) as info:
            await spawn(rootfs, "/bin/nosuch", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert isinstance(info.value, pycontain.SpawnError)

    arun(main())


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_other_keywords_reach_process(rootfs):
    async def main():
        p = await spawn(
            rootfs,
            "/bin/sh",
            "-c",
            "hostname; pwd; id -u",
            stdout=PIPE,
            hostname="asyncbox",
            cwd="/bin",
            uid=1234,
        )
        return await p.communicate()

    assert arun(main()) == (b"asyncbox\n/bin\n1234\n", None)


def test_works_in_a_loop_in_another_thread(rootfs):
    # No child watcher or SIGCHLD handler: a loop outside the main thread works.
    results = []

    def thread_main():
        async def main():
            p = await spawn(rootfs, "/bin/sh", "-c", "cat; exit 5", stdin=PIPE, stdout=PIPE)
            out, _ = await p.communicate(b"from-thread")
            return out, p.returncode

        results.append(arun(main()))

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert results == [(b"from-thread", 5)]


def test_repr(rootfs):
    async def main():
        p = await spawn(rootfs, "/bin/true")
        assert "pycontain.AsyncProcess" in repr(p) and "running" in repr(p)
        await p.wait()
        return repr(p)

    assert "returncode=0" in arun(main())


def test_fds_are_released_after_the_loop_closes(rootfs, no_leaks):
    async def main():
        for _ in range(10):
            p = await spawn(rootfs, "/bin/cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
            assert await p.communicate(b"x") == (b"x", b"")

    arun(main())


def test_loop_ending_while_wait_is_watched_leaks_no_fd(rootfs):
    fds, children = fd_count(), child_pids()

    async def main():
        p = await spawn(rootfs, "/bin/sleep", "60")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(p.wait(), 0.1)
        return p

    p = asyncio.run(main())
    # Killed only now, so the closed loop can never have seen the pidfd
    # readable (which would have released it).
    p.kill()
    pid = p.pid
    pidfd = p._process._pidfd  # only to close it if it leaks
    assert wait_until(lambda: proc_state(pid) == "Z")
    del p
    gc.collect()  # Process.__del__ reaps the killed program
    try:
        assert is_gone(pid)
        assert child_pids() <= children
        assert fd_count() == fds
    finally:
        try:
            if os.readlink(f"/proc/self/fd/{pidfd}") == "anon_inode:[pidfd]":
                os.close(pidfd)
        except OSError:
            pass
