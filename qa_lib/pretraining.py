"""Continued masked-language-model pretraining on QA contexts, then QA fine-tuning from the adapted weights.

Taught in notebook 2, section 3 (after whole word masking itself, ``qa_lib.wwm``).

Domain adaptation: before fine-tuning for QA, a BERT keeps pretraining with MLM on the texts of the target
domain (here the CMRC contexts), with whole word masking (``masking="wwm"``) or the character baseline
(``"char"``). The loop is ``training.fit``, the same one that fine-tunes for QA; only the data, the collator
and the evaluation (held-out MLM loss under a fixed, seeded masking, so that epochs compare) differ.
Afterwards :func:`qa_model_from_mlm` moves the adapted encoder into a ``BertForQuestionAnswering``.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM, BertForQuestionAnswering, PreTrainedTokenizerBase
from transformers.modeling_outputs import MaskedLMOutput

from .data import DataFormatError, load_squad, resolve_data
from .models import (
    OFFLINE_NAME,
    load_bert,
    load_tokenizer,
    save_model_folder,
)
from .training import Task, TrainConfig, fit, preset, same_seeds, training_batches
from .wwm import IGNORE_INDEX, MASKING_MODES, WholeWordMaskCollator, encode_for_mlm

HELD_OUT_FRACTION = 0.1
# Multiple of 8: tensor cores on GPU; the same padding rule as QA batches.
PAD_TO_MULTIPLE_OF = 8

# The tiny random BERT learns MLM from scratch: a large learning rate and short chunks make its loss fall
# visibly within a few dozen steps on two CPU cores.
TINY_MLM_OVERRIDES = dict(
    max_steps=None, epochs=1, max_length=128, learning_rate=5e-3, batch_size=16, warmup_ratio=0.05
)
# A real BERT is already trained: continue gently with the colab-t4 recipe (512-token chunks, batch 32 in
# fp16/bf16), at the 5e-5 that domain-adaptive pretraining of BERT-base commonly uses.
REAL_MLM_OVERRIDES = dict(learning_rate=5e-5)


def mlm_preset(model: str = OFFLINE_NAME, **overrides) -> TrainConfig:
    """The ``TrainConfig`` for continued MLM pretraining of ``model``, with some fields replaced.

    ``offline-tiny``: the ``smoke`` sizes with :data:`TINY_MLM_OVERRIDES`; any other model: the ``colab-t4``
    recipe with :data:`REAL_MLM_OVERRIDES`."""
    if model == OFFLINE_NAME:
        return preset("smoke", **{**TINY_MLM_OVERRIDES, **overrides})
    return preset("colab-t4", model=model, **{**REAL_MLM_OVERRIDES, **overrides})


# --- models ---------------------------------------------------------------------------------------------------


class MaskedOnlyBertForMaskedLM(BertForMaskedLM):
    """``BertForMaskedLM`` that, given ``labels``, runs the MLM head on the masked positions only.

    The head projects each position onto the whole vocabulary (21k entries for Chinese BERT) and dominates the
    cost of a small model, yet only the ~15% masked positions carry a label: scoring just those gives the same
    loss several times faster on a CPU. With ``labels``, ``logits`` has one row per masked token (row-major
    order) instead of the shape (batch, length, vocabulary); without, it is ``BertForMaskedLM`` unchanged.
    Same weights and files: ``BertForMaskedLM.from_pretrained`` loads what this class saves."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if labels is None:
            return super().forward(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)[0]
        scored = labels != IGNORE_INDEX
        logits = self.cls(hidden[scored])
        return MaskedLMOutput(loss=F.cross_entropy(logits, labels[scored]), logits=logits)


def load_mlm_model(name_or_path: str | os.PathLike, tokenizer=None, **config_overrides) -> MaskedOnlyBertForMaskedLM:
    """Load a BERT with its MLM head by hub name or local folder; ``offline-tiny`` returns a random tiny BERT
    sized for ``tokenizer`` (``config_overrides`` apply to it only). Missing files raise ``ModelFilesMissing``."""
    return load_bert(MaskedOnlyBertForMaskedLM, name_or_path, tokenizer, **config_overrides)


def qa_model_from_mlm(mlm_model_or_folder: BertForMaskedLM | str | os.PathLike) -> BertForQuestionAnswering:
    """A ``BertForQuestionAnswering`` whose encoder is a copy of the (adapted) MLM model's and whose QA head is
    freshly initialised, ready for ``train_qa``. Accepts the model itself or a folder it was saved to.

    The weights move in memory rather than through ``from_pretrained``, which would report every MLM-head
    tensor as unexpected on stderr."""
    mlm = mlm_model_or_folder
    if not isinstance(mlm, BertForMaskedLM):
        mlm = load_mlm_model(mlm)
    parameter = next(mlm.parameters())
    qa_model = BertForQuestionAnswering(copy.deepcopy(mlm.config)).to(device=parameter.device, dtype=parameter.dtype)
    qa_model.bert.load_state_dict(mlm.bert.state_dict())  # strict: every encoder tensor must find its place
    return qa_model


# --- held-out loss --------------------------------------------------------------------------------------------


def masked_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    masking: str = "wwm",
    seed: int = 0,
    *,
    mlm_probability: float = 0.15,
    max_length: int = 512,
    batch_size: int = 32,
    user_dict: str | os.PathLike | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``texts`` as MLM batches masked once, with a collator seeded by ``seed``: evaluating a model on the same
    batches again (after each epoch, or another model) scores exactly the same predictions."""
    features = encode_for_mlm(tokenizer, texts, max_length=max_length, user_dict=user_dict)
    if not features:
        raise ValueError("no held-out text has tokens to mask")
    features.sort(key=lambda feature: len(feature["input_ids"]))  # similar lengths together: less padding
    collate = WholeWordMaskCollator(
        tokenizer, mlm_probability, masking, pad_to_multiple_of=PAD_TO_MULTIPLE_OF, seed=seed
    )
    return [collate(features[first : first + batch_size]) for first in range(0, len(features), batch_size)]


@torch.no_grad()
def mean_masked_loss(model: BertForMaskedLM, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Cross-entropy per masked token over all ``batches`` (each batch weighted by its masked tokens, not
    averaged per batch), in eval mode (no dropout); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, masked = 0.0, 0
    try:
        for batch in batches:
            count = int((batch["labels"] != IGNORE_INDEX).sum())
            outputs = model(**{key: value.to(device) for key, value in batch.items()})
            total += outputs.loss.float().item() * count
            masked += count
    finally:
        model.train(was_training)
    if masked == 0:
        raise ValueError("the batches have no masked token to score (mlm_probability 0?)")
    return total / masked


def heldout_mlm_loss(
    model: BertForMaskedLM,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    masking: str = "wwm",
    seed: int = 0,
    **batch_options,
) -> float:
    """MLM loss per masked token of ``model`` on ``texts`` under a masking fixed by ``seed``.

    Compare ``masking="char"`` with ``"wwm"`` on the same texts: for a model that reads the context, guessing
    a whole word is harder than guessing one character beside the rest of its word, so wwm scores higher. A
    model that has only learned how frequent each character is (the tiny one after a short run) scores both
    about the same. ``batch_options`` go to :func:`masked_batches` (``mlm_probability``, ``max_length``, ...)."""
    return mean_masked_loss(model, masked_batches(tokenizer, texts, masking, seed, **batch_options))


# --- pretraining ----------------------------------------------------------------------------------------------


def heldout_evaluator(batches: Sequence[dict[str, torch.Tensor]]) -> Callable[[torch.nn.Module], dict]:
    """``fit``'s ``evaluate``: the held-out loss on batches masked once, so every epoch faces the same task."""

    def evaluate(model: torch.nn.Module) -> dict:
        return {"heldout_loss": mean_masked_loss(model, batches)}

    return evaluate


def pretrain_mlm(
    model: BertForMaskedLM,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    config: TrainConfig,
    *,
    masking: str = "wwm",
    mlm_probability: float = 0.15,
    held_out_texts: Sequence[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    user_dict: str | os.PathLike | None = None,
) -> dict:
    """Continue MLM pretraining of ``model`` on ``texts`` (cut into ``config.max_length`` chunks) with
    ``training.fit``; returns its history plus ``loss_first``/``loss_last`` (first and last step loss),
    ``masking`` and ``config``. With ``held_out_texts``, every epoch record gains ``heldout_loss`` and the
    history ``heldout_loss_before`` (before any step), all under one masking seeded by ``config.seed``.

    Training masks are drawn from the global torch RNG, which ``same_seeds`` seeds and checkpoints save, so
    a run resumed from ``output_dir`` masks its remaining batches exactly as an uninterrupted run would."""
    same_seeds(config.seed)
    features = encode_for_mlm(tokenizer, texts, max_length=config.max_length, user_dict=user_dict)
    if not features:
        raise ValueError("pretrain_mlm: none of the texts has tokens to mask")
    evaluate, before = None, {}
    if held_out_texts:
        held_out = masked_batches(
            tokenizer,
            held_out_texts,
            masking,
            config.seed,
            mlm_probability=mlm_probability,
            max_length=config.max_length,
            batch_size=config.eval_batch_size,
            user_dict=user_dict,
        )
        evaluate = heldout_evaluator(held_out)
        before = {"heldout_loss_before": mean_masked_loss(model, held_out)}  # own generator: global RNG untouched
    task = Task(
        features,
        training_batches([len(feature["input_ids"]) for feature in features], config),
        WholeWordMaskCollator(tokenizer, mlm_probability, masking, pad_to_multiple_of=PAD_TO_MULTIPLE_OF),
        tokenizer,
        evaluate=evaluate,
        description=f"mlm ({masking})",
    )
    history = fit(model, task, config, output_dir=output_dir, resume=resume)
    steps = history["steps"]
    return {
        **history,
        **before,
        "loss_first": steps[0]["loss"],
        "loss_last": steps[-1]["loss"],
        "masking": masking,
        "config": asdict(config),
    }


# --- the command behind `qa-kit pretrain-mlm` -----------------------------------------------------------------


def load_contexts(source: str | os.PathLike) -> list[str]:
    """The distinct contexts, in file order, of a SQuAD-format file or of a split name (any
    ``cmrc2018_<split>.json`` in the folder named by QA_KIT_CMRC_DIR, see :func:`qa_lib.data.resolve_data`)."""
    path = resolve_data(source)
    examples, _ = load_squad(path, drop_unanswered=False)
    contexts = list(dict.fromkeys(example.context for example in examples))
    if not contexts:
        raise DataFormatError(f"{path}: no question with a usable answer, so no context to pretrain on")
    return contexts


def split_held_out(
    texts: Sequence[str], fraction: float = HELD_OUT_FRACTION, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a seeded random ``fraction`` of the texts (at least one, never all) is held out;
    both parts keep the original order."""
    if len(texts) < 2:
        raise ValueError(f"need at least 2 distinct texts to hold some out, got {len(texts)}")
    count = min(len(texts) - 1, max(1, round(fraction * len(texts))))
    held = set(random.Random(seed).sample(range(len(texts)), count))
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def pretrain_mlm_command(
    texts_source: str,
    model: str = OFFLINE_NAME,
    masking: str = "wwm",
    epochs: int | None = None,
    max_steps: int | None = None,
    output_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    resume: bool = False,
) -> dict:
    """``qa-kit pretrain-mlm``: continue MLM pretraining of ``model`` on the contexts of ``texts_source``,
    holding out 10% of them, and return a JSON-ready summary.

    Keys: ``masking``, ``loss_first``/``loss_last`` (training steps), ``heldout_loss_before`` (training
    masking), ``heldout_loss_char``/``heldout_loss_wwm`` (the trained model under both maskings, same texts
    and seed), ``steps``, ``train_texts``, ``heldout_texts``, ``model_dir`` (``output_dir/final``, or None
    without ``output_dir``; pass it to :func:`qa_model_from_mlm`) and ``seconds``."""
    if masking not in MASKING_MODES:
        raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")
    started = time.perf_counter()
    contexts = load_contexts(texts_source)
    try:
        train_texts, held_out = split_held_out(contexts, seed=seed)
    except ValueError as error:  # too few contexts: a problem of the file, reported as such
        raise DataFormatError(f"{texts_source}: {error}") from error
    settings = {"seed": seed, "epochs": epochs, "max_steps": max_steps}
    config = mlm_preset(model, **{key: value for key, value in settings.items() if value is not None})
    tokenizer = load_tokenizer(model)
    same_seeds(seed)
    mlm = load_mlm_model(model, tokenizer, **config.model_overrides)
    history = pretrain_mlm(
        mlm, tokenizer, train_texts, config, masking=masking, held_out_texts=held_out, output_dir=output_dir,
        resume=resume,
    )  # fmt: skip
    heldout = {
        f"heldout_loss_{mode}": heldout_mlm_loss(
            mlm, tokenizer, held_out, mode, seed, max_length=config.max_length, batch_size=config.eval_batch_size
        )
        for mode in MASKING_MODES
    }
    model_dir = save_model_folder(mlm, tokenizer, Path(output_dir) / "final") if output_dir else None
    return {
        "masking": masking,
        "loss_first": history["loss_first"],
        "loss_last": history["loss_last"],
        "heldout_loss_before": history["heldout_loss_before"],
        **heldout,
        "steps": len(history["steps"]),
        "train_texts": len(train_texts),
        "heldout_texts": len(held_out),
        "model_dir": None if model_dir is None else str(model_dir),
        "seconds": time.perf_counter() - started,
    }
