"""Escape attempts through privileges, from a program running as root in a
container with the default settings (issue 9, items 2 to 4 and 7).

Each test fails if the attempt succeeds. Every attempt is harmless if it
does succeed: it writes back the value it read, reads only, changes nothing
(settimeofday(NULL, NULL) checks the capability and sets nothing), mounts
only in the container's own mount namespace, or targets something the test
made (a pty pair, a key in a session keyring of a subprocess, a listener, a
process group of a subprocess). The attacker is the host's own Python
(/usr/bin/python3, from the host's "/" as the layer).
"""

from __future__ import annotations

import ast
import json
import os
import platform
import pty
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import TIMEOUT

import pycontain
from pycontain import _seccomp

PYTHON = "/usr/bin/python3"
_COLUMN = {"x86_64": 0, "aarch64": 2}.get(platform.machine())


def nr(name: str) -> int:
    """This machine's number of the system call ``name``."""
    if _COLUMN is None:
        pytest.skip(f"no syscall numbers for {platform.machine()}")
    number = _seccomp.SYSCALLS[name][_COLUMN]
    assert number is not None
    return number


HOST_ENV = {"PATH": "/usr/bin:/bin"}

# Shared by the attacks: a raw syscall with its errno, as a string.
PRELUDE = textwrap.dedent(
    """
    import ctypes, errno, fcntl, json, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def syscall(number, *args):
        result = libc.syscall(number, *args)
        return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
    def attempt(f):
        try:
            return f()
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    """
)


def _need_host_python(host_root: str) -> None:
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"{PYTHON} is missing")


def inside(code: str, layers: list[str] | None = None, **kwargs) -> str:
    """Run ``code`` with the host's Python in a container; return its last line."""
    kwargs.setdefault("env", HOST_ENV)
    with pycontain.Process(
        [PYTHON, "-c", PRELUDE + textwrap.dedent(code)],
        layers=layers or ["/"],
        stdout=pycontain.PIPE,
        stderr=pycontain.PIPE,
        text=True,
        **kwargs,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    return out.strip().splitlines()[-1]


@pytest.fixture
def attacker(host_root):
    _need_host_python(host_root)
    return inside


# Root writes a root-owned sysctl with no capability at all: only the
# read-only /proc/sys (csrc/kernelfs.c) stops it.


def test_cannot_write_core_pattern(attacker):
    # The host kernel would run the pattern's program as host root. Writing
    # back the value just read changes nothing if the attempt gets through.
    # Root's write to a sysctl needs no capability, only the file mode and a
    # writable mount: read-only /proc/sys is what stops this.
    result = attacker(
        """
        def write_back():
            value = open("/proc/sys/kernel/core_pattern").read()
            with open("/proc/sys/kernel/core_pattern", "w") as f:
                f.write(value)
            return "ok"
        print(attempt(write_back))
        """
    )
    assert result in ("EROFS", "EACCES", "EPERM")


def test_cannot_open_drop_caches_for_writing(attacker):
    # Opening is the whole attempt: nothing is written even when it opens.
    result = attacker(
        """
        def open_for_writing():
            os.close(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY))
            return "ok"
        print(attempt(open_for_writing))
        """
    )
    assert result in ("EROFS", "EACCES", "EPERM")


def test_cannot_read_host_disk_through_mknod(attacker):
    device = os.stat("/").st_dev
    result = attacker(
        f"""
        def read_disk():
            os.mknod("/tmp/disk", 0o600 | 0o060000, {device})  # S_IFBLK
            with open("/tmp/disk", "rb") as f:
                f.read(512)
            return "ok"
        print(attempt(read_disk))
        """
    )
    assert result == "EPERM"


def test_cannot_remount_sys_read_write(attacker):
    result = attacker(
        """
        MS_REMOUNT = 32
        def remount():
            if libc.mount(None, b"/sys", None, ctypes.c_ulong(MS_REMOUNT), None) < 0:
                return errno.errorcode[ctypes.get_errno()]
            return "ok"
        print(remount())
        """
    )
    assert result == "EPERM"


def test_cannot_mount_cgroup_filesystem(attacker):
    result = attacker(
        """
        os.makedirs("/tmp/cgroup")
        def mount():
            if libc.mount(b"cgroup2", b"/tmp/cgroup", b"cgroup2", ctypes.c_ulong(0), None) < 0:
                return errno.errorcode[ctypes.get_errno()]
            return "ok"
        print(mount())
        """
    )
    assert result == "EPERM"


def test_cannot_set_the_clock(attacker):
    # settimeofday(NULL, NULL) checks CAP_SYS_TIME and then sets nothing.
    result = attacker(f"print(syscall({nr('settimeofday')}, None, None))")
    assert result == "EPERM"


def test_cannot_read_kernel_log(attacker):
    syslog = nr("syslog")
    result = attacker(
        """
        def read_kmsg():
            os.mknod("/tmp/kmsg", 0o600 | 0o020000, os.makedev(1, 11))  # S_IFCHR /dev/kmsg
            fd = os.open("/tmp/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.read(fd, 8192)
            return "ok"
        buffer = ctypes.create_string_buffer(4096)
        SYSLOG_ACTION_READ_ALL = 3  # reads without consuming
        read_all = syscall(SYSLOG, SYSLOG_ACTION_READ_ALL, buffer, 4096)
        print(json.dumps([attempt(read_kmsg), read_all]))
        """.replace("SYSLOG,", f"{syslog},")
    )
    assert json.loads(result) == ["EPERM", "EPERM"]


def test_cannot_load_a_module(attacker):
    # An empty image: at most ENOEXEC from the loader if the call got through.
    result = attacker(f'print(syscall({nr("init_module")}, None, 0, b""))')
    assert result == "EPERM"


@pytest.mark.parametrize("seccomp", ["default", None])
def test_cannot_inject_keystrokes_into_an_inherited_tty(attacker, seccomp):
    # A pty pair made here stands for the caller's terminal. The filter
    # denies TIOCSTI; without it, the container's own session (the terminal
    # is not its controlling one) and the lack of CAP_SYS_ADMIN still do.
    master, slave = pty.openpty()
    try:
        result = attacker(
            """
            import termios
            print(attempt(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"X") and "ok"))
            """,
            stdin=slave,
            seccomp=seccomp,
        )
        os.set_blocking(master, False)
        try:
            echoed = os.read(master, 100)
        except BlockingIOError:
            echoed = b""
    finally:
        os.close(master)
        os.close(slave)
    assert result == "EPERM"
    assert b"X" not in echoed


def test_cannot_read_the_callers_session_keys(host_root, tmp_path):
    _need_host_python(host_root)
    # A subprocess with a session keyring of its own holds the secret, then
    # starts the container that tries to read it; the keyring and the key go
    # with the subprocess.
    script = tmp_path / "keys.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import ctypes, json, sys
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            from test_escape_privileges import inside
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_READ, KEYCTL_INVALIDATE = 1, 11, 21
            KEY_SPEC_SESSION_KEYRING = -3
            KEYCTL, ADD_KEY = {nr("keyctl")}, {nr("add_key")}
            assert libc.syscall(KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, b"pycontain-test") > 0
            key = libc.syscall(ADD_KEY, b"user", b"pycontain-secret", b"s3cret", 6,
                               KEY_SPEC_SESSION_KEYRING)
            assert key > 0
            code = (
                "buffer = ctypes.create_string_buffer(64)\\n"
                f"print(syscall({{KEYCTL}}, {{KEYCTL_READ}}, {{key}}, buffer, 64))\\n"
            )
            results = {{
                "default": inside(code),
                "seccomp=None": inside(code, seccomp=None),
            }}
            libc.syscall(KEYCTL, KEYCTL_INVALIDATE, key)
            print(json.dumps(results))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.splitlines()[-1])
    # Denied by the filter; without it, the key is not possessed any more.
    assert results == {"default": "EPERM", "seccomp=None": "EACCES"}


def test_cannot_connect_to_a_host_loopback_listener(attacker):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = attacker(
            f"""
            def connect():
                socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
                return "ok"
            print(attempt(connect))
            """
        )
    # The container's own lo is up: nothing listens there.
    assert result == "ECONNREFUSED"


def test_cannot_see_a_host_process(attacker):
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            result = attacker(
                f"""
                print(json.dumps([os.path.exists("/proc/{sleeper.pid}"),
                                  attempt(lambda: os.kill({sleeper.pid}, 0) or "ok")]))
                """
            )
        finally:
            sleeper.kill()
    assert json.loads(result) == [False, "ESRCH"]


def _run_caller(tmp_path, body: str) -> str:
    """Run ``body`` in a subprocess that has a session of its own (and with
    it, a process group that pycontain's tests do not share); its output."""
    script = tmp_path / "caller.py"
    script.write_text(
        f"import os, sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_escape_privileges import inside\n" + textwrap.dedent(body)
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cannot_signal_the_callers_process_group(host_root, tmp_path):
    # kill(0, sig) reaches the caller's process group unless the container
    # has one of its own. The caller here counts the SIGUSR1 it gets.
    _need_host_python(host_root)
    out = _run_caller(
        tmp_path,
        """
        import signal, time
        received = []
        signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
        # The container's PID 1 ignores SIGUSR1, so it does not die of its own.
        result = inside("import signal\\n"
                        "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\\n"
                        "os.kill(0, signal.SIGUSR1)\\n"
                        "print(os.getpgid(0))")
        time.sleep(0.2)
        print(result, len(received))
        """,
    )
    group_inside, received = out.split()
    assert received == "0"
    assert group_inside == "1"  # its PID 1 leads a process group of its own


def test_cannot_reach_the_callers_controlling_terminal(host_root, tmp_path):
    # A caller with a controlling terminal (a pty made here): the container
    # gets a session of its own, so /dev/tty is nothing to it.
    _need_host_python(host_root)
    out = _run_caller(
        tmp_path,
        """
        import fcntl, pty, termios
        from pycontain import _privileges
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        assert _privileges.has_controlling_terminal()
        print(inside("print(json.dumps([os.getsid(0), "
                     "attempt(lambda: os.open('/dev/tty', os.O_RDWR) and 'ok')]))"))
        """,
    )
    assert json.loads(out) == [1, "ENXIO"]


def _install_setuid_python() -> None:
    """pre_pivot: a setuid-root copy of the host's Python as /opt/suid-python,
    in the container's writable layer (its private tmpfs): the copy never
    exists on the host's disk."""
    os.makedirs("opt", exist_ok=True)
    shutil.copy2(os.path.realpath(PYTHON), "opt/suid-python")
    os.chown("opt/suid-python", 0, 0)
    os.chmod("opt/suid-python", 0o4755)


def test_setuid_binary_gives_no_privileges_to_a_non_root_uid(host_root):
    _need_host_python(host_root)
    with pycontain.Process(
        [
            "/opt/suid-python",
            "-c",
            "import os; print(os.geteuid(), "
            "[line.split()[1] for line in open('/proc/self/status') if line.startswith('Cap')])",
        ],
        layers=["/"],
        uid=1000,
        gid=1000,
        env=HOST_ENV,
        pre_pivot=_install_setuid_python,
        stdout=pycontain.PIPE,
        stderr=pycontain.PIPE,
        text=True,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    euid, capabilities = out.split(" ", 1)
    assert euid == "1000"
    assert set(ast.literal_eval(capabilities)) == {"0000000000000000"}  # Inh Prm Eff Bnd Amb


def test_dev_is_read_only_even_with_cap_mknod(host_root):
    # /dev must allow device nodes (it is not nodev): were it writable, a
    # program given CAP_MKNOD could make one for any host device there.
    done = pycontain.run(
        ["/bin/sh", "-c", "mknod /dev/mem2 c 1 1; echo $?; mknod /tmp/mem2 c 1 1 && cat /tmp/mem2"],
        layers=[host_root],
        capabilities=["mknod"],
        capture_output=True,
        text=True,
    )
    assert done.stdout.splitlines()[0] != "0"
    assert "Read-only file system" in done.stderr
    # Elsewhere the node can be made, but nodev keeps it closed.
    assert "Permission denied" in done.stderr or "Operation not permitted" in done.stderr
    assert (
        pycontain.run(
            ["/bin/sh", "-c", "echo x > /dev/shm/x && cat /dev/shm/x"],
            layers=[host_root],
            capture_output=True,
            text=True,
        ).stdout
        == "x\n"
    )
