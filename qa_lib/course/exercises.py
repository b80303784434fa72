"""The graded exercises: which function each one asks for, the library's reference for it, and how a test
compares what the student's function returned with what it should return.

Every test cell of the notebooks is ``check(grade_id, function, cases)``: ``cases`` are plain dicts (the inputs,
see ``qa_lib.course.probe`` for how each is turned into tensors, encodings and fake models). In the student's
kernel ``check`` runs the cases at once and raises ``AssertionError`` with a hint on the first wrong answer
(``qa-kit check``, nbgrader's Validate). When grading, the judge runs the same cases in a sandbox without the
reference implementations and compares the outputs here, in the grader's process: the verdict is the same
for honest code, and nothing in the student's kernel can change it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache

from . import probe

JUDGED_OUTSIDE = "评分时由评分程序在内核之外判定 (judged outside the kernel while grading)"


@dataclass(frozen=True)
class Exercise:
    answer_cell: str  # nbgrader grade id of the answer cell
    functions: tuple[str, ...]  # what the student defines there
    references: tuple[str, ...]  # "module.function" of the library that solve it (stubbed when grading)
    graded_with: tuple[str, ...] = ()  # other exercises' functions replaced by the library's while it is tested


EXERCISES = {
    "e1": Exercise("e1_collect_examples", ("collect_examples",), ("data.examples_from_squad",)),
    "e2": Exercise("e2_to_token_positions", ("to_token_positions",), ("features.char_to_token_positions",)),
    "e3": Exercise("e3_make_optimizer", ("make_optimizer",), ("training.make_optimizer",)),
    "e4": Exercise(
        "e4_accuracy", ("argmax_positions", "span_accuracy"), ("decoding.argmax_positions", "decoding.span_accuracy")
    ),
    "e5": Exercise(
        "e5_predict",
        ("predict",),
        ("predict.answer", "predict.predict_examples"),
        graded_with=("argmax_positions", "span_accuracy"),
    ),
    "e6": Exercise(
        "e6_sliding_windows",
        ("sliding_window_features",),
        (
            "features.encode_windows",
            "features.window_features",
            "features.label_windows",
            "features.prepare_train_features",
            "features.span_to_tokens",
        ),
    ),
    "e7": Exercise("e7_best_span", ("best_span",), ("decoding.best_spans", "decoding.span_scores")),
    "e8": Exercise(
        "e8_predict_long",
        ("predict_long",),
        (
            "predict.answer",
            "predict.predict_examples",
            "decoding.postprocess_predictions",
            "decoding.window_candidates",
            "decoding.rank_candidates",
            "features.prepare_eval_features",
        ),
        graded_with=("best_span",),
    ),
    "e9": Exercise("e9_whole_word_mask", ("whole_word_mask",), ("wwm.whole_word_mask", "wwm.char_mask")),
}


def exercise_of(grade_id: str) -> Exercise:
    return EXERCISES[grade_id.split("_")[0]]


def exercise_defining(function_name: str) -> Exercise:
    return next(exercise for exercise in EXERCISES.values() if function_name in exercise.functions)


def reference_function(dotted: str) -> Callable:
    import importlib

    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(f"qa_lib.{module}"), name)


# --- Expected outputs: the library's references, through the same runners as the student's code -------------------


def _reference_collect_examples(squad):
    from qa_lib.data import examples_from_squad

    examples, _ = examples_from_squad(squad)
    first = [example.answers[0] for example in examples]
    return (
        [e.context for e in examples],
        [e.question for e in examples],
        [a.start for a in first],
        [a.end for a in first],
    )


def _reference_make_optimizer(model, lr=5e-5):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=lr)


def _reference_sliding_window_features(tokenizer, questions, contexts, answer_starts, answer_texts, max_length, stride):
    from qa_lib.data import Answer, QAExample
    from qa_lib.features import prepare_train_features

    examples = [
        QAExample(str(i), "", c, q, (Answer(t, s),))
        for i, (q, c, s, t) in enumerate(zip(questions, contexts, answer_starts, answer_texts))
    ]
    features = prepare_train_features(tokenizer, examples, max_length, stride)
    return {**features, "overflow_to_sample_mapping": features["example_index"]}


def _references() -> dict[str, Callable]:
    from qa_lib import features

    return {
        "collect_examples": _reference_collect_examples,
        "to_token_positions": features.char_to_token_positions,
        "make_optimizer": _reference_make_optimizer,
        "sliding_window_features": _reference_sliding_window_features,
        # The library's versions under the exercises' names, as the judge's probe hands them to E5 and E8.
        **probe.stand_ins(["argmax_positions", "span_accuracy", "best_span"]),
    }


def expected_output(case: dict, tokenizer):
    """What a correct function returns on ``case``: the case's own ``expect`` (answers written by the test's
    author), or the library's reference run through the same runner; None where the check is by properties."""
    if "expect" in case:
        return case["expect"]
    reference = _references().get(case["function"])
    return None if reference is None else probe.run_case(reference, case, tokenizer)


# --- Comparisons: plain data in, None or a hint out ----------------------------------------------------------------


def _first_difference(got: list, want: list) -> str:
    if not isinstance(got, list) or len(got) != len(want):
        size = len(got) if isinstance(got, list) else type(got).__name__
        return f"expected {len(want)} values, got {size}"
    index = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
    return f"at index {index}: expected {want[index]!r}, got {got[index]!r}"


def compare_collect_examples(case, got, want):
    want = want["parts"]
    parts = got.get("parts") if isinstance(got, dict) else None
    if not isinstance(parts, list) or len(parts) != 4:
        return "collect_examples should return four lists: paragraphs, questions, start_chars, end_chars"
    names = ("paragraphs", "questions", "start_chars", "end_chars")
    paragraphs, questions, starts, ends = parts
    if isinstance(questions, list) and len(questions) != len(want[1]):
        return (
            f"expected the {len(want[1])} questions of all paragraphs of all articles, got {len(questions)} "
            "(did you read only paragraphs[0] or only the first article?)"
        )
    hints = {
        "paragraphs": "each question needs its own paragraph's context (one entry per question)",
        "questions": "questions in the order of the file",
        "start_chars": "start_chars are the first reference answer's answer_start",
        "end_chars": "end_chars are exclusive: answer_start + len(text) of the first reference answer",
    }
    for name, got_part, want_part in zip(names, parts, want):
        if got_part != list(want_part):
            return f"{name}: {hints[name]} ({_first_difference(got_part, list(want_part))})"
    return None


def _blank_edges(context: str, start: int, end: int) -> bool:
    text = context[start:end]
    return text != text.strip()


def compare_to_token_positions(case, got, want):
    if got["dtypes"] != ["torch.int64", "torch.int64"]:
        return f"return two torch.long tensors (labels for the loss), got dtypes {got['dtypes']}"
    for i, (start, end) in enumerate(zip(got["starts"], got["ends"])):
        expected = (want["starts"][i], want["ends"][i])
        if (start, end) == expected:
            continue
        context, start_char, end_char = case["contexts"][i], case["start_chars"][i], case["end_chars"][i]
        if _blank_edges(context, start_char, end_char) and (start, end) == (0, 0):
            continue  # an answer with a blank at an edge: [CLS], or the word without the blank, are both accepted
        if _blank_edges(context, start_char, end_char):
            stripped = context[start_char:end_char].strip()
            inner = context.index(stripped, start_char)
            if (start, end) == _library_positions(case, i, inner, inner + len(stripped)):
                continue
        answer = context[start_char:end_char]
        if expected == (0, 0):
            hint = "an answer cut off by truncation should be labelled (0, 0), the [CLS] token, never -1 or None"
        elif end == expected[1] + 1:
            hint = "end position should use the last character of the answer (end_char - 1): end_chars are exclusive"
        else:
            hint = "use encodings.char_to_token(i, char, sequence_index=1): the context is the second sequence"
        return f"answer {i} ({answer!r}): expected tokens {expected}, got ({start}, {end}); {hint}"
    return None


@cache
def grader_tokenizer():
    """The offline tokenizer the grader compares with, built once per process (a build takes 0.2 s of CPU, twice a
    student); never handed to student code (the probes load their own)."""
    from qa_lib.models import build_offline_tokenizer

    return build_offline_tokenizer()


def _library_positions(case: dict, index: int, start_char: int, end_char: int) -> tuple[int, int]:
    from qa_lib.features import char_to_token_positions

    encodings = grader_tokenizer()(
        case["questions"][index],
        case["contexts"][index],
        truncation="only_second",
        max_length=case["max_length"],
        return_tensors="pt",
    )
    starts, ends = char_to_token_positions(encodings, [start_char], [end_char])
    return int(starts[0]), int(ends[0])


def compare_make_optimizer(case, got, want):
    if got["type"] != want["type"]:
        return f"use torch.optim.AdamW, got {got['type']}"
    if set(got["lrs"]) != set(want["lrs"]):
        return f"every parameter group should use the learning rate {want['lrs'][0]}, got {sorted(set(got['lrs']))}"
    if any(count != 1 for count in got["coverage"]):
        return "the optimizer should cover every parameter of the model exactly once"
    tolerance = 0.05 * want["lrs"][0]  # room for another weight decay; a wrong update rule is off by far more
    for got_delta, want_delta in zip(got["deltas"], want["deltas"]):
        if not _close(got_delta, want_delta, tolerance):
            return "optimizer.step() should move the parameters as AdamW does"
    return None


def compare_argmax_positions(case, got, want):
    if got != want:
        return (
            f"take the argmax over the sequence dimension (dim=-1), one position per example; expected "
            f"{want}, got {got}"
        )
    return None


def compare_span_accuracy(case, got, want):
    if got["type"] != "builtins.float":
        return f"span_accuracy should return a Python float (use .item()), got {got['type']}"
    if not math.isclose(got["value"], want["value"], abs_tol=1e-6):
        return f"expected accuracy {want['value']:.4f}, got {got['value']}"
    return None


def compare_predict(case, got, want):
    if not isinstance(got, str):
        return f"return the answer text (a str), got {got!r}"
    if got != want:
        return f"{case.get('hint', 'expected')}: expected {want!r}, got {got!r}"
    return None


def compare_sliding_window_features(case, got, want):
    if got["overflow_to_sample_mapping"] is None:
        return "keep overflow_to_sample_mapping: it says which example a window belongs to"
    if got["input_ids"] != want["input_ids"]:
        return (
            "windows differ from the tokenizer's overflow: question first, truncation='only_second', "
            "max_length, stride, return_overflowing_tokens=True, no padding"
        )
    if got["overflow_to_sample_mapping"] != want["overflow_to_sample_mapping"]:
        return "overflow_to_sample_mapping differs from the tokenizer's"
    for name in ("start_positions", "end_positions"):
        if got[name] != want[name]:
            return (
                f"{name}: {_first_difference(got[name], want[name])}; a window holding the whole answer is "
                "labelled with the tokens of its first and last characters, any other window with 0 ([CLS])"
            )
    return None


def _span_rows(case: dict, got: list) -> list[tuple]:
    """``(start_logits, end_logits, context_mask, start, end, score)`` per window (one window or a batch)."""
    batched = isinstance(case["start_logits"][0], list)
    windows = (
        zip(case["start_logits"], case["end_logits"], case["context_mask"])
        if batched
        else [(case["start_logits"], case["end_logits"], case["context_mask"])]
    )
    results = zip(*got) if batched else [tuple(got)]
    return [(*window, *result) for window, result in zip(windows, results)]


def compare_best_span(case, got, want):
    """Any best valid span is right (ties are broken differently by different correct searches)."""
    length = case["max_answer_length"]
    rows = _span_rows(case, got)
    if len(rows) != len(_span_rows(case, want)):
        return f"expected one span per window ({len(_span_rows(case, want))}), got {len(rows)}"
    for window, ((starts, ends, mask, start, end, score), (*_, best_start, best_end, best)) in enumerate(
        zip(rows, _span_rows(case, want))
    ):
        where = f"window {window}: " if len(rows) > 1 else ""
        if math.isinf(best):
            if (start, end) != (0, 0) or not (isinstance(score, float) and math.isinf(score)):
                return f"{where}a window without context tokens gives (0, 0, -inf), got ({start}, {end}, {score})"
            continue
        valid = 0 <= start <= end < min(start + length, len(mask)) and mask[start] and mask[end]
        if not valid or not math.isclose(starts[start] + ends[end], best, abs_tol=1e-4):
            return (
                f"{where}expected the best valid span (start <= end < start + max_answer_length, inside the "
                f"context), e.g. ({best_start}, {best_end}) with score {best:.4f}, got ({start}, {end})"
            )
        if not _close(score, best, 1e-4):
            return f"{where}the score is start_logit + end_logit of the span: expected {best:.4f}, got {score}"
    return None


def compare_predict_long(case, got, want):
    return compare_predict(case, got, want)


def _split_words(word_ids: list, mask: list) -> list:
    states: dict = {}
    for word, selected in zip(word_ids, mask):
        if word is not None:
            states.setdefault(word, set()).add(bool(selected))
    return [word for word, seen in states.items() if len(seen) > 1]


def compare_whole_word_mask(case, got, want):
    word_ids, ratio = case["word_ids"], case["mask_ratio"]
    tokens = sum(word is not None for word in word_ids)
    sizes = [word_ids.count(word) for word in set(word_ids) if word is not None]
    for mask, dtype in zip(got["masks"], got["dtypes"]):
        if dtype != "torch.bool" or not isinstance(mask, list) or len(mask) != len(word_ids):
            return f"return a torch.bool tensor with one entry per token ({len(word_ids)}), got {dtype} {mask!r:.80}"
        if any(selected for selected, word in zip(mask, word_ids) if word is None):
            return "special tokens (word id None) are never masked"
        if _split_words(word_ids, mask):
            return f"words {_split_words(word_ids, mask)} are partly masked: a word is masked whole or not at all"
        if ratio in (0.0, 1.0) and mask != [ratio == 1.0 and word is not None for word in word_ids]:
            return f"mask_ratio={ratio} masks {'every word token' if ratio else 'nothing'}"
        if abs(sum(mask) - ratio * tokens) > max(sizes):
            return f"about {ratio:.0%} of the {tokens} word tokens should be masked, got {sum(mask)}"
    if got["same_seed_again"] != got["masks"][0]:
        return "the same generator seed should give the same mask (draw with the generator argument)"
    if len(got["masks"]) >= 50:
        shares = [sum(mask) / tokens for mask in got["masks"]]
        if abs(sum(shares) / len(shares) - ratio) > 0.04:
            return f"the average masked share should be about {ratio}, got {sum(shares) / len(shares):.3f}"
        ever = {word for mask in got["masks"] for word, selected in zip(word_ids, mask) if selected}
        if ever != {word for word in word_ids if word is not None}:
            return "every word should have a chance to be masked (pick words at random)"
    return None


def _close(got, want, tolerance: float) -> bool:
    if isinstance(want, list):
        return (
            isinstance(got, list) and len(got) == len(want) and all(_close(g, w, tolerance) for g, w in zip(got, want))
        )
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return False
    if math.isinf(want):
        return got == want
    return math.isclose(got, want, abs_tol=tolerance)


COMPARISONS = {name.removeprefix("compare_"): f for name, f in list(globals().items()) if name.startswith("compare_")}


def verdict(case: dict, got, want) -> str | None:
    """None when ``got`` is right for ``case``, else a hint for the student. Never raises on odd outputs."""
    if isinstance(got, dict) and "unsupported" in got:
        return f"returned an object of type {got['unsupported']}: return tensors, lists, numbers or strings"
    try:
        return COMPARISONS[case["function"]](case, got, want)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        return f"the result does not have the expected form ({type(error).__name__}: {error})"


# --- In the student's kernel ---------------------------------------------------------------------------------------


@contextmanager
def _graded_on_its_own(function: Callable, exercise: Exercise) -> Iterator[None]:
    """Reference implementations disabled, other exercises' functions replaced by the library's (as in grading)."""
    from .grading import graded_alone, reference_disabled

    namespace = getattr(function, "__globals__", {})
    with ExitStack() as stack:
        stack.enter_context(reference_disabled(*(reference_function(name) for name in exercise.references)))
        stack.enter_context(graded_alone(namespace, **probe.stand_ins(list(exercise.graded_with))))
        yield


def check(grade_id: str, function: Callable, cases: list[dict]) -> None:
    """A test cell: run ``function`` on every case and raise AssertionError on the first wrong result.

    While nbgrader autogrades, the kernel only says so: the judge runs these cases outside the kernel."""
    from .grading import grading_mode

    if grading_mode() == "autograde":
        print(JUDGED_OUTSIDE)
        return
    from qa_lib.models import build_offline_tokenizer

    tokenizer = build_offline_tokenizer()
    exercise = exercise_of(grade_id)
    for number, case in enumerate(cases, 1):
        case = {"function": exercise.functions[0], **case}
        with _graded_on_its_own(function, exercise):
            got = probe.run_case(function, case, tokenizer)
        hint = verdict(case, got, expected_output(case, tokenizer))
        assert hint is None, f"{grade_id}, case {number}/{len(cases)}: {hint}"
    print(f"{grade_id}: {len(cases)} 个用例通过 (cases passed)")
