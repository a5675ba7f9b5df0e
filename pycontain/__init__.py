"""pycontain: run a program in a lightweight Linux container, in one call.

box = pycontain.Container(layers=["/srv/rootfs"], hostname="sandbox")
print(box.run(["/bin/sh", "-c", "echo $$"], capture_output=True).stdout)

with pycontain.Process(["/bin/sh", "-c", "echo $$"], layers=["/srv/rootfs"]) as p:
    assert p.wait() == 0
"""

from . import _errors
from ._asyncio import AsyncProcess, create_subprocess_exec
from ._call import CallError, CallExitedError, RemoteError, RemoteTraceback, call, call_async
from ._changes import Change
from ._container import Container
from ._doctor import DoctorReport, doctor
from ._errors import CallbackError, SpawnError, TimeoutExpired
from ._io import DEVNULL, PIPE, STDOUT
from ._netns import netns_pool_status, set_netns_pool
from ._pool import Pool
from ._privileges import CAPABILITIES, DEFAULT_CAPABILITIES
from ._process import Process
from ._run import CompletedProcess, run
from ._seccomp import seccomp_filter
from ._version import __version__

__all__ = [
    "CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "AsyncProcess",
    "CallError",
    "CallExitedError",
    "CallbackError",
    "Change",
    "CompletedProcess",
    "Container",
    "DoctorReport",
    "Pool",
    "Process",
    "RemoteError",
    "RemoteTraceback",
    "SpawnError",
    "TimeoutExpired",
    "__version__",
    "call",
    "call_async",
    "create_subprocess_exec",
    "doctor",
    "netns_pool_status",
    "run",
    "seccomp_filter",
    "set_netns_pool",
]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext pycontain`` in IPython or Jupyter: the ``%%contain`` cell magic."""
    from ._magic import load_ipython_extension

    load_ipython_extension(ipython)


# SpawnFileNotFoundError, SpawnPermissionError, ...: the classes of the
# SpawnErrors raised, importable so that they pickle.
globals().update({cls.__name__: cls for cls in _errors.SPAWN_ERROR_CLASSES.values()})
