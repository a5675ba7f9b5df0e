"""The default seccomp filter (docs/seccomp.md), seccomp=None, and filters of one's own."""

from __future__ import annotations

import errno
import os
import platform
import re
import struct
import textwrap

import pytest
from helpers import BB_ENV, TIMEOUT

import pycontain
from pycontain import PIPE, _seccomp

PYTHON = "/usr/bin/python3"
X86_64 = platform.machine() == "x86_64"
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="syscall numbers of x86_64")

PRELUDE = textwrap.dedent(
    """
    import ctypes, errno, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def syscall(number, *args):
        result = libc.syscall(number, *args)
        return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
    """
)


def inside(code: str, **kwargs) -> list[str]:
    """Run ``code`` with the host's Python in a container; its output lines."""
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"{PYTHON} is missing")
    with pycontain.Process(
        [PYTHON, "-c", PRELUDE + textwrap.dedent(code)],
        layers=["/"],
        env={"PATH": "/usr/bin:/bin"},
        stdout=PIPE,
        stderr=PIPE,
        text=True,
        **kwargs,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    return out.split()


# -- the table and the program ------------------------------------------------

HEADERS = {
    0: ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+)\s+(\d+)"),
    1: ("/usr/include/x86_64-linux-gnu/asm/unistd_32.h", r"#define __NR_(\w+)\s+(\d+)"),
    2: ("/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+)\s+(\d+)"),
}


@pytest.mark.parametrize("column", [0, 1, 2], ids=["x86_64", "i386", "aarch64"])
def test_syscall_numbers_match_the_kernel_headers(column):
    path, pattern = HEADERS[column]
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing (linux-libc-dev)")
    with open(path) as f:
        numbers = {m.group(1): int(m.group(2)) for m in re.finditer(pattern, f.read())}
    checked = 0
    for name, row in _seccomp.SYSCALLS.items():
        # asm-generic also defines the 32-bit-only time64 calls, which
        # aarch64 does not have.
        if name in numbers and not (column == 2 and name.endswith("64") and "clock" in name):
            assert row[column] == numbers[name], name
            checked += 1
        elif row[column] is not None:
            # Newer than these headers (open_tree_attr): all architectures
            # have shared the numbers from 424 on.
            assert row[column] >= 424, name
    assert checked > 40


def test_every_rule_names_a_known_syscall():
    assert {rule.name for rule in _seccomp.DENIED} <= set(_seccomp.SYSCALLS)
    assert len({rule.name for rule in _seccomp.DENIED}) == len(_seccomp.DENIED)


def test_filters_are_whole_instructions_and_built_once():
    for machine in ("x86_64", "aarch64"):
        program = _seccomp.filter_for(machine)
        assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096
    assert _seccomp.default_filter() is _seccomp.default_filter()
    with pytest.raises(ValueError, match="no default seccomp filter for mips"):
        _seccomp.filter_for("mips")


def run_filter(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """A classic BPF interpreter for the instructions the filter uses."""
    data = (
        struct.pack("<iI", nr, arch)
        + bytes(8)
        + b"".join(struct.pack("<Q", value) for value in (*args, 0, 0, 0, 0, 0, 0)[:6])
    )
    code = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:
            accumulator = struct.unpack_from("<I", data, k)[0]
        elif op == 0x05:
            pc += k
        elif op in (0x15, 0x35, 0x45):
            taken = {0x15: accumulator == k, 0x35: accumulator >= k, 0x45: accumulator & k}[op]
            pc += jt if taken else jf
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x50000 | errno.EPERM, 0x50000 | errno.ENOSYS
ABIS = {
    "x86_64": [(0xC000003E, 0), (0x40000003, 1)],
    "aarch64": [(0xC00000B7, 2)],
}


def denying_args(rule: _seccomp.Rule) -> tuple[int, ...]:
    """Arguments with which ``rule`` denies its call."""
    if rule.arg is None:
        return ()
    value = rule.any_bit & -rule.any_bit or (rule.equals[0] if rule.equals else 0x40000)
    return (0,) * rule.arg + (value,)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_filter_denies_each_rule_and_allows_the_rest(machine):
    program = _seccomp.filter_for(machine)
    for arch, column in ABIS[machine]:
        numbers = set()
        for rule in _seccomp.DENIED:
            number = _seccomp.SYSCALLS[rule.name][column]
            if number is None:
                continue
            numbers.add(number)
            verdict = EPERM if rule.errno == errno.EPERM else ENOSYS
            assert run_filter(program, arch, number, denying_args(rule)) == verdict, rule.name
            if rule.arg is not None:
                allowed = (0,) * rule.arg + ((rule.unless or (0x400,))[0],)
                assert run_filter(program, arch, number, allowed) == ALLOW, rule.name
        for number in set(range(600)) - numbers:
            assert run_filter(program, arch, number) == ALLOW, number
    if machine == "x86_64":
        assert run_filter(program, 0xC000003E, 0x40000000 | 39) == ENOSYS  # x32
    assert run_filter(program, 0x40000028, 20) == ENOSYS  # 32-bit ARM: unknown here


# -- what the program sees ----------------------------------------------------


@needs_x86_64
def test_denied_calls_get_eperm_and_the_program_goes_on(host_root):
    out = inside(
        """
        CLONE_NEWUSER, CLONE_FILES, ADDR_NO_RANDOMIZE = 0x10000000, 0x400, 0x0040000
        print(syscall(250, 0, ctypes.c_long(-3), 0))            # keyctl
        print(syscall(321, 0, None, 0))                         # bpf
        print(syscall(298, None, 0, -1, -1, 0))                 # perf_event_open
        print(syscall(323, 0))                                  # userfaultfd
        print(syscall(101, 0, 0, None, None))                   # ptrace(TRACEME)
        print(syscall(272, CLONE_NEWUSER))                      # unshare, a namespace
        print(syscall(272, CLONE_FILES))                        # unshare, no namespace
        print(syscall(56, CLONE_NEWUSER | 17, None, None, None, None))  # clone, a namespace
        print(syscall(135, ADDR_NO_RANDOMIZE))                  # personality: ASLR off
        print(syscall(135, 0xFFFFFFFF))                         # personality: query
        print(syscall(425, 1, None))                            # io_uring_setup
        print(syscall(304, 0, None, 0))                         # open_by_handle_at
        """
    )
    assert out == [
        "EPERM",
        "EPERM",
        "EPERM",
        "EPERM",
        "EPERM",
        "EPERM",
        "ok",
        "EPERM",
        "EPERM",
        "ok",
        "EPERM",
        "EPERM",
    ]


@needs_x86_64
def test_clone3_gets_enosys_and_threads_still_start(host_root):
    out = inside(
        """
        import subprocess, threading
        print(syscall(435, None, 0))  # clone3: libc falls back to clone
        thread = threading.Thread(target=lambda: print("thread"))
        thread.start(); thread.join()
        print(subprocess.run(["/bin/true"]).returncode)
        """
    )
    assert out == ["ENOSYS", "thread", "0"]


@needs_x86_64
def test_seccomp_none_lets_keyctl_through(host_root):
    code = "print(syscall(250, 0, ctypes.c_long(-3), 0))  # keyctl GET_KEYRING_ID session"
    assert inside(code) == ["EPERM"]
    assert inside(code, seccomp=None) == ["ok"]


# 64-bit code that makes an i386 system call (int $0x80) with up to three
# arguments and returns the result: push rbx; mov eax/ebx/ecx/edx, imm32;
# int 0x80; pop rbx; ret.
I386_CALL = """
import mmap, struct
def i386_syscall(number, a=0, b=0, c=0):
    code = (b"\\x53" + b"\\xb8" + struct.pack("<i", number) + b"\\xbb" + struct.pack("<i", a)
            + b"\\xb9" + struct.pack("<i", b) + b"\\xba" + struct.pack("<i", c)
            + b"\\xcd\\x80\\x5b\\xc3")
    memory = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    memory.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    return ctypes.CFUNCTYPE(ctypes.c_int)(address)()
"""


@needs_x86_64
def test_i386_calls_get_the_same_rules(host_root):
    code = I386_CALL + "print(i386_syscall(20), i386_syscall(288, 0, -3, 0))  # getpid, keyctl"
    pid, keyctl = inside(code)
    if pid == str(-errno.ENOSYS):
        pytest.skip("this kernel runs no i386 system calls (ia32 emulation off)")
    assert pid == "2"  # the program, under pycontain's init (PID 1)
    assert keyctl == str(-errno.EPERM)
    _, keyctl = inside(code, seccomp=None)
    assert int(keyctl) > 0


@needs_x86_64
def test_x32_calls_get_enosys(host_root):
    assert inside("print(syscall(0x40000000 | 39))  # x32 getpid") == ["ENOSYS"]


# -- filters of one's own -----------------------------------------------------


@needs_x86_64
def test_a_filter_of_ones_own(rootfs):
    # Deny mkdir and mkdirat (x86_64) with EOPNOTSUPP, allow the rest.
    program = _seccomp.assemble(
        [
            (0x20, 0, 0, 0),  # load the syscall number
            (0x15, 2, 0, 83),  # mkdir
            (0x15, 1, 0, 258),  # mkdirat
            (0x06, 0, 0, 0x7FFF0000),  # allow
            (0x06, 0, 0, 0x00050000 | errno.EOPNOTSUPP),
        ]
    )
    with pycontain.Process(
        ["/bin/sh", "-c", "mkdir /x; echo $?; echo done"],
        layers=[rootfs],
        env=BB_ENV,
        seccomp=program,
        stdout=PIPE,
        stderr=PIPE,
        text=True,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert out.split() == ["1", "done"]
    assert "not supported" in err


def test_a_filter_the_kernel_refuses_is_a_spawn_error(rootfs, no_leaks):
    not_bpf = _seccomp.assemble([(0xFFFF, 0, 0, 0)])
    with pytest.raises(pycontain.SpawnError) as caught:
        pycontain.Process(["/bin/true"], layers=[rootfs], env=BB_ENV, seccomp=not_bpf)
    assert caught.value.step == "seccomp"
    assert caught.value.errno == errno.EINVAL
    assert "refused the seccomp filter" in str(caught.value)


def test_the_fork_path_loads_the_filter_too(rootfs):
    def nothing() -> None:
        pass

    with pycontain.Process(
        ["/bin/grep", "Seccomp:", "/proc/self/status"],
        layers=[rootfs],
        env=BB_ENV,
        pre_exec=nothing,
        stdout=PIPE,
        text=True,
    ) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    assert out.split() == ["Seccomp:", "2"]


@needs_x86_64
def test_the_default_filter_with_calls_allowed(host_root):
    # gdb or strace inside: the default, with ptrace allowed again.
    debuggable = pycontain.seccomp_filter(allow=["ptrace"])
    code = """
    print(syscall(101, 0, 0, None, None))   # ptrace(PTRACE_TRACEME)
    print(syscall(250, 0, ctypes.c_long(-3), 0))  # keyctl
    """
    assert inside(code, seccomp=debuggable) == ["ok", "EPERM"]
    assert inside(code) == ["EPERM", "EPERM"]


@pytest.mark.parametrize(
    "allow, error, message",
    [
        (["read"], ValueError, "does not deny read"),
        ("ptrace", TypeError, "not a single string"),
        ([101], TypeError, "must be names"),
    ],
)
def test_seccomp_filter_checks_its_names(allow, error, message):
    with pytest.raises(error, match=message):
        pycontain.seccomp_filter(allow=allow)
