"""Jupyter: the %%contain magic and the example notebook, in a real kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import TIMEOUT, wait_until

manager = pytest.importorskip(
    "jupyter_client.manager", reason="jupyter_client is not installed (pip install -e .[test])"
)
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e .[test])")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pycontain.ipynb"


class Kernel:
    def __init__(self) -> None:
        self.manager, self.client = manager.start_new_kernel(kernel_name="python3")

    def execute(self, code: str, *, on_message=None) -> list[tuple[float, dict]]:
        """Run a cell; its iopub messages with their arrival times."""
        msg_id = self.client.execute(code)
        messages = []
        while True:
            message = self.client.get_iopub_msg(timeout=TIMEOUT)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append((time.monotonic(), message))
            if on_message is not None:
                on_message(message)
            content = message["content"]
            if message["msg_type"] == "status" and content["execution_state"] == "idle":
                return messages

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(host_root):
    kernel = Kernel()
    kernel.execute("%load_ext pycontain")
    yield kernel
    kernel.close()


def streams(messages, name: str) -> str:
    return "".join(
        m["content"]["text"]
        for _, m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def errors(messages) -> list[str]:
    return [m["content"]["ename"] for _, m in messages if m["msg_type"] == "error"]


def test_contain_runs_the_cell_in_a_container(kernel, rootfs):
    messages = kernel.execute(
        f"%%contain --layer {rootfs} --hostname nb -e PATH=/bin\n"
        'echo "$(hostname) $$"\necho to-stderr >&2\nexit 3\n'
    )
    assert errors(messages) == []
    assert streams(messages, "stdout") == "nb 2\n"  # under pycontain's init, PID 1
    assert streams(messages, "stderr") == "to-stderr\npycontain: exit status 3\n"


def test_contain_streams_output_as_it_comes(kernel, rootfs):
    messages = kernel.execute(
        f"%%contain --layer {rootfs} -e PATH=/bin\necho first\nsleep 2\necho second\n"
    )
    times = {
        m["content"]["text"].strip(): at
        for at, m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    }
    assert set(times) == {"first", "second"}
    assert times["second"] - times["first"] > 1.0


def test_interrupting_the_kernel_kills_the_container(kernel, rootfs):
    pids: list[int] = []

    def interrupt_once_started(message) -> None:
        if message["msg_type"] == "stream" and "started" in message["content"]["text"]:
            kernel.manager.interrupt_kernel()

    started = time.monotonic()
    messages = kernel.execute(
        f"%%contain --layer {rootfs} -e PATH=/bin\necho started\nsleep 60\n",
        on_message=interrupt_once_started,
    )
    assert time.monotonic() - started < 30
    assert errors(messages) == ["KeyboardInterrupt"]
    text = streams(messages, "stderr")
    assert "interrupted; killed the container" in text
    pids.append(int(text.split("(pid ")[1].split(")")[0]))
    assert wait_until(lambda: not os.path.exists(f"/proc/{pids[0]}"))


def test_bad_options_are_an_error_in_the_cell(kernel):
    messages = kernel.execute("%%contain --uid nope\necho never\n")
    assert errors(messages) == ["ValueError"]
    assert streams(messages, "stdout") == ""


nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")


def test_the_example_notebook_runs(host_root, tmp_path):
    notebook = nbformat.read(EXAMPLE, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    # Each code cell's expectations are in its metadata: texts its outputs must contain.
    checked = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        wanted = cell.metadata.get("pycontain_expects", [])
        shown = ""
        for output in cell.outputs:
            if output.output_type == "stream":
                shown += output.text
            elif output.output_type in ("execute_result", "display_data"):
                shown += "".join(output.data.get("text/html", "")) + output.data.get(
                    "text/plain", ""
                )
        for text in wanted:
            assert text in shown, (cell.source, text, shown)
            checked += 1
    assert checked >= 6


def test_prints_of_a_called_function_reach_the_cell(kernel, rootfs):
    messages = kernel.execute(
        "import pycontain, warnings\n"
        "warnings.simplefilter('ignore', RuntimeWarning)\n"
        f"pycontain.call(lambda: print('printed inside') or 7, layers=[{rootfs!r}])\n"
    )
    assert errors(messages) == []
    assert "printed inside" in streams(messages, "stdout")
    results = [
        m["content"]["data"]["text/plain"] for _, m in messages if m["msg_type"] == "execute_result"
    ]
    assert results == ["7"]
