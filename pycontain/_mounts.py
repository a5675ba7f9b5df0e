"""Policy for the container's mounts: the sizes of pycontain's own tmpfs
mounts, and the caller's bind mounts and tmpfs mounts.

Everything is checked here, before anything is spawned; the C core gets
bytes, numbers and fds (csrc/binds.c, csrc/rootfs.c). Container paths are
plain absolute paths: the child opens them beneath the container's root and
refuses a symlink anywhere on the way, so that no mount can land outside the
container (docs/spawn.md).
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import spawn_error
from ._paths import StrOrBytesPath as PathArg
from ._paths import to_bytes

BindSpec = tuple[PathArg, PathArg] | tuple[PathArg, PathArg, str]
TmpfsSpec = PathArg | tuple[PathArg, int | None] | tuple[PathArg, int | None, int]

MiB = 1 << 20
GiB = 1 << 30

# /dev holds pycontain's device nodes and links and no data: a little room
# for a program's own sockets or FIFOs there, no more.
DEV_SIZE = 1 * MiB
DEV_INODES = 256
# /dev/shm: Docker's default, enough for POSIX shared memory and semaphores
# of ordinary programs; browsers and databases may want shm_size= more.
SHM_SIZE = 64 * MiB
# The writable layer (without writedir) and each tmpfs= mount without a size:
# 1 GiB, or a quarter of the RAM on a machine with less than 4 GiB. An
# unbounded tmpfs may grow to half the RAM, and each of these is separate.
SCRATCH_SIZE_MAX = 1 * GiB
TMPFS_MODE = 0o1777


@functools.cache
def default_scratch_size() -> int:
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return SCRATCH_SIZE_MAX
    return max(16 * MiB, min(SCRATCH_SIZE_MAX, physical // 4))


@dataclass(frozen=True)
class MountPlan:
    """The checked mount settings of a container (no fds: see open_sources)."""

    scratch_size: int
    shm_size: int
    # (host path, container path, read_only)
    binds: tuple[tuple[bytes, bytes, bool], ...] = ()
    # (container path, size, mode)
    tmpfs: tuple[tuple[bytes, int, int], ...] = ()


def container_path(value: PathArg, what: str) -> bytes:
    """An absolute path inside the container, normalized; no '..', not '/'."""
    path = to_bytes(value, what)
    if not path.startswith(b"/"):
        raise ValueError(f"{what} must be an absolute path inside the container: {value!r}")
    if b".." in path.split(b"/"):
        raise ValueError(f"{what} must not contain '..': {value!r}")
    normalized = posixpath.normpath(path)
    if normalized.startswith(b"//"):
        normalized = b"/" + normalized.lstrip(b"/")
    if normalized == b"/":
        raise ValueError(f"{what} must not be the container's '/': {value!r}")
    return normalized


def size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (bytes), not {type(value).__name__}")
    if not 0 < value < 2**63:
        raise ValueError(f"{what} must be a positive number of bytes: {value!r}")
    return value


def _bind(item: object) -> tuple[bytes, bytes, bool]:
    usage = "binds items are (host_path, container_path) or (host_path, container_path, 'ro'|'rw')"
    if not isinstance(item, tuple) or len(item) not in (2, 3):
        raise TypeError(f"{usage}, not {item!r}")
    mode = item[2] if len(item) == 3 else "ro"
    if mode not in ("ro", "rw"):
        raise ValueError(f"{usage}; got mode {mode!r}")
    source = os.path.abspath(to_bytes(item[0], "binds host path"))
    return source, container_path(item[1], "binds container path"), mode == "ro"


def _tmpfs(item: object, default_size: int) -> tuple[bytes, int, int]:
    usage = "tmpfs items are container_path, (container_path, size) or (container_path, size, mode)"
    if isinstance(item, tuple):
        if len(item) not in (2, 3):
            raise TypeError(f"{usage}, not {item!r}")
        path, item_size, mode = (*item, TMPFS_MODE) if len(item) == 2 else item
    else:
        path, item_size, mode = item, None, TMPFS_MODE
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{usage}, not {item!r}")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"tmpfs mode must be an int from 0 to 0o7777, not {mode!r}")
    checked_size = default_size if item_size is None else size(item_size, "tmpfs size")
    return container_path(path, "tmpfs container path"), checked_size, mode


def check(
    *,
    scratch_size: int | None = None,
    shm_size: int | None = None,
    binds: Iterable[BindSpec] | None = None,
    tmpfs: Iterable[TmpfsSpec] | None = None,
) -> MountPlan:
    """Check the mount settings; raises TypeError/ValueError. Opens nothing."""
    default = default_scratch_size()
    binds = () if binds is None else binds
    tmpfs = () if tmpfs is None else tmpfs
    # One item given instead of a list of them.
    if isinstance(binds, (str, bytes, os.PathLike)) or (
        isinstance(binds, tuple) and binds and not isinstance(binds[0], tuple)
    ):
        raise TypeError("binds must be a list of (host_path, container_path[, 'ro'|'rw'])")
    if isinstance(tmpfs, (str, bytes, os.PathLike)) or (
        isinstance(tmpfs, tuple) and len(tmpfs) > 1 and isinstance(tmpfs[1], int)
    ):
        raise TypeError("tmpfs must be a list of paths or (path, size[, mode]) tuples")
    return MountPlan(
        scratch_size=default if scratch_size is None else size(scratch_size, "scratch_size"),
        shm_size=SHM_SIZE if shm_size is None else size(shm_size, "shm_size"),
        binds=tuple(_bind(item) for item in binds),
        tmpfs=tuple(_tmpfs(item, default) for item in tmpfs),
    )


def open_sources(plan: MountPlan) -> list[int]:
    """Open each bind source (O_PATH): the fd pins what gets mounted.

    Raises an OSError subclass naming a missing source, ValueError for a
    device node; closes what it opened then.
    """
    fds: list[int] = []
    try:
        for source, _, _ in plan.binds:
            try:
                fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
            except OSError as error:
                raise spawn_error("bind", error.errno or 0, os.fsdecode(source)) from None
            fds.append(fd)
            mode = os.fstat(fd).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                raise ValueError(
                    f"bind source {os.fsdecode(source)!r} is a device node; every mount "
                    "pycontain makes is nodev, so it could not be opened in the container"
                )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def core_binds(plan: MountPlan, fds: list[int]) -> list[tuple[bytes, int, bytes, bool]]:
    """_core.spawn's binds: each with the fd open_sources opened on it."""
    return [
        (source, fd, target, read_only)
        for (source, target, read_only), fd in zip(plan.binds, fds, strict=True)
    ]
