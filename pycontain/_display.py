"""How pycontain's results look in Jupyter and IPython (and in reports).

The rows behind ``_repr_html_`` (a small table) and ``_repr_pretty_``
(IPython's pretty printer) of :class:`pycontain.Process` and
:class:`pycontain.CompletedProcess`: command, state or exit status (a signal
by name), pid, duration, what it used (rusage; with ``limits=``, the
cgroup's CPU time, memory peak, OOM kill), layers and the container's other
settings.
"""

from __future__ import annotations

import html
import os
import shlex
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._container import Container
    from ._process import Process

__all__ = ["command_text", "completed_rows", "process_rows", "status_text"]


def status_text(returncode: int | None) -> str:
    if returncode is None:
        return "running"
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def command_text(args: Any) -> str:
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    return " ".join(shlex.quote(os.fsdecode(arg)) for arg in args)


def _container_rows(container: Container | None) -> list[tuple[str, str]]:
    if container is None:
        return []
    rows = [("layers", ", ".join(os.fsdecode(layer) for layer in container.layers))]
    for name, value in container.settings().items():
        if name != "layers":
            rows.append((name, os.fsdecode(value) if isinstance(value, bytes) else repr(value)))
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def _output(data: Any) -> str | None:
    if data is None:
        return None
    if isinstance(data, bytes):
        data = data.decode("utf-8", "backslashreplace")
    text = str(data)
    return text if len(text) <= 2000 else text[:1000] + "\n[...]\n" + text[-1000:]


def html_table(title: str, rows: list[tuple[str, str]], outputs: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
        f"<td style='text-align:left'><code>{html.escape(value)}</code></td></tr>"
        for name, value in rows
    )
    for name, data in outputs:
        text = _output(data)
        if text is not None:
            cells += (
                f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
                f"<td style='text-align:left'><pre>{html.escape(text)}</pre></td></tr>"
            )
    return f"<table><caption>{html.escape(title)}</caption>{cells}</table>"


def pretty(printer: Any, title: str, rows: list[tuple[str, str]]) -> None:
    with printer.group(2, f"{title}(", ")"):
        for index, (name, value) in enumerate(rows):
            if index:
                printer.text(",")
            printer.breakable()
            printer.text(f"{name}={value}")


def process_rows(process: Process) -> list[tuple[str, str]]:
    started = getattr(process, "_started", None)
    ended = getattr(process, "_ended", None)
    duration = None
    if started is not None:
        duration = (ended if ended is not None else time.monotonic()) - started
    return [
        ("command", command_text(process.args)),
        ("state", status_text(process.returncode)),
        ("pid", str(process.pid)),
        ("duration" if process.returncode is not None else "running for", _duration(duration)),
        *_accounting_rows(process),
        *_container_rows(getattr(process, "container", None)),
    ]


def completed_rows(done: Any) -> list[tuple[str, str]]:
    """The rows of a pycontain.CompletedProcess."""
    return [
        ("command", command_text(done.args)),
        ("status", status_text(done.returncode)),
        ("pid", str(done.pid)),
        ("duration", _duration(done.duration)),
        *_accounting_rows(done),
        *_container_rows(done.container),
    ]


def _accounting_rows(owner: Any) -> list[tuple[str, str]]:
    """What the container used, where it was measured (limits= gives a cgroup)."""
    rows = []
    usage = getattr(owner, "rusage", None)
    if usage is not None:
        rows.append(("user+system CPU", f"{usage.ru_utime + usage.ru_stime:.3f} s"))
        rows.append(("max RSS", f"{usage.ru_maxrss / 1024:.1f} MiB"))
    cpu_time = getattr(owner, "cpu_time", None)
    if cpu_time is not None:
        rows.append(("cgroup CPU time", f"{cpu_time:.3f} s"))
    peak = getattr(owner, "memory_peak", None)
    if peak is not None:
        rows.append(("cgroup memory peak", f"{peak / (1 << 20):.1f} MiB"))
    if getattr(owner, "oom_killed", None):
        rows.append(("OOM killed", "yes"))
    return rows
