"""The container's root filesystem: layer order, merging, where writes go,
writedir/workdir handling, and awkward layer and writedir paths."""

from __future__ import annotations

import os
import signal
import stat

import pytest
from helpers import (
    BB_ENV,
    TIMEOUT,
    is_whiteout,
    make_layer,
    run,
    sh,
    snapshot,
    wait_for_handler,
    workdir_siblings,
)

import pycontain


@pytest.fixture
def two_layers(tmp_path):
    """Layers A and B, both with /etc/which, each with files of its own."""
    a, b = tmp_path / "A", tmp_path / "B"
    make_layer(a, {"etc/which": "A\n", "shared/from-a": "a\n", "only-a": "a\n"})
    make_layer(
        b, {"etc/which": "B\n", "shared/from-b": "b\n", "only-b": "b\n", "etc/other": "other\n"}
    )
    return a, b


# -- layer order and merging -------------------------------------------------------


def test_first_layer_shadows_later_ones(rootfs, two_layers, capfd):
    a, b = two_layers
    assert sh("cat /etc/which", [a, b, rootfs]) == 0
    assert capfd.readouterr().out == "A\n"
    assert sh("cat /etc/which", [b, a, rootfs]) == 0
    assert capfd.readouterr().out == "B\n"


def test_upper_layer_shadows_a_program_of_the_rootfs(rootfs, tmp_path, capfd):
    layer = tmp_path / "layer"
    make_layer(layer, {"bin/true": "#!/bin/sh\necho shadowed\n"}, executable=True)
    assert run(["/bin/true"], layers=[layer, rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out == "shadowed\n"
    assert run(["/bin/true"], layers=[rootfs], env=BB_ENV) == 0
    assert capfd.readouterr().out == ""


def test_files_of_all_layers_are_visible_and_directories_merge(rootfs, two_layers, capfd):
    a, b = two_layers
    assert sh("ls /shared; cat /only-a /only-b /etc/other; ls /bin/busybox", [a, b, rootfs]) == 0
    assert capfd.readouterr().out == "from-a\nfrom-b\na\nb\nother\n/bin/busybox\n"


def test_whiteout_in_an_upper_layer_hides_a_lower_file(rootfs, two_layers, capfd):
    # A writedir of an earlier run, used as a layer, hides what it deleted.
    a, b = two_layers
    os.mknod(a / "etc" / "other", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    assert sh("test -e /etc/other && echo visible; ls /etc", [a, b, rootfs]) == 0
    assert capfd.readouterr().out == "which\n"


def test_many_layers(rootfs, tmp_path, capfd):
    layers = []
    for i in range(150):
        layer = tmp_path / f"l{i}"
        make_layer(layer, {f"many/f{i:03d}": f"{i}\n", "many/top": f"{i}\n"})
        layers.append(layer)
    assert sh("ls /many | wc -l; cat /many/top /many/f149", [*layers, rootfs]) == 0
    assert capfd.readouterr().out.split() == ["151", "0", "149"]


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike", "relative", "symlink"])
def test_layer_path_forms(rootfs, tmp_path, monkeypatch, capfd, kind):
    layer = tmp_path / "layer"
    make_layer(layer, {"marker": "found\n"})
    given = {
        "str": str(layer),
        "bytes": os.fsencode(layer),
        "pathlike": layer,
        "relative": "layer",
        "symlink": str(tmp_path / "link"),
    }[kind]
    (tmp_path / "link").symlink_to(layer)
    monkeypatch.chdir(tmp_path)
    assert sh("cat /marker", [given, rootfs]) == 0
    assert capfd.readouterr().out == "found\n"


def test_layers_may_be_any_iterable(rootfs, two_layers, capfd):
    a, b = two_layers
    assert sh("cat /etc/which", (layer for layer in (b, a, rootfs))) == 0
    assert capfd.readouterr().out == "B\n"


# -- writes without a writedir: a throwaway tmpfs -----------------------------------


def test_writes_go_to_a_throwaway_tmpfs(rootfs, two_layers, capfd):
    a, b = two_layers
    before = [snapshot(a), snapshot(b), snapshot(rootfs)]
    script = (
        "echo new > /new-file && mkdir -p /new-dir/sub && echo changed >> /etc/which"
        " && rm /etc/other /only-a && rm -r /shared && chmod 700 /bin && ln -s x /link"
        " && cat /etc/which && ls /"
    )
    assert sh(script, [a, b, rootfs]) == 0
    out = capfd.readouterr().out
    assert out.startswith("A\nchanged\n")
    assert "new-file" in out.split() and "shared" not in out.split()
    # The lower directories are untouched on the host...
    assert [snapshot(a), snapshot(b), snapshot(rootfs)] == before
    # ...and a second container sees none of the first one's writes.
    check = (
        "test ! -e /new-file && test ! -e /new-dir && test ! -e /link && test -e /etc/other"
        " && test -e /only-a && test -d /shared && stat -c %a /bin && cat /etc/which"
    )
    assert sh(check, [a, b, rootfs]) == 0
    assert capfd.readouterr().out == "755\nA\n"


def test_root_is_writable_by_default(rootfs, capfd):
    assert (
        sh(
            "stat -c %a /; echo x > /top && mkdir /tmp && echo y > /tmp/f && cat /top /tmp/f",
            [rootfs],
        )
        == 0
    )
    assert capfd.readouterr().out == "755\nx\ny\n"


def test_missing_mount_points_are_created_in_the_upper_layer(rootfs, capfd):
    # The busybox rootfs has no /proc, /sys or /dev: pycontain makes them in
    # the writable layer, never in the (read-only) rootfs on the host.
    assert sorted(os.listdir(rootfs)) == ["bin"]
    assert (
        sh("ls /; test -e /proc/self/stat && test -d /sys/kernel && test -c /dev/null", [rootfs])
        == 0
    )
    assert capfd.readouterr().out.split() == ["bin", "dev", "proc", "sys"]
    assert sorted(os.listdir(rootfs)) == ["bin"]


def test_existing_mount_points_of_a_layer_are_used(rootfs, tmp_path, capfd):
    layer = tmp_path / "layer"
    for name in ("proc", "sys", "dev"):
        (layer / name).mkdir(parents=True)
        (layer / name / "hidden-by-mount").write_text("x")
    before = snapshot(layer)
    assert (
        sh(
            "ls /dev/hidden-by-mount /proc/hidden-by-mount 2>/dev/null; ls /proc/1/stat",
            [layer, rootfs],
        )
        == 0
    )
    assert capfd.readouterr().out == "/proc/1/stat\n"
    assert snapshot(layer) == before


# -- awkward layer paths --------------------------------------------------------------


SPECIAL_NAME = "a,b:c\\d =x"


def test_layer_path_with_overlayfs_syntax_characters(rootfs, tmp_path, capfd):
    layer = tmp_path / SPECIAL_NAME
    make_layer(layer, {"marker": "special\n"})
    assert sh("cat /marker", [layer, rootfs]) == 0
    assert capfd.readouterr().out == "special\n"


def test_non_utf8_bytes_layer_path(rootfs, tmp_path, capfd):
    layer = os.fsencode(tmp_path) + b"/caf\xe9-\xff"
    make_layer(layer, {"marker": "latin1\n"})
    assert sh("cat /marker", [layer, rootfs]) == 0
    assert capfd.readouterr().out == "latin1\n"


def test_non_utf8_str_layer_path_via_surrogateescape(rootfs, tmp_path, capfd):
    layer = os.fsencode(tmp_path) + b"/caf\xe9"
    make_layer(layer, {"marker": "surrogate\n"})
    assert sh("cat /marker", [os.fsdecode(layer), rootfs]) == 0
    assert capfd.readouterr().out == "surrogate\n"


# -- writedir: writes are kept ----------------------------------------------------------


def test_writedir_keeps_writes_and_lower_layers_stay_untouched(rootfs, two_layers, tmp_path, capfd):
    a, b = two_layers
    upper = tmp_path / "upper"
    upper.mkdir()
    before = [snapshot(a), snapshot(b), snapshot(rootfs)]
    script = (
        "echo data > /new-file && mkdir -p /new-dir/sub && echo changed >> /etc/which"
        " && rm /etc/other"
    )
    assert sh(script, [a, b, rootfs], writedir=upper) == 0
    assert (upper / "new-file").read_text() == "data\n"
    assert (upper / "new-dir" / "sub").is_dir()
    assert (upper / "etc" / "which").read_text() == "A\nchanged\n"  # copied up
    # The deletion is a whiteout in the writedir; the lower file is still there.
    assert is_whiteout(upper / "etc" / "other")
    assert (b / "etc" / "other").read_text() == "other\n"
    assert [snapshot(a), snapshot(b), snapshot(rootfs)] == before
    # The next container with the same writedir sees the changes.
    check = "cat /new-file /etc/which; test -e /etc/other && echo still-there; exit 0"
    assert sh(check, [a, b, rootfs], writedir=upper) == 0
    assert capfd.readouterr().out == "data\nA\nchanged\n"


def test_writedir_gets_the_missing_mount_points(rootfs, tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    assert sh("true", [rootfs], writedir=upper) == 0
    assert {"proc", "sys", "dev"} <= set(os.listdir(upper))
    assert sorted(os.listdir(rootfs)) == ["bin"]
    # The container's /dev is a tmpfs: no device nodes land in the writedir.
    assert os.listdir(upper / "dev") == []


def test_created_workdir_exists_while_running_and_is_removed_after_wait(rootfs, tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    before = sorted(os.listdir(tmp_path))
    with pycontain.Process(
        ["/bin/sh", "-c", 'trap "exit 5" TERM; while :; do sleep 0.05; done'],
        layers=[rootfs],
        writedir=upper,
        env=BB_ENV,
    ) as p:
        siblings = workdir_siblings(upper)
        assert len(siblings) == 1
        assert siblings[0].startswith(b".upper.pycontain-work-")
        wait_for_handler(p.pid, signal.SIGTERM)
        p.terminate()
        assert p.wait(timeout=TIMEOUT) == 5
        assert workdir_siblings(upper) == []
    assert sorted(os.listdir(tmp_path)) == before


def test_created_workdir_is_removed_after_kill(rootfs, tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    p = pycontain.Process(["/bin/sleep", "100"], layers=[rootfs], writedir=upper, env=BB_ENV)
    assert len(workdir_siblings(upper)) == 1
    p.kill()
    assert p.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert workdir_siblings(upper) == []


def test_explicit_workdir_is_used_and_kept(rootfs, tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    assert sh("echo kept > /f", [rootfs], writedir=upper, workdir=work) == 0
    assert (upper / "f").read_text() == "kept\n"
    assert work.is_dir()
    # overlayfs made its "work" directory there: this is the workdir it used.
    assert "work" in os.listdir(work)
    assert workdir_siblings(upper) == []
    assert sorted(os.listdir(tmp_path)) == ["upper", "work"]


def test_relative_writedir(rootfs, tmp_path, monkeypatch):
    (tmp_path / "upper").mkdir()
    monkeypatch.chdir(tmp_path)
    assert sh("echo rel > /f", [rootfs], writedir="upper") == 0
    assert (tmp_path / "upper" / "f").read_text() == "rel\n"
    assert sorted(os.listdir(tmp_path)) == ["upper"]


def test_writedir_with_overlayfs_syntax_characters(rootfs, tmp_path):
    layer, upper = tmp_path / ("L" + SPECIAL_NAME), tmp_path / ("W" + SPECIAL_NAME)
    make_layer(layer, {"marker": "special\n"})
    upper.mkdir()
    assert sh("cp /marker /copied", [layer, rootfs], writedir=upper) == 0
    assert (upper / "copied").read_text() == "special\n"
    assert workdir_siblings(upper) == []
    assert sorted(os.listdir(tmp_path)) == sorted([layer.name, upper.name])


def test_non_utf8_bytes_writedir(rootfs, tmp_path):
    base = os.fsencode(tmp_path)
    layer, upper = base + b"/layer-caf\xe9", base + b"/upper-\xff\xfe"
    make_layer(layer, {"marker": "bytes\n"})
    os.mkdir(upper)
    assert sh("cp /marker /copied", [layer, rootfs], writedir=upper) == 0
    with open(upper + b"/copied") as f:
        assert f.read() == "bytes\n"
    assert workdir_siblings(upper) == []
    assert sorted(os.listdir(base)) == sorted([b"layer-caf\xe9", b"upper-\xff\xfe"])


def test_many_layers_do_not_leak_into_the_container_as_fds(rootfs, tmp_path, capfd):
    # The layers travel as fds; none of them may stay open in the program.
    layers = []
    for i in range(20):
        layer = tmp_path / f"l{i}"
        layer.mkdir()
        layers.append(layer)
    assert sh("ls /proc/$$/fd; exit 0", [*layers, rootfs]) == 0
    assert sorted(capfd.readouterr().out.split()) == ["0", "1", "2"]


def test_layer_paths_are_not_visible_as_mount_sources(rootfs, tmp_path, capfd):
    # Layers are handed to overlayfs as /proc/self/fd/N: check the mount works
    # and the container's "/" is an overlay whatever the path looked like.
    layer = tmp_path / SPECIAL_NAME
    layer.mkdir()
    assert run(["/bin/cat", "/proc/self/mountinfo"], layers=[layer, rootfs], env=BB_ENV) == 0
    root_line = next(line for line in capfd.readouterr().out.splitlines() if line.split()[4] == "/")
    assert " - overlay " in root_line


def test_a_writedir_in_use_by_a_running_container_is_refused(rootfs, tmp_path):
    # overlayfs leaves two mounts sharing an upper directory undefined: the
    # second spawn is refused, even through another path to the same
    # directory, and the writedir is free again once the first is reaped.
    upper = tmp_path / "upper"
    upper.mkdir()
    (tmp_path / "alias").symlink_to(upper)
    first = pycontain.Process(["/bin/sleep", "100"], layers=[rootfs], writedir=upper, env=BB_ENV)
    try:
        for path in (upper, tmp_path / "alias"):
            with pytest.raises(ValueError, match="running container"):
                pycontain.Process(["/bin/true"], layers=[rootfs], writedir=path, env=BB_ENV)
        # The refused spawns left no work directory of their own.
        assert len(workdir_siblings(upper)) == 1
    finally:
        first.kill()
        first.wait()
    assert workdir_siblings(upper) == []
    assert sh("echo again > /f", [rootfs], writedir=upper) == 0
    assert (upper / "f").read_text() == "again\n"
