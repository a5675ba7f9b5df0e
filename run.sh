#!/usr/bin/env bash
# Set pycontain up on a fresh Debian or Ubuntu machine and run it, as root
# (or as another user, once the Debian packages are there: rootless mode).
#
#   ./run.sh demo    install pycontain into .venv and run a demo container
#   ./run.sh test    install what the tests need too, and run the test suite
#   ./run.sh lint    install the linters and run them (ruff, mypy, clang-format)
#   ./run.sh sanitize  the test suite against a UBSan build of the C code
#   ./run.sh asan    the tests that stay off the CLONE_VM child (fork path,
#                    arguments, fuzz) against an ASan build, then the argument
#                    tests once more under PYTHONMALLOC=debug
#   ./run.sh bench   install bubblewrap too, and run bench/spawn.py (extra
#                    arguments go to it, e.g. --quick)
#   ./run.sh test-rootless  the test suite once more as an unprivileged user
#                    (made if missing), from a copy any user can read
#                    (.ci/rootless); what needs root is skipped with a reason
#   ./run.sh package build the sdist and wheel (python -m build), install the
#                    wheel into a fresh venv and run a subset of the tests
#                    from there (.ci/package)
#
# Installs only what is missing: Debian packages with apt-get, Python
# packages with pip into .venv (so the system Python stays untouched).
set -euo pipefail
cd "$(dirname "$0")"

task=${1:-}
case "$task" in
demo | test | test-rootless | lint | sanitize | asan | bench | package) ;;
*)
    echo "usage: ./run.sh demo|test|test-rootless|lint|sanitize|asan|bench|package [ARGS...]" >&2
    exit 2
    ;;
esac

# As another user, pycontain runs rootless (user namespaces), and run.sh does
# what it can without root: it stops only where it would have to install
# Debian packages, or for tasks that need root themselves.
if [ "$(id -u)" != 0 ] && [ "$task" = test-rootless ]; then
    echo "run.sh: test-rootless makes a user and drops to it, which needs root (try: sudo ./run.sh $task)" >&2
    exit 1
fi

PYTHON=${PYTHON:-python3}

# Debian packages this task needs that are not there yet.
apt_missing=()
command -v cc >/dev/null || apt_missing+=(gcc libc6-dev)
if command -v "$PYTHON" >/dev/null; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || {
        echo "run.sh: pycontain needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
        exit 1
    }
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
    "$PYTHON" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null ||
        apt_missing+=(python3-dev)
else
    apt_missing+=(python3 python3-venv python3-dev)
fi
# The tests and the benchmark build their root filesystem from a static
# busybox; the benchmark compares with bubblewrap and util-linux's unshare.
if [ "$task" = test ] || [ "$task" = test-rootless ] || [ "$task" = sanitize ] ||
    [ "$task" = asan ] || [ "$task" = bench ] || [ "$task" = package ]; then
    [ -x /bin/busybox ] || apt_missing+=(busybox-static)
fi
# The escape tests check with strace that the path-resolution fallback is
# the one taken, and build the throwaway root with util-linux's unshare; the
# fork path's tests stall its steps with strace --inject.
if [ "$task" = test ] || [ "$task" = test-rootless ] || [ "$task" = sanitize ] ||
    [ "$task" = asan ]; then
    command -v strace >/dev/null || apt_missing+=(strace)
    command -v unshare >/dev/null || apt_missing+=(util-linux)
fi
# The rootless run drops to its user with util-linux's setpriv and makes it
# with useradd (passwd); its venv is the system Python's, with its headers.
if [ "$task" = test-rootless ]; then
    command -v setpriv >/dev/null || apt_missing+=(util-linux)
    command -v useradd >/dev/null || apt_missing+=(passwd)
    /usr/bin/python3 -c 'import ensurepip, venv, os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null ||
        apt_missing+=(python3 python3-venv python3-dev)
fi
if [ "$task" = bench ]; then
    command -v bwrap >/dev/null || apt_missing+=(bubblewrap)
    command -v unshare >/dev/null || apt_missing+=(util-linux)
fi
if [ ${#apt_missing[@]} -gt 0 ] && [ "$(id -u)" != 0 ]; then
    echo "run.sh: Debian packages are missing: ${apt_missing[*]} (install them, or run: sudo ./run.sh $task)" >&2
    exit 1
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "run.sh: installing Debian packages: ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

case "$task" in
demo)
    "${pip[@]}" -e .
    exec .venv/bin/python -m pycontain
    ;;
test)
    # Warnings are errors in the C code built for the tests, which has the
    # fault injection points compiled in (csrc/faults.h).
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 "${pip[@]}" -e '.[test]'
    exec .venv/bin/python -m pytest "${@:2}"
    ;;
test-rootless)
    exec .ci/rootless "${@:2}"
    ;;
bench)
    "${pip[@]}" -e .
    exec .venv/bin/python bench/spawn.py "${@:2}"
    ;;
sanitize)
    # The extension built in place with UBSan (aborting on the first error),
    # its runtime preloaded into the interpreter, which was not built with it.
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 "${pip[@]}" -e '.[test]'
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 PYCONTAIN_SANITIZE=1 .venv/bin/python setup.py -q build_ext --inplace --force
    status=0
    LD_PRELOAD="$(cc -print-file-name=libubsan.so)" .venv/bin/python -m pytest "${@:2}" || status=$?
    # Leave the normal (test) build in place again.
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 .venv/bin/python setup.py -q build_ext --inplace --force
    exit $status
    ;;
asan)
    # ASan cannot follow the CLONE_VM child (it runs on a stack of its own
    # in our address space), so only the tests that stay off it: the fork
    # path (callbacks, timeout=), argument handling and the fuzz, which then
    # spawns through the fork path (PYCONTAIN_TEST_FORK_PATH=1). The
    # interpreter was not built with ASan: its runtime is preloaded, and
    # leak checking is off (CPython's own allocations at exit are not ours).
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 "${pip[@]}" -e '.[test]'
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 PYCONTAIN_SANITIZE=address .venv/bin/python setup.py -q build_ext --inplace --force
    status=0
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 PYCONTAIN_TEST_FORK_PATH=1 \
        LD_PRELOAD="$(cc -print-file-name=libasan.so)" .venv/bin/python -m pytest \
        tests/test_callbacks.py tests/test_fork_path.py tests/test_arguments.py "${@:2}" || status=$?
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 .venv/bin/python setup.py -q build_ext --inplace --force
    # CPython's debug allocator catches what the extension does wrong with
    # Python's memory (a write past a block, a use after free).
    PYTHONMALLOC=debug .venv/bin/python -X dev -m pytest tests/test_arguments.py "${@:2}" || status=$?
    exit $status
    ;;
package)
    "${pip[@]}" -e '.[test]'
    exec timeout 900 .ci/package
    ;;
lint)
    PYCONTAIN_WERROR=1 PYCONTAIN_FAULTS=1 "${pip[@]}" -e '.[dev]'
    .venv/bin/ruff check pycontain tests bench setup.py
    .venv/bin/ruff format --check pycontain tests bench setup.py
    .venv/bin/mypy
    .venv/bin/clang-format --dry-run --Werror csrc/*.c csrc/*.h csrc/init/*.c csrc/init/*.h pycontain/_core.c
    ;;
esac
