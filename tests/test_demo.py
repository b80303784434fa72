"""`qa-kit demo` as `make demo` runs it, once for the module, its output written to a file: the tiny BERT must
visibly learn, windows must beat truncation, and the output must be readable by a person."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qa_lib.course.demo import continue_history

# A Python dict printed as is: {'epoch': 1, ...}
DICT_REPR = re.compile(r"\{'[^']+': ")
STUDENTS = ("solution", "blank")


def test_continue_history_numbers_the_second_run_on():
    first = {"epochs": [{"epoch": 1}, {"epoch": 2}], "steps": [{"step": 1}, {"step": 2}, {"step": 3}]}
    second = {"epochs": [{"epoch": 1}], "steps": [{"step": 1}, {"step": 2}]}
    merged = continue_history(first, second)
    assert [r["epoch"] for r in merged["epochs"]] == [1, 2, 3]
    assert [r["step"] for r in merged["steps"]] == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The full demo (a few minutes on two cores) with stdout and stderr in one file, as `make demo > log`
    gives it. Returns the output's lines (without --json's last line), the JSON results and the run folder."""
    folder = tmp_path_factory.mktemp("demo")
    log = folder / "output.txt"
    with open(log, "w", encoding="utf-8") as output:
        command = [sys.executable, "-m", "qa_lib.cli", "demo", "--output-dir", str(folder / "run"), "--json"]
        run = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ))
    lines = log.read_text(encoding="utf-8").splitlines()
    assert run.returncode == 0, "\n".join(lines[-40:])
    return lines[:-1], json.loads(lines[-1]), folder / "run"


def test_demo_model_learns_and_windows_beat_truncation(demo):
    """Seed 0 measured 81.7 on the test set (35.6 with truncation); over seeds 0-4 the test EM ranged from
    71.7 to 90.6 (bench/RESULTS.md), and another machine's arithmetic changes the run as a seed does:
    hence 70, not 80."""
    _, results, run = demo
    assert results["em_windows"] >= 70, results
    assert results["em_windows"] >= results["em_truncation"] + 25, results
    assert (run / "learning_curves.png").is_file()


def test_demo_output_is_readable(demo):
    lines, _, run = demo
    text = "\n".join(lines)
    assert "CRITICAL" not in text and "Traceback" not in text and "without encryption" not in text
    assert not [line for line in lines if DICT_REPR.search(line)]
    assert max(len(line) for line in lines) <= 200
    assert "Unwritable directory" not in (run / "nbgrader.log").read_text(encoding="utf-8")
    assert lines[-1] == "Next: jupyter lab notebooks/bert_qa/01_finetune_qa.ipynb"
    assert lines[-3].startswith("Shown: ") and lines[-2].startswith("Files: ")


def test_demo_grade_table_rows_are_contiguous_and_grades_right(demo):
    lines, results, _ = demo
    header = next(i for i, line in enumerate(lines) if line.startswith("student"))
    rows = lines[header + 1 : header + 5]
    assert [row.split()[0] for row in rows] == ["solution", "solution", "blank", "blank"], rows
    assert not lines[header + 5].startswith(STUDENTS)
    grades = results["grading"]["students"]
    assert all(g["score"] == g["max_score"] > 0 for g in grades["solution"].values())
    assert all(g["score"] == 0 for g in grades["blank"].values())


def test_readme_states_the_data_numbers_the_demo_prints(demo):
    """Issue #13, item 9: every number in the README is one the kit's own commands print."""
    text = "\n".join(demo[0])
    windows, questions = (
        int(n) for n in re.search(r"(\d+) windows of 512 tokens \(stride 128\) for (\d+)", text).groups()
    )
    truncation = re.search(r"\(truncation\): ([\d.]+)%", text).group(1)
    sliding = re.search(r"\(sliding windows\):\s+([\d.]+)%", text).group(1)
    oracle = re.search(r"oracle EM/F1 .*?: ([\d.]+ / [\d.]+)", text).group(1)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## What `make demo` shows") :][:1000]
    for stated in (
        f"{windows:,} windows of 512 tokens (stride 128) for {questions:,} questions",
        f"{truncation}% with truncation, {sliding}% with sliding windows",
        f"official metric: {oracle}",
    ):
        assert stated in " ".join(section.split()), stated
