"""pycontain's exceptions.

A failure between clone and exec arrives from the C core as (step, errno,
detail) and is raised as a :class:`SpawnError` that is also the builtin
``OSError`` subclass for that errno, so both of these work::

    except FileNotFoundError: ...
    except pycontain.SpawnError as e: print(e.step, e.filename)
"""

from __future__ import annotations

import os
import subprocess

__all__ = ["SpawnError", "TimeoutExpired", "spawn_error"]


class SpawnError(OSError):
    """A container could not be started.

    ``step`` names the setup step that failed (``"exec"``, ``"mount-overlay"``,
    ``"chdir"``, ...); ``errno``, ``strerror`` and ``filename`` are as for any
    ``OSError``. Each instance is also the builtin ``OSError`` subclass for its
    errno (``FileNotFoundError``, ``PermissionError``, ...).
    """

    step: str

    def __str__(self) -> str:
        where = f" {os.fsdecode(self.filename)!r}" if self.filename is not None else ""
        return f"pycontain: {self.step}{where}: {self.strerror}"


class TimeoutExpired(subprocess.TimeoutExpired):
    """A wait timed out; ``except subprocess.TimeoutExpired`` catches it too."""


SpawnError.__module__ = TimeoutExpired.__module__ = "pycontain"

_classes: dict[type[OSError], type[SpawnError]] = {OSError: SpawnError}


def _class_for(errno: int) -> type[SpawnError]:
    # OSError(errno, ...) picks the builtin subclass (FileNotFoundError for
    # ENOENT, ...); pair it with SpawnError once and reuse the class.
    builtin = type(OSError(errno, ""))
    cls = _classes.get(builtin)
    if cls is None:
        cls = type(f"Spawn{builtin.__name__}", (SpawnError, builtin), {"__module__": "pycontain"})
        _classes[builtin] = cls
    return cls


def spawn_error(
    step: str, errno: int, filename: str | bytes | None = None, strerror: str | None = None
) -> SpawnError:
    """Build the SpawnError for a failed step; ``strerror`` defaults to errno's text."""
    if strerror is None:
        strerror = os.strerror(errno)
    error = _class_for(errno)(errno, strerror, filename)
    error.step = step
    return error
