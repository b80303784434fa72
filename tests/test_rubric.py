"""Formgrader's page shows the solution's model answer and rubric under a written answer; other exports do not."""

from __future__ import annotations

import nbformat
from nbconvert import HTMLExporter

from qa_lib.course.grading import ASSIGNMENT, Course, course_config

STUDENT_ANSWER = "学生的回答：切成重叠的窗口。"


def written_answer_notebook() -> nbformat.NotebookNode:
    meta = {"grade": True, "solution": True, "grade_id": "w1_long_contexts", "points": 3, "schema_version": 3}
    answer = nbformat.v4.new_markdown_cell(STUDENT_ANSWER, metadata={"nbgrader": meta})
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("W1"), answer])


def test_formgrader_page_shows_the_rubric_and_feedback_does_not(tmp_path):
    Course.from_kit_solutions(tmp_path)  # the course's solutions/, where the rubric lives
    # The kit's nbgrader_config.py, as formgrader and generate_feedback load it.
    exporter = HTMLExporter(config=course_config(tmp_path))
    page = {"assignment_id": ASSIGNMENT, "notebook_id": "02_open_questions"}

    formgrader_html, _ = exporter.from_notebook_node(
        written_answer_notebook(), resources={**page, "submission_id": "1"}
    )
    assert STUDENT_ANSWER in formgrader_html
    assert "评分标准 (rubric)" in formgrader_html and "solutions/bert_qa/02_open_questions.ipynb" in formgrader_html
    assert "BEGIN SOLUTION" not in formgrader_html

    feedback_html, _ = exporter.from_notebook_node(written_answer_notebook(), resources=page)
    assert STUDENT_ANSWER in feedback_html and "评分标准" not in feedback_html
