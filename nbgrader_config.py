"""nbgrader configuration of the course: one assignment, ``bert_qa`` (``nbgrader autograde bert_qa``).

The repository root is the course directory: ``solutions/bert_qa/`` holds the instructor notebooks,
``nbgrader generate_assignment bert_qa`` writes the student notebooks to ``notebooks/bert_qa/``. Student
submissions go to ``submitted/<student>/bert_qa/``; ``autograded/``, ``feedback/`` and ``gradebook.db`` are
git-ignored. ``qa_lib.course.grading`` loads this file to grade in a temporary course directory (tests, demo).
"""

import os

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    GetGrades,
    IgnorePattern,
    LimitOutput,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)

from qa_lib.course.judge import HideHiddenTests, Judge, SandboxedExecute, StripHiddenTests
from qa_lib.course.release import KitRelease, wheel_name
from qa_lib.course.rubric import ShowRubric

c = get_config()  # noqa: F821 (nbgrader provides get_config when it executes this file)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"

# The released cell keeps the assignment's look: the solution region between ### START CODE HERE ### and
# ### END CODE HERE ### becomes this stub, so each function stays syntactically valid and fails loudly.
c.ClearSolutions.code_stub = {"python": "raise NotImplementedError()"}
c.ClearSolutions.text_stub = "请在此作答 (YOUR ANSWER HERE)"

# nbgrader's default is 30 s per cell. The first cell of each notebook imports torch and transformers
# (5-8 s alone, several times that on a busy shared grader) and the smoke training cell takes a few
# seconds; 300 s leaves room for a slow machine while a submission stuck in a loop still ends.
c.Execute.timeout = 300

# Autograde = nbgrader's own steps plus three of the kit's (qa_lib/course/judge.py): hidden tests are removed before
# the student's kernel starts, the kernel runs in a bubblewrap sandbox (refused without bubblewrap unless
# QA_KIT_UNSANDBOXED=1), and every test cell's verdict comes from the judge, which runs the answer cells and the
# tests' cases in a fresh sandboxed Python and compares the outputs in this process.
c.Autograde.sanitize_preprocessors = [
    ClearOutput,
    DeduplicateIds,
    OverwriteKernelspec,
    OverwriteCells,
    StripHiddenTests,
    CheckCellMetadata,
]
c.Autograde.autograde_preprocessors = [
    SandboxedExecute,
    Judge,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
# Validate (students, on their own machines) sandboxes the kernel where bubblewrap works and never requires it.
c.Execute.kernel_manager_class = "qa_lib.course.sandbox.SandboxedKernelManager"

# Students and assignments are created in the gradebook as they are graded.
c.Autograde.create_student = True

# nbgrader 0.9 puts the hidden tests' source, and tracebacks quoting it, into the feedback HTML;
# HideHiddenTests removes both (a failing hidden test shows only its error message).
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]

# Where the released setup cells install the kit from (a Colab student has no checkout). Set it once for the
# course, e.g. "git+https://github.com/<org>/<repo>.git@v0.1.0"; QA_KIT_INSTALL_SOURCE overrides it for one
# release. The default is the kit's wheel, which `make release` builds next to the released notebooks.
# KitRelease runs first, so that nbgrader's checksums and stored cells see the released setup cell.
c.KitRelease.install_source = os.environ.get("QA_KIT_INSTALL_SOURCE") or wheel_name()
c.GenerateAssignment.preprocessors = [KitRelease, *GenerateAssignment().preprocessors]

# Formgrader shows each written answer's model answer and rubric from solutions/ under the student's answer.
# The feedback's HTMLExporter gets this list too; ShowRubric acts on formgrader's pages only.
c.HTMLExporter.preprocessors = [ShowRubric]
