"""Releasing the assignment: the setup cells name a real install source, never the placeholder, and the
kit's wheel ships the library only."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nbformat
import pytest

from qa_lib.course.grading import ASSIGNMENT, Course, GradingError
from qa_lib.course.release import PLACEHOLDER, SETUP_GRADE_ID, build_wheel, wheel_name

ROOT = Path(__file__).resolve().parents[1]


def setup_source(notebook: nbformat.NotebookNode) -> str:
    (cell,) = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == SETUP_GRADE_ID]
    (line,) = [line for line in cell.source.split("\n") if line.startswith("KIT_SOURCE = ")]
    return line


def test_committed_release_installs_the_wheel_and_names_no_placeholder():
    released = sorted((ROOT / "notebooks" / ASSIGNMENT).glob("*.ipynb"))
    assert len(released) == 2
    for path in released:
        assert PLACEHOLDER not in path.read_text(encoding="utf-8"), f"{path.name} still names {PLACEHOLDER}"
        assert setup_source(nbformat.read(path, as_version=4)).startswith(f'KIT_SOURCE = "{wheel_name()}"')


def test_release_writes_the_configured_source_and_refuses_the_placeholder(tmp_path, monkeypatch):
    url = "git+https://github.com/example-course/bert-qa-kit.git@v0.1.0"
    monkeypatch.setenv("QA_KIT_INSTALL_SOURCE", url)  # read by nbgrader_config.py when a Course loads it
    release = Course.from_kit_solutions(tmp_path / "ok").release()
    for path in sorted(release.glob("*.ipynb")):
        assert setup_source(nbformat.read(path, as_version=4)).startswith(f'KIT_SOURCE = "{url}"')

    monkeypatch.setenv("QA_KIT_INSTALL_SOURCE", f"git+https://github.com/{PLACEHOLDER}/bert-qa-kit.git")
    with pytest.raises(GradingError, match="c.KitRelease.install_source"):
        Course.from_kit_solutions(tmp_path / "placeholder").release()


def test_wheel_ships_the_library_only(tmp_path):
    wheel = build_wheel(tmp_path)
    assert wheel.name == wheel_name()
    names = zipfile.ZipFile(wheel).namelist()
    assert "qa_lib/course/release.py" in names and "qa_lib/models.py" in names
    assert all(name.startswith(("qa_lib/", "qa_kit-")) for name in names), names
    assert not [name for name in names if name.endswith(".ipynb")]
