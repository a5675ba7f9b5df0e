"""Fixtures for pycontain's tests: a busybox root filesystem and the host's "/".

Every test here runs real containers on the real kernel: it needs root
(namespaces, mounts) or, as any other user, user namespaces (pycontain's
rootless mode; ``./run.sh test-rootless`` runs the suite so), overlayfs, and
a static busybox for the small rootfs. Without them the tests that need them
are skipped with the reason. A test that needs root itself (not only what
rootless mode gives) is marked ``@pytest.mark.needs_root("why")`` and skipped,
with that reason, as any other user.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

BUSYBOX = "/bin/busybox"

# pytest's own fixture for testing plugins (tests/test_pytest_plugin.py).
pytest_plugins = ["pytester"]


def _user_namespaces_skip_reason() -> str | None:
    """Why this (unprivileged) user cannot make a user namespace, or None."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return "user namespaces are off (user.max_user_namespaces = 0)"
    except (OSError, ValueError):
        return "the kernel has no user namespaces (no /proc/sys/user/max_user_namespaces)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux's unshare is missing, to check for user namespaces"
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"this user cannot make a user namespace: {probe.stderr.strip()}"
    return None


def _container_skip_reason() -> str | None:
    if os.geteuid() != 0:
        reason = _user_namespaces_skip_reason()
        if reason is not None:
            return f"pycontain as a user other than root needs user namespaces: {reason}"
    try:
        with open("/proc/filesystems") as f:
            filesystems = f.read().split()
    except OSError:
        return "cannot read /proc/filesystems"
    if "overlay" not in filesystems:
        return "overlayfs is not available (no 'overlay' in /proc/filesystems; modprobe overlay?)"
    return None


def _require_containers() -> None:
    reason = _container_skip_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A minimal root filesystem: /bin/busybox and a symlink per applet, nothing else.

    Note it has no /proc, /sys, /dev, /tmp: pycontain must create the mount
    points itself. Shared by the whole session: tests must never write to it
    (pycontain only ever mounts it read-only as a lower layer).
    """
    _require_containers()
    if not (os.path.isfile(BUSYBOX) and os.access(BUSYBOX, os.X_OK)):
        pytest.skip(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    if "sh" not in applets:
        pytest.skip(f"{BUSYBOX} has no 'sh' applet")
    root = tmp_path_factory.mktemp("rootfs")
    os.chmod(root, 0o755)
    bindir = root / "bin"
    bindir.mkdir(mode=0o755)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", bindir / applet)
    return str(root)


@pytest.fixture(scope="session")
def host_root() -> str:
    """The host's "/" as a (read-only) layer: runs the host's own binaries."""
    _require_containers()
    from pycontain import _userns

    if not _userns.caller_has_sys_admin():
        pytest.skip(
            "the host's / as a layer needs root: it has mounts below it (/proc, /dev, ...), "
            "which a user namespace keeps locked to it, so rootless mode refuses it as a layer"
        )
    return "/"


@pytest.fixture(params=[False, True], ids=["clone3", "legacy-clone"])
def legacy(request: pytest.FixtureRequest) -> bool:
    """Run a test with both the clone3 path and the clone(2) fallback."""
    return request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_root(reason): needs root on the host, beyond what rootless mode gives; "
        "skipped with the reason as any other user",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("needs_root")
    if marker is None:
        return
    if not marker.args or not isinstance(marker.args[0], str) or not marker.args[0]:
        raise pytest.UsageError(f"{item.nodeid}: needs_root takes the reason as a string")
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {marker.args[0]}")


@pytest.fixture
def no_leaks():
    """Checks that a test leaves no fd and no child process behind."""
    from helpers import child_pids, fd_count

    fds, children = fd_count(), child_pids()
    yield
    assert fd_count() == fds
    assert child_pids() <= children


@pytest.fixture(scope="session", autouse=True)
def _netns_pool_off() -> None:
    """The network namespace pool off, except in tests/test_netns_pool.py.

    Its thread refills the pool right after each spawn, so the number of fds
    this process has open (one per ready namespace) moves under the tests
    that count fds. Its own tests turn it on, and check the default.
    """
    import pycontain

    pycontain.set_netns_pool(0)


@pytest.fixture(scope="session", autouse=True)
def _lifecycle_fds() -> None:
    """The init's executable and this process's pidfd, opened once.

    pycontain opens both at the first spawn with the init and keeps them
    for the life of the process; opened here, they do not count as a leak
    of whichever test spawns first.
    """
    from pycontain import _lifecycle

    _lifecycle.init_executable()
    _lifecycle.owner_pidfd()
