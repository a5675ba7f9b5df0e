"""pycontain.doctor(): a structured, read-only report of what the machine allows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import pycontain


def _sysctls() -> dict[str, str]:
    values = {}
    for path in (
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ):
        try:
            with open(path) as f:
                values[path] = f.read()
        except OSError:
            pass
    return values


def test_the_report_says_what_this_machine_allows(host_root, no_leaks):
    before = _sysctls()
    report = pycontain.doctor()
    assert _sysctls() == before  # read only
    assert report.can_run is True
    assert report.problems() == []
    assert report["overlayfs"].ok is True
    assert report["privileges"].ok is True
    assert report["start a container"].ok is True
    # Each probed system call is known to exist or not (this kernel is >= 5.4).
    for name in ("clone3", "pidfd_open", "close_range", "openat2"):
        assert report[name].ok is True, report[name]
    assert report["cgroups"].detail
    assert report["user.max_user_namespaces"].ok in (True, False)


def test_every_no_comes_with_a_fix():
    report = pycontain.doctor(try_container=False)
    assert "start a container" not in {check.name for check in report.checks}
    for check in report.checks:
        if check.ok is False:
            assert check.fix, check


def test_text_json_and_html_forms():
    report = pycontain.doctor(try_container=False)
    text = str(report)
    assert "overlayfs" in text and text.rstrip().endswith("here.")
    data = report.to_dict()
    assert data["can_run"] == report.can_run
    assert {"name", "ok", "detail", "fix", "required"} <= set(data["checks"][0])
    assert "<table>" in report._repr_html_()


# -- as a user without privileges ---------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"  # usable by any uid (see KERNEL-NOTES), unlike a venv's
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("runuser") or "runuser", "-u", "nobody", "--", SYSTEM_PYTHON, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        cwd="/",
    )


@pytest.fixture(scope="module")
def nobody() -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root, runuser and /usr/bin/python3 to run as nobody")
    probe = as_nobody("-c", "import pycontain")
    if probe.returncode != 0:
        pytest.skip(
            f"nobody cannot import this checkout's pycontain: {probe.stderr.strip()[-200:]}"
        )


def test_doctor_as_nobody_reports_rootless_mode(nobody):
    done = as_nobody("-m", "pycontain", "doctor", "--json")
    report = json.loads(done.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["privileges"]["ok"] is None  # not needed: rootless mode
    assert checks["rootless mode"]["required"] is True
    if checks["rootless mode"]["ok"]:
        assert done.returncode == 0, done.stderr
        assert report["can_run"] is True
        assert checks["start a container"]["ok"] is True
        assert "rootless mode" in checks["start a container"]["detail"]
    else:  # this machine forbids user namespaces: the setting is named, nothing is tried
        assert done.returncode == 1 and report["can_run"] is False
        assert "sysctl -w" in checks["rootless mode"]["fix"]
        assert "start a container" not in checks


def test_run_as_nobody_over_the_hosts_root_is_125_with_the_reason(nobody):
    # The CLI's default layer, the host's /, has mounts below it: refused in
    # rootless mode, before anything starts.
    done = as_nobody("-m", "pycontain", "run", "--", "/bin/true")
    assert done.returncode == 125
    assert "Traceback" not in done.stderr
    assert "other mounts below it" in done.stderr
