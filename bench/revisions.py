#!/usr/bin/env python3
"""Is this checkout slower than another revision? Spawns interleaved, side by side.

Run as root, from a checkout whose extension is built (``./run.sh test``
does that)::

    python3 bench/revisions.py main                 # 300 rounds
    python3 bench/revisions.py main --rounds 1000 -- --limits '{}'

It exports REV (``git archive``) into a temporary directory, builds its
extension there with this interpreter, and imports it as a second package
(``pycontain_other``) next to this checkout's ``pycontain`` in one process.
Each round spawns busybox ``true`` and waits for it once with each, in a
shuffled order, so that the machine's drifting noise hits both alike; the
network namespace pool is off for both (one thread each would compete).
It prints the medians, quartiles and the ratio. Nothing is installed and the
temporary directory is removed.

``--limits JSON`` passes ``limits=`` to this checkout only (to time it
against a revision without it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent.parent


def build_other(revision: str, directory: Path) -> ModuleType:
    archive = subprocess.run(
        ["git", "-C", str(HERE), "archive", revision], check=True, capture_output=True
    ).stdout
    directory.mkdir()
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    # The same package under another name: its imports are all relative.
    (directory / "pycontain").rename(directory / "pycontain_other")
    sys.path.insert(0, str(directory))
    return importlib.import_module("pycontain_other")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision", help="a git revision to compare with, e.g. main")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--limits", type=json.loads, default=None, help="limits= for this checkout")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("revisions.py: pycontain needs root", file=sys.stderr)
        return 1
    sys.path.insert(0, str(HERE))
    import pycontain

    with tempfile.TemporaryDirectory(prefix="pycontain-revisions-") as temporary:
        other = build_other(args.revision, Path(temporary) / "src")
        root = Path(temporary) / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        (root / "bin" / "true").symlink_to("busybox")
        env = {"PATH": "/bin"}
        this_label = "this checkout" + (
            f", limits={args.limits!r}" if args.limits is not None else ""
        )
        candidates = {
            f"{args.revision}": (other, {}),
            this_label: (pycontain, {} if args.limits is None else {"limits": args.limits}),
        }
        for module, _ in candidates.values():
            module.set_netns_pool(0)
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        rng = random.Random(args.seed)
        for index in range(args.warmup + args.rounds):
            order = list(candidates)
            rng.shuffle(order)
            for name in order:
                module, extra = candidates[name]
                start = time.perf_counter()
                code = module.Process(["/bin/true"], layers=[str(root)], env=env, **extra).wait()
                elapsed = time.perf_counter() - start
                if code != 0:
                    print(f"{name}: exit status {code}", file=sys.stderr)
                    return 1
                if index >= args.warmup:
                    samples[name].append(elapsed)
    print(f"spawn + wait of busybox true, {args.rounds} interleaved rounds  {os.getloadavg()}")
    base = statistics.median(samples[args.revision])
    for name, values in samples.items():
        values.sort()
        median = statistics.median(values)
        low, high = values[len(values) // 4], values[3 * len(values) // 4]
        print(
            f"  {name:<40} median {median * 1e3:.3f} ms"
            f"  (quartiles {low * 1e3:.3f} .. {high * 1e3:.3f})  x{median / base:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
