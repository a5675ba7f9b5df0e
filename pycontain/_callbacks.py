"""pre_pivot / pre_exec callbacks: the Python side of the C trampoline.

A callback runs in the container's process between clone and exec, in a
forked copy of this process (see docs/callbacks.md for the design and the
rules). This module checks the callbacks, warns where a risk remains, and
formats a callback's exception in the child for the parent.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable
from typing import Any

# What of a child's traceback reaches the parent: the pipe carries one
# fixed-size record, so the middle of a very long traceback is cut.
_DETAIL_LIMIT = 3900

Callback = Callable[[], object]


def check(pre_pivot: Callback | None, pre_exec: Callback | None) -> None:
    """Refuse non-callables; warn if another thread could hold a lock."""
    for name, callback in (("pre_pivot", pre_pivot), ("pre_exec", pre_exec)):
        if callback is not None and not callable(callback):
            raise TypeError(f"{name} must be callable, not {type(callback).__name__}")
    if (pre_pivot is not None or pre_exec is not None) and _thread_count() > 1:
        warnings.warn(
            "pycontain: this process is multi-threaded; pre_pivot/pre_exec callbacks run in "
            "a forked copy of it, where a lock another thread held at the fork (other than "
            "the ones the C library and CPython reset at fork) stays held, so a callback "
            "that takes such a lock may deadlock. Prefer the declarative keywords "
            "(hostname=, rlimits=, uid=, ...), which run no Python.",
            RuntimeWarning,
            stacklevel=4,
        )


def _thread_count() -> int:
    # Threads the OS knows of, not only Python's: a C library's thread
    # holds locks too.
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def format_exception(exc: BaseException | None) -> tuple[int, bytes]:
    """Runs in the child: (errno or 0, the formatted traceback, bounded)."""
    if exc is None:
        return 0, b"the callback failed without an exception"
    text = "".join(traceback.format_exception(exc))
    data = text.encode("utf-8", "backslashreplace")
    if len(data) > _DETAIL_LIMIT:
        # Keep the head ("Traceback ...") and the tail (where it was raised,
        # and the exception itself).
        head = data[: _DETAIL_LIMIT // 4]
        tail = data[-(_DETAIL_LIMIT * 3 // 4 - 40) :]
        data = head + b"\n  [... traceback cut ...]\n" + tail
    number = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else 0
    return number, data


def spawn_arguments(pre_pivot: Callback | None, pre_exec: Callback | None) -> dict[str, Any]:
    if pre_pivot is None and pre_exec is None:
        return {}
    return {"pre_pivot": pre_pivot, "pre_exec": pre_exec, "format_exception": format_exception}
