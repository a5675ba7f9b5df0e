"""The network namespace pool: fresh namespaces made ahead, each used once."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
from helpers import BB_ENV, TIMEOUT, fd_count, wait_until

import pycontain
from pycontain import PIPE

pytestmark = pytest.mark.needs_root(
    "the network namespace pool: a namespace made ahead of time needs CAP_SYS_ADMIN, and "
    "rootless mode bypasses the pool (its sysfs needs a network namespace it owns)"
)


@pytest.fixture
def pool():
    """The pool on (size 2) for one test, and off again afterwards."""
    pycontain.set_netns_pool(2)
    assert wait_until(lambda: pycontain.netns_pool_status().ready == 2)
    yield
    pycontain.set_netns_pool(0)


def net_view(rootfs, **kwargs) -> tuple[str, list[str]]:
    """(the container's network namespace, its interfaces)."""
    script = "readlink /proc/self/ns/net; ls /sys/class/net"
    with pycontain.Process(
        ["/bin/sh", "-c", script], layers=[rootfs], env=BB_ENV, stdout=PIPE, text=True, **kwargs
    ) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0
    namespace, *interfaces = out.split()
    return namespace, interfaces


def test_by_default_the_first_spawn_starts_a_pool_of_two(rootfs):
    # In a fresh interpreter: importing starts nothing, the first spawn
    # starts the pool; PYCONTAIN_NETNS_POOL sets its size (0: off).
    code = (
        "import os, time, pycontain\n"
        "print(tuple(pycontain.netns_pool_status())[:2], len(os.listdir('/proc/self/task')))\n"
        f"p = pycontain.Process(['/bin/true'], layers=[{str(rootfs)!r}], env={{'PATH': '/bin'}})\n"
        "p.wait()\n"
        "deadline = time.monotonic() + 10\n"
        "while pycontain.netns_pool_status().ready < pycontain.netns_pool_status().size:\n"
        "    assert time.monotonic() < deadline\n"
        "    time.sleep(0.01)\n"
        "print(tuple(pycontain.netns_pool_status())[:2], len(os.listdir('/proc/self/task')))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "PYCONTAIN_NETNS_POOL"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["(0, 0) 1", "(2, 2) 2"]
    environ["PYCONTAIN_NETNS_POOL"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["(0, 0) 1", "(0, 0) 1"]


def test_spawns_take_a_fresh_namespace_from_the_pool_each_once(rootfs, pool):
    host = os.readlink("/proc/self/ns/net")
    used = pycontain.netns_pool_status().used
    seen = set()
    for _ in range(6):
        namespace, interfaces = net_view(rootfs)
        # The same isolation as without the pool: a new namespace, only lo.
        assert interfaces == ["lo"]
        assert namespace != host
        seen.add(namespace)
    assert len(seen) == 6  # never handed out twice
    # Every spawn took one (the pool refills between them, or the spawn
    # made its own when it was empty: either way at most 6 were used).
    assert 1 <= pycontain.netns_pool_status().used - used <= 6
    assert wait_until(lambda: pycontain.netns_pool_status().ready == 2)


def test_netns_pool_false_bypasses_the_pool(rootfs, pool):
    used = pycontain.netns_pool_status().used
    _, interfaces = net_view(rootfs, netns_pool=False)
    assert interfaces == ["lo"]
    assert pycontain.netns_pool_status().used == used


def test_callbacks_make_their_own_namespace(rootfs, pool):
    used = pycontain.netns_pool_status().used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, interfaces = net_view(rootfs, pre_exec=lambda: None)
    assert interfaces == ["lo"]
    assert pycontain.netns_pool_status().used == used


def test_the_worker_thread_is_no_reason_for_the_callback_warning(rootfs, pool):
    # The worker takes no lock, so a callback spawn from a process whose only
    # other thread is the worker is not warned about.
    if len(os.listdir("/proc/self/task")) != 2:
        pytest.skip("this test process has threads of its own (pytest-xdist's?)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, interfaces = net_view(rootfs, pre_exec=lambda: None)
    assert interfaces == ["lo"]


def test_turning_the_pool_off_releases_its_namespaces(rootfs):
    # The worker's eventfd is made once and kept for the process's life
    # (another thread may be about to write to it): make it first.
    pycontain.set_netns_pool(1)
    pycontain.set_netns_pool(0)
    before = fd_count()
    pycontain.set_netns_pool(3)
    assert wait_until(lambda: pycontain.netns_pool_status().ready == 3)
    assert fd_count() == before + 3  # three namespaces
    pycontain.set_netns_pool(0)
    assert pycontain.netns_pool_status()[:2] == (0, 0)
    assert fd_count() == before
    # Spawning still works, making the namespace at spawn.
    assert net_view(rootfs)[1] == ["lo"]


def test_resizing(rootfs):
    try:
        pycontain.set_netns_pool(1)
        assert wait_until(lambda: pycontain.netns_pool_status().ready == 1)
        pycontain.set_netns_pool(4)
        assert wait_until(lambda: pycontain.netns_pool_status().ready == 4)
        assert pycontain.netns_pool_status().size == 4
    finally:
        pycontain.set_netns_pool(0)


def test_a_forked_child_starts_with_the_pool_off(pool):
    # The namespaces in the pool are the parent's to hand out: a child of
    # os.fork() must not hand out the same ones (it starts its own pool at
    # its first spawn).
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, repr(tuple(pycontain.netns_pool_status())).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        status = f.read()
    os.waitpid(pid, 0)
    assert status.startswith("(0, 0,")
    assert pycontain.netns_pool_status().size == 2


@pytest.mark.parametrize("size, error", [(-1, ValueError), (17, ValueError), ("2", TypeError)])
def test_bad_sizes(size, error):
    with pytest.raises(error):
        pycontain.set_netns_pool(size)
    assert pycontain.netns_pool_status().size == 0


def test_bad_size_in_the_environment():
    environ = {**os.environ, "PYCONTAIN_NETNS_POOL": "lots"}
    result = subprocess.run(
        [sys.executable, "-c", "import pycontain"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert "PYCONTAIN_NETNS_POOL" in result.stderr


def test_pool_in_a_program_that_exits_without_turning_it_off(rootfs):
    # The pool's thread must not keep the interpreter from exiting.
    code = (
        "import pycontain, sys; pycontain.set_netns_pool(2); "
        f"p = pycontain.Process(['/bin/true'], layers=[{str(rootfs)!r}], env={{'PATH': '/bin'}}); "
        "sys.exit(p.wait())"
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT)
    assert result.returncode == 0


def test_the_worker_releases_mount_namespaces_after_wait(rootfs, pool):
    # With the worker on, wait() leaves unmounting the container to it: the
    # reference it held is closed soon after, so nothing accumulates.
    def settled() -> bool:
        status = pycontain.netns_pool_status()
        return status.ready == status.size and fd_count() == baseline

    baseline = fd_count()
    for _ in range(20):
        with pycontain.Process(["/bin/true"], layers=[rootfs], env=BB_ENV) as p:
            assert p.wait(timeout=TIMEOUT) == 0
    assert wait_until(settled, timeout=10)


def test_a_writedir_is_unmounted_before_wait_returns(rootfs, pool, tmp_path):
    # A writedir's overlay is torn down in wait() itself, worker or not: its
    # work directory is removed and the writedir is free right away.
    upper = tmp_path / "upper"
    upper.mkdir()
    for round in range(3):
        with pycontain.Process(
            ["/bin/sh", "-c", f"echo {round} > /f"], layers=[rootfs], writedir=upper, env=BB_ENV
        ) as p:
            assert p.wait(timeout=TIMEOUT) == 0
        assert sorted(os.listdir(tmp_path)) == ["upper"]
        assert (upper / "f").read_text() == f"{round}\n"
