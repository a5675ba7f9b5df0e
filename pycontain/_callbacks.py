"""pre_pivot / pre_exec callbacks: the Python side of the C trampoline.

A callback runs in the container's process between clone and exec, in a
forked copy of this process (see docs/callbacks.md for the design and the
rules). This module checks the callbacks, warns where a risk remains, and
formats a callback's exception in the child for the parent.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from . import _core

# What of a child's traceback reaches the parent: the pipe carries one
# fixed-size record, so the middle of a very long traceback is cut.
_DETAIL_LIMIT = 3900

Callback = Callable[[], object]


def require_callable(name: str, callback: Callback | None) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"{name} must be callable, not {type(callback).__name__}")


def check(
    pre_pivot: Callback | None, pre_exec: Callback | None, main: Callback | None = None
) -> None:
    """Refuse non-callables; warn if another thread could hold a lock."""
    require_callable("pre_pivot", pre_pivot)
    require_callable("pre_exec", pre_exec)
    require_callable("fn", main)
    if (pre_pivot, pre_exec, main) != (None, None, None) and _thread_count() > 1:
        warnings.warn(
            "pycontain: this process is multi-threaded; pre_pivot/pre_exec callbacks and "
            "pycontain.call's function run in "
            "a forked copy of it, where a lock another thread held at the fork (other than "
            "the ones the C library and CPython reset at fork) stays held, so a callback "
            "that takes such a lock may deadlock. Prefer the declarative keywords "
            "(hostname=, rlimits=, uid=, ...), which run no Python.",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """The warnings stacklevel, seen from check(), of the first caller outside
    pycontain: Process() and run() reach check() through different depths."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(2)  # check()'s caller
    level = 2
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == package:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _thread_count() -> int:
    # Threads the OS knows of, not only Python's: a C library's thread
    # holds locks too. The namespace worker thread takes no lock
    # (csrc/nsworker.c), so it does not count.
    pool_thread = 1 if _core.netns_pool()[0] > 0 else 0
    try:
        return len(os.listdir("/proc/self/task")) - pool_thread
    except OSError:
        import threading

        return threading.active_count()


def format_exception(exc: BaseException | None) -> tuple[int, bytes]:
    """Runs in the child: (errno or 0, a report for callback_error).

    The report is three parts separated by newlines: the exception's
    qualified type name, its message on one line (shortened), and the
    formatted traceback, cut in the middle to fit the error record.
    """
    if exc is None:
        return 0, b"None\nthe callback failed without an exception\n"
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        summary = " ".join(str(exc).split())
    except Exception:
        summary = f"<unprintable {name} object>"
    if len(summary) > 300:
        summary = summary[:300] + "..."
    head = f"{name}\n{summary}\n".encode("utf-8", "backslashreplace")
    text = "".join(traceback.format_exception(exc)).encode("utf-8", "backslashreplace")
    room = _DETAIL_LIMIT - len(head)
    if len(text) > room:
        # Keep the start ("Traceback ...") and the end (where it was
        # raised, and the exception itself).
        marker = b"\n  [... traceback cut ...]\n"
        keep_head = room // 4
        text = text[:keep_head] + marker + text[-(room - keep_head - len(marker)) :]
    number = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else 0
    return number, head + text


def spawn_arguments(
    pre_pivot: Callback | None, pre_exec: Callback | None, main: Callback | None = None
) -> dict[str, Any]:
    if pre_pivot is None and pre_exec is None and main is None:
        return {}
    return {
        "pre_pivot": pre_pivot,
        "pre_exec": pre_exec,
        "main": main,
        "format_exception": format_exception,
    }
