"""Rehearsing the real run on a machine without a GPU: the environment variables that switch it on.

Notebook 1 trains bert-base on CMRC 2018 only where there is a GPU (``FULL_RUN``). To check that this
path works before spending GPU hours, a developer forces it and caps its cost (the real-size test in
``tests/test_rehearsal.py`` does this with a random bert-base-shaped model):

- ``QA_KIT_FULL_RUN=1``: take the full-run path without a GPU (never while nbgrader grades).
- ``QA_KIT_REHEARSAL_MODEL``: a model folder instead of ``bert-base-chinese`` (there is no hub offline).
- ``QA_KIT_REHEARSAL_MAX_STEPS``: stop after this many optimizer steps.
- ``QA_KIT_REHEARSAL_BATCH_SIZE``: windows per step, without accumulation (the preset's 8 x 4 takes about
  a minute per step on two CPU cores); window length and model size stay the preset's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FULL_RUN_VARIABLE = "QA_KIT_FULL_RUN"
MODEL_VARIABLE = "QA_KIT_REHEARSAL_MODEL"
MAX_STEPS_VARIABLE = "QA_KIT_REHEARSAL_MAX_STEPS"
BATCH_SIZE_VARIABLE = "QA_KIT_REHEARSAL_BATCH_SIZE"
BERT_BASE_CHINESE_VOCAB = 21128


def full_run_forced() -> bool:
    """True when ``QA_KIT_FULL_RUN=1`` asks for the full-run path on a machine without a GPU."""
    return os.environ.get(FULL_RUN_VARIABLE) == "1"


def rehearsal_overrides() -> dict:
    """``TrainConfig`` fields that the rehearsal variables set; empty when none is set (a real run)."""
    overrides = {}
    if os.environ.get(MODEL_VARIABLE):
        overrides["model"] = os.environ[MODEL_VARIABLE]
    if os.environ.get(MAX_STEPS_VARIABLE):
        overrides["max_steps"] = int(os.environ[MAX_STEPS_VARIABLE])
    if os.environ.get(BATCH_SIZE_VARIABLE):
        overrides.update(batch_size=int(os.environ[BATCH_SIZE_VARIABLE]), gradient_accumulation_steps=1)
    return overrides


def random_base_model_folder(folder: str | os.PathLike, vocab_dir: str | os.PathLike) -> Path:
    """A randomly initialised model with bert-base-chinese's shape (BERT-base, 21,128 tokens) and the real
    vocabulary, saved to ``folder``: the real run's costs (step time, memory, checkpoint size) without the hub."""
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    from .models import save_model_folder, vocabulary_size

    # vocab=, not the file-path keyword: BertTokenizerFast silently ignores that one (see qa_lib.models).
    tokenizer = BertTokenizerFast(vocab=str(Path(vocab_dir) / "vocab.txt"), do_lower_case=True)
    size = vocabulary_size(tokenizer)  # the highest id + 1: vocab.txt repeats some tokens
    if size != BERT_BASE_CHINESE_VOCAB:
        raise ValueError(f"{vocab_dir}/vocab.txt gives {size} token ids, bert-base-chinese has 21,128")
    model = BertForQuestionAnswering(BertConfig(vocab_size=BERT_BASE_CHINESE_VOCAB))
    return save_model_folder(model, tokenizer, folder)


def stand_in_cmrc(folder: str | os.PathLike, source: str | os.PathLike, train: int, dev: int) -> Path:
    """A QA_KIT_CMRC_DIR for a rehearsal: ``cmrc2018_train.json`` from the first ``train`` questions of the
    trial split (the 10k training file is not available offline) and ``cmrc2018_dev.json`` from the first
    ``dev`` questions of dev."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, source_split, count in (("train", "trial", train), ("dev", "dev", dev)):
        squad = json.loads((Path(source) / f"cmrc2018_{source_split}.json").read_text(encoding="utf-8"))
        (folder / f"cmrc2018_{split}.json").write_text(
            json.dumps(first_questions(squad, count), ensure_ascii=False), encoding="utf-8"
        )
    return folder


def first_questions(squad: dict, count: int) -> dict:
    """The SQuAD-format dict cut down to its first ``count`` questions (paragraphs keep their contexts)."""
    articles, left = [], count
    for article in squad["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            if left > 0 and paragraph["qas"]:
                paragraphs.append({**paragraph, "qas": paragraph["qas"][:left]})
                left -= len(paragraphs[-1]["qas"])
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
    return {**squad, "data": articles}
