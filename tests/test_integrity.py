"""``qa-kit integrity``: every attack on the grader is reported, honest work never is.

A temporary course holds one student per attack (one hostile answer cell each, in a submission otherwise
solved with the solution's cells), the kit's buggy students, the solution notebooks, the blank release and
students who wrote the exercises independently (tests/honest_answers.py). Everything is read statically.
"""

from __future__ import annotations

import ast
import csv
import re
import shutil
import textwrap

import nbformat
import pytest
from honest_answers import HONEST, HONEST_E4
from test_notebooks import BUGGY, NB1, NB2, RELEASE, SOLUTIONS, edited, solution, visible_text

from qa_lib import cli
from qa_lib.course import integrity
from qa_lib.course.integrity import (
    PAIR_THRESHOLD,
    SOLUTION_THRESHOLD,
    NotebookContext,
    fingerprint,
    grade_id,
    reference_code,
    scan_course,
    similarity,
)

CODE_REASONS = {
    "grading code",
    "reference implementation",
    "test name rebound",
    "builtin rebound",
    "monkeypatch",
    "interpreter internals",
    "file system",
    "process",
    "network",
    "database",
    "obfuscation",
    "namespace tampering",
    "kernel tampering",
    "output tampering",
    "always-equal object",
    "unbounded loop",
    "output flood",
}
STRUCTURE_REASONS = {
    "locked cell edited",
    "grade cell deleted",
    "grade cell duplicated",
    "unknown grade cell",
    "answer cell metadata changed",
}
E2 = "e2_to_token_positions"

# One hostile E2 answer cell per attack: (code before the function, the function's body, the reason expected).
ATTACKS = {
    "reads_solutions": (
        "",
        'text = Path("../../../solutions/bert_qa/01_finetune_qa.ipynb").read_text()\nreturn text',
        "file system",
    ),
    "opens_solutions": ("", 'return open("../../../solutions/bert_qa/01_finetune_qa.ipynb").read()', "file system"),
    "writes_gradebook": (
        "import sqlite3\n",
        'sqlite3.connect("../../../gradebook.db").execute("UPDATE grade SET auto_score = 3")\nreturn None, None',
        "database",
    ),
    "socket": (
        "import socket\n",
        'socket.create_connection(("127.0.0.1", 8888)).sendall(b"answers?")\nreturn None, None',
        "network",
    ),
    "rebinds_check": (
        "check = lambda *args, **kwargs: None\n",
        "return None, None",
        "test name rebound",
    ),
    "imports_over_test_helper": (
        "from contextlib import nullcontext as check\n",
        "return None, None",
        "test name rebound",
    ),
    "patches_grading": (
        "import qa_lib.course.grading as grading\n\ngrading.reference_disabled = lambda *f: None\n",
        "return None, None",
        "grading code",
    ),
    "captures_reference": (
        "import qa_lib.features\n\n_ref = qa_lib.features.char_to_token_positions\n",
        "return _ref(encodings, start_chars, end_chars)",
        "reference implementation",
    ),
    "copies_code_object": (
        "",
        "to_token_positions.__code__ = char_to_token_positions.__code__\nreturn None, None",
        "interpreter internals",
    ),
    "fresh_module_copy": (
        "import importlib.util\n",
        'spec = importlib.util.spec_from_file_location("fresh", "qa_lib/features.py")\n'
        "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
        "return module.char_to_token_positions(encodings, start_chars, end_chars)",
        "interpreter internals",
    ),
    "function_from_code": (
        "import types\n",
        "fresh = types.FunctionType(qa_lib.features.char_to_token_positions.__code__, {})\n"
        "return fresh(encodings, start_chars, end_chars)",
        "interpreter internals",
    ),
    "exits_kernel": ("", "os._exit(0)", "process"),
    "loops_forever": ("", "while True:\n    pass", "unbounded loop"),
    "prints_50_mb": ("", 'print("x" * 50_000_000)\nreturn None, None', "output flood"),
    "floods_stderr": (
        "import sys\n",
        'for _ in range(1000):\n    sys.stderr.write("warning\\n" * 1000)\nreturn None, None',
        "output tampering",
    ),
    "ast_transformer_hook": (
        "import ast\n\n\nclass Forgive(ast.NodeTransformer):\n"
        "    def visit_Module(self, node):\n"
        "        handler = ast.ExceptHandler(None, None, [ast.Pass()])\n"
        "        return ast.Module([ast.Try(node.body, [handler], [], [])], [])\n\n\n"
        "get_ipython().ast_transformers.append(Forgive())\n",
        "return None, None",
        "kernel tampering",
    ),
    "always_equal": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n",
        "return Anything(), Anything()",
        "always-equal object",
    ),
    "patches_torch_equal": ("torch.equal = lambda a, b: True\n", "return None, None", "monkeypatch"),
    "patches_isclose": ("import math\n\nmath.isclose = lambda *a, **k: True\n", "return None, None", "monkeypatch"),
    "detached_process": (
        "",
        'subprocess.Popen(["sleep", "600"], start_new_session=True)\nreturn None, None',
        "process",
    ),
    "base64_exec": (
        'import base64\n\nexec(base64.b64decode("cmVmZXJlbmNlX2Rpc2FibGVkID0gTm9uZQ=="))\n',
        "return None, None",
        "obfuscation",
    ),
    "overwrites_classmate": (
        "",
        'Path("../../alice/bert_qa/01_finetune_qa.ipynb").write_text("{}")\nreturn None, None',
        "file system",
    ),
    "shell_magic": ("!cat ../../../solutions/bert_qa/01_finetune_qa.ipynb\n", "return None, None", "kernel tampering"),
    "line_magic": ("%load ../../../solutions/bert_qa/01_finetune_qa.ipynb\n", "return None, None", "kernel tampering"),
    "literal_getattr": (
        "import qa_lib.features\n",
        'found = getattr(qa_lib.features, "char_to_token_positions")\nreturn found(encodings, start_chars, end_chars)',
        "reference implementation",
    ),
    "star_import": (
        "from qa_lib.decoding import *\n",
        "return best_spans(encodings, encodings, start_chars)",
        "reference implementation",
    ),
    "timed_shell": (
        "",
        '%time os.system("cat ../../../solutions/bert_qa/01_finetune_qa.ipynb")\nreturn None, None',
        "process",
    ),
    "computed_getattr": (
        "",
        'found = getattr(qa_lib.features, "char_to" + "_token_positions")\n'
        "return found(encodings, start_chars, end_chars)",
        "obfuscation",
    ),
    "dunder_import": ('__import__("qa_lib.course.grading")\n', "return None, None", "obfuscation"),
    "settrace": ("sys.settrace(lambda *args: None)\n", "return None, None", "interpreter internals"),
    "event_hook": (
        'get_ipython().events.register("post_run_cell", lambda result: None)\n',
        "return None, None",
        "kernel tampering",
    ),
    "rebinds_isinstance": ("isinstance = lambda *args: True\n", "return None, None", "builtin rebound"),
    "globals_write": ('globals()["reference_disabled"] = None\n', "return None, None", "namespace tampering"),
}


def release(name: str) -> nbformat.NotebookNode:
    return nbformat.read(RELEASE / f"{name}.ipynb", as_version=4)


def cell(notebook: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in notebook.cells if grade_id(c) == cell_id)


def filled(released_source: str, *bodies: str) -> str:
    """The released answer cell with each ``raise NotImplementedError()`` stub replaced by a body, in order."""
    source = released_source
    for body in bodies:
        stub = re.search(r"^( *)raise NotImplementedError\(\)$", source, re.M)
        source = source[: stub.start()] + textwrap.indent(body.strip("\n"), stub.group(1)) + source[stub.end() :]
    return source


def solved(name: str, answers: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The release with every answer cell taken from the solution, then ``answers`` ({grade id: source}) on top."""
    notebook, answer_key = release(name), solution(name)
    for c in notebook.cells:
        if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code":
            c.source = cell(answer_key, grade_id(c)).source
    for cell_id, source in (answers or {}).items():
        cell(notebook, cell_id).source = source
    return notebook


def honest(name: str, variant: int) -> nbformat.NotebookNode:
    """The release answered with the ``variant``-th independent answer of each exercise (left blank when an
    exercise has fewer: two students never hand in the same text)."""
    notebook = release(name)
    for c in notebook.cells:
        answers = HONEST_E4 if grade_id(c) == "e4_accuracy" else HONEST.get(grade_id(c), [])
        if variant < len(answers):
            bodies = answers[variant]
            c.source = filled(c.source, *(bodies if isinstance(bodies, tuple) else [bodies]))
    return notebook


def attack(prefix: str, body: str) -> nbformat.NotebookNode:
    return solved(NB1, {E2: prefix + "\n" + filled(cell(release(NB1), E2).source, body)})


def renamed(code: str) -> str:
    """The same code with every name it binds renamed and its layout rewritten by ast.unparse: a disguised copy."""
    tree = ast.parse("def wrapper():\n" + textwrap.indent(textwrap.dedent(code), "    "))
    names = integrity.assigned_names(tree) - {"wrapper"}
    new = {name: f"q{i}_{name[::-1]}" for i, name in enumerate(sorted(names))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = new.get(node.id, node.id)
        elif isinstance(node, ast.arg):
            node.arg = new.get(node.arg, node.arg)
    return textwrap.dedent(ast.unparse(tree).split("\n", 1)[1])


def locked_edit(notebook: nbformat.NotebookNode) -> None:
    test = cell(notebook, "e1_collect_visible")
    test.source = test.source.replace('check("e1_collect_visible"', 'print("e1_collect_visible"')


def locked_edit_with_checksum(notebook: nbformat.NotebookNode) -> None:
    from nbgrader.utils import compute_checksum

    locked_edit(notebook)
    test = cell(notebook, "e1_collect_visible")
    test.metadata["nbgrader"]["checksum"] = compute_checksum(test)


def more_points(notebook: nbformat.NotebookNode) -> None:
    from nbgrader.utils import compute_checksum

    test = cell(notebook, "e1_collect_visible")
    test.metadata["nbgrader"]["points"] = 20
    test.metadata["nbgrader"]["checksum"] = compute_checksum(test)


def deleted(notebook: nbformat.NotebookNode) -> None:
    notebook.cells.remove(cell(notebook, "e2_positions_visible"))


def duplicated(notebook: nbformat.NotebookNode) -> None:
    copy = nbformat.from_dict(cell(notebook, "e1_collect_visible"))
    copy.id = "copy-of-e1-test"
    notebook.cells.append(copy)


def unlocked_answer(notebook: nbformat.NotebookNode) -> None:
    cell(notebook, "e1_collect_examples").metadata["nbgrader"]["solution"] = False


# Students who tamper with the notebook's nbgrader structure: (edit, cell, reason expected).
STRUCTURE = {
    "edits_test": (locked_edit, "e1_collect_visible", "locked cell edited"),
    "edits_test_and_checksum": (locked_edit_with_checksum, "e1_collect_visible", "locked cell edited"),
    "raises_points": (more_points, "e1_collect_visible", "locked cell edited"),
    "deletes_test": (deleted, "e2_positions_visible", "grade cell deleted"),
    "duplicates_test": (duplicated, "e1_collect_visible", "grade cell duplicated"),
    "unlocks_answer": (unlocked_answer, "e1_collect_examples", "answer cell metadata changed"),
}
HONEST_STUDENTS = [f"honest_{variant}" for variant in range(3)]


def added_cells(notebook: nbformat.NotebookNode, after: str, *sources: str) -> nbformat.NotebookNode:
    """The notebook with cells of the student's own (no nbgrader metadata) after the cell ``after``."""
    position = notebook.cells.index(cell(notebook, after)) + 1
    notebook.cells[position:position] = [nbformat.v4.new_code_cell(source) for source in sources]
    return notebook


# What an honest student tries out in cells of their own: a plot, a timing, a look at the data.
SCRATCH = (
    "%matplotlib inline\nimport matplotlib.pyplot as plt\n\nplt.hist([len(p) for p in train_paragraphs])",
    "%timeit collect_examples(train_squad)",
    "%%time\npositions = to_token_positions(encodings, train_start_chars, train_end_chars)\nprint(positions[0][:5])",
    "from IPython.display import display\n\ndisplay(first)\nquestion = train_questions[0]\nprint(question)",
)


def structure_attack(edit) -> nbformat.NotebookNode:
    notebook = solved(NB1)
    edit(notebook)
    return notebook


def notebook_of(cell_id: str) -> str:
    return NB1 if cell_id[1] <= "5" else NB2


def with_answer(notebook: nbformat.NotebookNode, cell_id: str, body: str) -> nbformat.NotebookNode:
    """The notebook with one answer cell replaced by the released cell filled with ``body``."""
    cell(notebook, cell_id).source = filled(cell(release(notebook_of(cell_id)), cell_id).source, body)
    return notebook


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course with every kind of student submitted; returns (root, report)."""
    root = tmp_path_factory.mktemp("integrity-course")
    shutil.copytree(SOLUTIONS, root / "solutions" / "bert_qa")
    shutil.copytree(RELEASE, root / "notebooks" / "bert_qa")
    submissions = {
        "solution": {NB1: solution(NB1), NB2: solution(NB2)},
        "blank": {NB1: release(NB1), NB2: release(NB2)},
        **{student: {name: edited(name, *edits)} for student, (name, _, edits) in BUGGY.items()},
        **{student: {NB1: attack(prefix, body)} for student, (prefix, body, _) in ATTACKS.items()},
        **{student: {NB1: structure_attack(edit)} for student, (edit, _, _) in STRUCTURE.items()},
        "adds_cell": {NB1: added_cells(solved(NB1), E2, 'import sqlite3\n\nsqlite3.connect("gradebook.db")')},
        # Independent answers, with cells of their own for trying things out.
        **{
            student: {NB1: added_cells(honest(NB1, v), "e1_collect_examples", *SCRATCH), NB2: honest(NB2, v)}
            for v, student in enumerate(HONEST_STUDENTS)
        },
        # Copies (the other answer cells left blank): the E7 solution disguised; the reference of E2 disguised;
        # honest_0's E9 disguised by a classmate.
        "copies_solution": {NB2: with_answer(release(NB2), "e7_best_span", renamed(solution_e7()))},
        "copies_reference": {NB1: with_answer(release(NB1), E2, renamed(reference_body(E2)))},
        "copies_classmate": {
            NB2: with_answer(release(NB2), "e9_whole_word_mask", renamed(HONEST["e9_whole_word_mask"][0]))
        },
    }
    for student, notebooks in submissions.items():
        folder = root / "submitted" / student / "bert_qa"
        folder.mkdir(parents=True)
        for name, notebook in notebooks.items():
            nbformat.write(notebook, folder / f"{name}.ipynb")
    odd = root / "submitted" / "odd_files" / "bert_qa"
    odd.mkdir(parents=True)
    (odd / f"{NB1}.ipynb").write_text("not a notebook", encoding="utf-8")
    nbformat.write(release(NB2), odd / "03_extra.ipynb")
    return root, scan_course(root)


def solution_e7() -> str:
    return NotebookContext.from_notebooks(NB2, solution(NB2), release(NB2)).solution_code("e7_best_span")


def reference_body(cell_id: str) -> str:
    """The reference function's body without its signature and docstring."""
    function = ast.parse(reference_code(cell_id)).body[0]
    return "\n".join(ast.unparse(statement) for statement in function.body[1:])


def rows(report, student: str) -> list[integrity.Finding]:
    return [f for f in report.findings if f.student == student]


@pytest.mark.parametrize("student", list(ATTACKS))
def test_each_attack_is_reported_on_its_cell(course, student):
    _, report = course
    reasons = {f.reason for f in rows(report, student) if f.cell == E2}
    assert ATTACKS[student][2] in reasons, f"{student}: got {reasons}"


@pytest.mark.parametrize("student", list(STRUCTURE))
def test_each_structure_edit_is_reported(course, student):
    _, report = course
    _, cell_id, reason = STRUCTURE[student]
    found = [(f.cell, f.reason) for f in rows(report, student) if f.reason in STRUCTURE_REASONS]
    assert found == [(cell_id, reason)]


def test_a_cell_the_student_added_is_scanned_too(course):
    root, report = course
    notebook = nbformat.read(root / "submitted" / "adds_cell" / "bert_qa" / f"{NB1}.ipynb", as_version=4)
    added = next(i for i, c in enumerate(notebook.cells) if "sqlite3" in c.source)
    alarms = [(f.cell, f.reason) for f in rows(report, "adds_cell") if not f.is_copy]
    assert alarms == [(f"cell {added}", "database")]


def test_integrity_lines_for_the_grading_demo(course):
    root, report = course
    lines = integrity.integrity_lines(root)
    assert lines[2].startswith(f"integrity: {len(report.findings)} findings for ")
    assert any(line.startswith("socket ") and "network" in line for line in lines)


def test_solution_notebooks_are_only_reported_as_identical_to_the_solution(course):
    _, report = course
    found = rows(report, "solution")
    assert {f.reason for f in found} == {"identical to instructor solution"}
    # E3 and E4 are one-liners that everybody writes alike: too short to call a copy.
    assert {f.cell for f in found} == set(HONEST) - {"e3_make_optimizer"}


def test_blank_release_has_no_findings(course):
    _, report = course
    assert rows(report, "blank") == []


@pytest.mark.parametrize("student", list(BUGGY))
def test_buggy_students_raise_no_code_or_structure_alarm(course, student):
    _, report = course
    alarms = [(f.cell, f.reason) for f in rows(report, student) if f.reason in CODE_REASONS | STRUCTURE_REASONS]
    if student == "delegates_e2":  # it calls the library's reference: exactly what the rule is for
        assert alarms and set(alarms) == {(E2, "reference implementation")}
    else:
        assert alarms == []


@pytest.mark.parametrize("student", HONEST_STUDENTS)
def test_independent_answers_have_no_findings_at_all(course, student):
    _, report = course
    # honest_0 is the source that copies_classmate copied: a pair can only name both sides.
    assert [f for f in rows(report, student) if f.other != "copies_classmate"] == []


def test_disguised_copies_are_reported_with_their_source(course):
    _, report = course
    by_student = {(f.student, f.cell, f.reason, f.other) for f in report.findings if f.is_copy}
    assert ("copies_solution", "e7_best_span", "close to instructor solution", "instructor solution") in by_student
    assert ("copies_reference", E2, "close to reference implementation", "qa_lib reference") in by_student
    assert ("copies_classmate", "e9_whole_word_mask", "copy between students", "honest_0") in by_student
    assert ("honest_0", "e9_whole_word_mask", "copy between students", "copies_classmate") in by_student


def test_thresholds_separate_honest_answers_from_disguised_copies():
    """The calibration behind K and the thresholds, re-measured: every independent answer against the solution,
    the reference and each other stays below the threshold by a margin; every disguised copy is above it."""
    contexts = {name: NotebookContext.from_notebooks(name, solution(name), release(name)) for name in (NB1, NB2)}
    honest_scores, copy_scores = [], []
    for cell_id, answers in HONEST.items():
        kit = contexts[notebook_of(cell_id)]
        originals = [kit.solution_code(cell_id), reference_code(cell_id), *answers]
        prints = [fingerprint(code) for code in originals]
        if prints[0] is None:
            continue  # E3: too short to compare (MIN_FILTERED)
        honest_scores += [similarity(prints[i], p) for i, p in enumerate(prints) for p in prints[max(i + 1, 2) :]]
        copy_scores += [similarity(p, fingerprint(renamed(code))) for p, code in zip(prints, originals) if p]
    assert max(honest_scores) < min(SOLUTION_THRESHOLD, PAIR_THRESHOLD) - 0.1, max(honest_scores)
    assert min(copy_scores) > max(SOLUTION_THRESHOLD, PAIR_THRESHOLD) + 0.1, min(copy_scores)


def test_reference_table_names_functions_that_exist():
    """REFERENCES comes from the judge's exercise table: every entry is a function of the library."""
    import importlib

    for names in integrity.REFERENCES.values():
        for dotted in names:
            module, name = dotted.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), name)), dotted


def test_csv_and_html_reports(course, tmp_path):
    root, report = course
    csv_path, html_path = tmp_path / "integrity.csv", tmp_path / "integrity.html"
    assert cli.main(["integrity", str(root), "--csv", str(csv_path), "--html", str(html_path)]) == 0
    with open(csv_path, encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(report.findings)
    network = [r for r in table if r["student"] == "socket" and r["reason"] == "network"]
    assert network and {r["cell"] for r in network} == {E2} and "socket" in network[0]["detail"]
    pair = next(r for r in table if r["student"] == "copies_classmate" and r["reason"] == "copy between students")
    assert float(pair["similarity"]) >= PAIR_THRESHOLD and pair["other"] == "honest_0"
    page = html_path.read_text(encoding="utf-8")
    section = page[page.index("copies_classmate / 02_open_questions / e9_whole_word_mask") :]
    section = section[: section.index("<h3>", 10)] if "<h3>" in section[10:] else section
    assert "class='pair'" in section and "<mark>" in section
    text = visible_text(section)
    assert "groups.setdefault(word, []).append(position)" in text  # honest_0's cell
    assert renamed(HONEST["e9_whole_word_mask"][0]).split("\n")[0].strip() in text  # the copy, beside it


def test_cli_reports_a_missing_course_directory(tmp_path, capsys):
    assert cli.main(["integrity", str(tmp_path / "missing")]) == 2
    assert "no such course directory" in capsys.readouterr().err


def test_unreadable_and_unknown_notebooks_are_findings(course):
    _, report = course
    found = {(f.notebook, f.reason) for f in rows(report, "odd_files")}
    assert found == {(NB1, "unreadable notebook"), ("03_extra", "unknown notebook")}
