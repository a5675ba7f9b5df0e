"""Packaging facts that need no build: one version, a clear refusal off Linux.
(.ci/package builds the sdist and wheel and tests the installed copy.)"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pycontain
from pycontain import _version

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_has_one_source():
    assert pycontain.__version__ == _version.__version__ == version("pycontain")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert "pycontain._version.__version__" in pyproject


def test_setup_refuses_other_platforms_with_a_message():
    code = (
        "import sys; sys.platform = 'darwin'; sys.argv = ['setup.py', 'build_ext'];"
        "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "builds only on Linux" in done.stderr and "darwin" in done.stderr


def test_the_sdist_manifest_names_the_c_sources():
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "include csrc/*.c csrc/*.h" in manifest
