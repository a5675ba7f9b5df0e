"""The namespace worker's settings: the network namespace pool (csrc/nsworker.c)."""

from __future__ import annotations

import errno as errno_module
import os
import threading
from typing import NamedTuple

from . import _core

__all__ = ["NetnsPoolStatus", "netns_pool_status", "set_netns_pool"]

MAX_POOL_SIZE = 16
DEFAULT_POOL_SIZE = 2


def _size_from_environment() -> int:
    value = os.environ.get("PYCONTAIN_NETNS_POOL", "")
    try:
        size = int(value) if value else DEFAULT_POOL_SIZE
    except ValueError:
        size = -1
    if not 0 <= size <= MAX_POOL_SIZE:
        raise ValueError(
            f"PYCONTAIN_NETNS_POOL must be a number from 0 to {MAX_POOL_SIZE}, not {value!r}"
        )
    return size


# The size wanted, and the pid of the process in which the pool's thread
# runs (None: not started). The thread starts with the first spawn, not at
# import, and again in a child of os.fork(), which starts without it.
_wanted = _size_from_environment()
_running_in: int | None = None
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _running_in, _lock
    _running_in = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def ensure_pool() -> None:
    """Start the pool's thread if it is wanted and not running in this process."""
    global _running_in
    if _wanted and _running_in != os.getpid():
        with _lock:
            if _wanted and _running_in != os.getpid():
                _core.netns_pool(_wanted)
                _running_in = os.getpid()


def set_netns_pool(size: int) -> None:
    """Keep ``size`` fresh, empty network namespaces ready (0: off).

    The default is 2 (or ``PYCONTAIN_NETNS_POOL`` from the environment),
    started by the first spawn.

    Making a network namespace is the costliest part of a spawn (see
    docs/spawn.md). With a pool, a background thread (C, no Python) makes
    them ahead of time, a spawn takes one and its container joins it with
    ``setns``, and each is used exactly once: the container's network is
    the same as without the pool, a new namespace holding only ``lo``. When
    the pool is empty, a spawn makes its namespace itself, as usual.

    The same thread (the namespace worker) also unmounts each finished
    container after ``wait()`` has returned, rather than before (except
    containers with a ``writedir``, which are unmounted in ``wait()``). It
    makes namespaces at idle priority, takes no lock (a ``fork()`` at any
    moment is safe), and runs no Python. Costs: the thread, ``size`` idle
    namespaces and their fds while it is on. 0 stops it: then spawns make
    their network namespace and containers are unmounted in their exit. A
    child made with ``os.fork()`` starts its own worker at its first spawn.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if not 0 <= size <= MAX_POOL_SIZE:
        raise ValueError(f"size must be from 0 to {MAX_POOL_SIZE}, not {size}")
    global _wanted, _running_in
    with _lock:
        _wanted = size
        _core.netns_pool(size)
        _running_in = os.getpid() if size else None


class NetnsPoolStatus(NamedTuple):
    size: int  # configured; 0 when off
    ready: int  # namespaces made and waiting
    used: int  # namespaces handed to containers since this process started


def netns_pool_status() -> NetnsPoolStatus:
    """The pool's size, how many namespaces are ready and how many were used.

    Raises OSError if the pool's thread stopped because it could not make a
    namespace (spawns then make their own, as with the pool off)."""
    size, ready, stopped, used = _core.netns_pool()
    if stopped:
        raise OSError(
            stopped,
            f"pycontain: the network namespace pool stopped: {errno_module.errorcode.get(stopped)}",
        )
    return NetnsPoolStatus(size, ready, used)
