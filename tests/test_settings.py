"""Declarative settings applied in C inside the container: hostname, rlimits,
groups, gid, uid, umask; and their checks, which raise before anything runs."""

from __future__ import annotations

import os
import resource
import socket
import warnings

import pytest
from helpers import BB_ENV, NEEDS_OTHER_IDS, TIMEOUT

import pycontain
from pycontain import PIPE


def out_of(rootfs, script, **kwargs) -> str:
    """Run ``sh -c script``; returns its stdout, asserts exit 0 and no stderr."""
    kwargs.setdefault("env", BB_ENV)
    with pycontain.Process(
        ["/bin/sh", "-c", script], layers=[rootfs], stdout=PIPE, stderr=PIPE, text=True, **kwargs
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert (p.returncode, err) == (0, "")
    return out


def status_fields(text: str) -> dict[str, list[str]]:
    """The lines of /proc/self/status as name -> values."""
    fields = {}
    for line in text.splitlines():
        name, _, values = line.partition(":")
        fields[name] = values.split()
    return fields


# -- hostname -------------------------------------------------------------------------


def test_hostname(rootfs, legacy):
    host = socket.gethostname()
    out = out_of(
        rootfs,
        "hostname; cat /proc/sys/kernel/hostname",
        hostname="box",
        _force_legacy_clone=legacy,
    )
    assert out == "box\nbox\n"
    assert socket.gethostname() == host


def test_default_hostname_is_a_copy_of_the_hosts(rootfs):
    assert out_of(rootfs, "hostname") == socket.gethostname() + "\n"


def test_hostname_change_inside_does_not_reach_the_host(rootfs):
    host = socket.gethostname()
    # Changing it needs CAP_SYS_ADMIN, which only privileged=True keeps.
    assert (
        out_of(rootfs, "hostname changed-inside; hostname", privileged=True) == "changed-inside\n"
    )
    assert socket.gethostname() == host


@pytest.mark.parametrize("name", ["a" * 64, b"bytes-name", "é" * 32, "with.dots-and-dashes"])
def test_hostname_forms(rootfs, name):
    expected = name if isinstance(name, str) else name.decode()
    assert out_of(rootfs, "cat /proc/sys/kernel/hostname", hostname=name) == expected + "\n"


@pytest.mark.parametrize(
    "name, error",
    [
        ("", ValueError),
        (b"", ValueError),
        ("a" * 65, ValueError),
        ("é" * 33, ValueError),
        ("a\0b", ValueError),
        (b"a\0", ValueError),
        (123, TypeError),
    ],
)
def test_bad_hostname(rootfs, name, error, no_leaks):
    with pytest.raises(error):
        pycontain.Process(["/bin/true"], layers=[rootfs], hostname=name, stdout=PIPE)


# -- rlimits ----------------------------------------------------------------------------


def test_rlimit_nofile_soft_and_hard(rootfs, legacy):
    host = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = out_of(
        rootfs, "ulimit -n; ulimit -Hn", rlimits={"nofile": (100, 200)}, _force_legacy_clone=legacy
    )
    assert out == "100\n200\n"
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == host


def test_rlimit_core_zero_in_proc_limits(rootfs):
    out = out_of(rootfs, "grep 'Max core file size' /proc/self/limits", rlimits={"core": 0})
    assert out.split()[4:6] == ["0", "0"]


def test_several_rlimits_and_key_forms(rootfs):
    script = "ulimit -n; ulimit -Hn; ulimit -t; ulimit -Ht; ulimit -s; ulimit -Hs"
    rlimits = {
        resource.RLIMIT_NOFILE: 64,  # an int key; an int value: soft = hard
        "CPU": (10, None),  # any case; None: unlimited
        "stack": (4096 * 1024, 8192 * 1024),
    }
    out = out_of(rootfs, script, rlimits=rlimits)
    assert out.split() == ["64", "64", "10", "unlimited", "4096", "8192"]


def test_rlimit_is_enforced(rootfs):
    # With at most 5 fds, fd 7 cannot be opened; fd 4 can.
    script_ok, script_too_high = "exec 4</dev/null", "exec 7</dev/null"
    assert out_of(rootfs, script_ok + " && echo ok", rlimits={"nofile": 5}) == "ok\n"
    with pycontain.Process(
        ["/bin/sh", "-c", script_too_high],
        layers=[rootfs],
        env=BB_ENV,
        stderr=PIPE,
        rlimits={"nofile": 5},
    ) as p:
        _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode != 0 and err


@pytest.mark.needs_root(
    "an rlimit the kernel refuses, met in the spawn: rootless mode refuses raising a hard "
    "limit before spawning (tests/test_rootless.py)"
)
def test_rlimit_above_what_the_kernel_allows_fails_the_spawn(rootfs, no_leaks):
    with open("/proc/sys/fs/nr_open") as f:
        nr_open = int(f.read())
    with pytest.raises(PermissionError) as info:
        pycontain.Process(
            ["/bin/true"], layers=[rootfs], stdout=PIPE, rlimits={"nofile": nr_open + 1}
        )
    assert isinstance(info.value, pycontain.SpawnError)
    assert info.value.step == "rlimit"


@pytest.mark.parametrize(
    "rlimits, error",
    [
        ({"nosuch": 1}, ValueError),
        ({999: 1}, ValueError),
        ({"nofile": (10, 5)}, ValueError),
        ({"nofile": (None, 5)}, ValueError),  # unlimited soft over a finite hard
        ({"nofile": -2}, ValueError),
        ({"nofile": (1, -5)}, ValueError),
        ({"nofile": "1"}, TypeError),
        ({"nofile": 1.5}, TypeError),
        ({"nofile": True}, TypeError),
        ({"nofile": (1, 2, 3)}, ValueError),
        ({1.5: 1}, ValueError),
    ],
)
def test_bad_rlimits(rootfs, rlimits, error, no_leaks):
    with pytest.raises(error):
        pycontain.Process(["/bin/true"], layers=[rootfs], rlimits=rlimits, stdout=PIPE)


# -- uid, gid, groups --------------------------------------------------------------------


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_uid_gid_groups(rootfs, legacy):
    out = out_of(
        rootfs, "id -u; id -g; id -G", uid=1000, gid=1001, groups=[5, 6], _force_legacy_clone=legacy
    )
    assert out.split("\n") == ["1000", "1001", "1001 5 6", ""]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_all_three_ids_are_set(rootfs):
    fields = status_fields(
        out_of(rootfs, "cat /proc/self/status", uid=1234, gid=4321, groups=[7, 8, 9])
    )
    assert fields["Uid"] == ["1234"] * 4  # real, effective, saved, filesystem
    assert fields["Gid"] == ["4321"] * 4
    assert fields["Groups"] == ["7", "8", "9"]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_uid_takes_away_root(rootfs):
    with pycontain.Process(
        ["/bin/sh", "-c", "touch /not-allowed"], layers=[rootfs], env=BB_ENV, uid=1000, stderr=PIPE
    ) as p:
        _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode != 0
    assert b"Permission denied" in err


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_uid_alone_keeps_gid(rootfs):
    assert out_of(rootfs, "id -u; id -g", uid=4242).split() == ["4242", "0"]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_gid_alone_keeps_uid(rootfs):
    assert out_of(rootfs, "id -u; id -g", gid=4242).split() == ["0", "4242"]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_empty_groups_drops_every_supplementary_group(rootfs):
    fields = status_fields(out_of(rootfs, "cat /proc/self/status", gid=50, groups=[]))
    assert fields["Groups"] == []
    assert out_of(rootfs, "id -G", gid=50, groups=[]) == "50\n"


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_many_groups(rootfs):
    groups = list(range(100, 400))
    fields = status_fields(out_of(rootfs, "cat /proc/self/status", groups=groups))
    assert fields["Groups"] == [str(g) for g in groups]


def test_uid_and_gid_minus_one_and_zero(rootfs):
    assert out_of(rootfs, "id -u; id -g", uid=-1, gid=-1).split() == ["0", "0"]
    assert out_of(rootfs, "id -u; id -g", uid=0, gid=0).split() == ["0", "0"]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_largest_uid(rootfs):
    assert out_of(rootfs, "id -u", uid=2**32 - 2) == f"{2**32 - 2}\n"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"uid": -5}, ValueError),
        ({"uid": 2**32 - 1}, ValueError),
        ({"uid": 2**32}, ValueError),
        ({"uid": "root"}, TypeError),
        ({"uid": 1.0}, TypeError),
        ({"uid": True}, TypeError),
        ({"gid": -2}, ValueError),
        ({"gid": "0"}, TypeError),
        ({"gid": 1.5}, TypeError),
        ({"groups": [-3]}, ValueError),
        ({"groups": [-1]}, ValueError),
        ({"groups": [1.5]}, TypeError),
        ({"groups": ["wheel"]}, TypeError),
        ({"groups": "abc"}, TypeError),
        ({"groups": 5}, TypeError),
    ],
)
def test_bad_ids(rootfs, kwargs, error, no_leaks):
    with pytest.raises(error):
        pycontain.Process(["/bin/true"], layers=[rootfs], stdout=PIPE, **kwargs)


# -- umask ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, shown, file_mode", [(0o027, "0027", "640"), (0, "0000", "666"), (0o777, "0777", "0")]
)
def test_umask(rootfs, mask, shown, file_mode, legacy):
    host = os.umask(0o022)
    os.umask(host)
    out = out_of(rootfs, "umask; touch /f; stat -c %a /f", umask=mask, _force_legacy_clone=legacy)
    assert out.split() == [shown, file_mode]
    current = os.umask(0o022)
    os.umask(current)
    assert current == host


def test_umask_minus_one_is_the_callers(rootfs):
    old = os.umask(0o063)
    try:
        assert out_of(rootfs, "umask", umask=-1) == "0063\n"
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [-2, 0o1000, "022", 1.5, True, [0o22]])
def test_bad_umask(rootfs, mask, no_leaks):
    with pytest.raises((ValueError, TypeError)):
        pycontain.Process(["/bin/true"], layers=[rootfs], umask=mask, stdout=PIPE)


# -- settings together, and on the fork path ---------------------------------------------


ALL = dict(
    hostname="allbox", rlimits={"nofile": (50, 60)}, uid=1000, gid=1001, groups=[3], umask=0o077
)
ALL_SCRIPT = "hostname; ulimit -n; ulimit -Hn; id -u; id -g; id -G; umask"
ALL_OUT = ["allbox", "50", "60", "1000", "1001", "1001 3", "0077", ""]


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_all_settings_together(rootfs, legacy):
    assert out_of(rootfs, ALL_SCRIPT, _force_legacy_clone=legacy, **ALL).split("\n") == ALL_OUT


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_all_settings_on_the_fork_path(rootfs):
    # A timeout or a callback takes the fork path: same settings, same result.
    assert out_of(rootfs, ALL_SCRIPT, timeout=TIMEOUT, **ALL).split("\n") == ALL_OUT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert out_of(rootfs, ALL_SCRIPT, pre_exec=lambda: None, **ALL).split("\n") == ALL_OUT


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_settings_are_applied_after_pre_exec(rootfs):
    def pre_exec():
        os.write(1, f"{os.getuid()} {len(os.listdir('/proc/self/fd'))}\n".encode())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = out_of(rootfs, "id -u", uid=1000, pre_exec=pre_exec)
    first, second = out.splitlines()
    assert first.split()[0] == "0"
    assert second == "1000"
