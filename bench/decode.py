"""Benchmark: n-best answer decoding for every CMRC 2018 dev question (windows of 512, stride 128).

The logits are random (normal, fixed seed), one array per window of the window's length: decoding
cost does not depend on what a model would predict, and no model has to run.

- nested loop: the widely used post-processing (HF ``postprocess_qa_predictions`` style): per
  window, the ``n_best`` highest start and end logits, a double loop over their pairs, invalid pairs
  skipped, candidates sorted by score;
- ours: ``postprocess_predictions``, which scores every valid span of each window. Where its
  answer differs from the nested loop's, its score must be higher: the top-k filter can only miss
  spans, never add them.

Run: ``python bench/decode.py`` with QA_KIT_CMRC_DIR and QA_KIT_VOCAB_DIR set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

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
from qa_lib.decoding import DEFAULT_MAX_ANSWER_LENGTH, postprocess_predictions
from qa_lib.features import NOT_CONTEXT, prepare_eval_features

SEED = 2018
N_BEST = 20
DEFAULT_REPEATS = 3  # a round costs about 2 s on two cores
MAX_ANSWER_LENGTH = DEFAULT_MAX_ANSWER_LENGTH  # the library's default, 100 bert-base-chinese tokens


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # -inf when no valid span was found


NO_ANSWER = Answer("", float("-inf"))


def random_logits(offsets: Sequence[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits for each window: standard normal float32, one value per token."""
    generator = np.random.default_rng(seed)
    starts = [generator.standard_normal(len(o)).astype(np.float32) for o in offsets]
    ends = [generator.standard_normal(len(o)).astype(np.float32) for o in offsets]
    return starts, ends


def nested_loop_predictions(
    examples: Sequence[QAExample],
    example_index: Sequence[int],
    offset_lists: Sequence[list[tuple[int, int]]],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    n_best: int,
    max_answer_length: int,
) -> dict[str, Answer]:
    """Best answer per question from the ``n_best`` x ``n_best`` candidate pairs of each of its windows,
    with the n-best list and its probabilities built as the widely used ``utils_qa`` post-processing does.

    Offsets are plain lists of ``(start, end)`` pairs, the form a ``datasets`` column gives this
    code, so that the baseline does not pay for numpy element access.
    """
    windows_of = defaultdict(list)
    for window, index in enumerate(example_index):
        windows_of[index].append(window)
    predictions = {}
    for index, example in enumerate(examples):
        candidates = []
        for window in windows_of[index]:
            offsets, starts, ends = offset_lists[window], start_logits[window], end_logits[window]
            top_starts = np.argsort(starts)[-1 : -n_best - 1 : -1].tolist()
            top_ends = np.argsort(ends)[-1 : -n_best - 1 : -1].tolist()
            for start in top_starts:
                for end in top_ends:
                    if offsets[start][0] == NOT_CONTEXT or offsets[end][0] == NOT_CONTEXT:
                        continue
                    if end < start or end - start + 1 > max_answer_length:
                        continue
                    start_char, end_char = offsets[start][0], offsets[end][1]
                    candidates.append(
                        (starts[start] + ends[end], start_char, end_char, example.context[start_char:end_char])
                    )
        # Like utils_qa: keep the n best, softmax their scores, and store an n-best entry for each.
        nbest = sorted(candidates, key=lambda candidate: candidate[0], reverse=True)[:n_best]
        scores = np.array([candidate[0] for candidate in nbest], dtype=np.float64)
        probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if nbest else scores
        entries = [
            {"text": text, "score": float(score), "start": start, "end": end, "probability": float(probability)}
            for (score, start, end, text), probability in zip(nbest, probabilities)
        ]
        predictions[example.id] = Answer(entries[0]["text"], entries[0]["score"]) if entries else NO_ANSWER
    return predictions


def ours_predictions(
    examples: Sequence[QAExample],
    features: dict,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
) -> dict[str, Answer]:
    """Best answer per question from :func:`postprocess_predictions`, with its score."""
    _, nbest = postprocess_predictions(
        examples, features, start_logits, end_logits, n_best=N_BEST, max_answer_length=MAX_ANSWER_LENGTH
    )
    return {qid: Answer(entries[0].text, entries[0].score) if entries else NO_ANSWER for qid, entries in nbest.items()}


def gains_over_nested(nested: dict[str, Answer], ours: dict[str, Answer]) -> list[float]:
    """Score gained by ours on each question where its answer differs; fails where ours scores lower
    on any question (ours considers every span the nested loop does)."""
    if nested.keys() != ours.keys():
        raise AssertionError("the nested loop and ours answered different sets of questions")
    gains = []
    for qid, answer in nested.items():
        if ours[qid].score < answer.score:
            raise AssertionError(f"{qid}: ours {ours[qid]} scores below nested loop {answer}")
        if ours[qid].text != answer.text:
            gains.append(ours[qid].score - answer.score)
    return gains


def main() -> None:
    repeats = repeats_argument(__doc__.splitlines()[0], DEFAULT_REPEATS)
    examples, tokenizer = load_dev_data()
    features = prepare_eval_features(tokenizer, examples, MAX_LENGTH, DOC_STRIDE)
    start_logits, end_logits = random_logits(features["offsets"], SEED)
    offset_lists = [[tuple(pair) for pair in offsets.tolist()] for offsets in features["offsets"]]

    timings = best_of(
        repeats,
        {
            "nested": lambda: nested_loop_predictions(
                examples, features["example_index"], offset_lists, start_logits, end_logits, N_BEST, MAX_ANSWER_LENGTH
            ),
            "ours": lambda: ours_predictions(examples, features, start_logits, end_logits),
        },
    )
    nested, ours = timings["nested"].result, timings["ours"].result
    gains = gains_over_nested(nested, ours)
    unanswered = sum(1 for answer in nested.values() if not answer.text)

    print(
        f"{len(examples)} questions, {len(features['offsets'])} windows of <= {MAX_LENGTH} tokens, "
        f"stride {DOC_STRIDE}; n_best {N_BEST}, max_answer_length {MAX_ANSWER_LENGTH}, seed {SEED}"
    )
    labels = {"nested": f"nested loop (top-{N_BEST} x top-{N_BEST})", "ours": "ours (every valid span)"}
    print_timings(repeats, labels, timings, "nested")
    print(
        f"same best answer for {len(nested) - len(gains)} of {len(nested)} questions; the nested loop "
        f"found no valid span for {unanswered}"
    )
    print(
        f"ours: other answer for {len(gains)} questions, each scoring higher "
        f"(gain min {min(gains, default=0.0):.3f}, max {max(gains, default=0.0):.3f})"
    )

    emit(
        {
            "benchmark": "decode",
            "questions": len(examples),
            "features": len(features["offsets"]),
            "repeats": repeats,
            "n_best": N_BEST,
            "max_answer_length": MAX_ANSWER_LENGTH,
            "seed": SEED,
            **seconds_record(timings),
            "speedup": round(timings["nested"].seconds / timings["ours"].seconds, 2),
            "cpu_speedup": round(timings["nested"].cpu_seconds / timings["ours"].cpu_seconds, 2),
            "nested_unanswered": unanswered,
            "ours_different": len(gains),
            "ours_never_worse": True,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
