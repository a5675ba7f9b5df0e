#!/usr/bin/env python3
"""CPython's own test_subprocess, with subprocess.Popen swapped for a
pycontain.Process over the host's "/" (layers=["/"]).

Run as root, with pycontain installed (not collected by pytest: it runs
hundreds of containers and is a measure, not a pass/fail gate)::

    .venv/bin/python tests/cpython_test_subprocess.py            # the four classes
    .venv/bin/python tests/cpython_test_subprocess.py -k communicate
    .venv/bin/python tests/cpython_test_subprocess.py --popen    # the real Popen, for reference
    .venv/bin/python tests/cpython_test_subprocess.py --list-failures

It needs Lib/test/test_subprocess.py of the running Python (a pyenv or
python.org build has it; on Debian: apt-get install libpython3.11-testsuite).
The differences that remain, and why, are in docs/popen-differences.md.

What the adapter maps (everything else goes to Process unchanged):
``shell=True`` becomes ``["/bin/sh", "-c", ...]`` as Popen builds it;
``preexec_fn`` becomes ``pre_exec``; ``start_new_session``/
``process_group`` choose ``new_session``; ``user``/``group``/``extra_groups``
names become ids (pycontain takes numbers); ``close_fds``,
``restore_signals`` and ``pipesize`` have no pycontain equivalent and are
dropped. One behaviour is swapped on purpose: a ``with`` block waits for the
program, as Popen's does, instead of killing it (Process's documented
difference), so that the tests can check what they were written to check.
"""

from __future__ import annotations

import argparse
import grp
import inspect
import io
import os
import pwd
import subprocess
import sys
import unittest
import warnings
from typing import Any

import pycontain

# Older pycontain (to measure "before"): no new_session keyword.
_HAS_NEW_SESSION = "new_session" in inspect.signature(pycontain.Process).parameters
CLASSES = ("ProcessTestCase", "RunFuncTestCase", "ContextManagerTests", "POSIXProcessTestCase")


def _uid(user: Any) -> int | None:
    if user is None or isinstance(user, int):
        return user
    return pwd.getpwnam(user).pw_uid


def _gid(group: Any) -> int | None:
    if group is None or isinstance(group, int):
        return group
    return grp.getgrnam(group).gr_gid


class ContainedPopen(pycontain.Process):
    """subprocess.Popen's signature, started as a pycontain container."""

    def __init__(
        self,
        args: Any,
        bufsize: int = -1,
        executable: Any = None,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        preexec_fn: Any = None,
        close_fds: bool = True,
        shell: bool = False,
        cwd: Any = None,
        env: Any = None,
        universal_newlines: Any = None,
        startupinfo: Any = None,
        creationflags: int = 0,
        restore_signals: bool = True,
        start_new_session: bool = False,
        pass_fds: Any = (),
        *,
        user: Any = None,
        group: Any = None,
        extra_groups: Any = None,
        encoding: Any = None,
        errors: Any = None,
        text: Any = None,
        umask: int = -1,
        pipesize: int = -1,
        process_group: Any = None,
    ) -> None:
        if startupinfo is not None:
            raise ValueError("startupinfo is only supported on Windows platforms")
        if creationflags != 0:
            raise ValueError("creationflags is only supported on Windows platforms")
        if isinstance(args, (str, bytes)):
            args = [args]
        elif isinstance(args, os.PathLike):
            if shell:
                raise TypeError("path-like args is not allowed when shell is true")
            args = [args]
        else:
            args = list(args)
        if shell:
            args = ["/bin/sh", "-c", *args]
            if executable:
                args[0] = executable
            executable = None
        if pass_fds and not close_fds:
            warnings.warn("pass_fds overriding close_fds.", RuntimeWarning, stacklevel=2)
        groups = None if extra_groups is None else [_gid(g) for g in extra_groups]
        super().__init__(
            args,
            layers=["/"],
            bufsize=bufsize,
            executable=executable,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pre_exec=preexec_fn,
            cwd=cwd,
            env=env,
            universal_newlines=universal_newlines,
            pass_fds=pass_fds,
            uid=_uid(user),
            gid=_gid(group),
            groups=groups,
            encoding=encoding,
            errors=errors,
            text=text,
            umask=None if umask < 0 else umask,
            **(
                {"new_session": bool(start_new_session or process_group is not None)}
                if _HAS_NEW_SESSION
                else {}
            ),
        )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # As Popen: close the streams (a flush error of stdin is raised),
        # then wait rather than kill.
        try:
            for stream in (self.stdout, self.stderr, self.stdin):
                if stream is not None:
                    stream.close()
        finally:
            self.wait()


def load(names: list[str] | None) -> tuple[unittest.TestSuite, Any]:
    from test import test_subprocess

    test_subprocess.setUpModule()
    loader = unittest.TestLoader()
    if names:
        loader.testNamePatterns = [f"*{name}*" for name in names]
    suite = unittest.TestSuite(
        loader.loadTestsFromTestCase(getattr(test_subprocess, name)) for name in CLASSES
    )
    return suite, test_subprocess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", action="append", help="only tests whose name contains this")
    parser.add_argument("--popen", action="store_true", help="run with the real Popen")
    parser.add_argument("--list-failures", action="store_true", help="print each failure's test")
    parser.add_argument("-v", action="store_true", help="verbose")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("cpython_test_subprocess.py: needs root (pycontain makes namespaces)")
    try:
        suite, _ = load(options.k)
    except ImportError as error:
        sys.exit(f"cpython_test_subprocess.py: no Lib/test/test_subprocess.py here ({error})")
    if not options.popen:
        subprocess.Popen = ContainedPopen  # type: ignore[misc]
    # Some tests swap fds 0, 1, 2 around: report on a copy of stdout.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    stream = out if options.v else io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2 if options.v else 1).run(suite)
    if options.list_failures:
        for kind, items in (("FAIL", result.failures), ("ERROR", result.errors)):
            for test, trace in items:
                last = [line for line in trace.strip().splitlines() if line.strip()][-1]
                print(f"{kind} {test.id().split('.', 2)[-1]}: {last[:160]}", file=out)
    failed = len(result.failures) + len(result.errors)
    print(
        f"{'Popen' if options.popen else 'pycontain'}: ran {result.testsRun}, "
        f"passed {result.testsRun - failed - len(result.skipped)}, failed {len(result.failures)}, "
        f"errors {len(result.errors)}, skipped {len(result.skipped)}",
        file=out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
