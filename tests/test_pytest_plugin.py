"""pycontain's pytest plugin, tested with pytest's own pytester: each test
writes a small test file and runs pytest on it in a subprocess."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import child_pids

pytestmark = pytest.mark.usefixtures("host_root")  # skips where containers cannot run

RUN = ("-p", "no:cacheprovider")


def run_pytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: the plugin comes from the installed entry point, as for users.
    return pytester.runpytest_subprocess(*RUN, *args, timeout=120)


def test_the_plugin_is_registered_by_its_entry_point(pytester):
    pytester.makepyfile(
        """
        def test_it(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("pycontain")
        """
    )
    run_pytest(pytester).assert_outcomes(passed=1)


def test_container_factory_and_teardown(pytester, rootfs):
    pytester.makeini(f"[pytest]\npycontain_rootfs = {rootfs}\n")
    pytester.makepyfile(
        """
        import os, pycontain, pytest

        PIDS = []

        def test_run(container, container_rootfs):
            done = container.run(["/bin/sh", "-c", "echo hi; ls /"], env={"PATH": "/bin"},
                                 text=True)
            assert done.returncode == 0 and done.stdout.split()[0] == "hi"
            assert "usr" not in done.stdout.split()  # the busybox rootfs, from the ini option
            assert isinstance(done, pycontain.CompletedProcess)

        def test_left_running(container):
            p = container(["/bin/sleep", "60"])
            PIDS.append(p.pid)
            assert p.poll() is None

        def test_the_previous_one_was_reaped():
            assert not os.path.exists(f"/proc/{PIDS[0]}")

        def test_output(container):
            p = container(["/bin/sh", "-c", "echo out; echo err >&2"], env={"PATH": "/bin"})
            assert container.output(p) == ("out\\n", "err\\n")
            assert p.returncode == 0

        def test_call(container):
            assert container.call(os.getpid) == 1

        def test_base_container(base_container, container_rootfs):
            assert base_container.layers == (container_rootfs,)
        """
    )
    before = child_pids()
    run_pytest(pytester).assert_outcomes(passed=6)
    assert child_pids() <= before


def test_a_failing_test_shows_its_containers(pytester, rootfs):
    pytester.makepyfile(
        f"""
        ROOT = {rootfs!r}

        def test_fails(container):
            container.run(["/bin/sh", "-c", "echo ran-to-end; exit 3"], layers=[ROOT],
                          env={{"PATH": "/bin"}})
            p = container(["/bin/sh", "-c", "echo still-running; exec sleep 60"], layers=[ROOT],
                          env={{"PATH": "/bin"}})
            import time; time.sleep(0.5)
            assert False, "the test failed"

        def test_passes(container):
            container.run(["/bin/true"], layers=[ROOT])
        """
    )
    result = run_pytest(pytester, "-rA")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    section = text[text.index("pycontain containers") :]
    assert "$ /bin/sh -c 'echo ran-to-end; exit 3'" in section
    assert "exit status 3" in section and "ran-to-end" in section
    assert "still-running" in section and "killed by SIGKILL" in section
    assert f"layers: {rootfs}" in section
    # Only the failing test gets the section.
    assert text.count("- pycontain containers -") == 1


def test_the_contained_marker_runs_the_test_inside(pytester, rootfs):
    pytester.makepyfile(
        f"""
        import os, socket, pytest

        @pytest.mark.contained(hostname="marked")
        def test_inside():
            assert os.getpid() == 1
            assert socket.gethostname() == "marked"
            assert os.path.isdir("/usr")  # the default base: the host's /

        @pytest.mark.contained(layers=[{rootfs!r}])
        def test_inside_busybox(tmp_path):
            assert os.listdir("/") and "usr" not in os.listdir("/")
            assert not tmp_path.exists()  # the host's tmp_path is not in this root

        @pytest.mark.contained()
        def test_fails_inside():
            value = 41
            assert value + 1 == 43

        @pytest.mark.contained(timeout=1)
        def test_times_out():
            import time
            time.sleep(30)

        @pytest.mark.contained()
        @pytest.mark.parametrize("n", [1, 2])
        def test_parametrized(n):
            assert os.getpid() == 1 and n in (1, 2)
        """
    )
    result = run_pytest(pytester)
    result.assert_outcomes(passed=4, failed=2)
    text = result.stdout.str()
    # The assertion as rewritten by pytest in the container, and where it failed there.
    assert "assert (41 + 1) == 43" in text
    assert "RemoteTraceback" in text and "in test_fails_inside" in text
    assert "TimeoutExpired" in text


def test_a_rootfs_option_that_is_not_a_directory(pytester):
    pytester.makepyfile("def test_it(container_rootfs): pass")
    result = run_pytest(pytester, "--pycontain-rootfs", "/nonexistent-dir")
    assert result.ret != 0
    assert "is not a directory" in result.stderr.str() + result.stdout.str()


@pytest.mark.skipif(
    importlib.util.find_spec("xdist") is None, reason="pytest-xdist is not installed"
)
def test_under_xdist(pytester, rootfs):
    pytester.makeini(f"[pytest]\npycontain_rootfs = {rootfs}\n")
    pytester.makepyfile(
        """
        import os, pickle, pytest

        @pytest.mark.parametrize("n", range(8))
        def test_many(container, base_container, n):
            assert pickle.loads(pickle.dumps(base_container)) == base_container
            done = container.run(["/bin/sh", "-c", f"echo {n}"], env={"PATH": "/bin"})
            assert done.stdout == f"{n}\\n".encode()

        @pytest.mark.contained()
        @pytest.mark.parametrize("n", range(4))
        def test_contained(n):
            assert os.getpid() == 1
        """
    )
    before = child_pids()
    result = run_pytest(pytester, "-n", "2")
    result.assert_outcomes(passed=12)
    assert child_pids() <= before
