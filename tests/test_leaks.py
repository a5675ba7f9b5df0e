"""Nothing accumulates: after many spawns (successes, failed execs, killed
containers) the host's mount table, our fds, our children and the temporary
directories are exactly as before."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import pytest
from helpers import BB_ENV, TIMEOUT, child_pids, fd_count, is_gone, wait_until, workdir_siblings

import pycontain

ROUNDS = 200


def _mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def _could_be_ours(name: str) -> bool:
    """Whether an entry of the shared temp dir could have been left by pycontain.

    Other programs (builds, pip) may create and delete files in /tmp while the
    test runs, so there only names pycontain could leave are compared: its
    work directories, and the upper/work/root directories it makes in its
    scratch tmpfs (over /tmp), should that tmpfs ever not be private.
    """
    return "pycontain" in name or name in {"upper", "work", "root"}


@contextmanager
def unchanged_host(*dirs: os.PathLike | str):
    """Assert the block leaves the mount table, fds, children, the temp dir and
    ``dirs`` (private to the test: compared entirely) as they were."""
    tmp = tempfile.gettempdir()
    mounts, fds, children = _mountinfo(), fd_count(), child_pids()
    tmp_listing = set(os.listdir(tmp))
    listings = {d: sorted(os.listdir(d)) for d in dirs}
    yield
    gc.collect()
    assert _mountinfo() == mounts
    assert fd_count() == fds
    assert child_pids() == children
    new_in_tmp = {name for name in set(os.listdir(tmp)) - tmp_listing if _could_be_ours(name)}
    assert new_in_tmp == set(), f"left in {tmp}"
    for d, listing in listings.items():
        assert sorted(os.listdir(d)) == listing, f"entries of {d} changed"


def _one_round(i: int, layers, **kwargs) -> None:
    kind = i % 4
    if kind == 0:
        with pycontain.Process(["/bin/true"], layers=layers, env=BB_ENV, **kwargs) as p:
            assert p.wait(timeout=TIMEOUT) == 0
    elif kind == 1:
        with pytest.raises(FileNotFoundError):
            pycontain.Process(["/bin/no-such-program"], layers=layers, env=BB_ENV, **kwargs)
    elif kind == 2:
        with pycontain.Process(["/bin/sleep", "100"], layers=layers, env=BB_ENV, **kwargs) as p:
            pass  # __exit__ kills and reaps it
        assert p.returncode == -9
    else:
        with pytest.raises(FileNotFoundError):
            pycontain.Process(
                ["/bin/true"], layers=layers, cwd="/no/such/dir", env=BB_ENV, **kwargs
            )


def test_many_spawns_leave_nothing_behind(rootfs, tmp_path):
    with unchanged_host(tmp_path):
        for i in range(ROUNDS):
            _one_round(i, [rootfs], _force_legacy_clone=(i % 8 >= 4))


def test_mix_with_argument_errors_leaves_nothing_behind(rootfs, tmp_path):
    (tmp_path / "upper").mkdir()
    with unchanged_host(tmp_path, tmp_path / "upper"):
        for _i in range(ROUNDS // 4):
            with pytest.raises(FileNotFoundError):
                pycontain.Process(["/bin/true"], layers=[rootfs, tmp_path / "missing"])
            with pytest.raises(ValueError):
                pycontain.Process(["/bin/true"], layers=[rootfs], env={"A=B": "x"})
            with pytest.raises(ValueError):
                pycontain.Process(
                    ["/bin/true"], layers=[tmp_path / "upper"], writedir=tmp_path / "upper"
                )
            with pytest.raises(FileNotFoundError):
                pycontain.Process(
                    ["/bin/true"],
                    layers=[rootfs],
                    writedir=tmp_path / "upper",
                    workdir=tmp_path / "missing",
                )


def test_many_spawns_with_a_writedir_leave_nothing_behind(rootfs, tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    # Let the first run create the mount points in the writedir.
    with pycontain.Process(["/bin/true"], layers=[rootfs], writedir=upper, env=BB_ENV) as p:
        assert p.wait(timeout=TIMEOUT) == 0
    with unchanged_host(tmp_path, upper):
        for i in range(ROUNDS):
            _one_round(i, [rootfs], writedir=upper)
    assert workdir_siblings(upper) == []


def test_concurrent_spawns_from_several_threads(rootfs, tmp_path, capfd):
    errors = []

    def worker(n):
        try:
            for i in range(20):
                code = (n * 20 + i) % 256
                with pycontain.Process(
                    ["/bin/sh", "-c", f"exit {code}"],
                    layers=[rootfs],
                    env=BB_ENV,
                    _force_legacy_clone=bool(n % 2),
                ) as p:
                    assert p.wait(timeout=TIMEOUT) == code
                with pytest.raises(FileNotFoundError):
                    pycontain.Process(["/bin/nosuch"], layers=[rootfs], env=BB_ENV)
        except BaseException as error:
            errors.append(error)

    with unchanged_host(tmp_path):
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def test_container_mounts_never_appear_on_the_host(rootfs):
    mounts = _mountinfo()
    with pycontain.Process(["/bin/sleep", "100"], layers=[rootfs], env=BB_ENV) as p:
        # The container is up, with its overlay, /proc, /sys, /dev, tmpfs...
        with open(f"/proc/{p.pid}/mountinfo") as f:
            assert " - overlay " in f.read()
        # ...none of which the host sees.
        assert _mountinfo() == mounts
    assert _mountinfo() == mounts


ORPHAN_SCRIPT = """
import os, signal, sys
import pycontain
p = pycontain.Process(["/bin/sleep", "1000"], layers=[sys.argv[1]], writedir=sys.argv[2],
                      env={"PATH": "/bin", "PYCONTAIN_TEST_MARK": sys.argv[3]})
with open(sys.argv[4], "w") as f:
    f.write(str(p.pid))
os.kill(os.getpid(), signal.SIGKILL)
"""


def _is_marked(pid: int, mark: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"PYCONTAIN_TEST_MARK={mark}".encode() in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False  # gone, or its pid reused by a process that is not ours


def test_caller_killed_abruptly_leaves_no_mount(rootfs, tmp_path):
    # README: if the Python process dies abruptly, the work directory beside
    # writedir is the one thing that can remain; mounts cannot, since they
    # live only in the container's mount namespace.
    upper, pid_file = tmp_path / "upper", tmp_path / "pid"
    upper.mkdir()
    mark = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    mounts = _mountinfo()
    try:
        done = subprocess.run(
            [sys.executable, "-c", ORPHAN_SCRIPT, rootfs, str(upper), mark, str(pid_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # not a pipe: the orphaned container keeps it open
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        assert done.returncode == -signal.SIGKILL
        assert _mountinfo() == mounts
        leftovers = set(os.listdir(tmp_path)) - {"upper", "pid"}
        assert all(".upper.pycontain-work-" in name for name in leftovers), leftovers
    finally:
        # The container outlives its caller (as a Popen child would): end it,
        # making sure the pid is still that container's.
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        if pid is not None and _is_marked(pid, mark):
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: is_gone(pid))
    assert _mountinfo() == mounts
    assert set(os.listdir(upper)) <= {"proc", "sys", "dev"}
