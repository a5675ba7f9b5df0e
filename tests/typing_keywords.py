"""Checked by mypy --strict (./run.sh lint), never run: a misspelled or mistyped
keyword is caught at the call site of every entry point.

Each line below is an error mypy must report; under --strict an ignore comment
that silences nothing is itself an error, so if an entry point stopped being
checked (say its keywords became a plain **kwargs: Any), lint would fail.
"""

from __future__ import annotations

import pycontain


async def entry_points(box: pycontain.Container) -> None:
    pycontain.Process(["/bin/true"], layers=["/"], hostnam="x")  # type: ignore[call-arg]
    pycontain.Process(["/bin/true"], layers=["/"], uid="root")  # type: ignore[arg-type]
    pycontain.run(["/bin/true"], layers=["/"], writedri="/tmp")  # type: ignore[call-arg]
    await pycontain.create_subprocess_exec("/bin/true", layers=["/"], gdi=1)  # type: ignore[call-arg]
    pycontain.Container(layers=["/"], rlimit={})  # type: ignore[call-arg]
    box.spawn(["/bin/true"], cwdd="/")  # type: ignore[call-arg]
    box.run(["/bin/true"], hostname="x")  # type: ignore[call-arg]
    await box.create_subprocess_exec("/bin/true", text=True)  # type: ignore[call-arg]
    box.replace(gid=1.5)  # type: ignore[arg-type]
    pycontain.call(print, layers=["/"], hostnam="x")  # type: ignore[call-arg]
    pycontain.call(print, layers=["/"], executable="/bin/sh")  # type: ignore[call-arg]
    await pycontain.call_async(print, layers=["/"], uid="root")  # type: ignore[arg-type]
    box.call(print, pre_exec=print)  # type: ignore[call-arg]
    _wrong: str = box.call(len, "abc")  # type: ignore[assignment]
    # And the right spellings pass.
    pycontain.run(["/bin/true"], layers=["/"], hostname="x", cwd="/", capture_output=True)
    box.replace(hostname="y").spawn(["/bin/true"], stdout=pycontain.PIPE, timeout=1.0).wait()
    _length: int = pycontain.call(len, "abc", layers=["/"], hostname="x", cwd="/", timeout=1.0)
    _length = await box.call_async(len, "abc", env={"A": "b"})
