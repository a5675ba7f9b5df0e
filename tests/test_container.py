"""pycontain.Container: the container as a value, and programs run in it."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import multiprocessing
import os
import pickle
import subprocess
from pathlib import Path

import pytest
from helpers import BB_ENV, NEEDS_OTHER_IDS, TIMEOUT

import pycontain
from pycontain import Container

# -- value semantics ----------------------------------------------------------------------


def test_fields_are_read_only(rootfs):
    box = Container(layers=[rootfs], hostname="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        box.hostname = "b"  # type: ignore[misc]
    assert box.hostname == "a"


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_mutable_inputs_are_copied(rootfs):
    layers, rlimits, groups = [rootfs], {"nofile": (64, 64)}, [1, 2]
    box = Container(layers=layers, rlimits=rlimits, groups=groups)
    layers.append("/elsewhere")
    rlimits["core"] = 0
    groups.append(3)
    assert box.layers == (rootfs,)
    assert dict(box.rlimits) == {"nofile": (64, 64)}
    assert box.groups == (1, 2)
    with pytest.raises(TypeError):
        box.rlimits["core"] = 0  # type: ignore[index]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_replace_returns_a_new_container(rootfs):
    box = Container(layers=[rootfs], hostname="a")
    other = box.replace(hostname="b", uid=5)
    assert (box.hostname, box.uid) == ("a", None)
    assert (other.hostname, other.uid, other.layers) == ("b", 5, (rootfs,))
    assert box.replace() == box


def test_replace_checks_like_the_constructor(rootfs, tmp_path):
    box = Container(layers=[rootfs])
    with pytest.raises(ValueError, match="hostname"):
        box.replace(hostname="x" * 65)
    with pytest.raises(FileNotFoundError):
        box.replace(layers=[tmp_path / "missing"])
    with pytest.raises(TypeError):
        box.replace(no_such_setting=1)  # type: ignore[call-arg]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_equality_and_hash(rootfs):
    a = Container(layers=[rootfs], rlimits={"nofile": 10}, groups=[1])
    b = Container(layers=(Path(rootfs),), rlimits={"nofile": 10}, groups=(1,))
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != a.replace(hostname="x")
    assert a != Container(layers=[rootfs])


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_repr_shows_what_differs_from_the_defaults(rootfs):
    box = Container(layers=[rootfs], hostname="sandbox", uid=1000)
    assert repr(box) == f"Container(layers=[{rootfs!r}], hostname='sandbox', uid=1000)"
    assert eval(repr(box), {"Container": Container}) == box


def test_settings_round_trip(rootfs):
    box = Container(layers=[rootfs], umask=0o22, netns_pool=False)
    assert box.settings() == {"layers": (rootfs,), "umask": 0o22, "netns_pool": False}
    assert Container(**box.settings()) == box


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_pickle_round_trip(rootfs, tmp_path):
    (tmp_path / "w").mkdir()
    box = Container(
        layers=[rootfs], writedir=tmp_path / "w", hostname="h", rlimits={"core": 0}, groups=[]
    )
    copy = pickle.loads(pickle.dumps(box))
    assert copy == box
    assert copy.run(["/bin/hostname"], env=BB_ENV, capture_output=True).stdout == b"h\n"


def _run_in_child(box: Container) -> bytes:
    return box.run(["/bin/sh", "-c", "hostname"], env=BB_ENV, capture_output=True).stdout


def test_a_multiprocessing_child_receives_one(rootfs):
    # The forkserver/spawn start methods pickle the Container to the child.
    context = multiprocessing.get_context("forkserver")
    with context.Pool(1) as pool:
        result = pool.apply(_run_in_child, (Container(layers=[rootfs], hostname="mp"),))
    assert result == b"mp\n"


def test_unpickling_checks_again(rootfs, tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    data = pickle.dumps(Container(layers=[rootfs, layer]))
    layer.rmdir()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


def test_a_lambda_callback_does_not_pickle(rootfs):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(Container(layers=[rootfs], pre_pivot=lambda: None))


# -- checked when made ------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, error, match",
    [
        ({"layers": "/"}, TypeError, "single path"),
        ({"layers": []}, ValueError, "at least one"),
        ({"hostname": ""}, ValueError, "hostname"),
        ({"rlimits": {"nosuch": 1}}, ValueError, "unknown rlimit"),
        ({"rlimits": [("nofile", 1)]}, TypeError, "mapping"),
        ({"groups": b"abc"}, TypeError, "groups"),
        ({"groups": 5}, TypeError, "groups"),
        ({"uid": "root"}, TypeError, "uid"),
        ({"umask": 0o1000}, ValueError, "umask"),
        ({"pre_pivot": "print"}, TypeError, "pre_pivot"),
        ({"workdir": "/tmp"}, ValueError, "workdir"),
    ],
)
def test_bad_settings_raise_when_made(rootfs, settings, error, match):
    settings.setdefault("layers", [rootfs])
    with pytest.raises(error, match=match):
        Container(**settings)


def test_missing_layer_raises_when_made(rootfs, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as info:
        Container(layers=[rootfs, missing])
    assert info.value.filename == str(missing)


def test_overlapping_writedir_raises_when_made(rootfs, tmp_path):
    (tmp_path / "w" / "layer").mkdir(parents=True)
    with pytest.raises(ValueError, match="overlaps"):
        Container(layers=[tmp_path / "w" / "layer", rootfs], writedir=tmp_path / "w")


def test_a_layer_removed_after_it_was_made_fails_the_spawn(rootfs, tmp_path, no_leaks):
    layer = tmp_path / "layer"
    layer.mkdir()
    box = Container(layers=[layer, rootfs])
    layer.rmdir()
    with pytest.raises(FileNotFoundError) as info:
        box.spawn(["/bin/true"], env=BB_ENV)
    assert info.value.filename == str(layer)


def test_making_one_starts_nothing(rootfs, no_leaks):
    Container(layers=[rootfs], hostname="x")


# -- programs run in it -------------------------------------------------------------------


def test_each_program_gets_a_fresh_container(rootfs, no_leaks):
    box = Container(layers=[rootfs])
    first = box.run(["/bin/sh", "-c", "echo 1 > /mark; cat /mark"], env=BB_ENV, capture_output=True)
    second = box.run(["/bin/sh", "-c", "cat /mark"], env=BB_ENV, capture_output=True)
    assert (first.returncode, first.stdout) == (0, b"1\n")
    assert second.returncode != 0


def test_a_writedir_container_keeps_writes_across_runs(rootfs, tmp_path, no_leaks):
    (tmp_path / "w").mkdir()
    box = Container(layers=[rootfs], writedir=tmp_path / "w")
    box.run(["/bin/sh", "-c", "echo kept > /mark"], env=BB_ENV, check=True)
    assert box.run(["/bin/cat", "/mark"], env=BB_ENV, capture_output=True).stdout == b"kept\n"
    assert (tmp_path / "w" / "mark").read_bytes() == b"kept\n"


def test_spawn_gives_a_process(rootfs, no_leaks):
    box = Container(layers=[rootfs], hostname="spawned")
    with box.spawn(["/bin/hostname"], env=BB_ENV, stdout=pycontain.PIPE) as process:
        assert isinstance(process, pycontain.Process)
        assert process.container is box
        assert process.communicate(timeout=TIMEOUT) == (b"spawned\n", None)
        assert process.returncode == 0


def test_run_is_subprocess_run(rootfs, no_leaks):
    box = Container(layers=[rootfs])
    done = box.run(
        ["/bin/sh", "-c", "cat; exit 3"], env=BB_ENV, input="hi", capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "hi", "")
    with pytest.raises(subprocess.CalledProcessError):
        box.run(["/bin/false"], env=BB_ENV, check=True)
    with pytest.raises(pycontain.TimeoutExpired):
        box.run(["/bin/sleep", "10"], env=BB_ENV, timeout=0.2)


def test_create_subprocess_exec(rootfs):
    box = Container(layers=[rootfs], hostname="async")

    async def main() -> tuple[bytes | None, int]:
        process = await box.create_subprocess_exec(
            "/bin/hostname", env=BB_ENV, stdout=pycontain.PIPE
        )
        out, _ = await process.communicate()
        return out, await process.wait()

    assert asyncio.run(main()) == (b"async\n", 0)


def test_callbacks_pre_pivot_in_the_container_pre_exec_per_program(rootfs, tmp_path):
    box = Container(layers=[rootfs], pre_pivot=lambda: os.mkdir("made-before-pivot"))

    def pre_exec() -> None:
        os.mkdir("/made-before-exec")

    done = box.run(["/bin/ls", "/"], env=BB_ENV, pre_exec=pre_exec, capture_output=True)
    assert b"made-before-pivot" in done.stdout and b"made-before-exec" in done.stdout
    plain = box.run(["/bin/ls", "/"], env=BB_ENV, capture_output=True)
    assert b"made-before-pivot" in plain.stdout and b"made-before-exec" not in plain.stdout


# -- the shorthands are built on it ----------------------------------------------------


def _hostname_and_ids(layers, entry: str, **settings) -> bytes:
    script = ["/bin/sh", "-c", "hostname; id -u; id -g"]
    if entry == "Process":
        with pycontain.Process(script, layers=layers, stdout=pycontain.PIPE, **settings) as p:
            return p.communicate(timeout=TIMEOUT)[0]
    if entry == "run":
        return pycontain.run(script, layers=layers, capture_output=True, **settings).stdout

    async def main() -> bytes:
        p = await pycontain.create_subprocess_exec(
            *script, layers=layers, stdout=pycontain.PIPE, **settings
        )
        return (await p.communicate())[0]

    return asyncio.run(main())


@pytest.mark.parametrize("entry", ["Process", "run", "create_subprocess_exec", "Container"])
@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_every_entry_point_applies_the_container_settings(rootfs, entry):
    settings = {"hostname": "everywhere", "uid": 1234, "gid": 4321}
    if entry == "Container":
        box = Container(layers=[rootfs], **settings)
        out = box.run(["/bin/sh", "-c", "hostname; id -u; id -g"], env=BB_ENV, capture_output=True)
        output = out.stdout
    else:
        output = _hostname_and_ids([rootfs], entry, env=BB_ENV, **settings)
    assert output == b"everywhere\n1234\n4321\n"


def test_process_keeps_its_container(rootfs):
    with pycontain.Process(["/bin/true"], layers=[rootfs], env=BB_ENV, hostname="h") as p:
        assert p.container == Container(layers=[rootfs], hostname="h")


@pytest.mark.parametrize("entry", ["Process", "run", "create_subprocess_exec"])
def test_a_misspelled_keyword_names_the_entry_point(rootfs, entry):
    with pytest.raises(
        TypeError, match=rf"{entry}\(\) got an unexpected keyword argument 'hostnam'"
    ):
        _hostname_and_ids([rootfs], entry, hostnam="x")


@pytest.mark.parametrize(
    "function", [pycontain.Process, pycontain.run, pycontain.create_subprocess_exec]
)
def test_signatures_list_every_container_setting(function):
    parameters = inspect.signature(function).parameters
    for field in dataclasses.fields(Container):
        if field.init:
            assert parameters[field.name].default == (
                inspect.Parameter.empty if field.name == "layers" else field.default
            )
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def test_the_typed_keywords_match_the_fields():
    from pycontain import _container

    fields = {f.name for f in dataclasses.fields(Container) if f.init}
    assert set(_container.ContainerFields.__annotations__) == fields
    # Each program keyword is declared in exactly one TypedDict.
    parts = [
        _container.CommandSettings,
        _container.StreamSettings,
        _container.TextSettings,
        _container.SpawnTimeout,
        _container.ContainerSettings,
    ]
    names = [name for part in parts for name in part.__annotations__]
    assert len(names) == len(set(names))
