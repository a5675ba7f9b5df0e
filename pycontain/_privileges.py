"""Policy for what a container's program may do beyond its namespaces:
capabilities, the seccomp filter, ``privileged=True``, the network mode.

The C core applies it (csrc/privileges.c, csrc/network.c); the words, the
defaults and the checks are here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Literal

from . import _core, _seccomp

__all__ = ["CAPABILITIES", "DEFAULT_CAPABILITIES", "NETWORK_MODES", "Privileges", "check"]

# Every capability the kernel knows (linux/capability.h), by number.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}

# What a program running as root in a container keeps by default: podman's
# default set (containers.conf), what an ordinary workload needs to act as
# root over its own files and processes (chown, bypass file modes, signal,
# switch uid/gid, chroot, bind ports below 1024). Left out, with Docker's
# extras: CAP_NET_RAW (raw packets: spoofing on a shared network),
# CAP_MKNOD (device nodes: /dev is pycontain's), CAP_AUDIT_WRITE (the host's
# audit log); and everything that reaches the host's kernel or hardware:
# CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_PTRACE, CAP_SYS_BOOT,
# CAP_SYS_TIME, CAP_NET_ADMIN, CAP_SYSLOG, CAP_DAC_READ_SEARCH, ...
DEFAULT_CAPABILITIES = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    }
)

# network=: "none" is a network namespace of its own with only lo (up);
# "host" is the caller's. Modes to come (a user-mode network such as pasta
# or slirp4netns) are more strings here.
NETWORK_MODES = ("none", "host")
Network = Literal["none", "host"]
Seccomp = Literal["default"] | bytes | None


@cache
def last_capability() -> int:
    """The highest capability number of the running kernel."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return _NUMBERS["CAP_CHECKPOINT_RESTORE"]


def own_capabilities(field: Literal["CapPrm", "CapEff"]) -> int | None:
    """One of this process's capability sets, read now from /proc/self/status
    ("CapPrm": permitted, "CapEff": effective); None if it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


@cache
def caller_capabilities() -> int:
    """This process's permitted capabilities (read once: a container gets
    at most these; if they shrink later, the child's capset says so)."""
    permitted = own_capabilities("CapPrm")
    return (1 << (last_capability() + 1)) - 1 if permitted is None else permitted


def capability_number(name: object) -> int:
    if not isinstance(name, str):
        raise TypeError(
            f"capabilities must be names such as 'CAP_NET_RAW' or 'net_raw', "
            f"not {type(name).__name__}"
        )
    canonical = name.upper()
    if not canonical.startswith("CAP_"):
        canonical = "CAP_" + canonical
    if canonical not in _NUMBERS:
        raise ValueError(f"unknown capability {name!r}")
    number = _NUMBERS[canonical]
    if number > last_capability():
        raise ValueError(f"capability {name!r} is newer than this kernel")
    return number


def canonical_names(names: Iterable[str]) -> frozenset[str]:
    """The names as ``CAP_*`` (checked), for comparing and hashing."""
    return frozenset(CAPABILITIES[capability_number(name)] for name in _names(names))


def _names(names: Iterable[str]) -> Iterable[str]:
    if isinstance(names, (str, bytes)):
        raise TypeError("capabilities must be a collection of names, not a single string")
    return names


def capability_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in _names(names):
        mask |= 1 << capability_number(name)
    return mask


def has_controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (then a container
    gets a session of its own, not only a process group; see
    csrc/privileges.c). Asked at each spawn (~ a few us): a process can
    lose or gain one."""
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        return False
    return True


@dataclass
class Privileges:
    """The checked settings, as the C core takes them."""

    privileged: bool = False
    capabilities: int = 0  # mask; unused when privileged
    seccomp: bytes | None = None
    namespaces: int = _core.DEFAULT_NAMESPACES


def check(
    *,
    capabilities: Iterable[str] | None = None,
    privileged: bool = False,
    seccomp: Seccomp = "default",
    network: Network = "none",
    uid: int = -1,
    userns: bool = False,
) -> Privileges:
    """Check the privilege and network keywords; raises ValueError/TypeError.

    ``uid`` is the checked uid (-1: unchanged, i.e. root). With ``userns``
    the container gets a user namespace of its own, in which it starts with
    every capability whatever this process has (over what that namespace
    owns only): then the caller's own set does not bound it.
    """
    # Every capability, in a user namespace; else at most what this process has.
    available = (1 << (last_capability() + 1)) - 1 if userns else caller_capabilities()
    if not isinstance(privileged, bool):
        raise TypeError(f"privileged must be True or False, not {type(privileged).__name__}")
    if network not in NETWORK_MODES:
        raise ValueError(
            f"network must be one of {', '.join(map(repr, NETWORK_MODES))}, not {network!r}"
        )
    checked = Privileges(privileged=privileged)
    if network == "host":
        checked.namespaces &= ~_core.CLONE_NEWNET
    if userns:
        checked.namespaces |= _core.CLONE_NEWUSER
    if privileged and capabilities is not None:
        raise ValueError("privileged=True keeps every capability; do not pass capabilities=")
    if capabilities is not None:
        checked.capabilities = capability_mask(capabilities)
        missing = checked.capabilities & ~available
        if missing:
            names = [name for number, name in enumerate(CAPABILITIES) if missing >> number & 1]
            raise ValueError(
                f"capabilities {', '.join(names)} are not in this process's permitted set, "
                "so a container cannot get them"
            )
    elif uid <= 0:
        # What of the default set this process has (a caller that is itself
        # confined may lack some): capset cannot grant more.
        checked.capabilities = capability_mask(DEFAULT_CAPABILITIES) & available
    # else: a non-root program gets no capabilities unless asked for.
    if seccomp == "default":
        # privileged=True turns the default filter off; an own one still loads.
        checked.seccomp = None if privileged else _seccomp.default_filter()
    elif seccomp is None:
        checked.seccomp = None
    elif isinstance(seccomp, (bytes, bytearray, memoryview)):
        program = bytes(seccomp)
        if not program or len(program) % 8 or len(program) // 8 > 4096:
            raise ValueError(
                "seccomp must be a BPF program: 1 to 4096 instructions of 8 bytes "
                f"(struct sock_filter), not {len(program)} bytes"
            )
        checked.seccomp = program
        if privileged and uid > 0:
            # Loading a filter takes no_new_privs or CAP_SYS_ADMIN, and a
            # non-root uid has neither here.
            raise ValueError(
                "a seccomp filter for a non-root uid needs no_new_privs, which "
                "privileged=True leaves off"
            )
    else:
        raise TypeError(
            f"seccomp must be 'default', None or bytes of a BPF program, not {seccomp!r}"
        )
    return checked
