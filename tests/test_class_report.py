"""``qa-kit report`` on the graded class of conftest.py (CLASS_MIX, notebook 1 only): failure rates, the most
common judge messages and the per-exercise statistics match the mix; the page is self-contained and shows no
hidden-test source."""

from __future__ import annotations

import base64
import csv
import re

import pytest
from conftest import CLASS_MIX
from test_notebooks import NB1, NB2, hidden_lines, solution, visible_text

from qa_lib import cli
from qa_lib.course.classroom import FAILED, GRADED, reports_folder
from qa_lib.course.report import NOT_SUBMITTED, build_report

GRADED_STUDENTS = [student for student, kind in CLASS_MIX.items() if kind != "unreadable"]  # 5
BUGGY_STUDENTS = ["bug_a", "bug_b"]


@pytest.fixture(scope="module")
def report(graded_class):
    course, _ = graded_class
    assert cli.main(["report", str(course.root)]) == 0
    return course, build_report(course.root)


def failing_cells(course, student: str) -> set[str]:
    return {g for g, grade in course.grades(student)[NB1].items() if grade.autograded and grade.score < grade.max_score}


def test_failure_rates_and_top_messages_follow_the_mix(report):
    course, built = report
    tests = {cell.grade_id: cell for cell in built.tests}
    bug_cells = failing_cells(course, "bug_a")
    # The buggy fixture breaks E2 and E4 only; the blank fails every test of notebook 1.
    assert bug_cells and {grade_id.split("_")[0] for grade_id in bug_cells} == {"e2", "e4"}
    nb1 = [cell for cell in tests.values() if cell.notebook == NB1]
    assert len(nb1) >= 10
    for cell in nb1:
        buggy = cell.grade_id in bug_cells
        assert (cell.graded, cell.failed) == (5, 1 + 2 * buggy), cell.grade_id
        assert cell.failure_rate == pytest.approx((1 + 2 * buggy) / 5)
        (top, top_count), *rest = cell.messages.most_common()
        blank = "NotImplementedError" in top
        assert (top_count, blank) == ((2, False) if buggy else (1, True)), (cell.grade_id, cell.messages)
        assert [(("NotImplementedError" in m), n) for m, n in rest] == ([(True, 1)] if buggy else [])
    top_e2 = tests["e2_positions_visible"].messages.most_common(1)[0][0]
    assert "expected tokens (13, 15), got (13, 16)" in top_e2 and "end_char - 1" in top_e2
    for cell in tests.values():
        if cell.notebook == NB2:
            assert cell.failed == 5 and dict(cell.messages) == {NOT_SUBMITTED: 5}


def test_exercise_statistics_and_student_rows(report):
    _, built = report
    stats = {name: (mean, median, points) for name, mean, median, points in built.exercise_stats()}
    # E1 (4 points) and E3 (3 points): four students of five earn full points, the blank none.
    assert stats["e1"] == (pytest.approx(3.2), 4, 4) and stats["e3"] == (pytest.approx(2.4), 3, 3)
    assert stats["e6"] == (0, 0, stats["e6"][2]) and stats["e6"][2] > 0
    rows = {row.student: row for row in built.students}
    assert set(rows) == set(CLASS_MIX)
    assert [rows[s].status for s in GRADED_STUDENTS] == [GRADED] * 5 and rows["unreadable"].status == FAILED
    assert rows["solution_a"].score == rows["solution_b"].score == 25 and rows["blank"].score == 0
    assert all(rows[s].grading_seconds > 0 and rows[s].kernel_seconds > 0 for s in GRADED_STUDENTS)
    assert [row.student for row in built.problems] == ["unreadable"]


def test_page_is_self_contained_and_shows_no_hidden_test_source(report):
    course, built = report
    folder = reports_folder(course.root)
    page = (folder / "index.html").read_text(encoding="utf-8")
    image = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert image and base64.b64decode(image.group(1)).startswith(b"\x89PNG")
    assert not re.search(r"(src|href)=['\"](?!data:)", page), "the page must not load anything"
    text = visible_text(page)
    assert "unreadable" in text.split("per exercise")[0]  # listed among the failed gradings, above the tables
    assert "2 × case 1/1: answer 0 ('北京市'): expected tokens (13, 15), got (13, 16)" in text
    secrets = hidden_lines(solution(NB1))
    assert len(secrets) > 5 and not [line for line in secrets if line in page]
    with (folder / "tests.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(built.tests)
    e2 = next(row for row in rows if row["grade_id"] == "e2_positions_visible")
    assert (e2["failed"], e2["failure_rate"]) == ("3", "0.600") and e2["top_messages"].startswith("2x case 1/1")
    with (folder / "students.csv").open(encoding="utf-8") as file:
        assert {row["student"]: row["status"] for row in csv.DictReader(file)}["unreadable"] == FAILED
