"""Run a student's exercise functions on test cases and report what they returned, as plain data.

This is the untrusted half of the judge (``qa_lib.course.judge``): it runs wherever the student's code runs —
in the student's own kernel for the visible tests (``qa_lib.course.exercises.check``), and, when grading, in a
sandbox that holds a copy of ``qa_lib`` whose reference implementations of the exercises are stubs: there a warm
server (``python -m qa_lib.course.probe --serve``) forks a fresh child for each job, so that torch and transformers
are imported once per grading process, not once per notebook. It never decides anything: every output is turned
into JSON numbers, strings, lists and dicts (tensors and numpy values converted, any other type reported by name),
and the grader compares them with expected values in its own process.

A case is a plain dict; its ``"function"`` names the exercise function it calls and the runner below that
builds the inputs (token encodings, fake QA models, generators) from the case's data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable

import torch
from transformers.modeling_outputs import QuestionAnsweringModelOutput

PRELUDE = "import importlib, json, math, os, subprocess, sys\nfrom pathlib import Path\n\nimport torch\n"


# --- Plain data ---------------------------------------------------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


def plain(value):
    """JSON-ready data from a returned value. Types are matched exactly (a subclass of int or of Tensor could
    pretend to equal anything); anything else becomes ``{"unsupported": type name}``, which never matches."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind in (torch.Tensor, torch.nn.Parameter):
        return value.detach().cpu().tolist()
    if kind.__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if kind in (list, tuple):
        return [plain(item) for item in value]
    if kind is dict or kind.__name__ == "BatchEncoding":
        return {str(key): plain(item) for key, item in value.items()}
    return {"unsupported": f"{kind.__module__}.{kind.__qualname__}"}


def type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def dtype_name(value) -> str | None:
    return str(value.dtype) if type(value) in (torch.Tensor, torch.nn.Parameter) else None


# --- Test inputs ---------------------------------------------------------------------------------------------------


class FakeQAModel(torch.nn.Module):
    """Called like BertForQuestionAnswering: ``model(**inputs).start_logits / .end_logits``."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # model.parameters() and model.device work

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, **unused):
        start, end = self.logits(input_ids)
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)


class PositionPointerModel(FakeQAModel):
    """Start logit highest at position ``start``, end logit at position ``end`` (-5 elsewhere)."""

    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def logits(self, input_ids):
        start, end = torch.full(input_ids.shape, -5.0), torch.full(input_ids.shape, -5.0)
        if self.start < input_ids.shape[-1]:
            start[..., self.start] = 5.0
        if self.end < input_ids.shape[-1]:
            end[..., self.end] = 5.0
        return start, end


class TokenPointerModel(FakeQAModel):
    """Start logit highest at token ``start_token``, end logit at ``end_token``, wherever they are (windows)."""

    def __init__(self, tokenizer, start_token: str, end_token: str):
        super().__init__()
        self.start_id, self.end_id = tokenizer.convert_tokens_to_ids([start_token, end_token])

    def logits(self, input_ids):
        return (input_ids == self.start_id).float() * 10 - 5, (input_ids == self.end_id).float() * 10 - 5


def fake_model(spec: list, tokenizer) -> FakeQAModel:
    """``["position", start, end]`` or ``["token", start_token, end_token]``."""
    kind, start, end = spec
    return PositionPointerModel(start, end) if kind == "position" else TokenPointerModel(tokenizer, start, end)


def optimizer_probe(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def optimizer_step_deltas(model: torch.nn.Module, optimizer) -> list:
    """How much one step on a fixed loss moves each parameter (gradients far from 1, so that SGD and Adam differ)."""
    before = [p.detach().clone() for p in model.parameters()]
    inputs = torch.linspace(-2.0, 2.0, 8).reshape(2, 4)
    loss = 37.0 * (model(inputs) * torch.tensor([1.0, -2.0, 0.5])).sum()
    loss.backward()
    optimizer.step()
    return [(p.detach() - b).tolist() for p, b in zip(model.parameters(), before)]


# --- Runners: build the inputs of one case, call the function, describe what came back ----------------------------


def run_collect_examples(function, case, tokenizer):
    result = function(case["squad"])
    return {"type": type_name(result), "parts": [plain(list(part)) for part in result]}


def run_to_token_positions(function, case, tokenizer):
    encodings = tokenizer(
        case["questions"],
        case["contexts"],
        truncation="only_second",
        max_length=case["max_length"],
        padding=case.get("padding", False),
        return_tensors="pt",
    )
    starts, ends = function(encodings, case["start_chars"], case["end_chars"])
    return {"starts": plain(starts), "ends": plain(ends), "dtypes": [dtype_name(starts), dtype_name(ends)]}


def run_make_optimizer(function, case, tokenizer):
    model = optimizer_probe(case["seed"])
    optimizer = function(model) if case.get("lr") is None else function(model, lr=case["lr"])
    covered = [id(p) for group in optimizer.param_groups for p in group["params"]]
    return {
        "type": type_name(optimizer),
        "lrs": [plain(group["lr"]) for group in optimizer.param_groups],
        "coverage": [covered.count(id(p)) for p in model.parameters()],
        "deltas": optimizer_step_deltas(model, optimizer),
    }


def run_argmax_positions(function, case, tokenizer):
    starts, ends = function(torch.tensor(case["start_logits"]), torch.tensor(case["end_logits"]))
    return [plain(starts), plain(ends)]


def run_span_accuracy(function, case, tokenizer):
    value = function(torch.tensor(case["pred"]), torch.tensor(case["gold"]))
    return {"type": type_name(value), "value": plain(value)}


def run_predict(function, case, tokenizer):
    return plain(function(case["question"], case["context"], fake_model(case["model"], tokenizer), tokenizer))


def run_sliding_window_features(function, case, tokenizer):
    features = function(
        tokenizer,
        case["questions"],
        case["contexts"],
        case["answer_starts"],
        case["answer_texts"],
        case["max_length"],
        case["stride"],
    )
    keys = ("input_ids", "overflow_to_sample_mapping", "start_positions", "end_positions")
    return {key: plain(features[key]) if key in features else None for key in keys}


def run_best_span(function, case, tokenizer):
    start, end, score = function(
        torch.tensor(case["start_logits"]),
        torch.tensor(case["end_logits"]),
        torch.tensor(case["context_mask"]),
        case["max_answer_length"],
    )
    return [plain(start), plain(end), plain(score)]


def run_predict_long(function, case, tokenizer):
    model = fake_model(case["model"], tokenizer)
    return plain(function(case["question"], case["context"], model, tokenizer, case["max_length"], case["stride"]))


def run_whole_word_mask(function, case, tokenizer):
    generator = torch.Generator().manual_seed(case["seed"])
    masks = [function(case["word_ids"], case["mask_ratio"], generator) for _ in range(case.get("draws", 1))]
    again = function(case["word_ids"], case["mask_ratio"], torch.Generator().manual_seed(case["seed"]))
    return {
        "masks": [plain(mask) for mask in masks],
        "dtypes": [dtype_name(mask) for mask in masks],
        "same_seed_again": plain(again),
    }


RUNNERS: dict[str, Callable] = {
    name.removeprefix("run_"): runner for name, runner in list(globals().items()) if name.startswith("run_")
}


def run_case(function: Callable, case: dict, tokenizer):
    """What ``function`` returns on one case, as plain data."""
    return RUNNERS[case["function"]](function, case, tokenizer)


# --- The sandboxed process: answer cells, then every test's cases ----------------------------------------------------


def stand_ins(names: list[str]) -> dict[str, Callable]:
    """Library versions of other exercises' functions, for an exercise graded on its own (E5 may call E4's
    argmax_positions, E8 calls E7's best_span). They exist only in the process that grades E5 and E8."""
    from qa_lib import decoding

    library = {
        "argmax_positions": decoding.argmax_positions,
        "span_accuracy": decoding.span_accuracy,
        "best_span": lambda start_logits, end_logits, context_mask, max_answer_length=100: decoding.best_spans(
            start_logits, end_logits, context_mask, max_answer_length
        ),
    }
    return {name: library[name] for name in names}


def error_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


class time_limit:
    """SIGALRM after ``seconds``: code stuck in a loop fails its own cell or test, not the others."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def _expired(self, signum, frame):
        raise TimeoutError(f"no result within {self.seconds} s")

    def __enter__(self):
        signal.signal(signal.SIGALRM, self._expired)
        signal.alarm(self.seconds)

    def __exit__(self, *exc_info):
        signal.alarm(0)


def run_answer_cells(cells: list[dict], namespace: dict, seconds: int) -> dict[str, str]:
    """Execute the answer cells in order, each on its own; returns ``{grade id: error}`` for cells that raised."""
    from IPython.core.inputtransformer2 import TransformerManager

    errors = {}
    for cell in cells:
        try:
            code = compile(TransformerManager().transform_cell(cell["source"]), cell["grade_id"], "exec")
            with time_limit(seconds):
                exec(code, namespace)
        except BaseException as error:  # noqa: BLE001 (SystemExit too: a cell must not end the probe)
            errors[cell["grade_id"]] = error_line(error)
    return errors


def run_test(test: dict, namespace: dict, tokenizer, seconds: int) -> dict:
    outputs = []
    try:
        for case in test["cases"]:
            function = namespace.get(case["function"])
            if not callable(function):
                return {"grade_id": test["grade_id"], "error": f"NameError: {case['function']} is not defined"}
            with time_limit(seconds):
                outputs.append(run_case(function, case, tokenizer))
    except BaseException as error:  # noqa: BLE001 (the student's code may raise anything, SystemExit included)
        return {"grade_id": test["grade_id"], "error": error_line(error), "trace": traceback.format_exc()[-2000:]}
    return {"grade_id": test["grade_id"], "outputs": outputs}


def load_tokenizer(folder: str):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(folder)


def use_overlay(folder: str) -> None:
    """Import ``qa_lib``'s modules from the job's overlay first, when it brought one (the grader writes there the
    modules in which its library differs from the server's), and forget the ones imported from the server's."""
    overlay = os.path.join(folder, OVERLAY_FOLDER)
    if not os.path.isdir(overlay):
        return
    import qa_lib

    for name in [name for name in sys.modules if name.startswith("qa_lib.") and not name.startswith("qa_lib.course")]:
        del sys.modules[name]
        vars(qa_lib).pop(name.split(".")[1], None)  # else `from qa_lib import decoding` would find the old one
    qa_lib.__path__.insert(0, overlay)


def run_job(folder: str, tokenizer) -> None:
    """The answer cells, then every test's cases; one JSON line per test, flushed as it comes."""
    job = read_job(folder)
    use_overlay(folder)
    namespace = {"__name__": "__main__"}
    exec(PRELUDE, namespace)
    namespace.update(stand_ins(job["stand_ins"]))
    cell_errors = run_answer_cells(job["cells"], namespace, job["seconds"])
    with open(os.path.join(folder, RESULTS_FILE), "w", encoding="utf-8") as results:
        results.write(json.dumps({"cell_errors": cell_errors}) + "\n")
        results.flush()
        for test in job["tests"]:
            results.write(json.dumps(run_test(test, namespace, tokenizer, job["seconds"])) + "\n")
            results.flush()


def read_job(folder: str) -> dict:
    with open(os.path.join(folder, JOB_FILE), encoding="utf-8") as file:
        return json.load(file)


# --- A warm probe: imports once, forks a fresh child per job ---------------------------------------------------------

JOB_FILE, RESULTS_FILE, OVERLAY_FOLDER = "job.json", "results", "library"


def forbid_inspection() -> None:
    """No process of the sandbox may read this one's memory or file descriptors (PR_SET_DUMPABLE 0): a job's code
    could otherwise reach the pipe to the grader or the state later jobs are forked from."""
    import ctypes

    PR_SET_DUMPABLE = 4
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def require_own_pid_namespace() -> None:
    """Ending leftovers kills every other process in sight: only safe as the sandbox's first process."""
    with open("/proc/1/comm", encoding="utf-8") as comm:
        init = comm.read().strip()
    if init != "bwrap" or os.getpid() != 2:
        raise SystemExit(f"{sys.argv[0]} runs only as the first process of a bubblewrap sandbox")


def run_forked_job(folder: str, tokenizer) -> None:
    """In the forked child: the job in ``folder``, with no way to talk to the grader; never returns."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for descriptor in (0, 1, 2):
            os.dup2(devnull, descriptor)
        os.chdir(folder)
        run_job(folder, tokenizer)
    finally:
        os._exit(0)


def wait_or_kill(pid: int, seconds: float) -> None:
    import select

    with os.fdopen(os.pidfd_open(pid), "rb", buffering=0) as child:
        select.select([child], [], [], seconds)


def end_leftovers() -> None:
    """Kill every process of the sandbox but this one (a job's child and anything it started), reap them, and
    empty /tmp, so that the next job starts from what this process holds and nothing a job left behind."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing else was running
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    empty_but_mounts("/tmp", mount_points())
    os.makedirs(os.environ.get("HOME", "/tmp/home"), exist_ok=True)


def mount_points() -> set[str]:
    """This sandbox's mount points (``/proc/self/mounts`` writes a space, tab, newline or backslash as octal)."""
    escapes = {"\\040": " ", "\\011": "\t", "\\012": "\n", "\\134": "\\"}
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for escaped, character in escapes.items():
        points = [point.replace(escaped, character) for point in points]
    return set(points)


def empty_but_mounts(folder: str, mounts: set[str]) -> None:
    """Remove everything in ``folder`` but the grader's mounts (the job folder, which it empties itself; the jieba
    cache) and the folders bwrap made to hold them: with TMPDIR=/tmp/x the job folder sits in /tmp/x, and removing
    /tmp/x as a whole would reach through the mount and delete the grader's own files, the job's results among
    them."""
    for entry in os.scandir(folder):
        if entry.path in mounts:
            continue
        if any(mount.startswith(entry.path + "/") for mount in mounts):
            empty_but_mounts(entry.path, mounts)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)


def serve(tokenizer_folder: str) -> None:
    """Read job folders from stdin, one per line; run each in a forked child; answer ``done`` when it has ended.

    Python, torch, transformers and the tokenizer are loaded once instead of once per job: most of a probe's
    cost. Each child starts from this process's state, in which no student code has ever run."""
    require_own_pid_namespace()
    tokenizer = load_tokenizer(tokenizer_folder)
    from IPython.core.inputtransformer2 import TransformerManager  # noqa: F401 (imported once, for every child)

    from qa_lib import decoding  # noqa: F401 (the stand-ins' module)

    forbid_inspection()
    sys.path[:] = [path for path in sys.path if path not in ("", os.getcwd())]  # a job's files are never modules
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_forked_job(request["folder"], tokenizer)
        wait_or_kill(pid, request["seconds"])
        end_leftovers()
        print("done", flush=True)


def main(arguments: list[str]) -> None:
    """``--serve TOKENIZER`` (the warm probe) or ``FOLDER`` (one job, in a Python of its own)."""
    if arguments[0] == "--serve":
        serve(arguments[1])
    else:
        run_job(arguments[0], load_tokenizer(read_job(arguments[0])["tokenizer"]))


if __name__ == "__main__":
    main(sys.argv[1:])
