"""From start/end logits to answers: argmax, best valid span, n-best across windows.

Taught in notebook 1, section 4 (argmax decoding and start/end accuracy) and notebook 2,
section 2 (the end<start problem and the best valid span, exercise E7) and section 3 (answers
across windows, exercise E8).

Independent argmaxes can give an end before the start, a span through the question, or a
span hundreds of tokens long. The best valid span maximises ``start_logit + end_logit`` over
spans with ``start <= end < start + max_answer_length`` inside the context. Each window's spans
are scored as one array (no Python loop over positions): a row per start token, a column per span
length, which is exercise E7's start-by-end matrix without the part that is always invalid. Windows
are then taken one by one.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

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


def span_scores(
    start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, max_answer_length: int
) -> np.ndarray:
    """``scores[..., s, l] = start_logits[..., s] + end_logits[..., s + l]``: the score of the span
    of tokens ``s`` to ``s + l`` (``l + 1`` tokens) for every start ``s`` of a window (or of each
    window of a batch) and every length up to ``max_answer_length``; ``-inf`` where ``s`` or
    ``s + l`` is outside the ``context`` mask (the question, special tokens, padding) or past the
    window's end.

    This is exercise E7's ``(tokens, tokens)`` matrix ``start_logits[i] + end_logits[j]``
    restricted to its diagonal band of lengths 1 to ``max_answer_length`` (``j - i`` from 0 to
    ``max_answer_length - 1``): everywhere else that matrix is ``-inf``. Row ``s`` of the band is
    row ``s`` of the matrix from column ``s`` on, ``max_answer_length`` entries of it, so a
    ``(512, 100)`` band replaces a ``(512, 512)`` matrix."""
    starts = np.where(context, start_logits, -np.inf)
    ends = np.where(context, end_logits, -np.inf)
    width = min(max_answer_length, ends.shape[-1])
    past_the_end = np.full(ends.shape[:-1] + (width - 1,), -np.inf, dtype=ends.dtype)
    # ends_from[..., s, l] is ends[..., s + l]: a view of width-long slices starting at each token, no copy.
    ends_from = sliding_window_view(np.concatenate([ends, past_the_end], axis=-1), width, axis=-1)
    return starts[..., :, None] + ends_from


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best valid ``(start, end, score)`` inside the context, per window (one window or a batch):
    the argmax of :func:`span_scores`, as E7 asks (equal scores: the earlier start, then the
    shorter span, as E7's argmax over its matrix). A window with no context token returns
    ``(0, 0, -inf)``."""
    scores = span_scores(
        start_logits.float().numpy(force=True),
        end_logits.float().numpy(force=True),
        context_mask.bool().numpy(force=True),
        max_answer_length,
    )
    flat = torch.from_numpy(scores).flatten(-2)
    best = flat.argmax(dim=-1)
    starts, lengths = best // scores.shape[-1], best % scores.shape[-1]
    return starts, starts + lengths, flat.gather(-1, best.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str
    score: float
    start_char: int
    end_char: int  # exclusive
    probability: float = 0.0  # softmax of the score over the example's n-best list


def n_best_spans(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start tokens and lengths (``end = start + length``) of the ``n`` highest-scoring valid spans
    in one window's :func:`span_scores`, best first; equal scores: the earlier start, then the
    shorter span. Fewer when the window has fewer valid spans."""
    # A floor for the n best: the n-th best of the starts' own best spans. n starts each have a span
    # that scores at least this much, so no span below it can be among the n best.
    floor = np.sort(scores.max(axis=-1))[-n:][0]
    flat = scores.ravel()
    candidates = np.flatnonzero((flat >= floor) & (flat > -np.inf))  # a few more than n, earliest first
    best = candidates[np.argsort(-flat[candidates], kind="stable")[:n]]
    return np.unravel_index(best, scores.shape)


def extend_over_marks(context: str, end: int) -> int:
    """Move an exclusive end past combining marks: BERT's normaliser strips accents, so the last
    token of a word such as Hebrew "יִרְמְיָהוּ" can stop before its final mark."""
    while end < len(context) and unicodedata.combining(context[end]):
        end += 1
    return end


def window_candidates(
    context: str,
    start_logits: Sequence[float],
    end_logits: Sequence[float],
    offsets: np.ndarray,
    max_answer_length: int,
    n_best: int,
) -> list[Candidate]:
    """One window's ``n_best`` best valid spans as answers cut from ``context``, best first.

    ``offsets`` is the window's ``(tokens, 2)`` array, ``NOT_CONTEXT`` outside the context; logits
    beyond the window's tokens (padding) are ignored.
    """
    tokens = len(offsets)
    start_logits = np.asarray(start_logits[:tokens], dtype=np.float32)
    end_logits = np.asarray(end_logits[:tokens], dtype=np.float32)
    scores = span_scores(start_logits, end_logits, offsets[:, 0] != NOT_CONTEXT, max_answer_length)
    starts, lengths = n_best_spans(scores, n_best)
    candidates = []
    for score, start_char, end_char in zip(
        scores[starts, lengths].tolist(), offsets[starts, 0].tolist(), offsets[starts + lengths, 1].tolist()
    ):
        end_char = extend_over_marks(context, end_char)
        candidates.append(Candidate(context[start_char:end_char], score, start_char, end_char))
    return candidates


def rank_candidates(candidates: Iterable[Candidate], n_best: int) -> list[Candidate]:
    """One example's ``n_best`` best distinct answers from the candidates of all its windows, best
    first (equal scores: the earlier span first), each with its probability: the softmax of the
    scores over this list. Windows overlap, so the same characters can come from two windows:
    they count once, with the better score."""
    distinct: dict[tuple[int, int], Candidate] = {}
    for candidate in sorted(candidates, key=lambda c: (-c.score, c.start_char, c.end_char)):
        distinct.setdefault((candidate.start_char, candidate.end_char), candidate)
    best = list(distinct.values())[:n_best]
    if not best:
        return []
    weights = np.exp(np.array([c.score for c in best], dtype=np.float64) - best[0].score)
    return [replace(c, probability=p) for c, p in zip(best, (weights / weights.sum()).tolist())]


def postprocess_predictions(
    examples: Sequence[QAExample],
    features: Mapping,
    start_logits: Sequence,
    end_logits: Sequence,
    n_best: int = 20,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
) -> tuple[dict[str, str], dict[str, list[Candidate]]]:
    """Predictions ``{question_id: answer}`` and n-best lists ``{question_id: [Candidate, ...]}``
    across all windows of each example: :func:`window_candidates` per window, then
    :func:`rank_candidates` per example.

    ``start_logits[w]``/``end_logits[w]`` are window ``w``'s logits. An example whose windows hold
    no valid span gets ``""`` and an empty list.
    """
    found: list[list[Candidate]] = [[] for _ in examples]
    for window, index in enumerate(features["example_index"]):
        found[index] += window_candidates(
            examples[index].context,
            start_logits[window],
            end_logits[window],
            features["offsets"][window],
            max_answer_length,
            n_best,
        )
    nbest = {example.id: rank_candidates(candidates, n_best) for example, candidates in zip(examples, found)}
    return {qid: candidates[0].text if candidates else "" for qid, candidates in nbest.items()}, nbest
