"""pycontain: run a program in a lightweight Linux container, in one call.

    with pycontain.Process(["/bin/sh", "-c", "echo $$"], layers=["/srv/rootfs"]) as p:
        assert p.wait() == 0
"""

from ._errors import SpawnError, TimeoutExpired
from ._io import DEVNULL, PIPE, STDOUT
from ._process import Process
from ._run import run

__all__ = ["DEVNULL", "PIPE", "STDOUT", "Process", "SpawnError", "TimeoutExpired", "run"]
__version__ = "0.1.0"
