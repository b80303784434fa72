"""The judge's parts, without nbgrader: cases from the instructor's cells, probes in the sandbox, verdicts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from honest_answers import HONEST
from test_notebooks import NB1, NB2, solution

from qa_lib.course import exercises, judge, probe, sandbox
from qa_lib.course.grading import BEGIN_HIDDEN, HIDDEN_PLACEHOLDER
from qa_lib.models import build_offline_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def sources(name: str) -> dict[str, str]:
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in solution(name).cells if "nbgrader" in c.metadata}


def cases_of(name: str) -> dict[str, list[dict]]:
    cells = sources(name)
    tests = {grade_id: source for grade_id, source in cells.items() if "_visible" in grade_id or "_hidden" in grade_id}
    return judge.collect_cases(cells["test_helpers"], tests)


def answers(name: str) -> dict[str, str]:
    cells = solution(name).cells
    return {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in cells
        if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"
    }


@pytest.mark.parametrize("name", [NB1, NB2])
def test_every_test_cell_yields_cases_that_name_their_function(name):
    cases = cases_of(name)
    assert len(cases) >= 12
    for grade_id, test in cases.items():
        assert test, f"{grade_id} recorded no case"
        owner = exercises.exercise_of(grade_id)
        assert all(case["function"] in owner.functions for case in test), grade_id


def test_plain_data_rejects_objects_that_pretend():
    class AlwaysEqual(int):
        def __eq__(self, other):
            return True

    class Tensorish(torch.Tensor):
        pass

    assert probe.plain(AlwaysEqual(3)) == {
        "unsupported": f"{__name__}.test_plain_data_rejects_objects_that_pretend.<locals>.AlwaysEqual"
    }
    assert "unsupported" in probe.plain(torch.ones(2).as_subclass(Tensorish))
    assert probe.plain((torch.tensor([1, 2]), 3.5, "a", None)) == [[1, 2], 3.5, "a", None]
    case = {"function": "span_accuracy", "pred": [1], "gold": [1]}
    assert "type x.Y" in exercises.verdict(case, {"unsupported": "x.Y"}, {"type": "builtins.float", "value": 1.0})


def test_whitespace_answers_accept_cls_or_the_stripped_word():
    tokenizer = build_offline_tokenizer()
    case = {
        "function": "to_token_positions",
        "questions": ["谁？"],
        "contexts": ["他叫 小明。"],
        "max_length": 32,
        "start_chars": [2],
        "end_chars": [5],
    }  # " 小明"
    want = exercises.expected_output(case, tokenizer)
    first = len(tokenizer.tokenize("谁？")) + 2
    for starts, ends in ([0], [0]), ([first + 2], [first + 3]):
        got = {"starts": starts, "ends": ends, "dtypes": ["torch.int64"] * 2}
        assert exercises.verdict(case, got, want) is None
    wrong = {"starts": [first + 1], "ends": [first + 3], "dtypes": ["torch.int64"] * 2}
    assert exercises.verdict(case, wrong, want) is not None


def test_probe_jobs_grade_e5_and_e8_without_the_exercise_they_call():
    jobs = judge.probe_jobs(answers(NB2), cases_of(NB2))
    alone, together = jobs
    assert {test["grade_id"][:2] for test in together.tests} == {"e8"}
    assert together.stand_ins == ["best_span"]
    assert "e7_best_span" not in {cell["grade_id"] for cell in together.cells}
    assert "decoding.best_spans" not in together.references_stubbed
    assert "decoding.best_spans" in alone.references_stubbed and not alone.stand_ins


def test_library_copy_has_stubs_and_no_course_tooling(tmp_path):
    library = sandbox.library_without(["features.char_to_token_positions"], tmp_path)
    features = (library / "features.py").read_text(encoding="utf-8")
    assert "reference solution of an exercise" in features and "def encode_windows" in features
    assert "encodings.char_to_token" not in features
    assert sorted(p.name for p in (library / "course").iterdir()) == ["__init__.py", "probe.py"]


def test_hidden_regions_become_a_placeholder():
    source = f"# 隐藏测试\n{BEGIN_HIDDEN}\nsecret = 1\n### END HIDDEN TESTS\nafter = 2"
    assert judge.without_hidden_tests(source) == f"# 隐藏测试\n{HIDDEN_PLACEHOLDER}\nafter = 2"


@pytest.mark.parametrize("sandboxed", [True, False])
def test_solution_answers_pass_and_a_bug_fails_with_a_hint(sandboxed):
    cases = cases_of(NB1)
    verdicts = judge.judge_notebook(answers(NB1), cases, sandboxed)
    assert verdicts == {grade_id: None for grade_id in cases}
    buggy = answers(NB1)
    buggy["e2_to_token_positions"] = buggy["e2_to_token_positions"].replace("end_char - 1,", "end_char,")
    verdicts = judge.judge_notebook(buggy, cases, sandboxed)
    assert "end_char - 1" in verdicts["e2_positions_visible"]
    assert {grade_id for grade_id, message in verdicts.items() if message} <= {g for g in cases if g.startswith("e2")}


def test_the_sandbox_hides_the_course_and_the_network(tmp_path):
    script = (
        "import os, socket\n"
        f"print(os.path.exists({str(ROOT / 'solutions')!r}), os.path.exists('/work/shared'), "
        "os.path.exists(os.path.expanduser('~/.ssh')))\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\nexcept OSError as e:\n    print('offline')\n"
    )
    command = sandbox.bwrap_command([sys.executable, "-c", script], workdir=tmp_path, writable={tmp_path: tmp_path})
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False", "False", "offline"], result.stderr


def test_the_sandbox_has_no_capabilities_even_when_root_starts_it():
    command = sandbox.bwrap_command(["grep", "^CapEff", "/proc/self/status"], workdir=Path("/"))
    assert subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.split() == ["CapEff:", "0" * 16]


def test_autograde_refuses_without_bubblewrap_unless_opted_out(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_works", lambda: False)
    monkeypatch.delenv(sandbox.UNSANDBOXED_VARIABLE, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        sandbox.require_sandbox()
    monkeypatch.setenv(sandbox.UNSANDBOXED_VARIABLE, "1")
    assert sandbox.require_sandbox() is False


def with_body(source: str, body: str) -> str:
    """An answer cell with its (first) solution region replaced by ``body``."""
    indented = body.strip("\n").replace("\n", "\n    ")
    return re.sub(r"### BEGIN SOLUTION\n.*?### END SOLUTION", lambda _: indented, source, count=1, flags=re.S)


@pytest.mark.parametrize("answer_cell", sorted(HONEST))
def test_independent_correct_answers_pass_the_judge(answer_cell):
    """Lists instead of tensors, other loops, other tie-breaking: what a test should accept, the judge accepts."""
    name = NB1 if answer_cell < "e6" else NB2
    cases = {grade_id: test for grade_id, test in cases_of(name).items() if grade_id[:2] == answer_cell[:2]}
    for body in HONEST[answer_cell]:
        cells = answers(name)
        cells[answer_cell] = with_body(cells[answer_cell], body)
        verdicts = judge.judge_notebook(cells, cases, sandboxed=False)
        assert verdicts == {grade_id: None for grade_id in cases}, body


# --- The warm probes: sandboxed servers over the stubbed library copy, a fresh forked child per job ---------------

EVERY_REFERENCE = frozenset(name for exercise in exercises.EXERCISES.values() for name in exercise.references)


def observed(answer_cell: str, references_stubbed: frozenset[str] = EVERY_REFERENCE):
    """What the answer cell's ``observe()`` returns when a job runs it in the first warm probe (None: no result)."""
    source = answer_cell + "\ndef argmax_positions(start_logits, end_logits):\n    return observe(), []\n"
    case = {"function": "argmax_positions", "start_logits": [[0.0]], "end_logits": [[0.0]]}
    job = judge.ProbeJob(
        [{"grade_id": "e4_accuracy", "source": source}], [{"grade_id": "t", "cases": [case]}], [], references_stubbed
    )
    _, records = judge.run_probe(job, sandboxed=True, seconds=30)
    return records[0]["outputs"][0][0] if records and "outputs" in records[0] else None


LOOK_AROUND = """
import os
def observe():
    processes = sorted(open(f"/proc/{pid}/comm").read().strip() for pid in os.listdir("/proc") if pid.isdigit())
    return [processes, sorted(os.listdir("/tmp")), os.getpid()]
"""


def test_a_job_finds_nothing_an_earlier_job_left_behind():
    first = observed(
        "import os, subprocess\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"  # a process meant to outlive the job
        "open('/tmp/planted.py', 'w').write('x = 1')\n"
        "def observe():\n    return os.getpid()\n"
    )
    assert isinstance(first, int)
    processes, tmp, pid = observed(LOOK_AROUND)
    assert processes == ["bwrap", "python", "python"]  # the sandbox's init, the server, this job
    assert "planted.py" not in tmp and pid != first


def test_emptying_tmp_spares_the_mounts_and_the_folders_that_hold_them(tmp_path):
    """With TMPDIR=/tmp/x the grader's job folder is mounted at /tmp/x/qa-kit-probe-...: /tmp/x is emptied around
    it, not removed through it (the grading class test runs its workers that way)."""
    mounted = tmp_path / "x" / "qa-kit-probe-1"
    (mounted / "job").mkdir(parents=True)
    (mounted / "job" / "results").write_text("{}")
    (tmp_path / "x" / "planted.py").write_text("x = 1")
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "a_file").write_text("")
    probe.empty_but_mounts(str(tmp_path), {str(mounted)})
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == [
        "x",
        "x/qa-kit-probe-1",
        "x/qa-kit-probe-1/job",
        "x/qa-kit-probe-1/job/results",
    ]


# A job's (or a warm kernel's) attempt to open the pipe to the grader and the memory of the server it forked from.
PEEK_AT_THE_SERVER = """
import os
def observe():
    outcomes = []
    for path in (f"/proc/{os.getppid()}/fd/1", f"/proc/{os.getppid()}/mem"):
        try:
            open(path, "wb").close()
            outcomes.append("opened")
        except OSError as error:
            outcomes.append(type(error).__name__)
    return outcomes
"""


def test_a_job_cannot_reach_its_server():
    assert observed(PEEK_AT_THE_SERVER) == ["PermissionError", "PermissionError"]


def test_a_job_that_kills_its_server_does_not_touch_the_next_one():
    observed("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef observe():\n    return 1\n")
    killed = judge.warm_probes()[0].process
    assert killed.poll() is not None
    assert observed("def observe():\n    return 2\n") == 2
    assert judge.warm_probes()[0].process is not killed


# Calls E7's reference, which is live only in a job that grades E8 with it (the job brings decoding.py along).
CALL_BEST_SPANS = """
import os
def observe():
    import qa_lib.decoding
    try:
        qa_lib.decoding.best_spans(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), 2)
    except RuntimeError as error:
        return ["stubbed" if "reference solution" in str(error) else str(error), sorted(os.listdir("."))]
    return ["live", sorted(os.listdir("."))]
"""


def test_only_the_job_that_grades_e8_finds_e7s_reference_live():
    graded_with_e7 = judge.references_stubbed(["best_span"])
    assert "decoding.best_spans" in EVERY_REFERENCE - graded_with_e7
    assert observed(CALL_BEST_SPANS, graded_with_e7) == ["live", ["job.json", "library", "results"]]
    # The next job of the same server: nothing of that library is left, in its folder or in its modules.
    assert observed(CALL_BEST_SPANS) == ["stubbed", ["job.json", "results"]]
    assert observed(CALL_BEST_SPANS, graded_with_e7)[0] == "live"


def test_a_result_file_replaced_by_a_link_is_not_followed(tmp_path):
    forged = tmp_path / "forged"  # a file of the grader's machine, outside the sandbox
    forged.write_text('{"cell_errors": {}}\n{"grade_id": "t", "outputs": [[["forged"], []]]}\n', encoding="utf-8")
    swap = f"""
import os
def observe():
    os.unlink("results")
    os.symlink({str(forged)!r}, "results")
    return "honest"
"""
    assert observed(swap) is None


def test_the_warm_probe_refuses_to_run_outside_a_sandbox():
    result = subprocess.run(
        [sys.executable, "-m", "qa_lib.course.probe", "--serve", "unused"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "first process of a bubblewrap sandbox" in result.stderr


@pytest.mark.parametrize(("threads", "servers"), [("1", 1), ("2", 2), ("4", 2)])
def test_a_grading_process_starts_a_probe_per_core_it_may_use(threads, servers):
    """A `qa-kit grade` worker's share of the cores reaches it as OMP_NUM_THREADS: one probe server per core, and no
    more than a notebook's two probe jobs can use side by side."""
    count = "from qa_lib.course import judge\nprint(len(judge.warm_probes()))"
    environment = {**os.environ, "OMP_NUM_THREADS": threads}
    result = subprocess.run([sys.executable, "-c", count], capture_output=True, text=True, env=environment, timeout=120)
    assert result.stdout.split() == [str(servers)], result.stderr
