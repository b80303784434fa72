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
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import QAExample
from .features import NOT_CONTEXT

# CMRC 2018 answers are long: 620 dev references exceed 30 characters and trial answers average
# 31. Measured in bert-base-chinese tokens, 100 covers all dev references and 96.6% of trial
# answers; the SQuAD habit of 30 would cover only 94.5% and 66.3% (tests/test_decoding.py).
DEFAULT_MAX_ANSWER_LENGTH = 100


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


@dataclass(frozen=True)
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


def nbest_answers(
    context: str, scores: np.ndarray, start_chars: np.ndarray, end_chars: np.ndarray, n_best: int
) -> list[Candidate]:
    """Merge one example's window candidates: best first, one entry per character span."""
    best_by_span: dict[tuple[int, int], float] = {}
    for score, start, end in zip(scores.ravel().tolist(), start_chars.ravel().tolist(), end_chars.ravel().tolist()):
        end = extend_over_marks(context, end)
        if score != float("-inf") and score > best_by_span.get((start, end), float("-inf")):
            best_by_span[(start, end)] = score
    ranked = sorted(best_by_span.items(), key=lambda item: -item[1])[:n_best]
    if not ranked:
        return []
    probabilities = torch.softmax(torch.tensor([score for _, score in ranked], dtype=torch.float64), dim=0).tolist()
    return [
        Candidate(context[start:end], score, start, end, probability)
        for ((start, end), score), probability in zip(ranked, probabilities)
    ]


def pad_windows(
    start_logits: Sequence, end_logits: Sequence, offsets: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Stack windows of different lengths; padding gets logit ``-inf`` and offset ``NOT_CONTEXT``."""
    longest = max(len(o) for o in offsets)
    starts = torch.full((len(offsets), longest), float("-inf"))
    ends = torch.full((len(offsets), longest), float("-inf"))
    stacked = np.full((len(offsets), longest, 2), NOT_CONTEXT, dtype=np.int64)
    for w, window_offsets in enumerate(offsets):
        n = len(window_offsets)
        starts[w, :n] = torch.as_tensor(np.asarray(start_logits[w][:n], dtype=np.float32))
        ends[w, :n] = torch.as_tensor(np.asarray(end_logits[w][:n], dtype=np.float32))
        stacked[w, :n] = window_offsets
    return starts, ends, stacked


def postprocess_predictions(
    examples: Sequence[QAExample],
    features: Mapping,
    start_logits: Sequence,
    end_logits: Sequence,
    n_best: int = 20,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    candidate_positions: int | None = None,
    chunk: int = 256,
) -> tuple[dict[str, str], dict[str, list[Candidate]]]:
    """Predictions ``{question_id: answer}`` and n-best lists across all windows of each example.

    ``start_logits[w]``/``end_logits[w]`` are window ``w``'s logits (any padding beyond the
    window's offsets is ignored). Windows are scored ``chunk`` at a time to bound memory. An
    example whose windows hold no valid span gets ``""``.
    """
    windows_of = defaultdict(list)
    for window, example_index in enumerate(features["example_index"]):
        windows_of[example_index].append(window)
    parts = []
    for first in range(0, len(features["offsets"]), chunk):
        part = slice(first, first + chunk)
        starts, ends, offsets = pad_windows(start_logits[part], end_logits[part], features["offsets"][part])
        parts.append(window_candidates(starts, ends, offsets, max_answer_length, n_best, candidate_positions))
    scores, start_chars, end_chars = (np.concatenate([p[i] for p in parts]) for i in range(3))
    predictions, nbest = {}, {}
    for index, example in enumerate(examples):
        rows = windows_of[index]
        nbest[example.id] = nbest_answers(example.context, scores[rows], start_chars[rows], end_chars[rows], n_best)
        predictions[example.id] = nbest[example.id][0].text if nbest[example.id] else ""
    return predictions, nbest
