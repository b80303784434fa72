"""Hostile submissions graded through real ``nbgrader autograde``: nothing they did not earn, nothing outside
their own scratch folder, nothing left running, nobody else disturbed.

Each student hands in notebook 1 only: either the blank release with a trick (it must score 0) or the solution
with an attack added to an answer cell (the points are earned; the attack must find, change and keep nothing).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import pytest
from test_notebooks import NB1, RELEASE, cell, hidden_lines, solution, visible_text

from qa_lib.course.grading import Course, autograded_points
from qa_lib.course.integrity import scan_course

ANSWER_CELL = "e1_collect_examples"
MARKER = "qa-kit-hostile-marker"


def blank_release() -> nbformat.NotebookNode:
    return nbformat.read(RELEASE / f"{NB1}.ipynb", as_version=4)


def appended(notebook: nbformat.NotebookNode, code: str, cell_id: str = ANSWER_CELL) -> nbformat.NotebookNode:
    """The notebook with ``code`` added at the end of an answer cell (module level, after the function)."""
    target = cell(notebook, cell_id)
    target.source = target.source + "\n\n" + code.strip() + "\n"
    return notebook


SWALLOW_EVERY_ERROR = """
import ast

class Swallow(ast.NodeTransformer):
    def visit_Module(self, node):
        handler = ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()), name=None, body=[ast.Pass()])
        node.body = [ast.Try(body=node.body or [ast.Pass()], handlers=[handler], orelse=[], finalbody=[])]
        return ast.fix_missing_locations(node)

get_ipython().ast_transformers.append(Swallow())
"""

ALWAYS_EQUAL = """
import math

class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __getattr__(self, name): return lambda *a, **k: self
    def __iter__(self): return iter([self, self, self, self])
    def __len__(self): return 4
    def __float__(self): return 0.0
    def __index__(self): return 0

torch.equal = lambda *a, **k: True
torch.allclose = lambda *a, **k: True
math.isclose = lambda *a, **k: True

def collect_examples(squad_json): return Anything()
def to_token_positions(encodings, start_chars, end_chars): return Anything(), Anything()
def make_optimizer(model, lr=5e-5): return Anything()
def argmax_positions(start_logits, end_logits): return Anything(), Anything()
def span_accuracy(pred, gold): return Anything()
def predict(question, context, model, tokenizer): return Anything()
"""

REBIND_HELPERS = """
from contextlib import nullcontext
import qa_lib.course.exercises, qa_lib.course.grading

check = lambda *args, **kwargs: None
reference_disabled = lambda *functions: nullcontext()
qa_lib.course.grading.reference_disabled = reference_disabled
qa_lib.course.exercises.check = check
qa_lib.course.exercises.verdict = lambda *args: None
"""

LIBRARY_REFERENCE_TRICKS = {
    # E2 answered by the library's reference in four ways that slip past an in-kernel guard.
    "captured": "import qa_lib.features\n_ref = qa_lib.features.char_to_token_positions\n"
    "def to_token_positions(encodings, start_chars, end_chars):\n    return _ref(encodings, start_chars, end_chars)",
    "code_copy": "import types, qa_lib.features\n_ref = qa_lib.features.char_to_token_positions\n"
    "to_token_positions = types.FunctionType(_ref.__code__, _ref.__globals__, 'to_token_positions')",
    "fresh_module": "import importlib.util, qa_lib.features\n"
    "_spec = importlib.util.spec_from_file_location('fresh_features', qa_lib.features.__file__)\n"
    "_fresh = importlib.util.module_from_spec(_spec)\n_spec.loader.exec_module(_fresh)\n"
    "to_token_positions = _fresh.char_to_token_positions",
    "sys_modules": "import sys, qa_lib.features\n"
    "to_token_positions = sys.modules['qa_lib.features'].__dict__['char_to_token_positions']",
}


def read_and_write_course(victim: str) -> str:
    """Try to read the instructor's files and to change the gradebook, the course and another student."""
    return f"""
import glob, os, sqlite3
for pattern in ["../../../solutions/*/*.ipynb", "../../../gradebook.db", "../../../submitted/*/*/*.ipynb",
                "/work/*/solutions/*/*.ipynb", os.path.expanduser("~/*")]:
    for path in glob.glob(pattern):
        print("{MARKER} read", path, open(path, "rb").read(200))
for path in ["../../../gradebook.db", "../../../{MARKER}.txt", "../../../submitted/{victim}/bert_qa/{NB1}.ipynb"]:
    try:
        with open(path, "w") as file:
            file.write("{MARKER}")
        print("{MARKER} wrote", path)
    except OSError as error:
        print("refused", path, type(error).__name__)
try:
    sqlite3.connect("../../../gradebook.db").execute("update grade set auto_score = 99")
    print("{MARKER} sqlite")
except Exception as error:
    print("refused sqlite", type(error).__name__)
"""


def network_call(port: int) -> str:
    return f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"{MARKER}")
    print("{MARKER} connected")
except OSError as error:
    print("refused network", type(error).__name__)
"""


OUTLIVE_GRADING = f"""
import subprocess
subprocess.Popen(["sh", "-c", "sleep 20; echo {MARKER} > /tmp/{MARKER}"], start_new_session=True)
"""

FLOODS = f"""
import sys
print("{MARKER}" * 2_500_000)  # 50 MB of output
for _ in range(20_000):
    sys.stderr.write("{MARKER} stderr flood\\n")
"""

PRINT_EVERY_CELL = """
def leak(info):
    print("LEAK", info.raw_cell)

get_ipython().events.register("pre_run_cell", leak)
"""

HOSTILE = {
    # Blank answers plus a trick: every exercise must score 0.
    "blank+swallowed_errors": lambda port: appended(blank_release(), SWALLOW_EVERY_ERROR),
    "blank+always_equal": lambda port: appended(blank_release(), ALWAYS_EQUAL, "e5_predict"),
    "blank+rebound_helpers": lambda port: appended(blank_release(), REBIND_HELPERS),
    "blank+infinite_loop": lambda port: appended(blank_release(), "while True:\n    pass"),
    "blank+os_exit": lambda port: appended(blank_release(), "import os\nos._exit(0)"),
    # The solution plus an attack: points earned, but nothing read, written, reached or left behind.
    "solution+course_files": lambda port: appended(solution(NB1), read_and_write_course("victim")),
    "solution+network": lambda port: appended(solution(NB1), network_call(port)),
    "solution+outlives_grading": lambda port: appended(solution(NB1), OUTLIVE_GRADING),
    "solution+floods": lambda port: appended(solution(NB1), FLOODS),
    "solution+prints_every_cell": lambda port: appended(solution(NB1), PRINT_EVERY_CELL),
}
for trick, code in LIBRARY_REFERENCE_TRICKS.items():
    HOSTILE[f"reference_{trick}"] = lambda port, code=code: replace_solution_of_e2(code)


def replace_solution_of_e2(code: str) -> nbformat.NotebookNode:
    notebook = solution(NB1)
    target = cell(notebook, "e2_to_token_positions")
    target.source = code  # the whole answer cell: a module-level name, not a function with a body
    return notebook


def files_under(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the host's loopback that records whatever reaches it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    received: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            received.append(connection.recv(1024))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="module")
def hostile_course(tmp_path_factory, listener):
    """Every hostile student graded in one course, then the victim whose file they tried to overwrite."""
    port, received = listener
    overrides = {"Execute": {"timeout": 20}, "SandboxedExecute": {"notebook_seconds": 90}, "Judge": {"seconds": 10}}
    course = Course.from_kit_solutions(tmp_path_factory.mktemp("course"), overrides)
    course.release()
    course.submit("victim", {f"{NB1}.ipynb": solution(NB1)})
    for student, make in HOSTILE.items():
        course.submit(student, {f"{NB1}.ipynb": make(port)})
    seconds = {}
    for student in HOSTILE:
        before = files_under(course.root)
        started = time.perf_counter()
        course.autograde(student)
        seconds[student] = time.perf_counter() - started
        changed = {path for path, digest in files_under(course.root).items() if before.get(path) != digest}
        foreign = {path for path in changed if not path.startswith(("autograded/", "gradebook.db", ".nbgrader"))}
        assert not foreign, f"{student} changed files outside its autograded folder: {sorted(foreign)}"
    course.autograde("victim")
    return course, seconds, received


def printed(course: Course, student: str) -> str:
    """Everything the student's autograded notebook shows as output (not its source, which names the markers)."""
    executed = nbformat.read(course.folder("autograded", student) / f"{NB1}.ipynb", as_version=4)
    return "\n".join(str(output.get("text", "")) for c in executed.cells for output in c.get("outputs", []))


def points(course: Course, student: str) -> tuple[float, float]:
    return autograded_points(course.grades(student)[NB1])


@pytest.mark.parametrize("student", [s for s in HOSTILE if s.startswith("blank+")])
def test_blank_submission_with_a_trick_scores_zero(hostile_course, student):
    course, _, _ = hostile_course
    assert points(course, student) == (0, 25)


@pytest.mark.parametrize("student", [s for s in HOSTILE if s.startswith("reference_")])
def test_answering_with_the_library_reference_scores_zero_on_that_exercise(hostile_course, student):
    course, _, _ = hostile_course
    grades = course.grades(student)[NB1]
    e2 = [grade for grade_id, grade in grades.items() if grade_id.startswith("e2_") and grade.autograded]
    others = [grade for grade_id, grade in grades.items() if not grade_id.startswith("e2_") and grade.autograded]
    assert e2 and sum(grade.score for grade in e2) == 0
    assert all(grade.score == grade.max_score for grade in others)


@pytest.mark.parametrize("student", [s for s in HOSTILE if s.startswith("solution+")])
def test_attacks_keep_only_the_earned_points(hostile_course, student):
    course, _, _ = hostile_course
    assert points(course, student) == (25, 25)


def test_course_files_stay_unreadable_and_unchanged(hostile_course):
    """The attack finds nothing to read; what it writes lands in the sandbox's own throwaway folders (the
    fixture checks that no file of the course changed) and the real gradebook keeps the real grades."""
    course, _, _ = hostile_course
    text = printed(course, "solution+course_files")
    assert f"{MARKER} read" not in text and "BEGIN HIDDEN" not in text and "BEGIN SOLUTION" not in text
    assert "refused ../../../submitted/victim" in text  # the attack ran: another student's folder is not there
    assert not (course.root / f"{MARKER}.txt").exists()
    assert points(course, "blank+swallowed_errors") == (0, 25)  # "update grade set auto_score = 99" changed nothing


def test_the_victim_keeps_full_marks(hostile_course):
    course, _, _ = hostile_course
    assert points(course, "victim") == (25, 25)
    submitted = nbformat.read(course.folder("submitted", "victim") / f"{NB1}.ipynb", as_version=4)
    assert MARKER not in nbformat.writes(submitted)


def test_the_host_loopback_is_out_of_reach(hostile_course):
    course, _, received = hostile_course
    assert received == []
    assert "refused network" in printed(course, "solution+network")


def test_no_process_outlives_grading(hostile_course):
    time.sleep(1)
    survivors = subprocess.run(["pgrep", "-f", MARKER], capture_output=True, text=True).stdout.split()
    assert survivors == []
    assert not Path("/tmp", MARKER).exists()


def test_output_floods_are_capped(hostile_course):
    course, _, _ = hostile_course
    path = course.folder("autograded", "solution+floods") / f"{NB1}.ipynb"
    assert path.stat().st_size < 7 * 2**20
    assert "output truncated" in path.read_text(encoding="utf-8")


def test_hidden_tests_never_reach_the_kernel(hostile_course):
    course, _, _ = hostile_course
    secrets = hidden_lines(solution(NB1))
    assert len(secrets) > 5
    executed = printed(course, "solution+prints_every_cell")
    assert executed.count("LEAK") > 10  # the hook printed every cell it saw
    page = visible_text(course.feedback("solution+prints_every_cell")[NB1])
    leaked = [line for line in secrets if line in executed or line in page]
    assert not leaked, f"hidden test source reached the student: {leaked[:3]}"


def test_the_integrity_report_flags_every_hostile_student(hostile_course):
    course, _, _ = hostile_course
    report = scan_course(course.root)
    flagged = {finding.student for finding in report.findings if not finding.is_copy}
    assert set(HOSTILE) <= flagged, f"not flagged: {sorted(set(HOSTILE) - flagged)}"
    assert "victim" not in flagged


def test_grading_time_per_hostile_notebook_is_printed(hostile_course, capsys):
    _, seconds, _ = hostile_course
    with capsys.disabled():
        print(
            "\nautograde seconds per hostile notebook: "
            + ", ".join(f"{student} {value:.0f}" for student, value in seconds.items())
        )
    assert seconds["blank+infinite_loop"] < 200  # the notebook budget ends it, not 300 s per cell
