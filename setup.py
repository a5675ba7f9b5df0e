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
# Fault injection (csrc/faults.h) for the test builds of ./run.sh only.
if os.environ.get("PYCONTAIN_FAULTS") == "1":
    extra_compile_args.append("-DPC_FAULTS")
# UBSan build for ./run.sh sanitize (PYCONTAIN_SANITIZE=1); ASan for
# ./run.sh asan (PYCONTAIN_SANITIZE=address), which runs only the tests that
# stay off the CLONE_VM child: that child runs on a stack of its own in the
# parent's address space, which ASan cannot track.
sanitize = os.environ.get("PYCONTAIN_SANITIZE", "")
sanitizer = {"1": "undefined", "address": "address"}.get(sanitize)
if sanitizer == "undefined":
    extra_compile_args += ["-fsanitize=undefined", "-fno-sanitize-recover=undefined", "-O1"]
elif sanitizer == "address":
    extra_compile_args += ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1"]

core = Extension(
    "pycontain._core",
    sources=[*sorted(glob.glob("csrc/*.c")), "pycontain/_core.c"],
    include_dirs=["csrc"],
    depends=sorted(glob.glob("csrc/*.h")),
    extra_compile_args=extra_compile_args,
    extra_link_args=[f"-fsanitize={sanitizer}"] if sanitizer else [],
)

setup(ext_modules=[core])
