"""The writable layer as a result: changes(), commit(), apply_to(), and writedirs
on the host's "/" (real overlayfs, busybox rootfs)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import BB_ENV, TIMEOUT, is_whiteout, make_layer, workdir_siblings

import pycontain
from pycontain import Change, Container


@pytest.fixture
def base(tmp_path):
    """A layer with a few files and directories, under the busybox rootfs."""
    layer = tmp_path / "base"
    make_layer(
        layer,
        {
            "etc/a": "a\n",
            "etc/b": "b\n",
            "d/sub/x": "x\n",
            "d/y": "y\n",
            "f": "f\n",
            "moved": "m\n",
            "tree/t1": "1\n",
        },
    )
    os.link(layer / "f", layer / "f-link")
    return layer


def run_changes(
    rootfs, base, tmp_path, script: str, **settings
) -> tuple[pycontain.Process, list[Change]]:
    writedir = tmp_path / "w"
    writedir.mkdir(exist_ok=True)
    box = Container(layers=[base, rootfs], writedir=writedir, **settings)
    process = box.spawn(["/bin/sh", "-ec", script], env=BB_ENV)
    assert process.wait(TIMEOUT) == 0
    return process, process.changes()


def as_tuples(changes):
    return [(c.path, c.action, c.kind) for c in changes]


def test_every_kind_of_change(rootfs, base, tmp_path):
    script = """
        echo new > /etc/new
        echo more >> /etc/a
        rm /etc/b
        rm -r /d/sub
        mkdir /newdir; echo n > /newdir/n
        rm /f; mkdir /f                         # a file replaced by a directory
        rm -r /tree; echo now-a-file > /tree    # a directory replaced by a file
        mv /moved /renamed
        chmod 600 /etc/a
        ln -s /etc/a /sym
        ln /newdir/n /hard
    """
    process, changes = run_changes(rootfs, base, tmp_path, script)
    with process:
        assert as_tuples(changes) == [
            ("/d", "modified", "dir"),
            ("/d/sub", "deleted", "dir"),
            ("/etc", "modified", "dir"),
            ("/etc/a", "modified", "file"),
            ("/etc/b", "deleted", "file"),
            ("/etc/new", "added", "file"),
            ("/f", "modified", "dir"),
            ("/hard", "added", "file"),
            ("/moved", "deleted", "file"),
            ("/newdir", "added", "dir"),
            ("/newdir/n", "added", "file"),
            ("/renamed", "added", "file"),
            ("/sym", "added", "symlink"),
            ("/tree", "modified", "file"),
        ]
        sizes = {c.path: c.size for c in changes}
        assert sizes["/etc/a"] == len("a\nmore\n") and sizes["/etc/new"] == 4
        assert sizes["/newdir"] is None and sizes["/sym"] is None
        assert process.changes(format="docker")[:3] == ["C /d", "D /d/sub", "C /etc"]


def test_a_directory_emptied_and_remade_hides_what_was_below(rootfs, base, tmp_path):
    # rm -r + mkdir makes an opaque directory: the layer's entries are gone.
    _, changes = run_changes(rootfs, base, tmp_path, "rm -r /d; mkdir /d; echo z > /d/z")
    assert as_tuples(changes) == [
        ("/d", "modified", "dir"),
        ("/d/sub", "deleted", "dir"),
        ("/d/y", "deleted", "file"),
        ("/d/z", "added", "file"),
    ]


def test_no_change_is_an_empty_list_and_mount_points_are_not_changes(rootfs, base, tmp_path):
    # The layers have no /proc, /sys, /dev: pycontain made them in the
    # writable layer, and they are not the program's.
    process, changes = run_changes(rootfs, base, tmp_path, "cat /etc/a > /dev/null")
    assert changes == []
    assert sorted(os.listdir(tmp_path / "w")) == ["dev", "proc", "sys"]
    assert process.changes(format="docker") == []


def test_changes_while_it_runs(rootfs, base, tmp_path):
    (tmp_path / "w").mkdir()
    box = Container(layers=[base, rootfs], writedir=tmp_path / "w")
    with box.spawn(
        ["/bin/sh", "-c", "echo 1 > /one; echo ready; read x; echo 2 > /two"],
        env=BB_ENV,
        stdin=pycontain.PIPE,
        stdout=pycontain.PIPE,
    ) as process:
        assert process.stdout.readline() == b"ready\n"
        assert [c.path for c in process.changes()] == ["/one"]
        process.communicate(b"go\n", timeout=TIMEOUT)
        assert [c.path for c in process.changes()] == ["/one", "/two"]


def test_non_utf8_names(rootfs, base, tmp_path):
    _, changes = run_changes(rootfs, base, tmp_path, "echo x > \"$(printf '/caf\\351')\"")
    assert [os.fsencode(c.path) for c in changes] == [b"/caf\xe9"]


def test_ten_thousand_files(rootfs, base, tmp_path):
    script = "mkdir /many; cd /many; i=0; while [ $i -lt 100 ]; do mkdir d$i; i=$((i+1)); done;"
    script += " for d in d*; do j=0; while [ $j -lt 100 ]; do echo > $d/f$j; j=$((j+1)); done; done"
    process, _ = run_changes(rootfs, base, tmp_path, script)
    start = time.perf_counter()
    changes = process.changes()
    elapsed = time.perf_counter() - start
    assert len(changes) == 1 + 100 + 10_000
    assert all(c.action == "added" for c in changes)
    print(f"changes() on {len(changes)} entries: {elapsed:.3f} s")


def test_changes_without_writedir_says_what_it_needs(rootfs):
    with Container(layers=[rootfs]).spawn(["/bin/true"], env=BB_ENV) as process:
        process.wait(TIMEOUT)
        with pytest.raises(ValueError, match="writedir"):
            process.changes()
        with pytest.raises(ValueError, match="format"):
            process.changes(format="json")


# -- commit ------------------------------------------------------------------------------------


def test_commit_makes_a_layer_that_stacks(rootfs, base, tmp_path):
    script = "echo more >> /etc/a; rm /etc/b; rm -r /d; mkdir /d; echo z > /d/z; ln -s a /etc/l"
    script += "; echo h > /h1; ln /h1 /h2"
    process, _ = run_changes(rootfs, base, tmp_path, script)
    layer = tmp_path / "committed"
    with process:
        assert process.commit(layer) == layer
    assert is_whiteout(layer / "etc" / "b")
    # trusted.overlay.*, or user.overlay.* in rootless mode (a user namespace).
    opaque = process.container._plan.xattr_prefix.decode() + "opaque"
    assert os.getxattr(layer / "d", opaque) == b"y"
    assert os.stat(layer / "h1").st_ino == os.stat(layer / "h2").st_ino
    # No overlayfs bookkeeping about the original layers is copied.
    assert not [n for n in os.listxattr(layer / "etc") if n != opaque]
    assert not [p for p in os.listdir(tmp_path) if ".pycontain-commit-" in p]
    box = Container(layers=[layer, base, rootfs])
    done = box.run(
        ["/bin/sh", "-c", "cat /etc/a; ls /etc; ls /d; readlink /etc/l"],
        env=BB_ENV,
        capture_output=True,
        text=True,
    )
    assert done.stdout == "a\nmore\na\nl\nz\na\n"


def test_commit_refuses_an_existing_destination(rootfs, base, tmp_path):
    process, _ = run_changes(rootfs, base, tmp_path, "echo > /x")
    (tmp_path / "there").mkdir()
    with process, pytest.raises(FileExistsError):
        process.commit(tmp_path / "there")


def test_a_kept_writedir_is_itself_a_layer(rootfs, base, tmp_path):
    # Branching: the next run starts from what the previous one left.
    _, _ = run_changes(rootfs, base, tmp_path, "rm /etc/b; echo 2 > /etc/two")
    box = Container(layers=[tmp_path / "w", base, rootfs])
    done = box.run(["/bin/ls", "/etc"], env=BB_ENV, capture_output=True, text=True)
    assert done.stdout.split() == ["a", "two"]


# -- apply_to ----------------------------------------------------------------------------------


def test_apply_to_copies_the_chosen_changes(rootfs, base, tmp_path):
    host = tmp_path / "host"
    make_layer(host, {"etc/b": "old b\n", "keep": "k\n", "d/y": "y\n"})
    script = "echo new > /etc/new; rm /etc/b; rm /d/y; echo out > /out; ln -s new /etc/link"
    process, _ = run_changes(rootfs, base, tmp_path, script)
    with process:
        applied = process.apply_to(host, select=["/etc"])
    assert [c.path for c in applied] == ["/etc", "/etc/b", "/etc/link", "/etc/new"]
    assert (host / "etc" / "new").read_text() == "new\n"
    assert os.readlink(host / "etc" / "link") == "new"
    assert not (host / "etc" / "b").exists()
    assert (host / "d" / "y").exists() and not (host / "out").exists()
    assert (host / "keep").read_text() == "k\n"


def test_apply_to_never_follows_a_symlink_in_the_target(rootfs, base, tmp_path):
    # The host directory has etc -> elsewhere: nothing may land in elsewhere.
    host, elsewhere = tmp_path / "host", tmp_path / "elsewhere"
    host.mkdir()
    elsewhere.mkdir()
    (host / "etc").symlink_to(elsewhere)
    process, _ = run_changes(rootfs, base, tmp_path, "echo new > /etc/new")
    with process:
        # Only the file chosen: its parent is a symlink on the host, refused.
        with pytest.raises(NotADirectoryError):
            process.apply_to(host, select=lambda change: change.path == "/etc/new")
        assert os.listdir(elsewhere) == []
        # Everything chosen: /etc is a directory in the container, so the
        # symlink is replaced by one (not followed).
        process.apply_to(host)
    assert os.listdir(elsewhere) == []
    assert not (host / "etc").is_symlink()
    assert (host / "etc" / "new").read_text() == "new\n"


@pytest.mark.needs_root("mknod of a device node, which a user namespace may not make")
def test_apply_to_drops_setuid_and_skips_devices(rootfs, base, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    script = "echo x > /suid; chmod 4755 /suid; mknod /null c 1 3; mkfifo /fifo"
    # mknod of a device needs CAP_MKNOD, which the default set leaves out.
    with_mknod = [*pycontain.DEFAULT_CAPABILITIES, "CAP_MKNOD"]
    process, changes = run_changes(rootfs, base, tmp_path, script, capabilities=with_mknod)
    with process:
        applied = process.apply_to(host)
    assert {c.path for c in changes} == {"/suid", "/null", "/fifo"}
    assert [c.path for c in applied] == ["/suid"]
    assert stat.S_IMODE(os.stat(host / "suid").st_mode) == 0o755
    assert sorted(os.listdir(host)) == ["suid"]


def test_apply_to_select_by_callable(rootfs, base, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    process, _ = run_changes(rootfs, base, tmp_path, "echo 1 > /one; echo 2 > /two")
    with process:
        applied = process.apply_to(host, select=lambda change: change.path == "/two")
    assert [c.path for c in applied] == ["/two"]
    assert os.listdir(host) == ["two"]


# -- writedirs on a layer, and in use ------------------------------------------------------------


def test_host_root_with_a_kept_writedir(tmp_path, host_root):
    # The host's own tools, a sandbox that keeps its writes.
    state = tmp_path / "state"
    state.mkdir()
    box = Container(layers=[host_root], writedir=state)
    script = f"echo kept > /pycontain-test-file; ls {state} 2>&1; true"
    done = box.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0
    # Inside, the writedir itself is unreachable through the overlay (ELOOP).
    assert "Too many levels of symbolic links" in done.stdout
    assert (state / "pycontain-test-file").read_text() == "kept\n"
    assert not os.path.exists("/pycontain-test-file")
    assert workdir_siblings(state) == []


def test_a_writedir_inside_a_layer_named_through_a_symlink(tmp_path, rootfs):
    # The layer is a second name (a symlink) of a directory the writedir is in.
    real = tmp_path / "real"
    real.mkdir()
    (real / "state").mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    Container(layers=[alias, rootfs], writedir=real / "state").run(["/bin/true"], env=BB_ENV)


@pytest.mark.parametrize("where", ["writedir-is-layer", "layer-inside-writedir"])
def test_a_layer_at_or_inside_the_writedir_is_refused(tmp_path, rootfs, where):
    (tmp_path / "w" / "layer").mkdir(parents=True)
    layer = tmp_path / "w" if where == "writedir-is-layer" else tmp_path / "w" / "layer"
    with pytest.raises(ValueError, match="overlaps"):
        Container(layers=[layer, rootfs], writedir=tmp_path / "w")


def test_a_writedir_in_use_by_another_process_is_refused(rootfs, tmp_path):
    (tmp_path / "w").mkdir()
    holder = textwrap.dedent(
        f"""
        import sys, pycontain
        box = pycontain.Container(layers=[{rootfs!r}], writedir={str(tmp_path / "w")!r})
        p = box.spawn(["/bin/sleep", "30"], env={{"PATH": "/bin"}})
        print("started", flush=True)
        sys.stdin.read()
        p.kill(); p.wait()
        """
    )
    other = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline() == "started\n"
        with pytest.raises(ValueError, match="running container"):
            Container(layers=[rootfs], writedir=tmp_path / "w").spawn(["/bin/true"], env=BB_ENV)
    finally:
        other.communicate("", timeout=TIMEOUT)
    # Free again once that container has ended.
    Container(layers=[rootfs], writedir=tmp_path / "w").run(["/bin/true"], env=BB_ENV, check=True)


def test_a_forked_child_does_not_keep_the_writedir_locked(rootfs, tmp_path):
    (tmp_path / "w").mkdir()
    box = Container(layers=[rootfs], writedir=tmp_path / "w")
    process = box.spawn(["/bin/sleep", "30"], env=BB_ENV)
    ready, told = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The at-fork handlers (which close the copy) ran before this line.
        os.write(told, b"x")
        time.sleep(5)
        os._exit(0)
    os.close(told)
    assert os.read(ready, 1) == b"x"
    os.close(ready)
    try:
        process.kill()
        process.wait(TIMEOUT)
        box.run(["/bin/true"], env=BB_ENV, check=True)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


# -- the throwaway writable layer, kept (keep_upper=True) ----------------------------------------


@pytest.mark.parametrize("path", ["clone", "fork"], ids=["clone-vm", "fork-path"])
def test_keep_upper_reads_the_throwaway_layer(rootfs, base, no_leaks, path):
    box = Container(layers=[base, rootfs], keep_upper=True)
    hooks = {"pre_exec": lambda: None} if path == "fork" else {}
    script = "echo more >> /etc/a; rm /etc/b; echo n > /new; read x; echo late > /late"
    with box.spawn(["/bin/sh", "-c", script], env=BB_ENV, stdin=pycontain.PIPE, **hooks) as process:
        assert wait_for_changes(process, 3)
        assert process.changes(format="docker") == ["C /etc", "C /etc/a", "D /etc/b", "A /new"]
        process.communicate(b"go\n", timeout=TIMEOUT)
        # After the program ended (its mount namespace is gone) it is still there.
        assert [c.path for c in process.changes()] == ["/etc", "/etc/a", "/etc/b", "/late", "/new"]


def wait_for_changes(process, count: int) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if len(process.changes()) >= count + 1:  # + the parent directory /etc
            return True
        time.sleep(0.01)
    return False


def test_keep_upper_commit_and_stack(rootfs, base, tmp_path):
    box = Container(layers=[base, rootfs], keep_upper=True)
    with box.spawn(["/bin/sh", "-c", "rm /etc/b; echo 2 > /etc/two"], env=BB_ENV) as process:
        process.wait(TIMEOUT)
        process.commit(tmp_path / "layer")
    done = Container(layers=[tmp_path / "layer", base, rootfs]).run(
        ["/bin/ls", "/etc"], env=BB_ENV, capture_output=True, text=True
    )
    assert done.stdout.split() == ["a", "two"]


def test_the_kept_layer_goes_with_close(rootfs, base, no_leaks):
    box = Container(layers=[base, rootfs], keep_upper=True)
    process = box.spawn(["/bin/sh", "-c", "echo x > /x"], env=BB_ENV)
    process.wait(TIMEOUT)
    assert [c.path for c in process.changes()] == ["/x"]
    process.close()
    with pytest.raises(ValueError, match="closed"):
        process.changes()


def test_without_keep_upper_the_message_names_it(rootfs):
    with Container(layers=[rootfs]).spawn(["/bin/true"], env=BB_ENV) as process:
        process.wait(TIMEOUT)
        with pytest.raises(ValueError, match="keep_upper=True"):
            process.changes()


def test_keep_upper_is_a_container_setting(rootfs):
    box = Container(layers=[rootfs], keep_upper=True)
    assert box.keep_upper is True and box != box.replace(keep_upper=False)
    assert "keep_upper=True" in repr(box)


def test_container_changes_reads_a_kept_writedir(rootfs, base, tmp_path):
    run_changes(rootfs, base, tmp_path, "rm /etc/b")
    box = Container(layers=[base, rootfs], writedir=tmp_path / "w")
    box.run(["/bin/sh", "-c", "echo 2 > /two"], env=BB_ENV, check=True)
    assert box.changes(format="docker") == ["C /etc", "D /etc/b", "A /two"]
    with pytest.raises(ValueError, match="writedir"):
        Container(layers=[rootfs]).changes()


# -- a hostile writable layer against the readers (review findings) ------------------------------


def test_a_fifo_swapped_in_does_not_block_apply_to(rootfs, base, tmp_path):
    from pycontain import _changes

    process, changes = run_changes(rootfs, base, tmp_path, "echo x > /f1")
    host = tmp_path / "host"
    host.mkdir()
    # As the still-running program could, between the read and the copy.
    os.unlink(tmp_path / "w" / "f1")
    os.mkfifo(tmp_path / "w" / "f1")
    upper = os.open(tmp_path / "w", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with process, pytest.raises(OSError, match="replaced by a non-file"):
            _changes.apply_to(upper, changes, os.fsencode(host), None)
    finally:
        os.close(upper)


def test_sparse_files_stay_sparse(rootfs, base, tmp_path):
    size = 64 << 20
    process, _ = run_changes(
        rootfs,
        base,
        tmp_path,
        f"echo head > /sparse; truncate -s {size} /sparse; echo x >> /sparse",
    )
    host = tmp_path / "host"
    host.mkdir()
    with process:
        process.commit(tmp_path / "layer")
        process.apply_to(host)
    for copy in (tmp_path / "layer" / "sparse", host / "sparse"):
        info = os.stat(copy)
        assert info.st_size == size + 2
        assert info.st_blocks * 512 < 1 << 20, f"{copy} is dense"
    with open(host / "sparse", "rb") as f:
        assert f.read(5) == b"head\n"
        f.seek(size)
        assert f.read() == b"x\n"


def test_commit_and_apply_to_within_a_small_fd_limit(rootfs, base, tmp_path):
    import resource

    script = "for i in $(seq 300); do mkdir /d$i; echo $i > /d$i/f; done"
    process, changes = run_changes(rootfs, base, tmp_path, script)
    host = tmp_path / "host"
    host.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        with process:
            process.commit(tmp_path / "layer")
            applied = process.apply_to(host)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(applied) == len(changes) == 600
    assert (host / "d300" / "f").read_text() == "300\n"
    assert (tmp_path / "layer" / "d17" / "f").read_text() == "17\n"


def test_commit_drops_set_id_bits_and_device_nodes(tmp_path, host_root):
    state = tmp_path / "w"
    state.mkdir()
    box = Container(layers=[host_root], writedir=state, capabilities=["mknod", "chown", "fowner"])
    script = "echo x > /suid; chmod 6755 /suid; mknod /disk b 7 0; mkfifo /fifo; rm /etc/hostname"
    with box.spawn(["/bin/sh", "-ec", script]) as process:
        assert process.wait(TIMEOUT) == 0
        process.commit(tmp_path / "layer")
    layer = tmp_path / "layer"
    assert stat.S_IMODE(os.stat(layer / "suid").st_mode) == 0o755
    assert not (layer / "disk").exists()
    assert stat.S_ISFIFO(os.stat(layer / "fifo").st_mode)
    assert is_whiteout(layer / "etc" / "hostname")


def test_forged_user_overlay_markers_mean_nothing_as_root(tmp_path, host_root):
    # In a mount by root, user.overlay.* is the program's data: a forged
    # redirect must not make changes() look above the layers.
    state = tmp_path / "w"
    state.mkdir()
    box = Container(layers=[host_root], writedir=state)
    script = (
        "import os; os.mkdir('/forged'); "
        "os.setxattr('/forged', 'user.overlay.redirect', b'/../../../etc'); "
        "open('/forged/passwd', 'w').close()"
    )
    with box.spawn([sys.executable, "-c", script]) as process:
        assert process.wait(TIMEOUT) == 0
        changes = process.changes()
        process.commit(tmp_path / "layer")
    assert [(c.path, c.action, c.renamed_from) for c in changes] == [
        ("/forged", "added", None),
        ("/forged/passwd", "added", None),
    ]
    assert "user.overlay.redirect" not in os.listxattr(tmp_path / "layer" / "forged")


def test_the_kept_upper_fd_is_close_on_exec(rootfs):
    import fcntl

    box = Container(layers=[rootfs], keep_upper=True)
    with box.spawn(["/bin/true"], env=BB_ENV) as process:
        process.wait(TIMEOUT)
        assert fcntl.fcntl(process._kept_upper, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_bind_and_tmpfs_mount_points_are_not_changes(rootfs, base, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (tmp_path / "w").mkdir()
    box = Container(
        layers=[base, rootfs],
        writedir=tmp_path / "w",
        binds=[(source, "/srv/data")],
        tmpfs=["/scratch"],
    )
    box.run(["/bin/sh", "-c", "echo x > /scratch/x; echo y > /mine"], env=BB_ENV, check=True)
    assert box.changes(format="docker") == ["A /mine"]
