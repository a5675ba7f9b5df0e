#!/usr/bin/env python3
"""Spawn benchmark: what pycontain's isolation costs, next to the alternatives.

Run as root, from a checkout with pycontain installed (``pip install -e .``)::

    python3 bench/spawn.py                 # 300 rounds, 3 s throughput, 10,000-spawn soak
    python3 bench/spawn.py --quick         # 60 rounds, 1 s throughput, 500-spawn soak
    python3 bench/spawn.py --rounds 500 --soak 2000 --throughput-seconds 5

It builds a throw-away root filesystem in a temporary directory (removed at
the end): ``bin/busybox`` copied from the host's static ``/bin/busybox``,
``bin/true`` and ``bin/sh`` as symlinks to it, and empty ``proc``, ``dev``,
``sys`` and ``tmp`` mount points (bubblewrap and ``unshare --mount-proc``
need them to exist; pycontain would create them in its writable layer).
It installs nothing: a missing tool is skipped with the name of the Debian
package that provides it.

Candidates, each timed as the wall time of spawn + wait of busybox ``true``:

1. ``subprocess.run([ROOT/bin/true])``: no isolation at all, the floor.
2. ``pycontain.Process(["/bin/true"], layers=[ROOT], env={"PATH": "/bin"}).wait()``:
   new mount, PID, net, UTS and IPC namespaces, overlayfs root over a tmpfs.
3. ``subprocess.run(["bwrap", ...])``: the closest bubblewrap equivalent, with
   the same five namespaces, /proc, /dev and a tmpfs /tmp. bubblewrap < 0.9
   has no overlay options, so the root is ``--ro-bind ROOT /``; with
   bubblewrap >= 0.9 (``--overlay-src`` in ``bwrap --help``) it is
   ``--overlay-src ROOT --tmp-overlay /``, like pycontain. The output says which.
4. ``subprocess.run(["unshare", "--mount", "--pid", "--net", "--uts", "--ipc",
   "--fork", "--mount-proc=ROOT/proc", "chroot", ROOT, "/bin/true"])``:
   util-linux namespaces plus a plain chroot (no overlay, no /dev).
5. ``pycontain, one Container``: ``box.spawn(["/bin/true"], ...)`` from one
   ``pycontain.Container(layers=[ROOT])`` made before the rounds, so the
   layers and settings are checked once, not per spawn. A separate phase
   times that Python-side preparation alone (no spawn), interleaved, to show
   what a Container saves per spawn.
6. ``pycontain, init=False``: the program itself as the container's PID 1,
   without pycontain's init (by default the init is PID 1 and starts the
   program): the difference is what the init costs per spawn.
7. ``pycontain, netns pool off``: the same isolation with
   ``netns_pool=False``, so that the network namespace is made during the
   spawn (by default pycontain takes a fresh one that its pool's thread made
   ahead of time; each is used once). Shown when pycontain has the pool.
8. ``pycontain, limits=``: the default isolation plus a cgroup of its own
   with ``limits={"memory": "256M", "pids": 64, "cpu": 1.0}`` (made before
   the clone, limits written, joined by the child, accounting read and the
   cgroup removed after the reap: on cgroup v1 one directory in each of the
   memory, pids, cpu and cpuacct hierarchies); and ``pycontain, limits={}``,
   a cgroup that only counts (memory and cpuacct on v1). Compare with the
   default row: without ``limits=`` no cgroup is made. Shown when
   pycontain has ``limits=`` and the machine has cgroups.
8. ``pycontain, unconfined``: ``privileged=True, seccomp=None``: no
   capability dropping, no ``no_new_privs``, no seccomp filter, so the
   difference to the default is what that confinement costs per spawn
   (docs/security.md). Shown when pycontain has these settings.
9. ``pycontain, userns=True``: rootless mode's kernel path taken by root: a
   user namespace in the clone, its maps written by the child, overlayfs
   with ``userxattr``, ``/dev``'s nodes bound from the host, and no network
   namespace pool (each container makes its own, as ``netns_pool=False``).
10. ``pycontain, rootless (uid 65534)``: the same, as a user without any
   privilege: a worker process dropped with setpriv to uid 65534, where
   ``userns=None`` picks rootless mode, driven one spawn at a time over a
   pipe so that its spawns interleave with the others'; each spawn is timed
   in the worker (the pipe's round trip is not counted).

9. ``pycontain, warm pool``: ``pool.spawn(["/bin/true"], ...)`` from a
   ``pycontain.Pool(layers=[ROOT], size=4)``: the container was made ahead
   of time and waits for the program (bench/pool.py; refilled, untimed,
   after each timing). Shown when pycontain has ``Pool``.
10. ``os.posix_spawn + waitpid (floor)``: the program alone, with next to no
   Python around it: what any way of running it pays, so the bound on how
   far below subprocess.run a warm spawn can go.

``--only warm,floor`` times only the candidates whose names contain one of
the parts (and subprocess.run), prints the latency table and stops.

Phases:

1. Latency: one warm Python process, candidates interleaved round by round in
   a freshly shuffled order each round (so drifting machine noise hits all of
   them alike); warm-up rounds are discarded. Median, p90, and ratios against
   subprocess.run and bubblewrap.
2. Throughput: pycontain and subprocess.run spawns per second from one thread
   and from two threads (each looping spawn + wait), the two alternating in
   slices so that noise hits both alike; and the ratio two/one.
   Then the warm pool's own phases (bench/pool.py): a burst of 100 spawns
   from a full pool of 100 against 100 cold ones, throughput through a
   pool of 4 against cold, and the idle cost of a waiting entry.
3. Soak: N pycontain spawns (and N more through a warm pool), then a check
   (after letting things settle for up to ~10 s) that this process's fds, RSS
   and children, the host's mount table, the temp directory and the kernel's
   count of network namespaces are back where they were. During the soak
   ``tempfile.gettempdir()`` is a fresh private directory, so the judged temp
   count is not disturbed by other programs (the host's /tmp is shown, for
   information only); the machine-wide counts are judged by their floor while
   polling (see Metric).

Exit status: 0 when every soak check passes, 1 when one fails or the
benchmark cannot run (not root, no busybox, no pycontain).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import inspect
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pool as pool_phases  # bench/pool.py: the warm pool's phases

BUSYBOX = Path("/bin/busybox")

# Debian package providing each external tool this script uses.
DEBIAN_PACKAGE = {
    "bwrap": "bubblewrap",
    "unshare": "util-linux",
    "chroot": "coreutils",
    "busybox": "busybox-static",
}

NAMESPACES_BWRAP = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]

# Soak: RSS may grow by less than this (allocator and interpreter caches).
RSS_TOLERANCE_KIB = 2048
# Soak: how long to wait for the kernel and the interpreter to settle.
SETTLE_SECONDS = 10.0
SETTLE_POLL = 0.5
SETTLE_STABLE = 2.0  # seconds without change that count as settled

CLONE_NEWNET = 0x40000000  # <sched.h>, for flush_net_namespace_teardown()

Spawn = Callable[[], int]


# -- setup -----------------------------------------------------------------


def missing_tool(tool: str) -> str:
    return f"{tool} not found (Debian package: {DEBIAN_PACKAGE[tool]})"


def elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP of a 64-bit little-endian ELF file, None for a static one."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return None  # not ELF64 LE: let the verification run tell
        phoff, phentsize, phnum = (
            struct.unpack_from("<Q", header, 0x20)[0],
            *struct.unpack_from("<HH", header, 0x36),
        )
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack(
                "<IIQQQQ", f.read(40)
            )
            if p_type == 3:  # PT_INTERP
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode(errors="replace")
    return None


def build_rootfs(parent: Path) -> Path:
    root = parent / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("true", "sh"):
        (root / "bin" / applet).symlink_to("busybox")
    for mount_point in ("proc", "dev", "sys", "tmp"):
        (root / mount_point).mkdir()
    return root


def command_output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return f"({error})"
    return (done.stdout + done.stderr).strip()


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else "?"


def loadavg() -> str:
    return "(loadavg " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ")"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def print_machine_info(pycontain: ModuleType, bwrap: str | None, bwrap_mode: str) -> None:
    uname = os.uname()
    print("== Machine")
    print(f"  kernel      {uname.sysname} {uname.release} {uname.version} {uname.machine}")
    print(f"  cpus        nproc={len(os.sched_getaffinity(0))} (cpu_count={os.cpu_count()})")
    print(f"  cpu model   {cpu_model()}")
    print(f"  load        {loadavg()} at start")
    print(f"  python      {platform.python_version()} ({sys.executable})")
    print(f"  pycontain   {getattr(pycontain, '__version__', '?')} ({pycontain.__file__})")
    bwrap_version = first_line(command_output([bwrap, "--version"])) if bwrap else "missing"
    print(f"  bwrap       {bwrap_version}; root via {bwrap_mode}")
    unshare = shutil.which("unshare")
    unshare_version = first_line(command_output([unshare, "--version"])) if unshare else "missing"
    print(f"  unshare     {unshare_version}")
    print(f"  busybox     {first_line(command_output([str(BUSYBOX), '--help']))}")
    print()


# -- candidates ------------------------------------------------------------


SUBPROCESS = "subprocess.run (no isolation)"
POSIX_SPAWN = "os.posix_spawn + waitpid (floor)"


@dataclass
class Candidate:
    name: str
    command: str  # how it is spawned, for the legend
    spawn: Spawn
    verify: Callable[[], str | None]  # None when a run succeeds, else the error
    samples: list[float] = field(default_factory=list)  # seconds
    failures: int = 0
    # For a spawn timed in another process (the rootless worker): the time
    # that process measured for the last spawn, instead of the round trip.
    reported: Callable[[], float] | None = None
    after: Callable[[], object] | None = None  # untimed, after each timed spawn


@dataclass
class Unavailable:
    name: str
    reason: str


def subprocess_candidate(name: str, argv: list[str]) -> Candidate:
    def spawn() -> int:
        return subprocess.run(argv).returncode

    def verify() -> str | None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            return f"{type(error).__name__}: {error}"
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip() or "no output"
            return f"exit status {done.returncode}: {output}"
        return None

    return Candidate(name, " ".join(argv), spawn, verify)


def posix_spawn_candidate(root: Path) -> Candidate:
    """The program alone with (next to) no Python: any path that runs it pays
    at least this, so it bounds how far below subprocess.run a spawn can go."""
    true = str(root / "bin" / "true")

    def spawn() -> int:
        return os.waitstatus_to_exitcode(os.waitpid(os.posix_spawn(true, [true], {}), 0)[1])

    command = "os.waitpid(os.posix_spawn(ROOT/bin/true, [...], {}), 0)"
    return Candidate(POSIX_SPAWN, command, spawn, verify_spawn(spawn))


def pycontain_candidate(
    pycontain: ModuleType, name: str, root: Path, extra: dict[str, object]
) -> Candidate:
    process = pycontain.Process
    layers = [str(root)]
    env = {"PATH": "/bin"}

    def spawn() -> int:
        code: int = process(["/bin/true"], layers=layers, env=env, **extra).wait()
        return code

    options = "".join(f", {key}={value!r}" for key, value in extra.items())
    command = f"pycontain.Process(['/bin/true'], layers=[ROOT], env={env!r}{options}).wait()"
    return Candidate(name, command, spawn, verify_spawn(spawn))


def verify_spawn(spawn: Spawn) -> Callable[[], str | None]:
    """A check that one pycontain spawn works: None, or what went wrong."""

    def verify() -> str | None:
        try:
            code = spawn()
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return None if code == 0 else f"exit status {code}"

    return verify


def container_candidate(pycontain: ModuleType, name: str, root: Path) -> Candidate:
    """Repeated spawns from one Container: its layers and settings checked once."""
    box = pycontain.Container(layers=[str(root)])
    env = {"PATH": "/bin"}

    def spawn() -> int:
        code: int = box.spawn(["/bin/true"], env=env).wait()
        return code

    command = f"box.spawn(['/bin/true'], env={env!r}).wait(), box = Container(layers=[ROOT])"
    return Candidate(name, command, spawn, verify_spawn(spawn))


# A worker timing pycontain spawns as an unprivileged uid (rootless mode),
# driven one spawn at a time over its stdin/stdout by the main process, so
# that its spawns interleave with the others'. It times each spawn itself:
# the pipe's round trip is not the spawn's.
ROOTLESS_WORKER = r"""
import sys, time
import pycontain
layers, env = [sys.argv[1]], {"PATH": "/bin"}
for line in sys.stdin:
    start = time.perf_counter()
    try:
        code = pycontain.Process(["/bin/true"], layers=layers, env=env).wait()
    except Exception as error:
        code = f"{type(error).__name__}: {error}".replace("\n", " ")
    print(code, time.perf_counter() - start, flush=True)
"""
ROOTLESS_UID = 65534  # nobody


def rootless_candidate(pycontain: ModuleType, root: Path) -> Candidate | Unavailable:
    """pycontain as an unprivileged uid: a worker under setpriv (see ROOTLESS_WORKER)."""
    name = f"pycontain, rootless (uid {ROOTLESS_UID})"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return Unavailable(name, "setpriv not found (Debian package: util-linux)")
    # This interpreter may live where the uid cannot go (pyenv under /root);
    # the system's, of the same version, loads the same extension.
    python = sys.executable
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if (
        os.path.exists("/usr/bin/python3")
        and command_output(
            ["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2], sep='.')"]
        ).strip()
        == version
    ):
        python = "/usr/bin/python3"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pycontain.__file__)))
    worker = subprocess.Popen(
        [
            setpriv,
            f"--reuid={ROOTLESS_UID}",
            f"--regid={ROOTLESS_UID}",
            "--clear-groups",
            "env",
            "HOME=/",
            f"PYTHONPATH={package_root}",
            python,
            "-c",
            ROOTLESS_WORKER,
            str(root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd="/",
    )
    assert worker.stdin is not None and worker.stdout is not None
    stdin, stdout = worker.stdin, worker.stdout
    last = [0.0, ""]

    def spawn() -> int:
        stdin.write("spawn\n")
        answer = stdout.readline().split(" ")
        if len(answer) < 2:
            last[1] = "the worker ended"
            return 1
        last[0], last[1] = float(answer[-1]), " ".join(answer[:-1])
        return 0 if last[1] == "0" else 1

    def verify() -> str | None:
        return None if spawn() == 0 else str(last[1])

    command = (
        f"pycontain.Process(['/bin/true'], layers=[ROOT], ...).wait() as uid {ROOTLESS_UID} "
        "(setpriv; userns=None picks a user namespace), timed in that process"
    )
    return Candidate(name, command, spawn, verify, reported=lambda: float(last[0]))


def measure_preparation(pycontain: ModuleType, root: Path, rounds: int) -> None:
    """What a Container saves per spawn: the Python-side preparation alone.

    Interleaved: making the Container and preparing (what Process(...) does
    before the clone) against preparing from a Container made once (what
    Container.spawn does). Nothing is spawned: the fds are released.
    """
    if not hasattr(pycontain, "Container"):
        print("== Preparation: skipped (this pycontain has no Container)")
        return
    from pycontain import _spawn

    layers, env = [str(root)], {"PATH": "/bin"}
    box = pycontain.Container(layers=layers)

    def per_spawn() -> None:
        each = pycontain.Container(layers=layers)
        _spawn.prepare(each._plan, ["/bin/true"], executable=None, cwd=None, env=env).release()

    def from_container() -> None:
        _spawn.prepare(box._plan, ["/bin/true"], executable=None, cwd=None, env=env).release()

    samples: dict[str, list[float]] = {
        "Process(...): check + prepare": [],
        "Container.spawn: prepare": [],
    }
    for _ in range(rounds):
        for label, step in zip(samples, (per_spawn, from_container), strict=True):
            start = time.perf_counter()
            for _ in range(20):
                step()
            samples[label].append((time.perf_counter() - start) / 20)
    print(f"== Preparation in Python before the clone ({rounds} rounds of 20, interleaved)")
    for label, values in samples.items():
        print(f"  {label:<34} {statistics.median(values) * 1e6:7.1f} us median")
    saved = statistics.median(samples["Process(...): check + prepare"]) - statistics.median(
        samples["Container.spawn: prepare"]
    )
    print(f"  saved per spawn from one Container  {saved * 1e6:7.1f} us")


def bwrap_has_overlay(bwrap: str) -> bool:
    """Whether this bwrap offers --overlay-src and --tmp-overlay (bubblewrap >= 0.9)."""
    help_text = command_output([bwrap, "--help"])
    return "--overlay-src" in help_text and "--tmp-overlay" in help_text


def extra_pycontain_options(
    pycontain: ModuleType,
) -> tuple[list[tuple[str, dict[str, object]]], str]:
    """pycontain variants worth timing: (name, keywords) pairs, or why none."""
    parameters = inspect.signature(pycontain.Process).parameters
    variants: list[tuple[str, dict[str, object]]] = []
    if "init" in parameters:
        # The program as PID 1, without pycontain's init: what the init costs.
        variants.append(("pycontain, init=False", {"init": False, "die_with_parent": False}))
    if "netns_pool" not in parameters:
        return variants, "" if variants else "this pycontain has no network namespace pool"
    variants.append(("pycontain, netns pool off", {"netns_pool": False}))
    if "limits" in parameters:
        limits = {"memory": "256M", "pids": 64, "cpu": 1.0}
        variants.append(("pycontain, limits=", {"limits": limits}))
        variants.append(("pycontain, limits={}", {"limits": {}}))
    if "privileged" in parameters:
        variants.append(("pycontain, unconfined", {"privileged": True, "seccomp": None}))
    if "userns" in parameters:
        # The kernel path of rootless mode (user namespace, its maps, userxattr,
        # /dev bound from the host, no netns pool), taken by root.
        variants.append(("pycontain, userns=True", {"userns": True}))
    return variants, ""


def make_candidates(
    pycontain: ModuleType, root: Path, bwrap: str | None, bwrap_overlay: bool
) -> tuple[list[Candidate], list[Unavailable]]:
    candidates: list[Candidate] = []
    unavailable: list[Unavailable] = []
    candidates.append(subprocess_candidate(SUBPROCESS, [str(root / "bin" / "true")]))
    candidates.append(posix_spawn_candidate(root))
    candidates.append(pycontain_candidate(pycontain, "pycontain.Process (default)", root, {}))
    if hasattr(pycontain, "Container"):
        candidates.append(container_candidate(pycontain, "pycontain, one Container", root))
    else:
        unavailable.append(Unavailable("pycontain, one Container", "this pycontain has none"))
    if bwrap:
        if bwrap_overlay:
            label, argv = "bwrap --overlay-src", [bwrap, "--overlay-src", str(root)]
            argv += ["--tmp-overlay", "/"]
        else:
            label, argv = "bwrap --ro-bind", [bwrap, "--ro-bind", str(root), "/"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *NAMESPACES_BWRAP]
        candidates.append(subprocess_candidate(label, [*argv, "/bin/true"]))
    else:
        unavailable.append(Unavailable("bwrap", missing_tool("bwrap")))
    unshare, chroot = shutil.which("unshare"), shutil.which("chroot")
    if unshare and chroot:
        argv = [unshare, "--mount", "--pid", "--net", "--uts", "--ipc", "--fork"]
        argv += [f"--mount-proc={root / 'proc'}", chroot, str(root), "/bin/true"]
        candidates.append(subprocess_candidate("unshare + chroot", argv))
    else:
        tool = "unshare" if not unshare else "chroot"
        unavailable.append(Unavailable("unshare + chroot", missing_tool(tool)))
    variants, reason = extra_pycontain_options(pycontain)
    for name, extra in variants:
        candidates.append(pycontain_candidate(pycontain, name, root, extra))
    if not variants:
        unavailable.append(Unavailable("pycontain, netns pool off", reason))
    if "userns" in inspect.signature(pycontain.Process).parameters:
        rootless = rootless_candidate(pycontain, root)
        if isinstance(rootless, Candidate):
            candidates.append(rootless)
        else:
            unavailable.append(rootless)
    return candidates, unavailable


def warm_pool_candidate(pycontain: ModuleType, root: Path) -> tuple[Candidate, object]:
    """Spawns from a pycontain.Pool of 4 (bench/pool.py), refilled after each timing."""
    pool = pool_phases.make_pool(pycontain, root, 4)
    spawn = pool_phases.pool_spawn(pool)
    command = (
        "pool.spawn(['/bin/true'], env={'PATH': '/bin'}).wait(), pool = Pool(layers=[ROOT],"
        " size=4), refilled (pool.fill()) after each timing"
    )
    after = lambda: pool.fill(120)  # noqa: E731
    return Candidate("pycontain, warm pool", command, spawn, verify_spawn(spawn), after=after), pool


def verify_candidates(
    candidates: list[Candidate], unavailable: list[Unavailable]
) -> list[Candidate]:
    working = []
    for candidate in candidates:
        error = candidate.verify()
        if error is None:
            working.append(candidate)
        else:
            print(f"  DROPPED {candidate.name}: {error}")
            unavailable.append(Unavailable(candidate.name, f"failed: {error.splitlines()[0]}"))
    return working


# -- latency ---------------------------------------------------------------


def measure_latency(
    candidates: list[Candidate], rounds: int, warmup: int, rng: random.Random
) -> None:
    order = list(candidates)
    gc.collect()
    gc.disable()  # no collection pause lands inside one candidate's timing
    try:
        for round_index in range(warmup + rounds):
            rng.shuffle(order)
            for candidate in order:
                start = time.perf_counter()
                code = candidate.spawn()
                elapsed = time.perf_counter() - start
                if candidate.reported is not None:
                    elapsed = candidate.reported()
                if code != 0:
                    candidate.failures += 1
                if round_index >= warmup:
                    candidate.samples.append(elapsed)
                if candidate.after is not None:
                    candidate.after()
            if round_index % 20 == 19:
                gc.collect()
    finally:
        gc.enable()


def percentile_90(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=10, method="inclusive")[8]


def print_latency(
    candidates: list[Candidate], unavailable: list[Unavailable], rounds: int, warmup: int
) -> None:
    medians = {c.name: statistics.median(c.samples) for c in candidates}
    floor = medians.get(SUBPROCESS)
    bwrap = next((medians[c.name] for c in candidates if c.name.startswith("bwrap")), None)
    print(
        f"== Latency: spawn + wait of busybox true ({rounds} rounds,"
        f" {warmup} warm-up discarded)  {loadavg()}"
    )
    header = (
        f"  {'candidate':<34} {'median ms':>10} {'p90 ms':>9} {'min ms':>8}"
        f" {'x subprocess':>13} {'x faster than bwrap':>20}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for candidate in candidates:
        median = medians[candidate.name]
        vs_floor = f"{median / floor:.2f}" if floor else "n/a"
        vs_bwrap = f"{bwrap / median:.2f}" if bwrap else "n/a"
        failures = f"  ({candidate.failures} non-zero exits!)" if candidate.failures else ""
        print(
            f"  {candidate.name:<34} {median * 1e3:>10.3f}"
            f" {percentile_90(candidate.samples) * 1e3:>9.3f} {min(candidate.samples) * 1e3:>8.3f}"
            f" {vs_floor:>13} {vs_bwrap:>20}{failures}"
        )
    for missing in unavailable:
        print(f"  {missing.name:<34} (not available: {missing.reason})")
    print()
    print("  x subprocess = candidate median / subprocess.run median;")
    print("  x faster than bwrap = bwrap median / candidate median.")
    for candidate in candidates:
        print(f"  {candidate.name}: {candidate.command}")
    noisy = [c.name for c in candidates if percentile_90(c.samples) > 1.5 * medians[c.name]]
    if noisy:
        print(f"  note: p90 > 1.5 x median (noisy) for: {', '.join(noisy)}")
    print()


# -- throughput ------------------------------------------------------------


@dataclass
class Throughput:
    spawns: int = 0
    failures: int = 0
    elapsed: float = 0.0  # seconds
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Spawns per second, all threads together."""
        return self.spawns / self.elapsed if self.elapsed else 0.0


# Throughput runs alternate 1 and 2 threads in slices, in this ABBA order, so
# that machine noise (and the kernel's deferred namespace teardown left over
# from the previous slice) weighs on both alike.
THROUGHPUT_SLICES = (1, 2, 2, 1, 1, 2)


def measure_slice(spawn: Spawn, threads: int, seconds: float, total: Throughput) -> None:
    """Loop ``spawn`` in ``threads`` threads for ``seconds``; add the counts to ``total``."""
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    failures = [0] * threads
    deadline = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        try:
            while time.perf_counter() < deadline[0]:
                if spawn() != 0:
                    failures[index] += 1
                counts[index] += 1
        except Exception as error:
            total.errors.append(f"{type(error).__name__}: {error}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for thread in workers:
        thread.join()
    total.elapsed += time.perf_counter() - start
    total.spawns += sum(counts)
    total.failures += sum(failures)


def measure_throughput(spawn: Spawn, seconds: float) -> dict[int, Throughput]:
    """``seconds`` of spawning per thread count, interleaved in slices."""
    results = {threads: Throughput() for threads in set(THROUGHPUT_SLICES)}
    slice_seconds = seconds / THROUGHPUT_SLICES.count(1)
    for threads in THROUGHPUT_SLICES:
        measure_slice(spawn, threads, slice_seconds, results[threads])
    return results


def run_throughput(candidates: list[Candidate], seconds: float) -> None:
    print(f"== Throughput: spawns per second, {seconds:g} s per thread count  {loadavg()}")
    print(f"  {'candidate':<34} {'1 thread /s':>12} {'2 threads /s':>13} {'2/1':>6}")
    for name in (
        "subprocess.run (no isolation)",
        "pycontain.Process (default)",
        "pycontain, netns pool off",
    ):
        candidate = next((c for c in candidates if c.name == name), None)
        if candidate is None:
            print(f"  {name:<34} (not available)")
            continue
        results = measure_throughput(candidate.spawn, seconds)
        one, two = results[1], results[2]
        ratio = two.rate / one.rate if one.rate else float("nan")
        print(f"  {name:<34} {one.rate:>12.1f} {two.rate:>13.1f} {ratio:>6.2f}")
        for label, result in (("1 thread", one), ("2 threads", two)):
            if result.failures:
                print(f"    {label}: {result.failures} of {result.spawns} exited non-zero")
            for error in result.errors:
                print(f"    {label}: a thread stopped on {error}")
    print(f"  (1 and 2 threads alternate in slices, order {THROUGHPUT_SLICES})")
    print()


# -- soak ------------------------------------------------------------------


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the fd listdir itself holds


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def count_mounts() -> int:
    # This process lives in the host's mount namespace: a leaked mount shows here.
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


def child_pids() -> set[int]:
    """Children of every thread of this process, zombies included."""
    tasks = os.listdir("/proc/self/task")
    if os.path.exists(f"/proc/self/task/{tasks[0]}/children"):
        pids: set[int] = set()
        for tid in tasks:
            try:
                with open(f"/proc/self/task/{tid}/children") as f:
                    pids.update(int(pid) for pid in f.read().split())
            except FileNotFoundError:
                pass  # the thread ended meanwhile
        return pids
    # Kernel without CONFIG_PROC_CHILDREN: scan every process's parent pid.
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry))
    return found


def count_children() -> int:
    return len(child_pids())


def count_tempdir() -> int:
    return len(os.listdir(tempfile.gettempdir()))


def count_entries(directory: str) -> Callable[[], int]:
    return lambda: len(os.listdir(directory))


def count_net_namespaces() -> int | None:
    """Network namespaces alive in the kernel, from the net_namespace slab cache.

    Why this counter: counting distinct net:[inode] links under /proc/*/ns/net
    only sees namespaces that some process is in; a leaked one (kept alive by
    a stray reference, or whose teardown is stuck) is invisible there. No
    procfs or sysfs file gives a kernel-wide count, and debugfs is not
    mounted. But every struct net except init_net is allocated from the
    "net_namespace" slab cache, so that cache's active objects (column 2 of
    /proc/slabinfo, root only) count the namespaces alive or not yet freed.

    SLUB counts objects sitting free in per-CPU slabs and sheaves as active,
    which makes the raw number jump in steps of a slab (7 objects here).
    Writing 1 to /sys/kernel/slab/net_namespace/shrink first flushes those
    per-CPU caches (a harmless hint to the allocator), which makes the count
    exact but for frees still in flight. Teardown is asynchronous (the
    cleanup_net work, after an RCU grace period): the settle loop waits for
    it. None when the kernel does not list the cache (e.g. merged into one
    with another name).
    """
    try:
        with open("/sys/kernel/slab/net_namespace/shrink", "w") as f:
            f.write("1")
    except OSError:
        pass  # no SLUB sysfs: the raw count is still an upper bound
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == "net_namespace":
                    return int(fields[1])
    except OSError:
        pass
    return None


def net_namespaces_in_use() -> int:
    """Distinct network namespaces, other than this process's, that processes are in."""
    links = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                links.add(os.readlink(f"/proc/{entry}/ns/net"))
            except OSError:
                pass  # gone meanwhile, or a kernel thread
    links.discard(os.readlink("/proc/self/ns/net"))  # the host's: not from the slab
    return len(links)


def count_unheld_net_namespaces() -> int | None:
    """Net namespaces no process is in: the slab count minus those in use.

    The raw slab count is machine-wide, so any container another program
    runs during the soak (a test suite, say) moves it. Subtracting the
    namespaces some process is in leaves the ones kept alive by something
    else (an fd, a bind mount, a leaked kernel reference) or still being torn
    down: what a leak in pycontain's spawn would look like. (A leaked
    *process* holding a namespace shows in the child-process count instead.)
    The slab is read first, so a namespace created in between lowers the
    result rather than raising it.
    """
    total = count_net_namespaces()
    return None if total is None else total - net_namespaces_in_use()


@dataclass(frozen=True)
class Metric:
    name: str
    read: Callable[[], int | None]
    tolerance: int = 0  # largest growth that still passes
    unit: str = ""
    informational: bool = False  # shown, never fails (machine-wide and noisy)
    # Machine-wide counters that other programs push up for a while (their
    # containers' namespaces, say) are judged by their floor: the lowest
    # value seen while polling. A leak raises the floor; passing activity
    # does not.
    floor: bool = False


def host_tmp_metric_name(host_tmp: str) -> str:
    return f"entries in {host_tmp} (info only)"


def soak_metrics(host_tmp: str) -> tuple[Metric, ...]:
    return (
        Metric("open fds (this process)", count_fds),
        Metric("RSS (VmRSS)", rss_kib, RSS_TOLERANCE_KIB - 1, "KiB"),
        Metric("host mount table lines (floor)", count_mounts, floor=True),
        Metric("child processes (incl. zombies)", count_children),
        Metric("entries in tempfile.gettempdir()", count_tempdir),
        Metric(host_tmp_metric_name(host_tmp), count_entries(host_tmp), informational=True),
        Metric("net namespaces no process is in (floor)", count_unheld_net_namespaces, floor=True),
        Metric(
            "net namespaces, all (floor, info only)",
            count_net_namespaces,
            informational=True,
            floor=True,
        ),
    )


Snapshot = dict[str, int | None]


def snapshot(metrics: Sequence[Metric]) -> Snapshot:
    return {metric.name: metric.read() for metric in metrics}


def passes(metric: Metric, before: int | None, after: int | None) -> bool:
    return (
        metric.informational
        or before is None
        or after is None
        or after - before <= metric.tolerance
    )


def flush_net_namespace_teardown() -> None:
    """Create and drop a throwaway network namespace, in a forked child.

    Some namespaces are freed only from an RCU callback (after their last
    socket goes), and lazy RCU may hold such callbacks back for 10 s or more.
    Dropping a namespace runs the kernel's cleanup_net work, whose
    rcu_barrier() flushes them: the net namespace count then reflects leaks,
    not the timing of deferred frees. This is to the kernel what gc.collect()
    is to Python. Best effort: failures are ignored.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pid = os.fork()
    except OSError:
        return
    if pid == 0:  # the child: no Python cleanup, just unshare and leave
        os._exit(0 if libc.unshare(CLONE_NEWNET) == 0 else 1)
    os.waitpid(pid, 0)


def merge(metrics: Sequence[Metric], seen: Snapshot, current: Snapshot) -> Snapshot:
    """Fold a new poll in: the lowest value so far for floor metrics, else the latest."""
    merged = dict(current)
    for metric in metrics:
        old, new = seen[metric.name], current[metric.name]
        if metric.floor and old is not None and new is not None:
            merged[metric.name] = min(old, new)
    return merged


def settle(metrics: Sequence[Metric], baseline: Snapshot | None) -> tuple[Snapshot, float]:
    """Poll for at most ~SETTLE_SECONDS; return the settled numbers and the time taken.

    Without a ``baseline`` (before the soak), stop once the numbers (floors
    for floor metrics) have not changed for SETTLE_STABLE seconds, so that
    the teardown left over from the earlier phases (zombie reaping,
    namespace cleanup) is done and the baseline is low. With one (after the
    soak), stop as soon as every check passes, else keep polling to the end:
    a leak stays, whereas deferred teardown and other programs' activity
    come and go. Informational metrics are recorded but not waited for.
    """
    judged = [metric for metric in metrics if not metric.informational]
    start = time.monotonic()
    gc.collect()
    flush_net_namespace_teardown()
    seen = snapshot(metrics)
    unchanged = 0
    while time.monotonic() - start < SETTLE_SECONDS:
        if baseline is not None and all(passes(m, baseline[m.name], seen[m.name]) for m in judged):
            break
        time.sleep(SETTLE_POLL)
        gc.collect()
        flush_net_namespace_teardown()
        current = merge(metrics, seen, snapshot(metrics))
        same = all(current[m.name] == seen[m.name] for m in judged)
        unchanged = unchanged + 1 if same else 0
        seen = current
        if baseline is None and unchanged * SETTLE_POLL >= SETTLE_STABLE:
            break
    return seen, time.monotonic() - start


def soak_loop(
    spawn: Spawn, spawns: int, after: Callable[[], object] | None = None
) -> tuple[int, dict[str, int], float]:
    """Run ``spawn`` ``spawns`` times: (non-zero exits, exceptions by message, seconds).

    ``after`` runs after each spawn (a pool's refill, so that each spawn is warm)."""
    failures = 0
    errors: dict[str, int] = {}
    show_progress = sys.stderr.isatty()
    start = time.perf_counter()
    for index in range(spawns):
        try:
            if spawn() != 0:
                failures += 1
        except Exception as error:
            key = f"{type(error).__name__}: {error}"
            errors[key] = errors.get(key, 0) + 1
        if after is not None:
            after()
        if show_progress and (index + 1) % max(1, spawns // 20) == 0:
            print(f"\r  {index + 1}/{spawns}", end="", file=sys.stderr, flush=True)
    if show_progress:
        print("\r" + " " * 30 + "\r", end="", file=sys.stderr, flush=True)
    return failures, errors, time.perf_counter() - start


def run_soak(
    candidates: list[Candidate], spawns: int, name: str = "pycontain.Process (default)"
) -> bool:
    candidate = next((c for c in candidates if c.name == name), None)
    print(f"== Soak: {spawns} spawns of {name}  {loadavg()}")
    if candidate is None:
        print(f"  FAIL {name} is not available")
        return False
    # The host's temp directory is shared with everything else on the machine,
    # so its entry count is only informative. For a judged count, the soak
    # runs with tempfile.gettempdir() (and TMPDIR) pointing to a fresh
    # private directory, where any temp file pycontain makes would land.
    host_tmp = tempfile.gettempdir()
    host_tmp_metric = host_tmp_metric_name(host_tmp)
    private_tmp = tempfile.mkdtemp(prefix="pycontain-bench-soak-tmp-")
    host_tmp_before = set(os.listdir(host_tmp))
    saved_tempdir, saved_environ = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = private_tmp
    try:
        metrics = soak_metrics(host_tmp)
        before, waited_before = settle(metrics, None)
        failures, errors, elapsed = soak_loop(candidate.spawn, spawns, candidate.after)
        after, waited_after = settle(metrics, before)
        host_tmp_new = sorted(set(os.listdir(host_tmp)) - host_tmp_before)
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_environ is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved_environ
        shutil.rmtree(private_tmp, ignore_errors=True)
    print(
        f"  {spawns} spawns in {elapsed:.1f} s ({spawns / elapsed:.0f}/s);"
        f" settled {waited_before:.1f} s before, {waited_after:.1f} s after"
    )
    print(f"  {'':<4} {'metric':<42} {'before':>10} {'after':>10} {'delta':>8}  limit")
    ok = True
    for metric in metrics:
        old, new = before[metric.name], after[metric.name]
        if old is None or new is None:
            print(f"  {'SKIP':<4} {metric.name:<42} {'(unavailable on this kernel)':>30}")
            continue
        good = passes(metric, old, new)
        ok = ok and good
        if metric.informational:
            status, limit = "INFO", "not judged"
        else:
            status = "PASS" if good else "FAIL"
            limit = f"< {metric.tolerance + 1} {metric.unit}" if metric.tolerance else "no growth"
        print(f"  {status:<4} {metric.name:<42} {old:>10} {new:>10} {new - old:>+8}  {limit}")
        if metric.name == host_tmp_metric and host_tmp_new:
            shown = ", ".join(host_tmp_new[:8]) + (", ..." if len(host_tmp_new) > 8 else "")
            print(f"       new there since the soak began: {shown}")
    spawn_ok = failures == 0 and not errors
    print(
        f"  {'PASS' if spawn_ok else 'FAIL':<4} {'spawns exiting 0':<42}"
        f" {spawns - failures - sum(errors.values()):>10} of {spawns}"
    )
    for message, count in errors.items():
        print(f"       {count} x {message}")
    print(
        "  (tempfile.gettempdir() was a private directory during the soak; (floor) = the"
        " lowest value seen while polling, as other programs move these machine-wide counts)"
    )
    print()
    return ok and spawn_ok


# -- main ------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark pycontain spawns against subprocess, bubblewrap and unshare.",
    )
    parser.add_argument("--rounds", type=int, help="timed latency rounds (default 300)")
    parser.add_argument("--warmup", type=int, help="discarded warm-up rounds (default 20)")
    parser.add_argument("--soak", type=int, help="pycontain spawns in the soak (default 10000)")
    parser.add_argument(
        "--throughput-seconds", type=float, help="duration of each throughput run (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the round order shuffle")
    parser.add_argument(
        "--quick", action="store_true", help="defaults of 60 rounds, 1 s throughput, 500 soak"
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated parts of candidate names (case-insensitive): time only the"
        " candidates whose name contains one of them (subprocess.run always), print the"
        " latency table and stop",
    )
    args = parser.parse_args(argv)
    defaults = (60, 5, 500, 1.0) if args.quick else (300, 20, 10_000, 3.0)
    for name, default in zip(
        ("rounds", "warmup", "soak", "throughput_seconds"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.rounds < 1 or args.warmup < 0 or args.soak < 0 or args.throughput_seconds <= 0:
        parser.error("--rounds must be >= 1, --warmup and --soak >= 0, throughput > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("spawn.py: must run as root (pycontain, bwrap and unshare create namespaces)")
        return 1
    if not BUSYBOX.is_file():
        print(f"spawn.py: {missing_tool('busybox')}: {BUSYBOX} is needed for the rootfs")
        return 1
    interpreter = elf_interpreter(BUSYBOX)
    if interpreter is not None:
        print(f"spawn.py: {BUSYBOX} is dynamically linked ({interpreter}); install busybox-static")
        return 1
    try:
        import pycontain
    except ImportError as error:
        print(f"spawn.py: cannot import pycontain ({error}); run `pip install -e .` first")
        return 1

    bwrap = shutil.which("bwrap")
    bwrap_overlay = bwrap is not None and bwrap_has_overlay(bwrap)
    if not bwrap:
        bwrap_mode = "n/a"
    elif bwrap_overlay:
        bwrap_mode = "--overlay-src ROOT --tmp-overlay / (overlay, like pycontain)"
    else:
        bwrap_mode = "--ro-bind ROOT / (this bwrap has no --overlay-src/--tmp-overlay)"
    print_machine_info(pycontain, bwrap, bwrap_mode)

    with tempfile.TemporaryDirectory(prefix="pycontain-bench-") as scratch:
        os.chmod(scratch, 0o755)  # the rootless worker's uid reads the rootfs too
        root = build_rootfs(Path(scratch))
        candidates, unavailable = make_candidates(pycontain, root, bwrap, bwrap_overlay)
        pool = None
        if pool_phases.has_pool(pycontain):
            warm, pool = warm_pool_candidate(pycontain, root)
            candidates.append(warm)
        if args.only:
            wanted = [part.strip().lower() for part in args.only.split(",") if part.strip()]
            candidates = [
                c
                for c in candidates
                if c.name == SUBPROCESS or any(part in c.name.lower() for part in wanted)
            ]
            unavailable = []
        candidates = verify_candidates(candidates, unavailable)
        if not candidates:
            print("spawn.py: no candidate works")
            return 1
        measure_latency(candidates, args.rounds, args.warmup, random.Random(args.seed))
        print_latency(candidates, unavailable, args.rounds, args.warmup)
        if args.only:
            if pool is not None:
                pool.close()  # type: ignore[attr-defined]
            return 0
        measure_preparation(pycontain, root, max(20, args.rounds // 5))
        run_throughput(candidates, args.throughput_seconds)
        if pool is not None:
            pool_phases.measure_burst(pycontain, root, 100, 1 if args.quick else 3)
            pool_phases.measure_pool_throughput(
                pycontain, root, args.throughput_seconds, measure_throughput
            )
            pool_phases.measure_idle_cost(pycontain, root, 20)
            pool_phases.measure_floor(root, max(100, args.rounds))
        if not args.soak:
            print("== Soak: skipped (--soak 0)")
            return 0
        ok = run_soak(candidates, args.soak)
        if pool is not None:
            warm_before = pool.warm_spawns  # type: ignore[attr-defined]
            ok = run_soak(candidates, args.soak, "pycontain, warm pool") and ok
            served = pool.warm_spawns - warm_before  # type: ignore[attr-defined]
            print(f"  (through the pool: {served} of {args.soak} spawns served warm)")
            pool.close()  # type: ignore[attr-defined]
    print(f"== Soak result: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
