"""pycontain inside a real Jupyter kernel: top-level await in a cell runs on
the kernel's own event loop."""

from __future__ import annotations

import pytest
from helpers import TIMEOUT

manager = pytest.importorskip(
    "jupyter_client.manager", reason="jupyter_client is not installed (pip install -e .[test])"
)
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e .[test])")

CELL = r"""
import asyncio, pycontain
procs = [
    await pycontain.create_subprocess_exec(
        "/bin/sh", "-c", f"echo cell {i}; cat", layers=[ROOT], env={"PATH": "/bin"},
        stdin=pycontain.PIPE, stdout=pycontain.PIPE)
    for i in range(5)
]
outputs = await asyncio.gather(*[p.communicate(b"in") for p in procs])
print(repr([(out, p.returncode) for (out, _), p in zip(outputs, procs)]))
print(type(asyncio.get_running_loop()).__name__)
"""


def test_await_in_a_notebook_cell(rootfs):
    kernel, client = manager.start_new_kernel(kernel_name="python3")
    try:
        msg_id = client.execute(f"ROOT = {rootfs!r}\n" + CELL)
        streamed, errors = [], []
        while True:
            message = client.get_iopub_msg(timeout=TIMEOUT)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            content = message["content"]
            if message["msg_type"] == "stream":
                streamed.append(content["text"])
            elif message["msg_type"] == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")
            elif message["msg_type"] == "status" and content["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
    assert errors == []
    lines = "".join(streamed).splitlines()
    assert lines[0] == repr([(f"cell {i}\nin".encode(), 0) for i in range(5)])
    assert "EventLoop" in lines[1]
