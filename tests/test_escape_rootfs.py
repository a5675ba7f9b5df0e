"""Escape attempts against the container's filesystem set-up (issue 9, items 1-4, 6, 7).

Hostile layers are built here: symlinks at every place pycontain mounts or
creates something, pointing at "/", at a host directory and at relative
"../.." paths; a pre_pivot callback that changes directory; a setuid-root
binary; a device node; a program that fills each tmpfs or writes to the host's
kernel settings. Every attempt that could write to the host's "/" if it
succeeded runs against a throwaway root (tests/throwaway.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys

import pytest
from helpers import BB_ENV, TIMEOUT, make_layer, snapshot
from throwaway import attempt

import pycontain
from pycontain import _core, _userns

MOUNT_POINTS = ["dev", "proc", "sys"]
STEP_OF = {"dev": "mount-dev", "proc": "mount-proc", "sys": "mount-sys"}


def link_targets(victim: str) -> dict[str, str]:
    """Where a hostile symlink may point, seen from the overlay's root (/mnt/root)."""
    return {
        "root": "/",
        "host-dir": victim,
        "dotdot-root": "../../../../..",
        "dotdot-host-dir": "../../../../.." + victim,
    }


@pytest.fixture(params=[False, True], ids=["openat2", "walk"])
def walk(request: pytest.FixtureRequest) -> bool:
    """Resolve with openat2, and with the component-by-component fallback."""
    return request.param


def run_attempt(tmp_path, rootfs, params):
    return attempt(
        params,
        newroot=str(tmp_path / "newroot"),
        read_only=[rootfs],
        writable=[str(tmp_path / "work")],
    )


@pytest.fixture
def work(tmp_path):
    """The test's writable directory in the throwaway root, with an empty victim."""
    (tmp_path / "work" / "victim").mkdir(parents=True)
    return tmp_path / "work"


# -- item 1: mount points resolved inside the root -----------------------------------


@pytest.mark.parametrize("target", list(link_targets("/v")))
@pytest.mark.parametrize("mount_point", MOUNT_POINTS)
def test_symlinked_mount_point_is_refused(rootfs, tmp_path, work, walk, mount_point, target):
    victim = str(work / "victim")
    layer = work / "hostile"
    layer.mkdir()
    os.symlink(link_targets(victim)[target], layer / mount_point)
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/true"],
            "layers": [str(layer), rootfs],
            "env": BB_ENV,
            "walk": walk,
            "watch": [victim],
        },
    )
    # Nothing reached the (throwaway) root or the host directory ...
    assert report["new"] == {"/": [], victim: []}
    # ... because the symlink was refused, with the path named.
    assert report["error"] is not None, report
    assert report["error"]["step"] == STEP_OF[mount_point]
    assert report["error"]["errno"] == errno.ELOOP
    assert report["error"]["filename"] == "/" + mount_point
    assert "symbolic link" in report["error"]["message"]


@pytest.mark.parametrize("mount_point", MOUNT_POINTS)
def test_symlinked_mount_point_in_the_writedir_is_refused(rootfs, tmp_path, work, mount_point):
    """The writable layer (a writedir kept from an earlier run) is a layer too."""
    writedir = work / "writedir"
    writedir.mkdir()
    os.symlink("/", writedir / mount_point)
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/true"],
            "layers": [rootfs],
            "env": BB_ENV,
            "container": {"writedir": str(writedir)},
        },
    )
    assert report["new"] == {"/": []}
    assert report["error"] is not None, report
    assert (report["error"]["step"], report["error"]["errno"]) == (
        STEP_OF[mount_point],
        errno.ELOOP,
    )


@pytest.mark.parametrize("target", list(link_targets("/v")))
@pytest.mark.parametrize("kind", ["bind", "bind-file", "bind-below-a-link", "tmpfs"])
def test_symlinked_bind_and_tmpfs_destinations_are_refused(
    rootfs, tmp_path, work, walk, kind, target
):
    victim = str(work / "victim")
    source = work / "source"
    make_layer(source, {"file": "bound\n"})
    layer = work / "hostile"
    layer.mkdir()
    link = link_targets(victim)[target]
    os.symlink(link, layer / "data")
    destination = "/data/below" if kind == "bind-below-a-link" else "/data"
    if kind == "tmpfs":
        container = {"tmpfs": [[destination, 1 << 20]]}
    else:
        bound = source / "file" if kind == "bind-file" else source
        container = {"binds": [[str(bound), destination, "rw"]]}
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/true"],
            "layers": [str(layer), rootfs],
            "env": BB_ENV,
            "walk": walk,
            "container": container,
            "watch": [victim],
        },
    )
    assert report["new"] == {"/": [], victim: []}
    assert report["error"] is not None, report
    assert report["error"]["step"] == ("mount-tmpfs" if kind == "tmpfs" else "mount-bind")
    assert report["error"]["errno"] == errno.ELOOP
    assert report["error"]["filename"] == destination


def test_symlinks_inside_dev_and_at_scratch_names_redirect_nothing(rootfs, tmp_path, work, walk):
    """A layer's dev/null, dev/shm, ... and its mnt, tmp (scratch candidates) are
    covered or unused: /dev is built where no layer reaches, then moved in."""
    victim = str(work / "victim")
    layer = work / "hostile"
    (layer / "dev").mkdir(parents=True)
    for name in ["null", "zero", "tty", "fd", "stdin", "ptmx", "shm", "pts"]:
        os.symlink("/", layer / "dev" / name)
    os.symlink(victim, layer / "dev" / "urandom")
    os.symlink("../../../../.." + victim, layer / "dev" / "full")
    for name in ["mnt", "tmp", "root", "upper", "work", "masked"]:
        os.symlink("/", layer / name)
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/sh", "-c", "ls -l /dev/null /dev/urandom; echo x > /dev/null"],
            "layers": [str(layer), rootfs],
            "env": BB_ENV,
            "walk": walk,
            "watch": [victim],
        },
    )
    assert report["new"] == {"/": [], victim: []}
    assert report["error"] is None, report
    assert report["output"].startswith("crw-rw-rw-"), report["output"]


def test_a_missing_mount_point_under_a_file_is_refused(rootfs, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"proc": "a file where /proc goes\n"})
    with pytest.raises(pycontain.SpawnError) as caught:
        pycontain.run(["/bin/true"], layers=[layer, rootfs], env=BB_ENV)
    assert caught.value.step == "mount-proc"
    assert caught.value.errno == errno.ENOTDIR
    assert caught.value.filename == "/proc"


def test_pre_pivot_chdir_cannot_redirect_the_pivot(rootfs, tmp_path, work):
    """pivot_root works from the held root fd, not from the current directory."""
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/true"],
            "layers": [rootfs],
            "env": BB_ENV,
            # A mount point (of the throwaway root), which pivot_root would take.
            "chdir_in_pre_pivot": str(work),
            "write_in_pre_exec": "/escaped",
            "watch": [str(work)],
        },
    )
    assert report["new"] == {"/": [], str(work): []}
    assert report["error"] is None, report


def test_pre_pivot_replacing_the_held_root_fd_is_caught(rootfs, tmp_path, work):
    """A callback that puts another directory on the fd number of the held root
    makes pivot_root fail (ESTALE) rather than go there."""
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/true"],
            "layers": [rootfs],
            "env": BB_ENV,
            "replace_root_fd_with": str(work),
            "write_in_pre_exec": "/escaped",
            "watch": [str(work)],
        },
    )
    assert report["new"] == {"/": [], str(work): []}
    assert report["error"] is not None, report
    assert (report["error"]["step"], report["error"]["errno"]) == ("pivot-root", errno.ESTALE)


# -- item 6: the C core refuses misuse ------------------------------------------------


@pytest.mark.parametrize("fork_path", [False, True], ids=["pc_spawn", "fork-path"])
@pytest.mark.parametrize(
    "namespaces",
    [
        _core.DEFAULT_NAMESPACES & ~_core.CLONE_NEWNS,
        _core.DEFAULT_NAMESPACES & ~_core.CLONE_NEWPID,
        _core.DEFAULT_NAMESPACES | 0x10000000,  # CLONE_NEWUSER: no user namespace maps
        _core.DEFAULT_NAMESPACES | 0x00000100,  # CLONE_VM is not a namespace
    ],
    ids=["no-newns", "no-newpid", "newuser", "not-a-namespace"],
)
def test_core_refuses_namespaces_its_steps_cannot_run_in(
    rootfs, tmp_path, work, namespaces, fork_path
):
    # In a throwaway root: without the check, the steps would act on the
    # calling process's own mount namespace.
    report = run_attempt(
        tmp_path,
        rootfs,
        {
            "args": ["/bin/true"],
            "layers": [rootfs],
            "env": BB_ENV,
            "namespaces": namespaces,
            "timeout_ms": 10_000 if fork_path else -1,
        },
    )
    assert report["ran"] is False
    assert report["error"]["step"] == "prepare"
    assert report["error"]["errno"] == errno.EINVAL
    assert "namespaces" in report["error"]["filename"]


# -- item 2: nosuid, nodev --------------------------------------------------------------


def mountinfo(rootfs) -> dict[str, tuple[str, set[str]]]:
    out = pycontain.run(
        ["/bin/cat", "/proc/self/mountinfo"], layers=[rootfs], env=BB_ENV, capture_output=True
    ).stdout.decode()
    mounts = {}
    for line in out.splitlines():
        fields = line.split()
        mounts[fields[4]] = (fields[fields.index("-") + 1], set(fields[5].split(",")))
    return mounts


def test_every_mount_is_nosuid_and_all_but_dev_nodev(rootfs):
    mounts = mountinfo(rootfs)
    assert {"/", "/proc", "/sys", "/dev", "/dev/shm", "/dev/pts"} <= set(mounts)
    # Device nodes come only from pycontain's /dev (and the ptys' devpts); in
    # rootless mode its nodes are the host's, each bound on its own.
    with_devices = {"/dev", "/dev/pts"}
    if not _userns.caller_has_sys_admin():
        with_devices |= {
            f"/dev/{node}" for node in ("null", "zero", "full", "random", "urandom", "tty")
        }
    for path, (_, flags) in mounts.items():
        assert "nosuid" in flags, path
        assert ("nodev" in flags) == (path not in with_devices), path


@pytest.fixture(scope="module")
def euid_program(tmp_path_factory) -> str:
    """A static program that prints its effective uid."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    base = tmp_path_factory.mktemp("euid")
    source = base / "euid.c"
    source.write_text(
        '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("%d\\n", '
        "(int)geteuid()); return 0; }\n"
    )
    built = subprocess.run(
        ["cc", "-static", "-o", str(base / "euid"), str(source)], capture_output=True, check=False
    )
    if built.returncode != 0:
        pytest.skip(f"cannot link a static program: {built.stderr.decode()[-200:]}")
    return str(base / "euid")


@pytest.mark.needs_root("a setuid-root binary in a layer: making one (chown to root) needs root")
def test_setuid_root_binary_in_a_layer_gains_nothing(rootfs, tmp_path, euid_program):
    layer = tmp_path / "layer"
    layer.mkdir()
    shutil.copy(euid_program, layer / "euid")
    os.chown(layer / "euid", 0, 0)
    os.chmod(layer / "euid", 0o4755)
    result = pycontain.run(
        ["/euid"], layers=[layer, rootfs], uid=65534, gid=65534, groups=[], capture_output=True
    )
    assert result.returncode == 0, result
    assert result.stdout == b"65534\n"


@pytest.mark.needs_root("a device node in a layer: making one (mknod) needs root")
def test_device_node_in_a_layer_cannot_be_opened(rootfs, tmp_path, capfd):
    layer = tmp_path / "layer"
    layer.mkdir()
    os.mknod(layer / "nodev", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    code = pycontain.run(
        ["/bin/sh", "-c", "echo x > /nodev && echo opened; echo x > /dev/null && echo real"],
        layers=[layer, rootfs],
        env=BB_ENV,
    ).returncode
    assert code == 0
    assert capfd.readouterr().out == "real\n"


# -- item 3: kernel interfaces of /proc and /sys ----------------------------------------

READ_ONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]


def test_host_kernel_interfaces_are_read_only_or_masked(rootfs):
    mounts = mountinfo(rootfs)
    present = [path for path in READ_ONLY + MASKED if os.path.exists(path)]
    assert "/proc/sys" in present and "/proc/keys" in present
    for path in present:
        assert path in mounts, path
        assert {"ro", "nosuid", "nodev", "noexec"} <= mounts[path][1], path
    for path in MASKED:
        if path in present:
            assert mounts[path][0] == "tmpfs", path  # pycontain's empty file or directory


def test_masked_files_read_empty_and_proc_sys_refuses_writes(rootfs):
    # /proc/sys/kernel/hostname belongs to the container's UTS namespace:
    # harmless to write even if the mount were writable.
    script = (
        "wc -c < /proc/keys; ls /sys/firmware | wc -l; "
        "echo pc-test > /proc/sys/kernel/hostname && echo wrote; hostname"
    )
    result = pycontain.run(
        ["/bin/sh", "-c", script], layers=[rootfs], env=BB_ENV, capture_output=True, text=True
    )
    assert result.stdout.split() == ["0", "0", result.stdout.split()[-1]]
    assert "Read-only file system" in result.stderr


# -- item 4: bounded tmpfs ----------------------------------------------------------------


def test_dev_shm_fills_up_at_64_mib(rootfs):
    result = pycontain.run(
        ["/bin/sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=80; ls -l /dev/shm/fill"],
        layers=[rootfs],
        env=BB_ENV,
        capture_output=True,
        text=True,
    )
    assert "No space left on device" in result.stderr
    assert int(result.stdout.split()[4]) == 64 << 20


def test_dev_is_read_only_and_bounded_at_1_mib_and_256_inodes(rootfs):
    # Read-only since a writable /dev (which cannot be nodev) would take
    # device nodes made with CAP_MKNOD; bounded all the same.
    script = "touch /dev/x 2>&1; stat -f -c '%b %S %c' /dev"
    result = pycontain.run(
        ["/bin/sh", "-c", script], layers=[rootfs], env=BB_ENV, capture_output=True, text=True
    )
    refusal, sizes = result.stdout.splitlines()
    assert "Read-only file system" in refusal
    blocks, block_size, inodes = map(int, sizes.split())
    assert (blocks * block_size, inodes) == (1 << 20, 256)


def test_writable_layer_is_bounded(rootfs):
    result = pycontain.run(
        ["/bin/sh", "-c", "stat -f -c '%b %S' /"],
        layers=[rootfs],
        env=BB_ENV,
        capture_output=True,
        text=True,
    )
    blocks, block_size = map(int, result.stdout.split())
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert blocks * block_size == min(1 << 30, max(16 << 20, physical // 4))


# -- a lower layer is never modified -------------------------------------------------------


def test_lower_layer_is_never_modified(rootfs, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"data/file": "original\n", "data/sub/keep": "k\n", "other": "o\n"})
    before = snapshot(layer)
    script = (
        "echo changed > /data/file; rm -rf /data/sub; chmod 777 /other; mv /other /moved; "
        "mkdir /data/new; ln -s / /data/link; touch /data/file2"
    )
    code = pycontain.run(
        ["/bin/sh", "-c", script], layers=[layer, rootfs], env=BB_ENV, timeout=TIMEOUT
    ).returncode
    assert code == 0
    assert snapshot(layer) == before


@pytest.mark.parametrize("walk_forced", [False, True], ids=["openat2", "walk"])
def test_the_walk_knob_really_skips_openat2(rootfs, walk_forced):
    """The walk fixture above tests the fallback only if the knob reaches the C
    core: count the child's openat2 calls."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is missing (apt-get install strace)")
    script = (
        "import sys, pycontain; from pycontain import _spawn; "
        f"_spawn._force_resolve_walk = {walk_forced}; "
        f"pycontain.run(['/bin/true'], layers=[{rootfs!r}], env={{'PATH': '/bin'}}, check=True)"
    )
    traced = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=openat2", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    calls = traced.stderr.count("openat2(")
    assert (calls == 0) if walk_forced else (calls > 5), traced.stderr[-2000:]
