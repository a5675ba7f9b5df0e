"""python -m pycontain: run a command in a container, or a demo without one.

python -m pycontain                                  # the demo, over the host's /
python -m pycontain --layer /srv/rootfs -- sh -c 'echo $$'
"""

from __future__ import annotations

import argparse
import sys

from . import Process, SpawnError

DEMO_SCRIPT = r"""
echo "hello from inside pycontain: my pid is $$"
echo "processes I can see: $(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
echo "network interfaces: $(ls /sys/class/net | tr '\n' ' ')"
echo "my root filesystem: $(grep ' / / ' /proc/self/mountinfo | cut -d' ' -f9)"
echo scratch > /pycontain-demo-was-here
echo "wrote /pycontain-demo-was-here; it vanishes with the container"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pycontain",
        description="Run a command in a lightweight container. Without a command, run a demo "
        "with the host's / as the only (read-only) layer.",
    )
    parser.add_argument(
        "--layer",
        action="append",
        dest="layers",
        metavar="DIR",
        help="read-only layer; repeat to stack, first is uppermost (default: /)",
    )
    parser.add_argument("--writedir", metavar="DIR", help="keep the container's writes here")
    parser.add_argument("--cwd", metavar="DIR", help="working directory inside the container")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        command = ["/bin/sh", "-c", DEMO_SCRIPT]
    try:
        with Process(
            command,
            layers=options.layers or ["/"],
            writedir=options.writedir,
            cwd=options.cwd,
        ) as process:
            code = process.wait()
    except (SpawnError, ValueError, OSError) as error:
        print(error, file=sys.stderr)
        return 127
    # Like a shell: 128 + N when the program was killed by signal N.
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
