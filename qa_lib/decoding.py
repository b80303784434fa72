"""From start/end logits to answers: argmax, best valid span, n-best across windows.

Taught in notebook 1, section 4 (argmax decoding and start/end accuracy) and notebook 2,
section 2 (the end<start problem and the best valid span).

Independent argmaxes can give an end before the start, a span through the question, or a
span hundreds of tokens long. The best valid span maximises ``start_logit + end_logit`` over
spans with ``start <= end < start + max_answer_length`` inside the context. Scoring every
``(start, length)`` pair is one tensor operation: no Python loop over positions.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import QAExample
from .features import CLS_INDEX, NOT_CONTEXT

# CMRC 2018 answers are long: 620 dev references exceed 30 characters and trial answers average
# 31. Measured in bert-base-chinese tokens, 100 covers all dev references and 96.6% of trial
# answers; the SQuAD habit of 30 would cover only 94.5% and 66.3% (tests/test_decoding.py).
DEFAULT_MAX_ANSWER_LENGTH = 100


def gold_logits(features: Mapping) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One-hot start/end logits at each window's labelled tokens (none for ``[CLS]`` labels): the
    oracle that checks features, decoding and the metric together on real data."""
    starts, ends = [], []
    for start, end, ids in zip(features["start_positions"], features["end_positions"], features["input_ids"]):
        start_logits, end_logits = np.full(len(ids), -10.0, np.float32), np.full(len(ids), -10.0, np.float32)
        if start != CLS_INDEX:
            start_logits[start], end_logits[end] = 10.0, 10.0
        starts.append(start_logits)
        ends.append(end_logits)
    return starts, ends


def argmax_positions(start_logits: torch.Tensor, end_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent argmax over the sequence (last) dimension, for a batch."""
    return start_logits.argmax(dim=-1), end_logits.argmax(dim=-1)


def span_accuracy(predicted: torch.Tensor, gold: torch.Tensor) -> float:
    """Share of positions predicted exactly."""
    return (predicted == gold).float().mean().item()


def top_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_ok: torch.Tensor,
    end_ok: torch.Tensor,
    max_answer_length: int,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n`` best valid spans of each window: ``(scores, starts, ends)``, each ``(..., n)``.

    A span ``(i, j)`` is valid when ``start_ok[i]``, ``end_ok[j]`` and
    ``0 <= j - i < max_answer_length``; its score is ``start_logits[i] + end_logits[j]``.
    Exact without scoring all pairs: the best end within reach of each start comes from one
    sliding-window max, so only the ``n`` starts with the best reachable spans can own a top-``n``
    span, and only their ``n * max_answer_length`` spans are scored. Missing spans score ``-inf``
    at position ``(0, 0)``.
    """
    squeeze = start_logits.dim() == 1
    if squeeze:
        start_logits, end_logits, start_ok, end_ok = (
            t.unsqueeze(0) for t in (start_logits, end_logits, start_ok, end_ok)
        )
    length = start_logits.shape[-1]
    band, n = min(max_answer_length, length), min(n, length * min(max_answer_length, length))
    starts = start_logits.float().masked_fill(~start_ok.bool(), float("-inf"))
    ends_padded = torch.nn.functional.pad(
        end_logits.float().masked_fill(~end_ok.bool(), float("-inf")), (0, band - 1), value=float("-inf")
    )
    reachable = torch.nn.functional.max_pool1d(ends_padded.unsqueeze(1), band, stride=1).squeeze(1)
    best_starts = torch.topk(starts + reachable, min(n, length), dim=-1).indices
    reach = best_starts.unsqueeze(-1) + torch.arange(band)
    scores = starts.gather(-1, best_starts).unsqueeze(-1) + ends_padded.gather(-1, reach.flatten(-2)).view(reach.shape)
    top = torch.topk(scores.flatten(-2), n, dim=-1)
    span_starts = best_starts.gather(-1, top.indices // band)
    span_ends = span_starts + top.indices % band
    missing = top.values == float("-inf")
    result = (top.values, span_starts.masked_fill(missing, 0), span_ends.masked_fill(missing, 0))
    return tuple(t.squeeze(0) for t in result) if squeeze else result


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best valid ``(start, end, score)`` inside the context, per window (one window or a batch).

    A window with no context token returns ``(0, 0, -inf)``.
    """
    scores, starts, ends = top_spans(start_logits, end_logits, context_mask, context_mask, max_answer_length, 1)
    return starts[..., 0], ends[..., 0], scores[..., 0]


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str
    score: float
    start_char: int
    end_char: int  # exclusive
    probability: float = 0.0  # softmax of the score over the example's n-best list


def top_positions_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """True at each window's ``k`` highest logits (the candidate filter of HF's ``utils_qa``)."""
    top = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)


def window_candidates(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    offsets: np.ndarray,
    max_answer_length: int,
    n_best: int,
    candidate_positions: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each window's ``n_best`` best valid spans: ``(scores, start_chars, end_chars)``, ``(W, n)``.

    ``offsets`` is ``(W, seq, 2)`` with ``NOT_CONTEXT`` outside the context. By default every
    valid span is a candidate; ``candidate_positions=k`` keeps only spans whose start and end are
    among the window's top-k logits, as the widely used nested-loop post-processing does.
    """
    context = torch.from_numpy(offsets[..., 0] != NOT_CONTEXT)
    start_ok, end_ok = context, context
    if candidate_positions is not None:
        start_ok = context & top_positions_mask(start_logits, candidate_positions)
        end_ok = context & top_positions_mask(end_logits, candidate_positions)
    scores, starts, ends = top_spans(start_logits, end_logits, start_ok, end_ok, max_answer_length, n_best)
    rows = np.arange(len(offsets))[:, None]
    return scores.numpy(), offsets[rows, starts.numpy(), 0], offsets[rows, ends.numpy(), 1]


def extend_over_marks(context: str, end: int) -> int:
    """Move an exclusive end past combining marks: BERT's normaliser strips accents, so the last
    token of a word such as Hebrew "יִרְמְיָהוּ" can stop before its final mark."""
    while end < len(context) and unicodedata.combining(context[end]):
        end += 1
    return end


def group_starts(*keys: np.ndarray) -> np.ndarray:
    """Indices where sorted key arrays start a new group (any key changes)."""
    changed = np.zeros(len(keys[0]) - 1, dtype=bool) if len(keys[0]) else np.zeros(0, dtype=bool)
    for key in keys:
        changed |= key[1:] != key[:-1]
    return np.flatnonzero(np.r_[True, changed]) if len(keys[0]) else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class RankedSpans:
    """Every question's distinct candidate spans, best first, as flat arrays grouped by question."""

    question: np.ndarray  # example index of each span, grouped and ascending
    score: np.ndarray
    start_char: np.ndarray
    end_char: np.ndarray
    probability: np.ndarray  # softmax of the scores within the question's list

    @classmethod
    def merge(cls, examples: Sequence[QAExample], question, score, start_char, end_char, n_best: int) -> RankedSpans:
        """Drop invalid spans, keep each character span once (its best score) and the ``n_best``
        best per question -- with array sorts over all questions at once, not a loop per question."""
        valid = np.isfinite(score)
        question, score, start_char, end_char = question[valid], score[valid], start_char[valid], end_char[valid]
        # Combining marks are rare: look for them once per distinct context, then fix only those spans.
        marked = {c for c in {e.context for e in examples} if any(map(unicodedata.combining, set(c)))}
        has_marks = np.array([example.context in marked for example in examples], dtype=bool)
        for i in np.flatnonzero(has_marks[question]):
            end_char[i] = extend_over_marks(examples[question[i]].context, end_char[i])
        order = np.lexsort((-score, end_char, start_char, question))
        first = order[group_starts(question[order], start_char[order], end_char[order])]
        order = first[np.lexsort((-score[first], question[first]))]
        question, score, start_char, end_char = question[order], score[order], start_char[order], end_char[order]
        starts = group_starts(question)
        rank = np.arange(len(question)) - np.repeat(starts, np.diff(np.r_[starts, len(question)]))
        kept = rank < n_best
        question, score, start_char, end_char = question[kept], score[kept], start_char[kept], end_char[kept]
        starts = group_starts(question)
        exp = np.exp(score.astype(np.float64) - np.repeat(score[starts], np.diff(np.r_[starts, len(question)])))
        probability = exp / np.repeat(np.add.reduceat(exp, starts), np.diff(np.r_[starts, len(question)]))
        return cls(question, score, start_char, end_char, probability)


class NBestLists(Mapping):
    """``{question_id: [Candidate, ...]}`` built on access: training-time evaluation only needs the
    best answers, so the 20 candidates per question are made only when someone asks for them."""

    def __init__(self, examples: Sequence[QAExample], spans: RankedSpans):
        self.examples, self.spans = examples, spans
        starts = group_starts(spans.question)
        ends = np.r_[starts[1:], len(spans.question)]
        self.rows = {int(spans.question[s]): (int(s), int(e)) for s, e in zip(starts, ends)}
        self.index = {example.id: i for i, example in enumerate(examples)}

    def __getitem__(self, question_id: str) -> list[Candidate]:
        index = self.index[question_id]
        first, last = self.rows.get(index, (0, 0))
        context, spans = self.examples[index].context, self.spans
        return [
            Candidate(context[start:end], score, start, end, probability)
            for score, start, end, probability in zip(
                spans.score[first:last].tolist(),
                spans.start_char[first:last].tolist(),
                spans.end_char[first:last].tolist(),
                spans.probability[first:last].tolist(),
            )
        ]

    def __iter__(self):
        return (example.id for example in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def best_texts(self) -> dict[str, str]:
        """The top answer of every question (``""`` where no valid span exists)."""
        return {
            example.id: example.context[self.spans.start_char[rows[0]] : self.spans.end_char[rows[0]]]
            if (rows := self.rows.get(i))
            else ""
            for i, example in enumerate(self.examples)
        }


def pad_windows(
    start_logits: Sequence, end_logits: Sequence, offsets: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Stack windows of different lengths; padding gets logit ``-inf`` and offset ``NOT_CONTEXT``."""
    lengths = np.array([len(o) for o in offsets])
    rows = np.repeat(np.arange(len(offsets)), lengths)
    columns = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    shape = (len(offsets), lengths.max())
    starts, ends = np.full(shape, -np.inf, dtype=np.float32), np.full(shape, -np.inf, dtype=np.float32)
    starts[rows, columns] = np.concatenate([np.asarray(s[:n], dtype=np.float32) for s, n in zip(start_logits, lengths)])
    ends[rows, columns] = np.concatenate([np.asarray(e[:n], dtype=np.float32) for e, n in zip(end_logits, lengths)])
    stacked = np.full((*shape, 2), NOT_CONTEXT, dtype=np.int64)
    stacked[rows, columns] = np.concatenate(offsets)
    return torch.from_numpy(starts), torch.from_numpy(ends), stacked


def postprocess_predictions(
    examples: Sequence[QAExample],
    features: Mapping,
    start_logits: Sequence,
    end_logits: Sequence,
    n_best: int = 20,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    candidate_positions: int | None = None,
    chunk: int = 256,
) -> tuple[dict[str, str], NBestLists]:
    """Predictions ``{question_id: answer}`` and n-best lists across all windows of each example.

    ``start_logits[w]``/``end_logits[w]`` are window ``w``'s logits (any padding beyond the
    window's offsets is ignored). Windows are scored ``chunk`` at a time to bound memory. An
    example whose windows hold no valid span gets ``""``.
    """
    parts = []
    for first in range(0, len(features["offsets"]), chunk):
        part = slice(first, first + chunk)
        starts, ends, offsets = pad_windows(start_logits[part], end_logits[part], features["offsets"][part])
        parts.append(window_candidates(starts, ends, offsets, max_answer_length, n_best, candidate_positions))
    scores, start_chars, end_chars = (np.concatenate([p[i] for p in parts]) for i in range(3))
    question = np.repeat(np.asarray(features["example_index"], dtype=np.int64), scores.shape[1])
    spans = RankedSpans.merge(examples, question, scores.ravel(), start_chars.ravel(), end_chars.ravel(), n_best)
    nbest = NBestLists(examples, spans)
    return nbest.best_texts(), nbest
