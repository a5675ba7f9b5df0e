"""The ``pycontain`` command (and ``python -m pycontain``).

pycontain run [OPTIONS] [--] CMD [ARGS...]   run CMD in a container
pycontain doctor [--json]                    what this machine allows
pycontain                                    a demo over the host's / (rootless: /usr)

The container's options are generated from :class:`pycontain.Container`'s
fields (``CONTAINER_OPTIONS``): a new field becomes an option without an
edit here. Exit statuses are those of ``docker run``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ._container import Container
from ._errors import SpawnError, TimeoutExpired
from ._version import __version__

__all__ = ["main"]

DEMO_SCRIPT = r"""
echo "hello from inside pycontain: my pid is $$"
echo "processes I can see: $(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
echo "network interfaces: $(ls /sys/class/net | tr '\n' ' ')"
echo "my root filesystem: $(grep ' / / ' /proc/self/mountinfo | cut -d' ' -f9)"
echo scratch > /pycontain-demo-was-here
echo "wrote /pycontain-demo-was-here; it vanishes with the container"
"""

# Exit statuses, as docker run's.
EXIT_START_FAILED = 125  # pycontain could not start the program (bad option, setup step)
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
EXIT_TIMEOUT = 124  # as timeout(1): --timeout expired and the container was killed
SIGNAL_BASE = 128

# Container fields that take Python objects and have no command-line form.
NOT_FROM_THE_SHELL = {"pre_pivot": "a Python callback"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # As docker run: a usage error is pycontain's failure, 125.
        self.print_usage(sys.stderr)
        self.exit(EXIT_START_FAILED, f"{self.prog}: error: {message}\n")


# -- the container's options, from its fields -----------------------------------------------


def _octal(value: str) -> int:
    return int(value, 8)


def _integer(value: str) -> int:
    return int(value, 0)


def _literal(value: str) -> Any:
    """A Python literal (a number, a list, a dict, ...), or else the string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _rlimit(value: str) -> tuple[str, tuple[int | None, int | None]]:
    name, separator, limits = value.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SOFT[:HARD], not {value!r}")
    soft, _, hard = limits.partition(":")

    def number(text: str) -> int | None:
        return None if text in ("", "unlimited", "inf") else int(text, 0)

    try:
        return name, (number(soft), number(hard or soft))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"limits must be numbers or 'unlimited': {value!r}"
        ) from None


def _key_value(value: str) -> tuple[str, Any]:
    name, separator, text = value.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {value!r}")
    return name, None if text.lower() in ("none", "max", "unlimited") else _literal(text)


_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(value: str) -> int:
    """Bytes: a number, or one with K, M, G, T (units of 1024)."""
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    factor = _SIZE_UNITS.get(text[-1:], 1)
    try:
        number = float(text[:-1] if factor != 1 else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 4096, 64M, 1G: {value!r}"
        ) from None
    return int(number * factor)


def _bind(value: str) -> tuple[str, ...]:
    parts = value.split(":")
    if len(parts) == 2 or (len(parts) == 3 and parts[2] in ("ro", "rw")):
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"expected HOST_PATH:CONTAINER_PATH[:ro|rw], not {value!r}")


def _tmpfs(value: str) -> Any:
    path, _, rest = value.partition(":")
    if not rest:
        return path
    size, _, mode = rest.partition(":")
    return (path, _size(size) if size else None, *([_octal(mode)] if mode else []))


def _seccomp(value: str) -> Any:
    if value in ("default", "none"):
        return None if value == "none" else value
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as error:
        raise argparse.ArgumentTypeError(
            f"expected default, none or a file of BPF instructions: {error}"
        ) from None


@dataclasses.dataclass(frozen=True)
class _OptionKind:
    """How a field's type is read from the command line."""

    metavar: str | None
    parse: Callable[[str], Any]
    repeat: bool = False  # --layer A --layer B (the option is the field's singular)
    flag: bool = False  # --netns-pool / --no-netns-pool
    collect: Callable[[list[Any]], Any] = list
    none_word: bool = False  # "--capability none": an empty list, not the default
    help: str = ""


# By the field's annotation, as written in Container.
_KINDS = {
    "Iterable[StrOrBytesPath]": _OptionKind("DIR", str, repeat=True),
    "StrOrBytesPath | None": _OptionKind("DIR", str),
    "str | bytes | None": _OptionKind("TEXT", str),
    "int | None": _OptionKind("N", _integer),
    "bool": _OptionKind(None, str, flag=True),
    "Iterable[int] | None": _OptionKind("ID", _integer, repeat=True),
    "RLimits | None": _OptionKind(
        "NAME=SOFT[:HARD]",
        _rlimit,
        repeat=True,
        collect=dict,
        help="NAME is a resource.RLIMIT_* name in lower case (nofile, nproc, core, ...)",
    ),
    "Binds | None": _OptionKind(
        "HOST:CONTAINER[:ro|rw]",
        _bind,
        repeat=True,
        help="bind mount, read-only unless :rw; repeatable",
    ),
    "Tmpfs | None": _OptionKind(
        "PATH[:SIZE[:MODE]]", _tmpfs, repeat=True, help="a tmpfs at PATH; repeatable"
    ),
    "Iterable[str] | None": _OptionKind("NAME", str, repeat=True, none_word=True),
    "Network": _OptionKind("MODE", str),
    "Seccomp": _OptionKind("default|none|FILE", _seccomp),
    "ResourceLimits | None": _OptionKind(
        "KEY=VALUE",
        _key_value,
        repeat=True,
        collect=dict,
        help="KEY is memory, swap, pids, cpu or cpu_weight (e.g. memory=512M, cpu=1.5); "
        "a cgroup per container",
    ),
}
_BY_NAME = {
    "umask": _OptionKind("OCTAL", _octal),
    "scratch_size": _OptionKind("SIZE", _size),
    "shm_size": _OptionKind("SIZE", _size),
    "die_with_parent": _OptionKind(None, str, flag=True),  # bool | None: unset is None
    "userns": _OptionKind(None, str, flag=True),  # bool | None: unset is automatic
}
# A repeatable option is named for one item.
_OPTION_NAMES = {
    "layers": "layer",
    "groups": "group",
    "rlimits": "rlimit",
    "limits": "limit",
    "binds": "bind",
    "capabilities": "capability",
}
# Unknown types: a Python literal, so that a new setting is usable at once.
_FALLBACK = _OptionKind("VALUE", _literal, help="a Python literal, or a string")

_HELP = {
    "layers": "read-only layer; repeat to stack them, the first is the uppermost "
    "(default: the host's / alone)",
    "writedir": "keep the container's writes in DIR (default: a tmpfs that vanishes)",
    "workdir": "overlayfs' work directory for --writedir (default: made beside it)",
    "hostname": "the container's hostname",
    "rlimits": "resource limit; repeatable",
    "groups": "supplementary group id; repeatable",
    "gid": "group id the program runs as",
    "uid": "user id the program runs as",
    "umask": "the program's umask",
    "netns_pool": "take the network namespace from the pool made ahead of time",
    "limits": "resource limit; repeatable",
    "capabilities": "a capability the program keeps (CAP_NET_RAW or net_raw); repeatable; "
    "'none' for none (default: the default set for root, none for other uids)",
    "privileged": "keep every capability, no no_new_privs, no seccomp filter",
    "seccomp": "the system call filter: the default one, none, or a file of BPF",
    "network": "none (a network namespace of its own, loopback only) or host",
    "scratch_size": "size of the writable layer's tmpfs (without --writedir)",
    "shm_size": "size of /dev/shm",
    "init": "pycontain's init as PID 1, which starts the program and forwards signals to it "
    "(default; --no-init: the program is PID 1)",
    "die_with_parent": "kill the container when this command dies, however it dies "
    "(default: with --init)",
    "new_session": "a process group (and, with a terminal, a session) of its own "
    "(default; --no-new-session: this command's)",
    "userns": "a user namespace of its own, in which your ids are 0 (rootless mode; default: "
    "only without CAP_SYS_ADMIN; --no-userns: never)",
}


@dataclasses.dataclass(frozen=True)
class ContainerOption:
    field: str
    flags: tuple[str, ...]
    kind: _OptionKind


def _container_options() -> tuple[ContainerOption, ...]:
    options = []
    for field in dataclasses.fields(Container):
        if not field.init or field.name in NOT_FROM_THE_SHELL:
            continue
        annotation = str(field.type)
        kind = _BY_NAME.get(field.name) or _KINDS.get(annotation, _FALLBACK)
        name = _OPTION_NAMES.get(field.name, field.name).replace("_", "-")
        options.append(ContainerOption(field.name, (f"--{name}",), kind))
    return tuple(options)


CONTAINER_OPTIONS = _container_options()


def _add_container_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("container (pycontain.Container's fields)")
    for option in CONTAINER_OPTIONS:
        kind = option.kind
        text = "; ".join(part for part in (_HELP.get(option.field, ""), kind.help) if part)
        if kind.flag:
            group.add_argument(
                *option.flags,
                dest=option.field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            group.add_argument(
                *option.flags,
                dest=option.field,
                metavar=kind.metavar,
                type=kind.parse,
                action="append" if kind.repeat else "store",
                default=None,
                help=text,
            )


def container_from(options: argparse.Namespace) -> Container:
    settings: dict[str, Any] = {}
    for option in CONTAINER_OPTIONS:
        value = getattr(options, option.field)
        if value is None:
            continue
        if option.kind.none_word:
            value = [item for item in value if item != "none"]
        settings[option.field] = option.kind.collect(value) if option.kind.repeat else value
    settings.setdefault("layers", ["/"])
    return Container(**settings)


# -- pycontain run -----------------------------------------------------------------------------


def _environment(options: argparse.Namespace) -> dict[str, str]:
    env = {} if options.clearenv else dict(os.environ)
    for item in options.env or ():
        name, separator, value = item.partition("=")
        if not separator:
            # As docker: --env NAME passes this process's value, if any.
            if name in os.environ:
                env[name] = os.environ[name]
            continue
        env[name] = value
    return env


def _run_parser(parser: argparse.ArgumentParser) -> None:
    _add_container_options(parser)
    program = parser.add_argument_group("program")
    program.add_argument(
        "--cwd", metavar="DIR", help="working directory inside the container (default: /)"
    )
    program.add_argument(
        "-e",
        "--env",
        metavar="NAME=VALUE",
        action="append",
        help="set an environment variable (NAME alone: this one's value); repeatable",
    )
    program.add_argument(
        "--clearenv",
        action="store_true",
        help="start from an empty environment instead of this one's",
    )
    program.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        help=f"kill the container after SECONDS and exit {EXIT_TIMEOUT}",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")


class _Terminated(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


_ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _exit_status_for_spawn_error(error: SpawnError) -> int:
    if error.step == "exec":
        if error.errno == errno.ENOENT:
            return EXIT_NOT_FOUND
        return EXIT_NOT_EXECUTABLE
    return EXIT_START_FAILED


def run_command(options: argparse.Namespace, command: list[str]) -> int:
    """Run ``command``; the exit status as docker run gives it."""
    from ._process import Process

    try:
        container = container_from(options)
        env = _environment(options)
    except SpawnError as error:
        print(error, file=sys.stderr)
        return EXIT_START_FAILED
    except (ValueError, TypeError, OSError) as error:
        print(f"pycontain: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    # Until the Process exists, an ending signal is only noted (an exception
    # then could lose the handle of a container that already runs), and
    # not blocked either: the program would inherit the blocked mask.
    pending: list[int] = []
    for ending in _ENDING_SIGNALS:
        signal.signal(ending, lambda signum, frame: pending.append(signum))
    try:
        process = Process._spawn(container, command, cwd=options.cwd, env=env)
    except SpawnError as error:
        print(error, file=sys.stderr)
        return _exit_status_for_spawn_error(error)
    except (ValueError, TypeError, OSError) as error:
        print(f"pycontain: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    for ending in _ENDING_SIGNALS:
        signal.signal(ending, _raise_terminated)
    # The container is in a process group (and, with a terminal, a session)
    # of its own, so a Ctrl-C or a supervisor's SIGTERM reaches only this
    # process: pass it on, as docker run does, and let the program decide.
    # Its init forwards it to the program; without the init (a PID 1 drops
    # signals it has no handler for) the container is ended instead.
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    while True:
        for noted in pending:
            if not container.init:
                return _end(process, noted)
            try:
                process.send_signal(noted)
            except ProcessLookupError:
                pass  # it has just ended
        pending = []
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            code = process.wait(remaining)
            break
        except TimeoutExpired:
            print(f"pycontain: timed out after {options.timeout:g} s; killed", file=sys.stderr)
            _end(process, signal.SIGKILL)
            return EXIT_TIMEOUT
        except _Terminated as terminated:
            pending.append(terminated.signum)
    return code if code >= 0 else SIGNAL_BASE - code


def _end(process: Any, signum: int) -> int:
    """Kill and reap the container (while it happens, further signals wait)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING_SIGNALS)
    if process is not None:
        process.close()
    return SIGNAL_BASE + signum


# -- pycontain doctor ----------------------------------------------------------------------------


def doctor_command(options: argparse.Namespace) -> int:
    from ._doctor import doctor

    report = doctor(try_container=not options.no_container)
    if options.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.can_run else 1


# -- pycontain diff ------------------------------------------------------------------------------


def diff_command(options: argparse.Namespace) -> int:
    """What the programs that ran with WRITEDIR changed, against the layers."""
    try:
        box = Container(layers=options.layers or ["/"], writedir=options.writedir)
        changes = box.changes()
    except (ValueError, TypeError, OSError) as error:
        print(f"pycontain diff: {error}", file=sys.stderr)
        return 1
    for change in changes:
        if options.long:
            size = "" if change.size is None else f" {change.size}"
            print(f"{change.docker()} ({change.kind}{size})")
        else:
            print(change.docker())
    return 0


# -- main ----------------------------------------------------------------------------------------


def build_parser(prog: str = "pycontain") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Run programs in lightweight Linux containers (overlayfs + namespaces). "
        "Without a command: a demo over the host's / (read-only).",
    )
    parser.add_argument("--version", action="version", version=f"pycontain {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a command in a new container",
        description="Run CMD in a new container and exit with its status: the program's own, "
        f"128+N when signal N killed it, {EXIT_START_FAILED} when pycontain could not start "
        f"it, {EXIT_NOT_EXECUTABLE} when it is not executable, {EXIT_NOT_FOUND} when it is "
        f"not found, {EXIT_TIMEOUT} when --timeout expired. Ctrl-C or SIGTERM end the "
        "container (130, 143).",
        usage=f"{prog} run [OPTIONS] [--] CMD [ARGS...]",
    )
    run.error = parser.error  # type: ignore[method-assign]
    _run_parser(run)
    diff = commands.add_parser(
        "diff",
        help="what the programs run with a writedir changed, as docker diff shows it",
        description="Print what the writable layer WRITEDIR holds over the layers, one "
        "line each: A (added), C (changed), D (deleted) and the path inside the container.",
    )
    diff.add_argument(
        "--layer",
        action="append",
        dest="layers",
        metavar="DIR",
        help="the read-only layers it was used with, uppermost first (default: /)",
    )
    diff.add_argument("--long", action="store_true", help="add each entry's kind and size")
    diff.add_argument("writedir", metavar="WRITEDIR")
    check = commands.add_parser(
        "doctor", help="what this machine and user allow pycontain to do, and why not"
    )
    check.add_argument("--json", action="store_true", help="the report as JSON")
    check.add_argument(
        "--no-container", action="store_true", help="do not start the one test container"
    )
    return parser


def _demo_layer() -> list[str]:
    """The demo's layer: the host's /, or in rootless mode, where / cannot be a
    layer (it has mounts below it), the host's /usr, which on a merged-/usr
    system (Debian >= 12) holds bin/, lib/ and lib64/ for a root of its own."""
    from . import _userns

    if _userns.caller_has_sys_admin() or not os.path.exists("/usr/bin/sh"):
        return []
    try:
        _userns.check_directories([("layer", b"/usr")])
    except ValueError:
        return []
    print("(rootless mode: the host's /usr as the container's /)", flush=True)
    return ["--layer", "/usr"]


def main(argv: Sequence[str] | None = None, prog: str = "pycontain") -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        arguments = ["run", *_demo_layer(), "--", "/bin/sh", "-c", DEMO_SCRIPT]
    elif arguments[0] not in ("run", "diff", "doctor", "-h", "--help", "--version"):
        # python -m pycontain --layer DIR -- CMD: the older form of "run".
        arguments.insert(0, "run")
    options = build_parser(prog).parse_args(arguments)
    if options.subcommand == "doctor":
        return doctor_command(options)
    if options.subcommand == "diff":
        return diff_command(options)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        build_parser(prog).error("run: no command given")
    return run_command(options, command)


def console_main() -> None:
    sys.exit(main())
