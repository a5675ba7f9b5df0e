"""Policy side of a spawn: check every input and build what the child needs.

Everything here runs in the parent before anything is spawned, so a bad
argument raises a clear exception and leaves nothing behind. The C core
gets only bytes and open fds (see docs/spawn.md).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _core, _lifecycle, _mounts, _privileges, _userns
from ._cgroup import Cgroup, Limits
from ._errors import SpawnError, TimeoutExpired, callback_error, spawn_error

# Re-exported: the package's modules take them from here.
from ._paths import StrOrBytesPath as StrOrBytesPath
from ._paths import to_bytes as to_bytes

Env = Mapping[str, str] | Mapping[bytes, bytes]

# Overlayfs stacks at most this many lower layers (OVL_MAX_STACK).
MAX_LAYERS = 500
# Paths in the C core's error records are cut to this many bytes
# (PC_DETAIL_MAX - 1 in csrc/error.h).
_DETAIL_CUT = 3979

# Candidates for the directory over which the child mounts its private
# tmpfs; any existing directory other than /proc works, since layers are
# named by fd (see csrc/overlay.c). Its host contents are hidden from a
# pre_pivot callback, so the first is one that is usually empty.
_SCRATCH_CANDIDATES = (b"/mnt", b"/tmp", b"/var/tmp", b"/srv", b"/opt", b"/run")
_scratch_dir: bytes | None = None

# Testing knob: the C core resolves container paths one component at a
# time, as on kernels without openat2 (tests/test_escape_rootfs.py).
_force_resolve_walk = False


def scratch_dir() -> bytes:
    global _scratch_dir
    if _scratch_dir is None:
        for candidate in _SCRATCH_CANDIDATES:
            if os.path.isdir(candidate) and not os.path.islink(candidate):
                _scratch_dir = candidate
                break
        else:
            raise spawn_error(
                "scratch-dir",
                errno.ENOENT,
                os.fsdecode(b":".join(_SCRATCH_CANDIDATES)),
                "pycontain needs one of these host directories to mount its private tmpfs over",
            )
    return _scratch_dir


def open_directory(path: bytes, role: str) -> int:
    """Open ``path`` as an O_PATH fd; the fd, not the path, is what gets mounted."""
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise spawn_error(role, error.errno or 0, os.fsdecode(path)) from None


def _inside(path: bytes, other: bytes) -> bool:
    return path == other or path.startswith(other.rstrip(b"/") + b"/")


@dataclass(frozen=True)
class ContainerPlan:
    """What every spawn of one container needs, checked and encoded once.

    Made by :func:`plan` when a :class:`pycontain.Container` is made, and
    reused by each of its spawns: only the per-spawn work (opening the
    directories, the work directory, the writedir claim) is left to
    :func:`prepare`.
    """

    layers: tuple[bytes, ...]  # as given, encoded (for messages)
    layer_paths: tuple[bytes, ...]  # absolute (for the child to reopen)
    writedir: bytes | None = None
    writedir_path: bytes | None = None  # absolute
    workdir: bytes | None = None
    workdir_path: bytes | None = None  # absolute
    settings: Settings = field(default_factory=lambda: Settings())
    netns_pool: bool = True
    keep_upper: bool = False  # hand the throwaway upper's fd to the parent
    limits: Limits | None = None  # None: no cgroup
    mounts: _mounts.MountPlan = field(default_factory=_mounts.check)
    # The container's life (pycontain/_lifecycle.py).
    init: bool = True
    die_with_parent: bool = True
    new_session: bool = True
    # A user namespace of its own (rootless mode, pycontain/_userns.py).
    userns: bool = False

    @property
    def xattr_prefix(self) -> bytes:
        """Where overlayfs keeps its markers in this container's writable layer."""
        return b"user.overlay." if self.userns else b"trusted.overlay."


@dataclass
class Prepared:
    """What one spawn needs, plus the resources to release after it."""

    plan: ContainerPlan
    argv: list[bytes]
    envp: list[bytes]
    exec_paths: list[bytes]
    cwd: bytes | None
    layer_fds: list[int] = field(default_factory=list)
    upper_fd: int = -1
    work_path: bytes | None = None
    work_fd: int = -1
    created_workdir: bytes | None = None
    writedir_lock: int = -1  # an fd holding the writedir's flock
    bind_fds: list[int] = field(default_factory=list)  # one per plan.mounts.binds
    # With plan.keep_upper and no writedir: the socket pair the child sends
    # the upper's fd over (ours, the child's), and the fd received.
    upper_sockets: tuple[socket.socket, socket.socket] | None = None
    kept_upper: int = -1
    # fds for 0, 1, 2 (-1: inherit) and further fds to pass; not owned here.
    stdio: tuple[int, int, int] = (-1, -1, -1)
    pass_fds: tuple[int, ...] = ()

    def close_fds(self) -> None:
        for fd in [*self.layer_fds, self.upper_fd, self.work_fd, *self.bind_fds]:
            if fd >= 0:
                os.close(fd)
        self.layer_fds, self.upper_fd, self.work_fd, self.bind_fds = [], -1, -1, []
        if self.upper_sockets is not None:
            for end in self.upper_sockets:
                end.close()
            self.upper_sockets = None

    def release(self) -> None:
        """Undo everything prepare() made: fds, a workdir it created, the claim."""
        self.close_fds()
        if self.kept_upper >= 0:
            os.close(self.kept_upper)
            self.kept_upper = -1
        remove_workdir(self.created_workdir)
        self.created_workdir = None
        release_writedir(self.writedir_lock)
        self.writedir_lock = -1


@dataclass
class Settings:
    """The declarative settings applied inside the container, checked."""

    hostname: bytes | None = None
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    groups: list[int] | None = None
    gid: int = -1
    uid: int = -1
    umask: int = -1
    privileges: _privileges.Privileges = field(default_factory=_privileges.Privileges)


# rlimits={"nofile": (soft, hard)}: the names of resource.RLIMIT_* in lower case.
RLIMIT_NAMES = {
    name[len("RLIMIT_") :].lower(): getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_")
}
_HOST_NAME_MAX = 64


def _id(value: int | None, what: str) -> int:
    if value is None or value == -1:
        return -1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (a number, not a name), not {type(value).__name__}")
    if not 0 <= value < 2**32 - 1:
        raise ValueError(f"{what} out of range: {value}")
    return value


def _limit(value: int | None, what: str) -> int:
    if value is None:
        return resource.RLIM_INFINITY
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int or None (unlimited)")
    if value == resource.RLIM_INFINITY:
        return value
    if not 0 <= value < 2**64:
        raise ValueError(f"{what} out of range (0 to 2**64 - 1): {value}")
    return value


def settings(
    *,
    hostname: str | bytes | None = None,
    rlimits: Mapping[str | int, int | tuple[int | None, int | None]] | None = None,
    groups: Iterable[int] | None = None,
    gid: int | None = None,
    uid: int | None = None,
    umask: int | None = None,
    capabilities: Iterable[str] | None = None,
    privileged: bool = False,
    seccomp: _privileges.Seccomp = "default",
    network: _privileges.Network = "none",
    userns: bool = False,
) -> Settings:
    """Check the declarative settings; raises ValueError/TypeError.

    ``userns``: the container gets a user namespace (rootless mode,
    pycontain/_userns.py), which refuses what it cannot honour."""
    checked = Settings(gid=_id(gid, "gid"), uid=_id(uid, "uid"))
    checked.privileges = _privileges.check(
        capabilities=capabilities,
        privileged=privileged,
        seccomp=seccomp,
        network=network,
        uid=checked.uid,
        userns=userns,
    )
    if hostname is not None:
        name = to_bytes(hostname, "hostname")
        if not name or len(name) > _HOST_NAME_MAX:
            raise ValueError(f"hostname must be 1 to {_HOST_NAME_MAX} bytes long: {hostname!r}")
        checked.hostname = name
    for key, value in (rlimits or {}).items():
        if isinstance(key, str):
            if key.lower() not in RLIMIT_NAMES:
                raise ValueError(
                    f"unknown rlimit {key!r}; known: {', '.join(sorted(RLIMIT_NAMES))}"
                )
            number = RLIMIT_NAMES[key.lower()]
        elif isinstance(key, int) and key in RLIMIT_NAMES.values():
            number = key
        else:
            raise ValueError(f"unknown rlimit {key!r}")
        soft, hard = value if isinstance(value, tuple) else (value, value)
        soft, hard = _limit(soft, f"rlimit {key!r} soft"), _limit(hard, f"rlimit {key!r} hard")
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            raise ValueError(f"rlimit {key!r}: soft limit {soft} exceeds hard limit {hard}")
        checked.rlimits.append((number, soft, hard))
    if groups is not None:
        checked.groups = [_id(group, "groups item") for group in groups]
        if -1 in checked.groups:
            raise ValueError("groups items must be group ids")
    if umask is not None and umask != -1:
        if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
            raise ValueError(f"umask must be an int from 0 to 0o777, not {umask!r}")
        checked.umask = umask
    if userns:
        _userns.check_settings(
            uid=checked.uid,
            gid=checked.gid,
            groups=checked.groups,
            rlimits=checked.rlimits,
            host_network=network == "host",
        )
    return checked


# Writable layers in use: overlayfs leaves two mounts sharing an upper
# directory undefined ("upperdir is in-use"), so a spawn takes an exclusive
# flock on the writedir, on an fd of its own, for the container's life. A
# flock belongs to the open file description: it stops a second container
# of this process and of any other process alike, and it goes when the
# holder closes the fd or dies. Forked children close their copies (at fork)
# so that a multiprocessing worker does not keep a writedir locked.
_writedir_locks: set[int] = set()
_writedir_locks_guard = threading.Lock()


def _lock_writedir(upper_fd: int, path: bytes) -> int:
    """An fd of the writedir holding its lock; ValueError if another holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise spawn_error("writedir", error.errno or 0, os.fsdecode(path)) from None
    try:
        first, now = os.fstat(upper_fd), os.fstat(fd)
        if (first.st_dev, first.st_ino) != (now.st_dev, now.st_ino):
            raise spawn_error("writedir", errno.ESTALE, os.fsdecode(path))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"writedir {os.fsdecode(path)!r} is the writable layer of a running container "
            "(of this or another process); overlayfs does not allow two at once"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    with _writedir_locks_guard:
        _writedir_locks.add(fd)
    return fd


def release_writedir(fd: int) -> None:
    if fd >= 0:
        with _writedir_locks_guard:
            _writedir_locks.discard(fd)
        os.close(fd)


def _close_writedir_locks_in_child() -> None:
    for fd in _writedir_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _writedir_locks.clear()


os.register_at_fork(after_in_child=_close_writedir_locks_in_child)


def remove_workdir(path: bytes | None) -> None:
    if path is not None:
        # The overlay made a mode-000 "work" directory in it: root removes it
        # as it is, its owner (rootless mode) must open it up first.
        if os.geteuid() != 0:
            _open_up(path)
        shutil.rmtree(path, ignore_errors=True)


def _open_up(path: bytes) -> None:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    os.chmod(entry.path, 0o700)
                    _open_up(entry.path)
    except OSError:
        pass  # rmtree ignores what is left


def _argv(args: StrOrBytesPath | Sequence[StrOrBytesPath]) -> list[bytes]:
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    argv = [to_bytes(arg, "args item") for arg in args]
    if not argv:
        raise ValueError("args must not be empty")
    return argv


def _envp(env: Env | None) -> tuple[list[bytes], Env]:
    if env is None:
        # os.environ already refuses NUL bytes and "=" in names.
        return [name + b"=" + value for name, value in os.environb.items()], os.environb
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of names to values, not {type(env).__name__}")
    envp = []
    for key, value in env.items():
        name = to_bytes(key, "env name")
        if not name or b"=" in name:
            raise ValueError(f"illegal environment variable name: {key!r}")
        envp.append(name + b"=" + to_bytes(value, f"env[{key!r}]"))
    return envp, env


def _exec_paths(executable: bytes, env: Env) -> list[bytes]:
    """Where to look for the program inside the container, as execvpe does."""
    if b"/" in executable:
        return [executable]
    # os.get_exec_path reads PATH from a str or a bytes environment alike.
    path_env: Any = env
    return [
        os.path.join(os.fsencode(directory), executable) for directory in os.get_exec_path(path_env)
    ]


def _layer_paths(layers: Iterable[StrOrBytesPath]) -> list[bytes]:
    if isinstance(layers, (str, bytes, os.PathLike)):
        raise TypeError("layers must be a list of directories, not a single path")
    paths = [to_bytes(layer, "layer") for layer in layers]
    if not paths:
        raise ValueError("layers must name at least one directory")
    if len(paths) > MAX_LAYERS:
        raise ValueError(f"overlayfs stacks at most {MAX_LAYERS} layers, got {len(paths)}")
    return paths


def plan(
    *,
    layers: Iterable[StrOrBytesPath],
    writedir: StrOrBytesPath | None,
    workdir: StrOrBytesPath | None,
    settings: Settings,
    netns_pool: bool,
    limits: Limits | None = None,
    mounts: _mounts.MountPlan | None = None,
    keep_upper: bool = False,
    init: bool = True,
    die_with_parent: bool = True,
    new_session: bool = True,
    userns: bool = False,
) -> ContainerPlan:
    """Check a container's directories and encode them, once per container.

    Raises what a spawn with them would raise (ValueError, TypeError, an
    OSError subclass naming a missing directory) and keeps nothing open.
    """
    if userns:
        # Before anything else: nothing can run where the system forbids it.
        refused = _userns.refusal(_userns.caller_has_sys_admin())
        if refused is not None:
            raise PermissionError(errno.EPERM, f"pycontain: {refused}")
    layer_paths = _layer_paths(layers)
    writedir_path = None if writedir is None else to_bytes(writedir, "writedir")
    workdir_path = None if workdir is None else to_bytes(workdir, "workdir")
    if workdir_path is not None and writedir_path is None:
        raise ValueError("workdir is only used together with writedir")
    # Where the layers really are, for the nesting check (not needed for one).
    real_layers = [os.path.realpath(layer) for layer in layer_paths] if len(layer_paths) > 1 else []
    _check_layers_apart(layer_paths, real_layers)
    scratch_dir()
    for layer in layer_paths:
        os.close(open_directory(layer, "layer"))
    if writedir_path is not None:
        os.close(open_directory(writedir_path, "writedir"))
        _check_writedir(writedir_path, layer_paths)
        if workdir_path is None:
            _check_workdir_room(writedir_path)
        else:
            os.close(open_directory(workdir_path, "workdir"))
    mounts = _mounts.check() if mounts is None else mounts
    for fd in _mounts.open_sources(mounts):
        os.close(fd)
    if userns:
        _userns.check_directories(
            [("layer", layer) for layer in layer_paths]
            + [("bind source", source) for source, _, _ in mounts.binds if os.path.isdir(source)]
        )
    return ContainerPlan(
        layers=tuple(layer_paths),
        layer_paths=tuple(os.path.abspath(layer) for layer in layer_paths),
        writedir=writedir_path,
        writedir_path=None if writedir_path is None else os.path.abspath(writedir_path),
        workdir=workdir_path,
        workdir_path=None if workdir_path is None else os.path.abspath(workdir_path),
        settings=settings,
        # A user namespace's sysfs needs a network namespace it owns, and the
        # pool's belong to the host's (README, "Rootless").
        netns_pool=netns_pool and not userns,
        keep_upper=keep_upper,
        limits=limits,
        mounts=mounts,
        init=init,
        die_with_parent=die_with_parent,
        new_session=new_session,
        userns=userns,
    )


def prepare_program(
    plan: ContainerPlan,
    args: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    executable: StrOrBytesPath | None,
    cwd: StrOrBytesPath | None,
    env: Env | None,
) -> Prepared:
    """The program's part of :func:`prepare` (checked strings, no fds): what a
    warm pool entry needs (pycontain/_pool.py)."""
    argv = _argv(args)
    program = argv[0] if executable is None else to_bytes(executable, "executable")
    if not program:
        raise ValueError("executable must not be empty")
    envp, env = _envp(env)
    return Prepared(
        plan=plan,
        argv=argv,
        envp=envp,
        exec_paths=_exec_paths(program, env),
        cwd=None if cwd is None else to_bytes(cwd, "cwd"),
    )


def prepare(
    plan: ContainerPlan,
    args: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    executable: StrOrBytesPath | None,
    cwd: StrOrBytesPath | None,
    env: Env | None,
) -> Prepared:
    """Check the program's inputs, build its strings and open the container's fds.

    Raises before anything is created; on success the caller owns the
    result and must call ``release()``.
    """
    prepared = prepare_program(plan, args, executable=executable, cwd=cwd, env=env)
    try:
        for layer in plan.layers:
            prepared.layer_fds.append(open_directory(layer, "layer"))
        if plan.writedir is not None:
            prepared.upper_fd = open_directory(plan.writedir, "writedir")
            prepared.writedir_lock = _lock_writedir(prepared.upper_fd, plan.writedir)
            if plan.workdir is None:
                prepared.created_workdir = _make_workdir(plan.writedir)
                workdir = prepared.created_workdir
            else:
                workdir = plan.workdir
            prepared.work_fd = open_directory(workdir, "workdir")
            prepared.work_path = os.path.abspath(workdir)
        prepared.bind_fds = _mounts.open_sources(plan.mounts)
        if plan.keep_upper and plan.writedir is None:
            prepared.upper_sockets = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    except BaseException:
        prepared.release()
        raise
    return prepared


def _check_layers_apart(layers: list[bytes], real: list[bytes]) -> None:
    # Overlayfs refuses a layer that is, or is inside, another layer (with a
    # bare ELOOP): say so in words before anything starts.
    for i, outer in enumerate(real):
        for j, inner in enumerate(real):
            if i != j and _inside(inner, outer):
                same = "is the same directory as" if inner == outer else "is inside"
                raise ValueError(
                    f"layer {os.fsdecode(layers[j])!r} {same} layer "
                    f"{os.fsdecode(layers[i])!r}; overlayfs needs layers to be separate trees"
                )


def _identities(path: bytes) -> list[tuple[int, int]]:
    """(device, inode) of ``path`` and of each directory above it, up to "/".

    Compared by identity rather than by name, so that a symlink or a bind
    mount (of "/" elsewhere, say) cannot hide that two directories nest.
    """
    found = []
    current = os.path.realpath(path)
    while True:
        info = os.stat(current)
        found.append((info.st_dev, info.st_ino))
        if current == b"/":
            return found
        current = os.path.dirname(current)


def _check_writedir(writedir: bytes, layers: list[bytes]) -> None:
    # Overlayfs allows the writable layer inside a layer (the host's "/" as
    # a layer with a writedir on it is the common case): looked up through
    # the overlay, the writedir and its work directory are then unreachable
    # (ELOOP). It refuses a layer that is the writable layer or is inside it.
    writedir_id = _identities(writedir)[0]
    for layer in layers:
        if writedir_id in _identities(layer):
            raise ValueError(
                f"writedir {os.fsdecode(writedir)!r} overlaps layer {os.fsdecode(layer)!r}: "
                "the layer is the writedir or inside it, which overlayfs refuses"
            )


def _check_workdir_room(writedir: bytes) -> bytes:
    """The real path of ``writedir``, if overlayfs' work directory fits beside it."""
    real = os.path.realpath(writedir)
    if os.path.ismount(real):
        raise ValueError(
            f"writedir {os.fsdecode(writedir)!r} is a mount point, so pycontain cannot put "
            "overlayfs' work directory beside it; pass workdir= an empty directory on the "
            "same mount"
        )
    return real


def _make_workdir(writedir: bytes) -> bytes:
    """Make overlayfs' work directory beside ``writedir``.

    Overlayfs needs it on the same mount as the writable layer, and not
    inside it; a hidden sibling is the only place that guarantees both. It
    is removed when the container has been waited for.
    """
    parent, name = os.path.split(_check_workdir_room(writedir))
    try:
        return os.fsencode(
            tempfile.mkdtemp(
                prefix=f".{os.fsdecode(name)}.pycontain-work-", dir=os.fsdecode(parent)
            )
        )
    except OSError as error:
        raise spawn_error("workdir", error.errno or 0, os.fsdecode(parent)) from None


def spawn(
    prepared: Prepared,
    *,
    force_legacy_clone: bool = False,
    hooks: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    args: object = None,
    trace: Any = None,
    cgroup: Cgroup | None = None,
    request_fd: int = -1,
    nice: int | None = None,
) -> tuple[int, int, int, int]:
    """Start the container; returns (pid, pidfd, mntns, status_fd) or raises SpawnError.

    With the plan's ``init`` the container's PID 1 is pycontain's init (pid
    and pidfd are the init's), which has started the program when this
    returns; status_fd is the init's status pipe, from which
    _lifecycle.program_returncode reads the program's status once the init
    has been reaped (-1 without the init). ``die_with_parent`` makes the
    init kill the container when this process exits; ``new_session`` puts
    the container in a session of its own.

    mntns (-1 when the namespace worker does not run) is a handle on the
    container's mount namespace: drop it with _core.release after the
    container has been reaped. ``trace``: see _core.spawn (bench/trace.py).

    ``hooks`` (from _callbacks.spawn_arguments) or a ``timeout`` take the
    fork path; a spawn that outlives ``timeout`` is killed and raises
    TimeoutExpired. ``cgroup`` (from _cgroup.create) is where the container
    starts. ``request_fd`` >= 0 makes a warm pool entry (pycontain/_pool.py):
    its init waits for a request on that socket instead of starting the
    prepared program, and this returns as soon as the init runs. ``nice``:
    the niceness the child sets before it drops its capabilities (a pool's
    refill thread runs at a lower one).
    """
    plan = prepared.plan
    settings, mounts = plan.settings, plan.mounts
    deadline = None if timeout is None or timeout == math.inf else time.monotonic() + timeout
    # An infinite timeout is none; a finite one is capped at INT_MAX ms
    # (about 24.8 days), which is what the C side's poll() takes.
    if timeout is None or timeout == math.inf:
        timeout_ms = -1
    else:
        timeout_ms = min(max(0, math.ceil(timeout * 1000)), 2**31 - 1)
    # pycontain.call runs a function in place of the exec: no program for
    # an init to start.
    runs_a_program = (hooks or {}).get("main") is None
    uid_map, gid_map = _userns.maps() if plan.userns else (None, None)
    init = (
        _lifecycle.plan(
            prepared.exec_paths,
            prepared.argv,
            die_with_parent=plan.die_with_parent,
            request_fd=request_fd,
        )
        if plan.init and runs_a_program
        else None
    )
    try:
        pid, pidfd, mntns = _core.spawn(
            argv=prepared.argv,
            envp=prepared.envp,
            exec_paths=prepared.exec_paths,
            cwd=prepared.cwd,
            layer_paths=list(plan.layer_paths),
            layer_fds=prepared.layer_fds,
            upper_path=plan.writedir_path,
            upper_fd=prepared.upper_fd,
            work_path=prepared.work_path,
            work_fd=prepared.work_fd,
            scratch_dir=scratch_dir(),
            namespaces=settings.privileges.namespaces,
            stdio=list(prepared.stdio),
            pass_fds=list(prepared.pass_fds),
            hostname=settings.hostname,
            rlimits=settings.rlimits,
            groups=settings.groups,
            gid=settings.gid,
            uid=settings.uid,
            umask=settings.umask,
            force_legacy_clone=force_legacy_clone,
            timeout_ms=timeout_ms,
            use_netns_pool=plan.netns_pool,
            privileged=settings.privileges.privileged,
            capabilities=settings.privileges.capabilities,
            last_capability=_privileges.last_capability(),
            seccomp=settings.privileges.seccomp,
            new_session=_privileges.has_controlling_terminal(),
            trace=trace,
            cgroup_fd=-1 if cgroup is None else cgroup.dir_fd,
            cgroup_procs_fds=[] if cgroup is None else cgroup.procs_fds,
            force_resolve_walk=_force_resolve_walk,
            scratch_size=mounts.scratch_size,
            dev_size=_mounts.DEV_SIZE,
            dev_inodes=_mounts.DEV_INODES,
            shm_size=mounts.shm_size,
            binds=_mounts.core_binds(mounts, prepared.bind_fds),
            tmpfs=list(mounts.tmpfs),
            upper_socket=-1
            if prepared.upper_sockets is None
            else prepared.upper_sockets[1].fileno(),
            init_fd=-1 if init is None else init.init_fd,
            init_argv=None if init is None else init.argv,
            init_keep_fds=[] if init is None else init.keep_fds,
            stay_in_caller_group=not plan.new_session,
            uid_map=uid_map,
            gid_map=gid_map,
            nice=nice,
            **(hooks or {}),
        )
    except _core.StepError as failure:
        if init is not None:
            init.close()
        step, err, detail, status = failure.args
        if step == "timeout":
            raise TimeoutExpired(args, timeout) from None  # type: ignore[arg-type]
        if step in ("pre_pivot", "pre_exec"):
            raise callback_error(step, err, os.fsdecode(detail), status) from None
        if step == "join-cgroup" and cgroup is not None:
            raise spawn_error(step, err, cgroup.path) from None
        raise _translate(prepared, step, err, detail) from None
    except BaseException:
        if init is not None:
            init.close()
        raise
    # A caller that closed its stdio has 0, 1, 2 free for the kernel to give
    # the pidfd; it may later dup2 its own files there, silently closing it
    # (and our eventual close would then close its file).
    pidfd = _lifecycle.lift_above_stdio(pidfd)
    if prepared.upper_sockets is not None:
        prepared.kept_upper = _receive_upper(prepared.upper_sockets[0])
    if init is None:
        return pid, pidfd, mntns, -1
    # The init runs; it reports on the program's exec on the status pipe.
    init.close_write_end()
    if request_fd >= 0:
        return pid, pidfd, mntns, init.status_read  # a pool entry: no program yet
    try:
        failed = _lifecycle.await_program(init.status_read, pidfd, deadline, args, timeout)
    except BaseException:
        _abandon(pidfd, mntns, init)
        raise
    if failed is not None:
        _abandon(pidfd, mntns, init)
        step, err, detail = failed
        raise _lifecycle.failure(step, err, detail) or _translate(
            prepared, step, err, detail
        ) from None
    return pid, pidfd, mntns, init.status_read


def program_failure(prepared: Prepared, step: str, err: int, detail: bytes) -> Exception:
    """The exception for the init's report that the program did not start."""
    return _lifecycle.failure(step, err, detail) or _translate(prepared, step, err, detail)


def _abandon(pidfd: int, mntns: int, init: _lifecycle.InitPlan) -> None:
    """Release a container whose init did not start the program."""
    _lifecycle.end_init(pidfd)
    os.close(pidfd)
    if mntns >= 0:
        _core.release(mntns, False)
    init.close()


def _receive_upper(ours: socket.socket) -> int:
    """The throwaway upper's fd the child sent (csrc/upper.c), or -1.

    The child sent it before its exec, which the spawn has waited for, so it
    is queued already: never wait for it.
    """
    try:
        # recvmsg rather than socket.recv_fds, which drops the flags on
        # Python 3.11: the fd close-on-exec from the start, no waiting. Only
        # the fd matters: the rest of the UPPER message is cut off.
        _, ancillary, _, _ = ours.recvmsg(
            1, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
        )
    except OSError:
        return -1  # never raise here: the container runs, and its Process must own it
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return -1


# Steps that mount onto a path inside the container, which the C core opens
# beneath the container's root without following any symlink (csrc/beneath.c).
_MOUNT_STEPS = ("mount-proc", "mount-sys", "mount-dev", "mount-bind", "mount-tmpfs", "mask")
_MOUNT_POINT_ERRORS = {
    errno.ELOOP: (
        "it, or a directory on the way to it, is a symbolic link in the container's layers; "
        "pycontain mounts only onto real directories and files inside the container"
    ),
    errno.ENOTDIR: "it, or a directory on the way to it, is not a directory in the container's "
    "layers",
    errno.EISDIR: "it is a directory in the container's layers; a file is bound only onto a file",
}


def _translate(prepared: Prepared, step: str, err: int, detail: bytes) -> Exception:
    """The exception a user sees for a failed step."""
    if step == "prepare" and err == errno.E2BIG:
        return ValueError(
            f"{len(prepared.plan.layers)} layers do not fit in one overlayfs mount; "
            "use fewer layers"
        )
    filename: str | None = os.fsdecode(detail) if detail else None
    strerror = None
    # The C record cuts a path at _DETAIL_CUT bytes: name the full one.
    if len(detail) >= _DETAIL_CUT:
        known = [*prepared.exec_paths] if step == "exec" else [prepared.cwd or b""]
        full = [path for path in known if path.startswith(detail)]
        if full:
            filename = os.fsdecode(full[0])
    if step == "exec" and err == errno.ENOENT and len(prepared.exec_paths) > 1:
        # Searched PATH: name the program as given, as subprocess does.
        filename = os.fsdecode(os.path.basename(prepared.exec_paths[0]))
    elif step == "mount-overlay":
        filename = os.fsdecode(b":".join(prepared.plan.layers))
    elif step in _MOUNT_STEPS and err in _MOUNT_POINT_ERRORS:
        strerror = _MOUNT_POINT_ERRORS[err]
    elif step == "seccomp" and err == errno.EINVAL:
        strerror = f"{os.strerror(err)} (the kernel refused the seccomp filter as a BPF program)"
    elif step == "clone" and prepared.plan.userns:
        strerror = _userns.clone_refusal(err)
    elif step == "userns-map" and err == errno.EACCES and not _userns.own_proc_files():
        strerror = (
            f"{os.strerror(err)} (this process changed its uid without an exec since, so the "
            "kernel made it non-dumpable: its /proc files are root's, and the container cannot "
            "write its id map there; exec a new program after dropping root, or make the "
            "process dumpable again with prctl(PR_SET_DUMPABLE, 1))"
        )
    elif step == "userns-map":
        strerror = (
            f"{os.strerror(err)} (writing the container's user namespace's id map, which maps "
            "your own uid and gid to 0: README, 'Rootless')"
        )
    elif step == "clone" and err in (errno.EPERM, errno.EACCES):
        strerror = (
            f"{os.strerror(err)} (creating namespaces needs root with CAP_SYS_ADMIN, or a "
            "user namespace: userns=None (automatic) or True, not False)"
        )
    error: SpawnError = spawn_error(step, err, filename, strerror)
    return error
