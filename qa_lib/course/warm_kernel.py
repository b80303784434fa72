"""Warm grading kernels: a sandboxed server that has imported the course's libraries once forks each kernel.

Why: a grading kernel spends most of its CPU importing torch, transformers, accelerate and the kit (about 5 s
of a notebook's 8), twice per student. Here a server started once per grading process, in a bubblewrap sandbox
like any grading kernel (``qa_lib.course.sandbox``), imports them and then forks a fresh IPython kernel for each
notebook. A student's code runs only in the forked child: when that kernel ends, the server kills whatever the
kernel left running and empties ``/tmp`` (``probe.end_leftovers``) before it forks the next one, so each
notebook starts from the server's state, in which no student code has ever run.

Protocol, one JSON line each way: the grader sends ``{"connection_file", "cwd", "env"}`` and reads ``started``;
any further line it sends kills the kernel; the server answers ``exited CODE`` once the kernel and its leftovers
are gone. :class:`ForkedKernelProvisioner` makes this look like a kernel process to ``jupyter_client``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from jupyter_client.provisioning import LocalProvisioner

# What the graded notebooks import, and what a kernel imports only as it starts (its shell, debugger, control
# thread's event loop: 0.5 s a kernel): loaded once in the server, shared by every kernel it forks.
PRELOADED = (
    "torch",
    "transformers",
    "transformers.models.bert.modeling_bert",
    "accelerate",
    "matplotlib.pyplot",
    "matplotlib_inline.backend_inline",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.debugger",
    "ipykernel.control",
    "tornado.platform.asyncio",
    "IPython.core.completerlib",
    "IPython.extensions.storemagic",
    "qa_lib.training",
    "qa_lib.models",
    "qa_lib.predict",
    "qa_lib.plots",
    "qa_lib.wwm",
    "qa_lib.rehearsal",
    "qa_lib.course.exercises",
    "qa_lib.course.synthetic",
)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # what ipykernel selects; fixed before pyplot loads


# --- Inside the sandbox: the server and its forked kernels --------------------------------------------------------


def run_kernel(request: dict) -> None:
    """In the forked child: become the IPython kernel of ``request``; never returns."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for descriptor in (0, 1, 2):  # the pipes to the grader stay with the server
            os.dup2(devnull, descriptor)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path.insert(0, "")  # a kernel imports from its working folder, as a kernel started afresh does
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        app.initialize(["-f", request["connection_file"]])
        app.start()
    finally:
        os._exit(0)


def wait_for_exit_or_kill(pid: int) -> int:
    """Wait until the kernel ``pid`` exits; a line from the grader meanwhile kills it. Returns its exit status."""
    with os.fdopen(os.pidfd_open(pid), "rb", buffering=0) as kernel:
        ready, _, _ = select.select([kernel, sys.stdin], [], [])
        if sys.stdin in ready:
            sys.stdin.readline()
            os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def serve() -> None:
    """Fork one kernel per request line; answer ``started`` and, when it has ended, ``exited CODE``."""
    import importlib

    from .probe import end_leftovers, forbid_inspection, require_own_pid_namespace

    require_own_pid_namespace()
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    for module in PRELOADED:
        importlib.import_module(module)
    # Loading jieba's dictionary takes ~0.7 s, which notebook 2's kernel would otherwise pay for every student.
    importlib.import_module("qa_lib.wwm").jieba_tokenizer()
    forbid_inspection()
    sys.path[:] = [path for path in sys.path if path not in ("", os.getcwd())]
    while line := sys.stdin.readline():
        if not line.startswith("{"):
            continue  # a kill request that crossed the kernel's own exit
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_kernel(request)
        print("started", flush=True)
        code = wait_for_exit_or_kill(pid)
        end_leftovers()
        print(f"exited {code}", flush=True)


# --- In the grader: a forked kernel as jupyter_client sees it ------------------------------------------------------


class ForkedKernel:
    """The part of ``subprocess.Popen`` that ``LocalProvisioner`` uses, for a kernel forked by the warm server."""

    pid = None  # in the server's pid namespace: signals go through the server
    stdin = stdout = stderr = None

    def __init__(self, server):
        self.server, self.returncode = server, None

    def poll(self) -> int | None:
        if self.returncode is None:
            reply = self.server.reply(0)
            if reply is not None:  # "exited CODE", or "" when the server itself has died
                self.returncode = int(reply.split()[1]) if reply.startswith("exited ") else -signal.SIGKILL
                self.server.lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("forked kernel", timeout)
            select.select([self.server.process.stdout], [], [], left)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Interrupts go over the control channel (``SandboxedKernelManager.interrupt_kernel``); any other signal
        ends the kernel."""
        if signum != signal.SIGINT and self.poll() is None:
            self.server.send("kill")

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkedKernelProvisioner(LocalProvisioner):
    """``LocalProvisioner`` with the kernel forked by the warm server instead of started as a new process."""

    def __init__(self, server, **kwargs):
        super().__init__(**kwargs)
        self.server = server

    async def launch_kernel(self, cmd: list[str], **kwargs):
        request = {"connection_file": self.parent.connection_file, "cwd": kwargs["cwd"], "env": kwargs["env"]}
        self.process = self.server.fork_kernel(self.parent.private, request)
        self.pid = self.pgid = None  # nothing here to signal directly: ForkedKernel asks the server
        self.cwd = kwargs["cwd"]
        return self.connection_info


if __name__ == "__main__":
    serve()
