"""The network namespace pool: fresh namespaces made ahead of time."""

from __future__ import annotations

import errno as errno_module
from typing import NamedTuple

from . import _core

__all__ = ["NetnsPoolStatus", "netns_pool_status", "set_netns_pool"]

MAX_POOL_SIZE = 16


def set_netns_pool(size: int) -> None:
    """Keep ``size`` fresh, empty network namespaces ready (0, the default: off).

    Making a network namespace is the costliest part of a spawn (see
    docs/spawn.md). With a pool, a background thread (C, no Python) makes
    them ahead of time, a spawn takes one and its container joins it with
    ``setns``, and each is used exactly once: the container's network is
    the same as without the pool, a new namespace holding only ``lo``. When
    the pool is empty, a spawn makes its namespace itself, as usual.

    Costs: the thread and ``size`` idle namespaces while the pool is on. A
    child made with ``os.fork()`` starts with the pool off. Call from one
    thread at a time.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if not 0 <= size <= MAX_POOL_SIZE:
        raise ValueError(f"size must be from 0 to {MAX_POOL_SIZE}, not {size}")
    _core.netns_pool(size)


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
