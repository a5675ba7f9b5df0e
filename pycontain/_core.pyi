"""Types of the C extension pycontain._core (see pycontain/_core.c)."""

from collections.abc import Callable
from typing import Any

DEFAULT_NAMESPACES: int
STEP_COUNT: int
CLONE_NEWNS: int
CLONE_NEWPID: int
CLONE_NEWNET: int
CLONE_NEWUTS: int
CLONE_NEWIPC: int
CLONE_NEWUSER: int
MESSAGE_ERROR: int
MESSAGE_EXEC_OK: int
MESSAGE_STATUS: int

class StepError(Exception):
    """args: (step: str, errno: int, detail: bytes, status: int)"""

def spawn(
    argv: list[bytes],
    envp: list[bytes],
    exec_paths: list[bytes],
    cwd: bytes | None,
    layer_paths: list[bytes],
    layer_fds: list[int],
    upper_path: bytes | None,
    upper_fd: int,
    work_path: bytes | None,
    work_fd: int,
    scratch_dir: bytes,
    namespaces: int,
    stdio: list[int],
    pass_fds: list[int],
    hostname: bytes | None,
    rlimits: list[tuple[int, int, int]],
    groups: list[int] | None,
    gid: int,
    uid: int,
    umask: int,
    force_legacy_clone: bool = ...,
    trace: Any = ...,
    pre_pivot: Callable[[], object] | None = ...,
    pre_exec: Callable[[], object] | None = ...,
    format_exception: Callable[[BaseException | None], tuple[int, bytes]] | None = ...,
    timeout_ms: int = ...,
    use_netns_pool: bool = ...,
    cgroup_fd: int = ...,
    cgroup_procs_fds: list[int] = ...,
    scratch_size: int = ...,
    dev_size: int = ...,
    dev_inodes: int = ...,
    shm_size: int = ...,
    binds: list[tuple[bytes, int, bytes, bool]] | None = ...,
    tmpfs: list[tuple[bytes, int, int]] | None = ...,
    force_resolve_walk: bool = ...,
    upper_socket: int = ...,
    privileged: bool = ...,
    capabilities: int = ...,
    last_capability: int = ...,
    seccomp: bytes | None = ...,
    init_fd: int = ...,
    init_argv: list[bytes] | None = ...,
    init_keep_fds: list[int] = ...,
    stay_in_caller_group: bool = ...,
    nice: int | None = ...,
    new_session: bool = ...,
    main: Callable[[], object] | None = ...,
    uid_map: bytes | None = ...,
    gid_map: bytes | None = ...,
) -> tuple[int, int, int]: ...
def wait_pidfd(
    pidfd: int, options: int, /
) -> tuple[int, int, tuple[float, float, *tuple[int, ...]]] | None: ...
def release(mntns: int, on_worker: bool = ..., /) -> bool: ...
def _clear_sighand_supported() -> bool: ...
def _set_fault(point: str, value: int, /) -> None: ...  # test builds only
def read_message(
    fd: int, /
) -> tuple[int, int, str, int, bytes, int, tuple[float, ...] | None] | None: ...
def step_names() -> tuple[str, ...]: ...
def netns_pool(size: int = ..., /) -> tuple[int, int, int, int]: ...
