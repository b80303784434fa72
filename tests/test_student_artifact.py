"""What students install and open holds no answer: no solution block, no hidden test, no rubric."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from test_notebooks import NB1, NB2, RELEASE, hidden_lines, solution

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_BLOCK = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


def solution_blocks() -> list[str]:
    """Every BEGIN SOLUTION block of the solution notebooks (code answers, and the written answers' model
    answers with their rubrics), one string each with indentation removed."""
    blocks = []
    for name in (NB1, NB2):
        for cell in solution(name).cells:
            blocks += [flatten(block) for block in SOLUTION_BLOCK.findall(cell.source)]
    # One-line answers (return AdamW(...), argmax(dim=-1)) are the textbook call and the library's own code too.
    return [block for block in blocks if block.count("\n") >= 2]


def flatten(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def answers_in(text: str) -> list[str]:
    flat = flatten(text)
    secrets = [line for name in (NB1, NB2) for line in hidden_lines(solution(name))]
    found = [block[:60] for block in solution_blocks() if block in flat]
    found += [line for line in secrets if line in text]
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(folder),
            str(ROOT),
        ],
        check=True,
    )
    (path,) = folder.glob("qa_kit-*.whl")
    return path


def test_the_check_finds_answers_where_they_are():
    assert len(solution_blocks()) >= 6
    assert sum("评分标准 (rubric)" in block for block in solution_blocks()) == 3  # W1-W3's rubrics are blocks too
    assert answers_in(nbformat.writes(solution(NB1))) and answers_in(nbformat.writes(solution(NB2)))


def test_the_wheel_holds_no_solution_no_hidden_test_no_rubric(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert not [name for name in names if "solutions/" in name or name.endswith(".ipynb")]
        texts = {name: archive.read(name).decode("utf-8", errors="replace") for name in names}
    leaks = {name: answers_in(text) for name, text in texts.items() if answers_in(text)}
    assert not leaks, f"the student wheel contains answers: {leaks}"


@pytest.mark.parametrize("name", [NB1, NB2])
def test_released_notebooks_hold_no_answer(name):
    text = (RELEASE / f"{name}.ipynb").read_text(encoding="utf-8")
    assert not answers_in(text)
