"""Bad input and failed spawns: the right exception, a clear message, and
nothing left behind (no child process, no fd, no work directory)."""

from __future__ import annotations

import errno
import gc
import os
import pickle
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import BB_ENV, child_pids, fd_count, make_layer

import pycontain


@contextmanager
def nothing_left_behind(*dirs: os.PathLike | str):
    """Assert the block spawns no lasting child, leaks no fd and leaves no file in ``dirs``."""
    children, fds = child_pids(), fd_count()
    listings = {d: sorted(os.listdir(d)) for d in dirs}
    yield
    gc.collect()
    assert child_pids() == children
    assert fd_count() == fds
    for d, listing in listings.items():
        assert sorted(os.listdir(d)) == listing, f"files left in {d}"


def spawn(args, **kwargs):
    """Start a container that is expected to fail; fail the test if it starts."""
    p = pycontain.Process(args, **kwargs)
    p.kill()
    p.wait()
    pytest.fail(f"{p!r} started")


# -- argument errors: raised before anything is created ------------------------------


def test_empty_args(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="args"):
        spawn([], layers=[rootfs])


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"args": ["/bin/echo", "a\0b"]}, id="args"),
        pytest.param({"args": ["/bin/ec\0ho"]}, id="args0"),
        pytest.param({"args": [b"/bin/echo", b"\0"]}, id="bytes-args"),
        pytest.param({"executable": "/bin/s\0h"}, id="executable"),
        pytest.param({"cwd": "/b\0in"}, id="cwd"),
        pytest.param({"env": {"A\0B": "x"}}, id="env-name"),
        pytest.param({"env": {"A": "x\0y"}}, id="env-value"),
        pytest.param({"env": {b"A": b"x\0y"}}, id="bytes-env-value"),
        pytest.param({"layers": ["/tmp/la\0yer"]}, id="layer"),
        pytest.param({"writedir": "/tmp/w\0"}, id="writedir"),
        pytest.param({"writedir": "WRITEDIR", "workdir": "/tmp/w\0"}, id="workdir"),
    ],
)
def test_nul_byte_is_a_value_error(rootfs, tmp_path, kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("writedir") == "WRITEDIR":
        (tmp_path / "upper").mkdir()
        kwargs["writedir"] = tmp_path / "upper"
    kwargs.setdefault("args", ["/bin/true"])
    kwargs.setdefault("layers", [rootfs])
    kwargs.setdefault("env", BB_ENV)
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="NUL"):
        spawn(**kwargs)


@pytest.mark.parametrize("layers", ["/", b"/", Path("/")], ids=["str", "bytes", "path"])
def test_layers_as_a_single_path_is_a_type_error(tmp_path, layers):
    with nothing_left_behind(tmp_path), pytest.raises(TypeError, match="layers"):
        spawn(["/bin/true"], layers=layers)


def test_empty_layers(tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="layer"):
        spawn(["/bin/true"], layers=[])


def test_more_than_500_layers(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="500"):
        spawn(["/bin/true"], layers=[rootfs] * 501)


def test_more_than_500_missing_layers_is_still_the_count_error(tmp_path):
    # The count is checked before any layer is opened.
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="500"):
        spawn(["/bin/true"], layers=[tmp_path / "missing"] * 501)


@pytest.mark.parametrize("bad", [123, None, 4.5])
def test_bad_arg_types(rootfs, tmp_path, bad):
    with nothing_left_behind(tmp_path), pytest.raises(TypeError):
        spawn(["/bin/echo", bad], layers=[rootfs], env=BB_ENV)
    with nothing_left_behind(tmp_path), pytest.raises(TypeError):
        spawn(["/bin/true"], layers=[rootfs, bad], env=BB_ENV)


def test_empty_executable(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="executable"):
        spawn(["/bin/true"], executable="", layers=[rootfs], env=BB_ENV)


@pytest.mark.parametrize("name", ["A=B", "=A", ""])
def test_bad_env_name(rootfs, tmp_path, name):
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="environment"):
        spawn(["/bin/true"], layers=[rootfs], env={"PATH": "/bin", name: "x"})


@pytest.mark.parametrize("where", ["contains-layer", "same-as-layer"])
def test_writedir_overlapping_a_layer(rootfs, tmp_path, where):
    # Overlayfs refuses a layer that is the writable layer or inside it (the
    # writedir inside a layer is allowed: tests/test_changes.py).
    layer = tmp_path / "layer"
    layer.mkdir()
    (tmp_path / "outer").mkdir()
    inner = tmp_path / "outer" / "layer"
    inner.mkdir()
    layers, writedir = {
        "contains-layer": ([inner, rootfs], tmp_path / "outer"),
        "same-as-layer": ([layer, rootfs], layer),
    }[where]
    with (
        nothing_left_behind(tmp_path, layer, tmp_path / "outer"),
        pytest.raises(ValueError, match="overlaps"),
    ):
        spawn(["/bin/true"], layers=layers, writedir=writedir, env=BB_ENV)


def test_writedir_overlapping_via_symlink(rootfs, tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    (tmp_path / "alias").symlink_to(layer)
    with nothing_left_behind(tmp_path, layer), pytest.raises(ValueError, match="overlaps"):
        spawn(["/bin/true"], layers=[layer, rootfs], writedir=tmp_path / "alias", env=BB_ENV)


def test_workdir_without_writedir(rootfs, tmp_path):
    (tmp_path / "work").mkdir()
    with nothing_left_behind(tmp_path), pytest.raises(ValueError, match="writedir"):
        spawn(["/bin/true"], layers=[rootfs], workdir=tmp_path / "work", env=BB_ENV)


def test_writedir_that_is_a_mount_point(rootfs, tmp_path):
    # No sibling can be made on the same mount: pycontain asks for workdir=.
    with nothing_left_behind(tmp_path, "/dev"), pytest.raises(ValueError, match="mount point"):
        spawn(["/bin/true"], layers=[rootfs], writedir="/dev/shm", env=BB_ENV)


# -- missing or wrong directories: OSError subclasses naming the path ------------------


def _check_spawn_error(error, cls, step, filename, err):
    assert isinstance(error, pycontain.SpawnError)
    assert isinstance(error, cls)
    assert isinstance(error, OSError)
    assert error.step == step
    assert error.errno == err
    assert error.strerror == os.strerror(err)
    assert error.filename == filename
    assert str(error) == f"pycontain: {step} {filename!r}: {os.strerror(err)}"


def test_missing_layer(rootfs, tmp_path):
    missing = str(tmp_path / "no-such-layer")
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["/bin/true"], layers=[rootfs, missing], env=BB_ENV)
    _check_spawn_error(info.value, FileNotFoundError, "layer", missing, errno.ENOENT)
    assert missing in str(info.value)


def test_missing_bytes_layer_is_named_in_the_message(rootfs, tmp_path):
    missing = os.fsencode(tmp_path) + b"/caf\xe9"
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["/bin/true"], layers=[missing, rootfs], env=BB_ENV)
    assert info.value.step == "layer"
    assert os.fsencode(info.value.filename) == missing


def test_layer_that_is_a_file(rootfs, tmp_path):
    file = tmp_path / "file"
    file.write_text("not a directory")
    with nothing_left_behind(tmp_path), pytest.raises(NotADirectoryError) as info:
        spawn(["/bin/true"], layers=[file, rootfs], env=BB_ENV)
    _check_spawn_error(info.value, NotADirectoryError, "layer", str(file), errno.ENOTDIR)


def test_missing_writedir(rootfs, tmp_path):
    missing = str(tmp_path / "no-such-writedir")
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["/bin/true"], layers=[rootfs], writedir=missing, env=BB_ENV)
    _check_spawn_error(info.value, FileNotFoundError, "writedir", missing, errno.ENOENT)


def test_writedir_that_is_a_file(rootfs, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with nothing_left_behind(tmp_path), pytest.raises(NotADirectoryError) as info:
        spawn(["/bin/true"], layers=[rootfs], writedir=file, env=BB_ENV)
    _check_spawn_error(info.value, NotADirectoryError, "writedir", str(file), errno.ENOTDIR)


def test_missing_explicit_workdir(rootfs, tmp_path):
    (tmp_path / "upper").mkdir()
    missing = str(tmp_path / "no-such-workdir")
    with (
        nothing_left_behind(tmp_path, tmp_path / "upper"),
        pytest.raises(FileNotFoundError) as info,
    ):
        spawn(
            ["/bin/true"], layers=[rootfs], writedir=tmp_path / "upper", workdir=missing, env=BB_ENV
        )
    _check_spawn_error(info.value, FileNotFoundError, "workdir", missing, errno.ENOENT)


def test_bad_layer_after_good_ones_closes_the_opened_fds(rootfs, tmp_path):
    layers = []
    for i in range(30):
        (tmp_path / f"l{i}").mkdir()
        layers.append(tmp_path / f"l{i}")
    (tmp_path / "upper").mkdir()
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError):
        spawn(
            ["/bin/true"],
            layers=[*layers, tmp_path / "missing", rootfs],
            writedir=tmp_path / "upper",
            env=BB_ENV,
        )


# -- failures inside the child: exec and chdir ---------------------------------------


def test_missing_executable(rootfs, tmp_path, legacy):
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        pycontain.Process(["/bin/nosuch"], layers=[rootfs], env=BB_ENV, _force_legacy_clone=legacy)
    _check_spawn_error(info.value, FileNotFoundError, "exec", "/bin/nosuch", errno.ENOENT)
    assert str(info.value) == "pycontain: exec '/bin/nosuch': No such file or directory"


def test_missing_executable_searched_in_path(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["no-such-program"], layers=[rootfs], env={"PATH": "/bin:/usr/bin:/nowhere"})
    # Named as given, as subprocess does.
    _check_spawn_error(info.value, FileNotFoundError, "exec", "no-such-program", errno.ENOENT)


def test_executable_exists_on_host_but_not_in_container(rootfs, tmp_path):
    # /usr/bin/env exists on the host but not in the busybox rootfs.
    assert os.path.exists("/usr/bin/env")
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["/usr/bin/env"], layers=[rootfs], env=BB_ENV)
    assert info.value.step == "exec"


def test_non_executable_file(rootfs, tmp_path, legacy):
    layer = tmp_path / "layer"
    make_layer(layer, {"prog": "#!/bin/sh\necho hi\n"})  # mode 0644
    with nothing_left_behind(tmp_path), pytest.raises(PermissionError) as info:
        pycontain.Process(["/prog"], layers=[layer, rootfs], env=BB_ENV, _force_legacy_clone=legacy)
    _check_spawn_error(info.value, PermissionError, "exec", "/prog", errno.EACCES)


def test_non_executable_file_found_in_path(rootfs, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"tools/prog": "#!/bin/sh\necho hi\n"})
    with nothing_left_behind(tmp_path), pytest.raises(PermissionError) as info:
        spawn(["prog"], layers=[layer, rootfs], env={"PATH": "/bin:/tools:/nowhere"})
    _check_spawn_error(info.value, PermissionError, "exec", "/tools/prog", errno.EACCES)


def test_directory_as_executable(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(PermissionError) as info:
        spawn(["/bin"], layers=[rootfs], env=BB_ENV)
    _check_spawn_error(info.value, PermissionError, "exec", "/bin", errno.EACCES)


def test_exec_format_error(rootfs, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"garbage": b"\x01\x02\x03 not a program"}, executable=True)
    with nothing_left_behind(tmp_path), pytest.raises(OSError) as info:
        spawn(["/garbage"], layers=[layer, rootfs], env=BB_ENV)
    _check_spawn_error(info.value, OSError, "exec", "/garbage", errno.ENOEXEC)


def test_script_with_missing_interpreter(rootfs, tmp_path):
    layer = tmp_path / "layer"
    make_layer(layer, {"script": "#!/no/such/interpreter\n"}, executable=True)
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["/script"], layers=[layer, rootfs], env=BB_ENV)
    assert info.value.step == "exec"


def test_missing_cwd(rootfs, tmp_path, legacy):
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        pycontain.Process(
            ["/bin/true"],
            layers=[rootfs],
            cwd="/no/such/dir",
            env=BB_ENV,
            _force_legacy_clone=legacy,
        )
    _check_spawn_error(info.value, FileNotFoundError, "chdir", "/no/such/dir", errno.ENOENT)


def test_cwd_that_is_a_file(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(NotADirectoryError) as info:
        spawn(["/bin/true"], layers=[rootfs], cwd="/bin/busybox", env=BB_ENV)
    _check_spawn_error(info.value, NotADirectoryError, "chdir", "/bin/busybox", errno.ENOTDIR)


def test_cwd_exists_on_host_only(rootfs, tmp_path):
    # The cwd is looked up inside the container, not on the host.
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(["/bin/true"], layers=[rootfs], cwd=str(tmp_path), env=BB_ENV)
    assert info.value.step == "chdir"


@pytest.mark.parametrize("shape", ["nested", "same", "host-root"])
def test_overlapping_layers_are_refused_before_spawning(rootfs, tmp_path, shape):
    # overlayfs refuses a layer inside (or equal to) another one with a bare
    # ELOOP; pycontain says so in words before anything starts.
    inner = {"nested": Path(rootfs) / "bin", "same": rootfs, "host-root": tmp_path}[shape]
    outer = "/" if shape == "host-root" else rootfs
    with nothing_left_behind(tmp_path), pytest.raises(ValueError) as info:
        spawn(["/bin/true"], layers=[inner, outer], env=BB_ENV)
    message = str(info.value)
    assert str(inner) in message and str(outer) in message
    assert "separate trees" in message


def test_overlayfs_stack_limit_of_500_layers_is_reachable(rootfs, tmp_path, capfd):
    # Layers are named to overlayfs by bare fd numbers, so the options fit
    # mount(2)'s one page up to overlayfs' own limit of 500 layers.
    layers = []
    for i in range(499):
        (tmp_path / f"l{i}").mkdir()
        layers.append(tmp_path / f"l{i}")
    (tmp_path / "l7" / "marker").write_text("from layer 7\n")
    with (
        nothing_left_behind(tmp_path),
        pycontain.Process(["/bin/cat", "/marker"], layers=[*layers, rootfs], env=BB_ENV) as p,
    ):
        assert p.wait(timeout=30) == 0
    assert capfd.readouterr().out == "from layer 7\n"


# -- the exception classes ---------------------------------------------------------


def test_exception_classes_module_and_hierarchy(rootfs):
    assert pycontain.SpawnError.__module__ == "pycontain"
    assert pycontain.TimeoutExpired.__module__ == "pycontain"
    assert issubclass(pycontain.SpawnError, OSError)
    assert issubclass(pycontain.TimeoutExpired, subprocess.TimeoutExpired)
    errors = []
    for kwargs in (
        {"args": ["/bin/nosuch"]},
        {"args": ["/bin"]},
        {"args": ["/bin/true"], "cwd": "/bin/busybox"},
    ):
        try:
            spawn(layers=[rootfs], env=BB_ENV, **kwargs)
        except pycontain.SpawnError as error:
            errors.append(error)
    assert [type(e).__module__ for e in errors] == ["pycontain"] * 3
    # One class per errno, reused.
    try:
        spawn(["/bin/nosuch2"], layers=[rootfs], env=BB_ENV)
    except FileNotFoundError as error:
        assert type(error) is type(errors[0])


def test_spawn_error_catchable_as_oserror_with_errno(rootfs):
    with pytest.raises(OSError) as info:
        spawn(["/bin/nosuch"], layers=[rootfs], env=BB_ENV)
    assert info.value.errno == errno.ENOENT
    assert info.value.args[0] == errno.ENOENT


def test_plain_spawn_error_pickles(rootfs, tmp_path):
    # ENOEXEC has no builtin OSError subclass: the error is a plain SpawnError.
    layer = tmp_path / "layer"
    make_layer(layer, {"garbage": b"\x01\x02"}, executable=True)
    with pytest.raises(pycontain.SpawnError) as info:
        spawn(["/garbage"], layers=[layer, rootfs], env=BB_ENV)
    assert type(info.value) is pycontain.SpawnError
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is pycontain.SpawnError
    assert (copy.step, copy.errno, copy.filename) == ("exec", errno.ENOEXEC, "/garbage")


def test_spawn_error_subclass_pickles(rootfs):
    with pytest.raises(FileNotFoundError) as info:
        spawn(["/bin/nosuch"], layers=[rootfs], env=BB_ENV)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value)
    assert isinstance(copy, FileNotFoundError)
    assert (copy.step, copy.errno, copy.filename) == ("exec", errno.ENOENT, "/bin/nosuch")
    assert str(copy) == str(info.value)


def test_failed_init_does_not_warn_at_garbage_collection(rootfs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kwargs in ({"args": ["/bin/nosuch"]}, {"args": [], "env": BB_ENV}):
            with pytest.raises((OSError, ValueError)):
                spawn(layers=[rootfs], **{"env": BB_ENV, **kwargs})
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_missing_non_utf8_executable_is_named_with_surrogateescape(rootfs, tmp_path):
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn([b"/caf\xe9/nosuch"], layers=[rootfs], env=BB_ENV)
    assert info.value.step == "exec"
    assert info.value.filename == "/caf\udce9/nosuch"
    assert os.fsencode(info.value.filename) == b"/caf\xe9/nosuch"


@pytest.mark.parametrize("what", ["exec", "chdir"])
def test_long_missing_path_in_error(rootfs, tmp_path, what):
    # 20 components of 200 characters: longer than the C core's error record
    # holds, but pycontain names the whole path it was given.
    path = "/" + "/".join(["d" * 200] * 20)
    kwargs = {"args": [path]} if what == "exec" else {"args": ["/bin/true"], "cwd": path}
    with nothing_left_behind(tmp_path), pytest.raises(FileNotFoundError) as info:
        spawn(layers=[rootfs], env=BB_ENV, **kwargs)
    assert info.value.step == what
    assert info.value.filename == path
