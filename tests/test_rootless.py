"""Rootless mode: containers in a user namespace of their own (issue 12).

Two kinds of tests. In this process, ``userns=True``: as root it forces the
user namespace (root in the container is then not root on the host); in
the suite's unprivileged run it is what ``userns=None`` picks anyway. And,
through ``as_user``, a Python dropped to an unprivileged uid with setpriv
(or this one, when it is already unprivileged): what a user without any
privilege gets from ``userns=None``.

No test changes a host setting: the system settings that can forbid user
namespaces are checked against copies of their values, and the one real
refusal (clone's ENOSPC) is met inside a user namespace of the test's own,
where user.max_user_namespaces is that namespace's alone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
from helpers import BB_ENV, TIMEOUT, child_pids, fd_count, workdir_siblings

import pycontain
from pycontain import _userns

# The uid a root test run drops to ("nobody"): not the caller, owns nothing.
UNPRIVILEGED = 65534
BUSYBOX = "/bin/busybox"


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" ", 4)[4] for line in f)


@pytest.fixture(scope="module")
def shared(rootfs: str):
    """A world-readable directory holding a busybox root, for a dropped uid too.

    (The session's rootfs lives under pytest's private temporary directory.)
    """
    top = tempfile.mkdtemp(prefix="pycontain-rootless-")
    os.chmod(top, 0o755)
    root = os.path.join(top, "root")
    shutil.copytree(rootfs, root, symlinks=True)
    os.chmod(root, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def user_python() -> list[str]:
    """How to run Python, with this pycontain, as an unprivileged uid."""
    if os.geteuid() != 0:
        return [sys.executable]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    # The test's own interpreter may live where only root can read (pyenv
    # under /root); the system's must be the same version for the extension.
    python = sys.executable
    probe = ["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"]
    if os.path.exists(probe[0]):
        version = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
        if version == str(tuple(sys.version_info[:2])):
            python = probe[0]
    command = [
        "setpriv",
        f"--reuid={UNPRIVILEGED}",
        f"--regid={UNPRIVILEGED}",
        "--clear-groups",
        "env",
        "HOME=/tmp",
        f"PYTHONPATH={os.path.dirname(os.path.dirname(pycontain.__file__))}",
        python,
    ]
    check = subprocess.run(
        [*command, "-c", "import pycontain"], capture_output=True, text=True, cwd="/"
    )
    if check.returncode != 0:
        pytest.skip(f"uid {UNPRIVILEGED} cannot import this pycontain: {check.stderr[-300:]}")
    return command


def as_user(user_python: list[str], code: str, *args: str, prefix: list[str] = ()) -> dict:
    """Run ``code`` (which prints one JSON value last) as the unprivileged uid."""
    done = subprocess.run(
        [*prefix, *user_python, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def user_owned_dir(top: str, name: str) -> str:
    """A directory of the unprivileged uid's, in one of its own (for the work dir)."""
    parent = os.path.join(top, name + ".parent")
    path = os.path.join(parent, name)
    for directory in (parent, path):
        os.mkdir(directory, 0o755)
        if os.geteuid() == 0:
            os.chown(directory, UNPRIVILEGED, UNPRIVILEGED)
    return path


def run_sh(script: str, layers, **keywords) -> subprocess.CompletedProcess:
    return pycontain.run(
        ["/bin/sh", "-c", script],
        layers=layers,
        userns=True,
        env=BB_ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        **keywords,
    )


# -- the caller's ids are 0 inside --------------------------------------------------------


def test_ids_inside_are_0_and_map_the_caller(rootfs):
    done = run_sh("id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map", [rootfs])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[:2] == ["0", "0"]
    assert lines[2:] == ["0", str(os.geteuid()), "1", "0", str(os.getegid()), "1"]


def test_an_unprivileged_caller_gets_a_user_namespace_by_itself(shared, user_python):
    writedir = user_owned_dir(shared, "writes")
    result = as_user(
        user_python,
        """
        import json, os, sys, pycontain
        root, writedir = sys.argv[1:]
        box = pycontain.Container(layers=[root], writedir=writedir)
        done = box.run(["/bin/sh", "-c", "id -u; echo data > /made; mkdir /dir"],
                       env={"PATH": "/bin"}, capture_output=True, text=True)
        print(json.dumps([os.geteuid(), os.getegid(), box._plan.userns, done.returncode,
                          done.stdout, done.stderr]))
        """,
        os.path.join(shared, "root"),
        writedir,
    )
    euid, egid, userns, returncode, stdout, stderr = result
    assert euid != 0 and userns is True
    assert (returncode, stdout) == (0, "0\n"), stderr
    # Root inside, the caller outside: what it wrote is the caller's.
    for name in ("made", "dir"):
        info = os.stat(os.path.join(writedir, name))
        assert (info.st_uid, info.st_gid) == (euid, egid)
    assert workdir_siblings(writedir) == []  # overlayfs' mode-000 work dir removed too


def test_root_inside_cannot_read_a_root_only_host_file(shared, user_python):
    """A file only the host's root may read stays unreadable to the container's root."""
    if os.geteuid() != 0:
        pytest.skip("making a file owned by the host's root needs root")
    secret_layer = os.path.join(shared, "secret")
    os.mkdir(secret_layer, 0o755)
    secret = os.path.join(secret_layer, "secret")
    with open(secret, "w") as f:
        f.write("root only\n")
    os.chmod(secret, 0o600)
    result = as_user(
        user_python,
        """
        import json, sys, pycontain
        done = pycontain.run(["/bin/sh", "-c", "ls -ln /secret; cat /secret"],
                             layers=sys.argv[1:], env={"PATH": "/bin"}, capture_output=True,
                             text=True)
        print(json.dumps([done.returncode, done.stdout, done.stderr]))
        """,
        secret_layer,
        os.path.join(shared, "root"),
    )
    returncode, stdout, stderr = result
    assert returncode != 0 and "root only" not in stdout
    assert "Permission denied" in stderr
    # Seen from inside, its owner is no one the container knows (the overflow id).
    assert stdout.split()[2:4] == ["65534", "65534"]


def test_root_with_userns_is_not_root_on_the_host(rootfs, tmp_path):
    """userns=True for root: the container's root loses the host's power over files
    of other users (CAP_DAC_OVERRIDE counts only for ids its namespace maps)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to compare with a container without a user namespace")
    layer = tmp_path / "layer"
    layer.mkdir()
    private = layer / "private"
    private.write_text("someone else's\n")
    os.chmod(private, 0o600)
    os.chown(private, 4242, 4242)
    as_root = pycontain.run(
        ["/bin/cat", "/private"], layers=[layer, rootfs], capture_output=True, userns=False
    )
    assert as_root.stdout == b"someone else's\n"
    done = run_sh("cat /private", [layer, rootfs])
    assert done.returncode != 0 and "Permission denied" in done.stderr
    # Nor can it make device nodes, even with CAP_MKNOD asked for.
    done = run_sh("mknod /tmp/null c 1 3", [rootfs], capabilities=["mknod"], tmpfs=["/tmp"])
    assert done.returncode != 0, done.stdout


# -- everything else keeps working --------------------------------------------------------


def test_proc_sys_and_dev_work(rootfs):
    done = run_sh(
        "echo $$; ls /proc/1/cmdline >/dev/null && echo proc; "
        "cat /sys/class/net/lo/ifindex; "
        "echo x > /dev/null && head -c 8 /dev/urandom | wc -c; "
        "test -c /dev/null && test -c /dev/zero && echo nodes; "
        "echo x > /dev/full || echo full; "
        "test -d /dev/pts && test -d /dev/shm && echo shm > /dev/shm/x && cat /dev/shm/x; "
        "echo 1 > /proc/sys/kernel/hostname || echo sys-read-only",
        [rootfs],
        hostname="box",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "proc", "1", "8", "nodes", "full", "shm", "sys-read-only"]


def test_hostname_capabilities_and_lower_rlimits_apply(rootfs):
    done = run_sh(
        "hostname; ulimit -n; grep CapEff /proc/self/status",
        [rootfs],
        hostname="box",
        rlimits={"nofile": 64},
        capabilities=["chown"],
    )
    assert done.returncode == 0, done.stderr
    name, nofile, _, capeff = done.stdout.split()
    assert (name, nofile) == ("box", "64")
    assert int(capeff, 16) == 1  # CAP_CHOWN alone


def test_the_hosts_network_binds_the_hosts_sys(rootfs):
    done = run_sh("ls /sys/class/net", [rootfs], network="host")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(os.listdir("/sys/class/net"))


def test_the_hosts_sys_is_read_only_with_every_submount(rootfs):
    # The host's /sys has submounts (cgroup hierarchies, tracing, ...):
    # each must be read-only too, or the program could write host state.
    done = run_sh("cat /proc/self/mountinfo", [rootfs], network="host")
    assert done.returncode == 0, done.stderr
    below_sys = [
        line.split()
        for line in done.stdout.splitlines()
        if line.split()[4] == "/sys" or line.split()[4].startswith("/sys/")
    ]
    assert len(below_sys) > 1  # /sys and what is mounted below it
    for fields in below_sys:
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(fields[5].split(",")), fields


def test_exec_failures_stay_precise(rootfs, tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "not-executable").write_text("#!/bin/sh\n")
    with pytest.raises(FileNotFoundError) as missing:
        pycontain.Process(["/bin/nosuch"], layers=[rootfs], userns=True)
    assert missing.value.step == "exec" and missing.value.filename == "/bin/nosuch"
    with pytest.raises(PermissionError) as denied:
        pycontain.Process(["/not-executable"], layers=[layer, rootfs], userns=True)
    assert denied.value.step == "exec"


def test_callbacks_call_and_timeout_take_the_fork_path(rootfs):
    def inside() -> None:
        os.write(1, b"%d %d\n" % (os.getuid(), os.getgid()))  # the program's stdout

    done = pycontain.run(
        ["/bin/true"],
        layers=[rootfs],
        userns=True,
        pre_exec=inside,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert (done.returncode, done.stdout) == (0, b"0 0\n")
    assert pycontain.call(os.getuid, layers=[rootfs], userns=True, timeout=TIMEOUT) == 0
    with pycontain.Process(["/bin/true"], layers=[rootfs], userns=True, timeout=TIMEOUT) as p:
        assert p.wait(timeout=TIMEOUT) == 0


def test_changes_read_the_user_xattr_markers(rootfs, tmp_path):
    layer = tmp_path / "layer"
    (layer / "kept").mkdir(parents=True)
    (layer / "kept" / "old").write_text("old")
    (layer / "gone").write_text("gone")
    writedir = tmp_path / "writedir"
    writedir.mkdir()
    box = pycontain.Container(layers=[layer, rootfs], writedir=writedir, userns=True)
    with box.spawn(
        ["/bin/sh", "-c", "rm /gone && rm -r /kept && mkdir /kept && echo new > /kept/new"],
        env=BB_ENV,
    ) as p:
        assert p.wait(timeout=TIMEOUT) == 0
        changes = {change.path: change.action for change in p.changes()}
    # The directory was replaced: overlayfs marked it opaque, in user.overlay.*.
    assert os.getxattr(writedir / "kept", "user.overlay.opaque") == b"y"
    assert changes["/gone"] == "deleted"
    assert changes["/kept/old"] == "deleted"
    assert changes["/kept/new"] == "added"


def test_the_netns_pool_is_bypassed(rootfs):
    box = pycontain.Container(layers=[rootfs], userns=True)
    assert box._plan.netns_pool is False
    if os.geteuid() != 0:
        return  # the pool's thread cannot make a namespace without privileges anyway
    pycontain.set_netns_pool(2)
    try:
        from helpers import wait_until

        assert wait_until(lambda: pycontain.netns_pool_status().ready == 2)
        used = pycontain.netns_pool_status().used
        done = box.run(["/bin/cat", "/sys/class/net/lo/operstate"], capture_output=True)
        # A namespace of its own (which its sysfs needs), lo up as with the pool.
        assert done.stdout.strip() in (b"unknown", b"up")
        assert pycontain.netns_pool_status().used == used
    finally:
        pycontain.set_netns_pool(0)


def test_nothing_leaks(rootfs, tmp_path):
    writedir = tmp_path / "writedir"
    writedir.mkdir()
    mounts, fds, children = _mounts(), fd_count(), child_pids()
    for _ in range(3):
        assert pycontain.run(["/bin/true"], layers=[rootfs], userns=True).returncode == 0
        done = pycontain.run(
            ["/bin/sh", "-c", "echo x > /x"], layers=[rootfs], writedir=writedir, userns=True
        )
        assert done.returncode == 0
        with pytest.raises(FileNotFoundError):
            pycontain.Process(["/nosuch"], layers=[rootfs], userns=True)
        assert pycontain.call(os.getpid, layers=[rootfs], userns=True) == 1
    assert (_mounts(), fd_count()) == (mounts, fds)
    assert child_pids() <= children
    assert workdir_siblings(writedir) == []


# -- refused before anything is spawned -------------------------------------------------


def test_what_a_single_id_map_cannot_do_is_refused(rootfs):
    for keywords in ({"uid": 1000}, {"gid": 5}):
        with pytest.raises(ValueError, match="uid_map"):
            pycontain.Container(layers=[rootfs], userns=True, **keywords)
    with pytest.raises(ValueError, match="setgroups"):
        pycontain.Container(layers=[rootfs], userns=True, groups=[0])
    assert (
        pycontain.Container(layers=[rootfs], userns=True, uid=0, gid=0)
        .run(["/bin/true"])
        .returncode
        == 0
    )
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(ValueError, match="CAP_SYS_RESOURCE"):
            pycontain.Container(layers=[rootfs], userns=True, rlimits={"nofile": (64, hard + 1)})


def test_a_layer_with_mounts_below_it_is_refused(rootfs):
    with pytest.raises(ValueError, match="other mounts below it"):
        pycontain.Container(layers=["/"], userns=True)
    with pytest.raises(ValueError, match="bind source '/dev'"):
        pycontain.Container(layers=[rootfs], userns=True, binds=[("/dev", "/hostdev")])


def test_userns_takes_a_bool_or_none(rootfs):
    with pytest.raises(TypeError, match="userns"):
        pycontain.Container(layers=[rootfs], userns=1)  # type: ignore[arg-type]
    assert pycontain.Container(layers=[rootfs], userns=None)._plan.userns is (
        not _userns.caller_has_sys_admin()
    )


@pytest.mark.parametrize(
    ("name", "value", "privileged_too"),
    [
        ("user/max_user_namespaces", "0", True),
        ("kernel/unprivileged_userns_clone", "0", False),
        ("kernel/apparmor_restrict_unprivileged_userns", "1", False),
    ],
)
def test_each_system_setting_that_forbids_it_is_named(
    rootfs, tmp_path, monkeypatch, name, value, privileged_too
):
    """Against a copy of the settings (tests never change the host's)."""
    copy = tmp_path / "sys"
    (copy / "user").mkdir(parents=True)
    (copy / "kernel").mkdir()
    (copy / name).write_text(value + "\n")
    monkeypatch.setattr(_userns, "_proc_sys", str(copy))
    setting = name.replace("/", ".")
    for privileged_caller in (False, True):
        reason = _userns.refusal(privileged_caller)
        if privileged_caller and not privileged_too:
            assert reason is None
            continue
        assert f"{setting} = {value}" in reason
        assert f"sysctl -w {setting}=" in reason
    if privileged_too or not _userns.caller_has_sys_admin():
        with pytest.raises(PermissionError, match=f"sysctl -w {setting}="):
            pycontain.Container(layers=[rootfs], userns=True)


def test_an_old_kernel_is_named(rootfs, monkeypatch):
    monkeypatch.setattr(_userns, "_kernel_release", "5.10.0-28-amd64")
    with pytest.raises(PermissionError, match=r"Linux >= 5\.11; this kernel is 5\.10\.0"):
        pycontain.Container(layers=[rootfs], userns=True)
    monkeypatch.setattr(_userns, "_kernel_release", "5.11.0")
    pycontain.Container(layers=[rootfs], userns=True)
    # The host's /sys with network="host" needs mount_setattr (5.12).
    with pytest.raises(ValueError, match=r"Linux >= 5\.12; this kernel is 5\.11\.0"):
        pycontain.Container(layers=[rootfs], userns=True, network="host")
    monkeypatch.setattr(_userns, "_kernel_release", "5.12.0")
    pycontain.Container(layers=[rootfs], userns=True, network="host")


def test_clones_refusal_is_named(shared, user_python, tmp_path):
    """clone's ENOSPC, met for real: inside a user namespace of this test's own
    (util-linux's unshare), whose user.max_user_namespaces belongs to it alone,
    set to 0 there; the early check is pointed at a copy that allows it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing")
    allowed = tmp_path / "sys"
    (allowed / "user").mkdir(parents=True)
    (allowed / "user" / "max_user_namespaces").write_text("15000\n")
    os.chmod(tmp_path, 0o755)
    for path in (allowed, allowed / "user", allowed / "user" / "max_user_namespaces"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    code = """
        import errno, json, os, sys, pycontain
        from pycontain import _userns
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        _userns._proc_sys = sys.argv[2]
        box = pycontain.Container(layers=[sys.argv[1]], userns=True)
        fds = None
        for _ in range(2):  # the first opens the init's executable, kept for later spawns
            try:
                box.run(["/bin/true"])
            except OSError as error:
                failure = [error.errno, error.step, str(error)]
            fds, before = len(os.listdir("/proc/self/fd")), fds
        print(json.dumps([*failure, fds - before]))
        """
    prefix = ["unshare", "--user", "--map-root-user", "--"]
    if os.geteuid() == 0:
        # unshare runs as the dropped uid, then Python inside it.
        user_python = [*user_python[:-1], *prefix, user_python[-1]]
        prefix = []
    err, step, message, leaked_fds = as_user(
        user_python, code, os.path.join(shared, "root"), str(allowed), prefix=prefix
    )
    assert (err, step) == (errno.ENOSPC, "clone")
    assert "user.max_user_namespaces" in message and "sysctl -w" in message
    assert leaked_fds == 0


def test_clones_eperm_names_the_setting_that_forbids_it(tmp_path, monkeypatch):
    """The words for a clone that a setting refused after the early check (a
    sysctl changed meanwhile, say), against a copy of the settings."""
    copy = tmp_path / "sys"
    (copy / "kernel").mkdir(parents=True)
    (copy / "kernel" / "unprivileged_userns_clone").write_text("0\n")
    monkeypatch.setattr(_userns, "_proc_sys", str(copy))
    monkeypatch.setattr(_userns, "caller_has_sys_admin", lambda: False)
    message = _userns.clone_refusal(errno.EPERM)
    assert message.startswith(os.strerror(errno.EPERM))
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in message
    (copy / "kernel" / "unprivileged_userns_clone").write_text("1\n")
    assert "security module" in _userns.clone_refusal(errno.EPERM)
    assert _userns.clone_refusal(errno.EINVAL) is None


def test_a_map_the_kernel_refuses_is_a_precise_spawn_error(rootfs, monkeypatch, no_leaks):
    monkeypatch.setattr(_userns, "maps", lambda: (b"0 nobody 1", b"0 nobody 1"))
    with pytest.raises(pycontain.SpawnError) as caught:
        pycontain.Process(["/bin/true"], layers=[rootfs], userns=True)
    assert (caught.value.step, caught.value.errno) == ("userns-map", errno.EINVAL)
    assert caught.value.filename == "/proc/self/uid_map"
    assert "id map" in str(caught.value)


@pytest.mark.needs_root("switching to another uid needs root")
def test_a_process_that_drops_root_later_gets_rootless_mode(shared):
    # Whether the caller may make namespaces is read once per effective uid:
    # a worker that drops root after a first container gets rootless mode.
    rootfs = os.path.join(shared, "root")
    script = (
        "import os, pycontain\n"
        "from pycontain import _userns\n"
        f"first = pycontain.Container(layers=[{rootfs!r}])\n"
        f"os.setgroups([]); os.setresgid({UNPRIVILEGED}, {UNPRIVILEGED}, {UNPRIVILEGED})\n"
        f"os.setresuid({UNPRIVILEGED}, {UNPRIVILEGED}, {UNPRIVILEGED})\n"
        f"second = pycontain.Container(layers=[{rootfs!r}])\n"
        "print(first._plan.userns, second._plan.userns)\n"
        # Without an exec since the setuid, the kernel keeps its /proc files
        # root's: the spawn says why it cannot write the id maps.
        "try:\n"
        "    second.run(['/bin/true'], env={})\n"
        "except pycontain.SpawnPermissionError as error:\n"
        "    print(error.step, 'non-dumpable' in str(error))\n"
        "import ctypes\n"
        "ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE\n"
        "done = second.run(['/bin/id', '-u'], capture_output=True, text=True, env={})\n"
        "print(done.returncode, done.stdout.strip())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "userns-map", "True", "0", "0"]
