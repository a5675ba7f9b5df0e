"""What a program changed: decoding, copying and applying an overlayfs upper layer.

A service with no knowledge of Process: it reads an upper directory (the
container's writable layer) against the read-only layers below it, the way
overlayfs merges them (docs/changes.md):

- an entry of the upper that no layer has is *added*; one that a layer has
  is *modified* (a directory that exists below and is still there is
  modified when anything in it changed, as ``docker diff`` shows it);
- a whiteout (a 0:0 character device, or an empty file with the
  ``overlay.whiteout`` xattr) is a *deleted* entry;
- an opaque directory (``overlay.opaque`` = ``y``) hides everything below
  it: what a layer had there and the upper has not is *deleted*;
- a metacopy file (``overlay.metacopy``) changed only its metadata;
- a redirected directory (``overlay.redirect``) was renamed from elsewhere.

The xattrs are ``trusted.overlay.*`` (pycontain as root) or
``user.overlay.*`` (overlayfs' ``userxattr`` option, used in user
namespaces). Every path is resolved beneath a held directory fd, one
component at a time with ``O_NOFOLLOW``, so neither a symlink the program
made in its writable layer nor one a layer holds can lead outside: the
program may still be running and be hostile.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Change", "apply_to", "commit", "docker_lines", "read_changes"]

Action = Literal["added", "modified", "deleted"]
Kind = Literal["file", "dir", "symlink", "device", "fifo", "socket"]

_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, order=True)
class Change:
    """One changed path, as the program inside the container saw it.

    ``path`` is absolute inside the container (``str``; a non-UTF-8 name
    keeps its bytes as surrogates: ``os.fsencode(change.path)``). ``size``
    is the file's size in bytes for files (``None`` otherwise).
    ``renamed_from`` is set for a directory overlayfs redirected (renamed
    within the layers).
    """

    path: str
    action: Action
    kind: Kind
    size: int | None = None
    renamed_from: str | None = None

    def docker(self) -> str:
        """The ``docker diff`` line: ``A /path``, ``C /path`` or ``D /path``."""
        return f"{'ACD'[('added', 'modified', 'deleted').index(self.action)]} {self.path}"


def docker_lines(changes: Iterable[Change]) -> list[str]:
    return [change.docker() for change in changes]


def check_format(format: str | None) -> None:
    if format not in (None, "docker"):
        raise ValueError(f"format must be None or 'docker', not {format!r}")


def report(upper_fd: int, layers: Sequence[bytes], format: str | None) -> list[Change] | list[str]:
    """read_changes, as Changes or (format="docker") as docker diff's lines."""
    check_format(format)
    found = read_changes(upper_fd, layers)
    return docker_lines(found) if format == "docker" else found


def _kind(mode: int) -> Kind:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "file"


def _xattr(name: bytes, key: str, dir_fd: int, info: os.stat_result) -> bytes | None:
    """Overlayfs' xattr ``key`` of an entry, in either namespace, or None."""
    if stat.S_ISLNK(info.st_mode):
        return None  # overlayfs keeps no markers on symlinks
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        # getxattr on an O_PATH fd goes through /proc/self/fd (no following).
        path = f"/proc/self/fd/{fd}"
        for prefix in _XATTR_PREFIXES:
            try:
                return os.getxattr(path, prefix + key.encode())
            except OSError as error:
                if error.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                    raise
        return None
    finally:
        os.close(fd)


def _is_whiteout(name: bytes, dir_fd: int, info: os.stat_result) -> bool:
    if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
        return True
    # Linux 6.7+: an empty regular file marked as a whiteout by xattr.
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_size == 0
        and _xattr(name, "whiteout", dir_fd, info) is not None
    )


def _lstat(name: bytes, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


class _Lower:
    """The read-only layers at one directory: the fds of the directories
    that merge there, uppermost first (overlayfs' lower stack)."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def find(self, name: bytes) -> os.stat_result | None:
        """What the layers show at ``name``: None when nothing (or a whiteout)."""
        for fd in self.fds:
            info = _lstat(name, fd)
            if info is None:
                continue
            return None if _is_whiteout(name, fd, info) else info
        return None

    def child(self, name: bytes) -> _Lower:
        """The stack of the subdirectory ``name``."""
        fds: list[int] = []
        for fd in self.fds:
            info = _lstat(name, fd)
            if info is None:
                continue
            if not stat.S_ISDIR(info.st_mode):
                break  # a non-directory (or a whiteout) hides the layers below
            try:
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=fd))
            except OSError:
                break
            if _xattr(name, "opaque", fd, info) == b"y":
                break
        return _Lower(fds)

    def names(self) -> set[bytes]:
        """Every name the layers show here."""
        seen: set[bytes] = set()
        hidden: set[bytes] = set()
        for fd in self.fds:
            for entry in _entries(fd):
                if entry in seen or entry in hidden:
                    continue
                info = _lstat(entry, fd)
                if info is None:
                    continue
                (hidden if _is_whiteout(entry, fd, info) else seen).add(entry)
        return seen

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _entries(dir_fd: int) -> list[bytes]:
    # listdir on an fd gives str names (surrogate-escaped); keep the bytes.
    return sorted(os.fsencode(name) for name in os.listdir(dir_fd))


def _open_lower(layers: Sequence[bytes]) -> _Lower:
    fds: list[int] = []
    try:
        for layer in layers:
            fds.append(os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except BaseException:
        _Lower(fds).close()
        raise
    return _Lower(fds)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name


def _walk(
    upper_fd: int, layers: Sequence[bytes]
) -> Iterator[tuple[bytes, int, bytes, os.stat_result, _Lower]]:
    """(container path, parent dir fd, name, lstat, lower stack of the parent)
    for every entry of the upper, parents before children, in name order.

    The fds yielded are valid until the next step of the iteration.
    """
    top = os.dup(upper_fd)
    root_lower = _open_lower(layers)
    # Each frame: (dir fd, its container path, its lower stack, its entries left).
    frames = [(top, b"/", root_lower, iter(_entries(top)))]
    try:
        while frames:
            dir_fd, path, lower, names = frames[-1]
            name = next(names, None)
            if name is None:
                frames.pop()
                os.close(dir_fd)
                lower.close()
                continue
            info = _lstat(name, dir_fd)
            if info is None:
                continue  # removed meanwhile: the program is still running
            yield _join(path, name), dir_fd, name, info, lower
            if stat.S_ISDIR(info.st_mode):
                try:
                    child_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue  # replaced meanwhile
                redirect = _xattr(name, "redirect", dir_fd, info)
                if _xattr(name, "opaque", dir_fd, info) == b"y":
                    child_lower = _Lower([])
                elif redirect is not None:
                    child_lower = _redirected(redirect, path, layers)
                else:
                    child_lower = lower.child(name)
                frames.append((child_fd, _join(path, name), child_lower, iter(_entries(child_fd))))
    finally:
        for dir_fd, _, lower, _ in frames:
            os.close(dir_fd)
            lower.close()


def _redirected(redirect: bytes, parent: bytes, layers: Sequence[bytes]) -> _Lower:
    """The lower stack of a directory renamed from ``redirect`` (absolute, or
    a name in the same parent)."""
    target = redirect if redirect.startswith(b"/") else _join(parent, redirect)
    lower = _open_lower(layers)
    try:
        for component in [part for part in target.split(b"/") if part]:
            child = lower.child(component)
            lower.close()
            lower = child
    except BaseException:
        lower.close()
        raise
    return lower


# The mount points pycontain makes in the writable layer when no layer has
# them: empty directories the program did not make (what it writes there
# lands in the mounted filesystem, not in the writable layer).
MOUNT_POINTS = frozenset({b"/proc", b"/sys", b"/dev"})


def read_changes(
    upper_fd: int, layers: Sequence[bytes], mount_points: frozenset[bytes] = MOUNT_POINTS
) -> list[Change]:
    """The changes recorded in the upper directory ``upper_fd`` over ``layers``
    (absolute paths, uppermost first), sorted by path; an empty directory
    added at one of ``mount_points`` is pycontain's, not a change."""
    changes: list[Change] = []
    for path, dir_fd, name, info, lower in _walk(upper_fd, layers):
        if (
            path in mount_points
            and stat.S_ISDIR(info.st_mode)
            and _is_empty(name, dir_fd)
            and lower.find(name) is None
        ):
            continue
        shown = os.fsdecode(path)
        if _is_whiteout(name, dir_fd, info):
            below = lower.find(name)
            if below is not None:
                changes.append(Change(shown, "deleted", _kind(below.st_mode)))
            continue
        kind = _kind(info.st_mode)
        size = info.st_size if kind == "file" else None
        below = lower.find(name)
        redirect = _xattr(name, "redirect", dir_fd, info) if kind == "dir" else None
        if redirect is not None:
            source = (
                redirect
                if redirect.startswith(b"/")
                else _join(path.rsplit(b"/", 1)[0] or b"/", redirect)
            )
            changes.append(Change(shown, "added", kind, size, os.fsdecode(source)))
            continue
        changes.append(Change(shown, "added" if below is None else "modified", kind, size))
        opaque = kind == "dir" and _xattr(name, "opaque", dir_fd, info) == b"y"
        if opaque and below is not None and stat.S_ISDIR(below.st_mode):
            changes.extend(_hidden_by_opaque(path, dir_fd, name, lower))
    changes.sort(key=lambda change: os.fsencode(change.path))
    return changes


def _is_empty(name: bytes, dir_fd: int) -> bool:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)


def _hidden_by_opaque(path: bytes, dir_fd: int, name: bytes, lower: _Lower) -> list[Change]:
    """An opaque directory over a lower one: the lower entries it hides are deleted."""
    below = lower.child(name)
    try:
        upper_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            present = set(_entries(upper_fd))
        finally:
            os.close(upper_fd)
        deleted = []
        for entry in sorted(below.names() - present):
            info = below.find(entry)
            if info is not None:
                deleted.append(
                    Change(os.fsdecode(_join(path, entry)), "deleted", _kind(info.st_mode))
                )
        return deleted
    finally:
        below.close()


# -- commit: the upper as a layer of its own -------------------------------------------------

# Overlayfs' own bookkeeping xattrs are not copied: they name inodes of the
# original layers (origin, impure, ...). Only the markers that make the copy
# stack correctly (opaque, and the xattr whiteout forms) and user xattrs are.
_KEPT_OVERLAY_XATTRS = (b"opaque", b"whiteout", b"whiteouts")


def _copy_xattrs(source_fd: int, target_fd: int) -> None:
    source, target = f"/proc/self/fd/{source_fd}", f"/proc/self/fd/{target_fd}"
    try:
        names = os.listxattr(source)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        raw = name.encode()
        keep = raw.startswith(b"user.") and not raw.startswith(b"user.overlay.")
        for prefix in _XATTR_PREFIXES:
            if raw.startswith(prefix):
                keep = raw[len(prefix) :] in _KEPT_OVERLAY_XATTRS
                if raw[len(prefix) :] in (b"metacopy", b"redirect"):
                    raise ValueError(
                        "commit: the writable layer uses overlayfs' metacopy or redirect_dir "
                        "(data or directories that stay in the layers below); pycontain "
                        "cannot make a standalone layer of it"
                    )
        if keep:
            os.setxattr(target, name, os.getxattr(source, name))


def _copy_metadata(info: os.stat_result, name: bytes, dir_fd: int, *, symlink: bool) -> None:
    if os.geteuid() == 0:
        os.chown(name, info.st_uid, info.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    if not symlink:
        os.chmod(name, stat.S_IMODE(info.st_mode), dir_fd=dir_fd)
    os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _copy_file(source_dir: int, name: bytes, target_dir: int, target_name: bytes) -> None:
    """Copy a regular file's data to a new file (mode 0600 until the caller sets it)."""
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_dir)
    try:
        target = os.open(
            target_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=target_dir,
        )
        try:
            try:
                while os.copy_file_range(source, target, 1 << 30):
                    pass
            except OSError as error:
                # Across filesystems before Linux 5.19, or where unsupported.
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                while chunk := os.read(source, 1 << 20):
                    os.write(target, chunk)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _copy_entry(
    dir_fd: int,
    name: bytes,
    info: os.stat_result,
    target_dir: int,
    links: dict[tuple[int, int], tuple[int, bytes]],
) -> None:
    """Copy one upper entry (not a directory) to ``target_dir``, keeping hard links."""
    key = (info.st_dev, info.st_ino)
    if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode) and key in links:
        first_dir, first_name = links[key]
        os.link(
            first_name, name, src_dir_fd=first_dir, dst_dir_fd=target_dir, follow_symlinks=False
        )
        return
    mode = info.st_mode
    if stat.S_ISREG(mode):
        _copy_file(dir_fd, name, target_dir, name)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=dir_fd), name, dir_fd=target_dir)
    else:  # devices (whiteouts among them), fifos, sockets
        os.mknod(name, mode, info.st_rdev, dir_fd=target_dir)
    if not stat.S_ISLNK(mode):
        _copy_entry_xattrs(dir_fd, name, target_dir)
    _copy_metadata(info, name, target_dir, symlink=stat.S_ISLNK(mode))
    if info.st_nlink > 1:
        links[key] = (os.dup(target_dir), name)


def _copy_entry_xattrs(dir_fd: int, name: bytes, target_dir: int) -> None:
    source = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=target_dir)
        try:
            _copy_xattrs(source, target)
        finally:
            os.close(target)
    finally:
        os.close(source)


def commit(upper_fd: int, destination: bytes) -> None:
    """Copy the upper directory to ``destination`` (which must not exist), as a
    layer: whiteouts and opaque directories kept, so that stacked above the
    same layers it shows what the program saw. Written beside it first and
    renamed into place, so ``destination`` appears whole or not at all."""
    destination = os.path.abspath(destination)
    parent, name = os.path.split(destination)
    if os.path.lexists(destination):
        raise FileExistsError(
            errno.EEXIST, "pycontain: commit destination exists", os.fsdecode(destination)
        )
    staging = os.fsencode(
        tempfile.mkdtemp(prefix=f".{os.fsdecode(name)}.pycontain-commit-", dir=os.fsdecode(parent))
    )
    links: dict[tuple[int, int], tuple[int, bytes]] = {}
    try:
        staging_fd = os.open(staging, _DIR_FLAGS)
        targets = {b"/": staging_fd}
        try:
            top = os.dup(upper_fd)
            try:
                top_info = os.fstat(top)
                os.chmod(staging_fd, stat.S_IMODE(top_info.st_mode))
                _copy_xattrs(top, staging_fd)
                if os.geteuid() == 0:
                    os.chown(staging_fd, top_info.st_uid, top_info.st_gid)
            finally:
                os.close(top)
            directories: list[tuple[bytes, os.stat_result]] = []
            for path, dir_fd, entry, info, _ in _walk(upper_fd, ()):
                parent_path = path.rsplit(b"/", 1)[0] or b"/"
                target_dir = targets[parent_path]
                if stat.S_ISDIR(info.st_mode):
                    os.mkdir(entry, 0o700, dir_fd=target_dir)
                    targets[path] = os.open(entry, _DIR_FLAGS, dir_fd=target_dir)
                    _copy_entry_xattrs(dir_fd, entry, target_dir)
                    directories.append((path, info))
                else:
                    _copy_entry(dir_fd, entry, info, target_dir, links)
            # Directory modes and times last: copying into them changed both.
            for path, info in reversed(directories):
                parent_path, entry = path.rsplit(b"/", 1)
                _copy_metadata(info, entry, targets[parent_path or b"/"], symlink=False)
        finally:
            for fd in targets.values():
                os.close(fd)
            for fd, _ in links.values():
                os.close(fd)
        os.rename(staging, destination)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- apply_to: chosen changes onto a host directory --------------------------------------------

Select = Callable[[Change], bool] | Iterable[str] | None


def _selector(select: Select) -> Callable[[Change], bool]:
    if select is None:
        return lambda change: True
    if callable(select):
        return select
    if isinstance(select, (str, bytes)):
        raise TypeError("select must be a callable or a list of container paths, not one path")
    roots = [os.fsencode(path).rstrip(b"/") or b"/" for path in select]

    def chosen(change: Change) -> bool:
        path = os.fsencode(change.path)
        return any(root == b"/" or path == root or path.startswith(root + b"/") for root in roots)

    return chosen


def _open_beneath(root_fd: int, parts: Sequence[bytes], create: bool) -> int:
    """The directory ``root/parts...``, never through a symlink (refused)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotADirectoryError(
                        errno.ENOTDIR,
                        "pycontain: apply_to does not follow or replace a non-directory on the way",
                        os.fsdecode(part),
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(dir_fd: int, name: bytes) -> None:
    info = _lstat(name, dir_fd)
    if info is None:
        return
    if stat.S_ISDIR(info.st_mode):
        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            for entry in _entries(child):
                _remove(child, entry)
        finally:
            os.close(child)
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def apply_to(
    upper_fd: int, changes: Sequence[Change], host_dir: bytes, select: Select
) -> list[Change]:
    """Make ``host_dir`` show the chosen changes; returns the ones applied.

    Files and symlinks are copied from the upper (each written beside and
    renamed into place), directories made, deleted paths removed. Device
    nodes, fifos and sockets are not applied, and set-user-ID and
    set-group-ID bits are dropped: what a program made must not become a
    privilege on the host. Nothing is followed through a symlink, in the
    upper or in ``host_dir``.
    """
    chosen = _selector(select)
    applied = []
    host_fd = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # Parent directories opened once each (changes come sorted, parents first).
    upper_dirs: dict[tuple[bytes, ...], int] = {}
    host_dirs: dict[tuple[bytes, ...], int] = {}

    def opened(
        cache: dict[tuple[bytes, ...], int], root: int, parts: tuple[bytes, ...], create: bool
    ) -> int:
        if parts not in cache:
            cache[parts] = _open_beneath(root, parts, create)
        return cache[parts]

    try:
        for change in sorted(changes, key=lambda change: os.fsencode(change.path)):
            if not chosen(change) or change.kind in ("device", "fifo", "socket"):
                continue
            *parents, name = [part for part in os.fsencode(change.path).split(b"/") if part]
            where = tuple(parents)
            if change.action == "deleted":
                try:
                    target = opened(host_dirs, host_fd, where, create=False)
                except FileNotFoundError:
                    applied.append(change)
                    continue
                _remove(target, name)
            else:
                source = opened(upper_dirs, upper_fd, where, create=False)
                target = opened(host_dirs, host_fd, where, create=True)
                _apply_one(source, target, name, change)
            # What was below this path is gone or replaced: forget its fds.
            below = (*where, name)
            for cache in (upper_dirs, host_dirs):
                for key in [key for key in cache if key[: len(below)] == below]:
                    os.close(cache.pop(key))
            applied.append(change)
    finally:
        for fd in [*upper_dirs.values(), *host_dirs.values()]:
            os.close(fd)
        os.close(host_fd)
    return applied


def _apply_one(source_dir: int, target_dir: int, name: bytes, change: Change) -> None:
    info = os.stat(name, dir_fd=source_dir, follow_symlinks=False)
    mode = stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
    existing = _lstat(name, target_dir)
    if change.kind == "dir":
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            os.unlink(name, dir_fd=target_dir)
            existing = None
        if existing is None:
            os.mkdir(name, mode, dir_fd=target_dir)
        os.chmod(name, mode, dir_fd=target_dir)
        return
    temporary = b".pycontain-apply-" + os.urandom(6).hex().encode() + b"-" + name[:64]
    if change.kind == "symlink":
        os.symlink(os.readlink(name, dir_fd=source_dir), temporary, dir_fd=target_dir)
    else:
        _copy_file(source_dir, name, target_dir, temporary)
        os.chmod(temporary, mode, dir_fd=target_dir)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        _remove(target_dir, name)
    os.rename(temporary, name, src_dir_fd=target_dir, dst_dir_fd=target_dir)
