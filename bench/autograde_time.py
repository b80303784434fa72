"""What trustworthy grading costs: one student's autograde with the kit's sandboxed kernel and judge, against
the same notebooks run the way grading used to decide (every test checked inside a plain, unsandboxed kernel).

    python bench/autograde_time.py [--repeats 2]

Prints seconds per notebook for both and their ratio, measured in one run (run it alone: two heavy jobs on two
cores slow each other down several times). Needs bubblewrap.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import nbformat

from qa_lib.course.grading import ASSIGNMENT, Course, check_notebook, kit_root
from qa_lib.course.sandbox import UNSANDBOXED_VARIABLE

NOTEBOOKS = ("01_finetune_qa", "02_open_questions")


def in_kernel_seconds(name: str) -> float:
    """The solution notebook with its visible and hidden tests run in a plain kernel (what autograde used to do)."""
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {UNSANDBOXED_VARIABLE: "1"}):
        path = Path(folder) / f"{name}.ipynb"
        path.write_bytes((kit_root() / "solutions" / ASSIGNMENT / f"{name}.ipynb").read_bytes())
        started = time.perf_counter()
        report, _ = check_notebook(path)
        assert report.passed, report.lines()
        return time.perf_counter() - started


def judged_seconds(name: str) -> float:
    """``nbgrader autograde`` of one student handing in that solution notebook: sandboxed kernel, then the judge."""
    with tempfile.TemporaryDirectory() as folder:
        course = Course.from_kit_solutions(folder)
        course.release()
        course.submit("student", {f"{name}.ipynb": nbformat.read(course.folder("solutions") / f"{name}.ipynb", 4)})
        seconds = course.autograde("student")
        grades = course.grades("student")[name]
        assert all(g.score == g.max_score for g in grades.values() if g.autograded), "the solution lost points"
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each side")
    args = parser.parse_args()
    rows = {}
    for name in NOTEBOOKS:
        before = min(in_kernel_seconds(name) for _ in range(args.repeats))
        after = min(judged_seconds(name) for _ in range(args.repeats))
        rows[name] = {
            "in_kernel_s": round(before, 1),
            "sandbox_and_judge_s": round(after, 1),
            "ratio": round(after / before, 2),
        }
        print(f"{name}: in-kernel tests {before:.1f} s, sandboxed kernel + judge {after:.1f} s ({after / before:.2f}x)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
