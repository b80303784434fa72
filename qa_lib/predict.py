"""Prediction for contexts of any length: windows, best valid span across windows, files.

Taught in notebook 1, section 5 (prediction) and notebook 2, section 1 (prediction across windows).

The original assignment's ``predict`` called ``tokenizer([doc, query])``, which encodes a batch
of two separate texts instead of one (question, context) pair. :func:`answer` takes the question
and the context as two strings and refuses lists, so that mistake cannot happen through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .batching import WindowDataset, pad_batch
from .data import QAExample, write_json_atomically
from .decoding import DEFAULT_MAX_ANSWER_LENGTH, Candidate, postprocess_predictions
from .features import prepare_eval_features


@torch.no_grad()
def window_logits(
    model, features: dict, batch_size: int = 32, device=None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window, each trimmed to the window's own length.

    Windows are run longest first so that each batch pads little; results come back in the
    original window order.
    """
    model.eval()
    device = device or next(model.parameters()).device
    dataset = WindowDataset(features)
    lengths = dataset.lengths()
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    starts: list[np.ndarray] = [None] * len(dataset)
    ends: list[np.ndarray] = [None] * len(dataset)
    pad_id = model.config.pad_token_id or 0
    for first in range(0, len(order), batch_size):
        indices = order[first : first + batch_size]
        batch = pad_batch([dataset[i] for i in indices], pad_id)
        output = model(**{key: value.to(device) for key, value in batch.items()})
        start_logits, end_logits = output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()
        for row, i in enumerate(indices):
            starts[i], ends[i] = start_logits[row, : lengths[i]], end_logits[row, : lengths[i]]
    return starts, ends


def predict_examples(
    model,
    tokenizer,
    examples: Sequence[QAExample],
    max_length: int = 512,
    doc_stride: int = 128,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    n_best: int = 20,
    batch_size: int = 32,
    first_window_only: bool = False,
) -> tuple[dict[str, str], dict[str, list[Candidate]]]:
    """Predictions and n-best lists for examples of any length.

    ``first_window_only=True`` keeps only each example's first window: the assignment's plain
    truncation at ``max_length``, for comparison.
    """
    features = prepare_eval_features(tokenizer, examples, max_length, doc_stride)
    if first_window_only:
        keep = [w for w, position in enumerate(features["window_in_example"]) if position == 0]
        features = {key: [values[w] for w in keep] for key, values in features.items()}
    return predict_features(model, examples, features, max_answer_length, n_best, batch_size)


def predict_features(
    model,
    examples: Sequence[QAExample],
    features: dict,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    n_best: int = 20,
    batch_size: int = 32,
) -> tuple[dict[str, str], dict[str, list[Candidate]]]:
    """Predictions from already prepared evaluation windows (evaluation after every epoch reuses them)."""
    starts, ends = window_logits(model, features, batch_size)
    return postprocess_predictions(examples, features, starts, ends, n_best, max_answer_length)


def answer(
    question: str,
    context: str,
    model,
    tokenizer,
    top_k: int = 5,
    max_length: int = 512,
    doc_stride: int = 128,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    batch_size: int = 32,
) -> dict:
    """Answer one question about one context of any length.

    The context's windows go through the model ``batch_size`` at a time, so that memory stays bounded
    however long the context is (bench/long_context.py measures 200,000 characters).

    Returns ``{"text", "start", "end", "score", "probability", "nbest"}`` where ``start``/``end``
    are character offsets in ``context`` (end exclusive) and ``nbest`` lists the ``top_k`` best
    distinct spans across all windows.
    """
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str):
            raise TypeError(
                f"{name} must be one string, got {type(value).__name__}: pass the question and the context as "
                "two arguments (a list would be encoded as a batch of separate texts, not as a pair)"
            )
    example = QAExample("question", "", context, question, answers=())
    _, nbest = predict_examples(
        model, tokenizer, [example], max_length, doc_stride, max_answer_length, top_k, batch_size
    )
    candidates = nbest["question"]
    best = candidates[0] if candidates else Candidate("", float("-inf"), 0, 0, 0.0)
    return {
        "text": best.text,
        "start": best.start_char,
        "end": best.end_char,
        "score": best.score,
        "probability": best.probability,
        "nbest": [asdict(c) for c in candidates],
    }


def write_predictions(
    folder: str | os.PathLike, predictions: Mapping[str, str], nbest: Mapping[str, list[Candidate]]
) -> tuple[Path, Path]:
    """Write ``predictions.json`` (CMRC format ``{question_id: answer}``) and ``nbest_predictions.json``, each
    complete or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nbest_json = {qid: [asdict(c) for c in candidates] for qid, candidates in nbest.items()}
    return (
        write_json_atomically(folder / "predictions.json", predictions),
        write_json_atomically(folder / "nbest_predictions.json", nbest_json),
    )
