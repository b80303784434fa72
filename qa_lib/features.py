"""From examples to model inputs: tokenisation, char->token conversion and sliding windows.

Taught in notebook 1, section 2 (tokenise question-first, convert answer characters to token
positions) and notebook 2, section 1 (sliding windows for contexts longer than 512 tokens).

The question goes first so that truncation (``only_second``) only ever cuts the context, and so
that every window repeats the whole question. Offsets map each token back to characters of the
context, which is how answers are labelled here and cut out of the context after decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def encode_windows(
    tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int = 512, doc_stride: int = 128
):
    """Question-first pair encoding cut into overlapping windows of at most ``max_length`` tokens,
    exactly as the tokenizer's own overflow (``return_overflowing_tokens=True``) cuts it.

    ``doc_stride`` is the number of context tokens two neighbouring windows share, so an answer
    no longer than the overlap always fits whole in some window. Each window knows its example
    through ``overflow_to_sample_mapping``. This is the form notebook 2 teaches; the library's
    :func:`build_windows` gives the same windows faster.
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


@dataclass(frozen=True)
class TokenizedText:
    ids: np.ndarray  # (n,) token ids without special tokens
    offsets: np.ndarray  # (n, 2) character offsets


def tokenize_texts(tokenizer, texts: Sequence[str]) -> list[TokenizedText]:
    """Tokenise each text once, without special tokens, keeping character offsets."""
    encodings = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [
        TokenizedText(np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64).reshape(-1, 2))
        for ids, offsets in zip(encodings["input_ids"], encodings["offset_mapping"])
    ]


def window_starts(context_tokens: int, capacity: int, doc_stride: int) -> range:
    """First context token of each window: windows of ``capacity`` tokens overlapping by ``doc_stride``."""
    if capacity <= doc_stride:
        raise ValueError(
            f"the question leaves {capacity} context tokens per window, not more than doc_stride={doc_stride}"
        )
    step = capacity - doc_stride
    last = max(context_tokens - capacity, 0)
    return range(0, last + step, step) if last % step else range(0, last + 1, step)


def build_windows(tokenizer, examples: Sequence[QAExample], max_length: int = 512, doc_stride: int = 128) -> dict:
    """All windows of all examples: ``[CLS] question [SEP] context slice [SEP]``.

    Same tokens as :func:`encode_windows`, but each distinct context is tokenised once and shared
    by all its questions (CMRC has about four questions per paragraph), and windows are cut from
    arrays instead of re-tokenised. Keys: ``input_ids``, ``token_type_ids`` (lists of arrays),
    ``example_index``, ``offsets`` (``(tokens, 2)`` arrays, ``NOT_CONTEXT`` outside the context)
    and ``context_start`` (first context token of the window, in context-token coordinates).
    """
    distinct = {context: i for i, context in enumerate(dict.fromkeys(e.context for e in examples))}
    contexts = tokenize_texts(tokenizer, list(distinct))
    questions = tokenize_texts(tokenizer, [e.question for e in examples])
    cls, sep = np.array([tokenizer.cls_token_id]), np.array([tokenizer.sep_token_id])
    features = {key: [] for key in ("input_ids", "token_type_ids", "example_index", "offsets", "context_start")}
    for index, (example, question) in enumerate(zip(examples, questions)):
        context = contexts[distinct[example.context]]
        prefix = np.concatenate([cls, question.ids, sep])
        capacity = max_length - len(prefix) - 1
        for start in window_starts(len(context.ids), capacity, doc_stride):
            piece = slice(start, start + capacity)
            n = len(context.ids[piece])
            features["input_ids"].append(np.concatenate([prefix, context.ids[piece], sep]))
            features["token_type_ids"].append(np.repeat([0, 1], [len(prefix), n + 1]))
            offsets = np.full((len(prefix) + n + 1, 2), NOT_CONTEXT, dtype=np.int64)
            offsets[len(prefix) : len(prefix) + n] = context.offsets[piece]
            features["offsets"].append(offsets)
            features["example_index"].append(index)
            features["context_start"].append(start)
    return features


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
    """Labelled windows for training (see :func:`build_windows` and :func:`label_windows`)."""
    return label_windows(build_windows(tokenizer, examples, max_length, doc_stride), examples)


def prepare_eval_features(
    tokenizer, examples: Sequence[QAExample], max_length: int = 512, doc_stride: int = 128
) -> dict:
    """Windows with their example id, for decoding answers across windows."""
    features = build_windows(tokenizer, examples, max_length, doc_stride)
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
