"""How Process and CompletedProcess show themselves in Jupyter/IPython."""

from __future__ import annotations

import subprocess

import pytest
from helpers import BB_ENV, NEEDS_CGROUP, TIMEOUT

import pycontain

pretty = pytest.importorskip("IPython.lib.pretty", reason="IPython is not installed").pretty


def test_completed_process(rootfs):
    done = pycontain.run(
        ["/bin/sh", "-c", "echo '<out>'; exit 4"],
        layers=[rootfs],
        env=BB_ENV,
        hostname="shown",
        capture_output=True,
    )
    assert isinstance(done, subprocess.CompletedProcess)
    assert isinstance(done, pycontain.CompletedProcess)
    assert done.pid and done.pid > 0 and done.duration is not None and done.duration > 0
    assert done.container == pycontain.Container(layers=[rootfs], hostname="shown")
    html = done._repr_html_()
    assert "exit status 4" in html and "&lt;out&gt;" in html and rootfs in html
    assert "shown" in html and "echo" in html
    assert "max RSS" in html  # rusage, always measured
    text = pretty(done)
    assert text.startswith("CompletedProcess(") and "status=exit status 4" in text
    # Still a CompletedProcess for everything else.
    assert repr(done).startswith("CompletedProcess(args=")
    with pytest.raises(subprocess.CalledProcessError):
        done.check_returncode()


def test_process_running_then_killed(rootfs):
    box = pycontain.Container(layers=[rootfs])
    with box.spawn(["/bin/sleep", "60"]) as p:
        assert "running" in p._repr_html_()
        assert f"pid={p.pid}" in pretty(p)
        p.kill()
        assert p.wait(TIMEOUT) == -9
        html = p._repr_html_()
        assert "killed by SIGKILL" in html and "sleep 60" in html and rootfs in html
        assert "duration" in html
        assert "state=killed by SIGKILL" in pretty(p)


def test_async_process(rootfs):
    import asyncio

    async def main() -> tuple[str, str]:
        p = await pycontain.create_subprocess_exec("/bin/true", layers=[rootfs])
        await p.wait()
        return p._repr_html_(), pretty(p)

    html, text = asyncio.run(main())
    assert "exit status 0" in html and "/bin/true" in html
    assert "state=exit status 0" in text


@pytest.mark.needs_root(NEEDS_CGROUP)
def test_cgroup_accounting_is_shown_where_measured(rootfs):
    done = pycontain.run(["/bin/true"], layers=[rootfs], limits={})
    assert done.cpu_time is not None
    assert "cgroup CPU time" in done._repr_html_()
    assert "cgroup CPU time" in pretty(done)
