"""Grading a whole class: ``qa-kit grade`` runs nbgrader's autograde for many students at a time.

Each student is graded by nbgrader's own autograde (``NbGraderAPI.autograde``) with the kit's configuration, so
the sandboxed kernels, the judge, the gradebook, feedback and formgrader all work as for ``nbgrader autograde``.
What this module adds is how several gradings share one gradebook:

- **SQLite** (the default ``gradebook.db``): SQLite lets one writer in at a time, and nbgrader's autograde writes
  many times per notebook, so parallel autogrades into one file fail with "database is locked". Here each worker
  grades its student in a private course directory (a copy of the source notebooks, of the student's submission
  and of the course gradebook as it was when the run began), and the parent process alone merges the finished
  submission into the course gradebook through nbgrader's ``Gradebook`` API, in one transaction per student, then
  moves ``autograded/<student>/`` into place.
- **PostgreSQL** (``--db-url`` or ``CourseDirectory.db_url``): the database takes concurrent writers, so workers
  autograde straight into it, and several ``qa-kit grade --shard i/n`` processes on different machines can grade
  disjoint students into one gradebook.

Every run writes one row per student to a ``reports/bert_qa/grading_log-*.csv`` (status, seconds, error) for the
class report.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from ..cli import leave
from .grading import ASSIGNMENT, Course, GradingError, course_config, nbgrader_warnings_off

GRADED, FAILED, TIMED_OUT = "graded", "failed", "timed out"
# SandboxedExecute logs this when a cell ran past its time or the notebook past its budget (judge.py).
TIMEOUT_MARK = "kernel stopped early (CellTimeoutError)"
LOG_PATTERN = "grading_log-*.csv"
OUTPUT_NAME = "grading_output.log"  # what worker processes and the kernels they start print


@dataclass
class Outcome:
    """How grading one student went."""

    student: str
    status: str  # GRADED, FAILED or TIMED_OUT (graded, but a cell or the notebook ran out of time)
    seconds: float  # wall time of the student's autograde, merge included
    score: float = 0.0  # autograded points over all notebooks
    max_score: float = 0.0
    error: str = ""  # first line of the failure, for FAILED
    host: str = ""
    finished: str = ""  # UTC, ISO format


def reports_folder(course_root: str | os.PathLike) -> Path:
    return Path(course_root) / "reports" / ASSIGNMENT


def submitted_students(course_root: str | os.PathLike) -> list[str]:
    """Students with a ``submitted/<student>/bert_qa/`` folder, sorted."""
    submitted = Path(course_root) / "submitted"
    return sorted(path.parent.name for path in submitted.glob(f"*/{ASSIGNMENT}") if path.is_dir())


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1 <= i <= n) as ``(i, n)``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 1/2") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: i must be between 1 and n")
    return index, count


def select_students(
    students: list[str], chosen: Iterable[str] | None = None, shard: tuple[int, int] | None = None
) -> list[str]:
    """The students to grade: ``chosen`` (each must have submitted), then every n-th of them for shard i/n.
    Shards deal the sorted names round-robin, so machines with the same submissions split them the same way."""
    if chosen is not None:
        chosen = list(chosen)
        missing = sorted(set(chosen) - set(students))
        if missing:
            raise ValueError(f"no submission from: {', '.join(missing)}")
        students = sorted(set(chosen))
    if shard is not None:
        index, count = shard
        students = students[index - 1 :: count]
    return students


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def course_directory(course_root: str | os.PathLike):
    """nbgrader's CourseDirectory of a course with the kit's configuration (no NbGraderAPI: that one checks
    the exchange folder and logs a CRITICAL line when it is not writable, which grading does not use)."""
    from nbgrader.coursedir import CourseDirectory

    return CourseDirectory(config=course_config(course_root))


def course_db_url(course_root: str | os.PathLike, db_url: str | None = None) -> str:
    return db_url or course_directory(course_root).db_url


def is_sqlite(db_url: str) -> bool:
    return db_url.startswith("sqlite")


def sqlite_path(db_url: str) -> Path:
    return Path(db_url.split(":///", 1)[1])


# --- One student, in a worker process --------------------------------------------------------------------------------


def status_of(log: str) -> str:
    return TIMED_OUT if TIMEOUT_MARK in log else GRADED


def grade_in_private_course(course_root: str, student: str, template_db: str, scratch: str) -> tuple[Outcome, str]:
    """Autograde one student in a private course directory under ``scratch``; returns the outcome and that
    directory (the parent merges it into the course)."""
    started = time.perf_counter()
    private = Path(tempfile.mkdtemp(prefix=f"{student}-", dir=scratch))
    source = course_directory(course_root).source_directory
    shutil.copytree(Path(course_root, source, ASSIGNMENT), private / source / ASSIGNMENT)
    shutil.copytree(Path(course_root, "submitted", student, ASSIGNMENT), private / "submitted" / student / ASSIGNMENT)
    shutil.copy(template_db, private / "gradebook.db")
    return autograde_outcome(Course(private), student, started), str(private)


def grade_in_place(course_root: str, student: str, db_url: str) -> tuple[Outcome, str]:
    """Autograde one student straight into the course and its (PostgreSQL) gradebook."""
    started = time.perf_counter()
    course = Course(course_root, {"CourseDirectory": {"db_url": db_url}})
    return autograde_outcome(course, student, started), ""


def autograde_outcome(course: Course, student: str, started: float) -> Outcome:
    try:
        with nbgrader_warnings_off():
            course.autograde(student)
    except GradingError as error:
        return Outcome(student, FAILED, time.perf_counter() - started, error=cause(str(error)))
    return Outcome(student, status_of(course.last_log), time.perf_counter() - started)


# The last "module.SomeError: message" line of nbgrader's log is the cause; its own NbGraderException ("Please
# see the above traceback") only says that something failed.
EXCEPTION_LINE = re.compile(r"^\s*((?:\w+\.)*\w*(?:Error|Exception|Exit|Interrupt)\b.*)$")


def cause(text: str) -> str:
    """The line of nbgrader's error and log that names the cause, else the first line."""
    causes = [
        match.group(1).strip()
        for match in map(EXCEPTION_LINE.match, text.splitlines())
        if match and "NbGraderException" not in match.group(1) and ":" in match.group(1)
    ]
    return causes[-1] if causes else (text.strip().splitlines() or [""])[0]


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


# --- The parent: the one writer of a SQLite gradebook ---------------------------------------------------------------


def snapshot_gradebook(db_url: str, folder: Path) -> Path:
    """A consistent copy of the course's SQLite gradebook (SQLite's backup API, safe while others read it)."""
    copy = folder / "template.db"
    with closing(sqlite3.connect(sqlite_path(db_url))) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    return copy


def require_gradebook(db_url: str) -> None:
    if is_sqlite(db_url) and not sqlite_path(db_url).is_file():  # nbgrader (or a snapshot) would make an empty one
        raise GradingError(
            f"no gradebook at {sqlite_path(db_url)}: give the course directory (where nbgrader_config.py is), "
            f"after `nbgrader generate_assignment {ASSIGNMENT}` has run there"
        )


def require_assignment(db_url: str) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url) as gradebook:
        try:
            gradebook.find_assignment(ASSIGNMENT)
        except MissingEntry:
            raise GradingError(
                f"the gradebook {db_url} has no assignment {ASSIGNMENT}: run `nbgrader generate_assignment "
                f"{ASSIGNMENT}` in the course directory first"
            ) from None


def merge_submission(source_url: str, target_url: str, student: str) -> None:
    """Copy one student's submission (student record, timestamp, notebooks' flags and late penalties, every grade
    and comment) from a private gradebook into the course gradebook, committed as one transaction."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    with Gradebook(source_url) as source, Gradebook(target_url) as target, warnings.catch_warnings():
        # As in Course.autograde: nbgrader 0.9 warns about every new submission, which is stored all the same.
        warnings.simplefilter("ignore", SAWarning)
        person = source.find_student(student)
        target.update_or_create_student(
            student,
            first_name=person.first_name,
            last_name=person.last_name,
            email=person.email,
            lms_user_id=person.lms_user_id,
        )
        theirs = source.find_submission(ASSIGNMENT, student)
        stamp = {"timestamp": theirs.timestamp} if theirs.timestamp else {}
        ours = target.update_or_create_submission(ASSIGNMENT, student, **stamp)
        notebooks = {notebook.name: notebook for notebook in ours.notebooks}
        for notebook in theirs.notebooks:
            copy_notebook(notebook, notebooks[notebook.name])
        target.db.commit()


def copy_notebook(theirs, ours) -> None:
    ours.flagged = theirs.flagged
    ours.late_submission_penalty = theirs.late_submission_penalty
    grades = {grade.name: grade for grade in ours.grades}
    for grade in theirs.grades:
        for name in ("auto_score", "manual_score", "extra_credit", "needs_manual_grade"):
            setattr(grades[grade.name], name, getattr(grade, name))
    comments = {comment.name: comment for comment in ours.comments}
    for comment in theirs.comments:
        comments[comment.name].auto_comment = comment.auto_comment
        comments[comment.name].manual_comment = comment.manual_comment


def move_autograded(private: Path, course_root: Path, student: str) -> None:
    target = course_root / "autograded" / student / ASSIGNMENT
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(private / "autograded" / student / ASSIGNMENT, target)


def autograded_total(db_url: str, student: str) -> tuple[float, float]:
    """``(score, max_score)`` of a student's autograded cells over every notebook."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gradebook:
        submission = gradebook.find_submission(ASSIGNMENT, student)
        grades = [grade for notebook in submission.notebooks for grade in notebook.grades if grade.cell_type == "code"]
        return sum(grade.score for grade in grades), sum(grade.max_score for grade in grades)


def finish(outcome: Outcome, private: str, course_root: Path, db_url: str) -> Outcome:
    """The parent's part: merge a private grading (SQLite), then read the student's points from the gradebook."""
    started = time.perf_counter()
    try:
        if private and outcome.status != FAILED:
            merge_submission(f"sqlite:///{Path(private) / 'gradebook.db'}", db_url, outcome.student)
            move_autograded(Path(private), course_root, outcome.student)
        if outcome.status != FAILED:
            outcome.score, outcome.max_score = autograded_total(db_url, outcome.student)
    except Exception as error:  # a merge that fails loses this student's grading, not the run
        outcome.status, outcome.error = FAILED, first_line(error)
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)
    outcome.seconds += time.perf_counter() - started
    outcome.host, outcome.finished = socket.gethostname(), datetime.now(UTC).isoformat(timespec="seconds")
    return outcome


# --- The run -------------------------------------------------------------------------------------------------------


def grade_class(
    course_root: str | os.PathLike,
    students: list[str],
    jobs: int,
    db_url: str | None = None,
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Autograde ``students``, ``jobs`` at a time (worker processes); ``on_done`` is called as each finishes.
    Returns the outcomes in the order of ``students`` and appends them to the grading log."""
    root = Path(course_root).resolve()
    db_url = course_db_url(root, db_url)
    require_gradebook(db_url)
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="qa-kit-grade-") as scratch:
        template = str(snapshot_gradebook(db_url, Path(scratch))) if is_sqlite(db_url) else ""
        # spawn: a fresh interpreter per worker, not a fork of a parent holding database connections and threads.
        context = QuickExitContext()
        output = reports_folder(root) / OUTPUT_NAME
        output.parent.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(
            max_workers=max(1, jobs), mp_context=context, initializer=start_worker, initargs=(str(output), jobs)
        ) as pool:
            start_workers(pool, min(jobs, len(students)))
            require_assignment(db_url)  # nbgrader's import (3 s) runs beside the workers' start
            futures: dict[Future, str] = {
                submit_student(pool, str(root), student, db_url, template, scratch): student for student in students
            }
            for future in as_completed(futures):
                outcome = collect(future, futures[future], root, db_url)
                outcomes[outcome.student] = outcome
                on_done(outcome)
    ordered = [outcomes[student] for student in students]
    append_log(root, ordered)
    return ordered


def start_workers(pool: ProcessPoolExecutor, count: int) -> None:
    """Spawn ``count`` workers now: a pool spawns one for each task submitted while none is idle, so a task that
    does nothing starts one. If the run stops before any student is submitted, those tasks are all they ran."""
    for _ in range(count):
        pool.submit(int)


class QuickExitWorker(multiprocessing.context.SpawnProcess):
    """A worker that, once the pool lets it go, leaves as ``qa-kit`` does (``cli.leave``: its exit handlers stop its
    sandboxed servers and remove their folders; its modules are not torn down). A worker that failed exits the usual
    way."""

    def run(self) -> None:
        super().run()
        leave(0)


class QuickExitContext(multiprocessing.context.SpawnContext):
    Process = QuickExitWorker


def submit_student(pool, root: str, student: str, db_url: str, template: str, scratch: str) -> Future:
    if template:
        return pool.submit(grade_in_private_course, root, student, template, scratch)
    return pool.submit(grade_in_place, root, student, db_url)


def start_worker(output: str, jobs: int) -> None:
    """Share the cores between the workers: torch in a kernel or a judge probe starts one thread per core, so
    with N jobs on N cores every student's threads would fight the others' (OMP_NUM_THREADS reaches the
    sandbox; an instructor's own setting wins). Then send the worker's output to a log file."""
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, default_jobs() // max(1, jobs))))
    quiet_worker(output)
    start_warm_servers()


def start_warm_servers() -> None:
    """Start the worker's sandboxed servers before its first student: the warm kernel server's imports (torch,
    transformers, the kit: ~8 s of CPU) then run beside the worker's own (nbgrader, the judge: ~6 s), and the judge
    probes' beside the first notebook's kernel, instead of each waiting for its first use."""
    from . import sandbox

    try:
        if not sandbox.require_sandbox():
            return
    except sandbox.SandboxUnavailable:
        return  # the first autograde fails with this message, for every student
    sandbox.warm_kernels().ensure_started()
    from . import judge

    judge.start_warm_probes()


def quiet_worker(output: str) -> None:
    """Send a worker's stdout and stderr (and so its kernels') to a log file: the NOTE every ipykernel prints
    and nbgrader's log lines would tear the progress bar apart."""
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)


def collect(future: Future, student: str, course_root: Path, db_url: str) -> Outcome:
    try:
        outcome, private = future.result()
    except BrokenProcessPool as error:  # a worker died (killed, out of memory): the students it held are lost
        return finish(Outcome(student, FAILED, 0.0, error=f"worker process died: {error}"), "", course_root, db_url)
    except Exception as error:
        return finish(Outcome(student, FAILED, 0.0, error=first_line(error)), "", course_root, db_url)
    return finish(outcome, private, course_root, db_url)


def append_log(course_root: Path, outcomes: list[Outcome]) -> Path:
    """Write the outcomes to a new ``reports/bert_qa/grading_log-<host>-<pid>.csv``: one file per run, so shard
    processes on several machines sharing the course folder never write the same file."""
    folder = reports_folder(course_root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"grading_log-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=[field.name for field in fields(Outcome)])
        writer.writeheader()
        writer.writerows(asdict(outcome) for outcome in outcomes)
    return path


def read_log(course_root: str | os.PathLike) -> dict[str, Outcome]:
    """The latest logged outcome of each student over every run (empty when ``qa-kit grade`` never ran)."""
    latest: dict[str, Outcome] = {}
    for path in reports_folder(course_root).glob(LOG_PATTERN):
        with path.open(newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                numbers = {name: float(row.pop(name)) for name in ("seconds", "score", "max_score")}
                outcome = Outcome(**row, **numbers)
                if outcome.student not in latest or outcome.finished >= latest[outcome.student].finished:
                    latest[outcome.student] = outcome
    return latest


def table_lines(outcomes: list[Outcome]) -> list[str]:
    lines = [f"{'student':<40}{'status':<11}{'autograded points':>18}{'seconds':>9}"]
    for o in outcomes:
        points = f"{o.score:g} / {o.max_score:g}" if o.status != FAILED else "-"
        lines.append(
            f"{o.student:<40}{o.status:<11}{points:>18}{o.seconds:>9.1f}" + (f"  {o.error}" if o.error else "")
        )
    failed = sum(o.status != GRADED for o in outcomes)
    lines.append(f"{len(outcomes)} students, {len(outcomes) - failed} graded, {failed} failed or timed out")
    return lines


def progress_bar(total: int):
    """tqdm on stderr: students done, failures, rate and ETA."""
    from tqdm import tqdm

    return tqdm(total=total, unit="student", desc="grading", file=sys.stderr, smoothing=0.1)


def grade_command(
    course_root: str | os.PathLike,
    jobs: int | None,
    students: list[str] | None,
    shard: tuple[int, int] | None,
    db_url: str | None,
    say: Callable[[str], None] = print,
) -> list[Outcome]:
    """``qa-kit grade``: grade the selected students with a progress bar, print the table, write the report."""
    from .report import write_report

    chosen = select_students(submitted_students(course_root), students, shard)
    db_url = course_db_url(course_root, db_url)  # nbgrader's configuration, read once for the run and the report
    require_gradebook(db_url)  # a wrong folder gets its error without a progress bar
    bar, failures = progress_bar(len(chosen)), []

    def done(outcome: Outcome) -> None:
        if outcome.status != GRADED:
            failures.append(outcome.student)
        bar.set_postfix(failed=len(failures), refresh=False)
        bar.update(1)

    try:
        outcomes = grade_class(course_root, chosen, jobs or default_jobs(), db_url, done)
    finally:
        bar.close()
    for line in table_lines(outcomes):
        say(line)
    say(f"report: {write_report(course_root, db_url)}")
    return outcomes
