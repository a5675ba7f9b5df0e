"""pycontain's exceptions.

A failure between clone and exec arrives from the C core as (step, errno,
detail) and is raised as a :class:`SpawnError` that is also the builtin
``OSError`` subclass for that errno, so both of these work::

    except FileNotFoundError: ...
    except pycontain.SpawnError as e: print(e.step, e.filename)
"""

from __future__ import annotations

import os
import signal
import subprocess
from errno import ECHILD

__all__ = ["CallbackError", "SpawnError", "TimeoutExpired", "callback_error", "spawn_error"]


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


class CallbackError(SpawnError, subprocess.SubprocessError):
    """A ``pre_pivot`` or ``pre_exec`` callback failed in the container.

    ``hook`` (also ``step``) is ``"pre_pivot"`` or ``"pre_exec"``. If the
    callback raised, ``exception_type`` names the exception's class
    (``ValueError``, ``mymodule.MyError``), ``exception_message`` is its
    message on one line, and ``child_traceback`` holds the traceback
    formatted in the child (also in the message). If it ended its process (``os._exit``, a signal),
    ``exit_status`` is the exit status or ``-N`` for signal N.

    Also a ``subprocess.SubprocessError``, as what Popen raises when its
    ``preexec_fn`` fails.
    """

    hook: str
    exception_type: str | None = None
    exception_message: str = ""
    child_traceback: str = ""
    exit_status: int | None = None

    def __str__(self) -> str:
        if self.exit_status is None and self.exception_type is None and self.errno == ECHILD:
            return (
                f"pycontain: {self.hook} callback ended its process before the program was "
                "executed; its exit status is lost (it was reaped elsewhere: SIGCHLD ignored, "
                "or another wait())"
            )
        if self.exit_status is None:
            raised = self.exception_type or "an exception"
            if self.exception_message:
                raised += f": {self.exception_message}"
            return f"pycontain: {self.hook} callback raised {raised}\n\n{self.child_traceback}"
        if self.exit_status >= 0:
            return (
                f"pycontain: {self.hook} callback ended its process with exit status "
                f"{self.exit_status} (os._exit?) before the program was executed"
                + (
                    " (127: also when a callback closes pycontain's fds)"
                    if self.exit_status == 127
                    else ""
                )
            )
        try:
            name = signal.Signals(-self.exit_status).name
        except ValueError:
            name = f"signal {-self.exit_status}"
        return f"pycontain: {self.hook} callback was killed by {name}"


SpawnError.__module__ = TimeoutExpired.__module__ = CallbackError.__module__ = "pycontain"


def _make_classes() -> dict[type[OSError], type[SpawnError]]:
    # One SpawnError subclass per builtin OSError subclass, made at import
    # and exported by the package (SpawnFileNotFoundError, ...), so that
    # instances pickle, e.g. out of a multiprocessing worker.
    builtins: list[type[OSError]] = [
        OSError,
        *OSError.__subclasses__(),
        *ConnectionError.__subclasses__(),
    ]
    classes: dict[type[OSError], type[SpawnError]] = {OSError: SpawnError}
    for builtin in builtins:
        if builtin in classes or builtin is ConnectionError or builtin.__module__ != "builtins":
            continue
        name = f"Spawn{builtin.__name__}"
        classes[builtin] = type(name, (SpawnError, builtin), {"__module__": "pycontain"})
    return classes


SPAWN_ERROR_CLASSES = _make_classes()


def _class_for(errno: int) -> type[SpawnError]:
    # OSError(errno, ...) picks the builtin subclass (FileNotFoundError for
    # ENOENT, ...); its SpawnError twin was made above.
    return SPAWN_ERROR_CLASSES.get(type(OSError(errno, "")), SpawnError)


def spawn_error(
    step: str, errno: int, filename: str | bytes | None = None, strerror: str | None = None
) -> SpawnError:
    """Build the SpawnError for a failed step; ``strerror`` defaults to errno's text."""
    if strerror is None:
        strerror = os.strerror(errno)
    error = _class_for(errno)(errno, strerror, filename)
    error.step = step
    return error


def callback_error(hook: str, errno: int, report: str, status: int) -> CallbackError:
    """The error for a failed callback: raised (a report from
    _callbacks.format_exception) or ended its process (status)."""
    error = CallbackError(errno or None, "callback failed")
    error.step = error.hook = hook
    if report:
        name, summary, traceback_text = [*report.split("\n", 2), "", ""][:3]
        error.exception_type = name
        error.exception_message = summary
        error.child_traceback = traceback_text
    elif errno != ECHILD:
        error.exit_status = status
    # else: it ended, but its status was lost (reaped elsewhere)
    return error
