"""Run an escape attempt against a throwaway root, never against the host's "/".

``attempt(params)`` starts a subprocess that enters a private mount namespace
(as a user other than root, in a user namespace of its own, where the
attempt's containers then run in rootless mode), mounts a fresh tmpfs, binds
into it what Python and pycontain need (read-only: /usr, /etc, the /lib
directories, this checkout with its .venv; a few device nodes; a fresh /proc,
or the host's in a user namespace), binds the test's own directories at their
usual paths, pivots into it, and only then runs the container described by
``params`` (see ATTEMPT below). If pycontain's confinement failed, what the container's set-up
wrote to "/" lands in that tmpfs, which vanishes with the subprocess; the
subprocess reports which new names appeared there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Builds the throwaway root at $1, pivots into it, then execs the rest of the
# arguments. Runs in a private mount namespace (unshare -m), so every mount
# here vanishes with the process.
SETUP = r"""
set -eu
new=$1; shift
ro_paths=$1; shift
rw_paths=$1; shift
mount -t tmpfs -o mode=0755,size=64m throwaway "$new"
cd "$new"
for top in /usr /etc /bin /sbin /lib /lib32 /lib64 /libx32; do
    if [ -L "$top" ]; then
        ln -s "$(readlink "$top")" ".$top"
    elif [ -d "$top" ]; then
        mkdir ".$top"
        mount --rbind "$top" ".$top"
        mount -o remount,bind,ro ".$top"
    fi
done
mkdir proc dev mnt tmp
chmod 1777 tmp
if [ "$(id -u)" = 0 ] && [ -z "${THROWAWAY_IN_USERNS:-}" ]; then
    mount -t proc proc proc
else
    # In a user namespace (a rootless run): no PID namespace of its own to
    # mount a proc for, so the host's, with what is mounted below it; and
    # the host's /sys, since the kernel lets a user namespace mount sysfs
    # (the containers' rootless mode) only where one is fully visible.
    mount --rbind /proc proc
    mkdir sys
    mount --rbind /sys sys
fi
for node in null zero full random urandom tty; do
    touch "dev/$node"
    mount --bind "/dev/$node" "dev/$node"
done
old_ifs=$IFS
IFS=:
for path in $ro_paths; do
    mkdir -p ".$path"
    mount --bind "$path" ".$path"
    mount -o remount,bind,ro ".$path"
done
for path in $rw_paths; do
    mkdir -p ".$path"
    mount --bind "$path" ".$path"
done
IFS=$old_ifs
mkdir .old
pivot_root . .old
cd /
umount -l /.old
rmdir /.old
exec "$@"
"""

# Runs inside the throwaway root. params: layers, args, env, walk (force the
# component-by-component resolution), chdir_in_pre_pivot, replace_root_fd_with
# (a pre_pivot that puts that directory on pycontain's root fd), write_in_pre_exec,
# namespaces (call _core.spawn directly with these flags), container (more
# Container keywords, e.g. binds), watch (directories whose new entries to
# report).
ATTEMPT = r"""
import json, os, sys
import pycontain
from pycontain import _core, _spawn

params = json.loads(sys.argv[1])
_spawn._force_resolve_walk = params.get("walk", False)
in_userns = os.environ.get("THROWAWAY_IN_USERNS") == "1"
pycontain.set_netns_pool(0)
watch = ["/", *params.get("watch", [])]
before = {path: set(os.listdir(path)) for path in watch}
result = {"ran": False, "error": None, "output": "", "pre_exec": None}
kwargs = {}
container = params.get("container", {})
if in_userns:
    container.setdefault("userns", True)  # rootless mode, as for the user outside
for key in ("binds", "tmpfs"):  # JSON made the tuples lists
    if key in container:
        container[key] = [tuple(item) for item in container[key]]
if params.get("chdir_in_pre_pivot"):
    kwargs["pre_pivot"] = lambda: os.chdir(params["chdir_in_pre_pivot"])
if params.get("replace_root_fd_with"):
    def pre_pivot():
        # Find the fd pycontain holds on the container's root (the current
        # directory now) and put another directory on its number.
        here = os.stat(".")
        other = os.open(params["replace_root_fd_with"], os.O_PATH | os.O_DIRECTORY)
        for fd in range(3, 256):
            try:
                info = os.fstat(fd)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (here.st_dev, here.st_ino) and fd != other:
                os.dup2(other, fd)
        os.chdir(params["replace_root_fd_with"])
    kwargs["pre_pivot"] = pre_pivot
if params.get("write_in_pre_exec"):
    def pre_exec():
        with open(params["write_in_pre_exec"], "w") as f:
            f.write("escaped\n")
    kwargs["pre_exec"] = pre_exec
try:
    if "namespaces" in params:
        plan = pycontain.Container(layers=params["layers"])._plan
        prepared = _spawn.prepare(plan, params["args"], executable=None, cwd=None,
                                  env=params["env"])
        try:
            pid, pidfd, _ = _core.spawn(
                argv=prepared.argv, envp=prepared.envp, exec_paths=prepared.exec_paths,
                cwd=None, layer_paths=list(plan.layer_paths), layer_fds=prepared.layer_fds,
                upper_path=None, upper_fd=-1, work_path=None, work_fd=-1,
                scratch_dir=_spawn.scratch_dir(), namespaces=params["namespaces"],
                stdio=[-1, -1, -1], pass_fds=[], hostname=None, rlimits=[], groups=None,
                gid=-1, uid=-1, umask=-1, use_netns_pool=False,
                timeout_ms=params.get("timeout_ms", -1))
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            os.close(pidfd)
            result["ran"] = True
        except _core.StepError as error:
            step, err, detail, _ = error.args
            result["error"] = {"step": step, "errno": err, "filename": detail.decode()}
        finally:
            prepared.release()
    else:
        with pycontain.Process(params["args"], layers=params["layers"], env=params["env"],
                               stdout=pycontain.PIPE, stderr=pycontain.STDOUT,
                               **container, **kwargs) as p:
            result["output"] = p.stdout.read().decode(errors="replace")
            p.wait(30)
        result["ran"] = True
except pycontain.SpawnError as error:
    result["error"] = {"step": error.step, "errno": error.errno, "filename": error.filename,
                       "message": str(error)}
result["new"] = {path: sorted(set(os.listdir(path)) - before[path]) for path in watch}
print(json.dumps(result))
"""


def _python_paths() -> list[str]:
    """This Python's installation and virtual environment, when outside /usr."""
    paths = []
    for prefix in {sys.base_prefix, sys.prefix}:
        real = os.path.realpath(prefix)
        if not real.startswith(("/usr/", CHECKOUT + "/")) and real != "/usr":
            paths.append(real)
    return sorted(paths)


def attempt(
    params: dict[str, Any], *, newroot: str, read_only: list[str], writable: list[str]
) -> dict[str, Any]:
    """Run the attempt in a throwaway root built on the empty directory ``newroot``.

    ``read_only`` and ``writable`` are host directories bound at their own
    paths (no ':' in them). Returns the attempt's report.
    """
    missing = [tool for tool in ("unshare", "mount", "pivot_root") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the throwaway root needs util-linux's {', '.join(missing)}")
    os.makedirs(newroot, exist_ok=True)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYCONTAIN_NETNS_POOL": "0",
    }
    if "PYTHONPATH" in os.environ:  # e.g. to run these tests against another build
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    # As any other user, the throwaway root is built in a user namespace of
    # its own, in which this user is root; the attempt's containers then run
    # in rootless mode (userns=True: a user namespace inside that one).
    rootless = os.geteuid() != 0
    if rootless:
        env["THROWAWAY_IN_USERNS"] = "1"
    completed = subprocess.run(
        [
            "unshare",
            *(["--user", "--map-root-user"] if rootless else []),
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SETUP,
            "setup",
            newroot,
            ":".join([*_python_paths(), CHECKOUT, *read_only]),
            ":".join(writable),
            sys.executable,
            "-c",
            ATTEMPT,
            json.dumps(params),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])
