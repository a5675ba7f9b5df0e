"""The ``%%contain`` cell magic for IPython and Jupyter (``%load_ext pycontain``).

    %%contain --hostname box --layer /srv/rootfs
    echo "hello from $(hostname)"

runs the cell as a shell script in a new container. Its output streams into
the cell as it is written (stdout and stderr apart); interrupting the kernel
kills the container. The options are those of ``pycontain run`` (generated
from Container's fields, see _cli.py), plus ``--shell``.
"""

from __future__ import annotations

import argparse
import codecs
import os
import selectors
import shlex
import sys
from typing import Any

from . import _cli
from ._errors import TimeoutExpired
from ._io import DEVNULL, PIPE

__all__ = ["contain", "load_ipython_extension"]


class _MagicParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ValueError(f"%%contain: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _MagicParser(prog="%%contain", add_help=False)
    _cli._add_container_options(parser)
    parser.add_argument("--cwd", metavar="DIR")
    parser.add_argument("-e", "--env", metavar="NAME=VALUE", action="append")
    parser.add_argument("--clearenv", action="store_true")
    parser.add_argument("--timeout", metavar="SECONDS", type=float)
    parser.add_argument("--shell", metavar="PATH", default="/bin/sh")
    return parser


def contain(line: str, cell: str) -> int:
    """Run ``cell`` with ``--shell`` (default /bin/sh) in a container; its exit status."""
    from ._process import Process

    options = _parser().parse_args(shlex.split(line))
    container = _cli.container_from(options)
    env = _cli._environment(options)
    with Process._spawn(
        container,
        [options.shell, "-c", cell],
        cwd=options.cwd,
        env=env,
        stdin=DEVNULL,
        stdout=PIPE,
        stderr=PIPE,
        bufsize=0,
    ) as process:
        try:
            _stream(process, options.timeout)
            code = process.wait()
        except TimeoutExpired:
            process.kill()
            process.wait()
            print(f"pycontain: timed out after {options.timeout:g} s; killed", file=sys.stderr)
            return _cli.EXIT_TIMEOUT
        except BaseException:
            # A kernel interrupt (KeyboardInterrupt) or anything else: the
            # container ends with the cell.
            process.kill()
            process.wait()
            print(
                f"pycontain: interrupted; killed the container (pid {process.pid})", file=sys.stderr
            )
            raise
    if code != 0:
        from ._display import status_text

        print(f"pycontain: {status_text(code)}", file=sys.stderr)
    return code


def _stream(process: Any, timeout: float | None) -> None:
    """Copy the container's stdout and stderr into this one's as they come."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    targets = {process.stdout.fileno(): sys.stdout, process.stderr.fileno(): sys.stderr}
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in targets}
    with selectors.DefaultSelector() as selector:
        for fd in targets:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutExpired(process.args, timeout)  # type: ignore[arg-type]
            for key, _ in selector.select(remaining):
                fd = key.fd
                data = os.read(fd, 65536)
                text = decoders[fd].decode(data, final=not data)
                if text:
                    targets[fd].write(text)
                    targets[fd].flush()
                if not data:
                    selector.unregister(fd)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext pycontain``: registers ``%%contain``."""

    def magic(line: str, cell: str) -> None:
        contain(line, cell)

    magic.__doc__ = (
        "Run the cell as a shell script in a new pycontain container.\n\n"
        + _parser().format_help().replace("usage: ", "", 1)
    )
    ipython.register_magic_function(magic, magic_kind="cell", magic_name="contain")
