"""limits=: a cgroup per container, its limits, and the accounting on every Process.

Against the real kernel. Every cgroup these tests make is under pycontain's
own subtree (``<hierarchy>/pycontain/``) and is removed; nothing else on the
machine is touched. The cgroup v2 part runs in a subprocess with a private
mount namespace and a cgroup2 mount of its own (this machine's controllers
are bound to cgroup v1, so v2 has none to offer there).
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import BB_ENV, NEEDS_CGROUP, TIMEOUT, program_pid, wait_until

import pycontain
from pycontain import SpawnError, _cgroup

BURN = "while :; do :; done"


def layout_or_skip() -> _cgroup._Layout:
    layout = _cgroup.layout()
    if layout is None:
        pytest.skip("no cgroup hierarchy is mounted")
    if layout.problem is not None:
        pytest.skip(layout.problem)
    if os.geteuid() != 0:
        # Rootless: limits= works only in a cgroup this user may write.
        try:
            _cgroup.create(_cgroup.parse_limits({})).remove()
        except SpawnError as error:
            pytest.skip(f"needs root: {NEEDS_CGROUP} ({error})")
    return layout


def pycontain_dirs() -> list[str]:
    """pycontain's own directories, one per hierarchy it uses."""
    layout = layout_or_skip()
    return sorted({os.path.join(place, "pycontain") for place in layout.places.values()})


def our_cgroups() -> set[str]:
    """Container cgroups of this process that exist now, in any hierarchy."""
    prefix = _cgroup._owner_tag() + "-"
    found = set()
    for parent in pycontain_dirs():
        if os.path.isdir(parent):
            found.update(
                os.path.join(parent, name) for name in os.listdir(parent) if name.startswith(prefix)
            )
    return found


def cgroups_of(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup as {controllers: path}."""
    with open(f"/proc/{pid}/cgroup") as f:
        return {line.split(":", 2)[1]: line.split(":", 2)[2].strip() for line in f if line.strip()}


@pytest.fixture
def no_cgroup_left():
    layout_or_skip()
    before = our_cgroups()
    yield
    assert our_cgroups() == before


# -- checking limits= ------------------------------------------------------


@pytest.mark.parametrize(
    "limits, error",
    [
        ({"memroy": "1G"}, "unknown limit 'memroy'"),
        ({"memory": "12X"}, "cannot read '12X'"),
        ({"memory": -5}, "must not be negative"),
        ({"memory": 100}, "at least a page"),
        ({"swap": "1G"}, "needs limits\\['memory'\\]"),
        ({"pids": 0}, "at least 1"),
        ({"cpu": 0}, "number of CPUs >="),
        ({"cpu": float("nan")}, "number of CPUs >="),
        ({"cpu": float("inf")}, "number of CPUs >="),
        ({"cpu_weight": 0}, "from 1 to 10000"),
        ({"cpu_weight": 10001}, "from 1 to 10000"),
    ],
)
def test_bad_limits_raise_valueerror_before_anything_is_made(
    rootfs, limits, error, no_leaks, no_cgroup_left
):
    with pytest.raises(ValueError, match=error):
        pycontain.Process(["/bin/true"], layers=[rootfs], limits=limits)


@pytest.mark.parametrize(
    "limits",
    [["memory", 1], {"memory": [1]}, {"pids": "64"}, {"pids": True}, {"cpu": "1"}],
    ids=["list", "memory-list", "pids-str", "pids-bool", "cpu-str"],
)
def test_limits_of_the_wrong_type_raise_typeerror(rootfs, limits, no_leaks, no_cgroup_left):
    with pytest.raises(TypeError):
        pycontain.Process(["/bin/true"], layers=[rootfs], limits=limits)


def test_limit_values_are_read_as_documented():
    parsed = _cgroup.parse_limits(
        {"memory": "1.5G", "swap": "64KiB", "pids": 64, "cpu": 1, "cpu_weight": 200}
    )
    assert parsed == _cgroup.Limits(memory=3 << 29, swap=64 << 10, pids=64, cpu=1.0, cpu_weight=200)
    assert _cgroup.parse_limits({"memory": 4096, "cpu": None}) == _cgroup.Limits(memory=4096)
    assert _cgroup.parse_size("512m", "x") == 512 << 20
    assert _cgroup.parse_size("2 GB", "x") == 2 << 30
    assert _cgroup.parse_limits({}) == _cgroup.Limits()
    assert _cgroup.parse_limits(None) is None


def test_limits_is_a_container_field(rootfs, no_leaks, no_cgroup_left):
    box = pycontain.Container(layers=[rootfs], limits={"pids": 8, "memory": "32M"})
    assert box == pycontain.Container(layers=[rootfs], limits={"memory": "32M", "pids": 8})
    assert hash(box) == hash(box.replace())
    assert pickle.loads(pickle.dumps(box)) == box
    assert "limits={'pids': 8, 'memory': '32M'}" in repr(box)
    assert box.replace(limits=None).limits is None
    with pytest.raises(ValueError, match="unknown limit"):
        pycontain.Container(layers=[rootfs], limits={"pidz": 1})
    with pytest.raises(ValueError, match="at least 1"):
        box.replace(limits={"pids": 0})
    # Each program gets a cgroup of its own, with the container's limits.
    first, second = (box.spawn(["/bin/sleep", "10"], env=BB_ENV) for _ in range(2))
    with first, second:
        assert first._cgroup is not None and second._cgroup is not None
        assert first._cgroup.path != second._cgroup.path
        pids = first._cgroup.paths.get("pids", first._cgroup.path)
        assert _cgroup._read_int(f"{pids}/pids.max") == 8
    result = box.run(["/bin/true"], env=BB_ENV)
    assert isinstance(result, pycontain.CompletedProcess) and result.oom_killed is False


# -- the cgroup's life ----------------------------------------------------


def test_no_cgroup_without_limits(rootfs, no_cgroup_left):
    with pycontain.Process(["/bin/sleep", "10"], layers=[rootfs], env=BB_ENV) as p:
        assert p._cgroup is None
        assert cgroups_of(p.pid) == cgroups_of(os.getpid())
        p.kill()
        p.wait()
    assert p.rusage is not None
    assert p.memory_peak is None and p.cpu_time is None and p.oom_killed is None


@pytest.mark.parametrize("path", ["clone", "fork"])
def test_container_runs_in_its_cgroup_with_its_limits_then_it_is_removed(
    rootfs, legacy, path, no_leaks, no_cgroup_left
):
    # clone3 (CLONE_INTO_CGROUP where v2), clone(2) and the callback fork
    # path: in each the container's cgroup holds it from its first step.
    layout = layout_or_skip()
    hooks = {"pre_exec": lambda: None} if path == "fork" else {}
    p = pycontain.Process(
        ["/bin/sleep", "10"],
        layers=[rootfs],
        env=BB_ENV,
        limits={"memory": "100M", "pids": 20, "cpu": 0.5, "cpu_weight": 50},
        _force_legacy_clone=legacy,
        **hooks,
    )
    try:
        cgroup = p._cgroup
        assert cgroup is not None
        name = os.path.basename(cgroup.path)
        joined = cgroups_of(p.pid)
        if layout.version == 1:
            for controllers, place in joined.items():
                if set(controllers.split(",")) & {"memory", "pids", "cpu", "cpuacct"}:
                    assert place == f"/pycontain/{name}", (controllers, place)
            memory, pids, cpu = (cgroup.paths[c] for c in ("memory", "pids", "cpu"))
            assert _cgroup._read_int(f"{memory}/memory.limit_in_bytes") == 100 << 20
            assert _cgroup._read_int(f"{pids}/pids.max") == 20
            assert _cgroup._read_int(f"{cpu}/cpu.cfs_quota_us") == 50_000
            assert _cgroup._read_int(f"{cpu}/cpu.shares") == 512
            # pycontain's init and the program.
            assert _cgroup._read_int(f"{pids}/pids.current") == 2
        else:
            assert joined[""].endswith(f"/pycontain/{name}")
        members = sorted([p.pid, program_pid(p.pid)])  # the init and the program
        for directory in cgroup.directories():
            with open(f"{directory}/cgroup.procs") as f:
                assert sorted(int(pid) for pid in f.read().split()) == members
        p.kill()
        assert p.wait(TIMEOUT) == -signal.SIGKILL
        assert not any(os.path.exists(d) for d in cgroup.directories())
    finally:
        p.close()


def test_cgroup_removed_after_the_program_crashes(host_root, no_leaks, no_cgroup_left):
    # The program crashes (a real SIGSEGV, which reaches even a PID 1):
    # reaped, counted, removed.
    p = pycontain.Process(
        [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], layers=[host_root], limits={}
    )
    directories = p._cgroup.directories()  # type: ignore[union-attr]
    assert p.wait(TIMEOUT) == -signal.SIGSEGV
    assert p.oom_killed is False
    assert p.cpu_time is not None and p.cpu_time > 0
    assert not any(os.path.exists(d) for d in directories)


def test_a_forked_copy_leaves_the_container_and_its_cgroup_alone(rootfs, no_cgroup_left):
    # A child of os.fork() cannot reap the container; closing its copy of
    # the Process must neither kill the container nor remove its cgroup.
    with pycontain.Process(["/bin/sleep", "10"], layers=[rootfs], env=BB_ENV, limits={}) as p:
        child = os.fork()
        if child == 0:
            try:
                p.close()
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert p.poll() is None
        assert all(os.path.isdir(d) for d in p._cgroup.directories())  # type: ignore[union-attr]


def test_failed_spawn_leaves_no_cgroup(rootfs, no_leaks, no_cgroup_left):
    with pytest.raises(FileNotFoundError):
        pycontain.Process(["/bin/nosuch"], layers=[rootfs], env=BB_ENV, limits={"pids": 8})


@pytest.mark.parametrize("path", ["clone", "fork"])
def test_a_failed_join_is_a_join_cgroup_error(rootfs, legacy, path, no_leaks, no_cgroup_left):
    # The cgroup is removed between its creation and the clone, so that
    # clone3 refuses it and the child's write to cgroup.procs fails (ENODEV):
    # the spawn fails at step join-cgroup, naming the cgroup, and leaves
    # no process behind.
    from pycontain import _callbacks, _spawn

    box = pycontain.Container(layers=[rootfs], limits={})
    cgroup = _cgroup.create(box._plan.limits)  # type: ignore[arg-type]
    for directory in cgroup.directories():
        os.rmdir(directory)
    prepared = _spawn.prepare(box._plan, ["/bin/true"], executable=None, cwd=None, env=BB_ENV)
    hooks = _callbacks.spawn_arguments(None, (lambda: None) if path == "fork" else None)
    try:
        with pytest.raises(pycontain.SpawnError) as raised:
            _spawn.spawn(prepared, cgroup=cgroup, force_legacy_clone=legacy, hooks=hooks)
    finally:
        prepared.release()
        cgroup.remove()
    assert raised.value.step == "join-cgroup"
    assert raised.value.filename == cgroup.path
    assert raised.value.errno is not None and raised.value.errno != 0


def test_kill_ends_every_process_of_the_container(rootfs, no_leaks, no_cgroup_left):
    p = pycontain.Process(
        ["/bin/sh", "-c", "for i in 1 2 3 4; do sleep 100 & done; wait"],
        layers=[rootfs],
        env=BB_ENV,
        limits={},
    )
    procs = os.path.join(p._cgroup.path, "cgroup.procs")  # type: ignore[union-attr]

    def members() -> list[int]:
        with open(procs) as f:
            return [int(pid) for pid in f.read().split()]

    assert wait_until(lambda: len(members()) == 6)  # the init, the shell, 4 sleeps
    pids = members()
    p.kill()
    assert p.wait(TIMEOUT) == -signal.SIGKILL
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def test_run_timeout_kills_the_whole_container(rootfs, no_leaks, no_cgroup_left):
    with pytest.raises(pycontain.TimeoutExpired):
        pycontain.run(
            ["/bin/sh", "-c", "sleep 100 & sleep 100 & wait"],
            layers=[rootfs],
            env=BB_ENV,
            limits={"pids": 10},
            timeout=0.5,
        )


# -- limits at work -------------------------------------------------------


def test_memory_hog_is_oom_killed(host_root, no_leaks, no_cgroup_left):
    # 256 MiB of written bytes against a 64 MiB limit (and no swap).
    result = pycontain.run(
        [sys.executable, "-c", "data = b'x' * (256 << 20); print('survived')"],
        layers=[host_root],
        limits={"memory": "64M", "swap": 0},
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == -signal.SIGKILL
    assert b"survived" not in result.stdout
    assert result.oom_killed is True
    assert result.memory_peak is not None and result.memory_peak <= 64 << 20


def test_memory_within_its_limit_is_not_oom_killed(host_root, no_cgroup_left):
    result = pycontain.run(
        [sys.executable, "-c", "data = b'x' * (16 << 20)"],
        layers=[host_root],
        limits={"memory": "256M"},
        timeout=TIMEOUT,
    )
    assert result.returncode == 0
    assert result.oom_killed is False
    # The 16 MiB it wrote (and the interpreter) were counted.
    assert result.memory_peak is not None and result.memory_peak > 16 << 20


def test_fork_bomb_stops_at_pids(rootfs, no_leaks, no_cgroup_left):
    # A real fork bomb, bounded by pids=16, watched for a second (longer on a
    # busy machine, until the kernel has refused a fork), then killed.
    limit = 16
    p = pycontain.Process(
        ["/bin/sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 100"],
        layers=[rootfs],
        env=BB_ENV,
        limits={"pids": limit},
        stderr=subprocess.DEVNULL,
    )
    pids_dir = p._cgroup.paths.get("pids", p._cgroup.path)  # type: ignore[union-attr]
    peak, refused = 0, None
    try:
        started = time.monotonic()
        while time.monotonic() < started + 1.0 or (
            not refused and time.monotonic() < started + TIMEOUT
        ):
            peak = max(peak, _cgroup._read_int(f"{pids_dir}/pids.current") or 0)
            refused = _cgroup._keyed(f"{pids_dir}/pids.events", "max")
            time.sleep(0.01)
    finally:
        p.kill()
        p.wait(TIMEOUT)
    assert peak <= limit
    assert refused is not None and refused > 0, "the bomb never hit the limit"
    assert not os.path.exists(pids_dir)


def test_cpu_half_a_cpu_is_about_half(rootfs, no_cgroup_left, capsys):
    # A measurement, not a timing assertion: cpu=0.5 over ~1 s of wall time.
    # The quota can only hold a burner back, so its upper bound is firm; a
    # busy machine may give it less than half, so the lower bound is loose.
    p = pycontain.Process(["/bin/sh", "-c", BURN], layers=[rootfs], env=BB_ENV, limits={"cpu": 0.5})
    started = time.monotonic()
    time.sleep(1.0)
    p.kill()
    p.wait(TIMEOUT)
    wall = time.monotonic() - started
    assert p.cpu_time is not None
    share = p.cpu_time / wall
    with capsys.disabled():
        print(f"\n  cpu=0.5: {p.cpu_time:.3f} s of CPU in {wall:.3f} s = {share:.2f} CPUs")
    assert 0.01 < share < 0.75


def test_cpu_time_counts_every_process(rootfs, no_cgroup_left):
    # PID 1 starts two burners, then becomes `sleep`, which never waits for
    # them: its rusage misses them, the cgroup's CPU time does not. (With
    # pycontain's init, which reaps them, rusage counts them too:
    # tests/test_lifecycle.py.)
    p = pycontain.Process(
        ["/bin/sh", "-c", f"({BURN}) & ({BURN}) & exec sleep 1"],
        layers=[rootfs],
        env=BB_ENV,
        limits={},
        init=False,
    )
    p.wait(TIMEOUT)
    assert p.cpu_time is not None and p.rusage is not None
    assert p.cpu_time > 0.05
    assert p.rusage.ru_utime + p.rusage.ru_stime < 0.03


def test_no_realtime_budget_with_cpu_limits_on_v1(host_root, no_cgroup_left):
    layout = layout_or_skip()
    cpu = layout.places.get("cpu")
    if layout.version != 1 or cpu is None or not os.path.exists(f"{cpu}/cpu.rt_runtime_us"):
        pytest.skip("no cgroup v1 real-time group scheduling here")
    if not os.path.exists("/usr/bin/chrt"):
        pytest.skip("/usr/bin/chrt is missing (util-linux)")
    realtime = ["/usr/bin/chrt", "-f", "1", "/bin/true"]
    # Without a cpu limit the container's root may use SCHED_FIFO; with one, not.
    # (SCHED_FIFO needs CAP_SYS_NICE, which the default set leaves out.)
    nice = [*pycontain.DEFAULT_CAPABILITIES, "CAP_SYS_NICE"]
    assert (
        pycontain.run(
            realtime, layers=[host_root], limits={}, capabilities=nice, timeout=TIMEOUT
        ).returncode
        == 0
    )
    limited = pycontain.run(
        realtime,
        layers=[host_root],
        limits={"cpu": 1},
        capabilities=nice,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert limited.returncode != 0
    assert b"Operation not permitted" in limited.stderr


# -- accounting without limits -------------------------------------------


def test_rusage_on_every_process(rootfs, no_leaks):
    with pycontain.Process(
        ["/bin/sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"],
        layers=[rootfs],
        env=BB_ENV,
    ) as p:
        assert p.rusage is None
        assert p.wait(TIMEOUT) == 0
    assert isinstance(p.rusage, resource.struct_rusage)
    assert p.rusage.ru_utime > 0.01
    assert p.rusage.ru_maxrss > 0


def test_run_result_carries_the_accounting(rootfs):
    layout_or_skip()
    result = pycontain.run(["/bin/true"], layers=[rootfs], env=BB_ENV, limits={})
    assert isinstance(result, pycontain.CompletedProcess)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.rusage is not None and result.oom_killed is False
    assert result.cpu_time is not None and result.memory_peak is not None
    plain = pycontain.run(["/bin/true"], layers=[rootfs], env=BB_ENV)
    assert plain.rusage is not None and plain.memory_peak is None


def test_accounting_with_asyncio(rootfs, no_cgroup_left):
    import asyncio

    async def main() -> pycontain.AsyncProcess:
        p = await pycontain.create_subprocess_exec(
            "/bin/true", layers=[rootfs], env=BB_ENV, limits={"pids": 4}
        )
        await p.wait()
        return p

    p = asyncio.run(main())
    assert p.returncode == 0
    assert p.rusage is not None and p.oom_killed is False
    assert p.cpu_time is not None and p.memory_peak is not None


def test_wait_from_threads_removes_the_cgroup_once(rootfs, no_leaks, no_cgroup_left):
    p = pycontain.Process(["/bin/sleep", "0.2"], layers=[rootfs], env=BB_ENV, limits={})
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(p.wait(TIMEOUT))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [0] * 4 and p.cpu_time is not None


def test_many_spawns_with_limits_leave_nothing(rootfs, no_leaks, no_cgroup_left):
    box = pycontain.Container(layers=[rootfs], limits={"memory": "64M", "pids": 16, "cpu": 1})
    for _ in range(100):
        with box.spawn(["/bin/true"], env=BB_ENV) as p:
            assert p.wait(TIMEOUT) == 0
        assert p.cpu_time is not None


# -- when the owner dies ---------------------------------------------------

CRASHING_OWNER = """
import os, sys, pycontain
p = pycontain.Process(["/bin/sleep", "0.3"], layers=[sys.argv[1]], env={"PATH": "/bin"},
                      limits={"pids": 4})
print(",".join(p._cgroup.directories()), flush=True)
os.kill(os.getpid(), 9)
"""


def test_stale_cgroups_of_a_crashed_owner_are_removed_by_the_next_run(rootfs, no_cgroup_left):
    # The owner is SIGKILLed while its container runs: the container goes on
    # (nothing kills it) and its cgroup stays. Once it is empty, the next
    # process that creates a cgroup removes it.
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_OWNER, rootfs], capture_output=True, timeout=TIMEOUT
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    left = crashed.stdout.decode().strip().split(",")
    assert all(os.path.isdir(d) for d in left)
    assert wait_until(lambda: all(_cgroup._read_int(f"{d}/cgroup.procs") is None for d in left))
    assert all(os.path.isdir(d) for d in left)  # empty, but still there
    subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_OWNER.replace("os.kill(os.getpid(), 9)", "p.wait()"),
            rootfs,
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert not any(os.path.exists(d) for d in left)


def test_clean_stale_spares_live_owners_and_foreign_names(no_cgroup_left):
    parent = pycontain_dirs()[0]
    os.makedirs(parent, exist_ok=True)
    live = os.path.join(parent, f"{_cgroup._owner_tag()}-999999")
    dead = os.path.join(parent, "999999999-1-0")  # a pid above pid_max: never alive
    foreign = os.path.join(parent, "not-ours")
    for path in (live, dead, foreign):
        os.mkdir(path)
    try:
        assert _cgroup.clean_stale(parent) == [dead]
        assert os.path.isdir(live) and os.path.isdir(foreign)
    finally:
        for path in (live, dead, foreign):
            if os.path.exists(path):
                os.rmdir(path)


# -- cgroup v2, as far as this machine allows ------------------------------

V2_SCRIPT = r"""
import errno, os, signal, sys, time
import pycontain
from pycontain import _cgroup

rootfs = sys.argv[1]
layout = _cgroup.layout()
assert layout is not None and layout.version == 2, layout
results = {}

# Accounting-only cgroup (limits={}): CLONE_INTO_CGROUP, and the child's own
# join through cgroup.procs with the clone(2) fallback.
for legacy in (False, True):
    p = pycontain.Process(["/bin/sh", "-c", "sleep 100 & sleep 100 & wait"], layers=[rootfs],
                          env={"PATH": "/bin"}, limits={}, _force_legacy_clone=legacy)
    path = p._cgroup.path
    with open(f"/proc/{p.pid}/cgroup") as f:
        assert f"0::/pycontain/{os.path.basename(path)}" in f.read()
    deadline = time.monotonic() + 5
    # pycontain's init, the shell and its two sleeps.
    while len(open(f"{path}/cgroup.procs").read().split()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    members = open(f"{path}/cgroup.procs").read().split()
    assert len(members) == 4, members
    assert "populated 1" in open(f"{path}/cgroup.events").read()
    # cgroup.kill alone ends them all, PID 1 included.
    p._cgroup.kill()
    assert p.wait(10) == -signal.SIGKILL
    assert not os.path.exists(path)
    assert p.cpu_time is not None
    results["legacy" if legacy else "clone3"] = "ok"

# Each limit where its controller is offered here; else its clear refusal.
available = open("/sys/fs/cgroup/cgroup.subtree_control").read().split()
checks = {
    "pids": ({"pids": 4}, "pids.max", "4"),
    "memory": ({"memory": "64M"}, "memory.max", str(64 << 20)),
    "cpu": ({"cpu": 0.5}, "cpu.max", "50000 100000"),
}
for controller, (limits, name, expected) in checks.items():
    try:
        p = pycontain.Process(["/bin/sleep", "10"], layers=[rootfs], env={"PATH": "/bin"},
                              limits=limits)
    except pycontain.SpawnError as error:
        assert controller not in available, error
        assert error.step == "cgroup" and controller in str(error), error
        results[controller] = "refused: " + str(error)
        continue
    assert controller in available
    with p:
        assert open(f"{p._cgroup.path}/{name}").read().strip() == expected
        p.kill()
    assert p.wait(10) == -signal.SIGKILL
    if controller == "memory":
        assert p.memory_peak is not None and p.oom_killed is False
    results[controller] = "ok"
print(results)
"""


def test_cgroup_v2_in_a_private_mount_namespace(rootfs, no_cgroup_left):
    """cgroup.procs, CLONE_INTO_CGROUP, cgroup.kill, cgroup.events, cpu.stat on a cgroup2 mount.

    The mount is private to a subprocess (unshare --mount) and covers
    /sys/fs/cgroup there only; it is the machine's one cgroup2 hierarchy,
    in which the test works under pycontain/ alone.
    """
    with open("/proc/filesystems") as f:
        has_cgroup2 = "cgroup2" in f.read()
    if not has_cgroup2:
        pytest.skip("the kernel has no cgroup2")
    script = (
        f'mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 77; exec "{sys.executable}" -c "$0" "$1"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, V2_SCRIPT, rootfs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode == 77:
        pytest.skip(f"cannot mount cgroup2 here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "'clone3': 'ok'" in result.stdout and "'legacy': 'ok'" in result.stdout
    for controller in ("pids", "memory", "cpu"):
        assert f"'{controller}': " in result.stdout
    # Nothing of it is left in the machine's cgroup2 hierarchy: no cgroup
    # of a dead owner (the subprocess) under pycontain/.
    for mount in _cgroup._visible_cgroup_mounts():
        parent = os.path.join(mount.point, "pycontain")
        if mount.fstype == "cgroup2" and os.path.isdir(parent):
            for name in os.listdir(parent):
                match = _cgroup._STALE_NAME.fullmatch(name)
                assert match is None or _cgroup._start_time(int(match[1])) == match[2], name


# -- not root ----------------------------------------------------------------------------

NOBODY = 65534
# What a user other than root gets: a clear refusal, before anything is made.
AS_NOBODY = r"""
import sys
sys.path.insert(0, sys.argv[1])
import pycontain
from pycontain import _cgroup
layout = _cgroup.layout()
print("version", layout.version, "problem", layout.problem)
try:
    # A layer without mounts below it (in rootless mode "/" is refused earlier).
    pycontain.Process(["/bin/true"], layers=[sys.argv[1]], limits={})
except pycontain.SpawnError as error:
    print("refused", type(error).__name__, error.step, error)
"""


def run_as_nobody(prefix: list[str], mount_cgroup2: bool) -> str:
    """AS_NOBODY's output, run by uid 65534 with Debian's /usr/bin/python3."""
    python = "/usr/bin/python3"
    package_root = os.path.dirname(os.path.dirname(pycontain.__file__))
    if (
        not os.path.exists(python)
        or subprocess.run(
            [
                python,
                "-c",
                f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}",
            ]
        ).returncode
    ):
        pytest.skip(
            f"{python} is missing or not Python {sys.version_info[0]}.{sys.version_info[1]}"
        )
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python]
    mount = "mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 77; " if mount_cgroup2 else ""
    script = f'{mount}exec {" ".join(drop)} -c "$0" "$1"'
    result = subprocess.run(
        [*prefix, "sh", "-c", script, AS_NOBODY, package_root],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode == 77:
        pytest.skip(f"cannot mount cgroup2 here: {result.stderr.strip()}")
    if "ModuleNotFoundError" in result.stderr or "PermissionError" in result.stderr:
        pytest.skip(f"uid {NOBODY} cannot import pycontain from {package_root}: {result.stderr}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_non_root_on_cgroup_v1_is_refused_clearly(no_cgroup_left):
    if layout_or_skip().version != 1:
        pytest.skip("this machine's controllers are not on cgroup v1")
    output = run_as_nobody([], mount_cgroup2=False)
    assert "refused SpawnPermissionError cgroup" in output, output
    assert "limits= on cgroup v1 needs root" in output, output


def test_non_root_on_cgroup_v2_without_delegation_is_refused_clearly(no_cgroup_left):
    # In a private mount namespace with cgroup2 over /sys/fs/cgroup, uid 65534
    # is in no user@65534.service: there is no subtree delegated to it.
    output = run_as_nobody(["unshare", "--mount", "--propagation", "private"], mount_cgroup2=True)
    assert "version 2" in output and "user@65534.service" in output, output
    assert "refused SpawnPermissionError cgroup" in output, output
    assert "systemd-run --user --scope -p Delegate=yes" in output, output
