"""The pycontain command, run as a subprocess: options, exit statuses, signals."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import (
    NEEDS_CGROUP,
    NEEDS_OTHER_IDS,
    TIMEOUT,
    child_pids,
    handles_signal,
    program_pid,
    wait_until,
)

import pycontain
from pycontain import _cli

CLI = [sys.executable, "-m", "pycontain"]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def test_version():
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"pycontain {pycontain.__version__}"


def test_the_demo_without_arguments(host_root):
    done = cli()
    assert done.returncode == 0, done.stderr
    assert "my pid is 2" in done.stdout  # under pycontain's init, PID 1


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_run_with_options(rootfs, tmp_path):
    writedir = tmp_path / "upper"
    writedir.mkdir()
    done = cli(
        "run", "--layer", rootfs, "--writedir", str(writedir), "--hostname", "clibox",
        "--uid", "7", "--gid", "8", "--umask", "077", "--rlimit", "nofile=50:60",
        "--clearenv", "-e", "PATH=/bin", "-e", "GREETING=hi there", "--cwd", "/bin", "--",
        "sh", "-c", 'echo "$GREETING|$(hostname)|$(id -u):$(id -g)|$(umask)|$(ulimit -n)|$PWD"'
        "; echo kept > /kept 2>/dev/null; env | wc -l",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, count = done.stdout.splitlines()
    assert first == "hi there|clibox|7:8|0077|50|/bin"
    assert int(count) <= 4  # PATH, GREETING, and what sh sets itself (PWD, SHLVL)


def test_mount_and_privilege_options(rootfs, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    done = cli(
        "run", "--layer", rootfs, "--bind", f"{shared}:/data:rw", "--tmpfs", "/scratch:1M:0700",
        "--shm-size", "8M", "--capability", "none", "--seccomp", "default", "--network", "none",
        "-e", "PATH=/bin", "--",
        "sh", "-c", "echo kept > /data/f; grep -E ' /(scratch|dev/shm) ' /proc/mounts;"
        " grep CapEff /proc/self/status; ls /sys/class/net",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (shared / "f").read_text() == "kept\n"
    lines = done.stdout.splitlines()
    assert any(" /scratch tmpfs " in line and "size=1024k" in line for line in lines)
    assert any(" /dev/shm tmpfs " in line and "size=8192k" in line for line in lines)
    assert "CapEff:\t0000000000000000" in lines
    assert lines[-1] == "lo"
    assert cli("run", "--layer", rootfs, "--bind", "nocolon", "--", "/bin/true").returncode == 125


@pytest.mark.needs_root(NEEDS_CGROUP)
def test_limits_become_a_mapping(rootfs):
    options = _cli.build_parser().parse_args(
        ["run", "--layer", rootfs, "--limit", "pids=16", "--limit", "memory=64M", "--", "x"]
    )
    assert _cli.container_from(options).limits == {"pids": 16, "memory": "64M"}
    done = cli("run", "--layer", rootfs, "--limit", "pids=16", "--", "/bin/true")
    assert done.returncode == 0, done.stderr
    assert cli("run", "--layer", rootfs, "--limit", "nosuch=1", "--", "/bin/true").returncode == 125


def test_the_old_form_without_run_keeps_working(rootfs):
    done = cli("--layer", rootfs, "--", "/bin/sh", "-c", "exit 5")
    assert done.returncode == 5


def test_the_layer_defaults_to_the_host_root(host_root):
    done = cli("run", "--", "sh", "-c", "test -d /usr && echo $$")
    assert (done.returncode, done.stdout) == (0, "2\n")  # under pycontain's init, PID 1


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["/bin/sh", "-c", "exit 3"], 3),
        (["/nonexistent"], 127),
        (["nonexistent-program"], 127),
        (["/bin"], 126),
    ],
    ids=["own", "not-found", "not-in-path", "not-executable"],
)
def test_exit_status_as_docker_run(rootfs, command, status):
    done = cli("run", "--layer", rootfs, "-e", "PATH=/bin", "--", *command)
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_without_exec_permission_is_126(rootfs, tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "prog").write_text("#!/bin/sh\necho hi\n")
    os.chmod(layer / "prog", 0o644)
    done = cli("run", "--layer", str(layer), "--layer", rootfs, "--", "/prog")
    assert done.returncode == 126
    assert "Permission denied" in done.stderr


@pytest.mark.parametrize(
    "options",
    [["--layer", "/nonexistent-layer"], ["--uid", "-5"], ["--rlimit", "nosuch=1"], ["--bogus"]],
    ids=["missing-layer", "bad-uid", "bad-rlimit", "unknown-option"],
)
def test_pycontain_failures_are_125(rootfs, options):
    done = cli("run", *options, "--", "/bin/true")
    assert done.returncode == 125
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()


def test_no_command_is_125():
    assert cli("run").returncode == 125


def test_timeout_kills_and_exits_124(rootfs):
    done = cli("run", "--layer", rootfs, "--timeout", "0.3", "--", "/bin/sleep", "60")
    assert done.returncode == 124
    assert "timed out" in done.stderr


def _container_of(cli_pid: int) -> int:
    """The container's PID 1: the CLI's child that is not its helper."""
    found: list[int] = []

    def look() -> bool:
        try:
            with open(f"/proc/{cli_pid}/task/{cli_pid}/children") as f:
                pids = [int(pid) for pid in f.read().split()]
        except FileNotFoundError:
            return False
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    # The init, once exec'd: until then the child shares the
                    # CLI's memory, and its command line (which names sleep too).
                    if f.read().startswith(b"pycontain-init"):
                        found.append(pid)
                        return True
            except FileNotFoundError:
                pass
        return False

    assert wait_until(look, TIMEOUT)
    # The program, under pycontain's init (whose command line names it too).
    return program_pid(found[0])


def test_killed_by_a_signal_is_128_plus_n(rootfs):
    with subprocess.Popen(
        [*CLI, "run", "--layer", rootfs, "--", "/bin/sleep", "60"], stderr=subprocess.PIPE
    ) as process:
        os.kill(_container_of(process.pid), signal.SIGKILL)
        assert process.wait(TIMEOUT) == 128 + signal.SIGKILL


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_interrupt_ends_the_container_without_a_traceback(rootfs, sig, status):
    before = child_pids()
    with subprocess.Popen(
        [*CLI, "run", "--layer", rootfs, "--", "/bin/sleep", "60"],
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        container = _container_of(process.pid)
        # Python's handlers are installed by the time the container runs.
        assert wait_until(lambda: handles_signal(process.pid, signal.SIGTERM), TIMEOUT)
        process.send_signal(sig)
        assert process.wait(TIMEOUT) == status
        assert "Traceback" not in process.stderr.read()
    assert not os.path.exists(f"/proc/{container}")
    assert child_pids() <= before


def test_every_container_field_is_an_option():
    # A new Container field becomes an option with no edit to the CLI;
    # only callbacks (Python objects) are left out, by name.
    fields = {f.name for f in dataclasses.fields(pycontain.Container) if f.init}
    offered = {option.field for option in _cli.CONTAINER_OPTIONS}
    assert offered == fields - set(_cli.NOT_FROM_THE_SHELL)
    help_text = cli("run", "--help").stdout
    for option in _cli.CONTAINER_OPTIONS:
        assert option.flags[0] in help_text


def test_doctor_json(host_root):
    done = cli("doctor", "--json")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    assert report["can_run"] is True
    names = {check["name"] for check in report["checks"]}
    assert {"overlayfs", "clone3", "pidfd_open", "start a container"} <= names


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "pycontain"]
    assert script.value == "pycontain._cli:console_main"


def test_diff_prints_what_a_writedir_holds(rootfs, tmp_path):
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "old").write_text("old\n")
    (tmp_path / "w").mkdir()
    script = "rm /etc/old; echo new > /etc/new"
    done = cli(
        "run",
        "--layer",
        str(layer),
        "--layer",
        rootfs,
        "--writedir",
        str(tmp_path / "w"),
        "-e",
        "PATH=/bin",
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    assert done.returncode == 0, done.stderr
    diff = cli("diff", "--layer", str(layer), "--layer", rootfs, str(tmp_path / "w"))
    assert (diff.returncode, diff.stdout) == (0, "C /etc\nA /etc/new\nD /etc/old\n")
    long = cli("diff", "--long", "--layer", str(layer), "--layer", rootfs, str(tmp_path / "w"))
    assert long.stdout.splitlines()[1] == "A /etc/new (file 4)"
    missing = cli("diff", "--layer", rootfs, str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr
