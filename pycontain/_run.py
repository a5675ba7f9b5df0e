"""pycontain.run(): subprocess.run for a container."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any, Unpack

from . import _container, _display
from ._container import Container, RunProgramSettings, RunSettings
from ._errors import TimeoutExpired
from ._io import PIPE
from ._process import Process
from ._spawn import StrOrBytesPath


class CompletedProcess(subprocess.CompletedProcess[Any]):
    """``subprocess.CompletedProcess`` plus what the container used (see Process),
    the container's ``pid`` (in your PID namespace), the ``duration`` of the
    run in seconds and the ``container`` it ran in; shown as a table in Jupyter."""

    rusage: resource.struct_rusage | None = None
    memory_peak: int | None = None
    cpu_time: float | None = None
    oom_killed: bool | None = None
    pid: int | None = None
    duration: float | None = None
    container: Container | None = None

    def _repr_html_(self) -> str:
        return _display.html_table(
            "pycontain.CompletedProcess",
            _display.completed_rows(self),
            [("stdout", self.stdout), ("stderr", self.stderr)],
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        rows = _display.completed_rows(self)
        for name, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data is not None:
                rows.append((name, repr(data)))
        _display.pretty(printer, "CompletedProcess", rows)


def run(
    args: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    layers: Iterable[StrOrBytesPath],
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **settings: Unpack[RunSettings],
) -> CompletedProcess:
    """Run ``args`` in a container, wait for it, return a CompletedProcess.

    As ``subprocess.run``: ``input`` is sent to stdin, ``capture_output``
    pipes stdout and stderr, ``timeout`` kills the container and raises
    :class:`pycontain.TimeoutExpired`, ``check`` raises
    ``subprocess.CalledProcessError`` for a non-zero exit. Other keywords
    are those of :class:`pycontain.Process` (the container's and the
    program's); for many runs in one container, see :meth:`Container.run`.
    The result also carries ``rusage``, ``memory_peak``, ``cpu_time`` and
    ``oom_killed`` (see Process).
    """
    container, program = _container.split(
        "run", layers, settings, RunProgramSettings.__annotations__
    )
    return run_in(
        container,
        args,
        input=input,
        capture_output=capture_output,
        timeout=timeout,
        check=check,
        **program,
    )


def run_in(
    container: Container,
    args: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    input: Any,
    capture_output: bool,
    timeout: float | None,
    check: bool,
    **program: Unpack[RunProgramSettings],
) -> CompletedProcess:
    """run() and Container.run: the program's keywords go to Container.spawn."""
    if input is not None:
        if program.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        program["stdin"] = PIPE
    if capture_output:
        if program.get("stdout") is not None or program.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        program["stdout"] = program["stderr"] = PIPE
    started = time.monotonic()
    with Process._spawn(container, args, **program) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except TimeoutExpired as expired:
            # Kill the whole container, then collect what it wrote so far.
            process.kill()
            expired.output, expired.stderr = process.communicate()
            raise
        except BaseException:
            process.kill()
            raise
        returncode = process.wait()
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, process.args, stdout, stderr)
    completed = CompletedProcess(process.args, returncode, stdout, stderr)
    completed.rusage, completed.memory_peak = process.rusage, process.memory_peak
    completed.cpu_time, completed.oom_killed = process.cpu_time, process.oom_killed
    completed.pid, completed.container = process.pid, container
    completed.duration = time.monotonic() - started
    return completed


_container.keyword_signature(run, RunSettings, Container, Process._start)
