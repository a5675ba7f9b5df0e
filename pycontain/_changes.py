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

The xattrs are in the namespace the overlay was mounted with, and only
there: ``trusted.overlay.*`` (pycontain as root) or ``user.overlay.*``
(overlayfs' ``userxattr`` option, used in user namespaces); in a trusted
mount, ``user.overlay.*`` is the program's own data, which it could forge.
Every path is resolved beneath a held directory fd, one component at a time
with ``O_NOFOLLOW``, so neither a symlink the program made in its writable
layer nor one a layer holds can lead outside: the program may still be
running and be hostile.
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

TRUSTED = b"trusted.overlay."  # a mount by real root
USER = b"user.overlay."  # a mount with userxattr (a user namespace)
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


def report(
    upper_fd: int,
    layers: Sequence[bytes],
    mount_points: Iterable[bytes],
    format: str | None,
    prefix: bytes = TRUSTED,
) -> list[Change] | list[str]:
    """read_changes, as Changes or (format="docker") as docker diff's lines."""
    check_format(format)
    found = read_changes(upper_fd, layers, mount_points, prefix)
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


def _lstat(name: bytes, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


class _Markers:
    """Overlayfs' markers, read in the namespace of one mount."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def get(self, name: bytes, key: str, dir_fd: int, info: os.stat_result) -> bytes | None:
        """The xattr ``prefix + key`` of an entry, or None."""
        if stat.S_ISLNK(info.st_mode):
            return None  # overlayfs keeps no markers on symlinks
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            # Through /proc/self/fd: getxattr on the O_PATH fd, following nothing.
            return os.getxattr(f"/proc/self/fd/{fd}", self.prefix + key.encode())
        except OSError as error:
            if error.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
            return None
        finally:
            os.close(fd)

    def is_whiteout(self, name: bytes, dir_fd: int, info: os.stat_result) -> bool:
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return True
        # Linux 6.7+: an empty regular file marked as a whiteout by xattr.
        return (
            stat.S_ISREG(info.st_mode)
            and info.st_size == 0
            and self.get(name, "whiteout", dir_fd, info) is not None
        )


class _Lower:
    """The read-only layers at one directory: the fds of the directories
    that merge there, uppermost first (overlayfs' lower stack)."""

    def __init__(self, fds: list[int], markers: _Markers) -> None:
        self.fds = fds
        self.markers = markers

    def find(self, name: bytes) -> os.stat_result | None:
        """What the layers show at ``name``: None when nothing (or a whiteout)."""
        for fd in self.fds:
            info = _lstat(name, fd)
            if info is None:
                continue
            return None if self.markers.is_whiteout(name, fd, info) else info
        return None

    def child(self, name: bytes) -> _Lower:
        """The stack of the subdirectory ``name`` (nothing for "." or "..")."""
        fds: list[int] = []
        if name in (b".", b".."):
            return _Lower(fds, self.markers)
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
            if self.markers.get(name, "opaque", fd, info) == b"y":
                break
        return _Lower(fds, self.markers)

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
                (hidden if self.markers.is_whiteout(entry, fd, info) else seen).add(entry)
        return seen

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _entries(dir_fd: int) -> list[bytes]:
    # listdir on an fd gives str names (surrogate-escaped); keep the bytes.
    return sorted(os.fsencode(name) for name in os.listdir(dir_fd))


def _open_lower(layers: Sequence[bytes], markers: _Markers) -> _Lower:
    lower = _Lower([], markers)
    try:
        for layer in layers:
            lower.fds.append(os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except BaseException:
        lower.close()
        raise
    return lower


def _join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"


def _walk(
    upper_fd: int, layers: Sequence[bytes], markers: _Markers
) -> Iterator[tuple[bytes, int, bytes, os.stat_result, _Lower]]:
    """(container path, parent dir fd, name, lstat, lower stack of the parent)
    for every entry of the upper, parents before children, in name order.

    The fds yielded are valid until the next step of the iteration. A
    directory holds its fds while its entries are walked: a tree as deep as
    the fd limit allows (about a thousandth of a directory per level per
    layer) is walked, a deeper one fails with EMFILE.
    """
    top = os.dup(upper_fd)
    root_lower = _open_lower(layers, markers)
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
                redirect = markers.get(name, "redirect", dir_fd, info)
                if markers.get(name, "opaque", dir_fd, info) == b"y":
                    child_lower = _Lower([], markers)
                elif redirect is not None:
                    child_lower = _redirected(redirect, path, layers, markers)
                else:
                    child_lower = lower.child(name)
                frames.append((child_fd, _join(path, name), child_lower, iter(_entries(child_fd))))
    finally:
        for dir_fd, _, lower, _ in frames:
            os.close(dir_fd)
            lower.close()


def _redirected(
    redirect: bytes, parent: bytes, layers: Sequence[bytes], markers: _Markers
) -> _Lower:
    """The lower stack of a directory renamed from ``redirect`` (absolute, or
    a name in the same parent); never above the layers' roots."""
    target = redirect if redirect.startswith(b"/") else _join(parent, redirect)
    lower = _open_lower(layers, markers)
    try:
        for component in [part for part in target.split(b"/") if part]:
            child = lower.child(component)  # empty for "." and ".."
            lower.close()
            lower = child
    except BaseException:
        lower.close()
        raise
    return lower


# The mount points pycontain makes in the writable layer when no layer has
# them: empty directories the program did not make (what it writes there
# lands in the mounted filesystem, not in the writable layer). Binds and
# tmpfs mounts add theirs (and the directories made on the way to them).
MOUNT_POINTS = frozenset({b"/proc", b"/sys", b"/dev"})


def read_changes(
    upper_fd: int,
    layers: Sequence[bytes],
    mount_points: Iterable[bytes] = MOUNT_POINTS,
    prefix: bytes = TRUSTED,
) -> list[Change]:
    """The changes recorded in the upper directory ``upper_fd`` over ``layers``
    (absolute paths, uppermost first), sorted by path. What pycontain made
    for ``mount_points`` (added empty directories or files there, and the
    directories on the way that hold nothing else) is not a change."""
    markers = _Markers(prefix)
    changes: list[Change] = []
    for path, dir_fd, name, info, lower in _walk(upper_fd, layers, markers):
        shown = os.fsdecode(path)
        if markers.is_whiteout(name, dir_fd, info):
            below = lower.find(name)
            if below is not None:
                changes.append(Change(shown, "deleted", _kind(below.st_mode)))
            continue
        kind = _kind(info.st_mode)
        size = info.st_size if kind == "file" else None
        below = lower.find(name)
        redirect = markers.get(name, "redirect", dir_fd, info) if kind == "dir" else None
        if redirect is not None:
            source = redirect if redirect.startswith(b"/") else _join(_parent(path), redirect)
            changes.append(Change(shown, "added", kind, size, os.fsdecode(source)))
            continue
        changes.append(Change(shown, "added" if below is None else "modified", kind, size))
        opaque = kind == "dir" and markers.get(name, "opaque", dir_fd, info) == b"y"
        if opaque and below is not None and stat.S_ISDIR(below.st_mode):
            changes.extend(_hidden_by_opaque(path, dir_fd, name, lower))
    changes.sort(key=lambda change: os.fsencode(change.path))
    return _without_mount_points(changes, mount_points)


def _without_mount_points(changes: list[Change], mount_points: Iterable[bytes]) -> list[Change]:
    made = set()
    for point in mount_points:
        while point not in (b"/", b""):
            made.add(point)
            point = _parent(point)
    ours = {
        change.path
        for change in changes
        if change.action == "added"
        and os.fsencode(change.path) in made
        and (change.kind == "dir" or (change.kind == "file" and change.size == 0))
    }
    if not ours:
        return changes
    # Pycontain's only if nothing the program did lies beneath it.
    for change in changes:
        if change.path not in ours:
            ours = {path for path in ours if not change.path.startswith(path + "/")}
    return [change for change in changes if change.path not in ours]


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


# -- copying a file the program may still be changing -----------------------------------------


def _copy_file(
    source_dir: int, name: bytes, target_dir: int, target_name: bytes, mode: int
) -> None:
    """Copy a regular file to a new file of mode ``mode``, holes kept.

    The source is opened without following a symlink and without blocking
    (a fifo put in its place would block an open for ever), and must still be
    a regular file. Only the data is copied, around the holes: a sparse file
    takes no more room in the copy than in the writable layer.
    """
    source = os.open(
        name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=source_dir
    )
    try:
        info = os.fstat(source)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(
                errno.ESTALE,
                "pycontain: replaced by a non-file while being copied",
                os.fsdecode(name),
            )
        target = os.open(
            target_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=target_dir,
        )
        try:
            _copy_data(source, target, info.st_size)
            os.ftruncate(target, info.st_size)
            os.fchmod(target, mode)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _copy_data(source: int, target: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return  # only a hole is left
            raise
        end = min(os.lseek(source, start, os.SEEK_HOLE), size)
        while start < end:
            try:
                copied = os.copy_file_range(source, target, end - start, start, start)
            except OSError as error:
                # Across filesystems before Linux 5.19, or where unsupported.
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                chunk = os.pread(source, min(end - start, 1 << 20), start)
                copied = os.pwrite(target, chunk, start) if chunk else 0
            if copied == 0:
                return  # the file shrank meanwhile
            start += copied
        offset = end


# -- commit: the upper as a layer of its own -------------------------------------------------

# Overlayfs' own bookkeeping xattrs are not copied: they name inodes of the
# original layers (origin, impure, ...). Only the markers that make the copy
# stack correctly (opaque, and the xattr whiteout forms) and the program's
# user.* xattrs are.
_KEPT_MARKERS = (b"opaque", b"whiteout", b"whiteouts")
_SET_ID = stat.S_ISUID | stat.S_ISGID


def _copy_xattrs(source_fd: int, target_fd: int, markers: _Markers) -> None:
    source, target = f"/proc/self/fd/{source_fd}", f"/proc/self/fd/{target_fd}"
    try:
        names = os.listxattr(source)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        raw = name.encode()
        if raw.startswith(markers.prefix):
            marker = raw[len(markers.prefix) :]
            if marker in (b"metacopy", b"redirect"):
                raise ValueError(
                    "commit: the writable layer uses overlayfs' metacopy or redirect_dir "
                    "(data or directories that stay in the layers below); pycontain "
                    "cannot make a standalone layer of it"
                )
            keep = marker in _KEPT_MARKERS
        else:
            # Never an overlay marker of the other namespace: a later mount
            # with userxattr would obey what the program wrote.
            keep = raw.startswith(b"user.") and not raw.startswith(USER)
        if keep:
            os.setxattr(target, name, os.getxattr(source, name))


def _copy_entry_xattrs(dir_fd: int, name: bytes, target_dir: int, markers: _Markers) -> None:
    source = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=target_dir)
        try:
            _copy_xattrs(source, target, markers)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _copy_owner_and_times(info: os.stat_result, name: bytes, dir_fd: int) -> None:
    if os.geteuid() == 0:
        os.chown(name, info.st_uid, info.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


class _Staging:
    """The directories of a commit being written, open only along the current
    path of the walk (its fds stay as few as the tree is deep)."""

    def __init__(self, root_fd: int) -> None:
        # (container path, fd, the upper's lstat of it, for its metadata)
        self.open: list[tuple[bytes, int, os.stat_result | None]] = [(b"/", root_fd, None)]

    def directory(self, path: bytes) -> int:
        """The fd of directory ``path``, closing the ones the walk has left."""
        while self.open[-1][0] != path:
            self._leave()
        return self.open[-1][1]

    def enter(self, path: bytes, fd: int, info: os.stat_result) -> None:
        self.open.append((path, fd, info))

    def _leave(self) -> None:
        # Its mode and times last: copying into it changed its times, and
        # its mode may not allow the copying.
        path, fd, info = self.open.pop()
        assert info is not None
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~_SET_ID)
        _copy_owner_and_times(info, path.rsplit(b"/", 1)[1], self.open[-1][1])
        os.close(fd)

    def finish(self) -> None:
        while len(self.open) > 1:
            self._leave()

    def close(self) -> None:
        for _, fd, _ in self.open[1:]:
            os.close(fd)
        self.open[1:] = []


def commit(upper_fd: int, destination: bytes, prefix: bytes = TRUSTED) -> None:
    """Copy the upper directory to ``destination`` (which must not exist), as a
    layer: whiteouts and opaque directories kept, so that stacked above the
    same layers it shows what the program saw. Written beside it first and
    renamed into place, so ``destination`` appears whole or not at all.

    What the program made must not become a privilege on the host: set-user-ID
    and set-group-ID bits are dropped, and device nodes other than whiteouts
    are left out (pycontain mounts layers nosuid, nodev: they meant nothing).
    """
    markers = _Markers(prefix)
    destination = os.path.abspath(destination)
    parent, name = os.path.split(destination)
    if os.path.lexists(destination):
        raise FileExistsError(
            errno.EEXIST, "pycontain: commit destination exists", os.fsdecode(destination)
        )
    staging = os.fsencode(
        tempfile.mkdtemp(prefix=f".{os.fsdecode(name)}.pycontain-commit-", dir=os.fsdecode(parent))
    )
    try:
        staging_fd = os.open(staging, _DIR_FLAGS)
        try:
            _commit_into(upper_fd, staging_fd, markers)
        finally:
            os.close(staging_fd)
        os.rename(staging, destination)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit_into(upper_fd: int, staging_fd: int, markers: _Markers) -> None:
    top = os.fstat(upper_fd)
    os.fchmod(staging_fd, stat.S_IMODE(top.st_mode) & ~_SET_ID)
    if os.geteuid() == 0:
        os.fchown(staging_fd, top.st_uid, top.st_gid)
    _copy_xattrs(upper_fd, staging_fd, markers)
    # Hard links: the first copy's path (relative to the staging root), by
    # the upper's (device, inode).
    links: dict[tuple[int, int], bytes] = {}
    staging = _Staging(staging_fd)
    try:
        for path, dir_fd, entry, info, _ in _walk(upper_fd, (), markers):
            target_dir = staging.directory(_parent(path))
            mode = info.st_mode
            key = (info.st_dev, info.st_ino)
            if stat.S_ISDIR(mode):
                os.mkdir(entry, 0o700, dir_fd=target_dir)
                _copy_entry_xattrs(dir_fd, entry, target_dir, markers)
                staging.enter(path, os.open(entry, _DIR_FLAGS, dir_fd=target_dir), info)
                continue
            if info.st_nlink > 1 and key in links:
                os.link(
                    links[key],
                    entry,
                    src_dir_fd=staging_fd,
                    dst_dir_fd=target_dir,
                    follow_symlinks=False,
                )
                continue
            if stat.S_ISREG(mode):
                _copy_file(dir_fd, entry, target_dir, entry, stat.S_IMODE(mode) & ~_SET_ID)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(entry, dir_fd=dir_fd), entry, dir_fd=target_dir)
            elif markers.is_whiteout(entry, dir_fd, info) or stat.S_ISFIFO(mode):
                os.mknod(entry, mode & ~_SET_ID, info.st_rdev, dir_fd=target_dir)
            else:
                continue  # a device node or a socket: nothing of a layer
            if not stat.S_ISLNK(mode):
                _copy_entry_xattrs(dir_fd, entry, target_dir, markers)
            _copy_owner_and_times(info, entry, target_dir)
            if info.st_nlink > 1:
                links[key] = path.lstrip(b"/")
        staging.finish()
    finally:
        staging.close()


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
    privilege on the host. Nothing below ``host_dir`` or in the upper is
    followed through a symlink.
    """
    chosen = _selector(select)
    applied = []
    host_fd = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # Parent directories, opened once each while they are in use.
    upper_dirs: dict[tuple[bytes, ...], int] = {}
    host_dirs: dict[tuple[bytes, ...], int] = {}

    def opened(
        cache: dict[tuple[bytes, ...], int], root: int, parts: tuple[bytes, ...], create: bool
    ) -> int:
        if parts not in cache:
            if len(cache) >= _OPEN_DIRECTORIES:
                _close_all(cache)  # few fds, whatever the tree
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
        _close_all(upper_dirs)
        _close_all(host_dirs)
        os.close(host_fd)
    return applied


_OPEN_DIRECTORIES = 16  # per cache: the upper's and host_dir's


def _close_all(cache: dict[tuple[bytes, ...], int]) -> None:
    for fd in cache.values():
        os.close(fd)
    cache.clear()


def _apply_one(source_dir: int, target_dir: int, name: bytes, change: Change) -> None:
    info = os.stat(name, dir_fd=source_dir, follow_symlinks=False)
    mode = stat.S_IMODE(info.st_mode) & ~_SET_ID
    existing = _lstat(name, target_dir)
    if change.kind == "dir":
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            os.unlink(name, dir_fd=target_dir)
            existing = None
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=target_dir)
        # Through an fd opened without following: the name may have been
        # swapped for a symlink by anyone who can write host_dir.
        made = os.open(name, _DIR_FLAGS, dir_fd=target_dir)
        try:
            os.fchmod(made, mode)
        finally:
            os.close(made)
        return
    temporary = b".pycontain-apply-" + os.urandom(6).hex().encode() + b"-" + name[:64]
    if change.kind == "symlink":
        os.symlink(os.readlink(name, dir_fd=source_dir), temporary, dir_fd=target_dir)
    else:
        _copy_file(source_dir, name, target_dir, temporary, mode)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        _remove(target_dir, name)
    os.rename(temporary, name, src_dir_fd=target_dir, dst_dir_fd=target_dir)
