"""Cgroups for containers: ``limits=``, and what a container used.

A service module: it knows cgroups, not Process. ``parse_limits`` checks
``limits=`` before anything exists; ``create`` makes one cgroup per
container (one directory in each cgroup v1 hierarchy it needs, or one
cgroup v2 directory) with the limits written, and opens what the C core
needs to put the container's first process in it before that process does
anything (csrc/cgroup.c, csrc/clone.c). After the reap, ``usage`` reads what the whole
container used and ``remove`` deletes the cgroup.

pycontain only ever creates and writes inside a ``pycontain`` directory of
its own: ``<hierarchy>/pycontain/`` on cgroup v1, ``<mount>/pycontain/`` on
cgroup v2 as root, and ``<user@UID.service>/pycontain/`` (systemd's
delegated subtree) on cgroup v2 as another user. Every other cgroup on the
machine is left alone; the root's ``cgroup.subtree_control`` is read, never
written. A container's cgroup is named ``OWNERPID-STARTTIME-N``; cgroups of
owners that died without removing theirs are removed, when empty, by the
next process that creates one.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._errors import SpawnError, spawn_error

__all__ = ["Cgroup", "Limits", "Usage", "create", "parse_limits"]

LIMIT_KEYS = ("memory", "swap", "pids", "cpu", "cpu_weight")

# cpu=: CPUs' worth, as a quota per scheduler period (the kernel's default
# period); the kernel takes no quota below 1 ms.
CPU_PERIOD_US = 100_000
_CPU_MIN = 1000 / CPU_PERIOD_US
# cpu_weight=: cgroup v2's cpu.weight range (default 100); v1's cpu.shares
# is weight * 1024 / 100, as systemd converts it.
CPU_WEIGHT_RANGE = (1, 10_000)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """Checked ``limits=``: bytes, pids, CPUs' worth, weight; None: no limit."""

    memory: int | None = None
    swap: int | None = None
    pids: int | None = None
    cpu: float | None = None
    cpu_weight: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a container's cgroup recorded (None: this kernel does not say)."""

    memory_peak: int | None = None  # bytes
    cpu_time: float | None = None  # seconds, all processes of the container
    oom_killed: bool | None = None  # the OOM killer ended a process in it


def parse_size(value: object, what: str) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"1.5G"``, ``"64KiB"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be a number of bytes or a string like '512M', not {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(f"{what}: cannot read {value!r} as a size (like 512M, 1.5G, 4096)")
        size = int(float(match[1]) * _SIZE_UNITS[match[2].upper()])
    if size < 0:
        raise ValueError(f"{what} must not be negative: {value!r}")
    return size


def _positive_int(value: object, what: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} must be {bounds}, not {value}")
    return value


def parse_limits(limits: Mapping[str, object] | None) -> Limits | None:
    """Check ``limits=``; None means no cgroup at all, ``{}`` one that only counts.

    Raises ValueError for an unknown key or a bad value, TypeError for a
    value of the wrong type.
    """
    if limits is None:
        return None
    if not isinstance(limits, Mapping):
        raise TypeError(f"limits must be a dict, not {type(limits).__name__}")
    unknown = [key for key in limits if key not in LIMIT_KEYS]
    if unknown:
        raise ValueError(f"unknown limit {unknown[0]!r}; known: {', '.join(LIMIT_KEYS)}")
    values = {key: value for key, value in limits.items() if value is not None}
    memory = swap = pids = weight = None
    cpu = None
    if "memory" in values:
        memory = parse_size(values["memory"], "limits['memory']")
        if memory < 4096:
            raise ValueError(f"limits['memory'] must be at least a page (4096 bytes): {memory}")
    if "swap" in values:
        swap = parse_size(values["swap"], "limits['swap']")
        if memory is None:
            raise ValueError("limits['swap'] needs limits['memory'] too")
    if "pids" in values:
        pids = _positive_int(values["pids"], "limits['pids']")
    if "cpu" in values:
        value = values["cpu"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"limits['cpu'] must be a number of CPUs, not {value!r}")
        if not math.isfinite(value) or value < _CPU_MIN:
            raise ValueError(f"limits['cpu'] must be a number of CPUs >= {_CPU_MIN}: {value!r}")
        cpu = float(value)
    if "cpu_weight" in values:
        weight = _positive_int(values["cpu_weight"], "limits['cpu_weight']", *CPU_WEIGHT_RANGE)
    return Limits(memory=memory, swap=swap, pids=pids, cpu=cpu, cpu_weight=weight)


# -- where the cgroups are ------------------------------------------------


@dataclass
class _Mount:
    id: int
    parent: int
    point: str
    fstype: str
    options: set[str]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _visible_cgroup_mounts() -> list[_Mount]:
    """The cgroup and cgroup2 mounts of this mount namespace not hidden by another mount."""
    mounts: dict[int, _Mount] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, after = line.split(" - ", 1)
            fields, tail = before.split(), after.split()
            mounts[int(fields[0])] = _Mount(
                id=int(fields[0]),
                parent=int(fields[1]),
                point=_unescape(fields[4]),
                fstype=tail[0],
                options=set(tail[2].split(",")) if len(tail) > 2 else set(),
            )
    # A mount is hidden when another is mounted on the same point on top of
    # it, or when its parent is hidden (a private cgroup2 mount over
    # /sys/fs/cgroup hides the v1 hierarchies below it, say).
    covered = {
        m.parent
        for m in mounts.values()
        if m.parent in mounts and m.point == mounts[m.parent].point
    }

    def visible(mount: _Mount, cover: bool = False, depth: int = 0) -> bool:
        # cover: we came from the mount that covers this one.
        if mount.id in covered and not cover:
            return False
        parent = mounts.get(mount.parent)
        if parent is None or parent is mount or depth > 64:
            return True
        return visible(parent, parent.point == mount.point, depth + 1)

    return [m for m in mounts.values() if m.fstype in ("cgroup", "cgroup2") and visible(m)]


# The controllers pycontain uses: memory, pids and cpu to limit; memory
# (peak, OOM kills) and, on v1, cpuacct to count (v2 counts CPU time in
# every cgroup, cpu.stat).
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
_V2_CONTROLLERS = ("memory", "pids", "cpu")


@dataclass
class _Layout:
    version: int
    # v1: controller -> its hierarchy's mount point; v2: "" -> the base
    # directory under which pycontain/ lives.
    places: dict[str, str]
    problem: str | None = None  # v2 as a non-root user without delegation


_layout: _Layout | None = None
_layout_lock = threading.Lock()


def _own_cgroup_v2() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


def _detect() -> _Layout | None:
    mounts = _visible_cgroup_mounts()
    v1: dict[str, str] = {}
    for mount in mounts:
        if mount.fstype == "cgroup":
            for controller in _V1_CONTROLLERS:
                if controller in mount.options:
                    v1.setdefault(controller, mount.point)
    if v1:
        return _Layout(1, v1)
    unified = [m for m in mounts if m.fstype == "cgroup2"]
    if not unified:
        return None
    # The usual place first, should cgroup2 be mounted elsewhere too.
    point = next((m.point for m in unified if m.point == "/sys/fs/cgroup"), unified[-1].point)
    if os.geteuid() == 0:
        return _Layout(2, {"": point})
    # Not root: only the subtree systemd delegates to the user's own
    # manager (user@UID.service) is ours to create cgroups in, and moving a
    # process there needs this process to live in it too.
    own = _own_cgroup_v2().strip("/").split("/")
    marker = f"user@{os.geteuid()}.service"
    if marker not in own:
        return _Layout(
            2,
            {},
            f"as a non-root user on cgroup v2, limits= needs the cgroup subtree systemd "
            f"delegates to your user manager ({marker}), and this process is not in it "
            f"(it is in /{'/'.join(own)}); start it there, e.g. with "
            f"'systemd-run --user --scope -p Delegate=yes python3 ...'",
        )
    base = os.path.join(point, *own[: own.index(marker) + 1])
    return _Layout(2, {"": base})


def layout() -> _Layout | None:
    """Which cgroup hierarchy applies here (cached); None when none is mounted."""
    global _layout
    with _layout_lock:
        if _layout is None:
            detected = _detect()
            if detected is None:
                return None
            _layout = detected
        return _layout


# -- one container's cgroup ----------------------------------------------


def _error(err: int, path: str | None, message: str | None = None) -> SpawnError:
    return spawn_error("cgroup", err, path, message)


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as error:
        raise _error(error.errno or 0, path) from None
    try:
        os.write(fd, value.encode())
    except OSError as error:
        raise _error(error.errno or 0, path, f"writing {value!r}: {error.strerror}") from None
    finally:
        os.close(fd)


def _read(path: str) -> str | None:
    # os.open/os.read: a third of what open() costs, and these files are small.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return None if text is None else int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _keyed(path: str, key: str) -> int | None:
    """The number after ``key`` in a "key value" per line file (memory.events, cpu.stat)."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


_STALE_NAME = re.compile(r"(\d+)-(\d+)-\d+")
_counter = itertools.count()
_owner: tuple[int, str] | None = None  # (pid, "PID-STARTTIME")
_cleaned: set[str] = set()  # pycontain/ directories this process has made sure of and swept
_swept_by = 0  # the pid _cleaned belongs to


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks after boot): pid and this name one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_tag() -> str:
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:  # first use, or in a forked child
        _owner = (pid, f"{pid}-{_start_time(pid)}")
    return _owner[1]


def clean_stale(parent: str) -> list[str]:
    """Remove the empty container cgroups in ``parent`` whose owner process has died.

    Only names pycontain gives (``PID-STARTTIME-N``); a cgroup still holding
    processes (a container that outlived its owner) stays until it is empty.
    Returns the removed paths.
    """
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = _STALE_NAME.fullmatch(name)
        if match is None or _start_time(int(match[1])) == match[2]:
            continue
        path = os.path.join(parent, name)
        try:
            os.rmdir(path)
        except OSError:
            continue  # still populated, or removed by another process meanwhile
        removed.append(path)
    return removed


def _make_parent(parent: str, version: int) -> None:
    """Make pycontain's own directory (shared by all containers; never removed)."""
    global _swept_by
    if parent in _cleaned and os.getpid() == _swept_by:
        return
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass
    except OSError as error:
        raise _creation_error(error, parent, version) from None
    if _swept_by != os.getpid():  # first use, or in a forked child: sweep again
        _cleaned.clear()
        _swept_by = os.getpid()
    if parent not in _cleaned:
        _cleaned.add(parent)
        clean_stale(parent)


def _creation_error(error: OSError, path: str, version: int) -> SpawnError:
    hint = None
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and version == 1:
        parent = os.path.dirname(path) if os.path.basename(path) != "pycontain" else path
        hint = (
            f"{error.strerror} (limits= on cgroup v1 needs root, or a {parent} "
            "directory that an administrator made and gave to you)"
        )
    return _error(error.errno or 0, path, hint)


@dataclass
class Cgroup:
    """One container's cgroup: a directory per v1 hierarchy, or one v2 directory."""

    version: int
    paths: dict[str, str]  # v1: controller -> directory; v2: "" -> directory
    dir_fd: int = -1  # v2: for CLONE_INTO_CGROUP
    procs_fds: list[int] = field(default_factory=list)
    # Only the process that made it kills or removes it: a copy in a child
    # of os.fork() (which cannot reap the container) must leave it alone.
    owner: int = field(default_factory=os.getpid)

    @property
    def path(self) -> str:
        """The cgroup's directory (v1: in the first hierarchy)."""
        return next(iter(self.paths.values()))

    def directories(self) -> list[str]:
        return list(dict.fromkeys(self.paths.values()))

    def close_fds(self) -> None:
        for fd in [self.dir_fd, *self.procs_fds]:
            if fd >= 0:
                os.close(fd)
        self.dir_fd, self.procs_fds = -1, []

    def kill(self) -> None:
        """SIGKILL every process in it at once (cgroup v2's cgroup.kill, Linux 5.14)."""
        if self.version == 2 and os.getpid() == self.owner:
            try:
                _write(os.path.join(self.path, "cgroup.kill"), "1")
            except OSError:
                pass  # an older kernel, or already removed: PID 1's SIGKILL ends it all

    def usage(self) -> Usage:
        """What the whole container used: read after it ended, before ``remove``."""
        if self.version == 2:
            usec = _keyed(os.path.join(self.path, "cpu.stat"), "usage_usec")
            kills = _keyed(os.path.join(self.path, "memory.events"), "oom_kill")
            return Usage(
                memory_peak=_read_int(os.path.join(self.path, "memory.peak")),
                cpu_time=None if usec is None else usec / 1e6,
                oom_killed=None if kills is None else kills > 0,
            )
        memory, cpuacct = self.paths.get("memory"), self.paths.get("cpuacct")
        nanoseconds = kills = peak = None
        if memory is not None:
            peak = _read_int(os.path.join(memory, "memory.max_usage_in_bytes"))
            kills = _keyed(os.path.join(memory, "memory.oom_control"), "oom_kill")
        if cpuacct is not None:
            nanoseconds = _read_int(os.path.join(cpuacct, "cpuacct.usage"))
        return Usage(
            memory_peak=peak,
            cpu_time=None if nanoseconds is None else nanoseconds / 1e9,
            oom_killed=None if kills is None else kills > 0,
        )

    def remove(self) -> None:
        """Delete the cgroup; once its processes are gone, whatever happened."""
        self.close_fds()
        if os.getpid() != self.owner:
            return
        for path in reversed(self.directories()):
            # A container's processes have all exited once its PID 1 can be
            # reaped; should the kernel still count one, wait a little.
            for delay in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, None):
                try:
                    os.rmdir(path)
                except OSError as error:
                    if error.errno != errno.EBUSY or delay is None:
                        break
                    time.sleep(delay)
                    continue
                break


def _v1_controllers(limits: Limits) -> tuple[set[str], set[str]]:
    """The v1 hierarchies a container joins: (required, wanted for accounting)."""
    required = set()
    if limits.memory is not None:
        required.add("memory")
    if limits.pids is not None:
        required.add("pids")
    if limits.cpu is not None or limits.cpu_weight is not None:
        required.add("cpu")
    return required, {"memory", "cpuacct"}


def create(limits: Limits) -> Cgroup:
    """Make the container's cgroup with ``limits`` written, ready for the spawn.

    Raises a :class:`SpawnError` (step ``"cgroup"``) naming the file and
    the reason when the machine cannot do it; nothing is left behind then.
    """
    found = layout()
    if found is None:
        raise _error(errno.EOPNOTSUPP, None, "limits= needs cgroups, and none are mounted")
    if found.problem is not None:
        raise _error(errno.EACCES, None, found.problem)
    required, wanted = _v1_controllers(limits)
    if found.version == 1:
        missing = sorted(required - found.places.keys())
        if missing:
            raise _error(
                errno.EOPNOTSUPP,
                None,
                f"limits= needs the cgroup v1 {', '.join(missing)} hierarchy, which is not "
                f"mounted (mounted: {', '.join(sorted(found.places)) or 'none'})",
            )
        parents = {
            controller: os.path.join(found.places[controller], "pycontain")
            for controller in sorted(required | wanted)
            if controller in found.places
        }
    else:
        parents = {"": os.path.join(found.places[""], "pycontain")}
    name = f"{_owner_tag()}-{next(_counter)}"
    cgroup = Cgroup(found.version, {})
    try:
        made: dict[str, str] = {}  # parent -> directory (hierarchies may be co-mounted)
        for controller, parent in parents.items():
            if parent not in made:
                _make_parent(parent, found.version)
                if found.version == 2:
                    _enable_v2_controllers(parent, required, wanted)
                path = os.path.join(parent, name)
                try:
                    os.mkdir(path, 0o755)
                except FileNotFoundError:
                    # pycontain/ itself was removed meanwhile: make it again.
                    _cleaned.discard(parent)
                    _make_parent(parent, found.version)
                    os.mkdir(path, 0o755)
                except OSError as error:
                    raise _creation_error(error, path, found.version) from None
                made[parent] = path
            cgroup.paths[controller] = made[parent]
        _write_limits(cgroup, limits)
        if found.version == 2:
            fd = os.open(cgroup.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if fd == 0:  # clone3 reads a cgroup fd of 0 as none (EINVAL)
                cgroup.dir_fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                os.close(fd)
            else:
                cgroup.dir_fd = fd
        for path in cgroup.directories():
            cgroup.procs_fds.append(
                os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            )
    except BaseException:
        cgroup.remove()
        raise
    return cgroup


def _enable_v2_controllers(parent: str, required: set[str], wanted: set[str]) -> None:
    """Let pycontain/'s children use the controllers they need."""
    available = set((_read(os.path.join(parent, "cgroup.controllers")) or "").split())
    missing = sorted(required - available)
    if missing:
        raise _error(
            errno.EOPNOTSUPP,
            os.path.join(parent, "cgroup.controllers"),
            f"limits= needs the cgroup v2 {', '.join(missing)} controller, which the parent "
            f"cgroup does not delegate here (available: {' '.join(sorted(available)) or 'none'})",
        )
    enabled = set((_read(os.path.join(parent, "cgroup.subtree_control")) or "").split())
    todo = sorted((required | wanted) & available & set(_V2_CONTROLLERS) - enabled)
    if todo:
        _write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in todo))


def _write_limits(cgroup: Cgroup, limits: Limits) -> None:
    quota = None if limits.cpu is None else max(1000, round(limits.cpu * CPU_PERIOD_US))
    if cgroup.version == 2:
        path = cgroup.path
        writes = [
            ("memory.max", limits.memory),
            ("memory.swap.max", limits.swap),
            ("pids.max", limits.pids),
            ("cpu.max", None if quota is None else f"{quota} {CPU_PERIOD_US}"),
            ("cpu.weight", limits.cpu_weight),
        ]
        for name, value in writes:
            if value is not None:
                _write(os.path.join(path, name), str(value))
        return
    memory = cgroup.paths.get("memory")
    if limits.memory is not None and memory is not None:
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory))
        if limits.swap is not None:
            # memsw counts memory and swap together.
            memsw = os.path.join(memory, "memory.memsw.limit_in_bytes")
            if not os.path.exists(memsw):
                raise _error(
                    errno.EOPNOTSUPP,
                    memsw,
                    "limits['swap'] needs swap accounting (boot with swapaccount=1)",
                )
            _write(memsw, str(limits.memory + limits.swap))
    if limits.pids is not None:
        _write(os.path.join(cgroup.paths["pids"], "pids.max"), str(limits.pids))
    cpu = cgroup.paths.get("cpu")
    if cpu is not None and quota is not None:
        # A new cgroup's period is the default, CPU_PERIOD_US.
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
    if cpu is not None and limits.cpu_weight is not None:
        _write(os.path.join(cpu, "cpu.shares"), str(max(2, limits.cpu_weight * 1024 // 100)))
