"""Helpers shared by the test modules (imported as ``helpers``; tests/ is on sys.path)."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path

import pycontain

# The environment most busybox-rootfs tests give the container.
BB_ENV = {"PATH": "/bin"}

# Generous: a container that should end on its own ends in milliseconds.
TIMEOUT = 30


def child_pids() -> set[int]:
    """The pids of every child (zombies included) of every thread of this process."""
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return pids


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat ("Z" for a zombie), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(")", 1)[1].split()[0]


def is_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (neither running nor a zombie)."""
    return proc_state(pid) is None


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def handles_signal(pid: int, sig: int) -> bool:
    """True once ``pid`` has a handler for ``sig`` (SigCgt of /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return False


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def is_init(pid: int) -> bool:
    """True when ``pid`` is pycontain's init (the container's PID 1 by default)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"pycontain-init\0")
    except (FileNotFoundError, ProcessLookupError):
        return False


def program_pid(pid: int) -> int:
    """The host pid of the program of the container whose PID 1 is ``pid``:
    the init's one child, or ``pid`` itself when the program is PID 1."""
    if not is_init(pid):
        return pid
    assert wait_until(lambda: children_of(pid) != []), "the init has no child"
    return children_of(pid)[0]


def wait_for_handler(pid: int, sig: int, timeout: float = 10.0) -> None:
    """Wait until the program has installed its handler (e.g. a shell ``trap``).

    ``pid`` is the container's (its init's, or the program's with
    init=False). A signal sent before the trap is set up would kill the
    program (or, as PID 1 without an init, be silently dropped).
    """
    program = program_pid(pid)
    assert wait_until(lambda: handles_signal(program, sig), timeout), f"no handler for {sig}"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_layer(
    root: os.PathLike | str | bytes, files: Mapping[str, str | bytes], *, executable: bool = False
) -> None:
    """Create ``root`` and the given files (path relative to root -> content)."""
    os.makedirs(root, exist_ok=True)
    for rel, content in files.items():
        path = os.path.join(os.fsencode(root), os.fsencode(rel).lstrip(b"/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(path, 0o755 if executable else 0o644)


def snapshot(root: os.PathLike | str | bytes) -> dict[bytes, tuple]:
    """A comparable picture of a directory tree: type, mode, size, content hash, link target."""
    root = os.fsencode(root)
    result: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                result[rel] = ("file", st.st_mode, st.st_size, digest)
            else:
                result[rel] = ("other", st.st_mode, st.st_rdev)
    return result


def run(args, **kwargs) -> int:
    """Run a container to completion and return its exit code."""
    with pycontain.Process(args, **kwargs) as p:
        return p.wait(timeout=TIMEOUT)


def sh(script: str, layers, **kwargs) -> int:
    """Run ``/bin/sh -c script`` with PATH=/bin (unless env= is given) and return its code."""
    kwargs.setdefault("env", BB_ENV)
    return run(["/bin/sh", "-c", script], layers=layers, **kwargs)


def is_whiteout(path: os.PathLike | str | bytes) -> bool:
    """Overlayfs records a deleted lower file as a 0/0 character device."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def workdir_siblings(writedir: os.PathLike | str | bytes) -> list[bytes]:
    """The hidden work directories pycontain made beside ``writedir``."""
    writedir = os.fsencode(os.path.realpath(os.fsencode(writedir)))
    parent, name = os.path.split(writedir)
    prefix = b"." + name + b".pycontain-work-"
    return sorted(entry for entry in os.listdir(parent) if entry.startswith(prefix))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# Why a test needs root beyond rootless mode (@pytest.mark.needs_root; README, "Rootless").
NEEDS_OTHER_IDS = (
    "uid=, gid= or groups= other than 0: rootless mode's single-id uid_map and gid_map "
    "hold no other id"
)
NEEDS_HOST_ROOT_LAYER = (
    "the host's / as a layer: it has mounts below it, which a user namespace keeps locked to it"
)
NEEDS_CGROUP = (
    "limits=: a cgroup this user may write (root on cgroup v1, or a delegated v2 subtree, "
    "which the rootless test run does not have)"
)
