"""The graded notebooks: they run clean, release as committed, autograde fairly and give safe feedback.

Kernels run the offline smoke profile (nbgrader and ``qa-kit check`` set NBGRADER_EXECUTION in the kernel's
environment only). Buggy submissions are the solution notebooks with one function's solution edited, so
each bug is one line here instead of a notebook file.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import nbformat
import pytest

from qa_lib import cli
from qa_lib.course.grading import (
    ASSIGNMENT,
    BEGIN_HIDDEN,
    END_HIDDEN,
    Course,
    ReferenceSolutionCalled,
    autograded_points,
    check_notebook,
    execution_seconds,
    graded_alone,
    reference_disabled,
)
from qa_lib.course.judge import HideHiddenTests

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, RELEASE = ROOT / "solutions" / ASSIGNMENT, ROOT / "notebooks" / ASSIGNMENT
NB1, NB2 = "01_finetune_qa", "02_open_questions"
EXERCISES = {NB1: {"e1", "e2", "e3", "e4", "e5"}, NB2: {"e6", "e7", "e8", "e9", "w1", "w2", "w3"}}


def solution(name: str) -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)


def cell(notebook: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    matches = [c for c in notebook.cells if c.get("id") == cell_id]
    assert len(matches) == 1, f"expected one cell with id {cell_id!r}"
    return matches[0]


def replace(cell_id: str, old: str, new: str):
    """An edit: replace ``old`` (which must occur) by ``new`` in one cell's source."""

    def apply(notebook: nbformat.NotebookNode) -> None:
        target = cell(notebook, cell_id)
        assert old in target.source, f"{old!r} not in cell {cell_id}"
        target.source = target.source.replace(old, new)

    return apply


def replace_solution(cell_id: str, body: str):
    """An edit: replace the (first) ``### BEGIN SOLUTION`` region of a cell by ``body`` (indented 4)."""

    def apply(notebook: nbformat.NotebookNode) -> None:
        target = cell(notebook, cell_id)
        pattern = re.compile(r"### BEGIN SOLUTION\n.*?### END SOLUTION", re.S)
        assert pattern.search(target.source), f"no solution region in {cell_id}"
        indented = body.strip("\n").replace("\n", "\n    ")
        target.source = pattern.sub(lambda _: indented, target.source, count=1)

    return apply


def edited(name: str, *edits) -> nbformat.NotebookNode:
    notebook = solution(name)
    for edit in edits:
        edit(notebook)
    return notebook


# Buggy students: each submits one notebook with bugs in the listed exercises (one bug per exercise).
BUGGY = {
    "end_off_by_one+argmax_dim0": (
        NB1,
        {"e2", "e4"},
        [
            replace("e2_to_token_positions", "end_char - 1,", "end_char,"),
            replace("e4_accuracy", "argmax(dim=-1), end_logits.argmax(dim=-1)", "argmax(dim=0), end_logits.argmax(0)"),
        ],
    ),
    "sequence_index0+first_paragraph+sgd": (
        NB1,
        {"e1", "e2", "e3"},
        [
            replace("e2_to_token_positions", "sequence_index=1", "sequence_index=0"),
            replace("e1_collect_examples", 'article["paragraphs"]:', 'article["paragraphs"][:1]:'),
            replace("e3_make_optimizer", "torch.optim.AdamW(", "torch.optim.SGD("),
        ],
    ),
    "minus_one+context_first": (
        NB1,
        {"e2", "e5"},
        [
            replace("e2_to_token_positions", "start = end = 0", "start = end = -1"),
            replace("e5_predict", "tokenizer(question, context,", "tokenizer(context, question,"),
        ],
    ),
    "delegates_e2": (
        NB1,
        {"e2"},
        [
            replace_solution(
                "e2_to_token_positions",
                "from qa_lib.features import char_to_token_positions\n\n"
                "return char_to_token_positions(encodings, start_chars, end_chars)",
            )
        ],
    ),
    "window_end+independent_argmax+char_masking": (
        NB2,
        {"e6", "e7", "e9"},
        [
            replace("e6_sliding_windows", "offsets[i][0] < end_char", "offsets[i][0] <= end_char"),
            replace_solution(
                "e7_best_span",
                "start, end = start_logits.argmax(dim=-1), end_logits.argmax(dim=-1)\n"
                "return start, end, start_logits.max(dim=-1).values + end_logits.max(dim=-1).values",
            ),
            replace(
                "e9_whole_word_mask",
                "word_sizes = Counter(word for word in word_ids if word is not None)",
                "word_sizes = Counter(position for position, word in enumerate(word_ids) if word is not None)",
            ),
            replace(
                "e9_whole_word_mask",
                "[word in chosen for word in word_ids]",
                "[word is not None and position in chosen for position, word in enumerate(word_ids)]",
            ),
        ],
    ),
    "first_window_only+unseeded_mask": (
        NB2,
        {"e8", "e9"},
        [
            replace("e8_predict_long", "window = int(scores.argmax())", "window = 0"),
            replace("e9_whole_word_mask", "randperm(len(words), generator=generator)", "randperm(len(words))"),
        ],
    ),
}


def exercise(grade_id: str) -> str:
    return grade_id.split("_")[0]


def completed_release(name: str) -> nbformat.NotebookNode:
    """The student notebook with every answer cell filled in from the solution: what a student hands in."""
    release, answers = nbformat.read(RELEASE / f"{name}.ipynb", as_version=4), solution(name)
    for released in release.cells:
        if released.metadata.get("nbgrader", {}).get("solution"):
            released.source = cell(answers, released.id).source
    return release


def visible_text(page: str) -> str:
    """What a reader of an HTML page sees: tags removed (code is split into highlighting spans), entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def hidden_lines(notebook: nbformat.NotebookNode) -> list[str]:
    """Distinctive lines of the hidden-test regions: long enough to prove something, and not also written
    outside a hidden region (a visible test may share a line such as ``with reference_disabled(...)``)."""
    hidden, shown = [], set()
    for c in notebook.cells:
        inside = False
        for line in c.source.split("\n"):
            if BEGIN_HIDDEN in line or END_HIDDEN in line:
                inside = BEGIN_HIDDEN in line
            else:
                (hidden.append if inside else shown.add)(line.strip())
    return [line for line in hidden if len(line) > 25 and line not in shown]


# --- Fast checks of the notebooks' structure and of the helpers ---------------------------------------------------


@pytest.mark.parametrize("name", [NB1, NB2])
def test_solution_notebooks_have_unique_ids_and_graded_exercises(name):
    notebook = solution(name)
    cell_ids = [c.id for c in notebook.cells]
    grade_ids = [c.metadata["nbgrader"]["grade_id"] for c in notebook.cells if "nbgrader" in c.metadata]
    assert len(cell_ids) == len(set(cell_ids)) and len(grade_ids) == len(set(grade_ids))
    for c in notebook.cells:
        meta = c.metadata.get("nbgrader")
        if meta is None:
            continue
        assert meta["schema_version"] == 3
        if meta["solution"] and c.cell_type == "code":
            assert "### START CODE HERE ###" in c.source.split("### BEGIN SOLUTION")[0], c.id
            assert "### END CODE HERE ###" in c.source.split("### END SOLUTION")[1], c.id
        if meta["grade"] and c.cell_type == "code":
            assert BEGIN_HIDDEN in c.source or "_visible" in meta["grade_id"], f"{c.id}: neither visible nor hidden"
    graded = {
        exercise(meta["grade_id"])
        for meta in (c.metadata.get("nbgrader", {}) for c in notebook.cells)
        if meta.get("grade")
    }
    assert graded == EXERCISES[name]


def test_reference_disabled_catches_aliases_and_restores():
    from qa_lib.features import char_to_token_positions as alias
    from qa_lib.models import build_offline_tokenizer

    tokenizer = build_offline_tokenizer()
    encodings = tokenizer(["谁？"], ["小明。"], return_tensors="pt")
    with reference_disabled(alias), pytest.raises(ReferenceSolutionCalled, match="char_to_token_positions"):
        alias(encodings, [0], [2])
    starts, ends = alias(encodings, [0], [2])
    assert (int(starts[0]), int(ends[0])) == (4, 5)


def test_graded_alone_restores_the_namespace():
    namespace = {"best_span": "student's"}
    with graded_alone(namespace, best_span="library's", extra="added"):
        assert namespace == {"best_span": "library's", "extra": "added"}
    assert namespace == {"best_span": "student's"}


def test_hide_hidden_tests_keeps_the_visible_part_and_the_verdict():
    source = f"visible = 1\n{BEGIN_HIDDEN}\nassert secret_check(), 'secret'\n{END_HIDDEN}"
    failing = nbformat.v4.new_code_cell(source)
    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong", traceback=["secret_check()"])
    failing.outputs = [error]
    passing = nbformat.v4.new_code_cell(source)
    plain = nbformat.v4.new_code_cell("print(1)")
    plain.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    # Called as nbconvert's exporters call a registered preprocessor.
    notebook, _ = HideHiddenTests()(nbformat.v4.new_notebook(cells=[failing, passing, plain]), {})
    failing, passing, plain = notebook.cells
    assert failing.source == passing.source == "visible = 1"
    assert [o.text for o in failing.outputs] == ["隐藏测试 (hidden test): 未通过 (failed): AssertionError: wrong"]
    assert "通过 (passed)" in passing.outputs[0].text
    assert plain.outputs[0].text == "1\n"


def test_python3_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    # jupyter_client starts a spec whose command is plain "python"/"python3" with the running interpreter.
    assert argv[0] in {"python", "python3", sys.executable}, (
        f"kernel python3 runs {argv[0]}, not {sys.executable}: run `python -m ipykernel install --user --name python3`"
    )


# --- Running the notebooks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [NB1, NB2])
def test_solution_notebook_runs_clean_with_plots_and_no_stderr(name, tmp_path, capsys):
    path = tmp_path / f"{name}.ipynb"
    path.write_bytes((SOLUTIONS / f"{name}.ipynb").read_bytes())
    report, executed = check_notebook(path)
    with capsys.disabled():
        print(f"\n{name}: executed in {report.seconds:.1f} s (cells {execution_seconds(executed):.1f} s)")
    assert report.passed, "\n".join(report.lines())
    assert report.test_cells >= 10
    stderr = [c.id for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"cells wrote to stderr (nbgrader scores such test cells 0): {stderr}"
    images = [c.id for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    expected = {"learning_curves", "span_probabilities"} if name == NB1 else {"length_histogram"}
    assert expected <= set(images)


def test_check_command_names_the_failing_test_and_exits_non_zero(tmp_path, capsys):
    notebook = completed_release(NB1)
    replace("e2_to_token_positions", "end_char - 1,", "end_char,")(notebook)
    path = tmp_path / "submission.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(SystemExit) as exit_status:
        cli.main(["check", str(path)])
    assert exit_status.value.code == 1
    output = capsys.readouterr().out
    assert "FAILED" in output and "test e2_positions_visible" in output and "end_char - 1" in output
    assert "test e1_" not in output and "test e5_" not in output
    assert "8 more hold hidden tests" in output  # the released notebook's hidden-only test cells are not "passes"


def test_check_command_reports_a_missing_notebook(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing.ipynb")]) == 2
    assert "notebook not found" in capsys.readouterr().err


# --- The nbgrader workflow ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A course with the release and every student autograded: (course, {student: seconds})."""
    course = Course.from_kit_solutions(tmp_path_factory.mktemp("course"))
    release = course.release()
    course.submit("solution", {f"{n}.ipynb": solution(n) for n in (NB1, NB2)})
    course.submit("blank", {p.name: nbformat.read(p, as_version=4) for p in release.glob("*.ipynb")})
    for student, (name, _, edits) in BUGGY.items():
        course.submit(student, {f"{name}.ipynb": edited(name, *edits)})
    seconds = {student: course.autograde(student) for student in ("solution", "blank", *BUGGY)}
    return course, seconds


def test_release_matches_the_committed_student_notebooks(graded):
    course, _ = graded
    for name in (NB1, NB2):
        generated = nbformat.read(course.folder("notebooks") / f"{name}.ipynb", as_version=4)
        committed = nbformat.read(RELEASE / f"{name}.ipynb", as_version=4)
        assert generated == committed, f"notebooks/{ASSIGNMENT}/{name}.ipynb is stale: regenerate the release"
        text = nbformat.writes(committed)
        assert "BEGIN SOLUTION" not in text and BEGIN_HIDDEN not in text
        assert "### START CODE HERE ###" in text and "raise NotImplementedError()" in text


def test_solution_gets_full_marks_and_reports_autograde_time(graded, capsys):
    course, seconds = graded
    grades = course.grades("solution")
    for name in (NB1, NB2):
        lost = {g: grade for g, grade in grades[name].items() if grade.autograded and grade.score != grade.max_score}
        assert not lost, f"{name}: the solution loses points on {lost}"
        executed = nbformat.read(course.folder("autograded", "solution") / f"{name}.ipynb", as_version=4)
        run = execution_seconds(executed)
        with capsys.disabled():
            # Printed, not asserted: speed targets live in bench/, never in timed tests.
            print(f"\nautograde {name}: {run:.1f} s of cell execution (both notebooks: {seconds['solution']:.1f} s)")


def test_blank_release_scores_zero_without_crashing(graded):
    course, _ = graded
    grades = course.grades("blank")
    for name in (NB1, NB2):
        score, max_score = autograded_points(grades[name])
        assert max_score >= 20 and score == 0


@pytest.mark.parametrize("student", list(BUGGY))
def test_buggy_submission_loses_points_only_on_its_exercises(graded, student):
    course, _ = graded
    name, broken, _ = BUGGY[student]
    by_exercise: dict[str, list[float]] = {}
    for grade_id, grade in course.grades(student)[name].items():
        if grade.autograded:
            scores = by_exercise.setdefault(exercise(grade_id), [0.0, 0.0])
            scores[0] += grade.score
            scores[1] += grade.max_score
    assert set(by_exercise) == (EXERCISES[NB1] if name == NB1 else EXERCISES[NB2] - {"w1", "w2", "w3"})
    for number, (score, max_score) in by_exercise.items():
        if number in broken:
            assert score < max_score, f"{student}: the bug in {number} costs no points"
        else:
            assert score == max_score, f"{student}: {number} loses points ({score}/{max_score}) for a bug elsewhere"
    if student == "delegates_e2":
        assert by_exercise["e2"][0] == 0, "calling the library's reference earns no points"


@pytest.mark.parametrize("student", ["end_off_by_one+argmax_dim0", "window_end+independent_argmax+char_masking"])
def test_qa_kit_check_gives_the_verdicts_of_grading(graded, student, tmp_path):
    course, _ = graded
    name, _, edits = BUGGY[student]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(edited(name, *edits), path)
    report, _ = check_notebook(path)
    in_kernel = {error.grade_id for error in report.failed_tests if error.grade_id.endswith("_visible")}
    grades = course.grades(student)[name]
    judged = {grade_id for grade_id, grade in grades.items() if grade_id.endswith("_visible") and grade.score == 0}
    assert in_kernel == judged and judged


def test_feedback_shows_no_hidden_test_source(graded):
    course, _ = graded
    student = "end_off_by_one+argmax_dim0"
    secrets = hidden_lines(solution(NB1))
    assert len(secrets) > 5, "the check below must have something to find"
    autograded = nbformat.writes(nbformat.read(course.folder("autograded", student) / f"{NB1}.ipynb", as_version=4))
    assert not [line for line in secrets if line in autograded], "hidden tests reached the student's kernel"
    page = visible_text(course.feedback(student)[NB1])
    assert "to_token_positions" in page and "公开测试 E2" in page  # the visible tests are there
    leaked = [line for line in secrets if line in page]
    assert not leaked, f"feedback shows hidden test source: {leaked[:3]}"
    assert "隐藏测试 (hidden test): 未通过 (failed): AssertionError" in page
