"""pycontain.Pool: containers made ahead of time (warm entries), each used once.

Every test here runs programs in real entries: the init in wait mode
(csrc/init/waiting.c) receiving a request over its socket. Where a test
needs a spawn to have been warm (not the cold fallback), it fills the pool
first and checks ``warm_spawns``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from helpers import (
    BB_ENV,
    NEEDS_CGROUP,
    NEEDS_OTHER_IDS,
    TIMEOUT,
    is_gone,
    proc_state,
    wait_until,
)

import pycontain
from pycontain import _pool


def full_pool(rootfs, size=2, **settings) -> pycontain.Pool:
    pool = pycontain.Pool(layers=[rootfs], size=size, **settings)
    assert pool.fill(TIMEOUT), pool.refill_error
    return pool


def waiting_pids(pool) -> list[int]:
    """The inits of the entries that wait now."""
    return [entry.pid for entry in pool._ready]


def warm_run(pool, args, **kwargs):
    """pool.run, checked to have been served by an entry."""
    assert pool.fill(TIMEOUT)
    before = pool.warm_spawns
    done = pool.run(args, env=BB_ENV, capture_output=True, timeout=TIMEOUT, **kwargs)
    assert pool.warm_spawns == before + 1
    return done


# -- what the program gets -----------------------------------------------------------


def test_each_spawn_gets_a_fresh_container(rootfs):
    with full_pool(rootfs) as pool:
        first = warm_run(pool, ["/bin/sh", "-c", "echo $$ > /mark; sleep 100 & cat /mark"])
        assert first.returncode == 0 and first.stdout == b"2\n"  # PID 2: the init is PID 1
        second = warm_run(pool, ["/bin/sh", "-c", "cat /mark; ps -o pid"])
        assert b"'/mark': No such file" in second.stderr
        # Its own init and itself: nothing an earlier program started.
        assert second.stdout.split() == [b"PID", b"1", b"2"]


SETTINGS_SCRIPT = """
echo "args: $0 $1 $2"
echo "env: $ONLY"
echo "cwd: $(pwd)"
read line; echo "stdin: $line"
echo "to stderr" >&2
read -r passed <&$FD; echo "passed fd: $passed"
echo "fds: $(ls /proc/self/fd | sort -n | tr '\\n' ' ')"
grep -E '^(SigBlk|SigIgn|Seccomp|NoNewPrivs|CapEff|CapBnd|Uid|Gid|Groups):' /proc/self/status
echo "hostname: $(hostname)"
echo "nofile: $(ulimit -n)"
echo "umask: $(umask)"
echo "net: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
echo "nice: $(cut -d' ' -f19 /proc/self/stat)"
"""


def run_settings_script(start) -> tuple[int, str, str]:
    """Run SETTINGS_SCRIPT through ``start`` with every program setting given."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"through pass_fds\n")
    os.close(write_end)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        process = start(
            ["sh", "-c", SETTINGS_SCRIPT, "first", "second"],
            executable="/bin/busybox",
            env={"PATH": "/bin", "ONLY": "this", "FD": str(read_end)},
            cwd="/etc",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=[read_end],
            text=True,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(read_end)
    with process:
        out, err = process.communicate("a line\n", timeout=TIMEOUT)
    # The pipe's number may differ from one run to the other.
    return process.returncode, out.replace(f" {read_end} ", " P "), err


@pytest.fixture
def etc_rootfs(rootfs, tmp_path):
    """The busybox root plus an /etc, as a second (upper) layer."""
    (tmp_path / "etc").mkdir()
    return [str(tmp_path), rootfs]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "hostname": "warm",
                "rlimits": {"nofile": 256},
                "uid": 1000,
                "gid": 1000,
                "groups": [1000, 1001],
                "umask": 0o027,
                "capabilities": ["CAP_NET_RAW"],
            },
            id="identity-limits",
            marks=pytest.mark.needs_root(NEEDS_OTHER_IDS),
        ),
        pytest.param(
            {"privileged": True, "seccomp": None, "network": "host"},
            id="privileged-host-network",
        ),
    ],
)
def test_every_setting_reaches_the_program_as_cold(etc_rootfs, settings):
    """Program settings (args, executable, env, cwd, streams, pass_fds, the
    signal mask) and container settings (identity, limits, capabilities,
    seccomp, network, hostname) give the same view warm and cold."""
    box = pycontain.Container(layers=etc_rootfs, **settings)
    with pycontain.Pool(box, size=1) as pool:
        assert pool.fill(TIMEOUT)
        warm = run_settings_script(pool.spawn)
        assert pool.warm_spawns == 1 and pool.cold_spawns == 0
    cold = run_settings_script(box.spawn)
    assert warm == cold
    code, out, err = warm
    assert (code, err) == (0, "to stderr\n")
    lines = out.splitlines()
    assert lines[:5] == [
        "args: first second ",
        "env: this",
        "cwd: /etc",
        "stdin: a line",
        "passed fd: through pass_fds",
    ]
    # 0, 1, 2, the passed pipe, and the directory ls reads.
    fds = next(line for line in lines if line.startswith("fds: ")).split()[1:]
    assert fds[:3] == ["0", "1", "2"] and "P" in fds and len(fds) == 5
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert int(status["SigBlk"], 16) & (1 << (signal.SIGUSR2 - 1))
    assert f"nice: {os.getpriority(os.PRIO_PROCESS, 0)}" in lines
    if settings.get("uid"):
        assert status["Uid"].split()[0] == "1000" and status["Gid"].split()[0] == "1000"
        assert status["Groups"].split() == ["1000", "1001"]
        assert "hostname: warm" in lines and "nofile: 256" in lines and "umask: 0027" in lines
        assert int(status["CapEff"], 16) == 1 << 13  # CAP_NET_RAW only
    if settings.get("privileged"):
        assert status["Seccomp"].strip() == "0" and status["NoNewPrivs"].strip() == "0"
        net = next(line for line in lines if line.startswith("net: ")).split()[1:]
        assert len(net) > 1  # the host's interfaces
    else:
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
        assert "net: lo " in lines


def test_the_program_runs_at_the_callers_priority(rootfs):
    # The refill thread runs 10 nicer; each entry's child sets it back
    # (csrc/priority.c): without that the program would print 10. In
    # rootless mode, where setting it back would need CAP_SYS_NICE on the
    # host, the refill thread keeps the maker's priority instead.
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    with full_pool(rootfs, size=1) as pool:
        refill = pool._thread
        assert refill is not None and refill.native_id is not None
        niced = ours if pool.container._plan.userns else min(19, ours + 10)
        assert os.getpriority(os.PRIO_PROCESS, refill.native_id) == niced
        done = warm_run(pool, ["/bin/sh", "-c", "cut -d' ' -f19 /proc/self/stat /proc/1/stat"])
    assert done.stdout.split() == [str(ours).encode()] * 2


# -- errors: the same as cold ---------------------------------------------------------


@pytest.fixture
def error_layer(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "notexec").write_text("#!/bin/sh\n")
    (tmp_path / "afile").write_text("")
    return str(tmp_path)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (["/bin/missing"], {}),
        (["missing"], {}),  # searched in PATH: named as given
        (["/bin/notexec"], {}),
        (["notexec"], {}),
        (["/bin/true"], {"cwd": "/missing"}),
        (["/bin/true"], {"cwd": "/afile"}),
        (["/bin/true"], {"executable": "/bin"}),
    ],
)
def test_exec_errors_are_those_of_a_cold_spawn(rootfs, error_layer, args, kwargs):
    box = pycontain.Container(layers=[error_layer, rootfs])
    with pycontain.Pool(box, size=1) as pool:
        assert pool.fill(TIMEOUT)
        with pytest.raises(pycontain.SpawnError) as warm:
            pool.spawn(args, env=BB_ENV, **kwargs)
        assert pool.warm_spawns == 0 and pool.cold_spawns == 0  # an entry took it, and failed
        assert pool.fill(TIMEOUT)  # and is replaced
    with pytest.raises(pycontain.SpawnError) as cold:
        box.spawn(args, env=BB_ENV, **kwargs)
    assert type(warm.value) is type(cold.value)
    assert str(warm.value) == str(cold.value)
    assert (warm.value.step, warm.value.errno, warm.value.filename) == (
        cold.value.step,
        cold.value.errno,
        cold.value.filename,
    )


def test_a_passed_fd_at_the_entrys_request_socket_number(rootfs, no_leaks):
    # The entry's init holds its request socket at a number this process
    # freed once the entry was made: the next fds opened here reuse it. A
    # program's fd placed there must not replace the socket (the failed exec
    # would pass for a success, and its error record land in the pipe).
    with full_pool(rootfs, size=1) as pool:
        pipes = [os.pipe() for _ in range(8)]
        try:
            passed = tuple(fd for pipe in pipes for fd in pipe)
            with pytest.raises(pycontain.SpawnFileNotFoundError):
                pool.spawn(["/bin/missing"], env=BB_ENV, pass_fds=passed)
            assert pool.cold_spawns == 0  # an entry took it
            for read_end, _ in pipes:
                os.set_blocking(read_end, False)
                with pytest.raises(BlockingIOError):
                    os.read(read_end, 1)
        finally:
            for pipe in pipes:
                for fd in pipe:
                    os.close(fd)


def test_bad_arguments_raise_before_an_entry_is_used(rootfs):
    with full_pool(rootfs, size=1) as pool:
        with pytest.raises(ValueError, match="args must not be empty"):
            pool.spawn([])
        with pytest.raises(ValueError, match="NUL"):
            pool.spawn(["/bin/true"], env={"A": "a\0b"})
        with pytest.raises(OSError):
            pool.spawn(["/bin/true"], pass_fds=[9999])
        assert pool.ready == 1


# -- the pool's life ------------------------------------------------------------------


def test_an_entry_that_died_while_waiting_is_replaced(rootfs):
    with full_pool(rootfs, size=2) as pool:
        dead, alive = pool._ready[0], pool._ready[1]
        signal.pidfd_send_signal(dead.pidfd, signal.SIGKILL)
        assert wait_until(lambda: proc_state(dead.pid) == "Z")
        done = pool.run(["/bin/echo", "ok"], env=BB_ENV, capture_output=True, timeout=TIMEOUT)
        assert done.stdout == b"ok\n" and pool.warm_spawns == 1
        # The dead one was skipped (and reaped), the live one served.
        assert wait_until(lambda: is_gone(dead.pid))
        assert alive.pidfd == -1  # handed to the Process
        assert pool.fill(TIMEOUT)


def test_a_spawn_with_no_entry_ready_is_cold(rootfs):
    with full_pool(rootfs, size=1) as pool:
        pool.size = 0  # no refills: the next spawn finds the pool empty
        with pool.spawn(["/bin/sleep", "100"], env=BB_ENV) as first:
            assert pool.warm_spawns == 1 and pool.ready == 0
            # It does not wait for a refill: it takes the cold path.
            done = pool.run(["/bin/true"], env=BB_ENV, timeout=TIMEOUT)
            assert done.returncode == 0 and pool.cold_spawns == 1
            first.kill()


def test_close_with_a_process_in_use(rootfs, no_leaks):
    pool = full_pool(rootfs, size=3)
    process = pool.spawn(["/bin/cat"], env=BB_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert wait_until(lambda: pool.ready == 3)
    waiting = waiting_pids(pool)
    pool.close()
    # Every waiting entry is gone (killed and reaped by close).
    assert all(is_gone(pid) for pid in waiting)
    assert pool.ready == 0
    # The Process it started is the caller's: it runs on.
    out, _ = process.communicate(b"still here\n", timeout=TIMEOUT)
    assert out == b"still here\n" and process.returncode == 0
    process.close()
    pool.close()  # twice is fine
    with pytest.raises(ValueError, match="closed Pool"):
        pool.spawn(["/bin/true"])


def test_no_leaks_over_hundreds_of_spawns(rootfs, no_leaks):
    with pycontain.Pool(layers=[rootfs], size=4) as pool:
        for i in range(300):
            done = pool.run(["/bin/sh", "-c", f"exit {i % 7}"], env=BB_ENV, timeout=TIMEOUT)
            assert done.returncode == i % 7
            if i % 50 == 0:
                pool.fill(TIMEOUT)  # some warm, some cold
        assert pool.warm_spawns > 10 and pool.warm_spawns + pool.cold_spawns == 300


def test_max_age_replaces_old_entries(rootfs):
    with full_pool(rootfs, size=2, max_age=0.5) as pool:
        old = waiting_pids(pool)
        assert wait_until(lambda: not set(waiting_pids(pool)) & set(old) and pool.ready == 2, 10)
        assert all(wait_until(lambda pid=pid: is_gone(pid)) for pid in old)
        assert pool.max_age == 0.5


def test_refresh_replaces_every_entry(rootfs):
    with full_pool(rootfs, size=3) as pool:
        old = waiting_pids(pool)
        pool.refresh()
        assert pool.fill(TIMEOUT)
        assert not set(waiting_pids(pool)) & set(old)
        assert all(wait_until(lambda pid=pid: is_gone(pid)) for pid in old)


# -- fork and the owner's death ----------------------------------------------------------


def test_fork_with_a_pool_open(rootfs):
    with full_pool(rootfs, size=2) as pool:
        parents = waiting_pids(pool)
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports by exit code
            code = 1
            try:
                # The parent's entries are not ours: neither used nor killed.
                assert pool.ready == 0
                done = pool.run(["/bin/echo", "child"], env=BB_ENV, capture_output=True)
                assert done.stdout == b"child\n"
                pool.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert all(proc_state(pid) not in (None, "Z") for pid in parents)
        assert waiting_pids(pool) == parents
        warm_run(pool, ["/bin/true"])


OWNER = """
import os, sys, time, pycontain
pool = pycontain.Pool(layers=[sys.argv[1]], size=3, die_with_parent=sys.argv[2] == "1")
assert pool.fill(30)
# Two taken and refilled: entries made while the owner ran spawns, too.
for _ in range(2):
    pool.run(["/bin/true"], env={"PATH": "/bin"})
assert pool.fill(30)
pids = [entry.pid for entry in pool._ready]
def waiter(pid):  # the init forks it as it starts, maybe after fill() returned
    while True:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
waiters = [waiter(pid) for pid in pids]
print(" ".join(map(str, pids + waiters)), flush=True)
# Killed while entries wait and others are being made: refresh() replaces
# them all, again and again.
while True:
    pool.refresh()
    time.sleep(0.02)
"""

# A subreaper runs the owner, so that every process the owner leaves behind
# (however it was made, even an entry the refill thread was making when the
# owner died) becomes its child: it lists those that still run 1 s after it
# killed the owner, then reaps them all.
REAPER = """
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
owner = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]],
                         stdout=subprocess.PIPE, text=True)
pids = owner.stdout.readline().split()
time.sleep(0.5)
owner.kill()
owner.wait()
time.sleep(1.0)
def state(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
me = os.getpid()
children = [int(c) for t in os.listdir(f"/proc/{me}/task")
            for c in open(f"/proc/{me}/task/{t}/children").read().split()]
running = [pid for pid in children if state(pid) not in (None, "Z")]
waiting = [pid for pid in map(int, pids) if state(pid) not in (None, "Z")]
for pid in running:
    os.kill(pid, signal.SIGKILL)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print(json.dumps([len(pids), len(children), running, waiting]), flush=True)
"""


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_killed_owner_leaves_no_entry(rootfs, die_with_parent):
    done = subprocess.run(
        [sys.executable, "-c", REAPER, OWNER, rootfs, "1" if die_with_parent else "0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    listed, orphans, running, waiting = json.loads(done.stdout)
    # Three entries (init and waiting process each), listed, and the orphans:
    # the entries that waited or were being made when the owner died.
    assert listed == 6 and orphans >= 1
    # die_with_parent: they watch the owner's pidfd; without it, the end of
    # the request socket (the owner's copy went with it) ends them as well.
    assert running == [] and waiting == [], done.stdout


# -- what a pool refuses, and the other faces ---------------------------------------------


def test_refused_settings_name_the_setting(rootfs, tmp_path):
    for settings, name in [
        ({"writedir": str(tmp_path)}, "writedir="),
        ({"pre_pivot": lambda: None}, "pre_pivot="),
        ({"init": False, "die_with_parent": False}, "init=False"),
    ]:
        with pytest.raises(ValueError, match=name):
            pycontain.Pool(layers=[rootfs], **settings)
    with pytest.raises(ValueError, match="size"):
        pycontain.Pool(layers=[rootfs], size=0)
    with pytest.raises(ValueError, match="max_age"):
        pycontain.Pool(layers=[rootfs], max_age=-1)
    with pytest.raises(TypeError, match="not both"):
        pycontain.Pool(pycontain.Container(layers=[rootfs]), hostname="x")
    with pytest.raises(TypeError, match="Container or layers"):
        pycontain.Pool()


def test_pre_exec_and_call_take_the_cold_path(rootfs):
    with full_pool(rootfs, size=1) as pool:
        done = pool.run(["/bin/true"], env=BB_ENV, pre_exec=lambda: None, timeout=TIMEOUT)
        assert done.returncode == 0 and pool.cold_spawns == 1 and pool.warm_spawns == 0
        assert pool.call(os.getpid) == 1  # run in a container of its own (PID 1: no init)
        assert pool.cold_spawns == 2 and pool.ready == 1


def test_asyncio_twin(rootfs):
    async def main(pool):
        process = await pool.create_subprocess_exec(
            "/bin/sh",
            "-c",
            "read x; echo got $x",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=BB_ENV,
        )
        out, _ = await process.communicate(b"it\n")
        return process.returncode, out

    with full_pool(rootfs, size=1) as pool:
        assert asyncio.run(main(pool)) == (0, b"got it\n")
        assert pool.warm_spawns == 1


def test_keep_upper_works_warm(rootfs):
    with full_pool(rootfs, size=1, keep_upper=True) as pool:
        with pool.spawn(["/bin/sh", "-c", "echo x > /new"], env=BB_ENV) as process:
            assert process.wait(TIMEOUT) == 0
            assert [change.path for change in process.changes()] == ["/new"]
        assert pool.warm_spawns == 1


@pytest.mark.needs_root(NEEDS_CGROUP)
def test_limits_work_warm(rootfs):
    with full_pool(rootfs, size=1, limits={}) as pool:
        with pool.spawn(["/bin/sh", "-c", "echo x > /new"], env=BB_ENV) as process:
            assert process.wait(TIMEOUT) == 0
        assert pool.warm_spawns == 1
        assert process.memory_peak is not None and process.memory_peak > 0


def test_timeout_bounds_a_warm_spawn(rootfs):
    with full_pool(rootfs, size=1) as pool:
        done = pool.run(["/bin/true"], env=BB_ENV, timeout=TIMEOUT)
        assert done.returncode == 0 and pool.warm_spawns == 1


def test_repr_and_request_limits(rootfs):
    with full_pool(rootfs, size=1) as pool:
        assert "size=1" in repr(pool) and "ready=1" in repr(pool)
        # An environment too large for one request takes the cold path.
        big = {"PATH": "/bin", **{f"BIG{i}": "x" * 60000 for i in range(3)}}
        assert sum(map(len, big.values())) > _pool._MAX_SIZE
        assert pool.run(["/bin/true"], env=big, timeout=TIMEOUT).returncode == 0
        assert pool.cold_spawns == 1
    assert "closed" in repr(pool)


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_cwd_is_entered_as_the_containers_user(rootfs, tmp_path):
    # A documented difference: a cold spawn enters cwd as root, before
    # setuid; an entry's program enters it as the container's user.
    (tmp_path / "secret").mkdir(mode=0o700)
    box = pycontain.Container(layers=[str(tmp_path), rootfs], uid=1000)
    assert box.run(["/bin/true"], cwd="/secret", env=BB_ENV, timeout=TIMEOUT).returncode == 0
    with pycontain.Pool(box, size=1) as pool:
        assert pool.fill(TIMEOUT)
        with pytest.raises(PermissionError) as warm:
            pool.run(["/bin/true"], cwd="/secret", env=BB_ENV, timeout=TIMEOUT)
    assert (warm.value.step, warm.value.filename) == ("chdir", "/secret")  # type: ignore[attr-defined]


def test_a_dropped_pool_is_closed(rootfs, no_leaks):
    # Its refill thread holds it weakly while it waits: a pool dropped
    # without close() is collected, and closed (entries killed and reaped).
    pool = full_pool(rootfs, size=2)
    thread, waiting = pool._thread, waiting_pids(pool)
    assert thread is not None
    del pool
    gc.collect()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert all(is_gone(pid) for pid in waiting)


def _pool_script(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fds_above_the_inherited_nofile_limit_go_cold(rootfs):
    # Without rlimits= an entry has this process's RLIMIT_NOFILE: an fd the
    # program must have above it cannot be placed there, so the spawn goes
    # cold (where the parent, before its exec, is not bound by it).
    out = _pool_script(
        "import os, resource, pycontain\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(7)[1]))\n"
        f"with pycontain.Pool(layers=[{rootfs!r}], size=1) as pool:\n"
        "    assert pool.fill(30)\n"
        "    os.dup2(1, 60)\n"
        "    done = pool.run(['/bin/true'], pass_fds=(60,), env={})\n"
        "    print(done.returncode, pool.warm_spawns, pool.cold_spawns)\n"
    )
    assert out.split() == ["0", "0", "1"]


@pytest.mark.needs_root("dropping CAP_SYS_NICE from the bounding set (setpriv) needs root")
def test_without_cap_sys_nice_the_refill_keeps_the_makers_priority(rootfs):
    # The entries could not set a lowered niceness back: the refill thread is
    # not lowered, and the pool still serves warm spawns.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("util-linux's setpriv is missing")
    script = (
        "import os, pycontain\n"
        f"with pycontain.Pool(layers=[{rootfs!r}], size=1) as pool:\n"
        "    assert pool.fill(30), pool.refill_error\n"
        "    done = pool.run(['/bin/true'], env={})\n"
        "    refill = os.getpriority(os.PRIO_PROCESS, pool._thread.native_id)\n"
        "    print(done.returncode, pool.warm_spawns, refill == os.getpriority(0, 0))\n"
    )
    done = subprocess.run(
        [
            setpriv,
            "--bounding-set",
            "-sys_nice",
            "--inh-caps",
            "-sys_nice",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1", "True"]


def test_pools_dropped_while_refilling_are_closed(rootfs):
    # The refill thread may hold the last reference as it starts to wait:
    # the pool's close() then runs in that thread, under the pool's lock.
    threads, inits = [], []
    for _ in range(20):
        pool = pycontain.Pool(layers=[rootfs], size=4)
        assert pool.run(["/bin/true"], env=BB_ENV, timeout=TIMEOUT).returncode == 0
        threads.append(pool._thread)
        inits += waiting_pids(pool)
        del pool
    gc.collect()
    for thread in threads:
        if thread is not None:
            thread.join(TIMEOUT)
            assert not thread.is_alive()
    assert wait_until(lambda: all(is_gone(pid) for pid in inits))
    assert not [t for t in threading.enumerate() if t.name == "pycontain-pool-refill"]


def test_spawns_from_several_threads(rootfs, no_leaks):
    import threading

    codes: list[int] = []
    with pycontain.Pool(layers=[rootfs], size=3) as pool:

        def worker(offset: int) -> None:
            for i in range(40):
                done = pool.run(["/bin/sh", "-c", f"exit {offset + i % 5}"], env=BB_ENV)
                codes.append(done.returncode - offset - i % 5)

        assert pool.fill(TIMEOUT)  # some warm, the rest as the refill keeps up
        threads = [threading.Thread(target=worker, args=(offset,)) for offset in (0, 10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 4)
        assert pool.warm_spawns + pool.cold_spawns == 80 and pool.warm_spawns > 0
    assert codes == [0] * 80


# -- wait() ends on the init's status message ------------------------------------------


def processes_running(argv: list[bytes]) -> list[int]:
    """The pids of this machine's processes whose argv is ``argv``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:-1] == argv:
                        found.append(int(name))
            except OSError:
                pass  # gone meanwhile
    return found


def test_a_warm_wait_ends_with_the_container_emptied_and_its_rusage(rootfs):
    # A background process the program leaves behind, and CPU time spent.
    script = "sleep 97531 & i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; exit 3"
    with full_pool(rootfs, size=1) as pool:
        process = pool.spawn(["/bin/sh", "-c", script], env=BB_ENV)
        assert process.wait(TIMEOUT) == 3 and pool.warm_spawns == 1
        # wait() may return before the init's own exit, never before the
        # init has killed and reaped every other process of the container.
        assert processes_running([b"sleep", b"97531"]) == []
        assert process.rusage is not None
        assert process.rusage.ru_utime + process.rusage.ru_stime > 0
        process.close()


@pytest.mark.parametrize(
    ("script", "code"), [("exit 0", 0), ("exit 42", 42), ("kill -TERM $$", -signal.SIGTERM)]
)
def test_a_warm_returncode_is_a_cold_ones(rootfs, script, code):
    with full_pool(rootfs, size=1) as pool:
        assert warm_run(pool, ["/bin/sh", "-c", script]).returncode == code
        assert pool.container.run(["/bin/sh", "-c", script], env=BB_ENV).returncode == code


def test_a_killed_warm_process_is_reaped_as_a_cold_one(rootfs, no_leaks):
    # Its init dies without a status message: wait() reaps it instead.
    with full_pool(rootfs, size=1) as pool:
        process = pool.spawn(["/bin/sleep", "100"], env=BB_ENV)
        assert pool.warm_spawns == 1
        process.kill()
        assert process.wait(TIMEOUT) == -signal.SIGKILL
        assert is_gone(process.pid)
        process.close()


def test_exiting_inits_are_reaped_without_close_and_at_close(rootfs, no_leaks):
    with full_pool(rootfs, size=4) as pool:
        inits = []
        for _ in range(8):
            pool.fill(TIMEOUT)
            process = pool.spawn(["/bin/true"], env=BB_ENV)
            assert process.wait(TIMEOUT) == 0
            inits.append(process.pid)
            if len(inits) % 2:
                process.close()
            del process  # the others only dropped
        assert pool.warm_spawns == 8
        # The pool's refill thread reaps what was still exiting at wait().
        assert wait_until(lambda: all(is_gone(pid) for pid in inits), TIMEOUT)
        # And close() reaps what is left of them at once: a child of our own,
        # exiting after the pool took it over.
        child = subprocess.Popen(["sleep", "0.3"])
        pool._reap_later(os.pidfd_open(child.pid))
    assert is_gone(child.pid)
    child.returncode = 0  # reaped by the pool, not by Popen
    # After close(), a pidfd handed over is reaped where it is handed.
    child = subprocess.Popen(["sleep", "0.1"])
    pool._reap_later(os.pidfd_open(child.pid))
    assert is_gone(child.pid)
    child.returncode = 0


def test_asyncio_wait_ends_on_the_status_or_on_a_killed_init(rootfs, no_leaks):
    async def main(pool):
        ended = await pool.create_subprocess_exec(
            "/bin/sh", "-c", "sleep 97532 & exit 5", env=BB_ENV
        )
        code = await ended.wait()
        # Waited for on the status pipe: the container emptied, the rusage set.
        assert processes_running([b"sleep", b"97532"]) == []
        assert ended.rusage is not None
        pool.fill(TIMEOUT)
        killed = await pool.create_subprocess_exec("/bin/sleep", "100", env=BB_ENV)
        killed.kill()  # no status: the loop goes on to the init's pidfd
        return code, await asyncio.wait_for(killed.wait(), TIMEOUT)

    with full_pool(rootfs, size=1) as pool:
        assert asyncio.run(main(pool)) == (5, -signal.SIGKILL)
        assert pool.warm_spawns == 2


def test_a_fork_closes_its_copies_of_exiting_inits_pidfds(rootfs):
    with full_pool(rootfs, size=1) as pool:
        exiting = subprocess.Popen(["sleep", "0.2"])  # stands for an exiting init
        with pool._lock:  # the refill thread cannot take it meanwhile
            pidfd = os.pidfd_open(exiting.pid)
            pool._reap_later(pidfd)
            assert pool._unreaped == [pidfd]
            child = os.fork()
            if child == 0:  # pragma: no cover - the child reports by exit code
                code = 1
                try:
                    os.fstat(pidfd)  # the parent's child: not ours to reap
                except OSError:
                    code = 0 if pool._unreaped == [] else 2
                finally:
                    os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert is_gone(exiting.pid)  # the parent's pool reaped it
    exiting.returncode = 0


def test_a_warm_process_does_not_keep_its_pool_alive(rootfs, no_leaks):
    pool = full_pool(rootfs, size=1)
    thread = pool._thread
    process = pool.spawn(["/bin/sleep", "100"], env=BB_ENV)
    del pool  # dropped while its Process runs: collected and closed
    gc.collect()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    process.terminate()  # the init forwards it: the program ends, the init reports
    assert process.wait(TIMEOUT) == -signal.SIGTERM
    init = process.pid
    process.close()
    assert is_gone(init)  # reaped here, with no pool to hand it to
