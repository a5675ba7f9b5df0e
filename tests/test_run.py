"""Running a program: output, exit codes, arguments, environment, cwd, and
what the program sees of its container (PID 1, /proc, /sys, /dev, network)."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from helpers import BB_ENV, TIMEOUT, make_layer, run, sh

import pycontain
from pycontain import _userns

# -- output and exit codes ------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code(rootfs, legacy, code):
    with pycontain.Process(
        ["/bin/sh", "-c", f"exit {code}"], layers=[rootfs], env=BB_ENV, _force_legacy_clone=legacy
    ) as p:
        assert p.wait(timeout=TIMEOUT) == code
        assert p.returncode == code


def test_stdout_and_stderr_are_inherited(rootfs, legacy, capfd):
    with pycontain.Process(
        ["/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2"],
        layers=[rootfs],
        env=BB_ENV,
        _force_legacy_clone=legacy,
    ) as p:
        assert p.wait(timeout=TIMEOUT) == 0
    captured = capfd.readouterr()
    assert captured.out == "to-stdout\n"
    assert captured.err == "to-stderr\n"


def test_stdin_is_inherited(rootfs, tmp_path, capfd):
    data = tmp_path / "input"
    data.write_text("line one\nline two\n")
    saved = os.dup(0)
    try:
        fd = os.open(data, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        assert run(["/bin/wc", "-l"], layers=[rootfs], env=BB_ENV) == 0
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert capfd.readouterr().out.strip() == "2"


def test_dev_stdout_and_stderr_links_reach_the_callers_fds(rootfs, capfd):
    assert sh("echo via-link > /dev/stdout; echo err-link > /dev/stderr", [rootfs]) == 0
    captured = capfd.readouterr()
    assert captured.out == "via-link\n"
    assert captured.err == "err-link\n"


# -- arguments ---------------------------------------------------------------


def test_args_with_spaces_and_empty_strings(rootfs, capfd):
    args = ["a b", "  leading", "trailing  ", "", "tab\there", "quote'\"", "$HOME", "*"]
    code = run(
        ["/bin/sh", "-c", 'for a in "$@"; do printf "[%s]\\n" "$a"; done', "sh", *args],
        layers=[rootfs],
        env=BB_ENV,
    )
    assert code == 0
    assert capfd.readouterr().out == "".join(f"[{a}]\n" for a in args)


def test_many_arguments(rootfs, capfd):
    args = [f"arg{i}" for i in range(3000)]
    assert (
        run(["/bin/sh", "-c", 'echo "$#" "$1" "${3000}"', "sh", *args], layers=[rootfs], env=BB_ENV)
        == 0
    )
    assert capfd.readouterr().out == "3000 arg0 arg2999\n"


def test_bytes_and_non_utf8_arguments(rootfs, capfdbinary):
    assert run([b"/bin/echo", b"caf\xe9", b"\xff\xfe"], layers=[rootfs], env=BB_ENV) == 0
    assert capfdbinary.readouterr().out == b"caf\xe9 \xff\xfe\n"


def test_pathlike_arguments(rootfs, capfd):
    assert run([Path("/bin/echo"), Path("some/path")], layers=[rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out == "some/path\n"


def test_args_as_a_single_string_is_the_program(rootfs, capfd):
    # Like subprocess with shell=False: a lone string names the program.
    assert run("/bin/pwd", layers=[rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out == "/\n"


def test_args_attribute_is_what_was_given(rootfs):
    args = ["/bin/true", "x"]
    with pycontain.Process(args, layers=[rootfs], env=BB_ENV) as p:
        assert p.args is args
        assert p.wait(timeout=TIMEOUT) == 0


# -- environment ---------------------------------------------------------------


def test_env_is_exactly_what_was_given(rootfs, capfd):
    env = {"PATH": "/bin", "FOO": "bar baz", "EMPTY": "", "EQ": "a=b=c"}
    assert run(["/bin/env"], layers=[rootfs], env=env) == 0
    lines = capfd.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"{k}={v}" for k, v in env.items())


def test_empty_env(rootfs, capfd):
    assert run(["/bin/env"], layers=[rootfs], env={}) == 0
    assert capfd.readouterr().out == ""


def test_bytes_env(rootfs, capfdbinary):
    assert run(["/bin/env"], layers=[rootfs], env={b"RAW": b"\xff\xfe v"}) == 0
    assert capfdbinary.readouterr().out == b"RAW=\xff\xfe v\n"


def test_env_defaults_to_the_parents_environment(rootfs, capfdbinary, monkeypatch):
    marker = f"value with spaces\nand a newline {uuid.uuid4()}"
    monkeypatch.setenv("PYCONTAIN_TEST_MARKER", marker)
    # /proc/self/environ: the exact environment, NUL-separated.
    assert run(["/bin/cat", "/proc/self/environ"], layers=[rootfs]) == 0
    entries = capfdbinary.readouterr().out.split(b"\0")
    assert entries[-1] == b""
    assert f"PYCONTAIN_TEST_MARKER={marker}".encode() in entries
    assert sorted(entries[:-1]) == sorted(k + b"=" + v for k, v in os.environb.items())


# -- cwd and umask ----------------------------------------------------------------


def test_default_cwd_is_root(rootfs, capfd):
    assert sh("pwd", [rootfs]) == 0
    assert capfd.readouterr().out == "/\n"


@pytest.mark.parametrize("cwd", ["/bin", b"/bin", Path("/bin")])
def test_cwd(rootfs, capfd, cwd):
    assert sh("pwd; ls busybox", [rootfs], cwd=cwd) == 0
    assert capfd.readouterr().out == "/bin\nbusybox\n"


def test_cwd_is_resolved_inside_the_container(rootfs, tmp_path, capfd):
    # /only-in-layer exists in the container's layer but not on the host.
    layer = tmp_path / "layer"
    make_layer(layer, {"only-in-layer/here": "x"})
    assert not os.path.exists("/only-in-layer")
    assert sh("pwd; ls", [layer, rootfs], cwd="/only-in-layer") == 0
    assert capfd.readouterr().out == "/only-in-layer\nhere\n"


def test_umask_is_the_callers(rootfs, capfd):
    old = os.umask(0o027)
    try:
        assert sh("umask; touch /f; stat -c %a /f", [rootfs]) == 0
    finally:
        os.umask(old)
    assert capfd.readouterr().out == "0027\n640\n"


# -- which program runs ---------------------------------------------------------


def test_executable_overrides_args0(host_root, capfd):
    # (Not busybox: it picks its applet by argv[0].)
    code = run(["fancy-name", "-c", 'echo "$0"'], executable="/bin/sh", layers=[host_root])
    assert code == 0
    assert capfd.readouterr().out == "fancy-name\n"


def test_executable_without_slash_is_searched_in_path(rootfs, tmp_path, capfd):
    layer = tmp_path / "layer"
    make_layer(
        layer, {"tools/real-prog": '#!/bin/sh\necho "real-prog ran as $0"\n'}, executable=True
    )
    code = run(
        ["ignored-name"],
        executable="real-prog",
        layers=[layer, rootfs],
        env={"PATH": "/tools:/bin"},
    )
    assert code == 0
    # A script's $0 is the path the kernel exec'd.
    assert capfd.readouterr().out == "real-prog ran as /tools/real-prog\n"


def test_path_lookup_uses_the_containers_path(rootfs, tmp_path, capfd):
    # The program exists only inside the container, in a PATH directory that
    # the host does not have: the lookup must happen in the container.
    layer = tmp_path / "layer"
    make_layer(layer, {"opt/tools/pc-hello": '#!/bin/sh\necho from-layer "$@"\n'}, executable=True)
    assert not os.path.exists("/opt/tools/pc-hello")
    assert run(["pc-hello", "x"], layers=[layer, rootfs], env={"PATH": "/opt/tools:/bin"}) == 0
    assert capfd.readouterr().out == "from-layer x\n"


def test_path_lookup_busybox_applet(rootfs, legacy, capfd):
    with pycontain.Process(
        ["echo", "found"],
        layers=[rootfs],
        env={"PATH": "/nonexistent:/bin"},
        _force_legacy_clone=legacy,
    ) as p:
        assert p.wait(timeout=TIMEOUT) == 0
    assert capfd.readouterr().out == "found\n"


def test_path_lookup_order_and_skipping_non_executables(rootfs, tmp_path, capfd):
    layer = tmp_path / "layer"
    make_layer(layer, {"p1/tool": "#!/bin/sh\necho p1\n"})  # not executable: skipped
    make_layer(
        layer,
        {"p2/tool": "#!/bin/sh\necho p2\n", "p3/tool": "#!/bin/sh\necho p3\n"},
        executable=True,
    )
    assert run(["tool"], layers=[layer, rootfs], env={"PATH": "/nowhere:/p1:/p2:/p3:/bin"}) == 0
    assert capfd.readouterr().out == "p2\n"


def test_relative_executable_is_resolved_against_cwd(rootfs, capfd):
    assert run(["./echo", "relative"], cwd="/bin", layers=[rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out == "relative\n"


# -- what the program sees: PID namespace ---------------------------------------


@pytest.mark.parametrize("init", [True, False], ids=["init", "no-init"])
def test_program_is_pid_2_under_the_init_or_pid_1(rootfs, legacy, init, capfd):
    with pycontain.Process(
        ["/bin/sh", "-c", "echo $$; cut -d' ' -f1,4 /proc/self/stat; exit 0"],
        layers=[rootfs],
        env=BB_ENV,
        init=init,
        die_with_parent=init,
        _force_legacy_clone=legacy,
    ) as p:
        assert p.pid != 1
        assert p.wait(timeout=TIMEOUT) == 0
    pid, child_pid, child_ppid = capfd.readouterr().out.split()
    # The init is PID 1 and the program its child; without it the program is PID 1.
    program = 2 if init else 1
    assert pid == str(program)
    # A command the shell forks is the next pid of the namespace.
    assert (child_pid, child_ppid) == (str(program + 1), str(program))


def test_proc_shows_only_the_containers_processes(rootfs, capfd):
    assert sh("ls /proc | grep -E '^[0-9]+$'", [rootfs]) == 0
    pids = {int(line) for line in capfd.readouterr().out.split()}
    assert 1 in pids
    # sh, ls and grep: only a handful of small pids, none of the host's.
    assert max(pids) < 10, pids


def test_proc_1_is_the_init_or_the_program(rootfs, capfd):
    assert run(["/bin/cat", "/proc/1/cmdline"], layers=[rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out.startswith("pycontain-init\0")
    args = ["/bin/cat", "/proc/1/cmdline"]
    assert run(args, layers=[rootfs], env=BB_ENV, init=False, die_with_parent=False) == 0
    assert capfd.readouterr().out == "/bin/cat\0/proc/1/cmdline\0"


# -- network, mounts, /sys ----------------------------------------------------------


def test_only_loopback_network_interface(rootfs, capfd):
    assert sh("ls /sys/class/net", [rootfs]) == 0
    assert capfd.readouterr().out.split() == ["lo"]


def test_mount_table_is_the_containers_own(rootfs, capfd):
    assert run(["/bin/cat", "/proc/self/mountinfo"], layers=[rootfs], env=BB_ENV) == 0
    mounts = {}
    for line in capfd.readouterr().out.splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        mounts[fields[4]] = (fstype, fields[5].split(","))
    # None of the host's mounts (old root detached after pivot_root); the
    # masks and read-only binds over /proc and /sys (tests/test_escape_rootfs.py).
    protected = {path for path in mounts if path.startswith(("/proc/", "/sys/"))}
    expected = {"/", "/proc", "/sys", "/dev", "/dev/shm", "/dev/pts"}
    if not _userns.caller_has_sys_admin():
        # Rootless mode: /dev's nodes are binds of the host's (README, "Rootless").
        expected |= {
            f"/dev/{node}" for node in ("null", "zero", "full", "random", "urandom", "tty")
        }
    assert set(mounts) - protected == expected
    assert {"/proc/sys", "/proc/keys"} <= protected
    assert mounts["/"][0] == "overlay"
    assert mounts["/proc"][0] == "proc"
    assert mounts["/sys"][0] == "sysfs"
    assert "ro" in mounts["/sys"][1]
    assert mounts["/dev"][0] == "tmpfs"
    assert mounts["/dev/shm"][0] == "tmpfs"
    assert mounts["/dev/pts"][0] == "devpts"


def test_sys_is_read_only(rootfs, capfd):
    code = sh(
        "echo 1 > /sys/kernel/pc-test 2>/dev/null && echo wrote; "
        "mkdir /sys/pc-test 2>/dev/null && echo made; echo done",
        [rootfs],
    )
    assert code == 0
    assert capfd.readouterr().out == "done\n"


# -- /dev ------------------------------------------------------------------------


def test_dev_is_minimal(rootfs, capfd):
    assert sh("ls -A /dev; echo ---; find /dev -type b", [rootfs]) == 0
    listing, block_devices = capfd.readouterr().out.split("---\n")
    entries = set(listing.split())
    expected = {
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "fd",
        "stdin",
        "stdout",
        "stderr",
        "shm",
        "pts",
    }
    assert expected <= entries
    # Nothing that reaches hardware or the host.
    assert not entries & {"mem", "kmem", "kmsg", "vda", "sda", "console", "port"}
    assert block_devices.strip() == ""


@pytest.mark.parametrize(
    ("node", "major", "minor"),
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ],
)
def test_dev_nodes_are_the_right_devices(rootfs, capfd, node, major, minor):
    assert sh(f"stat -c '%F %t %T %a' /dev/{node}", [rootfs]) == 0
    kind, hex_major, hex_minor, mode = capfd.readouterr().out.rsplit(" ", 3)
    assert kind == "character special file"
    assert (int(hex_major, 16), int(hex_minor, 16)) == (major, minor)
    assert mode.strip() == "666"


def test_dev_nodes_work(rootfs, capfd):
    script = (
        "echo discarded > /dev/null || exit 10;"
        'test -z "$(cat /dev/null)" || exit 11;'
        "head -c 4 /dev/urandom | wc -c;"
        "head -c 4 /dev/random | wc -c;"
        "head -c 3 /dev/zero | od -An -tx1;"
        "if echo x > /dev/full; then exit 12; fi;"
        "echo ok"
    )
    assert sh(script, [rootfs]) == 0
    out = capfd.readouterr().out.split("\n")
    assert [line.strip() for line in out[:3]] == ["4", "4", "00 00 00"]
    assert out[3] == "ok"


def test_dev_fd_links(rootfs, capfd):
    links = "/dev/fd /dev/stdin /dev/stdout /dev/stderr"
    script = f"for l in {links}; do readlink $l; done; ls /dev/fd/"
    assert sh(script, [rootfs]) == 0
    out = capfd.readouterr().out.split()
    assert out[:4] == ["/proc/self/fd", "/proc/self/fd/0", "/proc/self/fd/1", "/proc/self/fd/2"]
    assert {"0", "1", "2"} <= set(out[4:])


def test_dev_shm_is_writable(rootfs, capfd):
    assert sh("echo shared > /dev/shm/f && cat /dev/shm/f && stat -c %a /dev/shm", [rootfs]) == 0
    assert capfd.readouterr().out == "shared\n1777\n"


def test_dev_pts_is_a_private_devpts(rootfs, capfd):
    assert sh("ls -A /dev/pts", [rootfs]) == 0
    # A new instance: only its ptmx, none of the host's ptys.
    assert capfd.readouterr().out.split() == ["ptmx"]


# -- fds and signals inherited from the caller ---------------------------------------


def test_only_stdio_fds_reach_the_program(rootfs, capfd):
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        os.dup2(fd, 77, inheritable=True)
        # "; exit" so that sh does not exec ls in its place: list sh's own fds.
        assert sh("ls /proc/$$/fd; exit 0", [rootfs]) == 0
    finally:
        os.close(77)
        os.close(fd)
    assert sorted(capfd.readouterr().out.split()) == ["0", "1", "2"]


def _sigmask_bits(status_text: str, field: str) -> int:
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in status")


def test_signal_dispositions_like_subprocess(rootfs, capfd):
    # Python ignores SIGPIPE and SIGXFSZ for itself: the program gets them
    # back at default. Other ignored signals stay ignored (as across exec).
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    old_hup = signal.signal(signal.SIGHUP, lambda *a: None)
    try:
        assert run(["/bin/cat", "/proc/self/status"], layers=[rootfs], env=BB_ENV) == 0
    finally:
        signal.signal(signal.SIGUSR2, old)
        signal.signal(signal.SIGHUP, old_hup)
    status = capfd.readouterr().out
    ignored = _sigmask_bits(status, "SigIgn")
    bit = lambda sig: 1 << (sig - 1)  # noqa: E731
    assert not ignored & bit(signal.SIGPIPE)
    assert not ignored & bit(signal.SIGXFSZ)
    assert not ignored & bit(signal.SIGHUP)  # a Python handler is not "ignored"
    assert ignored & bit(signal.SIGUSR2)
    assert _sigmask_bits(status, "SigCgt") == 0


def test_signal_mask_is_the_callers_not_all_blocked(rootfs, capfd):
    with open("/proc/thread-self/status") as f:
        parent_blocked = _sigmask_bits(f.read(), "SigBlk")
    assert run(["/bin/cat", "/proc/self/status"], layers=[rootfs], env=BB_ENV) == 0
    assert _sigmask_bits(capfd.readouterr().out, "SigBlk") == parent_blocked


# -- the host's / as a layer -------------------------------------------------------


def test_host_root_runs_host_binaries(host_root, legacy, capfd):
    with pycontain.Process(
        ["/bin/sh", "-c", "echo $$; ls /sys/class/net"],
        layers=[host_root],
        _force_legacy_clone=legacy,
    ) as p:
        assert p.wait(timeout=TIMEOUT) == 0
    assert capfd.readouterr().out.split() == ["2", "lo"]  # PID 1 is the init


def test_host_root_python(host_root, capfd):
    code = run(
        [sys.executable, "-c", "import os, sys; print(os.getpid(), sys.argv[1])", "arg one"],
        layers=[host_root],
    )
    assert code == 0
    assert capfd.readouterr().out == "2 arg one\n"


def test_host_root_usr_bin_env(host_root, capfd):
    assert run(["/usr/bin/env"], layers=[host_root], env={"ONLY": "this"}) == 0
    assert capfd.readouterr().out == "ONLY=this\n"


def test_host_root_path_lookup(host_root, capfd):
    assert run(["env"], layers=[host_root], env={"PATH": "/usr/bin:/bin", "A": "1"}) == 0
    assert sorted(capfd.readouterr().out.split()) == ["A=1", "PATH=/usr/bin:/bin"]


def test_host_root_writes_do_not_reach_the_host(host_root):
    name = f"/pycontain-test-{uuid.uuid4().hex}"
    assert run(["/bin/sh", "-c", f"echo x > {name} && test -f {name}"], layers=[host_root]) == 0
    assert not os.path.exists(name)


# -- more about paths ----------------------------------------------------------------


def test_path_lookup_without_path_uses_the_default_path(rootfs, capfd):
    # Like execvp: no PATH in env means os.defpath (/bin:/usr/bin).
    assert run(["echo", "no-path"], layers=[rootfs], env={}) == 0
    assert capfd.readouterr().out == "no-path\n"


def test_relative_cwd_is_relative_to_the_containers_root(rootfs, capfd):
    assert run(["/bin/pwd"], cwd="bin", layers=[rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out == "/bin\n"


def test_non_utf8_program_and_cwd_paths(rootfs, tmp_path, capfdbinary):
    layer = os.fsencode(tmp_path / "layer")
    os.makedirs(layer + b"/caf\xe9")
    with open(layer + b"/caf\xe9/prog", "w") as f:
        f.write("#!/bin/sh\npwd\n")
    os.chmod(layer + b"/caf\xe9/prog", 0o755)
    assert run([b"/caf\xe9/prog"], layers=[layer, rootfs], env=BB_ENV) == 0
    assert (
        run([b"prog"], executable=b"./prog", cwd=b"/caf\xe9", layers=[layer, rootfs], env=BB_ENV)
        == 0
    )
    assert capfdbinary.readouterr().out == b"/\n/caf\xe9\n"


def test_loopback_is_up(rootfs, capfd):
    # README: "its network has only a loopback device (up)".
    assert sh("cat /sys/class/net/lo/flags /proc/net/dev", [rootfs]) == 0
    flags, *dev = capfd.readouterr().out.splitlines()
    assert int(flags, 16) & 0x1 == 1  # IFF_UP set
    interfaces = [line.split(":")[0].strip() for line in dev[2:]]
    assert interfaces == ["lo"]
