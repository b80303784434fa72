"""Switching the backbone by name: the Chinese BERTs that fine-tune for CMRC 2018 with the same code.

Taught in notebook 2, section 3 (after whole word masking: the models that were pretrained with it).

All four are the BERT architecture with BERT's WordPiece vocabulary, so the kit loads every one with
``BertTokenizerFast`` and ``BertForQuestionAnswering`` (through ``qa_lib.models``). That includes
``hfl/chinese-roberta-wwm-ext``: RoBERTa's training recipe on BERT's architecture; Roberta classes would
look for a byte-level BPE vocabulary it does not have.

The scores are the ones the authors published (best of 10 runs, mean in brackets in their tables); they
cannot be checked offline: the kit ships no weights of these models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transformers import BertForQuestionAnswering, BertTokenizerFast

from .models import OFFLINE_NAME, load_qa_model, load_tokenizer
from .training import TrainConfig, preset

PUBLISHED = "published, not verifiable offline"
CHINESE_BERT_WWM = (
    "Cui et al. 2021, Pre-Training with Whole Word Masking for Chinese BERT (github.com/ymcui/Chinese-BERT-wwm)"
)
MACBERT = "Cui et al. 2020, Revisiting Pre-Trained Models for Chinese NLP (github.com/ymcui/MacBERT)"


@dataclass(frozen=True)
class Backbone:
    """One pretrained Chinese BERT and its published CMRC 2018 development-set scores."""

    name: str
    hub_id: str
    architecture: str
    dev_em: float  # best of 10 fine-tuning runs, as published
    dev_f1: float
    dev_em_mean: float  # mean of the same 10 runs
    dev_f1_mean: float
    source: str
    status: str = PUBLISHED


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            "bert-base-chinese",
            "bert-base-chinese",
            "BERT-base (12 layers, 768 hidden); character masking; Chinese Wikipedia",
            65.5, 84.5, 64.4, 84.0, CHINESE_BERT_WWM,
        ),
        Backbone(
            "chinese-bert-wwm-ext",
            "hfl/chinese-bert-wwm-ext",
            "BERT-base; whole word masking; Wikipedia plus extended data (5.4B words)",
            67.1, 85.7, 65.6, 85.0, CHINESE_BERT_WWM,
        ),
        Backbone(
            "chinese-roberta-wwm-ext",
            "hfl/chinese-roberta-wwm-ext",
            "BERT architecture despite the name (load with Bert classes); RoBERTa-style training: "
            "no next-sentence prediction, longer training; whole word masking; extended data",
            67.4, 87.2, 66.5, 86.5, CHINESE_BERT_WWM,
        ),
        Backbone(
            "chinese-macbert-base",
            "hfl/chinese-macbert-base",
            "BERT architecture; MLM as correction (similar words instead of [MASK]), whole word and N-gram "
            "masking, sentence-order prediction",
            68.5, 87.9, 67.3, 87.1, MACBERT,
        ),
    )
}  # fmt: skip


def backbone(name: str) -> Backbone:
    """The backbone called ``name`` (its short name or its hub id), or a ``KeyError`` listing the choices."""
    for candidate in BACKBONES.values():
        if name in (candidate.name, candidate.hub_id):
            return candidate
    raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} (or their hub ids)")


def qa_preset(name: str, **overrides) -> TrainConfig:
    """The ``colab-t4`` fine-tuning recipe with the model of backbone ``name``; ``overrides`` replace fields.

    One recipe for all: the Chinese-BERT-wwm authors found lr 3e-5 best on CMRC 2018 for BERT and reused it for
    every wwm model; learning rate is the first thing to tune for a new backbone all the same."""
    return preset("colab-t4", **{"model": backbone(name).hub_id, **overrides})


def model_source(name_or_path: str | os.PathLike) -> str:
    """What ``qa_lib.models`` should load: a backbone name becomes its hub id; a local folder and
    ``offline-tiny`` pass through; anything else is a ``KeyError`` listing the choices."""
    source = str(name_or_path)
    if source == OFFLINE_NAME or Path(source).is_dir():
        return source
    try:
        return backbone(source).hub_id
    except KeyError:
        raise KeyError(
            f"{source!r} is neither a backbone ({sorted(BACKBONES)}), nor a local model folder, nor {OFFLINE_NAME!r}"
        ) from None


def load_backbone(
    name_or_path: str | os.PathLike, **config_overrides
) -> tuple[BertTokenizerFast, BertForQuestionAnswering]:
    """``(tokenizer, QA model)`` of a backbone name, a local folder or ``offline-tiny``, with the Bert classes of
    ``qa_lib.models``. Offline without the files: ``ModelFilesMissing`` says how to get them."""
    source = model_source(name_or_path)
    tokenizer = load_tokenizer(source)
    return tokenizer, load_qa_model(source, tokenizer, **config_overrides)


def results_table() -> str:
    """The published CMRC 2018 dev scores of the backbones as a Markdown table (README, notebook)."""
    lines = [
        "| Backbone | Hub id | Dev EM | Dev F1 | Source |",
        "|---|---|---:|---:|---|",
        *(
            f"| {b.name} | `{b.hub_id}` | {b.dev_em} ({b.dev_em_mean}) | {b.dev_f1} ({b.dev_f1_mean}) | {b.source} |"
            for b in BACKBONES.values()
        ),
        "",
        f"Scores: {PUBLISHED}. Best of 10 fine-tuning runs, mean in brackets, as the authors report them.",
    ]
    return "\n".join(lines)
