"""network="none" (a namespace of its own, lo up) and network="host"."""

from __future__ import annotations

import os
import socket

import pytest
from helpers import BB_ENV, TIMEOUT, wait_until

import pycontain
from pycontain import PIPE

PYTHON = "/usr/bin/python3"

# Serves and connects over 127.0.0.1 and ::1 inside, prints what came through.
LOOPBACK_ROUND_TRIP = """
import socket
for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.socket(family) as server:
        server.bind((address, 8080))
        server.listen()
        with socket.create_connection((address, 8080), timeout=5) as client:
            connection, _ = server.accept()
            client.sendall(b"ping")
            print(address, connection.recv(4).decode())
            connection.close()
"""


def run_python(code: str, **kwargs) -> str:
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"{PYTHON} is missing")
    with pycontain.Process(
        [PYTHON, "-c", code],
        layers=["/"],
        env={"PATH": "/usr/bin:/bin"},
        stdout=PIPE,
        stderr=PIPE,
        text=True,
        **kwargs,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    return out


@pytest.fixture
def pool():
    pycontain.set_netns_pool(2)
    assert wait_until(lambda: pycontain.netns_pool_status().ready == 2)
    yield
    pycontain.set_netns_pool(0)


def _callback() -> None:
    pass


@pytest.mark.parametrize(
    "how",
    [
        pytest.param({}, id="made-by-clone"),
        pytest.param({"pre_exec": _callback}, id="fork-path"),
        pytest.param("pool", id="from-the-pool"),
    ],
)
def test_loopback_works_inside(host_root, request, how):
    kwargs = {}
    if how == "pool":
        request.getfixturevalue("pool")
        used = pycontain.netns_pool_status().used
    else:
        kwargs = how
    out = run_python(LOOPBACK_ROUND_TRIP, **kwargs)
    assert out.splitlines() == ["127.0.0.1 ping", "::1 ping"]
    if how == "pool":
        assert pycontain.netns_pool_status().used == used + 1


def test_default_network_is_a_namespace_of_its_own(rootfs):
    with pycontain.Process(
        ["/bin/sh", "-c", "readlink /proc/self/ns/net; ls /sys/class/net"],
        layers=[rootfs],
        env=BB_ENV,
        stdout=PIPE,
        text=True,
    ) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    namespace, *interfaces = out.split()
    assert namespace != os.readlink("/proc/self/ns/net")
    assert interfaces == ["lo"]


@pytest.mark.parametrize("netns_pool", [True, False])
def test_host_network_is_the_hosts(rootfs, netns_pool):
    with pycontain.Process(
        ["/bin/sh", "-c", "readlink /proc/self/ns/net; ls /sys/class/net"],
        layers=[rootfs],
        env=BB_ENV,
        network="host",
        netns_pool=netns_pool,
        stdout=PIPE,
        text=True,
    ) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    namespace, *interfaces = out.split()
    assert namespace == os.readlink("/proc/self/ns/net")
    assert sorted(interfaces) == sorted(os.listdir("/sys/class/net"))


def test_host_network_reaches_a_host_loopback_listener(host_root):
    # What network="host" gives up: the container talks to the host's services.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = run_python(
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
            ".sendall(b'hello'); print('sent')",
            network="host",
        )
        connection, _ = listener.accept()
        with connection:
            assert connection.recv(5) == b"hello"
    assert out.strip() == "sent"
