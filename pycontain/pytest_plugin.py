"""pycontain's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

- ``container_rootfs`` (session): the base root filesystem, a directory: the
  host's ``/`` (read-only, as every layer) unless the ``pycontain_rootfs``
  ini option or ``--pycontain-rootfs DIR`` names another. Skips the test,
  with the reason, where this machine or user cannot run containers.
- ``base_container`` (session): ``pycontain.Container(layers=[container_rootfs])``.
- ``container``: a factory. ``container(args, **keywords)`` starts a
  :class:`pycontain.Process` (keywords as ``Process``; ``layers`` default
  to ``[container_rootfs]``; stdout and stderr, unless given, are captured
  to files), ``container.run(args, ...)`` runs one to its end
  (``capture_output=True`` unless streams are given), ``container.call(fn,
  *args, ...)`` is :func:`pycontain.call`. At teardown every container it
  started is killed and reaped; if the test failed, its report gets a
  "pycontain containers" section with each one's command, exit status,
  duration and captured output.

Marker: ``@pytest.mark.contained(**keywords)`` runs the whole test function
inside a container through :func:`pycontain.call` (keywords as ``call``;
``layers`` default to ``[container_rootfs]``). Fixtures are set up outside,
and their values reach the function through the fork.

Under pytest-xdist each worker is its own process with its own fixtures;
nothing is shared between workers but the base directory, which is only
ever mounted read-only. Containers pickle, so a Container can be sent to
a worker.
"""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import IO, Any

import pytest

from ._call import call
from ._container import Container
from ._display import command_text, status_text
from ._process import Process
from ._run import CompletedProcess, run
from ._spawn import StrOrBytesPath

__all__ = ["ContainerFactory"]

_SECTION = "pycontain containers"
# What of each stream a failing test's report shows (its end).
_OUTPUT_SHOWN = 4000
_RECORDS = pytest.StashKey["ContainerFactory"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pycontain")
    group.addoption(
        "--pycontain-rootfs",
        metavar="DIR",
        default=None,
        help="base root filesystem for pycontain's fixtures (default: the host's /)",
    )
    parser.addini(
        "pycontain_rootfs",
        "base root filesystem for pycontain's fixtures (default: the host's /)",
        default="/",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "contained(**keywords): run the test function inside a container through "
        "pycontain.call (keywords as pycontain.call; layers default to the base rootfs)",
    )


def _skip_reason() -> str | None:
    """Why this machine or user cannot run containers, or None (cheap, read only)."""
    from ._doctor import doctor

    report = doctor(try_container=False)
    problems = report.problems()
    if not problems:
        return None
    first = problems[0]
    return f"pycontain cannot start containers here: {first.name}: {first.detail}" + (
        f" ({first.fix})" if first.fix else ""
    )


@pytest.fixture(scope="session")
def container_rootfs(pytestconfig: pytest.Config) -> str:
    """The base root filesystem (a directory, mounted read-only)."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    path = pytestconfig.getoption("pycontain_rootfs") or pytestconfig.getini("pycontain_rootfs")
    path = os.path.join(str(pytestconfig.rootpath), str(path))  # relative to the rootdir
    if not os.path.isdir(path):
        raise pytest.UsageError(f"pycontain_rootfs {path!r} is not a directory")
    from . import _userns

    if not _userns.caller_has_sys_admin():
        # Rootless mode refuses a layer with mounts below it, such as the host's /.
        try:
            _userns.check_directories([("pycontain_rootfs", os.fsencode(path))])
        except ValueError as error:
            pytest.skip(f"pycontain cannot start containers here: {error}")
    return path


@pytest.fixture(scope="session")
def base_container(container_rootfs: str) -> Container:
    """A Container with the base root filesystem as its only layer."""
    return Container(layers=[container_rootfs])


class _Record:
    """One container the factory started, for teardown and the report."""

    def __init__(self, process: Process, out: IO[bytes] | None, err: IO[bytes] | None) -> None:
        self.process = process
        self.files = (out, err)
        self.texts: tuple[str, str] | None = None
        self.started = time.monotonic()
        self.ended: float | None = None

    def finish(self) -> None:
        """Kill and reap the container; keep the end of its output, close the files."""
        if self.process.returncode is None:
            self.process.close()
        if self.ended is None:
            self.ended = time.monotonic()
        if self.texts is None:
            self.texts = (_captured(self.files[0]), _captured(self.files[1]))
            for stream in self.files:
                if stream is not None:
                    stream.close()

    def output(self) -> tuple[str, str]:
        if self.texts is not None:
            return self.texts
        return _captured(self.files[0]), _captured(self.files[1])

    def describe(self) -> str:
        process = self.process
        code = process.returncode
        status = "running (killed at teardown)" if code is None else status_text(code)
        end = self.ended if self.ended is not None else time.monotonic()
        layers = ", ".join(os.fsdecode(layer) for layer in _layers_of(process.container))
        out, err = self.output()
        return "\n".join(
            [
                f"$ {command_text(process.args)}",
                f"  pid {process.pid}, {status}, {end - self.started:.3f} s, layers: {layers}",
                "  --- stdout ---",
                _tail(out),
                "  --- stderr ---",
                _tail(err),
            ]
        )


_NOT_CAPTURED = "(not captured: given to the test)"


def _captured(stream: IO[bytes] | None) -> str:
    if stream is None:
        return _NOT_CAPTURED
    stream.seek(0)
    return stream.read().decode("utf-8", "backslashreplace")


def _tail(text: str) -> str:
    if len(text) > _OUTPUT_SHOWN:
        return f"[... {len(text) - _OUTPUT_SHOWN} characters before ...]\n" + text[-_OUTPUT_SHOWN:]
    return text


def _layers_of(container: Container | None) -> tuple[Any, ...]:
    return () if container is None else tuple(container.layers)


class ContainerFactory:
    """The ``container`` fixture: starts containers, ends them at teardown."""

    def __init__(self, rootfs: str) -> None:
        self.rootfs = rootfs
        self.records: list[_Record | _CompletedRecord] = []

    def _layers(self, settings: dict[str, Any]) -> None:
        settings.setdefault("layers", [self.rootfs])

    def __call__(self, args: StrOrBytesPath | Sequence[StrOrBytesPath], **settings: Any) -> Process:
        """Start ``args`` in a container (keywords as :class:`pycontain.Process`)."""
        self._layers(settings)
        files: dict[str, IO[bytes]] = {}
        try:
            for name in ("stdout", "stderr"):
                if name not in settings:
                    files[name] = settings[name] = tempfile.TemporaryFile()  # noqa: SIM115
            process = Process(args, **settings)
        except BaseException:
            for stream in files.values():
                stream.close()
            raise
        self.records.append(_Record(process, files.get("stdout"), files.get("stderr")))
        return process

    def output(self, process: Process) -> tuple[str, str]:
        """Wait for ``process`` (started by this factory); what it wrote to its
        captured stdout and stderr."""
        for record in self.records:
            if isinstance(record, _Record) and record.process is process:
                process.wait()
                return record.output()
        raise ValueError(f"{process!r} was not started by this fixture")

    def run(
        self, args: StrOrBytesPath | Sequence[StrOrBytesPath], **settings: Any
    ) -> CompletedProcess:
        """As :func:`pycontain.run`, output captured unless streams are given."""
        self._layers(settings)
        if not {"stdout", "stderr", "capture_output"} & set(settings):
            settings["capture_output"] = True
        done = run(args, **settings)
        self.records.append(_CompletedRecord(done))
        return done

    def call(self, fn: Callable[..., Any], /, *args: Any, **settings: Any) -> Any:
        """:func:`pycontain.call` with ``layers`` defaulting to the base rootfs."""
        self._layers(settings)
        return call(fn, *args, **settings)

    def close(self) -> None:
        for record in self.records:
            record.finish()

    def report(self) -> str:
        return "\n\n".join(record.describe() for record in self.records)


class _CompletedRecord:
    """A container run to its end by ``container.run``."""

    def __init__(self, result: CompletedProcess) -> None:
        self.result = result

    def finish(self) -> None:
        pass

    def describe(self) -> str:
        result = self.result

        def shown(data: Any) -> str:
            if data is None:
                return _NOT_CAPTURED
            if isinstance(data, bytes):
                data = data.decode("utf-8", "backslashreplace")
            return _tail(str(data))

        return "\n".join(
            [
                f"$ {command_text(result.args)}",
                f"  pid {result.pid}, {status_text(result.returncode)}, "
                f"{result.duration or 0:.3f} s, layers: "
                + ", ".join(os.fsdecode(layer) for layer in _layers_of(result.container)),
                "  --- stdout ---",
                shown(result.stdout),
                "  --- stderr ---",
                shown(result.stderr),
            ]
        )


@pytest.fixture
def container(request: pytest.FixtureRequest, container_rootfs: str) -> Iterable[ContainerFactory]:
    """Start containers: ``container(args, **keywords)`` -> a pycontain.Process."""
    factory = ContainerFactory(container_rootfs)
    request.node.stash[_RECORDS] = factory
    try:
        yield factory
    finally:
        factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    # An old-style wrapper, so that pytest 7's pluggy runs it too.
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    factory = item.stash.get(_RECORDS, None)
    if factory is not None and factory.records and report.failed:
        if report.when == "call":
            # Ended now, so that the report shows the final status and output.
            factory.close()
        report.sections.append((_SECTION, factory.report()))


# -- the marker ----------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            item.get_closest_marker("contained") is not None
            and isinstance(item, pytest.Function)
            and "container_rootfs" not in item.fixturenames
        ):
            item.fixturenames.append("container_rootfs")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    marker = pyfuncitem.get_closest_marker("contained")
    if marker is None:
        return None
    function = pyfuncitem.obj
    if inspect.iscoroutinefunction(function):
        raise pytest.UsageError(
            f"{pyfuncitem.nodeid}: @pytest.mark.contained does not run coroutine functions"
        )
    if marker.args:
        raise pytest.UsageError("@pytest.mark.contained takes keywords only (as pycontain.call)")
    settings = dict(marker.kwargs)
    settings.setdefault("layers", [pyfuncitem.funcargs["container_rootfs"]])
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    call(functools.partial(function, **arguments), **settings)
    return True
