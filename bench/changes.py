#!/usr/bin/env python3
"""How long changes(), commit() and apply_to() take on a large writable layer.

Run as root from a checkout with pycontain installed::

    python3 bench/changes.py            # 10,000 files in 100 directories
    python3 bench/changes.py --files 50000
    python3 bench/changes.py --dir /dev/shm   # on tmpfs: pycontain's own cost

commit() and apply_to() create a file per file: on a disk filesystem their
time is mostly that of the filesystem's file creation (see README).

A container over the host's "/" (read-only) writes the files into a
writedir; then each operation is timed a few times (median shown).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import pycontain


def timed(function, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dir", help="where the writedir and the copies go (default: the temp directory)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("changes.py: must run as root")
    with tempfile.TemporaryDirectory(prefix="pycontain-changes-", dir=args.dir) as scratch:
        state = os.path.join(scratch, "state")
        os.mkdir(state)
        box = pycontain.Container(layers=["/"], writedir=state)
        per_dir = 100
        script = (
            f"mkdir /many && cd /many && for d in $(seq {args.files // per_dir}); do "
            f"mkdir d$d; for f in $(seq {per_dir}); do echo $f > d$d/f$f; done; done"
        )
        with box.spawn(["/bin/sh", "-c", script]) as process:
            process.wait()
            count = len(process.changes())
            seconds = timed(process.changes, args.rounds)
            print(
                f"changes():  {count} entries in {seconds * 1000:.0f} ms (median of {args.rounds})"
            )

            def commit() -> None:
                target = os.path.join(scratch, "layer")
                shutil.rmtree(target, ignore_errors=True)
                process.commit(target)

            def apply() -> None:
                target = os.path.join(scratch, "host")
                shutil.rmtree(target, ignore_errors=True)
                os.mkdir(target)
                process.apply_to(target)

            print(f"commit():   {timed(commit, args.rounds) * 1000:.0f} ms")
            print(f"apply_to(): {timed(apply, args.rounds) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
