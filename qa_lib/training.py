"""The training loop: Accelerate mixed precision, AdamW, warmup, accumulation, checkpoints.

Taught in notebook 1, section 3 ("fine-tune with Accelerate and AMP"). The loop is written out
on purpose (no ``Trainer``): every step the assignment teaches is a visible line of :func:`fit`.

One loop serves both fine-tuning for QA (:func:`train_qa`) and continued MLM pretraining
(``qa_lib.pretraining``): they differ only in a :class:`Task` (data, per-batch metrics, evaluation).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from . import decoding
from .batching import LengthGroupedBatches, WindowDataset, pad_batch
from .checkpoint import Checkpoints
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
    mixed_precision: str = "auto"  # auto: bf16 on CUDA sm_80+, fp16 on older CUDA GPUs, off on CPU and MPS
    seed: int = 0
    group_by_length: bool = True
    save_every_steps: int | None = 500
    keep_checkpoints: int | None = 2  # the newest K step-* folders are kept; None keeps all
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
    # The offline demo (tiny random BERT, synthetic data, CPU minutes): the assignment at a quarter of its scale,
    # with what a BERT trained from scratch needs to learn that fast (bench/RESULTS.md, "Demo tuning log").
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
        answerless_windows=0.0,  # with them, a BERT from scratch learns to answer [CLS] everywhere
        # initializer_range: BERT's 0.02 leaves attention near uniform; no dropout: no pretraining to protect
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


# Ampere (sm_80) is the first NVIDIA generation with bf16 tensor cores. torch.cuda.is_bf16_supported() also
# says yes on a T4 (sm_75), where bf16 is emulated and slower than fp32, so the capability decides instead.
NATIVE_BF16_CAPABILITY = (8, 0)


def detect_device() -> tuple[str, tuple[int, int] | None]:
    """The device Accelerate trains on: ``("cuda", compute capability)``, ``("mps", None)`` or ``("cpu", None)``."""
    if torch.cuda.is_available():
        return "cuda", tuple(torch.cuda.get_device_capability())
    if torch.backends.mps.is_available():
        return "mps", None
    return "cpu", None


def auto_precision(device: str, capability: tuple[int, int] | None) -> str:
    """What ``auto`` means on a device.

    - CUDA sm_80+ (A100, L4, H100): bf16, native there, and it needs no loss scaling.
    - older CUDA (Colab's T4 sm_75, V100 sm_70): fp16 with loss scaling; bf16 would be emulated.
    - Apple MPS: off. fp16 there needs loss scaling on MPS (PyTorch 2.8+) and bf16 a recent macOS, and
      BERT-base fine-tuning fits in fp32; ask for ``fp16`` or ``bf16`` explicitly to try them.
    - CPU: off. CPU autocast to bf16 is slower than fp32 on most CPUs without AMX.
    """
    if device == "cuda":
        return "bf16" if capability is not None and capability >= NATIVE_BF16_CAPABILITY else "fp16"
    return "no"


def resolve_mixed_precision(requested: str) -> str:
    """The precision to train with: ``auto`` is resolved by :func:`auto_precision` for this machine's device.

    fp16 on CPU would silently run in fp32, so it is refused rather than pretended; bf16 on a CUDA GPU
    older than Ampere runs, emulated, with a warning."""
    if requested not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {requested!r}")
    device, capability = detect_device()
    if requested == "auto":
        return auto_precision(device, capability)
    if requested == "fp16" and device == "cpu":
        raise ValueError("fp16 needs a GPU, CUDA or MPS (on CPU it would silently run in fp32); use 'no' or 'bf16'")
    if requested == "bf16" and device == "cuda" and capability < NATIVE_BF16_CAPABILITY:
        log.warning(
            "bf16 on a CUDA GPU of compute capability %s is emulated (slower than fp32); fp16 is native", capability
        )
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
    # split_batches: fit() splits each batch across processes itself, so the scheduler must advance once per
    # optimizer step; without it Accelerate advances it once per process (it assumes one batch per process).
    return Accelerator(mixed_precision=precision, dataloader_config=DataLoaderConfiguration(split_batches=True))


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


class EpochMeter:
    """Means over the epoch so far of every batch metric, and samples per second, as the assignment's
    progress bar shows them."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.batches = self.samples = 0
        self.started = time.perf_counter()

    def add(self, metrics: Mapping[str, float], samples: int) -> None:
        self.batches += 1
        self.samples += samples
        for key, value in metrics.items():
            self.totals[key] = self.totals.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {key: total / max(self.batches, 1) for key, total in self.totals.items()}

    def samples_per_s(self) -> float:
        return self.samples / (time.perf_counter() - self.started)

    def postfix(self) -> dict[str, str]:
        return {
            **{key: f"{value:.3f}" for key, value in self.means().items()},
            "samples/s": f"{self.samples_per_s():.1f}",
        }

    def record(self, epoch: int, lr: float) -> dict:
        """The epoch's row of the history: its 1-based number, the means, the last step's rate, the speed."""
        seconds = time.perf_counter() - self.started
        return {
            "epoch": epoch + 1,
            **self.means(),
            "lr": lr,
            "samples_per_s": self.samples / seconds,
            "seconds": seconds,
        }


def accumulation_group_size(index: int, batches_in_epoch: int, accumulation: int) -> int:
    """How many micro-batches share an optimizer step with batch ``index`` (0-based within its epoch).

    Groups start at multiples of ``accumulation``; the last group of an epoch may be shorter, and
    its gradient is the mean over the batches it holds, not over ``accumulation``."""
    group_start = index - index % accumulation
    return min(accumulation, batches_in_epoch - group_start)


def process_rows(batch_size: int, rank: int, processes: int) -> tuple[list[int], float]:
    """The rows of a batch that process ``rank`` trains on, and the weight of its mean loss.

    Every process takes every ``processes``-th row; weighting each process's mean loss by its share
    makes the mean that distributed training takes over processes the mean over the whole batch, as
    in one process. A process left without rows repeats the first with weight 0: all must take part
    in every gradient exchange."""
    rows = list(range(rank, batch_size, processes))
    if not rows:
        return [0], 0.0
    return rows, len(rows) * processes / batch_size


def process_collate(collate: Callable[[list], dict], seed: int, epoch: int, first: int, rank: int, processes: int):
    """``collate`` for one process of several: the whole batch, padded as one process pads it, then its rows.

    The random state is reseeded from (seed, epoch, batch, rank) before each batch, so the masks that a
    collator draws and the dropout of the step that follows are the same again in a resumed run."""
    batch_numbers = itertools.count(first)

    def collate_rows(rows: list) -> dict:
        torch.manual_seed(hash((seed, epoch, next(batch_numbers), rank)) % 2**63)
        take, _ = process_rows(len(rows), rank, processes)
        return {key: value[take] for key, value in collate(rows).items()}

    return collate_rows


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after optimizer step ``step``; ``checkpoint`` is what was saved then (or None)."""

    def __init__(self, step: int, checkpoint: Path | None):
        saved = f"; checkpoint saved to {checkpoint}" if checkpoint else "; no output_dir, nothing saved"
        super().__init__(f"training interrupted after step {step}{saved}")
        self.step, self.checkpoint = step, checkpoint


class StopAtStepEnd:
    """While active, Ctrl-C (SIGINT) asks training to stop at the end of the current optimizer step.

    A KeyboardInterrupt raised in the middle of ``optimizer.step()`` could leave half the parameters
    updated, and a checkpoint saved then would not match any step; a second Ctrl-C stops at once.
    Installed only where Python's own handler is active (the main thread; Jupyter kernels too)."""

    # A terminal's Ctrl-C reaches every process of a launch, and torchrun forwards it once more:
    # a second signal this soon after the first is the same key press.
    SAME_PRESS_SECONDS = 1.0

    def __init__(self):
        self.requested = False
        self.requested_at = 0.0
        self.previous = None

    def __enter__(self) -> StopAtStepEnd:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self.request)
        return self

    def request(self, signum, frame) -> None:
        if self.requested and time.monotonic() - self.requested_at > self.SAME_PRESS_SECONDS:
            raise KeyboardInterrupt
        if self.requested:
            return
        self.requested, self.requested_at = True, time.monotonic()
        log.warning("Ctrl-C: stopping after this optimizer step, with a checkpoint if there is an output_dir")

    def __exit__(self, *exception) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def requested_in_any_process(self, accelerator: Accelerator) -> bool:
        """Whether Ctrl-C reached any process: all must stop after the same step."""
        if accelerator.num_processes == 1:
            return self.requested
        pressed = torch.tensor(float(self.requested), device=accelerator.device)
        return accelerator.reduce(pressed, "sum").item() > 0


@dataclass
class Task:
    """What differs between fine-tuning for QA (:func:`train_qa`) and MLM pretraining (``qa_lib.pretraining``):
    everything :func:`fit` needs besides the model and the :class:`TrainConfig`."""

    dataset: Sequence  # rows, indexed by the batches
    batches: LengthGroupedBatches  # lists of dataset indices, reshuffled per epoch by set_epoch
    collate: Callable[[list], dict]  # rows -> tensors, labels included
    tokenizer: object = None  # saved with each checkpoint
    batch_metrics: Callable[[dict, object], dict] | None = None  # (batch, outputs) -> numbers for the progress bar
    evaluate: Callable[[torch.nn.Module], dict] | None = None  # model -> scores, after each epoch
    description: str = "train"  # the progress bar's title


def training_batches(lengths: Sequence[int], config: TrainConfig) -> LengthGroupedBatches:
    """Shuffled batches of rows of similar length (``config.group_by_length``), reshuffled each epoch."""
    return LengthGroupedBatches(lengths, config.batch_size, config.seed, group=50 if config.group_by_length else 1)


def epoch_loader(
    task: Task, config: TrainConfig, epoch: int, skip: int, accelerator: Accelerator
) -> tuple[list[list[int]], DataLoader]:
    """The epoch's batches, and a DataLoader over them after the first ``skip`` (trained on before a resume).

    With several processes, each loads the whole batch and keeps its own rows (:func:`process_collate`)."""
    task.batches.set_epoch(epoch)
    batches = list(task.batches)
    collate = task.collate
    if accelerator.num_processes > 1:
        rank, processes = accelerator.process_index, accelerator.num_processes
        collate = process_collate(task.collate, config.seed, epoch, skip, rank, processes)
    # Its own generator: creating a loader must not consume the global RNG that dropout uses,
    # or a resumed run would drift from an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed + epoch)
    return batches, DataLoader(task.dataset, batch_sampler=batches[skip:], collate_fn=collate, generator=generator)


def log_epoch(record: dict, with_header: bool) -> None:
    """The epoch's row of the results table (``qa_lib.reporting``), under the header on a run's first epoch."""
    if with_header:
        log.info(epoch_header(record))
    log.info(epoch_row(record))


def fit(
    model: torch.nn.Module,
    task: Task,
    config: TrainConfig,
    *,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    optimizer_factory: Callable | None = None,
) -> dict:
    """Train ``model`` on ``task`` and return the history ``{"epochs": [...], "steps": [...]}``.

    Taught in notebook 1, section 3. ``optimizer_factory(model, lr=...)`` (the student's) replaces
    :func:`make_optimizer`. With ``output_dir``, a checkpoint is written at each epoch end and every
    ``config.save_every_steps`` optimizer steps (:class:`qa_lib.checkpoint.Checkpoints`), and ``resume=True``
    continues from the newest intact one, as an uninterrupted run would have. Each step's history records the
    learning rate that step used and the mean loss of its accumulation group. Ctrl-C stops at the end of a
    step, saves a checkpoint and raises :class:`TrainingInterrupted`.

    Under ``accelerate launch`` with several processes, each process trains on its share of every batch
    (:func:`process_rows`; DDP averages the gradients), and only the main process writes checkpoints, shows
    progress, logs and evaluates (so every evaluation window counts once).
    """
    accelerator = get_accelerator(config.mixed_precision)
    main, rank, processes = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    model.to(accelerator.device)  # before the optimizer, so that make_optimizer picks the fused CUDA kernel
    optimizer_factory = optimizer_factory or partial(make_optimizer, weight_decay=config.weight_decay)
    optimizer = optimizer_factory(model, lr=config.learning_rate)
    accumulation = config.gradient_accumulation_steps
    total_steps = min(-(-len(task.batches) // accumulation) * config.epochs, config.max_steps or float("inf"))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    checkpoints = Checkpoints(
        output_dir, config.keep_checkpoints, accelerator, model, optimizer, scheduler, task.tokenizer
    )

    history, step, first_epoch, skip = {"epochs": [], "steps": []}, 0, 0, 0
    if resume and (resumed := checkpoints.resume()):
        folder, state = resumed
        history, step, first_epoch, skip = state["history"], state["step"], state["epoch"], state["batches_done"]
        if main:
            log.info("resumed from %s at step %d", folder, step)

    with StopAtStepEnd() as ctrl_c:
        for epoch in range(first_epoch, config.epochs):
            batches, loader = epoch_loader(task, config, epoch, skip, accelerator)
            title = f"{task.description} epoch {epoch + 1}/{config.epochs}"
            bar = progress_bar(loader, len(batches) - skip, title, disable=not main)
            meter, group_losses, finished = EpochMeter(), [], len(batches)
            model.train()
            for index, batch in enumerate(bar, start=skip):
                batch = {key: value.to(accelerator.device) for key, value in batch.items()}
                outputs = model(**batch)
                # The gradient of a step is the mean over its group, however short the epoch's last group is;
                # each process's mean loss is weighted by its share of the batch's rows.
                group_size = accumulation_group_size(index, len(batches), accumulation)
                _, weight = process_rows(len(batches[index]), rank, processes)
                accelerator.backward(outputs.loss * weight / group_size)  # scales the loss for fp16
                batch_loss = accelerator.reduce(outputs.loss.detach() * weight, "mean").item()  # the whole batch's
                metrics = task.batch_metrics(batch, outputs) if task.batch_metrics else {}
                meter.add({"loss": batch_loss, **metrics}, samples=len(batch["input_ids"]))
                group_losses.append(batch_loss)

                if len(group_losses) == group_size:  # skip is a group boundary: checkpoints are saved at steps
                    used_lr = scheduler.get_last_lr()[0]  # after scheduler.step() it is the next step's rate
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    history["steps"].append({"step": step, "loss": sum(group_losses) / group_size, "lr": used_lr})
                    group_losses, saved = [], None
                    if config.save_every_steps and step % config.save_every_steps == 0:
                        saved = checkpoints.save(step, epoch, index + 1, history)
                    if ctrl_c.requested_in_any_process(accelerator):
                        raise TrainingInterrupted(step, saved or checkpoints.save(step, epoch, index + 1, history))

                bar.set_postfix(meter.postfix(), refresh=False)  # drawn at the bar's own pace
                if step >= total_steps:  # config.max_steps reached (or the last step of the last epoch)
                    finished = index + 1
                    break

            last_lr = history["steps"][-1]["lr"] if history["steps"] else scheduler.get_last_lr()[0]
            record = meter.record(epoch, last_lr)
            if task.evaluate is not None and main:
                record.update(task.evaluate(accelerator.unwrap_model(model)))
            accelerator.wait_for_everyone()
            history["epochs"].append(record)
            if main:
                log_epoch(record, with_header=epoch == first_epoch)
            complete = finished == len(batches)
            resume_at = (epoch + 1, 0) if complete else (epoch, finished)  # (epoch, batches done)
            saved = checkpoints.save(step, *resume_at, history)
            if ctrl_c.requested_in_any_process(accelerator):  # pressed during the evaluation
                raise TrainingInterrupted(step, saved)
            if step >= total_steps:
                break
            skip = 0
    checkpoints.write_history(history)
    return history


def qa_accuracies(
    argmax_positions: Callable = decoding.argmax_positions, span_accuracy: Callable = decoding.span_accuracy
):
    """The QA task's ``batch_metrics``: start/end accuracy of the independent argmax, computed with the given
    (the student's) functions."""

    def accuracies(batch: dict, outputs) -> dict:
        starts, ends = argmax_positions(outputs.start_logits.detach(), outputs.end_logits.detach())
        return {
            "start_acc": float(span_accuracy(starts, batch["start_positions"])),
            "end_acc": float(span_accuracy(ends, batch["end_positions"])),
        }

    return accuracies


def qa_scores(tokenizer, examples: Sequence[QAExample], config: TrainConfig) -> Callable[[torch.nn.Module], dict]:
    """The QA task's ``evaluate``: EM/F1 with the official metric over windowed n-best predictions, against every
    reference text of the examples (:func:`qa_lib.data.references_of`)."""
    references = references_of(examples)
    features = prepare_eval_features(tokenizer, examples, config.max_length, config.doc_stride)

    def scores(model) -> dict:
        predictions, _ = predict_features(
            model, examples, features, config.max_answer_length, config.n_best, config.eval_batch_size
        )
        official = corpus_scores(references, predictions)
        return {"em": official["EM"], "f1": official["F1"]}

    return scores


def train_qa(
    model,
    tokenizer,
    train_examples: Sequence[QAExample],
    config: TrainConfig,
    *,
    eval_examples: Sequence[QAExample] | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    optimizer_factory: Callable | None = None,
    argmax_positions: Callable = decoding.argmax_positions,
    span_accuracy: Callable = decoding.span_accuracy,
) -> dict:
    """Fine-tune ``model`` for extractive QA on windowed features with :func:`fit`; returns the history.

    The notebook (1, section 3) passes the student's ``optimizer_factory``, ``argmax_positions`` and
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
    task = Task(
        dataset,
        training_batches(dataset.lengths(), config),
        lambda rows: pad_batch(rows, tokenizer.pad_token_id),
        tokenizer,
        batch_metrics=qa_accuracies(argmax_positions, span_accuracy),
        evaluate=qa_scores(tokenizer, eval_examples, config) if eval_examples else None,
    )
    history = fit(model, task, config, output_dir=output_dir, resume=resume, optimizer_factory=optimizer_factory)
    history["config"] = asdict(config)
    return history
