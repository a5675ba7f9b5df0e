"""A container's life: the init as PID 1 (signals, exit status, orphans),
dying with the owning process, its own session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import (
    BB_ENV,
    TIMEOUT,
    children_of,
    is_gone,
    is_init,
    proc_state,
    program_pid,
    wait_for_handler,
    wait_until,
)

import pycontain


def start(rootfs, args, **kwargs):
    return pycontain.Process(args, layers=[rootfs], env=BB_ENV, **kwargs)


def unique_seconds() -> str:
    """A sleep duration no other process on the machine uses: its argv finds it."""
    return f"{1000 + uuid.uuid4().int % 10**6}.{os.getpid()}"


def processes_with(*argv: str) -> list[int]:
    """Host pids of every process whose command line is exactly ``argv``."""
    wanted = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == wanted:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def group_and_session_of(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3])


# -- signals and exit status, as for a Popen child -------------------------------


def test_terminate_ends_sleep(rootfs, legacy):
    with start(rootfs, ["/bin/sleep", "100"], _force_legacy_clone=legacy) as p:
        p.terminate()
        assert p.wait(timeout=TIMEOUT) == -signal.SIGTERM


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
     signal.SIGUSR2, signal.SIGALRM, signal.SIGSEGV],
    ids=lambda sig: signal.Signals(sig).name,
)  # fmt: skip
def test_signals_are_forwarded_to_the_program(rootfs, sig):
    # Each of these ends `sleep` (default action) once it reaches it.
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        p.send_signal(sig)
        assert p.wait(timeout=TIMEOUT) == -sig


def test_winch_and_cont_reach_a_handler(rootfs):
    script = 'trap "echo winch" WINCH; trap "echo cont; exit 5" CONT; while :; do sleep 0.05; done'
    with start(rootfs, ["/bin/sh", "-c", script], stdout=pycontain.PIPE) as p:
        wait_for_handler(p.pid, signal.SIGCONT)
        p.send_signal(signal.SIGWINCH)
        assert p.stdout is not None
        assert p.stdout.readline() == b"winch\n"
        p.send_signal(signal.SIGCONT)
        assert p.stdout.readline() == b"cont\n"
        assert p.wait(timeout=TIMEOUT) == 5


@pytest.mark.parametrize("sig", [signal.SIGABRT, signal.SIGSEGV, signal.SIGKILL])
def test_a_program_killed_by_a_signal_from_inside_reports_it(rootfs, sig):
    # The program signals itself: as PID 1 it could not die of it (SIGKILL
    # from inside its namespace is ignored by a PID 1, SIGABRT too).
    with start(rootfs, ["/bin/sh", "-c", f"kill -{sig.name[3:]} $$"]) as p:
        assert p.wait(timeout=TIMEOUT) == -sig


def test_exit_codes_and_signals_map_as_for_popen(rootfs):
    cases = [f"exit {code}" for code in range(256)]
    cases += [f"kill -{name} $$" for name in ("ABRT", "SEGV", "TERM", "KILL", "USR1")]
    for script in cases:
        with start(rootfs, ["/bin/sh", "-c", script]) as p:
            code = p.wait(timeout=TIMEOUT)
        # The same shell, started by subprocess outside any container.
        expected = subprocess.run([f"{rootfs}/bin/sh", "-c", script], env=BB_ENV).returncode
        assert code == expected, script


def test_status_with_callbacks_too(rootfs):
    # The fork path (a callback) execs the same init.
    p = start(rootfs, ["/bin/sh", "-c", "kill -ABRT $$"], pre_exec=lambda: None)
    with p:
        assert p.wait(timeout=TIMEOUT) == -signal.SIGABRT
    assert is_gone(p.pid)


def test_without_init_the_program_is_pid_1(rootfs):
    with start(rootfs, ["/bin/sleep", "100"], init=False, die_with_parent=False) as p:
        assert not is_init(p.pid)
        p.terminate()  # dropped: PID 1 has no handler for it
        with pytest.raises(pycontain.TimeoutExpired):
            p.wait(timeout=0.3)


# -- the init's other duties ---------------------------------------------------------


def test_orphans_are_reaped(rootfs):
    # A double fork: the grandchild's parent exits at once, so it is
    # reparented to PID 1, which must reap it when it ends.
    script = "(sleep 0.2 &); (sleep 0.2 &); (sleep 0.2 &); sleep 100"
    with start(rootfs, ["/bin/sh", "-c", script]) as p:
        shell = program_pid(p.pid)
        assert wait_until(lambda: len(children_of(p.pid)) == 4)
        orphans = [pid for pid in children_of(p.pid) if pid != shell]
        assert wait_until(lambda: all(is_gone(pid) for pid in orphans))
        assert children_of(p.pid) == [shell]
        assert p.poll() is None


def test_the_rest_of_the_container_ends_with_the_program(rootfs):
    seconds = unique_seconds()
    script = f"sleep {seconds} & sleep {seconds} & sleep 0.3; exit 3"
    with start(rootfs, ["/bin/sh", "-c", script]) as p:
        assert wait_until(lambda: len(processes_with("sleep", seconds)) == 2)
        assert p.wait(timeout=TIMEOUT) == 3
        assert is_gone(p.pid)
    # No process of that container is left anywhere.
    assert processes_with("sleep", seconds) == []


def test_the_init_keeps_no_stdio_of_the_program(rootfs):
    # The program closes its stdin and stays: a writer must see EPIPE, as
    # with Popen, not a pipe held open by the init.
    with start(rootfs, ["/bin/sh", "-c", "exec 0<&-; sleep 100"], stdin=pycontain.PIPE) as p:
        assert p.stdin is not None
        shell = program_pid(p.pid)
        assert wait_until(lambda: not os.path.exists(f"/proc/{shell}/fd/0"))
        with pytest.raises(BrokenPipeError):
            for _ in range(100):
                p.stdin.write(b"x" * 65536)
                p.stdin.flush()


def test_init_refuses_to_run_outside_a_pid_namespace():
    # Its kill(-1, SIGKILL) means "the container" only as PID 1.
    init = os.path.join(os.path.dirname(pycontain.__file__), "pycontain-init")
    done = subprocess.run([init, "1", "-1", "1", "/bin/true", "true"], timeout=TIMEOUT)
    assert done.returncode == 127


# -- its own session ------------------------------------------------------------------


@pytest.mark.parametrize("new_session", [True, False])
def test_own_process_group(rootfs, new_session):
    # A process group led by the init (and a session, when this process has
    # a controlling terminal: csrc/privileges.c); new_session=False: ours.
    with start(rootfs, ["/bin/sleep", "100"], new_session=new_session) as p:
        group, session = group_and_session_of(program_pid(p.pid))
        if new_session:
            assert group == p.pid
            assert group != os.getpgid(0)
        else:
            assert (group, session) == (os.getpgid(0), os.getsid(0))


KILL_ZERO = """
import os, signal, sys, time
import pycontain
received = []
signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
code = pycontain.run(["/bin/sh", "-c", "kill -USR1 0"], layers=[sys.argv[1]],
                     env={"PATH": "/bin"}, new_session=sys.argv[2] == "1").returncode
time.sleep(0.2)
print(code, len(received))
"""


@pytest.mark.parametrize("new_session", [True, False])
def test_kill_zero_from_inside_reaches_no_host_process(rootfs, new_session):
    # In a Python of its own, leader of a process group of its own: with
    # new_session=False (the control) the signal does reach its group.
    done = subprocess.run(
        [sys.executable, "-c", KILL_ZERO, rootfs, "1" if new_session else "0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,
    )
    assert done.stderr == ""
    # The shell is in the group it signals, and dies of it (-10).
    assert done.stdout.split() == [str(-signal.SIGUSR1), "0" if new_session else "1"]


# -- dying with the owner ------------------------------------------------------------

OWNER = """
import sys, pycontain
hooks = {"pre_exec": lambda: None} if sys.argv[4] == "fork" else {}
p = pycontain.Process(["/bin/sleep", sys.argv[2]], layers=[sys.argv[1]], env={"PATH": "/bin"},
                      die_with_parent=sys.argv[3] == "1", **hooks)
print(p.pid, flush=True)
sys.stdin.read()
"""


def _start_owner(rootfs, seconds, die_with_parent, path="clone"):
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, rootfs, seconds, "1" if die_with_parent else "0", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    init = int(owner.stdout.readline())
    assert wait_until(lambda: processes_with("/bin/sleep", seconds) != [])
    return owner, init


@pytest.mark.parametrize("path", ["clone", "fork"])
def test_a_killed_owner_leaves_no_container_process(rootfs, path):
    # "fork": a callback takes the fork path, whose helper also holds the
    # owner's pidfd for a moment.
    seconds = unique_seconds()
    owner, init = _start_owner(rootfs, seconds, die_with_parent=True, path=path)
    program = processes_with("/bin/sleep", seconds)
    owner.kill()
    owner.wait()
    killed_at = time.monotonic()
    assert wait_until(lambda: processes_with("/bin/sleep", seconds) == [], timeout=1.0)
    # The init may stay a zombie until whoever inherited it (the machine's
    # init, or a subreaper) reaps it; it runs nothing.
    assert wait_until(lambda: proc_state(init) in (None, "Z"), 1.0)
    assert all(is_gone(pid) for pid in program)
    assert time.monotonic() - killed_at <= 1.0


def test_die_with_parent_false_outlives_the_owner(rootfs):
    seconds = unique_seconds()
    owner, init = _start_owner(rootfs, seconds, die_with_parent=False)
    try:
        owner.kill()
        owner.wait()
        time.sleep(1.0)
        # Still there, found as the README says: an init whose child runs it.
        assert is_init(init)
        assert [program_pid(init)] == processes_with("/bin/sleep", seconds)
    finally:
        # Ours (found by its unique argv): end it. Killing the init ends
        # everything in its container.
        if is_init(init) and processes_with("/bin/sleep", seconds):
            os.kill(init, signal.SIGKILL)
    assert wait_until(lambda: processes_with("/bin/sleep", seconds) == [])


def test_a_thread_that_spawned_and_exited_does_not_end_the_container(rootfs):
    # PR_SET_PDEATHSIG would fire here: it follows the spawning thread.
    spawned = []
    thread = threading.Thread(target=lambda: spawned.append(start(rootfs, ["/bin/sleep", "100"])))
    thread.start()
    thread.join()
    (p,) = spawned
    with p:
        time.sleep(0.3)
        assert p.poll() is None
        assert proc_state(program_pid(p.pid)) in ("S", "R")


def test_lifecycle_settings_are_container_fields(rootfs):
    box = pycontain.Container(layers=[rootfs], init=False, die_with_parent=False)
    assert box.settings() == {"layers": (rootfs,), "init": False, "die_with_parent": False}
    assert pycontain.Container(layers=[rootfs]).settings() == {"layers": (rootfs,)}
    with box.spawn(["/bin/sleep", "100"], env=BB_ENV) as p:
        assert not is_init(p.pid)
    with pytest.raises(ValueError, match="die_with_parent=True needs init=True"):
        box.replace(die_with_parent=True)
    # die_with_parent's default (None) follows init.
    assert pycontain.Container(layers=[rootfs], init=False).settings()["init"] is False
    quiet = pycontain.Container(layers=[rootfs], new_session=False)
    with quiet.spawn(["/bin/sleep", "100"], env=BB_ENV) as p:
        assert group_and_session_of(program_pid(p.pid))[0] == os.getpgid(0)


def test_lifecycle_keywords_are_checked(rootfs):
    with pytest.raises(ValueError, match="die_with_parent=True needs init=True"):
        start(rootfs, ["/bin/true"], init=False, die_with_parent=True)
    with pytest.raises(TypeError, match="init must be True or False"):
        start(rootfs, ["/bin/true"], init=1)
    with pytest.raises(TypeError, match="new_session must be True or False"):
        start(rootfs, ["/bin/true"], new_session="yes")
    with pytest.raises(TypeError, match="die_with_parent"):
        start(rootfs, ["/bin/true"], die_with_parent="no")


# -- a Jupyter kernel ----------------------------------------------------------------

JUPYTER_CELL = """
import pycontain
p = pycontain.Process(["/bin/sleep", SECONDS], layers=[ROOT], env={"PATH": "/bin"})
print(p.pid)
"""


def _run_cell(client, code: str) -> None:
    msg_id = client.execute(code)
    while True:
        message = client.get_iopub_msg(timeout=TIMEOUT)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        assert message["msg_type"] != "error", message["content"]
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return


@pytest.mark.parametrize("how", ["restart", "shutdown", "shutdown-now"])
def test_a_jupyter_kernel_restarted_or_shut_down_leaves_nothing(rootfs, how):
    manager = pytest.importorskip("jupyter_client.manager", reason="jupyter_client is missing")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed")
    seconds = unique_seconds()
    kernel, client = manager.start_new_kernel(kernel_name="python3")
    try:
        cell = f"ROOT = {rootfs!r}\nSECONDS = {seconds!r}\n" + JUPYTER_CELL
        _run_cell(client, cell)
        assert wait_until(lambda: processes_with("/bin/sleep", seconds) != [])
        if how == "restart":
            kernel.restart_kernel(now=False)
        else:
            kernel.shutdown_kernel(now=how == "shutdown-now")
        assert wait_until(lambda: processes_with("/bin/sleep", seconds) == [], timeout=1.0)
    finally:
        client.stop_channels()
        if kernel.is_alive():
            kernel.shutdown_kernel(now=True)


# -- the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("exec sleep 100", 128 + signal.SIGINT),
        ('trap "exit 7" INT; while :; do sleep 0.05; done', 7),
    ],
)
def test_the_cli_forwards_ctrl_c(rootfs, script, code):
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontain",
            "run",
            "--layer",
            rootfs,
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
        env={**os.environ, "PATH": "/bin"},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # The container's init is the CLI's child; its program, the shell.
        assert wait_until(lambda: any(is_init(pid) for pid in children_of(cli.pid)), TIMEOUT)
        (init,) = [pid for pid in children_of(cli.pid) if is_init(pid)]
        if "trap" in script:
            wait_for_handler(init, signal.SIGINT)
        else:
            program = program_pid(init)
            assert wait_until(lambda: proc_state(program) == "S")
        # As the terminal does: to the foreground process group, which the
        # container is not in.
        os.killpg(cli.pid, signal.SIGINT)
        assert cli.wait(timeout=TIMEOUT) == code, cli.stderr.read() if cli.stderr else ""
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_spawns_survive_a_closed_init_fd(rootfs):
    # A daemon that closes every fd closes pycontain's too: the next spawn
    # opens them again instead of failing.
    from pycontain import _lifecycle

    os.close(_lifecycle.init_executable())
    os.close(_lifecycle.owner_pidfd())
    with start(rootfs, ["/bin/sleep", "100"]) as p:
        assert is_init(p.pid)
        p.terminate()
        assert p.wait(timeout=TIMEOUT) == -signal.SIGTERM


def test_a_pids_limit_leaves_room_for_the_init(rootfs):
    with pytest.raises(ValueError, match="pycontain's init counts"):
        pycontain.Container(layers=[rootfs], limits={"pids": 1})
    # Without the init the program alone fits.
    pycontain.Container(layers=[rootfs], limits={"pids": 1}, init=False)


def test_rusage_counts_the_programs_orphans(rootfs):
    # The program leaves a burner behind and ends: the init kills and reaps
    # it, so its CPU time is in the container's rusage.
    with start(rootfs, ["/bin/sh", "-c", "(while :; do :; done) & exec sleep 0.5"]) as p:
        assert p.wait(timeout=TIMEOUT) == 0
    assert p.rusage is not None
    assert p.rusage.ru_utime + p.rusage.ru_stime > 0.05
