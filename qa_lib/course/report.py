"""The class report, ``qa-kit report`` (and the end of ``qa-kit grade``): ``reports/bert_qa/`` in a course.

It reads the gradebook (points), the autograded notebooks (the judge's verdict in each failing test cell's error
output: only the message, never the test's source) and the ``grading_log-*.csv`` files of ``qa-kit grade`` (time
per submission, failures and timeouts), and writes ``index.html`` (self-contained: the histogram is embedded as
base64) plus ``students.csv``, ``exercises.csv`` and ``tests.csv``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import nbformat

from .classroom import (
    GRADED,
    Outcome,
    course_db_url,
    read_log,
    reports_folder,
    require_assignment,
    submitted_students,
)
from .grading import ASSIGNMENT, execution_seconds, is_test_cell, nbgrader_metadata

NOT_SUBMITTED = "notebook not submitted"
NO_MESSAGE = "no error message (scored 0 without an error output)"
TOP_MESSAGES = 3


@dataclass
class TestCell:
    notebook: str
    grade_id: str
    points: float
    graded: int = 0  # students with a grade for this cell
    failed: int = 0  # of them, those below full points
    messages: Counter = field(default_factory=Counter)  # failure message -> students

    @property
    def failure_rate(self) -> float:
        return self.failed / self.graded if self.graded else 0.0


@dataclass
class StudentRow:
    student: str
    status: str
    score: float = 0.0
    max_score: float = 0.0
    grading_seconds: float | None = None  # wall time of the student's grading, from the grading log
    kernel_seconds: float = 0.0  # the kernels' cell execution, from the autograded notebooks
    error: str = ""
    exercises: dict[str, float] = field(default_factory=dict)  # exercise -> autograded points
    in_gradebook: bool = False  # has a submission there (a failed or timed-out regrade may keep an older one)


@dataclass
class ClassReport:
    students: list[StudentRow]
    tests: list[TestCell]
    exercise_points: dict[str, float]  # exercise -> its autograded maximum

    @property
    def problems(self) -> list[StudentRow]:
        return [row for row in self.students if row.status != GRADED]

    def exercise_stats(self) -> list[tuple[str, float, float, float]]:
        """``(exercise, mean, median, max points)`` over the students with a submission in the gradebook."""
        graded = [row for row in self.students if row.in_gradebook]
        stats = []
        for name, points in self.exercise_points.items():
            scores = [row.exercises.get(name, 0.0) for row in graded] or [0.0]
            stats.append((name, statistics.mean(scores), statistics.median(scores), points))
        return stats


# --- Reading the course ------------------------------------------------------------------------------------------


def exercise_name(grade_id: str) -> str:
    return grade_id.split("_")[0]


def verdict(cell) -> str | None:
    """The judge's verdict in a test cell: its error output's message (the traceback is not read: a student's
    own error could quote test code there)."""
    errors = [output for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    return str(errors[0].get("evalue", "")) or None if errors else None


def notebook_verdicts(path: Path) -> dict[str, str | None]:
    """``{grade id: verdict or None}`` of an autograded notebook's test cells."""
    notebook = nbformat.read(path, as_version=4)
    return {nbgrader_metadata(cell)["grade_id"]: verdict(cell) for cell in notebook.cells if is_test_cell(cell)}


def failure_message(root: Path, student: str, notebook: str, grade_id: str, cache: dict) -> str:
    key = (student, notebook)
    if key not in cache:
        path = root / "autograded" / student / ASSIGNMENT / f"{notebook}.ipynb"
        cache[key] = notebook_verdicts(path) if path.is_file() else None
    messages = cache[key]
    if messages is None:
        return NOT_SUBMITTED
    return messages.get(grade_id) or NO_MESSAGE


def kernel_seconds(root: Path, student: str) -> float:
    folder = root / "autograded" / student / ASSIGNMENT
    return sum(execution_seconds(nbformat.read(path, as_version=4)) for path in folder.glob("*.ipynb"))


def build_report(course_root: str | os.PathLike, db_url: str | None = None) -> ClassReport:
    from nbgrader.api import Gradebook

    root = Path(course_root).resolve()
    log = read_log(root)
    tests: dict[str, TestCell] = {}
    rows: dict[str, StudentRow] = {}
    exercise_points: dict[str, float] = {}
    verdicts: dict = {}  # (student, notebook) -> that autograded notebook's verdicts
    db_url = course_db_url(root, db_url)
    require_assignment(db_url)
    with Gradebook(db_url) as gradebook:
        for submission in gradebook.find_assignment(ASSIGNMENT).submissions:
            student = submission.student.id
            logged = log.get(student)
            row = rows[student] = StudentRow(student, logged.status if logged else GRADED, in_gradebook=True)
            if logged:
                row.grading_seconds, row.error = logged.seconds, logged.error
            row.kernel_seconds = kernel_seconds(root, student)
            for notebook in submission.notebooks:
                message = partial(failure_message, root, student, notebook.name, cache=verdicts)
                add_notebook(row, notebook, tests, message)
            exercise_points.update(exercise_maxima(submission))
    add_ungraded(rows, log, submitted_students(root))
    students = sorted(rows.values(), key=lambda row: row.student)
    return ClassReport(students, list(tests.values()), dict(sorted(exercise_points.items())))


def add_notebook(row: StudentRow, notebook, tests: dict[str, TestCell], message: Callable[[str], str]) -> None:
    """Count one submitted notebook's autograded cells into the student's row and the test cells' tallies."""
    for grade in notebook.grades:
        if grade.cell_type != "code":
            continue  # written answers: graded by hand
        name = exercise_name(grade.name)
        row.score += grade.score
        row.max_score += grade.max_score
        row.exercises[name] = row.exercises.get(name, 0.0) + grade.score
        cell = tests.setdefault(grade.name, TestCell(notebook.name, grade.name, grade.max_score))
        cell.graded += 1
        if grade.score < grade.max_score:
            cell.failed += 1
            cell.messages[message(grade.name)] += 1


def exercise_maxima(submission) -> dict[str, float]:
    maxima: dict[str, float] = {}
    for notebook in submission.notebooks:
        for grade in notebook.grades:
            if grade.cell_type == "code":
                name = exercise_name(grade.name)
                maxima[name] = maxima.get(name, 0.0) + grade.max_score
    return maxima


def add_ungraded(rows: dict[str, StudentRow], log: dict[str, Outcome], submitted: list[str]) -> None:
    """Students with a submission folder or a logged failure but no submission in the gradebook."""
    for student in sorted(set(submitted) | set(log)):
        if student not in rows:
            logged = log.get(student)
            rows[student] = StudentRow(
                student,
                logged.status if logged else "not graded",
                grading_seconds=logged.seconds if logged else None,
                error=logged.error if logged else "no submission in the gradebook",
            )


# --- Writing it ----------------------------------------------------------------------------------------------------


def histogram_png(report: ClassReport) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
    from matplotlib.ticker import MaxNLocator

    from qa_lib.plots import use_cjk_font

    use_cjk_font()
    graded = [row for row in report.students if row.in_gradebook]
    figure = Figure(figsize=(7, 3.5), layout="constrained")
    axes = figure.subplots()
    top = max((row.max_score for row in graded), default=1.0) or 1.0
    axes.hist([row.score for row in graded], bins=20, range=(0, top), color="#4878a8", edgecolor="white")
    axes.set_xlabel("自动评分 (autograded points)")
    axes.set_ylabel("学生人数 (students)")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # students come whole
    axes.set_title(f"成绩分布 (score histogram): {len(graded)} 名学生 (students), 满分 (max) {top:g}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_report(course_root: str | os.PathLike, db_url: str | None = None) -> Path:
    """Build the report and write ``reports/bert_qa/``; returns the HTML page's path."""
    report = build_report(course_root, db_url)
    folder = reports_folder(course_root)
    folder.mkdir(parents=True, exist_ok=True)
    write_csvs(report, folder)
    page = folder / "index.html"
    replace_file(page, html_page(report, histogram_png(report)))
    return page


def replace_file(path: Path, text: str) -> None:
    """Write a file whole or not at all: two shard processes may finish and write the report at the same time."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text, encoding="utf-8", newline="")
    os.replace(temporary, path)


def seconds_text(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def student_rows(report: ClassReport) -> list[list]:
    return [
        [
            r.student,
            r.status,
            f"{r.score:g}",
            f"{r.max_score:g}",
            seconds_text(r.grading_seconds),
            f"{r.kernel_seconds:.1f}",
            r.error,
        ]
        for r in report.students
    ]


STUDENT_HEADER = ["student", "status", "score", "max_score", "grading_seconds", "kernel_seconds", "error"]
EXERCISE_HEADER = ["exercise", "mean", "median", "max_points"]
TEST_HEADER = ["notebook", "grade_id", "points", "graded", "failed", "failure_rate", "top_messages"]


def test_rows(report: ClassReport) -> list[list]:
    return [
        [
            t.notebook,
            t.grade_id,
            f"{t.points:g}",
            t.graded,
            t.failed,
            f"{t.failure_rate:.3f}",
            " | ".join(f"{count}x {message}" for message, count in t.messages.most_common(TOP_MESSAGES)),
        ]
        for t in report.tests
    ]


def exercise_rows(report: ClassReport) -> list[list]:
    return [
        [name, f"{mean:.2f}", f"{median:g}", f"{points:g}"] for name, mean, median, points in report.exercise_stats()
    ]


def write_csvs(report: ClassReport, folder: Path) -> None:
    tables = {
        "students.csv": (STUDENT_HEADER, student_rows(report)),
        "exercises.csv": (EXERCISE_HEADER, exercise_rows(report)),
        "tests.csv": (TEST_HEADER, test_rows(report)),
    }
    for name, (header, rows) in tables.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        replace_file(folder / name, buffer.getvalue())


def html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def test_section(report: ClassReport) -> str:
    rows = []
    for t in report.tests:
        messages = "".join(
            f"<li>{count} × {html.escape(message)}</li>" for message, count in t.messages.most_common(TOP_MESSAGES)
        )
        rows.append(
            f"<tr><td>{html.escape(t.notebook)}</td><td>{html.escape(t.grade_id)}</td><td>{t.points:g}</td>"
            f"<td>{t.failed}/{t.graded} ({t.failure_rate:.0%})</td><td><ul>{messages}</ul></td></tr>"
        )
    head = "<tr><th>notebook</th><th>test cell</th><th>points</th><th>failed</th><th>most common messages</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def html_page(report: ClassReport, png: bytes) -> str:
    image = base64.b64encode(png).decode("ascii")
    problems = report.problems
    problem_html = (
        html_table(STUDENT_HEADER, [row for row in student_rows(report) if row[1] != GRADED])
        if problems
        else "<p>无 (none)</p>"
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}ul{margin:0;padding-left:1.2em}"
    )
    return (
        f"<!DOCTYPE html><html lang='zh'><head><meta charset='utf-8'><title>{ASSIGNMENT}: class report</title>"
        f"<style>{style}</style></head><body><h1>{ASSIGNMENT}: 班级报告 (class report)</h1>"
        f"<p>{len(report.students)} students, {len(problems)} not graded, failed or timed out.</p>"
        f"<img alt='score histogram' src='data:image/png;base64,{image}'>"
        f"<h2>评分失败或超时 (grading failed or timed out)</h2>{problem_html}"
        f"<h2>各练习 (per exercise, autograded points)</h2>{html_table(EXERCISE_HEADER, exercise_rows(report))}"
        f"<h2>各测试单元 (per test cell)</h2>{test_section(report)}"
        f"<h2>学生 (students: points and time per submission)</h2>{html_table(STUDENT_HEADER, student_rows(report))}"
        "</body></html>"
    )
