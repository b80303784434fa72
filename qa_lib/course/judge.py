"""The judge: points come from outputs compared outside the student's kernel, as in a programming contest.

Why: a notebook kernel belongs to the student. An IPython hook can swallow every test's error, an object can
equal everything, a cell can rebind the helpers a test relies on. So no test cell decides a grade in the kernel.

How a notebook is graded (``nbgrader autograde``, through the preprocessors registered in nbgrader_config.py):

1. :class:`StripHiddenTests` removes the hidden tests from the notebook before its kernel starts: the student's
   code never sees their inputs, so it cannot print them into its feedback either.
2. :class:`SandboxedExecute` runs the notebook in a bubblewrap sandbox (``qa_lib.course.sandbox``) with output
   capped in bytes and a time budget for the whole notebook. Test cells only print that they are judged outside.
3. :class:`Judge` reads the instructor's test cells from the gradebook and replays them in this process to
   collect their cases (plain data); runs the student's answer cells and those cases in a fresh sandboxed Python
   (``python -m qa_lib.course.probe``) whose ``qa_lib`` has the exercises' reference implementations replaced by
   stubs; compares the outputs here with the library's (``qa_lib.course.exercises``); and writes each test
   cell's verdict as its only output: an error for a failure, nothing else. nbgrader's own SaveAutoGrades then
   turns that into points, so the gradebook, formgrader, feedback and reports work as usual.

No record, a malformed record or a record produced twice for a test gives 0 for it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from subprocess import DEVNULL

import nbformat
import torch
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Bool, Integer

from . import exercises, probe, sandbox
from .exercises import EXERCISES
from .grading import HIDDEN_FEEDBACK, HIDDEN_PLACEHOLDER, cell_error, grade_id, hidden_regions_removed, is_test_cell

HELPER_CELL = "test_helpers"
PROBE_SECONDS = 240  # one sandboxed probe: every test of a notebook; a stuck one loses only unfinished tests
RESULTS_LIMIT_BYTES = 20 * 2**20


# --- Tests: the instructor's cells, replayed here to collect their cases ----------------------------------------------


def collect_cases(helper_source: str, test_sources: dict[str, str]) -> dict[str, list[dict]]:
    """``{grade id: cases}``: the test cells run in this process with ``check`` recording instead of checking.
    They are the instructor's cells from the gradebook; the exercise functions are only names here."""
    recorded: dict[str, list[dict]] = {test_id: [] for test_id in test_sources}
    namespace: dict = {"__name__": "__judge__"}
    exec(compile(helper_source, HELPER_CELL, "exec"), namespace)
    namespace["check"] = lambda grade_id, function, cases: recorded[grade_id].extend(
        {"function": function, **case} for case in cases
    )
    namespace.update({name: name for exercise in EXERCISES.values() for name in exercise.functions})
    for test_id, source in test_sources.items():
        exec(compile(source, test_id, "exec"), namespace)
    return recorded


# --- The sandboxed probe ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeJob:
    cells: list[dict]  # answer cells to execute: {"grade_id", "source"}
    tests: list[dict]  # {"grade_id", "cases"}
    stand_ins: list[str]  # library functions given under the exercise's names
    references_stubbed: frozenset[str]


def probe_jobs(answers: dict[str, str], cases: dict[str, list[dict]]) -> list[ProbeJob]:
    """One probe for the exercises graded with every answer cell, one for those graded with another exercise's
    function replaced by the library's (E5, E8): there that exercise's cell does not run and its reference is live."""
    alone, together = [], []
    for test_id, test_cases in cases.items():
        (together if exercises.exercise_of(test_id).graded_with else alone).append(
            {"grade_id": test_id, "cases": test_cases}
        )
    cells = [{"grade_id": grade_id, "source": source} for grade_id, source in answers.items()]
    jobs = [ProbeJob(cells, alone, [], references_stubbed([]))] if alone else []
    if together:
        replaced = sorted({name for test in together for name in exercises.exercise_of(test["grade_id"]).graded_with})
        owners = {exercises.exercise_defining(name) for name in replaced}
        kept = [cell for cell in cells if cell["grade_id"] not in {owner.answer_cell for owner in owners}]
        jobs.append(ProbeJob(kept, together, replaced, references_stubbed(replaced)))
    return jobs


def references_stubbed(replaced: list[str]) -> frozenset[str]:
    """Every exercise's references but those of the exercises defining ``replaced`` (their library versions)."""
    owners = {exercises.exercise_defining(name) for name in replaced}
    live = {name for owner in owners for name in owner.references}
    return frozenset(name for exercise in EXERCISES.values() for name in exercise.references) - live


@cache
def stubbed_library() -> Path:
    """The warm probes' library copy, every reference stubbed; made once per grading process (kept until it ends)."""
    folder = Path(tempfile.mkdtemp(prefix="qa-kit-judge-lib-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return sandbox.library_without(references_stubbed([]), folder)


def write_overlay(folder: Path, job: ProbeJob) -> None:
    """The modules in which ``job``'s library differs from the warm probes' copy (there the references of the
    exercises that another is graded with are live), for the job's child to import first (``probe.use_overlay``)."""
    live = references_stubbed([]) - job.references_stubbed
    for module in sorted({dotted.rsplit(".", 1)[0] for dotted in live}):
        path = folder / probe.OVERLAY_FOLDER / f"{module}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(sandbox.module_without(module, job.references_stubbed), encoding="utf-8")


@cache
def tokenizer_folder() -> Path:
    """The grader's tokenizer, saved for the probes to load their own copy of it."""
    folder = Path(tempfile.mkdtemp(prefix="qa-kit-judge-tokenizer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    exercises.grader_tokenizer().save_pretrained(folder)
    return folder


TOKENIZER_INSIDE = "/judge/tokenizer"  # where the sandbox sees the tokenizer folder


def write_job(folder: Path, job: ProbeJob, seconds: int, tokenizer: str) -> Path:
    payload = {"cells": job.cells, "tests": job.tests, "stand_ins": job.stand_ins, "tokenizer": tokenizer}
    payload["seconds"] = seconds
    (folder / probe.JOB_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    return folder / probe.RESULTS_FILE


def run_probe(job: ProbeJob, sandboxed: bool, seconds: int, server: int = 0) -> tuple[dict[str, str], list[dict]]:
    """Execute a probe (sandboxed: in warm probe number ``server``); returns the answer cells' errors and the test
    records it wrote (unparsed lines dropped)."""
    if sandboxed:
        return warm_probes()[server].run(job, seconds)
    with tempfile.TemporaryDirectory(prefix="qa-kit-probe-") as folder:  # the instructor opted out of the sandbox
        results = write_job(Path(folder), job, seconds, str(tokenizer_folder()))
        command = [sys.executable, "-m", "qa_lib.course.probe", folder]
        try:
            subprocess.run(command, cwd=folder, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, timeout=PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # the records written so far count
        return read_records(results)


class WarmProbe(sandbox.WarmServer):
    """A sandboxed probe server (``probe.serve``) over the stubbed library copy, started once per grading process:
    it has imported torch and transformers once and forks a fresh child for each job, instead of a new Python per
    job. A job whose library differs (E5, E8: another exercise's reference is live) brings those modules along."""

    def __init__(self, library: Path):
        mounts = {sandbox.package_folder(): library, Path(TOKENIZER_INSIDE): tokenizer_folder()}
        command = [sys.executable, "-m", "qa_lib.course.probe", "--serve", TOKENIZER_INSIDE]
        super().__init__(command, Path(tempfile.mkdtemp(prefix="qa-kit-probe-")), mounts, os.environ)

    def run(self, job: ProbeJob, seconds: int) -> tuple[dict[str, str], list[dict]]:
        with self.lock:
            self.ensure_started()
            sandbox.empty_folder(self.workroot)
            folder = Path(tempfile.mkdtemp(dir=self.workroot))
            results = write_job(folder, job, seconds, TOKENIZER_INSIDE)
            write_overlay(folder, job)
            # The server answers "done" once it has killed whatever the job left running.
            if not self.send(json.dumps({"folder": str(folder), "seconds": PROBE_SECONDS})) or (
                self.reply(PROBE_SECONDS + 30) != "done"
            ):
                self.stop()
            return read_records(results)


WARM_PROBES: list[WarmProbe] = []
JOBS_PER_NOTEBOOK = 2  # probe_jobs: the exercises graded alone, and those graded with another's function


def warm_probes() -> list[WarmProbe]:
    """This process's warm probes (made on first use): one per core it may use (torch's threads: a ``qa-kit grade``
    worker's share), at most one per job of a notebook, so that a notebook's jobs run side by side only where a
    core is free for each."""
    if not WARM_PROBES:
        count = max(1, min(JOBS_PER_NOTEBOOK, torch.get_num_threads()))
        WARM_PROBES.extend(WarmProbe(stubbed_library()) for _ in range(count))
    return WARM_PROBES


def start_warm_probes() -> None:
    """Start them; from a thread that outlives them (see ``sandbox.WarmServer``)."""
    for server in warm_probes():
        server.ensure_started()


@atexit.register
def stop_warm_probes() -> None:
    for server in WARM_PROBES:
        server.stop()
        shutil.rmtree(server.workroot, ignore_errors=True)


def read_records(path: Path) -> tuple[dict[str, str], list[dict]]:
    try:  # O_NOFOLLOW: the file was written in the sandbox, where a link would point into the grader's machine
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
            lines = file.read(RESULTS_LIMIT_BYTES).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return {}, []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    head = records[0].get("cell_errors") if records else None
    cell_errors = {str(k): str(v) for k, v in head.items()} if isinstance(head, dict) else {}
    return cell_errors, [record for record in records[1:] if isinstance(record.get("grade_id"), str)]


# --- Verdicts --------------------------------------------------------------------------------------------------------


def judge_test(
    grade_id: str, cases: list[dict], records: list[dict], cell_errors: dict[str, str], tokenizer
) -> str | None:
    """None when the test passes, else the message its cell shows."""
    mine = [record for record in records if record.get("grade_id") == grade_id]
    exercise = exercises.exercise_of(grade_id)
    cell_error = cell_errors.get(exercise.answer_cell)
    if not cases:
        return "this test cell has no check(...): it cannot be graded outside the kernel"
    if len(mine) != 1:
        return "no result for this test (time or memory limit)" if not mine else "result produced twice: rejected"
    record = mine[0]
    if "outputs" not in record:
        detail = f"your answer cell raised {cell_error}" if cell_error else str(record.get("error", "no output"))
        return f"{detail} (run on its own in a fresh Python, as grading does)"
    outputs = record["outputs"]
    if not isinstance(outputs, list) or len(outputs) != len(cases):
        return "malformed result: rejected"
    for number, (case, got) in enumerate(zip(cases, outputs), 1):
        hint = exercises.verdict(case, got, exercises.expected_output(case, tokenizer))
        if hint is not None:
            return f"case {number}/{len(cases)}: {hint}"
    return None


def judge_notebook(
    answers: dict[str, str], cases: dict[str, list[dict]], sandboxed: bool, seconds: int = 30
) -> dict[str, str | None]:
    """``{test grade id: None (passed) or message}`` for one notebook's answer cells and tests."""
    tokenizer = exercises.grader_tokenizer()
    jobs = probe_jobs(answers, cases)
    servers = len(warm_probes()) if sandboxed else 1
    if sandboxed:
        start_warm_probes()  # in this thread, before the probes run side by side
    with ThreadPoolExecutor(max_workers=len(jobs) or 1) as pool:
        results = list(pool.map(lambda i: run_probe(jobs[i], sandboxed, seconds, i % servers), range(len(jobs))))
    verdicts = {}
    for job, (cell_errors, records) in zip(jobs, results):
        for test in job.tests:
            verdicts[test["grade_id"]] = judge_test(test["grade_id"], test["cases"], records, cell_errors, tokenizer)
    return verdicts


# --- nbgrader preprocessors ------------------------------------------------------------------------------------------


class HideHiddenTests(Preprocessor):
    """Feedback preprocessor: in every cell with a hidden-test region, drop the region and replace the cell's
    outputs (tracebacks quote the failing line) by one line saying whether the hidden tests passed, with the
    error's message when they did not."""

    # nbconvert preprocessors are off unless enabled; this one is registered in nbgrader_config.py to run.
    enabled = Bool(True).tag(config=True)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type != "code":
            return cell, resources
        cell.source, removed = hidden_regions_removed(cell.source)
        if removed or HIDDEN_PLACEHOLDER in cell.source:
            error = cell_error(cell)
            verdict = "通过 (passed)" if error is None else f"未通过 (failed): {error}"
            summary = HIDDEN_FEEDBACK.format(verdict=verdict)
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=summary)]
        return cell, resources


def without_hidden_tests(source: str) -> str:
    return hidden_regions_removed(source, HIDDEN_PLACEHOLDER)[0]


class StripHiddenTests(NbGraderPreprocessor):
    """Sanitizing step of autograde: hidden test code never reaches the student's kernel."""

    def preprocess_cell(self, cell, resources, index):
        if is_test_cell(cell):
            cell.source = without_hidden_tests(cell.source)
        return cell, resources


def cap_outputs(notebook: NotebookNode, cell_bytes: int, notebook_bytes: int) -> None:
    """Drop outputs past ``cell_bytes`` per cell and ``notebook_bytes`` in all, with a visible note."""
    used = 0
    for cell in notebook.cells:
        kept, size = [], 0
        for output in cell.get("outputs", []):
            weight = len(json.dumps(output, ensure_ascii=False).encode("utf-8"))
            if size + weight > cell_bytes or used + weight > notebook_bytes:
                note = (
                    f"[输出被截断 (output truncated): more than {cell_bytes // 2**20} MB in a cell or "
                    f"{notebook_bytes // 2**20} MB in the notebook]"
                )
                kept.append(nbformat.v4.new_output("stream", name="stdout", text=note))
                break
            kept.append(output)
            size += weight
            used += weight
        if "outputs" in cell:
            cell.outputs = kept


class SandboxedExecute(Execute):
    """nbgrader's Execute with the kernel in a sandbox, output capped in bytes and a time budget per notebook."""

    notebook_seconds = Integer(600, help="Wall-clock budget for a whole notebook").tag(config=True)
    cell_output_bytes = Integer(2**20, help="Output kept per cell").tag(config=True)
    notebook_output_bytes = Integer(5 * 2**20, help="Output kept per notebook").tag(config=True)

    def __init__(self, **kwargs):
        kwargs.setdefault("kernel_manager_class", sandbox.SandboxedKernelManager)
        super().__init__(**kwargs)

    def preprocess(self, nb, resources=None, km=None):
        self.deadline = time.monotonic() + self.notebook_seconds
        if sandbox.warm_kernels_wanted():
            sandbox.warm_kernels().ensure_started()  # in this thread, which outlives it (see WarmServer)
        try:
            nb, resources = super().preprocess(nb, resources, km=km)
        except (DeadKernelError, CellTimeoutError) as error:
            # The student's code killed or wedged its kernel: the cells run so far keep their outputs, the rest
            # stay empty, and the judge grades the answer cells all the same.
            self.log.warning("kernel stopped early (%s): %s", type(error).__name__, str(error).split("\n")[0])
        cap_outputs(nb, self.cell_output_bytes, self.notebook_output_bytes)
        return nb, resources

    def _get_timeout(self, cell):
        remaining = max(1, int(self.deadline - time.monotonic()))
        timeout = super()._get_timeout(cell)
        return remaining if timeout is None else min(timeout, remaining)


class Judge(NbGraderPreprocessor):
    """Autograde step after Execute: each test cell's output becomes the judge's verdict (see the module doc)."""

    seconds = Integer(30, help="Time limit for each answer cell and each test's cases in the probe").tag(config=True)

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gradebook:
            source = {
                cell.name: cell.source
                for cell in gradebook.find_notebook(info["notebook"], info["assignment"]).source_cells
            }
        tests = {grade_id(cell): source.get(grade_id(cell), "") for cell in nb.cells if is_test_cell(cell)}
        answers = submitted_answers(nb)
        cases = collect_cases(source.get(HELPER_CELL, ""), tests) if tests else {}
        sandboxed = sandbox.require_sandbox()
        verdicts = judge_notebook(answers, cases, sandboxed, self.seconds) if cases else {}
        for cell in nb.cells:
            if is_test_cell(cell):
                cell.outputs = verdict_outputs(verdicts.get(grade_id(cell), "not judged"))
        return nb, resources


def submitted_answers(nb: NotebookNode) -> dict[str, str]:
    """The student's answer cells of the exercises, by grade id (the first cell of each id)."""
    wanted = {exercise.answer_cell for exercise in EXERCISES.values()}
    answers: dict[str, str] = {}
    for cell in nb.cells:
        name = grade_id(cell)
        if cell.cell_type == "code" and name in wanted and name not in answers:
            answers[name] = cell.source
    return answers


def verdict_outputs(message: str | None) -> list[NotebookNode]:
    if message is None:
        return [nbformat.v4.new_output("stream", name="stdout", text="通过 (passed)\n")]
    return [
        nbformat.v4.new_output(
            "error", ename="AssertionError", evalue=message, traceback=[f"AssertionError: {message}"]
        )
    ]
