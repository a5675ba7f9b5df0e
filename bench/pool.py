"""The warm pool's phases of bench/spawn.py (pycontain.Pool, issue 16).

Imported by bench/spawn.py, which runs them after its own phases:

- ``pool_candidate``: the "pycontain, warm pool" latency row, interleaved
  with the others. Each timed spawn takes an entry from a full pool; the
  pool is refilled (``pool.fill()``) after the timing, so the refill's work
  never lands inside another candidate's timing (its cost shows in the
  throughput and idle-cost phases instead).
- ``measure_burst``: 100 spawn + wait from a pool of 100, against 100 cold
  ``Container.spawn``, alternating.
- ``measure_pool_throughput``: spawns per second from 1 and 2 threads
  looping spawn + wait through a pool of 4 (warm while entries last, cold
  when it is empty, refilled in the background), against the same loop on
  ``Container.spawn``, alternating.
- ``measure_floor``: os.posix_spawn + os.waitpid of the same program, next
  to subprocess.run: what running the program costs with next to no Python.
- ``measure_idle_cost``: what a waiting entry holds: its processes, their
  RSS and PSS, its namespaces, this process's fds, and the kernel memory
  the machine's counters moved by (informational: machine-wide).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ENV = {"PATH": "/bin"}
NAMESPACES = ("mnt", "pid", "net", "uts", "ipc", "cgroup")


def has_pool(pycontain: ModuleType) -> bool:
    return hasattr(pycontain, "Pool")


def make_pool(pycontain: ModuleType, root: Path, size: int) -> Any:
    pool = pycontain.Pool(layers=[str(root)], size=size)
    if not pool.fill(120):
        raise RuntimeError(f"the pool did not fill: {pool.refill_error}")
    return pool


def pool_spawn(pool: Any) -> Callable[[], int]:
    def spawn() -> int:
        code: int = pool.spawn(["/bin/true"], env=ENV).wait()
        return code

    return spawn


def cold_spawn(pycontain: ModuleType, root: Path) -> Callable[[], int]:
    box = pycontain.Container(layers=[str(root)])

    def spawn() -> int:
        code: int = box.spawn(["/bin/true"], env=ENV).wait()
        return code

    return spawn


def burst(spawn: Callable[[], int], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        if spawn() != 0:
            raise RuntimeError("a spawn in the burst exited non-zero")
    return time.perf_counter() - start


def measure_burst(pycontain: ModuleType, root: Path, count: int, rounds: int) -> None:
    print(f"== Burst: {count} spawn + wait from a full pool of {count}, and {count} cold")
    print(f"  ({rounds} rounds, alternating; medians)")
    pool = make_pool(pycontain, root, count)
    try:
        warm, cold, served = [], [], []
        cold_one = cold_spawn(pycontain, root)
        for _ in range(rounds):
            if not pool.fill(120):
                raise RuntimeError("the pool did not refill")
            before = pool.warm_spawns
            warm.append(burst(pool_spawn(pool), count))
            served.append(pool.warm_spawns - before)
            cold.append(burst(cold_one, count))
    finally:
        pool.close()
    warm_ms, cold_ms = statistics.median(warm) * 1e3, statistics.median(cold) * 1e3
    print(f"  {'pool (warm)':<20} {warm_ms:9.1f} ms  {warm_ms / count:6.3f} ms/spawn")
    print(f"  {'cold (Container)':<20} {cold_ms:9.1f} ms  {cold_ms / count:6.3f} ms/spawn")
    print(f"  cold / warm: {cold_ms / warm_ms:.2f}x  (entries that served: {served} of {count})")
    print()


def measure_pool_throughput(
    pycontain: ModuleType,
    root: Path,
    seconds: float,
    measure: Callable[[Callable[[], int], float], dict[int, Any]],
) -> None:
    print(f"== Throughput through a pool of 4 vs cold: {seconds:g} s per thread count, alternating")
    pool = make_pool(pycontain, root, 4)
    try:
        totals: dict[str, dict[int, list[float]]] = {
            name: {1: [0, 0.0], 2: [0, 0.0]} for name in ("pool", "cold")
        }
        spawns = {"pool": pool_spawn(pool), "cold": cold_spawn(pycontain, root)}
        warm_before, cold_before = pool.warm_spawns, pool.cold_spawns
        for name in ("pool", "cold", "cold", "pool"):
            if name == "pool":
                pool.fill(120)
            for threads, result in measure(spawns[name], seconds / 2).items():
                totals[name][threads][0] += result.spawns
                totals[name][threads][1] += result.elapsed
        warm, cold = pool.warm_spawns - warm_before, pool.cold_spawns - cold_before
    finally:
        pool.close()
    print(f"  {'candidate':<34} {'1 thread /s':>12} {'2 threads /s':>13}")
    for name, label in (
        ("pool", "pycontain, warm pool (size 4)"),
        ("cold", "pycontain, one Container"),
    ):
        rates = [totals[name][n][0] / totals[name][n][1] for n in (1, 2)]
        print(f"  {label:<34} {rates[0]:>12.1f} {rates[1]:>13.1f}")
    print(f"  through the pool: {warm} spawns served warm, {cold} cold (pool empty)")
    print()


def _smaps_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def _meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            values[name] = int(value.split()[0])
    return values


def measure_idle_cost(pycontain: ModuleType, root: Path, size: int) -> None:
    print(f"== Idle cost of a waiting entry (a pool of {size}, busybox root)")
    fds_before = len(os.listdir("/proc/self/fd"))
    memory_before = _meminfo()
    pool = make_pool(pycontain, root, size)
    try:
        time.sleep(0.5)  # every init has forked its waiting process
        memory_after = _meminfo()
        fds = len(os.listdir("/proc/self/fd")) - fds_before
        processes, rss, pss, namespaces = [], [], [], []
        ours = {name: os.readlink(f"/proc/self/ns/{name}") for name in NAMESPACES}
        for entry in list(pool._ready):
            pids = [entry.pid, *_children(entry.pid)]
            processes.append(len(pids))
            sizes = [_smaps_kib(pid) for pid in pids]
            rss.append(sum(size[0] for size in sizes))
            pss.append(sum(size[1] for size in sizes))
            namespaces.append(
                sum(
                    os.readlink(f"/proc/{entry.pid}/ns/{name}") != ours[name] for name in NAMESPACES
                )
            )
    finally:
        pool.close()
    print(
        f"  processes per entry           {statistics.median(processes):8.0f}"
        "  (its init, and the process that waits for the request)"
    )
    print(f"  RSS per entry                 {statistics.median(rss):8.0f} KiB  (both processes)")
    print(f"  PSS per entry                 {statistics.median(pss):8.0f} KiB")
    print(
        f"  namespaces of its own         {statistics.median(namespaces):8.0f}"
        f"  (of {', '.join(NAMESPACES)})"
    )
    print(
        f"  fds held here per entry       {fds / size:8.1f}  (pidfd, status pipe, request"
        " socket, and the namespace worker's hold on its mount namespace)"
    )
    for name in ("Slab", "KernelStack", "PageTables", "Shmem"):
        delta = (memory_after[name] - memory_before[name]) / size
        print(f"  /proc/meminfo {name:<14}  {delta:+8.0f} KiB per entry  (machine-wide, info only)")
    print()


def measure_floor(root: Path, rounds: int) -> None:
    """What running the program costs with (next to) no Python: os.posix_spawn +
    os.waitpid of the same busybox true, interleaved with subprocess.run. Any
    path that runs the program pays at least this; it bounds how far below
    subprocess.run a warm spawn can go."""
    true = str(root / "bin" / "true")
    run, bare = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([true])
        run.append(time.perf_counter() - start)
        start = time.perf_counter()
        os.waitpid(os.posix_spawn(true, [true], {}), 0)
        bare.append(time.perf_counter() - start)
    run_ms, bare_ms = statistics.median(run) * 1e3, statistics.median(bare) * 1e3
    print(f"== The program alone: busybox true ({rounds} rounds, interleaved, medians)")
    print(f"  {'subprocess.run':<34} {run_ms:7.3f} ms")
    print(f"  {'os.posix_spawn + os.waitpid':<34} {bare_ms:7.3f} ms  ({bare_ms / run_ms:.2f}x)")
    print()
