"""pycontain: run a program in a lightweight Linux container, in one call.

    with pycontain.Process(["/bin/sh", "-c", "echo $$"], layers=["/srv/rootfs"]) as p:
        assert p.wait() == 0
"""

from ._errors import SpawnError, TimeoutExpired
from ._process import Process

__all__ = ["Process", "SpawnError", "TimeoutExpired"]
__version__ = "0.1.0"
