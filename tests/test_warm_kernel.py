"""Warm grading kernels (qa_lib/course/warm_kernel.py): under autograde each notebook's kernel is forked by a
sandboxed server that imported the libraries once. Forking must not let one student's kernel see or touch what an
earlier one left, nor reach the server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from queue import Empty
from types import SimpleNamespace

import nbformat
import pytest
import zmq
from nbclient import NotebookClient
from test_judge import PEEK_AT_THE_SERVER

from qa_lib.course import sandbox
from qa_lib.course.warm_kernel import ForkedKernel

# The last cell of every notebook below: what the kernel sees around it.
LOOK_AROUND = """
import json, os, sys
processes = sorted(open(f"/proc/{pid}/comm").read().strip() for pid in os.listdir("/proc") if pid.isdigit())
print(json.dumps({
    "pid": os.getpid(),
    "server": os.getppid(),
    "processes": processes,
    "tmp": sorted(os.listdir("/tmp")),
    "loaded": sorted(name for name in ("torch", "transformers", "qa_lib.wwm") if name in sys.modules),
    "planted_attribute": hasattr(sys.modules.get("qa_lib"), "planted"),
}))
"""
SANDBOX_PROCESSES = ["bwrap", "python", "python"]  # the sandbox's init, the server, the kernel


@pytest.fixture(autouse=True)
def autograde(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert sandbox.warm_kernels_wanted(), "autograde with bubblewrap forks kernels from the warm server"


def printed(tmp_path, *cells: str) -> list[str]:
    """What each cell printed, run in one kernel started as autograde starts it."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(
        notebook,
        timeout=120,
        allow_errors=True,
        kernel_manager_class=sandbox.SandboxedKernelManager,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return ["".join(out.text for out in cell.outputs if out.output_type == "stream") for cell in notebook.cells]


def look_around(tmp_path, *cells: str) -> dict:
    """Run the cells, then LOOK_AROUND, in one kernel; what LOOK_AROUND saw."""
    return json.loads(printed(tmp_path, *cells, LOOK_AROUND)[-1])


def test_a_forked_kernel_has_the_libraries_loaded_before_its_first_cell(tmp_path):
    kernel = look_around(tmp_path)
    assert kernel["loaded"] == ["qa_lib.wwm", "torch", "transformers"]
    assert kernel["processes"] == SANDBOX_PROCESSES and kernel["server"] == 2 != kernel["pid"]


def test_a_kernel_finds_nothing_an_earlier_kernel_left_behind(tmp_path):
    first = look_around(
        tmp_path,
        "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)",  # meant to outlive it
        "open('/tmp/planted.py', 'w').write('x = 1')",
        "import qa_lib\nqa_lib.planted = True",
    )
    assert first["planted_attribute"] and "planted.py" in first["tmp"] and "sleep" in first["processes"]
    second = look_around(tmp_path)
    assert second["processes"] == SANDBOX_PROCESSES
    assert "planted.py" not in second["tmp"] and not second["planted_attribute"]
    assert second["pid"] != first["pid"] and second["server"] == first["server"]


def test_a_kernel_cannot_reach_its_server(tmp_path):
    outcomes = printed(tmp_path, PEEK_AT_THE_SERVER, "print(observe())")[1]
    assert outcomes.strip() == "['PermissionError', 'PermissionError']"


def test_a_kernel_that_kills_its_server_does_not_touch_the_next_one(tmp_path):
    look_around(tmp_path)
    server = sandbox.warm_kernels().process
    printed(tmp_path, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert server.poll() is not None
    after = look_around(tmp_path)
    assert sandbox.warm_kernels().process is not server and after["processes"] == SANDBOX_PROCESSES


def test_the_warm_kernel_server_refuses_to_run_outside_a_sandbox():
    result = subprocess.run(
        [sys.executable, "-m", "qa_lib.course.warm_kernel"], capture_output=True, text=True, timeout=120, input=""
    )
    assert result.returncode != 0 and "first process of a bubblewrap sandbox" in result.stderr


def test_waiting_for_a_forked_kernel_honours_the_timeout():
    class SilentServer:  # a server whose kernel never ends
        def __init__(self, stdout):
            self.process = SimpleNamespace(stdout=stdout)

        def reply(self, seconds):
            return None

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stdout, os.fdopen(write_end, "wb"):
        kernel = ForkedKernel(SilentServer(stdout))
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            kernel.wait(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5 and kernel.returncode is None


class QueuedChannel:
    """An IOPub channel holding ``messages``; counts the seconds a reader would have waited on an empty one."""

    def __init__(self, *messages: dict):
        self.messages, self.waited = list(messages), 0.0

    async def get_msg(self, timeout: float) -> dict:
        if self.messages:
            return self.messages.pop(0)
        self.waited += timeout
        raise Empty


def iopub_message(kind: str, request: str = "", state: str = "") -> dict:
    return {"msg_type": kind, "parent_header": {"msg_id": request}, "content": {"execution_state": state}}


@pytest.mark.parametrize(
    "messages, idle, waited",
    [
        # IOPub connected late: the status of the request is lost, the welcome to the subscription ends the wait.
        ([iopub_message("iopub_welcome")], False, 0.0),
        ([iopub_message("status", "other", "idle"), iopub_message("status", "mine", "busy")], False, 0.05),
        ([iopub_message("status", "mine", "busy"), iopub_message("status", "mine", "idle")], True, 0.0),
    ],
)
def test_a_kernel_is_ready_when_iopub_brings_the_requests_idle_status(messages, idle, waited):
    client = SimpleNamespace(iopub_channel=QueuedChannel(*messages))
    assert asyncio.run(sandbox.PromptKernelClient.idle_on_iopub(client, "mine")) is idle
    assert client.iopub_channel.waited == waited


def test_a_kernel_client_tries_a_refused_connect_again_within_milliseconds(tmp_path):
    """Its sockets connect before the kernel has bound them: ZMQ's default is to try again after 100 ms."""
    client = sandbox.PromptKernelClient(transport="ipc", ip=str(tmp_path / "kernel"), shell_port=1)
    socket = client.connect_shell()
    try:
        assert (socket.getsockopt(zmq.RECONNECT_IVL), socket.getsockopt(zmq.RECONNECT_IVL_MAX)) == (5, 20)
    finally:
        socket.close(linger=0)
        client.context.term()
