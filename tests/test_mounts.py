"""binds=, tmpfs=, scratch_size=, shm_size=: the container's extra mounts and the
sizes of pycontain's own tmpfs mounts (issue 9, items 4 and 5). Hostile
destinations are in tests/test_escape_rootfs.py."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess

import pytest
from helpers import BB_ENV, make_layer

import pycontain

MiB = 1 << 20


def sh_out(script: str, layers, **kwargs) -> subprocess.CompletedProcess[str]:
    return pycontain.run(
        ["/bin/sh", "-c", script],
        layers=layers,
        env=BB_ENV,
        capture_output=True,
        text=True,
        **kwargs,
    )


def mount_flags(output: str, path: str) -> set[str]:
    for line in output.splitlines():
        fields = line.split()
        if " - " in line and len(fields) > 5 and fields[4] == path:
            return set(fields[5].split(","))
    raise AssertionError(f"{path} not mounted:\n{output}")


@pytest.fixture
def shared(tmp_path):
    host = tmp_path / "shared"
    make_layer(host, {"file": "host data\n", "sub/deep": "deep\n"})
    return host


# -- binds -------------------------------------------------------------------------


def test_bind_is_read_only_by_default_and_nosuid_nodev(rootfs, shared):
    result = sh_out(
        "cat /data/file /data/sub/deep; echo x > /data/file || echo refused; "
        "cat /proc/self/mountinfo",
        [rootfs],
        binds=[(shared, "/data")],
    )
    assert result.stdout.startswith("host data\ndeep\nrefused\n")
    assert "Read-only file system" in result.stderr
    assert {"ro", "nosuid", "nodev"} <= mount_flags(result.stdout, "/data")
    assert (shared / "file").read_text() == "host data\n"


def test_read_write_bind_writes_to_the_host(rootfs, shared):
    result = sh_out(
        "echo from-container > /data/new; cat /proc/self/mountinfo",
        [rootfs],
        binds=[(shared, "/data", "rw")],
    )
    assert result.returncode == 0, result.stderr
    assert (shared / "new").read_text() == "from-container\n"
    flags = mount_flags(result.stdout, "/data")
    assert "rw" in flags and {"nosuid", "nodev"} <= flags


def test_file_binds_onto_a_missing_and_onto_an_existing_file(rootfs, shared, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"etc/existing": "layer's\n"})
    result = sh_out(
        "cat /etc/existing /new/dir/created; ls -ld /new/dir",
        [layer, rootfs],
        binds=[(shared / "file", "/etc/existing"), (shared / "sub" / "deep", "/new/dir/created")],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("host data\ndeep\ndrwxr-xr-x")
    # The mount points were made in the throwaway writable layer, not the layer.
    assert sorted(os.listdir(layer)) == ["etc"]


def test_later_binds_go_on_top_and_may_go_inside_dev(rootfs, shared, tmp_path):
    other = tmp_path / "other"
    make_layer(other, {"file": "other\n"})
    result = sh_out(
        "cat /data/file /dev/mine/file",
        [rootfs],
        binds=[(shared, "/data"), (other, "/data"), (shared, "/dev/mine")],
    )
    assert result.stdout == "other\nhost data\n", result.stderr


def test_bind_of_a_directory_onto_a_file_is_refused(rootfs, shared, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"data": "a file\n"})
    with pytest.raises(pycontain.SpawnError) as caught:
        pycontain.run(["/bin/true"], layers=[layer, rootfs], binds=[(shared, "/data")])
    assert (caught.value.step, caught.value.errno) == ("mount-bind", errno.ENOTDIR)
    assert caught.value.filename == "/data"
    with pytest.raises(pycontain.SpawnError) as caught:
        pycontain.run(["/bin/true"], layers=[rootfs], binds=[(shared / "file", "/bin")])
    assert (caught.value.step, caught.value.errno) == ("mount-bind", errno.EISDIR)


# -- tmpfs -----------------------------------------------------------------------------


def test_tmpfs_with_size_and_mode(rootfs):
    result = sh_out(
        "stat -c '%a' /work; dd if=/dev/zero of=/work/fill bs=64k count=64; ls -l /work/fill; "
        "cat /proc/self/mountinfo",
        [rootfs],
        tmpfs=[("/work", 1 * MiB, 0o700)],
    )
    assert result.stdout.startswith("700\n")
    assert "No space left on device" in result.stderr
    assert int(result.stdout.splitlines()[1].split()[4]) == 1 * MiB
    assert {"rw", "nosuid", "nodev"} <= mount_flags(result.stdout, "/work")


def test_tmpfs_defaults_to_1777_and_the_scratch_size(rootfs):
    result = sh_out("stat -c '%a' /a/b; stat -f -c '%b %S' /a/b", [rootfs], tmpfs=["/a/b"])
    mode, blocks, block_size = result.stdout.split()
    assert mode == "1777"
    assert (
        int(blocks) * int(block_size)
        == pycontain.Container(layers=[rootfs])._plan.mounts.scratch_size
    )


# -- sizes of pycontain's own tmpfs ------------------------------------------------------


def test_scratch_size_bounds_the_writable_layer(rootfs):
    result = sh_out(
        "dd if=/dev/zero of=/fill bs=1M count=8; ls -l /fill", [rootfs], scratch_size=4 * MiB
    )
    assert "No space left on device" in result.stderr
    assert int(result.stdout.split()[4]) <= 4 * MiB


def test_shm_size_bounds_dev_shm(rootfs):
    result = sh_out(
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=8; ls -l /dev/shm/fill",
        [rootfs],
        shm_size=2 * MiB,
    )
    assert "No space left on device" in result.stderr
    assert int(result.stdout.split()[4]) == 2 * MiB


# Empty files cost inodes (kernel memory), which size= does not count: each
# sized tmpfs also gets one inode per 4 KiB (csrc/internal.h).
_MAKE_FILES = (
    "cd {dir} && i=0; while [ $i -lt {count} ]; do touch f$i 2>/dev/null || break; "
    "i=$((i+1)); done; echo $i"
)


@pytest.mark.parametrize(
    ("settings", "directory", "inodes"),
    [
        ({"scratch_size": 1 * MiB}, "/", 256),
        ({"shm_size": 1 * MiB}, "/dev/shm", 256),
        ({"tmpfs": [("/work", 1 * MiB)]}, "/work", 256),
    ],
    ids=["writable-layer", "dev-shm", "tmpfs"],
)
def test_empty_files_are_bounded_by_the_size_too(rootfs, settings, directory, inodes):
    result = sh_out(
        _MAKE_FILES.format(dir=directory, count=inodes + 50) + f"; stat -f -c '%c' {directory}",
        [rootfs],
        **settings,
    )
    made, total = (int(field) for field in result.stdout.split())
    assert total == inodes
    # The mount's own root and what pycontain keeps there (the upper and work
    # directories, the masks over /proc) use some.
    assert inodes - 32 <= made < inodes


# -- checks, before anything is spawned --------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"binds": [("/", "data")]}, ValueError, "must be an absolute path inside the container"),
        ({"binds": [("/", "/a/../b")]}, ValueError, "must not contain '..'"),
        ({"binds": [("/", "/")]}, ValueError, "must not be the container's '/'"),
        ({"binds": [("/", "/data", "rx")]}, ValueError, "got mode 'rx'"),
        ({"binds": [("/",)]}, TypeError, "binds items are"),
        ({"binds": ("/", "/data")}, TypeError, "binds must be a list"),
        ({"binds": [("/no/such/dir", "/data")]}, FileNotFoundError, "/no/such/dir"),
        ({"binds": [("/dev/null", "/null")]}, ValueError, "is a device node"),
        ({"binds": [("/", "/data\0")]}, ValueError, "NUL byte"),
        ({"tmpfs": ["relative"]}, ValueError, "must be an absolute path"),
        ({"tmpfs": [("/t", 0)]}, ValueError, "positive number of bytes"),
        ({"tmpfs": [("/t", True)]}, TypeError, "must be an int"),
        ({"tmpfs": [("/t", MiB, 0o10000)]}, ValueError, "from 0 to 0o7777"),
        ({"tmpfs": "/t"}, TypeError, "tmpfs must be a list"),
        ({"tmpfs": [3]}, TypeError, "tmpfs items are"),
        ({"scratch_size": 0}, ValueError, "scratch_size must be a positive"),
        ({"shm_size": "64m"}, TypeError, "shm_size must be an int"),
    ],
)
def test_bad_mount_settings_raise_before_anything_runs(rootfs, keywords, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        pycontain.Container(layers=[rootfs], **keywords)
    with pytest.raises(error):
        pycontain.Process(["/bin/true"], layers=[rootfs], **keywords)


def test_containers_with_mounts_are_values(rootfs, shared):
    a = pycontain.Container(layers=[rootfs], binds=[(shared, "/data")], tmpfs=[("/t", MiB)])
    b = pycontain.Container(layers=[rootfs], binds=[(str(shared), "/data")], tmpfs=[("/t", MiB)])
    assert a == b and hash(a) == hash(b)
    assert pickle.loads(pickle.dumps(a)) == a
    assert a.replace(shm_size=MiB) != a
    assert "binds=" in repr(a)


def test_pre_pivot_sees_binds_and_tmpfs_in_place(rootfs, shared, tmp_path):
    report = tmp_path / "seen"

    def pre_pivot():
        # The current directory is the container's future root.
        with open("data/file") as f:
            seen = [f.read(), os.path.ismount("scratch")]
        report.write_text(repr(seen))

    assert (
        pycontain.run(
            ["/bin/true"],
            layers=[rootfs],
            binds=[(shared, "/data")],
            tmpfs=["/scratch"],
            pre_pivot=pre_pivot,
        ).returncode
        == 0
    )
    assert report.read_text() == repr(["host data\n", True])


def test_a_bind_source_removed_after_the_container_was_made(rootfs, tmp_path):
    source = tmp_path / "gone"
    source.mkdir()
    box = pycontain.Container(layers=[rootfs], binds=[(source, "/data")])
    source.rmdir()
    with pytest.raises(FileNotFoundError) as caught:
        box.run(["/bin/true"])
    assert isinstance(caught.value, pycontain.SpawnError)
    assert caught.value.step == "bind"
    assert caught.value.filename == str(source)
