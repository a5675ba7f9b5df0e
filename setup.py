"""Build pycontain's C extension: the core in csrc/ plus the CPython glue."""

import glob
import os
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    sys.exit(
        f"pycontain runs programs in Linux containers (namespaces, overlayfs, pidfds) and "
        f"builds only on Linux >= 5.4; this is {sys.platform}. Use it on a Linux machine, "
        "in a Linux VM, or in WSL 2."
    )

# Warnings are errors in development and CI builds (PYCONTAIN_WERROR=1), not
# in users' builds, where a newer compiler's new warning must not break them.
extra_compile_args = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wshadow", "-fvisibility=hidden"]
if os.environ.get("PYCONTAIN_WERROR") == "1":
    extra_compile_args.append("-Werror")
# UBSan build for ./run.sh sanitize. Not ASan: the child runs on a stack of
# its own in the parent's address space (CLONE_VM), which ASan cannot track.
sanitize = os.environ.get("PYCONTAIN_SANITIZE") == "1"
if sanitize:
    extra_compile_args += ["-fsanitize=undefined", "-fno-sanitize-recover=undefined", "-O1"]

core = Extension(
    "pycontain._core",
    sources=[*sorted(glob.glob("csrc/*.c")), "pycontain/_core.c"],
    include_dirs=["csrc"],
    depends=sorted(glob.glob("csrc/*.h")),
    extra_compile_args=extra_compile_args,
    extra_link_args=["-fsanitize=undefined"] if sanitize else [],
)

setup(ext_modules=[core])
