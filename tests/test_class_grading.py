"""``qa-kit grade``: parallel workers lose no grade, write none twice, and give what a sequential autograde gives;
shard processes on PostgreSQL grade disjoint students into one gradebook.

The class (``graded_class`` in conftest.py) hands in notebook 1 only; the reference is nbgrader's plain
autograde, one student at a time, of one student of each kind.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from glob import glob
from pathlib import Path

import pytest
from conftest import CLASS_MIX, submission_time, submit_class
from test_notebooks import NB1

from qa_lib.course.classroom import (
    FAILED,
    GRADED,
    TIMED_OUT,
    TIMEOUT_MARK,
    cause,
    parse_shard,
    read_log,
    select_students,
    status_of,
)
from qa_lib.course.grading import ASSIGNMENT, Course
from qa_lib.course.report import notebook_verdicts

# One student of each gradable kind, graded sequentially as the reference.
REFERENCE = {"solution_a": "solution", "blank": "blank", "bug_a": "end_off_by_one+argmax_dim0"}
GRADABLE = {student: kind for student, kind in CLASS_MIX.items() if kind != "unreadable"}


def representative(student: str) -> str:
    return next(name for name, kind in REFERENCE.items() if kind == CLASS_MIX[student])


def snapshot(db_url: str, student: str) -> dict:
    """Everything autograde stores for a submission, except its timestamp (students differ in it)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gradebook:
        submission = gradebook.find_submission(ASSIGNMENT, student)
        return {
            notebook.name: {
                "flagged": notebook.flagged,
                "late_submission_penalty": notebook.late_submission_penalty,
                "grades": {
                    g.name: (g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade)
                    for g in notebook.grades
                },
                "comments": {c.name: (c.auto_comment, c.manual_comment) for c in notebook.comments},
            }
            for notebook in submission.notebooks
        }


def timestamp(db_url: str, student: str) -> datetime:
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gradebook:
        return gradebook.find_submission(ASSIGNMENT, student).timestamp


def row_counts(db_url: str) -> dict[str, dict]:
    """Per student: submissions, grade rows and comment rows; plus how many (notebook, cell) pairs hold more
    than one grade or comment, and how many grade cells and solution cells the assignment has."""
    from sqlalchemy import create_engine, text

    per_student = """SELECT sa.student_id, COUNT(DISTINCT sa.id), COUNT(DISTINCT g.id), COUNT(DISTINCT c.id)
        FROM submitted_assignment sa JOIN submitted_notebook sn ON sn.assignment_id = sa.id
        LEFT JOIN grade g ON g.notebook_id = sn.id LEFT JOIN comment c ON c.notebook_id = sn.id
        GROUP BY sa.student_id"""
    doubled = """SELECT COUNT(*) FROM (SELECT notebook_id, cell_id FROM {table}
        GROUP BY notebook_id, cell_id HAVING COUNT(*) > 1) AS twice"""
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            students = {row[0]: tuple(row[1:]) for row in connection.execute(text(per_student))}
            return {
                "students": students,
                "doubled": {
                    t: connection.execute(text(doubled.format(table=t))).scalar() for t in ("grade", "comment")
                },
                "cells": {
                    t: connection.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
                    for t in ("grade_cells", "solution_cells")
                },
            }
    finally:
        engine.dispose()


def assert_each_grade_once(db_url: str, students: set[str]) -> None:
    counts = row_counts(db_url)
    grades, comments = counts["cells"]["grade_cells"], counts["cells"]["solution_cells"]
    assert grades > 20 and comments > 10
    assert counts["students"] == {student: (1, grades, comments) for student in students}
    assert counts["doubled"] == {"grade": 0, "comment": 0}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """nbgrader's autograde of one student of each kind, one after the other: {student: (db_url, root)}."""
    course = Course.from_kit_solutions(tmp_path_factory.mktemp("sequential"))
    course.release()
    submit_class(course, REFERENCE)
    for student in REFERENCE:
        course.autograde(student)
    return course


# --- Choosing students ------------------------------------------------------------------------------------------


def test_shards_split_the_class_into_disjoint_parts_that_cover_it():
    students = [f"s{number:02d}" for number in range(7)]
    parts = [select_students(students, shard=(index, 3)) for index in (1, 2, 3)]
    assert sorted(sum(parts, [])) == students
    assert [len(part) for part in parts] == [3, 2, 2]
    assert select_students(students, ["s03", "s01", "s05"], (2, 2)) == ["s03"]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b"])
def test_bad_shards_and_unknown_students_are_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)
    with pytest.raises(ValueError, match="no submission from: ghost"):
        select_students(["s1"], ["s1", "ghost"])


def test_grading_a_folder_that_is_no_course_names_the_missing_gradebook(tmp_path, capsys):
    from qa_lib.cli import main

    assert main(["grade", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"no gradebook at {tmp_path / 'gradebook.db'}" in error and "grading:" not in error  # no progress bar
    assert list(tmp_path.iterdir()) == []  # nbgrader made an empty gradebook there before


def test_a_gradebook_without_the_assignment_is_refused_before_any_student_is_graded(tmp_path, capsys):
    from nbgrader.api import Gradebook

    from qa_lib.cli import main

    Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}").close()
    (tmp_path / "submitted" / "s1" / ASSIGNMENT).mkdir(parents=True)
    assert main(["grade", str(tmp_path), "--jobs", "1"]) == 2  # its worker had started: it stops unused
    assert f"has no assignment {ASSIGNMENT}" in capsys.readouterr().err
    assert not (tmp_path / "autograded").exists()


def test_the_cause_of_a_failure_is_the_last_exception_line_of_nbgraders_log():
    log = (
        "Traceback (most recent call last):\n  ...\n    json.decoder.JSONDecodeError: Expecting value\n"
        "    nbformat.reader.NotJSONError: Notebook does not appear to be JSON: '{'\n"
        "nbgrader.converters.base.NbGraderException: Please see the above traceback\n[ERROR] There was an error"
    )
    assert cause(log) == "nbformat.reader.NotJSONError: Notebook does not appear to be JSON: '{'"
    assert cause("nbgrader autograde x failed: disk full\nmore") == "nbgrader autograde x failed: disk full"


def test_a_timed_out_kernel_is_reported_as_such():
    assert status_of(f"[AutogradeApp] WARNING | {TIMEOUT_MARK}: cell ran 300 s") == TIMED_OUT
    assert status_of("[AutogradeApp] INFO | Writing 9000 bytes") == GRADED


def test_grading_processes_skip_the_iri_grammar_and_still_validate_notebooks():
    """jsonschema's optional rfc3987_syntax import costs 1.8 s of CPU per process; notebooks validate as before."""
    script = (
        "import sys, qa_lib.course.classroom, nbformat\n"
        "notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
        "nbformat.validate(notebook)\n"
        "notebook.cells[0].source = 7\n"
        "try:\n    nbformat.validate(notebook)\nexcept nbformat.ValidationError:\n    print('invalid refused')\n"
        "print(sys.modules['rfc3987_syntax'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["invalid refused", "None"]


# --- SQLite: private gradebooks merged by the parent --------------------------------------------------------------


def test_parallel_grading_equals_sequential_autograde(graded_class, sequential):
    course, _ = graded_class
    for student in GRADABLE:
        reference = representative(student)
        assert snapshot(course.api.coursedir.db_url, student) == snapshot(sequential.api.coursedir.db_url, reference)
        ours = notebook_verdicts(course.folder("autograded", student) / f"{NB1}.ipynb")
        theirs = notebook_verdicts(sequential.folder("autograded", reference) / f"{NB1}.ipynb")
        assert ours == theirs and len(ours) > 10, student
        stamp = datetime.strptime(submission_time(student), "%Y-%m-%d %H:%M:%S UTC")
        assert timestamp(course.api.coursedir.db_url, student) == stamp


def test_every_grade_arrives_exactly_once(graded_class):
    course, outcomes = graded_class
    assert_each_grade_once(course.api.coursedir.db_url, set(GRADABLE))
    for student in GRADABLE:
        assert (course.folder("autograded", student) / f"{NB1}.ipynb").is_file()
    assert {o.student: o.status for o in outcomes} == {s: GRADED for s in GRADABLE} | {"unreadable": FAILED}
    assert {o.student: (o.score, o.max_score) for o in outcomes if o.student.startswith("solution")} == {
        "solution_a": (25, 50),
        "solution_b": (25, 50),
    }


def test_a_failed_grading_leaves_nothing_behind_and_is_logged(graded_class):
    course, outcomes = graded_class
    failed = next(o for o in outcomes if o.student == "unreadable")
    assert failed.error.startswith("nbformat.reader.NotJSONError: Notebook does not appear to be JSON")
    assert "unreadable" not in row_counts(course.api.coursedir.db_url)["students"]
    assert not course.folder("autograded", "unreadable").exists()
    logged = read_log(course.root)
    assert set(logged) == set(CLASS_MIX) and logged["unreadable"].status == FAILED
    assert all(logged[s].status == GRADED and logged[s].seconds > 0 for s in GRADABLE)


def test_workers_leave_no_temporary_folder_behind(graded_class, workers_tmp):
    """A worker ends without tearing its modules down, but only after its cleanups ran: its sandboxed servers'
    folders, the judge's library copy and its tokenizer are gone (torch's compile cache may stay, as anywhere)."""
    assert graded_class and workers_tmp.is_dir()
    assert [path.name for path in workers_tmp.iterdir() if path.name.startswith("qa-kit-")] == []


# --- PostgreSQL: shard processes standing in for machines ---------------------------------------------------------


def postgres_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None  # /usr/local/bin may link initdb but not createdb


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster reached through a Unix socket only; stopped afterwards."""
    binaries = postgres_bin()
    if binaries is None:
        message = "PostgreSQL (initdb, pg_ctl) is not installed: .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run this test, never pass by skipping it
        pytest.skip(message)
    # initdb refuses to run as root: the cluster belongs to an unprivileged user, in a folder it can reach.
    folder = Path(tempfile.mkdtemp(prefix="qa-kit-pg-"))
    prefix = []
    if os.geteuid() == 0:
        owner = "postgres" if "postgres" in {entry.pw_name for entry in pwd.getpwall()} else "nobody"
        shutil.chown(folder, owner)
        prefix = ["runuser", "-u", owner, "--"]
    data, sock, port = folder / "data", folder, "5432"

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, text=True)

    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    options = f"-k {sock} -c listen_addresses='' -p {port}"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        run(str(binaries / "createdb"), "-h", str(sock), "-p", port, "-U", "postgres", "gradebook")
        yield f"postgresql+psycopg://postgres@/gradebook?host={sock}&port={port}"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_shard_processes_grade_into_one_postgres_gradebook(postgres_url, sequential, tmp_path):
    # A course id: nbgrader files the assignment under it, and PostgreSQL (unlike SQLite) enforces that the
    # course row exists; nbgrader creates that row only for a non-empty id.
    settings = {"CourseDirectory": {"db_url": postgres_url, "course_id": ASSIGNMENT}}
    course = Course.from_kit_solutions(tmp_path / "course", settings)
    course.release()
    submit_class(course, REFERENCE)
    command = [sys.executable, "-m", "qa_lib.cli", "grade", str(course.root), "--jobs", "1", "--db-url", postgres_url]
    # Both started before either is waited for: they grade at the same time, as two machines would.
    shards = [
        subprocess.Popen([*command, "--shard", f"{index}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in (1, 2)
    ]
    results = [shard.communicate(timeout=1800) for shard in shards]
    for shard, (out, err) in zip(shards, results):
        assert shard.returncode == 0, f"{out}\n{err[-3000:]}"
    graded = [line.split()[0] for out, _ in results for line in out.splitlines() if f" {GRADED} " in line]
    assert sorted(graded) == sorted(REFERENCE)  # each student graded by exactly one shard
    assert_each_grade_once(postgres_url, set(REFERENCE))
    for student in REFERENCE:
        assert snapshot(postgres_url, student) == snapshot(sequential.api.coursedir.db_url, student)
