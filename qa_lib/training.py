"""The training loop: Accelerate mixed precision, AdamW, warmup, accumulation, checkpoints.

Taught in notebook 1, section 3 ("fine-tune with Accelerate and AMP"). The loop is written out
on purpose (no ``Trainer``): every step the assignment teaches is a visible line below.

One loop serves both fine-tuning for QA (:func:`train_qa`) and continued MLM pretraining
(``qa_lib.pretraining``): they differ only in data, per-batch metrics and evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from . import decoding
from .batching import LengthGroupedBatches, WindowDataset, pad_batch
from .checkpoint import CHECKPOINT_PREFIX, latest_checkpoint, load_checkpoint, save_checkpoint
from .data import QAExample, references_of
from .features import keep_answerless_windows, prepare_eval_features, prepare_train_features
from .metric import corpus_scores
from .predict import predict_features
from .reporting import epoch_header, epoch_row, progress_bar

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "no", "fp16", "bf16")
NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "bert-base-chinese"
    max_length: int = 512
    doc_stride: int = 128
    learning_rate: float = 3e-5
    weight_decay: float = 0.01
    batch_size: int = 8
    gradient_accumulation_steps: int = 4
    epochs: int = 2
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto: bf16 where supported, fp16 on older CUDA GPUs, off on CPU
    seed: int = 0
    group_by_length: bool = True
    save_every_steps: int | None = 500
    max_steps: int | None = None  # stop early (smoke runs)
    eval_batch_size: int = 32
    max_answer_length: int = decoding.DEFAULT_MAX_ANSWER_LENGTH
    n_best: int = 20
    answerless_windows: float = 1.0  # share of training windows without the answer that are kept
    model_overrides: dict = field(default_factory=dict)  # tiny-config sizes for the offline model

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps


PRESETS: dict[str, TrainConfig] = {
    # The recipe published with Chinese-BERT-wwm for bert-base-chinese on CMRC 2018 (dev EM 65.5 / F1 84.5
    # with the full 10k training set): 512/128 windows, lr 3e-5, batch 32, 2 epochs, fp16 on a T4.
    "colab-t4": TrainConfig(),
    # The offline demo: tiny random BERT, synthetic data, two CPU cores, a few minutes. The assignment at a
    # quarter of its scale (128-token windows), and three settings without which a BERT trained from scratch
    # learnt nothing in that time (measured; see qa_lib.course.demo): no answerless windows, larger initial weights
    # (attention is near uniform with BERT's 0.02), no dropout (there is no pretraining to protect).
    "cpu-demo": TrainConfig(
        model="offline-tiny",
        max_length=128,
        doc_stride=32,
        learning_rate=3e-3,
        weight_decay=0.01,
        batch_size=16,
        gradient_accumulation_steps=1,
        epochs=5,
        warmup_ratio=0.1,
        mixed_precision="no",
        save_every_steps=None,
        eval_batch_size=64,
        max_answer_length=30,
        answerless_windows=0.0,
        model_overrides={"initializer_range": 0.1, "hidden_dropout_prob": 0.0},
    ),
    # Seconds: tests, notebook grading, CI.
    "smoke": TrainConfig(
        model="offline-tiny",
        max_length=128,
        doc_stride=32,
        learning_rate=1e-3,
        batch_size=4,
        gradient_accumulation_steps=1,
        epochs=1,
        max_steps=6,
        mixed_precision="no",
        save_every_steps=None,
        eval_batch_size=16,
        max_answer_length=30,
        model_overrides={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A named preset with some fields replaced, e.g. ``preset("colab-t4", epochs=1)``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def same_seeds(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all GPUs) and make cuDNN deterministic, as the assignment does."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older CUDA GPUs (Colab's T4), else off.

    fp16 without CUDA would silently run in fp32, so it is refused rather than pretended."""
    if requested not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {requested!r}")
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if requested == "fp16" and not cuda:
        raise ValueError("fp16 needs a CUDA GPU (on CPU it would silently run in fp32); use 'no' or 'bf16'")
    return requested


def get_accelerator(mixed_precision: str = "auto") -> Accelerator:
    """An ``Accelerator`` for this precision, reusing the process's existing one when they agree.

    Accelerate allows one precision per process. Re-running a training cell with the same
    precision reuses the state; asking for another precision raises a clear error instead of
    Accelerate's own, and :func:`reset_accelerator` is the deliberate way out.
    """
    precision = resolve_mixed_precision(mixed_precision)
    if AcceleratorState._shared_state:
        current = str(AcceleratorState().mixed_precision)
        if current != precision:
            raise RuntimeError(
                f"this Python process already trains with mixed_precision={current!r}, and Accelerate allows one "
                f"precision per process; to switch to {precision!r} call qa_lib.training.reset_accelerator() first "
                "(or restart the kernel)"
            )
    return Accelerator(mixed_precision=precision)


def reset_accelerator() -> None:
    """Forget the process's Accelerate state so that another precision can be chosen."""
    AcceleratorState._reset_state(reset_partial_state=True)


def decay_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: never on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if any(name.endswith(n) for n in NO_DECAY) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, lr: float = 5e-5, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay; the fused kernel on CUDA, the multi-tensor one on CPU."""
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        decay_parameter_groups(model, weight_decay), lr=lr, fused=fused or None, foreach=None if fused else True
    )


@dataclass
class RunningMeans:
    """Means over the epoch so far of every metric, as the assignment's progress bar shows them."""

    totals: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, values: Mapping[str, float]) -> None:
        self.count += 1
        for key, value in values.items():
            self.totals[key] = self.totals.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {key: total / max(self.count, 1) for key, total in self.totals.items()}


def fit(
    model: torch.nn.Module,
    dataset,
    batches: LengthGroupedBatches,
    collate: Callable[[list], dict],
    config: TrainConfig,
    *,
    tokenizer=None,
    optimizer_factory: Callable | None = None,
    batch_metrics: Callable[[dict, object], dict] | None = None,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    description: str = "train",
) -> dict:
    """Train ``model`` and return the history ``{"epochs": [...], "steps": [...]}``.

    ``batches`` yields lists of dataset indices (reseeded per epoch); ``collate`` turns rows into
    tensors; ``batch_metrics(batch, outputs)`` adds numbers to the progress bar; ``evaluate(model)``
    runs after each epoch; ``optimizer_factory(model, lr=...)`` replaces :func:`make_optimizer`.
    With ``output_dir``, checkpoints are written there at each epoch end and every
    ``config.save_every_steps`` optimizer steps, and ``resume=True`` continues from the newest.
    """
    accelerator = get_accelerator(config.mixed_precision)
    model.to(accelerator.device)  # before the optimizer, so that make_optimizer picks the fused CUDA kernel
    if optimizer_factory is None:
        optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    else:  # the student's make_optimizer(model, lr)
        optimizer = optimizer_factory(model, lr=config.learning_rate)
    steps_per_epoch = -(-len(batches) // config.gradient_accumulation_steps)
    total_steps = min(steps_per_epoch * config.epochs, config.max_steps or float("inf"))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    history, progress = {"epochs": [], "steps": []}, {"step": 0, "epoch": 0, "batches_done": 0}
    checkpoint = latest_checkpoint(output_dir) if (resume and output_dir) else None
    if checkpoint is not None:
        progress = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        history = progress.pop("history")
        if accelerator.scaler is not None and "scaler" in progress:
            accelerator.scaler.load_state_dict(progress.pop("scaler"))
        log.info("resumed from %s at step %d", checkpoint, progress["step"])

    def save(epoch: int, batches_done: int) -> None:
        state = {"step": progress["step"], "epoch": epoch, "batches_done": batches_done, "history": history}
        if accelerator.scaler is not None:  # fp16 loss scale
            state["scaler"] = accelerator.scaler.state_dict()
        folder = Path(output_dir) / f"{CHECKPOINT_PREFIX}{progress['step']}"
        save_checkpoint(folder, accelerator.unwrap_model(model), tokenizer, optimizer, scheduler, state)

    first_epoch = progress["epoch"]
    for epoch in range(first_epoch, config.epochs):
        batches.set_epoch(epoch)
        epoch_batches = list(batches)
        skip = progress["batches_done"] if epoch == progress["epoch"] else 0
        # Its own generator: creating a loader must not consume the global RNG that dropout uses,
        # or a resumed run would drift from an uninterrupted one.
        generator = torch.Generator().manual_seed(config.seed + epoch)
        loader = DataLoader(dataset, batch_sampler=epoch_batches[skip:], collate_fn=collate, generator=generator)
        means, seen, rate, started = RunningMeans(), 0, 0.0, time.perf_counter()
        bar = progress_bar(loader, len(epoch_batches) - skip, f"{description} epoch {epoch + 1}/{config.epochs}")
        model.train()
        finished = len(epoch_batches)
        for index, batch in enumerate(bar, start=skip):
            batch = {key: value.to(accelerator.device) for key, value in batch.items()}
            outputs = model(**batch)
            accelerator.backward(outputs.loss / config.gradient_accumulation_steps)
            metrics = {"loss": outputs.loss.item(), **(batch_metrics(batch, outputs) if batch_metrics else {})}
            means.add(metrics)
            seen += len(batch["input_ids"])
            if (index + 1) % config.gradient_accumulation_steps == 0 or index + 1 == len(epoch_batches):
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                progress["step"] += 1
                history["steps"].append(
                    {"step": progress["step"], "loss": metrics["loss"], "lr": scheduler.get_last_lr()[0]}
                )
                if output_dir and config.save_every_steps and progress["step"] % config.save_every_steps == 0:
                    save(epoch, index + 1)
            rate = seen / (time.perf_counter() - started)
            postfix = {**{k: f"{v:.3f}" for k, v in means.means().items()}, "samples/s": f"{rate:.1f}"}
            bar.set_postfix(postfix, refresh=False)  # drawn at the bar's own pace, not at every batch
            if config.max_steps and progress["step"] >= config.max_steps:
                finished = index + 1
                break
        record = {"epoch": epoch + 1, **means.means(), "lr": scheduler.get_last_lr()[0], "samples_per_s": rate}
        record["seconds"] = time.perf_counter() - started
        if evaluate is not None:
            record.update(evaluate(accelerator.unwrap_model(model)))
        history["epochs"].append(record)
        progress["batches_done"] = 0
        if epoch == first_epoch:  # the table's header once per run
            log.info(epoch_header(record))
        log.info(epoch_row(record))
        complete = finished == len(epoch_batches)
        if output_dir:
            save(epoch + 1, 0) if complete else save(epoch, finished)
        if not complete or (config.max_steps and progress["step"] >= config.max_steps):
            break
    if output_dir:
        Path(output_dir, "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    return history


def qa_batch_metrics(
    argmax_positions: Callable = decoding.argmax_positions, span_accuracy: Callable = decoding.span_accuracy
):
    """Start/end accuracy of the independent argmax, computed with the given (student's) functions."""

    def metrics(batch: dict, outputs) -> dict:
        starts, ends = argmax_positions(outputs.start_logits.detach(), outputs.end_logits.detach())
        return {
            "start_acc": float(span_accuracy(starts, batch["start_positions"])),
            "end_acc": float(span_accuracy(ends, batch["end_positions"])),
        }

    return metrics


def qa_evaluator(
    tokenizer, examples: Sequence[QAExample], config: TrainConfig, references: Mapping[str, Sequence[str]] | None = None
) -> Callable[[torch.nn.Module], dict]:
    """EM/F1 with the official metric over windowed n-best predictions."""
    references = references or references_of(examples)
    features = prepare_eval_features(tokenizer, examples, config.max_length, config.doc_stride)

    def evaluate(model) -> dict:
        predictions, _ = predict_features(
            model, examples, features, config.max_answer_length, config.n_best, config.eval_batch_size
        )
        scores = corpus_scores(references, predictions)
        return {"em": scores["EM"], "f1": scores["F1"]}

    return evaluate


def train_qa(
    model,
    tokenizer,
    train_examples: Sequence[QAExample],
    config: TrainConfig,
    *,
    eval_examples: Sequence[QAExample] | None = None,
    references: Mapping[str, Sequence[str]] | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    optimizer_factory: Callable | None = None,
    argmax_positions: Callable = decoding.argmax_positions,
    span_accuracy: Callable = decoding.span_accuracy,
) -> dict:
    """Fine-tune ``model`` for extractive QA on windowed features; returns the history.

    The notebook passes the student's ``optimizer_factory``, ``argmax_positions`` and
    ``span_accuracy``, so the progress bar shows accuracies computed by the student's own code.
    """
    same_seeds(config.seed)
    features = prepare_train_features(tokenizer, train_examples, config.max_length, config.doc_stride)
    if config.answerless_windows < 1.0:
        windows = len(features["input_ids"])
        features, dropped = keep_answerless_windows(features, config.answerless_windows, config.seed)
        log.info(
            "training on %d of %d windows: dropped %d without the answer (answerless_windows=%g)",
            windows - dropped, windows, dropped, config.answerless_windows,
        )  # fmt: skip
    dataset = WindowDataset(features)
    batches = LengthGroupedBatches(
        dataset.lengths(), config.batch_size, config.seed, group=50 if config.group_by_length else 1
    )
    evaluate = qa_evaluator(tokenizer, eval_examples, config, references) if eval_examples else None
    history = fit(
        model,
        dataset,
        batches,
        lambda rows: pad_batch(rows, tokenizer.pad_token_id),
        config,
        tokenizer=tokenizer,
        optimizer_factory=optimizer_factory,
        batch_metrics=qa_batch_metrics(argmax_positions, span_accuracy),
        evaluate=evaluate,
        output_dir=output_dir,
        resume=resume,
    )
    history["config"] = asdict(config)
    return history
