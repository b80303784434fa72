"""Sandboxes for student code: bubblewrap (``bwrap``) around grading kernels and the judge's probes.

A sandboxed process sees the system and the Python environment read-only, the folder it works in (a scratch
copy, thrown away afterwards) and a socket folder writable, and nothing else of the machine: no course
directory (solutions, gradebook, other students), no home folder, no network (a private network namespace),
its own process namespace (every process it starts dies with it), an address-space limit, and a cleaned
environment (no instructor secrets). Kernels talk to nbgrader over ZMQ ``ipc`` sockets in the shared folder.

Autograde refuses to run without bubblewrap unless ``QA_KIT_UNSANDBOXED=1`` says the instructor accepts the risk;
students' own Validate / ``qa-kit check`` uses the sandbox only when it is there.
"""

from __future__ import annotations

import ast
import atexit
import functools
import json
import math
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from queue import Empty
from subprocess import DEVNULL, PIPE

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from traitlets import Type

UNSANDBOXED_VARIABLE = "QA_KIT_UNSANDBOXED"
MEMORY_LIMIT_BYTES = 8 * 2**30  # address space: torch maps far more than it touches; 8 GiB still stops a runaway
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
KEPT_VARIABLES = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "TOKENIZERS_PARALLELISM",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "NBGRADER_EXECUTION",
)
KEPT_PREFIXES = ("LC_",)
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), "
    f"or set {UNSANDBOXED_VARIABLE}=1 to grade without a sandbox (student code then runs with your "
    "rights: it can read the solutions and write the gradebook)"
)


class SandboxUnavailable(RuntimeError):
    """Grading needs bubblewrap and it is missing or does not work here."""


@functools.cache
def sandbox_works() -> bool:
    """bwrap is installed and can create its namespaces on this machine (containers sometimes forbid it)."""
    if shutil.which("bwrap") is None:
        return False
    probe = bwrap_command(["true"], workdir=Path("/"))
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def unsandboxed_by_choice() -> bool:
    return os.environ.get(UNSANDBOXED_VARIABLE) == "1"


def require_sandbox() -> bool:
    """True when grading must sandbox (the normal case); False when the instructor opted out.
    Raises SandboxUnavailable when bubblewrap is needed and cannot run."""
    if unsandboxed_by_choice():
        return False
    if not sandbox_works():
        raise SandboxUnavailable(f"grading runs student code in a bubblewrap sandbox: {INSTALL_HINT}")
    return True


def python_folders() -> list[Path]:
    """Where this Python and its packages live (a venv and the interpreter it was made from)."""
    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(), *site.getsitepackages()}
    return sorted({Path(folder).resolve() for folder in folders if folder and os.path.isdir(folder)})


def kernel_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``source`` a kernel needs; everything else (tokens, database URLs) stays out."""
    kept = {k: v for k, v in source.items() if k in KEPT_VARIABLES or k.startswith(KEPT_PREFIXES)}
    return {"HOME": "/tmp/home", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1", **kept}


def clean_environment(source: Mapping[str, str]) -> list[str]:
    """``--setenv`` arguments for :func:`kernel_environment`."""
    kept = kernel_environment(source)
    return [arg for name, value in sorted(kept.items()) for arg in ("--setenv", name, value)]


def bwrap_command(
    command: Sequence[str],
    *,
    workdir: Path,
    mounts: Mapping[Path, Path] = {},
    writable: Mapping[Path, Path] = {},
    env: Mapping[str, str] | None = None,
    memory_bytes: int = MEMORY_LIMIT_BYTES,
) -> list[str]:
    """``command`` inside a new root holding only the system, Python, ``mounts`` (``{inside: outside}``,
    read-only) and ``writable`` (``{inside: outside}``) folders; ``workdir`` is where it starts; the environment
    is ``env`` (default: this process's) cleaned of everything a kernel does not need."""
    # --cap-drop ALL: run by root (CI, Colab, many servers), bwrap otherwise keeps root's capabilities inside.
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL", "--clearenv"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/tmp/home"]
    for folder in SYSTEM_FOLDERS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    for folder in python_folders():
        args += ["--ro-bind", str(folder), str(folder)]
    for inside, outside in mounts.items():
        args += ["--ro-bind", str(outside), str(inside)]
    for inside, outside in writable.items():
        args += ["--bind", str(outside), str(inside)]
    args += ["--remount-ro", "/"]  # the new root's own folders (mount points) are not a place to write either
    args += clean_environment(os.environ if env is None else env) + ["--chdir", str(workdir)]
    return [*args, "--", "prlimit", f"--as={memory_bytes}", "--", *command]


def scratch_copy(folder: Path, into: Path) -> Path:
    """A copy of the files a notebook sits next to (data files, not other notebooks' outputs)."""
    shutil.copytree(folder, into, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"), dirs_exist_ok=True)
    return into


def package_folder() -> Path:
    """Where ``qa_lib`` is installed (an editable install: inside the course repository)."""
    import qa_lib

    return Path(qa_lib.__file__).resolve().parent


def kit_package() -> dict[Path, Path]:
    """The kit's own package, read-only (an editable install points into the course repository, which is hidden)."""
    package = package_folder()
    return {package: package}


def warm_caches(private: Path) -> dict[str, str]:
    """A copy of this machine's matplotlib cache for the kernel: without it every sandboxed kernel rebuilds the
    font list (seconds, and a notice on stderr in the first cell that plots)."""
    import matplotlib

    cache = private / "matplotlib"
    shutil.copytree(matplotlib.get_cachedir(), cache, dirs_exist_ok=True)
    return {"MPLCONFIGDIR": str(cache)}


def jieba_cache() -> dict[Path, Path]:
    """jieba's dictionary cache (in the temp folder), read-only: without it each kernel rebuilds it (about a second)."""
    cache = Path(tempfile.gettempdir()) / "jieba.cache"
    return {Path("/tmp/jieba.cache"): cache} if cache.is_file() else {}


# --- Warm servers ----------------------------------------------------------------------------------------------


class WarmServer:
    """A sandboxed server started once per grading process that does one job at a time, asked over its stdin and
    answering on its stdout, one line each: the judge's warm probes and the warm grading kernels.

    Start it from a thread that outlives it (bwrap's --die-with-parent follows the starting thread); a server that
    died (killed by a job, or with its thread) is started again for the next job."""

    def __init__(self, command: Sequence[str], workroot: Path, mounts: Mapping[Path, Path], env: Mapping[str, str]):
        self.command, self.workroot, self.mounts, self.env = list(command), workroot, mounts, env
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()  # held for a whole job

    def ensure_started(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.close_pipes()  # of a server that died
        writable = {self.workroot: self.workroot}
        command = bwrap_command(
            self.command, workdir=self.workroot, mounts=self.mounts, writable=writable, env=self.env
        )
        self.process = subprocess.Popen(command, stdin=PIPE, stdout=PIPE, stderr=DEVNULL, start_new_session=True)

    def send(self, line: str) -> bool:
        try:
            self.process.stdin.write(line.encode("utf-8") + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return False
        return True

    def reply(self, seconds: float | None) -> str | None:
        """The server's next line; None when none came within ``seconds``, "" when the server has ended."""
        ready, _, _ = select.select([self.process.stdout], [], [], seconds)
        return self.process.stdout.readline().decode("utf-8", errors="replace").strip() if ready else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.close_pipes()

    def close_pipes(self) -> None:
        if self.process is not None:
            self.process.stdin.close()  # every line sent was flushed: nothing is left to write
            self.process.stdout.close()


def empty_folder(folder: Path, keep: Iterable[Path] = ()) -> None:
    """Remove everything in ``folder`` but ``keep``: nothing an earlier job left there reaches the next one."""
    kept = set(keep)
    for entry in folder.iterdir():
        if entry in kept:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


# --- Kernels -----------------------------------------------------------------------------------------------------


@functools.cache
def kernels_folder() -> Path:
    """Where this process's grading kernels keep their sockets and scratch copies (one folder for the warm server
    to share with its kernels); removed when the process ends, as each kernel's own folder is when it ends."""
    folder = Path(tempfile.mkdtemp(prefix="qa-kit-kernels-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


STARTUP_SECONDS = 120  # a warm kernel server imports torch, transformers and the kit before its first kernel


class WarmKernels(WarmServer):
    """The warm kernel server (``qa_lib.course.warm_kernel``) of this grading process, sandboxed like any kernel."""

    def __init__(self):
        root = kernels_folder()
        self.caches = root / "caches"  # kept between kernels: the server loaded them before any student code ran
        env = {**os.environ, **warm_caches(self.caches), "NBGRADER_EXECUTION": "autograde"}
        command = [sys.executable, "-m", "qa_lib.course.warm_kernel"]
        super().__init__(command, root, {**kit_package(), **jieba_cache()}, env)

    def fork_kernel(self, private: Path, request: dict):
        """A kernel forked for ``request`` (the caller holds ``self.lock``, released when the kernel has ended)."""
        from .warm_kernel import ForkedKernel

        self.ensure_started()
        empty_folder(self.workroot, keep=(private, self.caches))
        if not self.send(json.dumps(request)) or self.reply(STARTUP_SECONDS) != "started":
            self.stop()
            self.lock.release()
            raise RuntimeError("the warm kernel server did not start a kernel")
        return ForkedKernel(self)


@functools.cache
def warm_kernels() -> WarmKernels:
    server = WarmKernels()
    atexit.register(server.stop)
    return server


def warm_kernels_wanted() -> bool:
    """Autograde with the sandbox: kernels fork from the warm server (validate and ``qa-kit check`` start their own)."""
    return os.environ.get("NBGRADER_EXECUTION") == "autograde" and require_sandbox()


class PromptKernelClient(AsyncKernelClient):
    """A kernel client that is ready as soon as the kernel is. jupyter_client's ``wait_for_ready`` ends with 0.2 s
    of silence on IOPub, idle time paid by every notebook graded; this one ends when the kernel has answered
    ``kernel_info`` on the shell channel and IOPub has brought that request's idle status, which shows IOPub
    connected and leaves nothing of the request queued."""

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while time.monotonic() < deadline:
            request = self.kernel_info()
            reply = await self.answer(self.shell_channel, request, 1.0, "kernel_info_reply")
            if reply is not None and await self.idle_on_iopub(request):
                self._handle_kernel_info_reply(reply)
                return
            if not await self.is_alive():
                raise RuntimeError("the kernel died before it answered kernel_info")
        raise RuntimeError(f"the kernel did not answer kernel_info within {timeout} s")

    wait_for_ready = _async_wait_for_ready

    def _context_default(self) -> zmq.asyncio.Context:
        """Its sockets connect before the kernel has bound them, and ZMQ tries a failed connect again only after its
        reconnect interval, 100 ms by default: idle time paid by every kernel. Tried again after 5 ms here, doubling
        up to 20 ms (a warm kernel is ready in 70-90 ms on average instead of 171)."""
        context = super()._context_default()
        context.setsockopt(zmq.RECONNECT_IVL, 5)
        context.setsockopt(zmq.RECONNECT_IVL_MAX, 20)
        return context

    @staticmethod
    async def answer(channel, request: str, seconds: float, kind: str) -> dict | None:
        """The message of ``kind`` that answers ``request``; None after ``seconds`` without a message."""
        while True:
            try:
                message = await channel.get_msg(timeout=seconds)
            except Empty:
                return None
            if message["parent_header"].get("msg_id") == request and message["msg_type"] == kind:
                return message

    async def idle_on_iopub(self, request: str) -> bool:
        """Whether IOPub brings ``request``'s idle status. An IOPub that connected after the kernel published it
        never will (a subscriber gets what is published after it joined): False after 50 ms of silence, or at
        once on the kernel's welcome to our subscription (ipykernel 7), which says that IOPub is connected from
        now on, so the next request's status is sure to come (about half of the warm kernels lost their first
        status: 30-50 ms saved on each)."""
        while True:
            try:
                message = await self.iopub_channel.get_msg(timeout=0.05)
            except Empty:
                return False
            if message["msg_type"] == "iopub_welcome":
                return False
            answers = message["parent_header"].get("msg_id") == request and message["msg_type"] == "status"
            if answers and message["content"].get("execution_state") == "idle":
                return True


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel in a bubblewrap sandbox, connected over ipc sockets in a private folder.

    Used for nbgrader's Execute (autograde and validate). Under autograde the kernel is forked by this process's
    warm kernel server when it is free (``qa_lib.course.warm_kernel``). Without bubblewrap: autograde refuses (see
    :func:`require_sandbox`), validate runs the kernel as usual."""

    client_factory = Type(PromptKernelClient, klass=AsyncKernelClient)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.private = Path(tempfile.mkdtemp(prefix="qa-kit-kernel-", dir=kernels_folder()))
        self.transport = "ipc"
        self.ip = str(self.private / "kernel")
        self.connection_file = str(self.private / "connection.json")

    def sandboxed(self) -> bool:
        if os.environ.get("NBGRADER_EXECUTION") == "autograde":
            return require_sandbox()
        return sandbox_works() and not unsandboxed_by_choice()

    async def _async_pre_start_kernel(self, **kw):
        command, kw = await super()._async_pre_start_kernel(**kw)
        if not self.sandboxed():
            return command, kw
        workdir = Path(kw.get("cwd") or os.getcwd()).resolve()
        scratch = scratch_copy(workdir, self.private / "scratch")
        env = kw.get("env") or os.environ  # nbclient put NBGRADER_EXECUTION there
        if warm_kernels_wanted() and warm_kernels().lock.acquire(blocking=False):
            server = warm_kernels()
            self.provisioner = self.forked_provisioner(server)
            env = {**kernel_environment(env), "MPLCONFIGDIR": server.env["MPLCONFIGDIR"]}
            return command, {**kw, "cwd": str(scratch), "env": env}
        writable = {self.private: self.private, workdir: scratch}  # the scratch copy sits at the notebook's path
        env = {**env, **warm_caches(self.private)}
        kw["stdout"] = subprocess.DEVNULL  # the kernel's own banner ("To connect another client ...")
        return bwrap_command(
            command, workdir=workdir, mounts={**kit_package(), **jieba_cache()}, writable=writable, env=env
        ), kw

    def forked_provisioner(self, server: WarmKernels):
        from .warm_kernel import ForkedKernelProvisioner

        forked = ForkedKernelProvisioner(server, kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
        forked.connection_info = self.provisioner.connection_info
        return forked

    async def interrupt_kernel(self) -> None:
        """Over the control channel: a SIGINT to bwrap would not reach a kernel in its own session."""
        self._connect_control_socket()
        self.session.send(self._control_socket, self.session.msg("interrupt_request", content={}))

    async def _async_finish_shutdown(self, waittime=None, pollinterval: float = 0.01, restart: bool = False) -> None:
        """As jupyter_client's, polling for the kernel's end every 10 ms instead of 100 ms (idle time per notebook)."""
        await super()._async_finish_shutdown(waittime, pollinterval, restart)

    async def cleanup_resources(self, restart: bool = False) -> None:
        await super().cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(self.private, ignore_errors=True)


# --- A library without the answers ---------------------------------------------------------------------------------


def stub_functions(source: str, names: set[str], message: str) -> str:
    """``source`` with the bodies of the named top-level functions replaced by ``raise RuntimeError(message)``."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            node.body = [ast.parse(f"raise RuntimeError({message.format(name=node.name)!r})").body[0]]
    return ast.unparse(tree)


STUB_MESSAGE = "qa_lib's {name}() is the reference solution of an exercise: it is not available while grading"


@functools.cache
def module_without(module: str, references: frozenset[str]) -> str:
    """The source of ``qa_lib.<module>`` with those of ``references`` ("module.function") it defines stubbed (kept:
    the judge asks again for every job graded with another exercise's reference)."""
    names = {dotted.rsplit(".", 1)[1] for dotted in references if dotted.rsplit(".", 1)[0] == module}
    source = (package_folder() / f"{module}.py").read_text(encoding="utf-8")
    return stub_functions(source, names, STUB_MESSAGE) if names else source


def library_without(references: Iterable[str], into: Path) -> Path:
    """A copy of ``qa_lib`` in ``into`` whose ``references`` ("module.function") are stubs, with none of the course
    tooling but the probe: mounted over the real package, it leaves no way to call or read the reference code."""
    package, references = package_folder(), frozenset(references)
    target = into / "qa_lib"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "course"))
    (target / "course").mkdir()
    for name in ("__init__.py", "probe.py"):
        shutil.copy(package / "course" / name, target / "course" / name)
    for module in {dotted.rsplit(".", 1)[0] for dotted in references}:
        (target / f"{module}.py").write_text(module_without(module, references), encoding="utf-8")
    return target
