"""Container: what a program runs in, as a value, declared once.

A container setting (layers, writedir, hostname, ids, limits, callbacks
that prepare the root, ...) is one field of :class:`Container`, with its
default there and its check in ``__post_init__``. Every entry point takes
its keywords from here: :class:`pycontain.Process`, :func:`pycontain.run`
and :func:`pycontain.create_subprocess_exec` build a Container from theirs,
and ``Container.spawn``/``run``/``create_subprocess_exec`` run programs in
one. The keyword types for type checkers are the TypedDicts below; each
key is declared in exactly one of them, and an import-time check keeps
``ContainerSettings`` equal to the fields (see docs/container.md).

Everything that can be checked and encoded once per container is, when
the Container is made (``_spawn.plan``); a spawn then only does the
per-program work.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Unpack, overload

from . import _callbacks, _cgroup, _lifecycle, _mounts, _privileges, _spawn, _userns
from ._io import Stream
from ._privileges import Network, Seccomp
from ._spawn import Env, StrOrBytesPath

if TYPE_CHECKING:
    from . import _pool
    from ._asyncio import AsyncProcess
    from ._changes import Change
    from ._process import Process
    from ._run import CompletedProcess

__all__ = ["Container"]

_T = TypeVar("_T")

RLimits = Mapping[str | int, int | tuple[int | None, int | None]]
# limits={"memory": "512M", "swap": 0, "pids": 64, "cpu": 1.5, "cpu_weight": 100}
ResourceLimits = Mapping[str, int | float | str | None]
Binds = Iterable[_mounts.BindSpec]
Tmpfs = Iterable[_mounts.TmpfsSpec]


# -- the keyword declarations, for type checkers and help() ------------------------------
#
# A key lives in exactly one of these; the entry points' **kwargs combine them.


class ContainerSettings(TypedDict, total=False):
    """Container's fields other than ``layers`` (checked against them at import)."""

    writedir: StrOrBytesPath | None
    workdir: StrOrBytesPath | None
    hostname: str | bytes | None
    rlimits: RLimits | None
    groups: Iterable[int] | None
    gid: int | None
    uid: int | None
    umask: int | None
    capabilities: Iterable[str] | None
    privileged: bool
    seccomp: Seccomp
    network: Network
    pre_pivot: _callbacks.Callback | None
    netns_pool: bool
    keep_upper: bool
    limits: ResourceLimits | None
    binds: Binds | None
    tmpfs: Tmpfs | None
    scratch_size: int | None
    shm_size: int | None
    init: bool
    die_with_parent: bool | None
    new_session: bool
    userns: bool | None


class _Layers(TypedDict, total=False):
    layers: Iterable[StrOrBytesPath]


class ContainerFields(ContainerSettings, _Layers):
    """Every field of Container: what ``Container.replace`` takes."""


class PlaceSettings(TypedDict, total=False):
    """Where a program (or a ``call``'s function) runs inside, and what it inherits."""

    cwd: StrOrBytesPath | None
    env: Env | None
    pass_fds: Iterable[int]


class CommandSettings(PlaceSettings, total=False):
    """What runs, other than its streams (see ``Process._start``)."""

    executable: StrOrBytesPath | None
    pre_exec: _callbacks.Callback | None
    _force_legacy_clone: bool
    _main: _callbacks.Callback | None
    _pool: _pool.Pool | None


class StreamSettings(TypedDict, total=False):
    stdin: Stream
    stdout: Stream
    stderr: Stream


class TextSettings(TypedDict, total=False):
    text: bool | None
    encoding: str | None
    errors: str | None
    bufsize: int | None
    universal_newlines: bool | None


class SpawnTimeout(TypedDict, total=False):
    timeout: float | None


class ProgramSettings(CommandSettings, StreamSettings, TextSettings, SpawnTimeout):
    """``Container.spawn``'s keywords."""


class ProcessSettings(ContainerSettings, ProgramSettings):
    """``Process(args, layers=..., **these)``."""


class RunProgramSettings(CommandSettings, StreamSettings, TextSettings):
    """``Container.run``'s keywords besides its own (its timeout bounds the whole run)."""


class RunSettings(ContainerSettings, RunProgramSettings):
    """``pycontain.run(args, layers=..., **these)``."""


class AsyncProgramSettings(CommandSettings, SpawnTimeout):
    """``Container.create_subprocess_exec``'s keywords besides the streams (bytes only)."""


class AsyncSettings(ContainerSettings, AsyncProgramSettings):
    """``pycontain.create_subprocess_exec(..., layers=..., **these)``."""


class CallProgramSettings(PlaceSettings, StreamSettings, SpawnTimeout):
    """``Container.call``'s keywords (its timeout bounds the whole call)."""


class CallSettings(ContainerSettings, CallProgramSettings):
    """``pycontain.call(fn, *args, layers=..., **these)``."""


# -- the value ----------------------------------------------------------------------------


class _FrozenMapping(Mapping[Any, Any]):
    """A read-only, hashable, picklable copy of a mapping (for rlimits)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[Any, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._items == dict(other.items())

    def __repr__(self) -> str:
        return repr(self._items)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_FrozenMapping, (self._items,))


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Container:
    """What a program runs in: layers, writable layer, identity, limits.

    ``layers`` are read-only directories stacked with overlayfs as the
    container's ``/``; the first is the uppermost, as in overlayfs'
    lowerdir. Writes go to a tmpfs that vanishes with each program, or to
    ``writedir`` if given (kept; overlayfs' work directory is made beside it
    for each run and removed after it, unless ``workdir`` names one).
    ``hostname``, ``rlimits``, ``groups``, ``gid``, ``uid`` and ``umask``
    are applied inside the container by the C core; ``pre_pivot`` is a
    Python callback that prepares the root before ``pivot_root``
    (docs/callbacks.md); ``keep_upper=True`` keeps each program's throwaway
    writable layer readable until its Process is closed, for
    ``Process.changes()``, ``commit()`` and ``apply_to()`` (a ``writedir``
    is always readable); ``netns_pool=False`` makes each network namespace
    during the spawn instead of taking one made ahead of time. ``limits``
    (``{"memory": "512M", "swap": 0, "pids": 64, "cpu": 1.5, "cpu_weight":
    100}``, any subset; ``{}`` only counts) gives each program's container a
    cgroup of its own (README, "Limits and accounting"). ``binds``
    (``(host_path, container_path[, "ro"|"rw"])``, read-only by default)
    and ``tmpfs`` (``container_path`` or ``(container_path, size[, mode])``)
    add mounts; ``scratch_size`` (the writable tmpfs) and ``shm_size``
    (``/dev/shm``) bound pycontain's own tmpfs mounts, in bytes (defaults:
    1 GiB or a quarter of the RAM if less, and 64 MiB).

    What the program may do beyond its namespaces (docs/security.md): it
    keeps only ``capabilities`` (names, ``"CAP_NET_RAW"`` or ``"net_raw"``;
    default :data:`pycontain.DEFAULT_CAPABILITIES` for root, none for a
    non-root ``uid``), runs with ``no_new_privs`` and behind ``seccomp``
    (``"default"``: docs/seccomp.md; ``None``; or bytes of a BPF program).
    ``privileged=True`` keeps every capability, sets no ``no_new_privs`` and
    loads no default filter. ``network="none"``: a network namespace of its
    own with ``lo`` up; ``"host"``: the host's (no network isolation).

    Its life (docs/init.md): ``init=True`` (the default) makes pycontain's
    small init the container's PID 1, which starts the program, forwards
    signals to it, reaps orphans and reports its status (``init=False``:
    the program itself is PID 1, which gets only the signals it handles);
    ``die_with_parent`` (default: same as ``init``) has the init kill the
    container as soon as this Python process has exited, however it died;
    ``new_session=True`` (the default) puts the container in a session and
    process group of its own, out of reach of this one's terminal.

    Rootless mode (README, "Rootless"): ``userns=None`` (the default) gives
    the container a user namespace of its own when this process lacks
    ``CAP_SYS_ADMIN``, in which your uid and gid are 0 and no other id
    exists; ``True`` does so for root too (root in the container is then
    not root on the host); ``False`` never does (without ``CAP_SYS_ADMIN``
    a spawn then raises ``PermissionError``).

    A Container is an immutable value: checked when made (bad values raise
    here, as a spawn would), comparable, hashable, picklable (when its
    callbacks are), and changed only by :meth:`replace`, which returns a new
    one. Run programs in it with :meth:`spawn` (a :class:`pycontain.Process`),
    :meth:`run` (as ``subprocess.run``) or :meth:`create_subprocess_exec`
    (asyncio); each runs in a fresh container made from this description.
    """

    layers: Iterable[StrOrBytesPath]
    writedir: StrOrBytesPath | None = None
    workdir: StrOrBytesPath | None = None
    hostname: str | bytes | None = None
    rlimits: RLimits | None = None
    groups: Iterable[int] | None = None
    gid: int | None = None
    uid: int | None = None
    umask: int | None = None
    capabilities: Iterable[str] | None = None
    privileged: bool = False
    seccomp: Seccomp = "default"
    network: Network = "none"
    pre_pivot: _callbacks.Callback | None = None
    netns_pool: bool = True
    keep_upper: bool = False
    limits: ResourceLimits | None = None
    binds: Binds | None = None
    tmpfs: Tmpfs | None = None
    scratch_size: int | None = None
    shm_size: int | None = None
    init: bool = True
    die_with_parent: bool | None = None
    new_session: bool = True
    userns: bool | None = None
    # Checked and encoded once, reused by every spawn (not part of the value).
    _plan: _spawn.ContainerPlan = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, (str, bytes, os.PathLike)):
            raise TypeError("layers must be a list of directories, not a single path")
        layers = tuple(self.layers)
        if self.rlimits is not None and not isinstance(self.rlimits, Mapping):
            raise TypeError(
                f"rlimits must be a mapping of names to limits, not {type(self.rlimits).__name__}"
            )
        groups = None if self.groups is None else _groups(self.groups)
        userns = _userns.resolve(self.userns)
        settings = _spawn.settings(
            hostname=self.hostname,
            rlimits=self.rlimits,
            groups=groups,
            gid=self.gid,
            uid=self.uid,
            umask=self.umask,
            capabilities=self.capabilities,
            privileged=self.privileged,
            seccomp=self.seccomp,
            network=self.network,
            userns=userns,
        )
        _callbacks.require_callable("pre_pivot", self.pre_pivot)
        limits = _cgroup.parse_limits(self.limits)
        binds = None if self.binds is None else _items(self.binds, "binds")
        tmpfs = None if self.tmpfs is None else _items(self.tmpfs, "tmpfs")
        mounts = _mounts.check(
            scratch_size=self.scratch_size, shm_size=self.shm_size, binds=binds, tmpfs=tmpfs
        )
        die_with_parent = _lifecycle.check(self.init, self.die_with_parent, self.new_session)
        if self.init and limits is not None and limits.pids == 1:
            raise ValueError(
                "limits['pids']=1 leaves no room for the program: pycontain's init counts "
                "as one of the container's processes (use pids >= 2, or init=False)"
            )
        plan = _spawn.plan(
            layers=layers,
            writedir=self.writedir,
            workdir=self.workdir,
            settings=settings,
            netns_pool=bool(self.netns_pool),
            keep_upper=bool(self.keep_upper),
            limits=limits,
            mounts=mounts,
            init=self.init,
            die_with_parent=die_with_parent,
            new_session=self.new_session,
            userns=userns,
        )
        # Normalised, so that equal descriptions compare (and hash) equal.
        set_field = object.__setattr__
        set_field(self, "layers", tuple(_fspath(layer) for layer in layers))
        set_field(self, "writedir", _fspath(self.writedir))
        set_field(self, "workdir", _fspath(self.workdir))
        if self.rlimits is not None:
            set_field(self, "rlimits", _FrozenMapping(self.rlimits))
        set_field(self, "groups", groups)
        if self.capabilities is not None:
            set_field(self, "capabilities", _privileges.canonical_names(self.capabilities))
        if isinstance(self.seccomp, (bytearray, memoryview)):
            set_field(self, "seccomp", bytes(self.seccomp))
        set_field(self, "netns_pool", bool(self.netns_pool))
        set_field(self, "keep_upper", bool(self.keep_upper))
        if self.limits is not None:
            set_field(self, "limits", _FrozenMapping(self.limits))
        set_field(self, "binds", binds)
        set_field(self, "tmpfs", tmpfs)
        set_field(self, "_plan", plan)

    # -- its writedir ---------------------------------------------------------

    @overload
    def changes(self, format: None = None) -> list[Change]: ...
    @overload
    def changes(self, format: Literal["docker"]) -> list[str]: ...
    def changes(self, format: str | None = None) -> list[Change] | list[str]:
        """What the programs run in this container changed so far: its
        ``writedir`` read against its layers (as :meth:`Process.changes`, for a
        writedir kept across runs)."""
        from . import _changes

        _changes.check_format(format)
        if self._plan.writedir_path is None:
            raise ValueError("Container.changes() needs a writedir (see Process.changes())")
        upper = os.open(self._plan.writedir_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _changes.report(
                upper, self._plan.layer_paths, self._mount_points(), format, self._plan.xattr_prefix
            )
        finally:
            os.close(upper)

    def _mount_points(self) -> frozenset[bytes]:
        """Where pycontain mounts in the writable layer (not the program's changes)."""
        from . import _changes

        mounts = self._plan.mounts
        return (
            _changes.MOUNT_POINTS
            | {target for _, target, _ in mounts.binds}
            | {target for target, _, _ in mounts.tmpfs}
        )

    # -- value semantics ----------------------------------------------------

    def replace(self, **changes: Unpack[ContainerFields]) -> Container:
        """A new Container with ``changes`` applied (checked as when made)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The fields that differ from their defaults: ``Container(**c.settings())`` equals c."""
        return {
            field.name: getattr(self, field.name)
            for field in _FIELDS
            if field.name == "layers" or getattr(self, field.name) != field.default
        }

    def __repr__(self) -> str:
        shown = [
            f"{name}={list(value) if name in ('layers', 'groups') else value!r}"
            for name, value in self.settings().items()
        ]
        return f"Container({', '.join(shown)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Checked again where it is unpickled: that machine's directories.
        return (_restore, (self.settings(),))

    # -- running programs ---------------------------------------------------

    def spawn(
        self,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        **program: Unpack[ProgramSettings],
    ) -> Process:
        """Start ``args`` in a new container made from this one; a :class:`pycontain.Process`.

        Keywords are those of ``subprocess.Popen`` that describe the program
        (``executable``, ``cwd``, ``env``, the streams, ``pass_fds``,
        ``text``, ...), plus ``pre_exec`` and ``timeout`` (bounds the spawn).
        """
        from ._process import Process

        return Process._spawn(self, args, **program)

    def run(
        self,
        args: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        input: Any = None,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        **program: Unpack[RunProgramSettings],
    ) -> CompletedProcess:
        """As ``subprocess.run``, in a new container made from this one."""
        from ._run import run_in

        return run_in(
            self,
            args,
            input=input,
            capture_output=capture_output,
            timeout=timeout,
            check=check,
            **program,
        )

    async def create_subprocess_exec(
        self,
        program: StrOrBytesPath,
        *args: StrOrBytesPath,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        limit: int = 2**16,
        **settings: Unpack[AsyncProgramSettings],
    ) -> AsyncProcess:
        """As ``asyncio.create_subprocess_exec``, in a new container made from this one."""
        from ._asyncio import create_subprocess_exec_in

        return await create_subprocess_exec_in(
            self, program, *args, stdin=stdin, stdout=stdout, stderr=stderr, limit=limit, **settings
        )

    def call(
        self, fn: Callable[..., _T], /, *args: Any, **program: Unpack[CallProgramSettings]
    ) -> _T:
        """``fn(*args)`` in a new container made from this one; its result (see pycontain.call)."""
        from ._call import call_in

        return call_in(self, fn, args, **program)

    async def call_async(
        self, fn: Callable[..., _T], /, *args: Any, **program: Unpack[CallProgramSettings]
    ) -> _T:
        """As :meth:`call`, awaited: the loop runs on while ``fn`` runs."""
        from ._call import call_in_async

        return await call_in_async(self, fn, args, **program)


_FIELDS = tuple(field for field in dataclasses.fields(Container) if field.init)
FIELD_NAMES = frozenset(field.name for field in _FIELDS)


def _restore(settings: dict[str, Any]) -> Container:
    return Container(**settings)


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _items(items: Iterable[Any], what: str) -> tuple[Any, ...]:
    """binds or tmpfs as a tuple (hashable, compared by value), paths as os.fspath."""
    if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Iterable):
        return items  # type: ignore[return-value]  # _mounts.check says what is wrong
    if isinstance(items, tuple) and items and not isinstance(items[0], tuple):
        return items  # one item instead of a list: _mounts.check says so
    return tuple(
        tuple(_fspath(part) for part in item) if isinstance(item, tuple) else _fspath(item)
        for item in items
    )


def _groups(groups: Iterable[int]) -> tuple[int, ...]:
    if isinstance(groups, (str, bytes, bytearray)) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a list of group ids, not {type(groups).__name__}")
    return tuple(groups)


def split(
    entry_point: str,
    layers: Iterable[StrOrBytesPath],
    settings: Mapping[str, Any],
    program_keys: Iterable[str],
) -> tuple[Container, dict[str, Any]]:
    """A shorthand's keywords -> (its Container, the program's keywords).

    ``program_keys``: the keys of the entry point's program TypedDict.
    """
    container: dict[str, Any] = {}
    program: dict[str, Any] = {}
    allowed = frozenset(program_keys)
    for key, value in settings.items():
        if key in FIELD_NAMES:
            container[key] = value
        elif key in allowed:
            program[key] = value
        else:
            raise TypeError(f"{entry_point}() got an unexpected keyword argument {key!r}")
    return Container(layers=layers, **container), program


# -- one declaration, checked ---------------------------------------------------------------


def declared_types(settings: type) -> dict[str, str]:
    """A TypedDict's keys and their types, as written."""
    return {
        name: getattr(annotation, "__forward_arg__", str(annotation))
        for name, annotation in settings.__annotations__.items()
    }


def check_declaration(settings: type, declared: Callable[..., Any]) -> None:
    """Fail at import if the TypedDict ``settings`` (for type checkers) and the
    keyword-only parameters of ``declared`` (the one place with defaults) differ."""
    parameters = {
        parameter.name: str(parameter.annotation)
        for parameter in inspect.signature(declared).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    if declared_types(settings) != parameters:
        raise AssertionError(
            f"pycontain: {settings.__name__} {declared_types(settings)} differs from "
            f"{declared.__qualname__}'s keywords {parameters}"
        )


check_declaration(ContainerFields, Container)

F = TypeVar("F", bound=Callable[..., Any])


def keyword_signature(function: F, settings: type, *sources: Callable[..., Any]) -> F:
    """Give ``function``, whose ``**kwargs`` are ``Unpack[settings]``, the
    signature that lists those keywords, for help() and inspect: each one's
    parameter (with its default) as the sources declare it, replacing
    ``**kwargs``. Testing knobs (a leading underscore) stay out."""
    signature = inspect.signature(function)
    parameters = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    wanted = {name for name in settings.__annotations__ if not name.startswith("_")}
    wanted -= {parameter.name for parameter in parameters}
    for source in sources:
        for parameter in inspect.signature(source).parameters.values():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name in wanted:
                wanted.discard(parameter.name)
                parameters.append(parameter)
    if wanted:
        raise AssertionError(f"pycontain: no declaration of {sorted(wanted)}")
    function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return function
