"""Build pycontain's C extension (the core in csrc/ plus the CPython glue) and
its init, pycontain/pycontain-init (csrc/init/), a static program of its own."""

import glob
import os
import platform
import subprocess
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    sys.exit(
        f"pycontain runs programs in Linux containers (namespaces, overlayfs, pidfds) and "
        f"builds only on Linux >= 5.4; this is {sys.platform}. Use it on a Linux machine, "
        "in a Linux VM, or in WSL 2."
    )

from setuptools.command.build_ext import build_ext  # after the platform check

# Warnings are errors in development and CI builds (PYCONTAIN_WERROR=1), not
# in users' builds, where a newer compiler's new warning must not break them.
warnings = ["-Wall", "-Wextra", "-Wshadow"]
if os.environ.get("PYCONTAIN_WERROR") == "1":
    warnings.append("-Werror")
extra_compile_args = ["-std=gnu11", "-O2", *warnings, "-fvisibility=hidden"]
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

INIT_SOURCES = ["csrc/init/init.c", "csrc/init/waiting.c", "csrc/error.c"]
INIT_NAME = "pycontain-init"


def init_command(compiler: str, output: str) -> list[str]:
    """The init runs in a root filesystem that may have no libc, and starts at
    every spawn: static, and without libc where csrc/init/sys.h has raw
    syscalls (x86-64, arm64), which saves glibc's ~0.3 ms start-up. Never
    sanitized: it runs alone, without the sanitizers' runtime."""
    flags = ["-std=gnu11", "-Os", *warnings, "-static", "-fno-pie", "-no-pie"]
    if platform.machine() in ("x86_64", "aarch64"):
        flags += ["-nostdlib", "-fno-stack-protector", "-fno-asynchronous-unwind-tables"]
    else:
        flags += ["-DPC_INIT_LIBC"]
    return [compiler, *flags, "-o", output, *INIT_SOURCES]


class BuildWithInit(build_ext):
    """build_ext, plus the init executable beside the extension."""

    def run(self) -> None:
        super().run()
        package_dir = "pycontain" if self.inplace else os.path.join(self.build_lib, "pycontain")
        os.makedirs(package_dir, exist_ok=True)
        compiler = os.environ.get("CC", "cc").split()[0]
        subprocess.run(init_command(compiler, os.path.join(package_dir, INIT_NAME)), check=True)


core = Extension(
    "pycontain._core",
    sources=[*sorted(glob.glob("csrc/*.c")), "pycontain/_core.c"],
    include_dirs=["csrc"],
    depends=sorted(glob.glob("csrc/*.h")),
    extra_compile_args=extra_compile_args,
    extra_link_args=[f"-fsanitize={sanitizer}"] if sanitizer else [],
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildWithInit})
