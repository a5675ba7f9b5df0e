"""Where a spawn's time goes: per-step clock stamps from the C core.

    python3 bench/trace.py [--no-worker] [--rounds N] [--limits JSON]

Builds a busybox rootfs, then spawns busybox ``true`` N times (each after a
``subprocess.run`` of the same binary, for comparison), with
``_core.spawn(..., trace=buf)``: the child stamps CLOCK_MONOTONIC at the end of
each of its steps into ``buf``, through the memory it shares with the parent.
Prints the median of each stretch, for the default (pycontain's init as
PID 1, which starts the program) and ``init=False`` (the program is PID 1),
interleaved spawn by spawn, and the CPU time of the container's processes.
``--no-worker`` turns the namespace
worker off (no network namespace pool, mounts torn down in the container's
exit). ``--limits '{"pids": 64}'`` gives each spawn a cgroup (limits=), made
before and removed after, as Process does. Needs root and /bin/busybox
(busybox-static).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycontain
from pycontain import _cgroup, _core, _spawn

# (label, stamp at the start, stamp at the end); "t0", "returned" and
# "reaped" are taken in Python, the rest by the C core. A start given as a
# tuple is the last of those stamps the run has (a step that did not run
# leaves none).
STRETCHES: list[tuple[str, str | tuple[str, ...], str]] = [
    ("cgroup: create (limits=)", "t0", "cgroup"),
    ("Python checks + C preparation", "cgroup", "prepare"),
    ("clone until the child runs", "prepare", "none"),
    ("join cgroup", "none", "join-cgroup"),
    ("reset signals", "join-cgroup", "reset-signals"),
    ("process group", "reset-signals", "process-group"),
    ("lo up (no pooled netns)", "process-group", "loopback"),
    ("make-private", ("process-group", "loopback"), "make-private"),
    ("open layers", "make-private", "open-layer"),
    ("scratch tmpfs + overlay", "open-layer", "mount-overlay"),
    ("/proc, read-only and masked parts", "mount-overlay", "mount-proc"),
    ("/sys, masked parts", "mount-proc", "mount-sys"),
    ("/dev", "mount-sys", "mount-dev"),
    ("binds, tmpfs", "mount-dev", "mount-tmpfs"),
    ("/dev read-only", "mount-tmpfs", "seal-dev"),
    ("pivot_root + detach old root", "seal-dev", "pivot-root"),
    ("chdir, stdio", "pivot-root", "pre_exec"),
    ("session keyring", "pre_exec", "session-keyring"),
    ("capabilities, ids", "session-keyring", "capabilities"),
    ("close fds", "capabilities", "close-fds"),
    ("no_new_privs + seccomp", "close-fds", "seccomp"),
    ("until execve", "seccomp", "exec"),
    ("exec until the parent resumes", "exec", "clone"),
    ("back to Python (init: + its start, program's exec)", "clone", "returned"),
    ("program runs, exits, is reaped", "returned", "reaped"),
    ("cgroup: read usage + remove", "reaped", "removed"),
]


def build_rootfs(base: Path) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        sys.exit("trace.py: /bin/busybox is missing (apt-get install busybox-static)")
    (base / "bin").mkdir(parents=True)
    shutil.copy2(busybox, base / "bin" / "busybox")
    (base / "bin" / "true").symlink_to("busybox")
    return base


def spawn_traced(
    root: Path, limits: _cgroup.Limits | None, init: bool, *, unconfined: bool = False
) -> dict[str, int]:
    names = _core.step_names()
    trace = array.array("Q", [0] * _core.STEP_COUNT)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    stamps = {"t0": time.monotonic_ns()}
    cgroup = None if limits is None else _cgroup.create(limits)
    stamps["cgroup"] = time.monotonic_ns()
    settings: dict[str, object] = {"privileged": True, "seccomp": None} if unconfined else {}
    container = pycontain.Container(layers=[root], init=init, die_with_parent=init, **settings)
    prepared = _spawn.prepare(
        container._plan, ["/bin/true"], executable=None, cwd=None, env={"PATH": "/bin"}
    )
    try:
        _, pidfd, mount_namespace, status_fd = _spawn.spawn(prepared, trace=trace, cgroup=cgroup)
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    finally:
        prepared.release()
    stamps["returned"] = time.monotonic_ns()
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    stamps["reaped"] = time.monotonic_ns()
    # CPU time of the container's processes (the child's setup, the init,
    # the program): reaped descendants' times add up here. Unlike the wall
    # times, it does not grow when other programs load the machine.
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    stamps["cpu_ns"] = round((now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime) * 1e9)
    if cgroup is not None:
        cgroup.usage()
        cgroup.remove()
    stamps["removed"] = time.monotonic_ns()
    os.close(pidfd)
    if status_fd >= 0:
        os.close(status_fd)
    if mount_namespace >= 0:
        _core.release(mount_namespace, True)  # as Process does: unmounts on the worker
    stamps.update({name: trace[index] for index, name in enumerate(names) if trace[index]})
    return stamps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-worker", action="store_true", help="turn the namespace worker (and pool) off"
    )
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--limits", type=json.loads, default=None, help="limits= as JSON")
    parser.add_argument(
        "--unconfined",
        action="store_true",
        help="privileged=True, seccomp=None: no capability dropping, no_new_privs or filter",
    )
    args = parser.parse_args()
    limits = _cgroup.parse_limits(args.limits)
    if os.geteuid() != 0:
        sys.exit("trace.py: must run as root")
    if args.no_worker:
        pycontain.set_netns_pool(0)
    else:
        pycontain.set_netns_pool(2)  # the default, started now rather than at the first spawn
        time.sleep(0.1)
    with tempfile.TemporaryDirectory(prefix="pycontain-trace-") as scratch:
        root = build_rootfs(Path(scratch))
        plain: list[float] = []
        runs: dict[bool, list[dict[str, int]]] = {True: [], False: []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            subprocess.run([root / "bin" / "true"], check=True)
            plain.append(time.perf_counter() - start)
            for init in (True, False):
                runs[init].append(spawn_traced(root, limits, init, unconfined=args.unconfined))
    plain = plain[20:]  # warm-up
    for init in (True, False):
        runs[init] = runs[init][20:]

    def median(init: bool, begins: str | tuple[str, ...], end: str) -> float | None:
        values = []
        for run in runs[init]:
            candidates = (begins,) if isinstance(begins, str) else begins
            present = [name for name in candidates if name in run]
            if present and end in run:
                values.append((run[end] - run[present[-1]]) / 1000)
        return statistics.median(values) if values else None

    def shown(value: float | None, width: int) -> str:
        return f"{value:{width}.1f}" if value is not None else " " * (width - 1) + "-"

    print(f"{'stretch (median us)':52s} {'init':>8s} {'init=False':>11s}")
    for label, begins, end in STRETCHES:
        with_init, without = median(True, begins, end), median(False, begins, end)
        if with_init is not None or without is not None:
            print(f"{label:52s} {shown(with_init, 8)} {shown(without, 11)}")
    print(
        f"{'total':52s} {shown(median(True, 't0', 'reaped'), 8)}"
        f" {shown(median(False, 't0', 'reaped'), 11)}"
        f"   (subprocess.run: {statistics.median(plain) * 1e6:.1f} us)"
    )
    cpu = {init: statistics.mean(run["cpu_ns"] / 1000 for run in runs[init]) for init in runs}
    label = "CPU time of the container's processes (mean)"
    print(f"{label:52s} {cpu[True]:8.1f} {cpu[False]:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
