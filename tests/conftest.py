"""Shared fixtures. Real-data fixtures read the folders named by environment variables:

- QA_KIT_CMRC_DIR:  folder with cmrc2018_dev.json and cmrc2018_trial.json
- QA_KIT_VOCAB_DIR: folder with the bert-base-chinese vocab.txt

`make test` and `.ci/run` set both. Without them a developer's run skips the real-data tests;
under CI (CI=true) a missing folder is an error, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell starts background jobs (`make test &`, nohup) with Ctrl-C ignored, and every process inherits that: the
# Ctrl-C tests (test_checkpoint) need it delivered, here and in the trainings they start (a handler, unlike
# "ignored", does not survive exec, so children start with the default and Python installs its own).
signal.signal(signal.SIGINT, signal.default_int_handler)


def _data_folder(variable: str, expected_file: str) -> Path:
    folder = os.environ.get(variable)
    if folder and (Path(folder) / expected_file).is_file():
        return Path(folder)
    message = f"{variable} must name a folder containing {expected_file} (got {folder!r})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cmrc_dir() -> Path:
    return _data_folder("QA_KIT_CMRC_DIR", "cmrc2018_dev.json")


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    return _data_folder("QA_KIT_VOCAB_DIR", "vocab.txt")


@pytest.fixture(scope="session")
def real_tokenizer(vocab_dir):
    from qa_lib.models import load_tokenizer

    return load_tokenizer(vocab_dir)


@pytest.fixture(scope="session")
def offline_tokenizer():
    from qa_lib.models import build_offline_tokenizer

    return build_offline_tokenizer()


# A class with a known mix of students, each handing in notebook 1 only: the solution twice (identical
# submissions must get identical grades), the blank release once, one buggy fixture twice, and a file that is
# not a notebook (nbgrader's autograde fails on it).
CLASS_MIX = {
    "solution_a": "solution",
    "solution_b": "solution",
    "blank": "blank",
    "bug_a": "end_off_by_one+argmax_dim0",
    "bug_b": "end_off_by_one+argmax_dim0",
    "unreadable": "unreadable",
}


def class_notebook(kind: str):
    """Notebook 1 as a student of this kind hands it in: ``solution``, ``blank`` or a BUGGY fixture's name."""
    import nbformat
    from test_notebooks import BUGGY, NB1, RELEASE, edited, solution

    if kind == "solution":
        return solution(NB1)
    if kind == "blank":
        return nbformat.read(RELEASE / f"{NB1}.ipynb", as_version=4)
    name, _, edits = BUGGY[kind]
    assert name == NB1
    return edited(name, *edits)


def submission_time(student: str) -> str:
    return f"2026-12-01 10:{sorted(CLASS_MIX).index(student):02d}:00 UTC"


def submit_class(course, mix: dict[str, str]) -> None:
    """Each student's notebook 1, with a distinct submission time in timestamp.txt (nbgrader reads it)."""
    from test_notebooks import NB1

    for student, kind in mix.items():
        if kind == "unreadable":
            course.folder("submitted", student).mkdir(parents=True)
            (course.folder("submitted", student) / f"{NB1}.ipynb").write_text("{not a notebook")
        else:
            course.submit(student, {f"{NB1}.ipynb": class_notebook(kind)})
        (course.folder("submitted", student) / "timestamp.txt").write_text(submission_time(student))


@pytest.fixture(scope="session")
def workers_tmp(tmp_path_factory) -> Path:
    """The temporary folder of ``graded_class``'s workers (outside the course, which their sandboxes hide)."""
    return tmp_path_factory.mktemp("workers-tmp")


@pytest.fixture(scope="session")
def graded_class(tmp_path_factory, workers_tmp):
    """The CLASS_MIX course graded by ``grade_class`` with 3 workers on the default SQLite gradebook:
    (course, outcomes)."""
    from qa_lib.course.classroom import grade_class
    from qa_lib.course.grading import Course

    course = Course.from_kit_solutions(tmp_path_factory.mktemp("class"))
    course.release()
    submit_class(course, CLASS_MIX)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(workers_tmp))  # read by the spawned workers; this process has chosen its own
        return course, grade_class(course.root, sorted(CLASS_MIX), jobs=3)
