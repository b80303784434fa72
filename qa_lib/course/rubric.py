"""Formgrader shows the model answer and rubric under each written answer (W1-W3), to the grader only.

The rubric lives in the solution notebook (``solutions/bert_qa/02_open_questions.ipynb``): each written answer
cell holds the model answer and "评分标准 (rubric)" in its ``### BEGIN SOLUTION`` region, which the release
removes. Formgrader renders a submission with an nbconvert ``HTMLExporter`` configured from nbgrader_config.py
(``c.HTMLExporter.preprocessors``); :class:`ShowRubric` appends the solution's region to the student's answer
in that page. nbgrader's feedback, which students read, is rendered by an ``HTMLExporter`` with the same
configuration: the preprocessor acts only on formgrader's pages, whose resources carry a ``submission_id``.

Nothing here imports torch or transformers: ``nbgrader_config.py`` imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from traitlets import Bool

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
RUBRIC_HEADING = "**仅评分者可见 (grader only)：参考答案与评分标准，来自 {path}**"


def written_references(notebook: NotebookNode) -> dict[str, str]:
    """``{grade id: the solution region}`` of the manually graded markdown answers of a solution notebook."""
    references = {}
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if (
            cell.cell_type == "markdown"
            and meta.get("grade")
            and meta.get("solution")
            and BEGIN_SOLUTION in cell.source
        ):
            region = cell.source.split(BEGIN_SOLUTION, 1)[1].split(END_SOLUTION, 1)[0]
            references[meta["grade_id"]] = region.strip()
    return references


class ShowRubric(Preprocessor):
    """Formgrader page preprocessor: under each written answer, the solution's model answer and rubric."""

    # nbconvert preprocessors are off unless enabled; this one is registered in nbgrader_config.py to run.
    enabled = Bool(True).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        if "submission_id" not in resources:  # feedback for students, or any other export: leave it alone
            return nb, resources
        from nbgrader.coursedir import CourseDirectory

        coursedir = CourseDirectory(config=self.config)
        folder = Path(coursedir.format_path(coursedir.source_directory, ".", resources["assignment_id"]))
        source = folder / f"{resources['notebook_id']}.ipynb"
        if not source.is_file():
            self.log.warning("no solution notebook %s: formgrader shows no rubric", source)
            return nb, resources
        references = written_references(nbformat.read(source, as_version=4))
        heading = RUBRIC_HEADING.format(path=Path(os.path.relpath(source, coursedir.root)).as_posix())
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.cell_type == "markdown" and grade_id in references:
                cell.source = f"{cell.source}\n\n---\n\n{heading}\n\n{references[grade_id]}"
        return nb, resources
