"""Benchmark: labelled training windows (512 tokens, stride 128) for every CMRC 2018 dev question.

Two ways to the same windows, each timed best-of-N in this one run:

- naive: what a course notebook does, one tokenizer call per (question, context) pair and a Python
  scan over each window's offsets to find the answer tokens;
- ours: ``prepare_train_features``, the tokenizer's own overflow on the whole batch
  (``encode_windows``) and ``label_windows``.

Both must give identical input ids. Labels of the naive scan may differ from ours only where
the answer's first or last character has no token of its own (whitespace, or a character the BERT
normaliser drops): the scan then takes the neighbouring token outside the answer, ours the nearest
one inside it. Those differences are counted and shown; any other difference fails the run. An
answer that starts or ends inside a multi-character token (an ``[UNK]`` over several characters, a
word piece) maps to that token in both.

Run: ``python bench/preprocess.py`` with QA_KIT_CMRC_DIR and QA_KIT_VOCAB_DIR set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from common import (
    DOC_STRIDE,
    MAX_LENGTH,
    best_of,
    emit,
    load_dev_data,
    machine,
    print_timings,
    repeats_argument,
    seconds_record,
)

from qa_lib.data import QAExample
from qa_lib.features import CLS_INDEX, CONTEXT_SEQUENCE, prepare_train_features

# A round costs ~8 s on two cores (about 4 s each side); two rounds keep the whole run under half a
# minute, and interleaved rounds with a best of two already discard one noisy run per side.
DEFAULT_REPEATS = 2


# --- The course-notebook way --------------------------------------------------------------------


def scan_answer_tokens(
    offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None], start_char: int, end_char: int
) -> tuple[int, int]:
    """Answer tokens of one window by walking its offsets; ``(CLS, CLS)`` when the window misses part of it.

    The start token is the last context token starting at or before ``start_char``; the end token
    the first one ending at or after ``end_char`` (exclusive end).
    """
    first = sequence_ids.index(CONTEXT_SEQUENCE)
    last = len(sequence_ids) - 1 - list(reversed(sequence_ids)).index(CONTEXT_SEQUENCE)
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return CLS_INDEX, CLS_INDEX
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def naive_train_features(tokenizer, examples: Sequence[QAExample], max_length: int, doc_stride: int) -> dict:
    """Windows and labels one example at a time, as a course notebook writes it."""
    features = {"input_ids": [], "example_index": [], "start_positions": [], "end_positions": []}
    for index, example in enumerate(examples):
        encoding = tokenizer(
            example.question,
            example.context,
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        answer = example.answers[0]
        for window, input_ids in enumerate(encoding["input_ids"]):
            start, end = scan_answer_tokens(
                encoding["offset_mapping"][window], encoding.sequence_ids(window), answer.start, answer.end
            )
            features["input_ids"].append(input_ids)
            features["example_index"].append(index)
            features["start_positions"].append(start)
            features["end_positions"].append(end)
    return features


# --- Comparison -----------------------------------------------------------------------------------


def assert_same_windows(name: str, ours: dict, other: dict) -> None:
    """Same number of windows, same examples, same token ids, window by window."""
    if len(ours["input_ids"]) != len(other["input_ids"]):
        raise AssertionError(f"{name}: {len(other['input_ids'])} windows, ours {len(ours['input_ids'])}")
    if list(ours["example_index"]) != list(other["example_index"]):
        raise AssertionError(f"{name}: windows belong to different examples")
    for window, (mine, theirs) in enumerate(zip(ours["input_ids"], other["input_ids"])):
        if not np.array_equal(mine, theirs):
            raise AssertionError(f"{name}: input_ids of window {window} differ")


def labels(features: dict) -> list[tuple[int, int]]:
    return list(zip(features["start_positions"], features["end_positions"]))


def has_token(offsets: np.ndarray, char: int) -> bool:
    """Whether some context token of the window covers character ``char``."""
    return bool(np.any((offsets[:, 0] <= char) & (char < offsets[:, 1])))


def label_differences(ours: dict, naive: dict, examples: Sequence[QAExample]) -> list[dict]:
    """Windows whose naive label differs from ours; fails on any difference not explained by an
    answer edge (first or last character) that no token covers."""
    differences = []
    for window, (mine, theirs) in enumerate(zip(labels(ours), labels(naive))):
        if mine == theirs:
            continue
        example = examples[ours["example_index"][window]]
        answer = example.answers[0]
        offsets = ours["offsets"][window]
        edges = [
            name for name, char in (("start", answer.start), ("end", answer.end - 1)) if not has_token(offsets, char)
        ]
        if not edges:
            raise AssertionError(f"window {window} ({example.id}): labels ours {mine}, naive {theirs}")
        differences.append(
            {
                "id": example.id,
                "window": window,
                "answer": answer.text,
                "untokenised_edge": "+".join(edges),
                "ours": mine,
                "naive": theirs,
            }
        )
    return differences


def main() -> None:
    repeats = repeats_argument(__doc__.splitlines()[0], DEFAULT_REPEATS)
    examples, tokenizer = load_dev_data()

    timings = best_of(
        repeats,
        {
            "naive": lambda: naive_train_features(tokenizer, examples, MAX_LENGTH, DOC_STRIDE),
            "ours": lambda: prepare_train_features(tokenizer, examples, MAX_LENGTH, DOC_STRIDE),
        },
    )
    naive, ours = timings["naive"].result, timings["ours"].result
    assert_same_windows("naive", ours, naive)
    differences = label_differences(ours, naive, examples)

    print(f"{len(examples)} questions, {len(ours['input_ids'])} windows of <= {MAX_LENGTH} tokens, stride {DOC_STRIDE}")
    labels_of_sides = {
        "naive": "naive (per-example call + offset scan)",
        "ours": "ours (prepare_train_features)",
    }
    print_timings(repeats, labels_of_sides, timings, "naive")
    print("input_ids: identical on both sides")
    if differences:
        print(f"labels naive != ours in {len(differences)} windows, all where an answer edge has no token:")
        for difference in differences:
            print(f"  {difference}")
    else:
        print("labels: naive == ours in every window (no answer edge without a token of its own)")

    emit(
        {
            "benchmark": "preprocess",
            "questions": len(examples),
            "features": len(ours["input_ids"]),
            "repeats": repeats,
            **seconds_record(timings),
            "speedup_vs_naive": round(timings["naive"].seconds / timings["ours"].seconds, 2),
            "cpu_speedup_vs_naive": round(timings["naive"].cpu_seconds / timings["ours"].cpu_seconds, 2),
            "label_differences": len(differences),
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
