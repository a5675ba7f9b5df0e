"""pycontain.run(): subprocess.run for a container."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

from ._errors import TimeoutExpired
from ._io import PIPE
from ._process import Process
from ._spawn import StrOrBytesPath


def run(
    args: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    layers: Iterable[StrOrBytesPath],
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """Run ``args`` in a container, wait for it, return a CompletedProcess.

    As ``subprocess.run``: ``input`` is sent to stdin, ``capture_output``
    pipes stdout and stderr, ``timeout`` kills the container and raises
    :class:`pycontain.TimeoutExpired`, ``check`` raises
    ``subprocess.CalledProcessError`` for a non-zero exit. Other keywords
    go to :class:`pycontain.Process`.
    """
    if input is not None:
        if kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        kwargs["stdin"] = PIPE
    if capture_output:
        if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        kwargs["stdout"] = kwargs["stderr"] = PIPE
    with Process(args, layers=layers, **kwargs) as process:
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
    return subprocess.CompletedProcess(process.args, returncode, stdout, stderr)
