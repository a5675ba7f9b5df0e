"""The default seccomp filter: which system calls a container may not make.

The filter is a classic BPF program, built here once per process (in the
parent, as bytes of ``struct sock_filter``) and loaded by the C core as the
child's last step before exec (csrc/privileges.c). docs/seccomp.md lists
what is denied and why.

Shape, per architecture the machine can run: load the architecture; for the
native one (and i386 on x86_64), load the syscall number and find it by
binary search among the rules; a matching rule returns ``EPERM`` (or looks
at one argument first); everything else is allowed. A call of an ABI the filter does not
know (x32 on x86_64, 32-bit ARM on aarch64) gets ``ENOSYS`` whatever it is,
as if the kernel had no such ABI (Debian's kernels boot with x32 off).
"""

from __future__ import annotations

import errno
import platform
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

__all__ = ["DENIED", "default_filter", "filter_for", "seccomp_filter"]

# The syscall numbers of each denied call: (x86_64, i386, aarch64); None
# where the architecture has no such call. Checked against the kernel
# headers by tests/test_seccomp.py where linux-libc-dev is installed.
SYSCALLS: dict[str, tuple[int | None, int | None, int | None]] = {
    "init_module": (175, 128, 105),
    "finit_module": (313, 350, 273),
    "delete_module": (176, 129, 106),
    "create_module": (174, 127, None),
    "query_module": (178, 167, None),
    "get_kernel_syms": (177, 130, None),
    "kexec_load": (246, 283, 104),
    "kexec_file_load": (320, None, 294),
    "reboot": (169, 88, 142),
    "keyctl": (250, 288, 219),
    "add_key": (248, 286, 217),
    "request_key": (249, 287, 218),
    "bpf": (321, 357, 280),
    "perf_event_open": (298, 336, 241),
    "userfaultfd": (323, 374, 282),
    "ptrace": (101, 26, 117),
    "process_vm_readv": (310, 347, 270),
    "process_vm_writev": (311, 348, 271),
    "kcmp": (312, 349, 272),
    "pidfd_getfd": (438, 438, 438),
    "mount": (165, 21, 40),
    "umount": (None, 22, None),
    "umount2": (166, 52, 39),
    "pivot_root": (155, 217, 41),
    "open_tree": (428, 428, 428),
    "move_mount": (429, 429, 429),
    "fsopen": (430, 430, 430),
    "fsconfig": (431, 431, 431),
    "fsmount": (432, 432, 432),
    "fspick": (433, 433, 433),
    "mount_setattr": (442, 442, 442),
    "open_tree_attr": (467, 467, 467),
    "open_by_handle_at": (304, 342, 265),
    "name_to_handle_at": (303, 341, 264),
    "unshare": (272, 310, 97),
    "setns": (308, 346, 268),
    "clone": (56, 120, 220),
    "clone3": (435, 435, 435),
    "swapon": (167, 87, 224),
    "swapoff": (168, 115, 225),
    "settimeofday": (164, 79, 170),
    "stime": (None, 25, None),
    "clock_settime": (227, 264, 112),
    "clock_settime64": (None, 404, None),
    "adjtimex": (159, 124, 171),
    "clock_adjtime": (305, 343, 266),
    "clock_adjtime64": (None, 405, None),
    "acct": (163, 51, 89),
    "quotactl": (179, 131, 60),
    "quotactl_fd": (443, 443, 443),
    "lookup_dcookie": (212, 253, 18),
    "iopl": (172, 110, None),
    "ioperm": (173, 101, None),
    "syslog": (103, 103, 116),
    "personality": (135, 136, 92),
    "ioctl": (16, 54, 29),
    "uselib": (134, 86, None),
    "_sysctl": (156, 149, None),
    "vm86": (None, 166, None),
    "vm86old": (None, 113, None),
    "io_uring_setup": (425, 425, 425),
    "io_uring_enter": (426, 426, 426),
    "io_uring_register": (427, 427, 427),
}

# Namespace flags: clone(2) cannot take CLONE_NEWTIME (0x80 is part of its
# exit signal byte there); unshare can.
_NAMESPACE_FLAGS = 0x7E020000  # NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID NEWNET
_CLONE_NEWTIME = 0x80
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
# personality(2) values that leave ASLR on (as in Docker's default profile):
# PER_LINUX, PER_LINUX32, UNAME26 with either, and the query 0xffffffff.
_SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


@dataclass(frozen=True)
class Rule:
    """Deny ``name`` with ``errno``; with ``arg``, only when that argument's
    low 32 bits have a bit of ``any_bit`` set, equal one of ``equals``, or
    equal none of ``unless``."""

    name: str
    why: str
    errno: int = errno.EPERM
    arg: int | None = None
    any_bit: int = 0
    equals: tuple[int, ...] = ()
    unless: tuple[int, ...] = ()


def _rules(names: str, why: str) -> list[Rule]:
    return [Rule(name, why) for name in names.split()]


# The default policy: what is denied and why (docs/seccomp.md says the same
# in prose). Everything else is allowed: capabilities already refuse most
# privileged operations; this closes what capabilities do not cover, or
# cover with a capability a workload may be given back.
DENIED: tuple[Rule, ...] = (
    *_rules(
        "init_module finit_module delete_module create_module query_module get_kernel_syms",
        "kernel modules: code in the host's kernel",
    ),
    *_rules("kexec_load kexec_file_load reboot", "replacing or rebooting the host's kernel"),
    *_rules(
        "keyctl add_key request_key",
        "the kernel keyring is not namespaced: root's user keyring is the host root's",
    ),
    *_rules("bpf", "eBPF programs in the host's kernel; a large attack surface"),
    *_rules("perf_event_open", "observes the host's kernel and other processes"),
    *_rules("userfaultfd", "a common tool to widen race windows in kernel exploits"),
    *_rules(
        "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd",
        "debugging other processes (gdb, strace: seccomp_filter(allow=['ptrace']))",
    ),
    *_rules(
        "mount umount umount2 pivot_root open_tree move_mount fsopen fsconfig fsmount "
        "fspick mount_setattr open_tree_attr",
        "changing the mount tree, also from inside a user namespace",
    ),
    *_rules(
        "open_by_handle_at name_to_handle_at",
        "opening files by handle escapes the root (the 'shocker' attack)",
    ),
    *_rules("setns", "entering other namespaces"),
    Rule(
        "unshare",
        "new namespaces (a user namespace gives a full set of capabilities over it)",
        arg=0,
        any_bit=_NAMESPACE_FLAGS | _CLONE_NEWTIME,
    ),
    Rule("clone", "new namespaces, as unshare", arg=0, any_bit=_NAMESPACE_FLAGS),
    # Its flags are in memory, out of the filter's reach: ENOSYS makes the
    # C library fall back to clone(2), which the filter can check.
    Rule("clone3", "its namespace flags cannot be checked; libc falls back to clone", errno.ENOSYS),
    *_rules("swapon swapoff", "the host's swap"),
    *_rules(
        "settimeofday stime clock_settime clock_settime64 adjtimex clock_adjtime clock_adjtime64",
        "the host's clock",
    ),
    *_rules("acct", "process accounting of the host"),
    *_rules("quotactl quotactl_fd", "the host's disk quotas"),
    *_rules("lookup_dcookie", "kernel profiling interface"),
    *_rules("iopl ioperm", "direct access to I/O ports"),
    *_rules("syslog", "the host's kernel log"),
    *_rules("uselib _sysctl vm86 vm86old", "obsolete interfaces nothing current needs"),
    *_rules(
        "io_uring_setup io_uring_enter io_uring_register",
        "the operations of an io_uring bypass this filter; many kernel bugs",
    ),
    Rule(
        "personality",
        "personality flags that turn address space randomization off",
        arg=0,
        unless=_SAFE_PERSONALITIES,
    ),
    Rule(
        "ioctl",
        "TIOCSTI types into an inherited terminal; TIOCLINUX reads and writes the console",
        arg=1,
        equals=(_TIOCSTI, _TIOCLINUX),
    ),
)

# struct sock_filter {u16 code; u8 jt, jf; u32 k}, and the opcodes used.
_INSTRUCTION = struct.Struct("=HBBI")
_LOAD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JUMP = 0x05  # BPF_JMP | BPF_JA
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RETURN = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000  # SECCOMP_RET_ALLOW
_ERRNO = 0x00050000  # SECCOMP_RET_ERRNO | errno
# Offsets in struct seccomp_data; an argument's low 32 bits (little-endian).
_NR, _ARCH = 0, 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index


_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_I386 = 0x40000003
_AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_SYSCALL_BIT = 0x40000000

Instruction = tuple[int, int, int, int]

# The program is written with symbolic jump targets, then resolved: an
# element is a label (str) or (code, true, false, k) where a conditional
# jump's true/false is a label or None (the next instruction).
Target = str | None
Symbolic = tuple[int, Target, Target, int]


class _Program:
    def __init__(self) -> None:
        self.items: list[str | Symbolic] = []
        self._labels = 0

    def label(self) -> str:
        self._labels += 1
        return f"L{self._labels}"

    def place(self, label: str) -> None:
        self.items.append(label)

    def emit(self, code: int, k: int, true: Target = None, false: Target = None) -> None:
        self.items.append((code, true, false, k))

    def resolve(self) -> list[Instruction]:
        positions: dict[str, int] = {}
        count = 0
        for item in self.items:
            if isinstance(item, str):
                positions[item] = count
            else:
                count += 1
        program: list[Instruction] = []
        for item in self.items:
            if isinstance(item, str):
                continue
            code, true, false, k = item
            here = len(program) + 1  # jumps count from the next instruction
            if code == _JUMP:
                program.append((code, 0, 0, positions[true] - here))  # type: ignore[index]
                continue
            offsets = [0 if t is None else positions[t] - here for t in (true, false)]
            if not all(0 <= offset <= 255 for offset in offsets):
                raise ValueError("seccomp filter too large for its conditional jumps")
            program.append((code, offsets[0], offsets[1], k))
        return program


def _rule(program: _Program, rule: Rule, number: int, returns: dict[str, str]) -> None:
    """One rule, entered with the syscall number loaded: a number that is not
    this rule's goes on to the next instruction."""
    deny = returns["EPERM"] if rule.errno == errno.EPERM else returns["ENOSYS"]
    if rule.errno not in (errno.EPERM, errno.ENOSYS):
        raise ValueError(f"rule {rule.name}: errno must be EPERM or ENOSYS")
    if rule.arg is None:
        program.emit(_JEQ, number, true=deny)
        return
    skip = program.label()
    program.emit(_JEQ, number, false=skip)
    program.emit(_LOAD, _arg_low(rule.arg))
    if rule.any_bit:
        program.emit(_JSET, rule.any_bit, true=deny, false=returns["ALLOW"])
    elif rule.equals:
        for value in rule.equals[:-1]:
            program.emit(_JEQ, value, true=deny)
        program.emit(_JEQ, rule.equals[-1], true=deny, false=returns["ALLOW"])
    else:
        for value in rule.unless[:-1]:
            program.emit(_JEQ, value, true=returns["ALLOW"])
        program.emit(_JEQ, rule.unless[-1], true=returns["ALLOW"], false=deny)
    program.place(skip)


# Rules per leaf of the search tree: compared one after the other.
_LEAF_SIZE = 8


def _search(program: _Program, numbered: list[tuple[int, Rule]], returns: dict[str, str]) -> None:
    """A binary search over ``numbered`` (sorted by number), entered with the
    syscall number loaded; every path ends at one of ``returns``.

    A path is a few comparisons instead of one per rule, which matters
    twice: for the calls that reach the filter, and when it is loaded, since
    the kernel then runs it once for every syscall number of every ABI to
    find those it always allows (the seccomp action cache): with a linear
    list of 60 rules, loading took ~200 us of each spawn."""
    if len(numbered) <= _LEAF_SIZE:
        for number, rule in numbered:
            _rule(program, rule, number, returns)
        program.emit(_JUMP, 0, true=returns["ALLOW"])
        return
    middle = len(numbered) // 2
    above = program.label()
    program.emit(_JGE, numbered[middle][0], true=above)
    _search(program, numbered[:middle], returns)
    program.place(above)
    _search(program, numbered[middle:], returns)


def _arch_block(program: _Program, rules: Iterable[Rule], column: int, *, x32_check: bool) -> None:
    returns = {name: program.label() for name in ("ALLOW", "EPERM", "ENOSYS")}
    program.emit(_LOAD, _NR)
    if x32_check:
        # x32 calls are x86_64's with this bit set: not this ABI.
        program.emit(_JGE, _X32_SYSCALL_BIT, true=returns["ENOSYS"])
    numbered = sorted(
        ((number, rule) for rule in rules if (number := SYSCALLS[rule.name][column]) is not None),
        key=lambda pair: pair[0],
    )
    numbers = [number for number, _ in numbered]
    if len(set(numbers)) != len(numbers):
        raise ValueError("two rules for one system call")
    _search(program, numbered, returns)
    for name, action in (
        ("ALLOW", _ALLOW),
        ("EPERM", _ERRNO | errno.EPERM),
        ("ENOSYS", _ERRNO | errno.ENOSYS),
    ):
        program.place(returns[name])
        program.emit(_RETURN, action)


# Per machine: (AUDIT_ARCH, column of SYSCALLS, whether x32 shares it).
_ARCHITECTURES = {
    "x86_64": [(_AUDIT_ARCH_X86_64, 0, True), (_AUDIT_ARCH_I386, 1, False)],
    "aarch64": [(_AUDIT_ARCH_AARCH64, 2, False)],
}


def assemble(instructions: Iterable[Instruction]) -> bytes:
    return b"".join(_INSTRUCTION.pack(*instruction) for instruction in instructions)


def filter_for(machine: str, rules: Iterable[Rule] = DENIED) -> bytes:
    """The filter denying ``rules`` on ``machine`` (``platform.machine()``)."""
    if machine not in _ARCHITECTURES:
        raise ValueError(
            f"pycontain has no default seccomp filter for {machine}; pass seccomp=None "
            "or a filter of your own (bytes of a BPF program)"
        )
    rules = list(rules)
    program = _Program()
    program.emit(_LOAD, _ARCH)
    for audit_arch, column, x32_check in _ARCHITECTURES[machine]:
        this, other = program.label(), program.label()
        program.emit(_JEQ, audit_arch, true=this)
        # Not this architecture: on to the next (ja: a 32-bit offset).
        program.emit(_JUMP, 0, true=other)
        program.place(this)
        _arch_block(program, rules, column, x32_check=x32_check)
        program.place(other)
    # An ABI the filter does not know: refuse everything.
    program.emit(_RETURN, _ERRNO | errno.ENOSYS)
    return assemble(program.resolve())


@cache
def default_filter() -> bytes:
    """The default filter for this machine, built once per process."""
    return filter_for(platform.machine())


def seccomp_filter(*, allow: Iterable[str] = ()) -> bytes:
    """The default filter, but allowing the system calls ``allow`` names.

    For ``seccomp=``: e.g. ``seccomp_filter(allow=["ptrace",
    "process_vm_readv"])`` for gdb or strace inside. Returns the BPF
    program as ``bytes`` (build it once and reuse it). A name the default
    does not deny is a ``ValueError``.
    """
    if isinstance(allow, (str, bytes)):
        raise TypeError("allow must be a collection of system call names, not a single string")
    allowed = set()
    for name in allow:
        if not isinstance(name, str):
            raise TypeError(f"allow items must be names (str), not {type(name).__name__}")
        allowed.add(name)
    denied = {rule.name for rule in DENIED}
    unknown = sorted(allowed - denied)
    if unknown:
        raise ValueError(
            f"the default filter does not deny {', '.join(unknown)}; it denies "
            f"{', '.join(sorted(denied))}"
        )
    return filter_for(platform.machine(), [rule for rule in DENIED if rule.name not in allowed])
