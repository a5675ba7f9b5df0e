"""Spawning from many threads while other threads churn memory and locks.

1,000 spawns of /bin/true (busybox rootfs) from worker threads: half with a
trivial pre_exec callback (the fork path: a forked copy of this busy,
multi-threaded process must not deadlock on a lock another thread held at
the fork), half without (the CLONE_VM | CLONE_VFORK path: the child shares
the memory that the other threads keep changing). Meanwhile 8 threads
allocate and free memory of random sizes (small ones from malloc's arenas,
large ones mmap'd), churn dicts and take and release threading.Locks.

The test bounds its own time: every spawn with a callback has timeout=30
(a spawn that hangs in the child is killed and reported), every wait has
timeout=30, and the workers are joined with an overall deadline, so a hang
fails the test instead of stalling the run. Run it alone with
``pytest tests/test_threads.py -k threaded_stress``.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import traceback
import warnings

from helpers import BB_ENV, child_pids, fd_count

import pycontain

SPAWNS = 1000
WORKERS = 4
CHURNERS = 8
SPAWN_TIMEOUT = 30
DEADLINE = 120


def _churn(stop: threading.Event, seed: int, counter: list[int]) -> None:
    rng = random.Random(seed)
    locks = [threading.Lock() for _ in range(4)]
    kept: list[bytearray] = []
    table: dict[int, object] = {}
    n = 0
    while not stop.is_set():
        n += 1
        # Mostly small allocations (malloc arenas), some large (mmap).
        size = rng.randint(1, 4096) if rng.random() < 0.9 else rng.randint(128 * 1024, 2 << 20)
        kept.append(bytearray(size))
        if len(kept) > 32:
            del kept[rng.randrange(len(kept))]
        key = rng.randrange(1000)
        table[key] = {"n": n, "s": str(n) * rng.randint(1, 20)}
        if len(table) > 500:
            table.pop(next(iter(table)))
        lock = locks[n % len(locks)]
        with lock:
            table.get(rng.randrange(1000))
        # Hold one lock across a GIL switch now and then, so that some fork
        # happens while another thread holds a threading.Lock.
        if n % 64 == 0:
            with locks[0]:
                time.sleep(0)
    counter[seed] = n


def _worker(rootfs: str, jobs: list[bool], results: list, errors: list) -> None:
    for with_callback in jobs:
        try:
            if with_callback:
                p = pycontain.Process(
                    ["/bin/true"],
                    layers=[rootfs],
                    env=BB_ENV,
                    pre_exec=lambda: None,
                    timeout=SPAWN_TIMEOUT,
                )
            else:
                p = pycontain.Process(["/bin/true"], layers=[rootfs], env=BB_ENV)
            with p:
                results.append((with_callback, p.wait(timeout=SPAWN_TIMEOUT)))
        except BaseException:
            errors.append(traceback.format_exc())


def _kill_leftovers(before: set[int]) -> None:
    for pid in child_pids() - before:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass


def test_threaded_stress_spawns_with_and_without_callbacks(rootfs):
    assert SPAWNS % (2 * WORKERS) == 0
    children_before, fds_before = child_pids(), fd_count()
    # Each worker alternates with and without a pre_exec callback: half and half.
    per_worker = SPAWNS // WORKERS
    jobs = [[(w + j) % 2 == 0 for j in range(per_worker)] for w in range(WORKERS)]
    results: list[tuple[bool, int]] = []
    errors: list[str] = []
    stop = threading.Event()
    churn_counts = [0] * CHURNERS
    churners = [
        threading.Thread(target=_churn, args=(stop, i, churn_counts), daemon=True)
        for i in range(CHURNERS)
    ]
    workers = [
        threading.Thread(target=_worker, args=(rootfs, jobs[i], results, errors), daemon=True)
        for i in range(WORKERS)
    ]
    # Switch threads often: more interleavings, and the workers still get the
    # GIL often enough to finish in time next to 8 busy threads.
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # Callbacks in a multi-threaded process warn: expected here.
            warnings.simplefilter("ignore", RuntimeWarning)
            for thread in churners + workers:
                thread.start()
            deadline = started + DEADLINE
            for thread in workers:
                thread.join(max(0.0, deadline - time.monotonic()))
            hung = [thread.name for thread in workers if thread.is_alive()]
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
        for thread in churners:
            thread.join(10)
    elapsed = time.monotonic() - started
    if hung:
        _kill_leftovers(children_before)
    assert not hung, f"workers still running after {DEADLINE} s: {hung}; {len(results)} done"
    assert errors == [], f"{len(errors)} spawns failed; the first:\n{errors[0]}"
    assert len(results) == SPAWNS
    assert all(code == 0 for _, code in results), [r for r in results if r[1] != 0][:5]
    assert sum(1 for with_callback, _ in results if with_callback) == SPAWNS // 2
    assert all(count > 0 for count in churn_counts), churn_counts  # they really ran
    assert not any(thread.is_alive() for thread in churners)
    # Nothing is left: no child (zombie or not), no fd.
    assert child_pids() <= children_before
    assert fd_count() == fds_before
    print(
        f"{SPAWNS} spawns in {elapsed:.1f} s with {CHURNERS} churning threads; "
        f"churn iterations: {sum(churn_counts)}"
    )
