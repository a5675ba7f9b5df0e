"""Capabilities, no_new_privs, privileged=True, and their checks (docs/security.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import BB_ENV, NEEDS_OTHER_IDS, TIMEOUT

import pycontain
from pycontain import PIPE, _privileges, _seccomp, _userns

STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


def status_of(rootfs, **kwargs) -> dict[str, int]:
    """The capability, no_new_privs and seccomp fields of the program's /proc/self/status."""
    kwargs.setdefault("env", BB_ENV)
    with pycontain.Process(
        ["/bin/cat", "/proc/self/status"],
        layers=[rootfs],
        stdout=PIPE,
        stderr=PIPE,
        text=True,
        **kwargs,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err
    return parse_status(out)


def parse_status(text: str) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {
        name: int(fields[name].strip(), 16 if name.startswith("Cap") else 10)
        for name in STATUS_FIELDS
    }


def mask(*names: str) -> int:
    return _privileges.capability_mask(names)


def host_status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return parse_status(f.read())


DEFAULT = _privileges.capability_mask(pycontain.DEFAULT_CAPABILITIES)


def every_capability() -> dict[str, int]:
    """What privileged=True and callbacks keep: this process's sets; in rootless
    mode, every capability of the container's own user namespace."""
    host = host_status()
    if _userns.caller_has_sys_admin():
        return host
    full = (1 << (_privileges.last_capability() + 1)) - 1
    return {**host, "CapPrm": full, "CapEff": full, "CapBnd": full}


def test_default_set_is_podmans():
    assert {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    } == pycontain.DEFAULT_CAPABILITIES
    for dangerous in [
        "SYS_ADMIN",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_PTRACE",
        "SYS_BOOT",
        "SYS_TIME",
        "MKNOD",
        "NET_ADMIN",
    ]:
        assert f"CAP_{dangerous}" not in pycontain.DEFAULT_CAPABILITIES


def test_root_keeps_the_default_set_only(rootfs):
    assert status_of(rootfs) == {
        "CapInh": 0,
        "CapPrm": DEFAULT,
        "CapEff": DEFAULT,
        "CapBnd": DEFAULT,
        "CapAmb": 0,
        "NoNewPrivs": 1,
        "Seccomp": 2,  # SECCOMP_MODE_FILTER
    }


@pytest.mark.parametrize("name", ["CAP_NET_RAW", "net_raw", "NET_RAW", "Cap_Net_Raw"])
def test_capabilities_chooses_the_set(rootfs, name):
    status = status_of(rootfs, capabilities=[*pycontain.DEFAULT_CAPABILITIES, name])
    expected = DEFAULT | 1 << 13  # CAP_NET_RAW
    assert (status["CapPrm"], status["CapEff"], status["CapBnd"]) == (expected,) * 3


def test_no_capabilities_at_all(rootfs):
    status = status_of(rootfs, capabilities=[])
    assert [status[f] for f in STATUS_FIELDS[:5]] == [0] * 5
    # Root without CAP_DAC_OVERRIDE (nor CAP_DAC_READ_SEARCH) cannot read a
    # file whose mode forbids it (its own: in rootless mode the only owner).
    with pycontain.Process(
        ["/bin/sh", "-c", "touch /f && chmod 000 /f && cat /f"],
        layers=[rootfs],
        env=BB_ENV,
        capabilities=[],
        stderr=PIPE,
    ) as p:
        _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode != 0 and b"Permission denied" in err


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_a_non_root_uid_ends_with_no_capabilities(rootfs):
    status = status_of(rootfs, uid=1000, gid=1000)
    assert [status[f] for f in STATUS_FIELDS[:5]] == [0] * 5
    assert status["NoNewPrivs"] == 1


@pytest.mark.needs_root(NEEDS_OTHER_IDS)
def test_a_non_root_uid_keeps_capabilities_asked_for_in_its_ambient_set(rootfs):
    status = status_of(rootfs, uid=1000, gid=1000, capabilities=["net_bind_service"])
    bind = mask("CAP_NET_BIND_SERVICE")
    assert status == {
        "CapInh": bind,
        "CapPrm": bind,
        "CapEff": bind,
        "CapBnd": bind,
        "CapAmb": bind,
        "NoNewPrivs": 1,
        "Seccomp": 2,
    }


def test_privileged_keeps_every_capability(rootfs):
    host = every_capability()
    status = status_of(rootfs, privileged=True)
    assert status == {
        "CapInh": host["CapInh"],
        "CapPrm": host["CapPrm"],
        "CapEff": host["CapEff"],
        "CapBnd": host["CapBnd"],
        "CapAmb": host["CapAmb"],
        "NoNewPrivs": 0,
        "Seccomp": 0,
    }


def test_privileged_with_a_filter_of_ones_own(rootfs):
    allow_all = _seccomp.assemble([(0x06, 0, 0, 0x7FFF0000)])  # ret SECCOMP_RET_ALLOW
    status = status_of(rootfs, privileged=True, seccomp=allow_all)
    assert (status["CapEff"], status["Seccomp"]) == (every_capability()["CapEff"], 2)


def test_callbacks_run_with_every_capability_and_the_program_without(rootfs):
    # docs/security.md: pre_exec runs before capabilities are dropped.
    def report():
        with open("/proc/self/status") as f:
            os.write(1, f"callback {parse_status(f.read())['CapEff']}\n".encode())

    with pycontain.Process(
        ["/bin/sh", "-c", "echo program $(grep CapEff /proc/self/status | cut -f2)"],
        layers=[rootfs],
        env=BB_ENV,
        pre_exec=report,
        stdout=PIPE,
        text=True,
    ) as p:
        out, _ = p.communicate(timeout=TIMEOUT)
    callback, program = out.splitlines()
    assert callback == f"callback {every_capability()['CapEff']}"
    assert int(program.split()[1], 16) == DEFAULT


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"capabilities": ["CAP_NOSUCH"]}, ValueError, "unknown capability 'CAP_NOSUCH'"),
        ({"capabilities": ["sys_everything"]}, ValueError, "unknown capability"),
        ({"capabilities": "CAP_NET_RAW"}, TypeError, "not a single string"),
        ({"capabilities": [13]}, TypeError, "not int"),
        ({"privileged": True, "capabilities": []}, ValueError, "do not pass capabilities"),
        ({"privileged": 1}, TypeError, "privileged must be True or False"),
        ({"seccomp": "strict"}, TypeError, "seccomp must be 'default', None or bytes"),
        ({"seccomp": b"1234567"}, ValueError, "not 7 bytes"),
        ({"seccomp": b""}, ValueError, "1 to 4096 instructions"),
        ({"seccomp": bytes(8 * 4097)}, ValueError, "1 to 4096 instructions"),
        ({"network": "pasta"}, ValueError, "network must be one of 'none', 'host'"),
        (
            {"privileged": True, "uid": 1000, "seccomp": _seccomp.default_filter()},
            ValueError,
            "needs no_new_privs",
        ),
        ({"network": None}, ValueError, "network must be one of"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(rootfs, kwargs, error, message):
    with pytest.raises(error, match=message):
        pycontain.Process(["/bin/true"], layers=[rootfs], env=BB_ENV, **kwargs)


def test_every_capability_name_is_known_in_both_forms():
    for number, name in enumerate(pycontain.CAPABILITIES):
        if number <= _privileges.last_capability():
            assert _privileges.capability_number(name) == number
            assert _privileges.capability_number(name[4:].lower()) == number


@pytest.mark.parametrize("privileged", [False, True])
def test_root_cannot_raise_its_hard_limits_back(rootfs, privileged):
    # Raising a hard limit needs CAP_SYS_RESOURCE, which only privileged=True
    # keeps. (RLIMIT_NPROC binds no root either way: the kernel exempts uid 0
    # of the initial user namespace whatever its capabilities.)
    if privileged and not host_status()["CapEff"] & mask("CAP_SYS_RESOURCE"):
        pytest.skip("this process has no CAP_SYS_RESOURCE to keep")
    with pycontain.Process(
        ["/bin/sh", "-c", "ulimit -n 128 && ulimit -n"],
        layers=[rootfs],
        env=BB_ENV,
        rlimits={"nofile": (64, 64)},
        privileged=privileged,
        stdout=PIPE,
        stderr=PIPE,
        text=True,
    ) as p:
        out, err = p.communicate(timeout=TIMEOUT)
    if privileged:
        assert (p.returncode, out) == (0, "128\n")
    else:
        assert p.returncode != 0 and "Operation not permitted" in err


def test_container_fields_compare_normalised_and_pickle(rootfs):
    import pickle

    a = pycontain.Container(layers=[rootfs], capabilities=["net_raw", "CAP_CHOWN"])
    b = pycontain.Container(layers=[rootfs], capabilities=("CAP_NET_RAW", "chown"))
    assert a == b and hash(a) == hash(b)
    assert a.capabilities == frozenset({"CAP_NET_RAW", "CAP_CHOWN"})
    assert pickle.loads(pickle.dumps(a)) == a
    host = a.replace(network="host", seccomp=bytearray(_seccomp.default_filter()))
    assert (host.network, host.seccomp) == ("host", _seccomp.default_filter())
    assert "network='host'" in repr(host)
    with pytest.raises(ValueError, match="unknown capability"):
        a.replace(capabilities=["nosuch"])
    status = parse_status(
        a.run(["/bin/cat", "/proc/self/status"], env=BB_ENV, capture_output=True, text=True).stdout
    )
    assert status["CapEff"] == mask("CAP_NET_RAW", "CAP_CHOWN")


@pytest.mark.needs_root(
    "a caller whose own capabilities bound the container's: in rootless mode the "
    "container's user namespace gives it a full set of its own"
)
def test_a_caller_without_some_capabilities(rootfs, tmp_path):
    # A caller that is itself confined (here a subprocess that gave up
    # CAP_SETFCAP): the default set is what it has of it; asking for more
    # is refused up front.
    script = tmp_path / "confined.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import ctypes, json
            import pycontain
            from pycontain import _privileges
            libc = ctypes.CDLL(None, use_errno=True)
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
            data = (ctypes.c_uint32 * 6)()
            assert libc.capget(header, data) == 0
            # CAP_SETFCAP is 31: bit 31 of the low words of effective
            # (data[0]) and permitted (data[1]).
            data[0] &= ~(1 << 31)
            data[1] &= ~(1 << 31)
            assert libc.capset(header, data) == 0, ctypes.get_errno()
            with pycontain.Process(["/bin/cat", "/proc/self/status"], layers=[{rootfs!r}],
                                   env={{"PATH": "/bin"}}, stdout=pycontain.PIPE, text=True) as p:
                out, _ = p.communicate()
            effective = [line.split()[1] for line in out.splitlines() if line.startswith("CapEff")]
            try:
                pycontain.Process(["/bin/true"], layers=[{rootfs!r}], capabilities=["setfcap"])
                refused = ""
            except ValueError as error:
                refused = str(error)
            print(json.dumps([int(effective[0], 16), refused]))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    effective, refused = json.loads(out.stdout)
    assert effective == DEFAULT & ~mask("CAP_SETFCAP")
    assert "CAP_SETFCAP are not in this process's permitted set" in refused
