"""pycontain.doctor(): what this machine and user allow, and why not.

Read only: it reads /proc, /sys and the process's own credentials, asks the
kernel about system calls with arguments it must refuse (so nothing is
created), and starts one container (the host's / as its layer, or in
rootless mode this package's directory, running a Python function that
returns at once) to see that the whole path works.
It never changes a sysctl, loads a module or mounts anything on the host.
Each "no" comes with the command that would change it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import html
import os
import platform
import sys
from typing import Any

__all__ = ["Check", "DoctorReport", "doctor"]

# pycontain's floor (clone3, pidfd_open, waitid(P_PIDFD)).
MINIMUM_KERNEL = (5, 4)

# System calls added after the unified numbering (Linux 5.1): the same
# number on every architecture.
_SYSCALLS = {
    "pidfd_open": (434, "5.3", "waits on and signals a container without pid reuse races"),
    "clone3": (435, "5.3", "spawns with CLONE_CLEAR_SIGHAND (else clone(2) and a slower reset)"),
    "close_range": (
        436,
        "5.9",
        "with CLOSE_RANGE_CLOEXEC (5.11) marks fds close-on-exec at once, else one by one",
    ),
    "openat2": (437, "5.6", "resolves paths beneath a root (RESOLVE_IN_ROOT)"),
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One finding: ``ok`` is True, False, or None (informational / unknown)."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None
    required: bool = False

    def mark(self) -> str:
        return {True: "yes", False: "NO", None: "--"}[self.ok]


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    """What :func:`doctor` found. ``can_run`` says whether pycontain can
    start containers here as this user; ``checks`` says why."""

    can_run: bool
    checks: tuple[Check, ...]

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def problems(self) -> list[Check]:
        """The required checks that failed."""
        return [check for check in self.checks if check.required and check.ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {
            "can_run": self.can_run,
            "checks": [dataclasses.asdict(check) for check in self.checks],
        }

    def __str__(self) -> str:
        width = max(len(check.name) for check in self.checks)
        lines = []
        for check in self.checks:
            lines.append(f"{check.mark():>3}  {check.name:<{width}}  {check.detail}")
            if check.fix and check.ok is not True:
                lines.append(f"{'':>3}  {'':<{width}}  -> {check.fix}")
        verdict = (
            "pycontain can start containers here."
            if self.can_run
            else "pycontain cannot start containers here: see the NO lines above."
        )
        return "\n".join([*lines, "", verdict])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{check.mark()}</td><td><code>{html.escape(check.name)}</code></td>"
            f"<td>{html.escape(check.detail)}"
            + (
                f"<br><code>{html.escape(check.fix)}</code>"
                if check.fix and check.ok is not True
                else ""
            )
            + "</td></tr>"
            for check in self.checks
        )
        verdict = "can" if self.can_run else "cannot"
        return (
            f"<p><b>pycontain {verdict} start containers here</b></p>"
            f"<table><tr><th></th><th>check</th><th>finding</th></tr>{rows}</table>"
        )


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _kernel_version() -> tuple[int, ...]:
    numbers = []
    for part in platform.release().split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


def _has_cap_sys_admin() -> bool:
    from . import _privileges

    return bool((_privileges.own_capabilities("CapEff") or 0) & (1 << 21))  # CAP_SYS_ADMIN


def _syscall_available(number: int) -> tuple[bool | None, str]:
    """Ask with arguments the kernel must refuse: EINVAL/EFAULT/EBADF mean
    the call exists, ENOSYS that it does not; EPERM: a seccomp filter."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if number == 434:  # pidfd_open(pid 0 is invalid, flags ~0)
        result = libc.syscall(ctypes.c_long(number), 0, ctypes.c_uint(0xFFFFFFFF))
    elif number == 436:  # close_range(first > last)
        result = libc.syscall(ctypes.c_long(number), ctypes.c_uint(2), ctypes.c_uint(1), 0)
    elif number == 437:  # openat2(-1, NULL, NULL, size 0): the size is checked first
        result = libc.syscall(ctypes.c_long(number), -1, None, None, ctypes.c_size_t(0))
    else:  # clone3(NULL, size 0): the size is checked first
        result = libc.syscall(ctypes.c_long(number), None, ctypes.c_size_t(0))
    code = ctypes.get_errno()
    if result >= 0:
        if number == 434:
            os.close(result)
        return True, "available"
    if code == errno.ENOSYS:
        return False, "not in this kernel"
    if code in (errno.EPERM, errno.EACCES):
        return None, f"refused ({errno.errorcode[code]}): a seccomp filter?"
    return True, "available"


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of this mount namespace."""
    found = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3:
            found.append((fields[4], tail[0], tail[2]))
    return found


def _cgroup_checks(root: bool) -> list[Check]:
    mounts = _mounts()
    v2 = [point for point, fstype, _ in mounts if fstype == "cgroup2"]
    v1 = sorted(
        {
            option
            for _, fstype, options in mounts
            if fstype == "cgroup"
            for option in options.split(",")
            if option not in ("rw", "ro") and not option.startswith("name=")
        }
    )
    if v2 and not v1:
        layout = f"v2 (unified) at {v2[0]}"
    elif v2 and v1:
        layout = f"hybrid: v1 controllers {', '.join(v1)}; v2 at {', '.join(v2)}"
    elif v1:
        layout = f"v1: {', '.join(v1)}"
    else:
        layout = "no cgroup filesystem mounted"
    checks = [Check("cgroups", bool(v1 or v2) or None, layout)]
    if v2:
        own = ""
        for line in (_read("/proc/self/cgroup") or "").splitlines():
            if line.startswith("0::"):
                own = line[3:]
        directory = os.path.join(v2[0], own.lstrip("/"))
        controllers = _read(os.path.join(v2[0], "cgroup.controllers"))
        writable = os.access(directory, os.W_OK)
        detail = (
            f"{'writable' if writable else 'not writable'}: {directory}"
            f" (controllers at the root: {controllers or 'none'})"
        )
        checks.append(
            Check(
                "cgroup v2 delegation",
                writable or root,
                detail,
                None
                if writable or root
                else "run under a delegated cgroup, e.g. "
                "systemd-run --user --scope -p Delegate=yes -- python ...",
            )
        )
    return checks


def _overlay_checks(kernel: tuple[int, ...]) -> list[Check]:
    filesystems = (_read("/proc/filesystems") or "").split()
    present = "overlay" in filesystems
    checks = [
        Check(
            "overlayfs",
            present,
            "in /proc/filesystems"
            if present
            else "not in /proc/filesystems (module not loaded, or not built)",
            None if present else "modprobe overlay",
            required=True,
        )
    ]
    parameters = "/sys/module/overlay/parameters"
    for name, meaning in (
        ("redirect_dir", "renaming lower directories in the writable layer"),
        ("metacopy", "chmod/chown of lower files without copying their data"),
        ("index", "hard links to lower files kept as links"),
    ):
        value = _read(os.path.join(parameters, name))
        checks.append(
            Check(
                f"overlayfs {name}",
                None,
                f"default {value} ({meaning})"
                if value is not None
                else f"no module parameter ({meaning})",
            )
        )
    userxattr = kernel >= (5, 11)
    checks.append(
        Check(
            "overlayfs userxattr",
            userxattr,
            "mount option for overlays in a user namespace (Linux >= 5.11)",
            None if userxattr else "a kernel >= 5.11 (needed for rootless overlays only)",
        )
    )
    return checks


def _userns_checks(root: bool) -> list[Check]:
    checks = []
    maximum = _read("/proc/sys/user/max_user_namespaces")
    allowed = maximum is None or maximum != "0"
    checks.append(
        Check(
            "user.max_user_namespaces",
            allowed,
            f"{maximum}" if maximum is not None else "not present",
            None if allowed else "sysctl -w user.max_user_namespaces=15000",
        )
    )
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone is not None:
        checks.append(
            Check(
                "kernel.unprivileged_userns_clone",
                clone != "0",
                clone,
                None if clone != "0" else "sysctl -w kernel.unprivileged_userns_clone=1",
            )
        )
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if apparmor is not None:
        checks.append(
            Check(
                "kernel.apparmor_restrict_unprivileged_userns",
                apparmor == "0",
                apparmor,
                None
                if apparmor == "0"
                else "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 "
                "(or an AppArmor profile that allows userns for this program)",
            )
        )
    everything = all(check.ok is not False for check in checks)
    checks.insert(
        0,
        Check(
            "unprivileged user namespaces",
            everything,
            "allowed for users without privileges"
            if everything
            else "forbidden for users without privileges (see below)",
            None if everything or root else "ask an administrator to allow them (below)",
        ),
    )
    return checks


def _rootless_check(admin: bool) -> Check:
    """Whether containers can run in a user namespace (required without CAP_SYS_ADMIN)."""
    from . import _userns

    refused = _userns.refusal(admin)
    return Check(
        "rootless mode",
        refused is None,
        ("a user namespace per container, your uid and gid as 0 " + _ROOTLESS_LIMITS)
        if refused is None
        else refused.split(";")[0],
        None if refused is None else refused.split(": ", 1)[-1],
        required=not admin,
    )


_ROOTLESS_LIMITS = "(a layer with mounts below it, such as the host's /, is refused)"


def _try_a_container(admin: bool) -> Check:
    import warnings

    from ._call import call

    # Rootless, the host's / cannot be a layer (mounts below it): a
    # directory without any, since the function needs nothing of the layer.
    layer = "/" if admin else os.path.dirname(os.path.abspath(__file__))
    try:
        with warnings.catch_warnings():
            # os.getpid takes no lock, so another thread's cannot hang it.
            warnings.simplefilter("ignore", RuntimeWarning)
            pid = call(os.getpid, layers=[layer], timeout=30)
    except Exception as error:
        return Check(
            "start a container",
            False,
            f"{type(error).__name__}: {error}".splitlines()[0],
            required=True,
        )
    where = "the host's /" if admin else f"{layer} (rootless mode)"
    return Check("start a container", pid == 1, f"{where} as the layer, a function as PID 1")


def doctor(*, try_container: bool = True) -> DoctorReport:
    """What this machine and user allow pycontain to do, and why not.

    Read only. ``try_container=False`` skips the one real container it
    starts otherwise (the final proof that everything works).
    """
    checks: list[Check] = []
    linux = sys.platform.startswith("linux")
    kernel = _kernel_version() if linux else (0,)
    kernel_ok = linux and kernel >= MINIMUM_KERNEL
    checks.append(
        Check(
            "Linux kernel",
            kernel_ok,
            f"{platform.system()} {platform.release()}",
            None if kernel_ok else "pycontain needs Linux >= 5.4",
            required=True,
        )
    )
    root = os.geteuid() == 0
    admin = _has_cap_sys_admin()
    checks.append(
        Check(
            "privileges",
            admin if admin else None,
            f"uid {os.geteuid()}, CAP_SYS_ADMIN {'held' if admin else 'not held'}"
            + ("" if admin else ": containers run in rootless mode (below)"),
        )
    )
    checks.extend(_userns_checks(root))
    checks.append(_rootless_check(admin))
    checks.extend(_overlay_checks(kernel))
    for name, (number, since, why) in _SYSCALLS.items():
        ok, detail = _syscall_available(number) if linux else (False, "not Linux")
        required = name == "pidfd_open"
        checks.append(
            Check(
                name,
                ok,
                f"{detail} (Linux >= {since}; {why})",
                None if ok is not False else f"a kernel >= {since}",
                required=required,
            )
        )
    mount_ns = kernel >= (6, 11)
    checks.append(
        Check(
            "PIDFD_GET_MNT_NAMESPACE",
            mount_ns,
            "Linux >= 6.11: finished containers are unmounted off the waiting thread",
        )
    )
    checks.extend(_cgroup_checks(root))
    from ._spawn import _SCRATCH_CANDIDATES

    scratch = next(
        (
            os.fsdecode(candidate)
            for candidate in _SCRATCH_CANDIDATES
            if os.path.isdir(candidate) and not os.path.islink(candidate)
        ),
        None,
    )
    checks.append(
        Check(
            "scratch directory",
            scratch is not None,
            f"{scratch} (the container's private tmpfs goes over it, in its own namespace)"
            if scratch
            else "none of " + ", ".join(os.fsdecode(c) for c in _SCRATCH_CANDIDATES),
            None if scratch else "mkdir /mnt",
            required=True,
        )
    )
    checks.append(Check("busybox, bwrap, a runtime", None, "not needed"))
    can_run = not any(check.required and check.ok is False for check in checks)
    if try_container and can_run:
        proof = _try_a_container(admin)
        checks.append(proof)
        can_run = bool(proof.ok)
    return DoctorReport(can_run=can_run, checks=tuple(checks))
