"""Rootless mode: a container in a new user namespace.

A caller without ``CAP_SYS_ADMIN`` cannot make mount, PID or network
namespaces by itself, but it can make a user namespace, in which it holds
every capability over what that namespace owns, and the other namespaces
with it (``CLONE_NEWUSER`` in the same clone). ``Container(userns=None)``
(the default) does that when this process lacks ``CAP_SYS_ADMIN``;
``userns=True`` does it for root too (root in the container is then not
root on the host); ``userns=False`` never does.

Inside, the caller's uid and gid are mapped to 0, and nothing else is
mapped: a single-id map, which the kernel lets any user write for itself
(the child writes it, csrc/userns.c). So only id 0 exists in the
container; files of other ids show as the overflow id (65534, "nobody").

This module owns the decisions and the words: whether a container gets a
user namespace, the maps, the settings a user namespace cannot honour
(refused before anything is spawned), and the system settings that can
forbid user namespaces, each named with the command that changes it.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import resource
from collections.abc import Iterable, Sequence

from . import _privileges

__all__ = [
    "caller_has_sys_admin",
    "check_directories",
    "check_settings",
    "clone_refusal",
    "maps",
    "refusal",
    "resolve",
]

_CAP_SYS_ADMIN = 21

# Testing knobs: read the system settings below this directory instead of
# /proc/sys, and take this as the kernel's release (tests/test_rootless.py
# checks each refusal against a copy of the values; no host setting is
# ever changed).
_proc_sys = "/proc/sys"
_kernel_release: str | None = None


def caller_has_sys_admin() -> bool:
    """Whether this process's *effective* set has CAP_SYS_ADMIN (what the kernel
    asks for to make namespaces; a root process may have dropped it). Read
    once per effective uid (a process that switches uid, a worker dropping
    root, reads it again); a capset() that keeps the uid is not seen, and the
    clone says so."""
    return _has_sys_admin(os.geteuid())


@functools.cache
def _has_sys_admin(euid: int) -> bool:
    effective = _privileges.own_capabilities("CapEff")
    return euid == 0 if effective is None else bool(effective >> _CAP_SYS_ADMIN & 1)


def resolve(userns: object) -> bool:
    """The ``userns=`` field checked and decided: whether to make a user namespace."""
    if userns is not None and not isinstance(userns, bool):
        raise TypeError(f"userns must be True, False or None (automatic), not {userns!r}")
    return not caller_has_sys_admin() if userns is None else userns


def own_proc_files() -> bool:
    """Whether this process's /proc files are its own. They are root's after
    a change of uid without an exec (the kernel makes such a process
    non-dumpable), and then a container cannot write its id maps."""
    try:
        return os.stat("/proc/self/uid_map").st_uid == os.geteuid()
    except OSError:
        return True


def maps() -> tuple[bytes, bytes]:
    """The uid_map and gid_map lines: the caller's ids as 0, nothing else."""
    return b"0 %d 1" % os.geteuid(), b"0 %d 1" % os.getegid()


def check_settings(
    *,
    uid: int,
    gid: int,
    groups: Sequence[int] | None,
    rlimits: Sequence[tuple[int, int, int]],
    host_network: bool = False,
) -> None:
    """Refuse, before anything is spawned, what a single-id user namespace cannot do."""
    if host_network and _release() < (5, 12):
        raise ValueError(
            "network='host' in rootless mode (userns) binds the host's /sys, whose submounts "
            "are made read-only with mount_setattr(2), which needs Linux >= 5.12; this kernel "
            f"is {_kernel_release or os.uname().release}: use network='none', or run as root"
        )
    for what, value in (("uid", uid), ("gid", gid)):
        if value not in (-1, 0):
            raise ValueError(
                f"{what}={value} needs that id to exist in the container's user namespace, whose "
                f"uid_map and gid_map map only your own ids (to 0): in rootless mode (userns) "
                f"only {what}=0 or None is possible"
            )
    if groups is not None:
        raise ValueError(
            "groups= needs setgroups(2), which a user namespace with a single-id gid_map "
            "(rootless mode, userns) denies; leave groups=None"
        )
    for number, _soft, hard in rlimits:
        _, current_hard = resource.getrlimit(number)
        if current_hard != resource.RLIM_INFINITY and (
            hard == resource.RLIM_INFINITY or hard > current_hard
        ):
            names = [n for n in dir(resource) if n.startswith("RLIMIT_")]
            name = next((n for n in names if getattr(resource, n) == number), str(number))
            raise ValueError(
                f"rlimit {name[len('RLIMIT_') :].lower()!r}: hard limit "
                f"{'unlimited' if hard == resource.RLIM_INFINITY else hard} is above this "
                f"process's ({current_hard}); raising a hard limit needs CAP_SYS_RESOURCE on "
                "the host, which a user namespace (rootless mode) does not give"
            )


def _mount_points() -> list[bytes]:
    """Every mount point of this process's mount namespace (which the
    container's is a copy of)."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    unescape = re.compile(rb"\\([0-7]{3})")
    return [
        unescape.sub(lambda match: bytes([int(match[1], 8)]), line.split(b" ")[4]) for line in lines
    ]


def check_directories(directories: Iterable[tuple[str, bytes]]) -> None:
    """Refuse a layer or bind source with other mounts below it.

    A user namespace gets a copy of this mount namespace in which every
    mount is locked to the one below it (so that no one can uncover what a
    mount hides), and the kernel will neither stack such a directory with
    overlayfs nor bind it without its submounts. The host's "/" is the
    common case: /proc, /sys, /dev and others are mounted below it.
    """
    mount_points = None
    for role, path in directories:
        if mount_points is None:
            mount_points = _mount_points()
        real = os.path.realpath(path)
        prefix = real.rstrip(b"/") + b"/"
        below = sorted({point for point in mount_points if point.startswith(prefix)} - {real})
        if below:
            shown = ", ".join(os.fsdecode(point) for point in below[:3])
            more = f" and {len(below) - 3} more" if len(below) > 3 else ""
            raise ValueError(
                f"{role} {os.fsdecode(path)!r} has other mounts below it ({shown}{more}): in "
                "rootless mode (a user namespace) the kernel keeps them locked to it, so it "
                f"cannot be a {role}; use a directory tree without mounts inside it (an "
                "unpacked root filesystem, say), or run as root"
            )


def _read(name: str) -> str | None:
    try:
        with open(os.path.join(_proc_sys, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _release() -> tuple[int, int]:
    release = _kernel_release if _kernel_release is not None else os.uname().release
    try:
        major, minor = release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


# Where refusal() found nothing to refuse: not asked again (each Container
# would read four files). A setting changed later is named by the clone's
# refusal (clone_refusal).
_allowed: set[tuple[bool, str, str | None]] = set()


def refusal(privileged_caller: bool) -> str | None:
    """Why this system will not let this process run a container in a user
    namespace (a sentence naming the setting and the command that changes
    it), or None. ``privileged_caller``: this process has CAP_SYS_ADMIN
    (then only user.max_user_namespaces and the kernel version count)."""
    key = (privileged_caller, _proc_sys, _kernel_release)
    if key in _allowed:
        return None
    reason = _refusal(privileged_caller)
    if reason is None:
        _allowed.add(key)
    return reason


def _refusal(privileged_caller: bool) -> str | None:
    if _read("user/max_user_namespaces") == "0":
        return (
            "user namespaces are disabled on this system (user.max_user_namespaces = 0); "
            "an administrator can allow them with: sysctl -w user.max_user_namespaces=15000"
        )
    if not privileged_caller:
        if _read("kernel/unprivileged_userns_clone") == "0":
            return (
                "user namespaces are forbidden to users without privileges on this system "
                "(kernel.unprivileged_userns_clone = 0); an administrator can allow them with: "
                "sysctl -w kernel.unprivileged_userns_clone=1"
            )
        if _read("kernel/apparmor_restrict_unprivileged_userns") == "1":
            return (
                "AppArmor forbids user namespaces to programs without privileges on this system "
                "(kernel.apparmor_restrict_unprivileged_userns = 1); an administrator can allow "
                "them with: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an "
                "AppArmor profile with the 'userns' rule for this Python)"
            )
    if _release() < (5, 11):
        release = _kernel_release if _kernel_release is not None else os.uname().release
        return (
            f"overlayfs in a user namespace (its 'userxattr' option) needs Linux >= 5.11; this "
            f"kernel is {release}: run as root (with CAP_SYS_ADMIN), or on a newer kernel"
        )
    return None


def clone_refusal(err: int) -> str | None:
    """The words for clone's refusal of a new user namespace, or None."""
    if err == errno.ENOSPC:
        limit = _read("user/max_user_namespaces")
        return (
            f"{os.strerror(err)} (no user namespace left: user.max_user_namespaces = {limit} "
            "are in use for this user; an administrator can raise it with: "
            "sysctl -w user.max_user_namespaces=15000)"
        )
    if err in (errno.EPERM, errno.EACCES):
        reason = _refusal(caller_has_sys_admin())  # afresh: the setting may have changed
        reason = reason or (
            "the kernel refused a new user namespace: a security module (AppArmor, SELinux), "
            "a seccomp policy around this process, or a chroot can forbid it; `pycontain "
            "doctor` shows the settings it can see"
        )
        return f"{os.strerror(err)} ({reason})"
    return None
