"""pycontain.doctor(): a structured, read-only report of what the machine allows."""

from __future__ import annotations

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
