"""Graded notebooks: the kernel-side helpers they import, ``qa-kit check``, safe feedback and the grading demo.

The course follows nbgrader's layout (``nbgrader_config.py`` at the repository root): instructor notebooks in
``solutions/bert_qa/``, student notebooks in ``notebooks/bert_qa/`` as ``nbgrader generate_assignment bert_qa``
writes them.

- In the kernel: :func:`grading_mode` tells a notebook that nbgrader runs it, :func:`quiet_notebook_output`
  keeps stderr empty (nbgrader scores a test cell 0 when anything reaches stderr, even when it passes), and
  :func:`reference_disabled` lets a test check that an exercise is solved with the student's own code rather
  than by calling the library's reference implementation.
- :func:`check_notebook` (``qa-kit check``) runs a notebook's visible tests like ``nbgrader validate`` but
  reports failing grade cells by grade id and fails with a non-zero exit status (``nbgrader validate``
  exits 0 even when tests fail).
- ``judge.HideHiddenTests`` is the feedback preprocessor registered in ``nbgrader_config.py``: nbgrader 0.9
  puts the hidden tests' source, and tracebacks quoting it, into the feedback HTML.
- :func:`grading_demo` runs the whole instructor workflow in a temporary course directory.

Nothing here imports torch, transformers or nbformat at module level: every graded notebook's first cell imports
this module, and nbformat's JSON-schema machinery alone costs about a second per kernel.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

if TYPE_CHECKING:
    from nbformat import NotebookNode

ASSIGNMENT = "bert_qa"
EXECUTION_VARIABLE = "NBGRADER_EXECUTION"  # nbgrader sets it to "autograde" or "validate" in the kernel's env
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
HIDDEN_FEEDBACK = "隐藏测试 (hidden test): {verdict}"
# What the judge leaves of a hidden-test region in the notebook the student's kernel runs.
HIDDEN_PLACEHOLDER = "# 隐藏测试：评分时在你的内核之外运行 (hidden tests run outside your kernel while grading)"
KERNEL_NAME = "python3"
# One notebook autogrades in well under a minute; a cell that runs this long is stuck.
CHECK_CELL_TIMEOUT = 300


# --- In the kernel --------------------------------------------------------------------------------------------


def grading_mode() -> str | None:
    """``"autograde"`` or ``"validate"`` while nbgrader (or ``qa-kit check``) runs the notebook, else None."""
    return os.environ.get(EXECUTION_VARIABLE) or None


def quiet_notebook_output(disable_progress_bars: bool) -> None:
    """Keep stderr empty in a notebook: warnings off, logging at WARNING to stdout, transformers' own
    stderr handler removed, and (``disable_progress_bars``) tqdm off, since it draws on stderr in a kernel
    without widgets. Call it before importing torch, transformers or qa_lib's training code: tqdm reads
    ``TQDM_DISABLE`` when it is imported."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if disable_progress_bars:
        os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore")
    logging.basicConfig(
        stream=sys.stdout, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()


class ReferenceSolutionCalled(AssertionError):
    """A graded function called the library's reference implementation of its own exercise."""


def _refuse_reference(*args, **kwargs):
    # This code runs as the disabled function's code, so with that module's globals: it may use builtins only.
    name = __import__("sys")._getframe().f_code.co_qualname
    grading = __import__("qa_lib.course.grading", fromlist=["ReferenceSolutionCalled"])
    raise grading.ReferenceSolutionCalled(
        f"qa_lib's {name}() is the reference solution of this exercise: write the exercise with your own code "
        "(the library is there to use around the exercises, not inside them)"
    )


@contextmanager
def reference_disabled(*functions: Callable) -> Iterator[None]:
    """Make each library function raise :class:`ReferenceSolutionCalled` while the block runs.

    The function's code object is swapped, not the module attribute, so every alias fails too (``from
    qa_lib.features import char_to_token_positions`` in a notebook binds the same function object)."""
    originals = [(function, function.__code__) for function in functions]
    try:
        for function, code in originals:
            function.__code__ = _refuse_reference.__code__.replace(co_name=code.co_name, co_qualname=code.co_qualname)
        yield
    finally:
        for function, code in originals:
            function.__code__ = code


# --- qa-kit check ------------------------------------------------------------------------------------------------


def nbgrader_metadata(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell: NotebookNode) -> str | None:
    return nbgrader_metadata(cell).get("grade_id")


def is_test_cell(cell: NotebookNode) -> bool:
    """An autograded test cell: code with nbgrader ``grade`` and no ``solution`` flag."""
    meta = nbgrader_metadata(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


@dataclass(frozen=True)
class CellError:
    index: int  # position of the cell in the notebook
    grade_id: str | None  # nbgrader grade id, None for cells without one
    points: float  # points of a test cell, 0 for other cells
    message: str  # "ExceptionName: message"


@dataclass
class CheckReport:
    notebook: str
    test_cells: int = 0  # test cells with code to run
    points: float = 0.0  # their points
    hidden_only: int = 0  # test cells of a student notebook left with comments only: their tests are hidden
    failed_tests: list[CellError] = field(default_factory=list)  # test cells with an error
    other_errors: list[CellError] = field(default_factory=list)  # errors outside test cells
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failed_tests and not self.other_errors

    def lines(self) -> list[str]:
        lost = sum(error.points for error in self.failed_tests)
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"{self.notebook}: {verdict}: {self.test_cells - len(self.failed_tests)}/{self.test_cells} test cells "
            f"pass ({self.points - lost:g}/{self.points:g} points) in {self.seconds:.1f} s; "
            f"{self.hidden_only} more hold hidden tests that run only at grading"
        ]
        lines += [f"  test {e.grade_id} ({e.points:g} points): {e.message}" for e in self.failed_tests]
        lines += [f"  cell {e.index} ({e.grade_id or 'no grade id'}): {e.message}" for e in self.other_errors]
        return lines


def has_code(cell: NotebookNode) -> bool:
    """True unless every line is blank or a comment (a released cell whose tests were all hidden)."""
    return any(line.strip() and not line.strip().startswith("#") for line in cell.source.split("\n"))


def cell_error(cell: NotebookNode) -> str | None:
    """``"Name: message"`` of the error a code cell raised, None when it ran cleanly."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".rstrip(": ")
    return None


def execute_notebook(
    path: str | os.PathLike, mode: str = "validate", timeout: int = CHECK_CELL_TIMEOUT
) -> NotebookNode:
    """Run every cell of a notebook (errors recorded, not raised) in its own folder, with
    ``NBGRADER_EXECUTION=mode`` in the kernel's environment only, and return the executed notebook.
    The kernel is sandboxed where bubblewrap works, as under nbgrader."""
    from nbclient import NotebookClient

    from .sandbox import SandboxedKernelManager

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: notebook not found")
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent.resolve())}},
        kernel_manager_class=SandboxedKernelManager,
    )
    client.execute(env={**os.environ, EXECUTION_VARIABLE: mode})
    return notebook


def report_errors(notebook: NotebookNode, name: str) -> CheckReport:
    """Which test cells (by grade id) and which other cells of an executed notebook raised an error."""
    report = CheckReport(name)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        meta = nbgrader_metadata(cell)
        test_cell = is_test_cell(cell)
        points = float(meta.get("points", 0)) if test_cell else 0.0
        if test_cell and not has_code(cell):
            report.hidden_only += 1
            continue
        if test_cell:
            report.test_cells += 1
            report.points += points
        message = cell_error(cell)
        if message is not None:
            error = CellError(index, meta.get("grade_id"), points, message)
            (report.failed_tests if test_cell else report.other_errors).append(error)
    return report


def check_notebook(path: str | os.PathLike, timeout: int = CHECK_CELL_TIMEOUT) -> tuple[CheckReport, NotebookNode]:
    """Run a notebook as ``nbgrader validate`` does and report its visible tests; also returns the executed
    notebook (for callers that inspect outputs)."""
    started = time.perf_counter()
    notebook = execute_notebook(path, "validate", timeout)
    report = report_errors(notebook, str(path))
    report.seconds = time.perf_counter() - started
    return report, notebook


@contextmanager
def graded_alone(namespace: dict, **stand_ins: Callable) -> Iterator[None]:
    """Replace names in a notebook's namespace while a test runs, so that an exercise that calls another
    exercise's function (E8 calls the student's ``best_span``) is graded on its own: a mistake in the other
    exercise is not counted twice."""
    missing = object()
    originals = {name: namespace.get(name, missing) for name in stand_ins}
    namespace.update(stand_ins)
    try:
        yield
    finally:
        for name, value in originals.items():
            if value is missing:
                namespace.pop(name, None)
            else:
                namespace[name] = value


# --- Feedback -----------------------------------------------------------------------------------------------------


def hidden_regions_removed(source: str, placeholder: str | None = None) -> tuple[str, bool]:
    """The source without its ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` lines (each region replaced
    by ``placeholder`` when given), and whether any went."""
    kept, hidden, removed = [], False, False
    for line in source.split("\n"):
        if BEGIN_HIDDEN in line:
            hidden = removed = True
            kept += [placeholder] if placeholder is not None else []
        elif END_HIDDEN in line:
            hidden = False
        elif not hidden:
            kept.append(line)
    return "\n".join(kept), removed


# --- A course directory: release, submit, autograde, feedback -----------------------------------------------------


def kit_root() -> Path:
    """The checkout holding ``nbgrader_config.py`` and ``solutions/`` (grading needs the repository, not a wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "nbgrader_config.py").is_file() or not (root / "solutions" / ASSIGNMENT).is_dir():
        raise FileNotFoundError(
            f"{root} has no nbgrader_config.py and solutions/{ASSIGNMENT}/: grading runs from a checkout of the kit"
        )
    return root


def course_config(course_root: str | os.PathLike):
    """The kit's ``nbgrader_config.py`` with the course directory moved to ``course_root``."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(kit_root())).load_config()
    config.CourseDirectory.root = str(Path(course_root).resolve())
    # The default exchange, /usr/local/share/nbgrader/exchange, rarely exists; nbgrader then logs CRITICAL
    # "Unwritable directory" on every start although grading never uses the exchange.
    config.Exchange.root = str(Path(course_root).resolve() / "exchange")
    return config


@dataclass(frozen=True)
class CellGrade:
    score: float
    max_score: float
    autograded: bool  # False for the manually graded written answers


class GradingError(RuntimeError):
    """An nbgrader step failed; the message carries nbgrader's log."""


class Course:
    """An nbgrader course directory (a temporary one in tests and in the demo) for the ``bert_qa`` assignment."""

    def __init__(self, root: str | os.PathLike, overrides: dict[str, dict] | None = None):
        """``overrides``: configuration on top of the kit's, e.g. ``{"Execute": {"timeout": 20}}``."""
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        self.root = Path(root)
        config = course_config(self.root)
        Path(config.Exchange.root).mkdir(parents=True, exist_ok=True)
        for section, values in (overrides or {}).items():
            config[section].update(values)
        self.api = NbGraderAPI(CourseDirectory(config=config), config=config)
        self.last_log = ""  # nbgrader's log of the latest autograde (timeouts show there)

    @classmethod
    def from_kit_solutions(cls, root: str | os.PathLike, overrides: dict[str, dict] | None = None) -> Course:
        """A course in ``root`` whose source notebooks are a copy of the kit's ``solutions/bert_qa``."""
        shutil.copytree(kit_root() / "solutions" / ASSIGNMENT, Path(root) / "solutions" / ASSIGNMENT)
        return cls(root, overrides)

    def folder(self, kind: str, student: str | None = None) -> Path:
        """``<root>/<kind>[/<student>]/bert_qa``, kind being solutions, notebooks, submitted, autograded, feedback."""
        return self.root.joinpath(kind, *([student] if student else []), ASSIGNMENT)

    def _run(self, step: str, result: dict) -> None:
        if not result.get("success"):
            raise GradingError(f"nbgrader {step} failed: {result.get('error', '')}\n{result.get('log', '')}")

    def release(self) -> Path:
        """``nbgrader generate_assignment``: the student notebooks, in ``notebooks/bert_qa``."""
        self._run("generate_assignment", self.api.generate_assignment(ASSIGNMENT))
        return self.folder("notebooks")

    def submit(self, student: str, notebooks: dict[str, NotebookNode]) -> None:
        """Put ``{file name: notebook}`` in the student's submission folder (notebooks left out score 0)."""
        import nbformat

        folder = self.folder("submitted", student)
        folder.mkdir(parents=True, exist_ok=True)
        for name, notebook in notebooks.items():
            nbformat.write(notebook, folder / name)

    def autograde(self, student: str) -> float:
        """``nbgrader autograde`` of one student; returns the seconds it took."""
        from sqlalchemy.exc import SAWarning

        started = time.perf_counter()
        with warnings.catch_warnings():
            # nbgrader 0.9's gradebook warns "Object of type <SubmittedAssignment> not in session" for every
            # new student; the submission is stored all the same.
            warnings.simplefilter("ignore", SAWarning)
            result = self.api.autograde(ASSIGNMENT, student)
        self.last_log = result.get("log", "")
        self._run(f"autograde {student}", result)
        return time.perf_counter() - started

    def grades(self, student: str) -> dict[str, dict[str, CellGrade]]:
        """``{notebook: {grade id: CellGrade}}`` from the gradebook."""
        from nbgrader.api import Gradebook

        grades: dict[str, dict[str, CellGrade]] = {}
        with Gradebook(self.api.coursedir.db_url) as gradebook:
            for notebook in gradebook.find_submission(ASSIGNMENT, student).notebooks:
                grades[notebook.name] = {
                    grade.name: CellGrade(grade.score, grade.max_score, grade.cell_type == "code")
                    for grade in notebook.grades
                }
        return grades

    def feedback(self, student: str) -> dict[str, str]:
        """``nbgrader generate_feedback`` of one student: ``{notebook: feedback HTML}``."""
        self._run(f"generate_feedback {student}", self.api.generate_feedback(ASSIGNMENT, student))
        folder = self.folder("feedback", student)
        return {path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.html"))}


def autograded_points(grades: dict[str, CellGrade]) -> tuple[float, float]:
    """``(score, max_score)`` over the autograded cells of one notebook."""
    auto = [grade for grade in grades.values() if grade.autograded]
    return sum(grade.score for grade in auto), sum(grade.max_score for grade in auto)


def execution_seconds(notebook: NotebookNode) -> float:
    """Seconds from the first cell's start to the last cell's reply, from nbclient's timing metadata."""
    from datetime import datetime

    stamps = [
        datetime.fromisoformat(cell.metadata["execution"][key].replace("Z", "+00:00"))
        for cell in notebook.cells
        for key in ("iopub.execute_input", "shell.execute_reply")
        if key in cell.get("metadata", {}).get("execution", {})
    ]
    return (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0


# --- The demo ---------------------------------------------------------------------------------------------------


def _not_a_checksum_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Attribute '%s' for cell %s has changed")


@contextmanager
def nbgrader_warnings_off():
    """A released notebook's hidden-test cells differ from the source by design; nbgrader warns about
    each changed checksum while autograding, which would bury the grade table. (A filter, not a level:
    every nbgrader app resets the level of its logger.)"""
    log = logging.getLogger("traitlets")
    log.addFilter(_not_a_checksum_warning)
    try:
        yield
    finally:
        log.removeFilter(_not_a_checksum_warning)


@contextmanager
def stderr_to(log_path: Path) -> Iterator[None]:
    """Send this process's stderr, and so the kernels' it starts, to ``log_path`` while the block runs.

    At the file-descriptor level: nbgrader's apps log through Python's logging to stderr, but the kernels
    are subprocesses that write their own warnings (ipykernel's "running over TCP") straight to fd 2."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def grade_rows(course: Course, student: str, names: list[str], log_path: Path) -> list[str]:
    """The grade table's rows of one student: one per notebook, one line saying so for a notebook nbgrader
    could not grade (the reason is in its log)."""
    import nbformat

    rows = []
    grades = course.grades(student)
    for name in names:
        if name not in grades:
            rows.append(f"{student:<10}{name:<24}{'not graded':>20}  (see {log_path})")
            continue
        score, max_score = autograded_points(grades[name])
        run = execution_seconds(nbformat.read(course.folder("autograded", student) / f"{name}.ipynb", as_version=4))
        rows.append(f"{student:<10}{name:<24}{f'{score:g} / {max_score:g}':>20}{run:>14.1f}")
    return rows


def grading_demo(say: Callable[[str], None], log_path: str | os.PathLike = "runs/demo/nbgrader.log") -> dict:
    """The instructor workflow in a temporary course: release the assignment, autograde the solution notebooks
    as one student and the blank release as another, and print the grade table, the timings and the integrity
    report.

    nbgrader's own output (its INFO lines, the kernels' warnings) goes to ``log_path``, not to the table."""
    import nbformat

    from .integrity import integrity_lines
    from .sandbox import UNSANDBOXED_VARIABLE, sandbox_works, unsandboxed_by_choice

    if not sandbox_works() and not unsandboxed_by_choice():
        say(
            "bubblewrap is missing: the demo grades the kit's own notebooks without a sandbox "
            "(a class's submissions need it: README, Academic integrity and sandboxing)"
        )
        with mock.patch.dict(os.environ, {UNSANDBOXED_VARIABLE: "1"}):
            return grading_demo(say, log_path)
    from .release import build_wheel

    say("\n== Grading the notebooks with nbgrader (temporary course directory) ==")
    log_path = Path(log_path).resolve()
    summary: dict = {"students": {}, "log": str(log_path)}
    table, timings = [f"{'student':<10}{'notebook':<24}{'autograded points':>20}{'execution s':>14}"], []
    with nbgrader_warnings_off(), stderr_to(log_path), tempfile.TemporaryDirectory(prefix="qa-kit-course-") as folder:
        course = Course.from_kit_solutions(folder)
        release = course.release()
        # The released setup cells install the kit from this wheel (nbgrader_config.py's default install source).
        wheel = build_wheel(release)
        say(f"release: {release} with {wheel.name}")
        sources = course.folder("solutions")
        submissions = {
            "solution": {path.stem: nbformat.read(path, as_version=4) for path in sorted(sources.glob("*.ipynb"))},
            "blank": {path.stem: nbformat.read(path, as_version=4) for path in sorted(release.glob("*.ipynb"))},
        }
        for student, notebooks in submissions.items():
            course.submit(student, {f"{name}.ipynb": notebook for name, notebook in notebooks.items()})
            try:
                timings.append(f"{student} {course.autograde(student):.1f} s")
            except GradingError as error:
                table.append(f"{student:<10}autograde failed: {str(error).splitlines()[0][:120]} (see {log_path})")
                continue
            table += grade_rows(course, student, list(notebooks), log_path)
            summary["students"][student] = student_summary(course, student)
        integrity = integrity_lines(folder)
    for line in table:
        say(line)
    say(f"autograde of both notebooks: {', '.join(timings)}")  # the log's path is in the demo's last lines
    for line in integrity:
        say(line)
    return summary


def student_summary(course: Course, student: str) -> dict:
    """``{notebook: {score, max_score}}`` of one graded student."""
    return {
        name: dict(zip(("score", "max_score"), autograded_points(grades)))
        for name, grades in course.grades(student).items()
    }
