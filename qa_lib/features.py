"""From examples to model inputs: tokenisation, char->token conversion and sliding windows.

Taught in notebook 1, section 2 (tokenise question-first, convert answer characters to token
positions) and notebook 2, section 1 (sliding windows for contexts longer than 512 tokens).

The question goes first so that truncation (``only_second``) only ever cuts the context, and so
that every window repeats the whole question. Offsets map each token back to characters of the
context, which is how answers are labelled here and cut out of the context after decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import QAExample

CLS_INDEX = 0
NOT_CONTEXT = -1  # offset value of question, special and padding tokens in evaluation features


# --- The assignment's simple path: one truncated encoding per example -------------------------


def char_to_token_positions(encodings, start_chars: Sequence[int], end_chars: Sequence[int]):
    """Token positions of answers in question-first encodings, as the notebook exercise does it.

    ``end_chars`` are exclusive, so the end token is the token of the last character,
    ``end_char - 1``. When either character has no token in the (truncated) encoding, both
    positions are ``[CLS]`` (0): ``BertForQuestionAnswering`` would clamp -1 to 0 anyway, so the
    label is honest about what the model is trained towards.
    """
    starts, ends = [], []
    for i, (start_char, end_char) in enumerate(zip(start_chars, end_chars)):
        start = encodings.char_to_token(i, start_char, sequence_index=1)
        end = encodings.char_to_token(i, end_char - 1, sequence_index=1)
        if start is None or end is None:
            start = end = CLS_INDEX
        starts.append(start)
        ends.append(end)
    return torch.tensor(starts, dtype=torch.long), torch.tensor(ends, dtype=torch.long)


# --- Sliding windows -------------------------------------------------------------------------

CONTEXT_SEQUENCE = 1  # sequence id of the context in a question-first pair encoding


def encode_windows(
    tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int = 512, doc_stride: int = 128
):
    """Question-first pair encoding cut into overlapping windows of at most ``max_length`` tokens by
    the tokenizer's own overflow (``return_overflowing_tokens=True``), as notebook 2 teaches.

    ``doc_stride`` is the number of context tokens two neighbouring windows share, so an answer
    no longer than the overlap always fits whole in some window. Each window knows its example
    through ``overflow_to_sample_mapping``; :func:`window_features` turns the result into the
    features the rest of the library uses.
    """
    return tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def check_stride(tokenizer, questions: Sequence[str], max_length: int, doc_stride: int) -> None:
    """Refuse a question that leaves no more than ``doc_stride`` context tokens per window: the
    tokenizer would abort with a Rust panic instead of an error a student can read."""
    longest = max((len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"]), default=0)
    capacity = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if capacity <= doc_stride:
        raise ValueError(
            f"a question of {longest} tokens leaves {capacity} context tokens per window, "
            f"not more than doc_stride={doc_stride}"
        )


def context_offsets(encodings, window: int) -> np.ndarray:
    """One window's character offsets as a ``(tokens, 2)`` array, ``NOT_CONTEXT`` outside the context."""
    offsets = np.array(encodings["offset_mapping"][window], dtype=np.int64).reshape(-1, 2)
    offsets[[sequence != CONTEXT_SEQUENCE for sequence in encodings.sequence_ids(window)]] = NOT_CONTEXT
    return offsets


def window_features(tokenizer, examples: Sequence[QAExample], max_length: int = 512, doc_stride: int = 128) -> dict:
    """All windows of all examples (:func:`encode_windows`) as the features the library works on.

    Keys: ``input_ids``, ``token_type_ids`` (lists of arrays), ``example_index`` (the tokenizer's
    ``overflow_to_sample_mapping``), ``offsets`` (:func:`context_offsets`) and ``window_in_example``
    (0 for an example's first window, the one truncation would keep, then 1, 2, ...).
    """
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    check_stride(tokenizer, questions, max_length, doc_stride)
    encodings = encode_windows(tokenizer, questions, contexts, max_length, doc_stride)
    example_index = [int(i) for i in encodings["overflow_to_sample_mapping"]]
    first_window: dict[int, int] = {}  # each example's first window, met on the way
    return {
        "input_ids": [np.array(ids, dtype=np.int64) for ids in encodings["input_ids"]],
        "token_type_ids": [np.array(types, dtype=np.int64) for types in encodings["token_type_ids"]],
        "example_index": example_index,
        "offsets": [context_offsets(encodings, window) for window in range(len(example_index))],
        "window_in_example": [window - first_window.setdefault(i, window) for window, i in enumerate(example_index)],
    }


def strip_span(context: str, start_char: int, end_char: int) -> tuple[int, int]:
    """Shrink a character span past leading and trailing whitespace, which no token covers."""
    while start_char < end_char and context[start_char].isspace():
        start_char += 1
    while end_char > start_char and context[end_char - 1].isspace():
        end_char -= 1
    return start_char, end_char


def span_to_tokens(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """Token positions of a character span fully inside a window, else ``(CLS_INDEX, CLS_INDEX)``.

    Searches inward: the start token is the first context token that ends after ``start_char``
    and the end token the last one that starts before ``end_char``, so a span that begins inside a
    multi-character token (an ``[UNK]`` covering several characters, a word piece) still maps to
    that token instead of to ``None``, and one that begins or ends on whitespace maps to the
    nearest token inside it.
    """
    context_tokens = np.flatnonzero(offsets[:, 0] != NOT_CONTEXT)
    if len(context_tokens) == 0:
        return CLS_INDEX, CLS_INDEX
    token_starts, token_ends = offsets[context_tokens, 0], offsets[context_tokens, 1]
    start_char, end_char = max(start_char, 0), end_char
    first = int(np.searchsorted(token_ends, start_char, side="right"))
    last = int(np.searchsorted(token_starts, end_char, side="left")) - 1
    inside = start_char >= token_starts[0] and end_char <= token_ends[-1]
    if not inside or first > last:
        return CLS_INDEX, CLS_INDEX
    return int(context_tokens[first]), int(context_tokens[last])


def label_windows(features: dict, examples: Sequence[QAExample]) -> dict:
    """Add ``start_positions``/``end_positions``: the first answer's tokens when the window holds
    it whole, else ``[CLS]`` (never -1: ``BertForQuestionAnswering`` clamps -1 to 0, so a "missing"
    label would train towards ``[CLS]`` while pretending to be something else)."""
    features["start_positions"], features["end_positions"] = [], []
    for offsets, index in zip(features["offsets"], features["example_index"]):
        example = examples[index]
        answer = example.answers[0]
        start, end = span_to_tokens(offsets, *strip_span(example.context, answer.start, answer.end))
        features["start_positions"].append(start)
        features["end_positions"].append(end)
    return features


def prepare_train_features(
    tokenizer, examples: Sequence[QAExample], max_length: int = 512, doc_stride: int = 128
) -> dict:
    """Labelled windows for training (see :func:`window_features` and :func:`label_windows`)."""
    return label_windows(window_features(tokenizer, examples, max_length, doc_stride), examples)


def prepare_eval_features(
    tokenizer, examples: Sequence[QAExample], max_length: int = 512, doc_stride: int = 128
) -> dict:
    """Windows with their example id, for decoding answers across windows."""
    features = window_features(tokenizer, examples, max_length, doc_stride)
    features["example_id"] = [examples[i].id for i in features["example_index"]]
    return features


def keep_answerless_windows(features: dict, share: float, seed: int = 0) -> tuple[dict, int]:
    """Training features with only ``share`` of the windows labelled ``[CLS]`` kept, chosen at random;
    returns the features and how many windows were dropped.

    1.0 keeps all, as Hugging Face's ``run_qa`` does. Fewer answerless windows is an old trick: the
    BERT baseline for Natural Questions (Alberti et al., 2019) kept about 2% of them. A tiny model
    trained from scratch needs it: when half of its windows say "no answer here", predicting
    ``[CLS]`` everywhere is the cheapest way to lower the loss, and it stays there.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share of answerless windows to keep must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    answerless = np.asarray(features["start_positions"]) == CLS_INDEX
    keep = ~answerless | (rng.random(len(answerless)) < share)
    kept = np.flatnonzero(keep)
    return {key: [values[i] for i in kept] for key, values in features.items()}, int(len(keep) - len(kept))


def answer_coverage(features: dict, num_examples: int) -> float:
    """Share of examples with at least one window whose label is a real span (not ``[CLS]``)."""
    covered = {i for i, start in zip(features["example_index"], features["start_positions"]) if start != CLS_INDEX}
    return len(covered) / num_examples if num_examples else 0.0
