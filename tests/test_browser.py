"""The kit where people meet it: JupyterLab and formgrader in a real browser.

Debian's chromium (``/usr/bin/chromium``, or ``QA_KIT_CHROMIUM``) driven by Playwright's sync API through
``executable_path``: Playwright's own browser download needs the network. A JupyterLab server runs from this
Python on 127.0.0.1 with a random port and token, in a temporary copy of the course (solutions/, notebooks/,
nbgrader_config.py), so nothing is written into the checkout. Screenshots go to ``runs/browser/``.

The kernels in the browser are not in grading mode: without a GPU the notebooks take their offline path.
``make test`` runs these tests; ``pytest -m "not browser"`` leaves them out. Without chromium or Playwright they
skip locally and fail under CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from qa_lib.course.grading import ASSIGNMENT, Course

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "runs" / "browser"
CHROMIUM = Path(os.environ.get("QA_KIT_CHROMIUM", "/usr/bin/chromium"))
NB1, NB2 = "01_finetune_qa", "02_open_questions"
WRITTEN = {
    "w1_long_contexts": (2, "窗口与 [CLS] 标签讲清楚了，stride 没讲"),
    "w2_end_before_start": (3, "完整"),
    "w3_whole_word_masking": (1.5, "只说了区别"),
}
CJK = re.compile(r"[\u4e00-\u9fff]")
# A notebook's Run All on a busy two-core machine: the solution of part 1 trains the tiny model.
RUN_TIMEOUT_MS = 240_000


def missing(message: str):
    """CI must run these tests; a developer's machine without a browser may skip them."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    course: Path

    def api(self, method: str, path: str):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def end_sessions(self) -> None:
        """Shut down every notebook's kernel: an idle kernel left by one test would slow the next on two cores."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    for folder in ("solutions", "notebooks"):
        shutil.copytree(ROOT / folder, course / folder)
    shutil.copy2(ROOT / "nbgrader_config.py", course)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        # The server, nbgrader_config.py and the kernels import this checkout's qa_lib.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # The developer's own JupyterLab settings and workspaces stay out of the test (and untouched by it).
        "JUPYTER_CONFIG_DIR": str(course / ".jupyter"),
        "JUPYTERLAB_SETTINGS_DIR": str(course / ".jupyter" / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(course / ".jupyter" / "lab-workspaces"),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={course}",
        "--allow-root",  # CI runs as root; a no-op otherwise
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",  # offline
    ]  # fmt: skip
    log = (course / "jupyter.log").open("w")
    # Its own session: the server and its kernels are stopped together.
    server = subprocess.Popen(
        command, cwd=course, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    running = Lab(f"http://127.0.0.1:{port}", token, course)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"jupyter lab exited ({server.returncode}):\n{(course / 'jupyter.log').read_text()[-3000:]}"
                )
            try:
                running.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer:\n{(course / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield running
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed (make installs it: pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        missing(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium fonts-noto-cjk)")
    with sync_playwright() as playwright:
        # Chromium's sandbox cannot start as root (CI); the browser only visits the local test server.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(lab, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    tab = context.new_page()
    # Log in through the form once: the cookie serves JupyterLab and formgrader pages alike.
    tab.goto(f"{lab.url}/login")
    tab.fill("input[type=password]", lab.token)
    tab.locator("button[type=submit], input[type=submit]").first.click()
    tab.wait_for_url(re.compile(r".*/lab.*"))
    yield tab
    context.close()
    lab.end_sessions()


def open_notebook(page, lab: Lab, path: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{path}?reset")  # reset: no tabs restored from an earlier test
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def run_all(page) -> None:
    """Run > Run All Cells, as a student does, then wait until the kernel is idle with no cell queued."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
            const status = document.querySelector('.jp-Notebook-ExecutionIndicator').dataset.status;
            return status === 'idle' && prompts.some(p => /\\[\\d+\\]/.test(p.textContent))
                && !prompts.some(p => p.textContent.includes('*'));
        }""",
        timeout=RUN_TIMEOUT_MS,
        polling=500,
    )


@dataclass
class ShownCell:
    """What the page shows for one cell (textContent: cells outside the viewport are in the DOM, not painted)."""

    kind: str  # "code" or "markdown"
    grade_id: str | None
    prompt: str
    text: str  # rendered markdown
    stderr: list[str]  # outputs rendered as stderr: stream stderr and error tracebacks alike
    images: int

    @property
    def ran(self) -> bool:
        return re.search(r"\[\d+\]", self.prompt) is not None


def shown_cells(page, notebook_path: Path) -> list[ShownCell]:
    raw = page.evaluate(
        """() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(c => ({
            code: c.classList.contains('jp-CodeCell'),
            prompt: (c.querySelector('.jp-InputPrompt') || {}).textContent || '',
            text: (c.querySelector('.jp-RenderedMarkdown') || {}).textContent || '',
            stderr: [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
                .map(o => o.textContent),
            images: c.querySelectorAll('.jp-OutputArea-output img').length}))"""
    )
    notebook = nbformat.read(notebook_path, as_version=4)
    assert len(raw) == len(notebook.cells), "the page does not show every cell of the notebook"
    return [
        ShownCell(
            "code" if shown["code"] else "markdown",
            cell.metadata.get("nbgrader", {}).get("grade_id"),
            shown["prompt"],
            shown["text"],
            shown["stderr"],
            shown["images"],
        )
        for shown, cell in zip(raw, notebook.cells)
    ]


def screenshot(page, name: str) -> None:
    """The first plot scrolled into view (or the top of the notebook), for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    images = page.locator(".jp-OutputArea-output img")
    if images.count():
        images.first.scroll_into_view_if_needed()
        images.first.screenshot(path=SCREENSHOTS / f"{name}-plot.png")
    page.screenshot(path=SCREENSHOTS / f"{name}.png")


def test_nbgrader_lab_extension_is_enabled():
    """The Validate button and the Nbgrader menu come from this extension (make enables it)."""
    listing = subprocess.run(
        [Path(sys.executable).parent / "jupyter", "labextension", "list"], capture_output=True, text=True, check=True
    )
    lines = [line for line in (listing.stdout + listing.stderr).splitlines() if "@jupyter/nbgrader" in line]
    assert lines and "enabled" in lines[0] and "OK" in lines[0], listing.stdout + listing.stderr


@pytest.mark.parametrize("name", [NB1, NB2])
def test_student_notebook_run_all_stops_at_the_first_exercise(page, lab, name):
    """Run All of the released notebook: every cell before the first exercise runs without an error or stderr,
    the first visible test stops the run with the exercise's NotImplementedError (JupyterLab stops Run All at an
    error), every markdown cell is Chinese, and part 2 draws its plot before its first exercise."""
    path = f"notebooks/{ASSIGNMENT}/{name}.ipynb"
    open_notebook(page, lab, path)
    run_all(page)
    screenshot(page, f"student-{name}")
    cells = shown_cells(page, lab.course / path)

    failed = [index for index, cell in enumerate(cells) if cell.stderr]
    assert len(failed) == 1, [(cells[i].grade_id, cells[i].stderr) for i in failed]
    stop = cells[failed[0]]
    assert stop.grade_id and stop.grade_id.endswith("_visible"), stop.grade_id  # an exercise's public test
    traceback = stop.stderr[0]
    assert "raise NotImplementedError()" in traceback and traceback.rstrip().endswith("NotImplementedError:"), traceback
    code_before = [cell for cell in cells[: failed[0]] if cell.kind == "code"]
    assert code_before and all(cell.ran for cell in code_before), [c.prompt for c in code_before]
    assert not any(cell.ran for cell in cells[failed[0] + 1 :]), "Run All went on after the error"

    markdown = [cell for cell in cells if cell.kind == "markdown"]
    assert markdown and all(CJK.search(cell.text) for cell in markdown), [c.text[:40] for c in markdown]
    if name == NB2:
        assert sum(cell.images for cell in cells) >= 1, "the context-length histogram is missing"


@pytest.mark.parametrize("name", [NB1, NB2])
def test_solution_notebook_run_all_shows_no_error_and_draws_plots(page, lab, name):
    path = f"solutions/{ASSIGNMENT}/{name}.ipynb"
    open_notebook(page, lab, path)
    run_all(page)
    screenshot(page, f"solution-{name}")
    cells = shown_cells(page, lab.course / path)
    assert all(cell.ran for cell in cells if cell.kind == "code"), [c.prompt for c in cells if c.kind == "code"]
    assert [cell.stderr for cell in cells if cell.stderr] == []
    assert sum(cell.images for cell in cells) >= 1


def test_validate_button_reports_the_failing_public_tests(page, lab):
    open_notebook(page, lab, f"notebooks/{ASSIGNMENT}/{NB1}.ipynb")
    page.get_by_role("button", name="Validate").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=RUN_TIMEOUT_MS)  # nbgrader validates on the server: a kernel runs the whole notebook
    dialog.get_by_text("Validation Results").wait_for()
    text = dialog.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "validate.png")
    assert "The following cell failed" in text
    assert "公开测试 E1" in text and "NotImplementedError" in text
    assert "Success" not in text


def student_submission(course: Path) -> nbformat.NotebookNode:
    """Part 2 as a student turns it in: the release with the solution's code and the student's own written answers
    (which, unlike the solution notebook's, hold no model answer or rubric)."""
    notebook = nbformat.read(course / "notebooks" / ASSIGNMENT / f"{NB2}.ipynb", as_version=4)
    answers = {
        c.id: c.source for c in nbformat.read(course / "solutions" / ASSIGNMENT / f"{NB2}.ipynb", as_version=4).cells
    }
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = answers[cell.id] if cell.cell_type == "code" else f"学生的回答 {meta['grade_id']}"
    return notebook


def stored_within(course: Course, grade_id: str, seconds: float) -> tuple:
    """``(manual score, manual comment)`` of the student's ``grade_id`` once both are in the gradebook (the page
    saves through formgrader's API in the background), or what is there after ``seconds``."""
    from nbgrader.api import Gradebook

    deadline = time.monotonic() + seconds
    while True:
        with Gradebook(course.api.coursedir.db_url) as gradebook:
            notebook = gradebook.find_submission_notebook(NB2, ASSIGNMENT, "student")
            score = next(grade.manual_score for grade in notebook.grades if grade.name == grade_id)
            comment = next(c.manual_comment for c in notebook.comments if c.name == grade_id)
        if (score is not None and comment) or time.monotonic() > deadline:
            return score, comment
        time.sleep(0.5)


def test_formgrader_manual_grading_reaches_the_gradebook(page, lab):
    """Autograde one student's part 2 in the lab's course, grade W1-W3 in formgrader's page next to the rubric,
    and read the points and comments back from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    course = Course(lab.course)
    course.release()
    course.submit("student", {f"{NB2}.ipynb": student_submission(lab.course)})
    course.autograde("student")
    with Gradebook(course.api.coursedir.db_url) as gradebook:
        autograded_total = gradebook.find_submission(ASSIGNMENT, "student").score
    assert autograded_total == 25  # E6-E9 in full, W1-W3 not graded yet

    page.goto(f"{lab.url}/formgrader/gradebook/{ASSIGNMENT}/{NB2}")
    page.locator("table a[href*='/formgrader/submissions/']").first.click()
    # The page loads the stored grades through formgrader's API and writes them into the fields: typing before
    # that would be overwritten (and never saved). Wait for the network to settle, and type a field again if what
    # was typed has not reached the gradebook (on a busy machine the load can still land after the typing).
    page.wait_for_load_state("networkidle")
    for grade_id, (points, comment) in WRITTEN.items():
        for _attempt in range(3):  # the page may still overwrite the first typing
            score = page.locator(f"input.score#{grade_id}")
            score.fill(str(points))
            score.press("Tab")  # formgrader saves a score or a comment when its field changes and loses focus
            area = page.locator(f"textarea#{grade_id}-comment")
            area.fill(comment)
            area.press("Tab")
            if stored_within(course, grade_id, seconds=15) == (points, comment):
                break
        answer = area.locator("xpath=ancestor::div[contains(@class, 'nbgrader_cell')]").inner_text()
        assert f"学生的回答 {grade_id}" in answer and "评分标准 (rubric)" in answer, answer  # next to each other
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    first_answer = page.locator(f"textarea#{next(iter(WRITTEN))}-comment").locator(
        "xpath=ancestor::div[contains(@class, 'nbgrader_cell')]"
    )
    first_answer.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOTS / "formgrader-w1.png")  # (an element screenshot of this page comes out blank)

    with Gradebook(course.api.coursedir.db_url) as gradebook:
        notebook = gradebook.find_submission_notebook(NB2, ASSIGNMENT, "student")
        scores = {grade.name: grade.manual_score for grade in notebook.grades if grade.name in WRITTEN}
        comments = {c.name: c.manual_comment for c in notebook.comments if c.name in WRITTEN}
        total = gradebook.find_submission(ASSIGNMENT, "student").score
    assert scores == {grade_id: points for grade_id, (points, _) in WRITTEN.items()}
    assert comments == {grade_id: comment for grade_id, (_, comment) in WRITTEN.items()}
    assert total == autograded_total + sum(points for points, _ in WRITTEN.values())
    feedback = course.feedback("student")[NB2]  # what the student reads: the comments, not the rubric
    assert all(comment in feedback for _, comment in WRITTEN.values()) and "评分标准" not in feedback
