#!/usr/bin/env python3
"""What pycontain.call costs, next to running a function in a plain child process.

Run as root, from a checkout with pycontain installed (``pip install -e .``)::

    python3 bench/call.py              # 200 rounds, and a 100 MiB result 5 times
    python3 bench/call.py --quick      # 40 rounds, 2 times

Candidates, each timed as the wall time from the call to having the result
of a function that returns ``None``, interleaved round by round in a freshly
shuffled order (warm-up rounds discarded), from one warm process:

1. ``os.fork()`` + ``os._exit(0)`` + ``waitpid``: a bare copy of this
   interpreter, the floor for "run Python in another process".
2. ``multiprocessing`` (fork context) ``Process(target=f).start(); join()``:
   a child process without isolation or a result.
3. ``box.spawn(["/bin/true"]).wait()``: a container running a program
   (the host's / as the layer), no Python inside.
4. the same with ``pre_exec=f``: the fork path that ``call`` also takes
   (a fork of this interpreter, a clone with fork semantics), then an exec.
5. ``box.call(f)``: the function in a container, its result pickled back.

Then the transfer of a large result: ``box.call(bytes, 100 MiB)`` (the pickle
of 100 MiB of zeros), median time and MiB/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import pycontain

Candidate = tuple[str, Callable[[], object]]


def nothing() -> None:
    return None


def fork_and_wait() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def candidates(box: pycontain.Container) -> list[Candidate]:
    context = multiprocessing.get_context("fork")

    def multiprocessing_process() -> None:
        process = context.Process(target=nothing)
        process.start()
        process.join()

    return [
        ("os.fork + waitpid", fork_and_wait),
        ("multiprocessing Process (fork)", multiprocessing_process),
        ("pycontain spawn /bin/true", lambda: box.spawn(["/bin/true"]).wait()),
        (
            "pycontain spawn /bin/true, pre_exec=f",
            lambda: box.spawn(["/bin/true"], pre_exec=nothing).wait(),
        ),
        ("pycontain.call(f)", lambda: box.call(nothing)),
    ]


def measure(items: list[Candidate], rounds: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name, _ in items}
    for index in range(rounds + warmup):
        order = items[:]
        random.shuffle(order)
        for name, run in order:
            started = time.perf_counter()
            run()
            elapsed = time.perf_counter() - started
            if index >= warmup:
                samples[name].append(elapsed)
    return samples


def p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/call.py: needs root", file=sys.stderr)
        return 1
    rounds = options.rounds or (40 if options.quick else 200)
    large_times = 2 if options.quick else 5
    box = pycontain.Container(layers=["/"])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(
        f"pycontain {pycontain.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {' '.join(load)}; {rounds} rounds"
    )
    samples = measure(candidates(box), rounds, warmup=max(5, rounds // 10))
    floor = statistics.median(samples["os.fork + waitpid"])
    print("\n| candidate | median | p90 | x fork |\n|---|---|---|---|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1000:.2f} ms | {p90(values) * 1000:.2f} ms "
            f"| {median / floor:.2f} |"
        )
    size = 100 << 20
    times = []
    for _ in range(large_times):
        started = time.perf_counter()
        result = box.call(bytes, size)
        times.append(time.perf_counter() - started)
        assert len(result) == size
        del result
    median = statistics.median(times)
    print(
        f"\n100 MiB result: median {median * 1000:.0f} ms over {large_times} calls, "
        f"{size / median / (1 << 20):.0f} MiB/s"
    )
    return 0


if __name__ == "__main__":
    warnings.simplefilter("error")  # a thread warning would mean a different measurement
    sys.exit(main())
