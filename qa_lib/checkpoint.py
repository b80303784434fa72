"""Checkpoints that survive a Colab disconnect, stored without pickles.

Taught in notebook 1, section 3 (training on Colab: save to Drive, resume after a disconnect).

A checkpoint folder holds the model and tokenizer (``save_pretrained``, safetensors), the
optimizer's tensors (safetensors) and its hyper-parameters (JSON), the scheduler state, the
random number generator states and the step counter (JSON). ``torch.load`` is never called, so
loading a checkpoint cannot execute code hidden in a pickle.

Crash safety: a checkpoint is written into a hidden ``.incomplete-step-N`` folder and renamed to
``step-N`` only once every file and ``manifest.json`` (sizes, sha256, versions) are on disk, so a
killed process or a full Drive leaves no half-written ``step-N``. Resuming checks each candidate
against its manifest, newest first, and takes the newest that passes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from . import __version__
from .models import no_progress_bars

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
INCOMPLETE_PREFIX = ".incomplete-"  # a save in progress, or one that a crash interrupted
MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")


class CheckpointError(RuntimeError):
    """Resuming was asked for, but no checkpoint in the folder is complete and intact."""


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state into flat named tensors and a JSON-safe remainder."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    return tensors, {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def restore_rng(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *others = rest["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *others))


def save_checkpoint(folder: str | os.PathLike, model, tokenizer, optimizer, scheduler, progress: dict) -> Path:
    """Save everything needed to continue training; ``progress`` holds step/epoch counters (JSON).

    The files go to a hidden temporary folder, renamed to ``folder`` once complete (see the module)."""
    folder = Path(folder)
    partial = folder.with_name(INCOMPLETE_PREFIX + folder.name)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with no_progress_bars():
        model.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    opt_tensors, opt_rest = optimizer_tensors(optimizer)
    save_file(opt_tensors, partial / "optimizer.safetensors")
    rng_tensors, rng_rest = rng_state()
    save_file(rng_tensors, partial / "rng.safetensors")
    state = {"optimizer": opt_rest, "scheduler": scheduler.state_dict(), "rng": rng_rest, "progress": progress}
    (partial / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    write_manifest(partial, progress.get("step"))
    move_into_place(partial, folder)
    return folder


def write_manifest(folder: Path, step: int | None) -> None:
    """List every file with its size and sha256, flushed to disk first: the manifest vouches for them."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    manifest = {
        "step": step,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "qa_lib": __version__},
        "files": files,
    }
    with open(folder / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def move_into_place(partial: Path, folder: Path) -> None:
    """Rename the finished ``partial`` to ``folder``; an older save of the same step is replaced."""
    if folder.exists():  # the epoch-end save of a step that save_every_steps saved already
        replaced = folder.with_name(f"{INCOMPLETE_PREFIX}replaced-{folder.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        folder.rename(replaced)
        partial.rename(folder)
        shutil.rmtree(replaced)
    else:
        partial.rename(folder)


def load_checkpoint(folder: str | os.PathLike, model, optimizer, scheduler) -> dict:
    """Restore model weights, optimizer, scheduler and RNG states in place; return ``progress``."""
    folder = Path(folder)
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    weights = load_file(folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tolerated = shared_parameter_names(model)
    if unexpected or any(not name.endswith("position_ids") and name not in tolerated for name in missing):
        raise RuntimeError(
            f"{folder}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
        )
    restore_optimizer(optimizer, load_file(folder / "optimizer.safetensors"), state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(load_file(folder / "rng.safetensors"), state["rng"])
    return state["progress"]


def shared_parameter_names(model) -> set[str]:
    """Names of tensors stored once for several names (tied embeddings): saved under one name only."""
    names_by_storage: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        names_by_storage.setdefault(tensor.data_ptr(), []).append(name)
    return {name for names in names_by_storage.values() if len(names) > 1 for name in names}


def checkpoint_step(folder: Path) -> int | None:
    """N for ``step-N`` and ``.incomplete-step-N``; None for other names."""
    name = folder.name.removeprefix(INCOMPLETE_PREFIX)
    number = name.removeprefix(CHECKPOINT_PREFIX)
    return int(number) if name.startswith(CHECKPOINT_PREFIX) and number.isdigit() else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when every file matches its manifest."""
    if folder.name.startswith(INCOMPLETE_PREFIX):
        return "interrupted while saving"
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST}: saved by a qa_lib older than manifests, or not by qa_lib"
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MANIFEST}: unreadable, {type(error).__name__}"
    for name in REQUIRED_FILES:
        if name not in expected:
            return f"{name}: not in {MANIFEST}"
    for name, (size, sha256) in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name}: missing"
        actual = path.stat().st_size
        if actual < size:
            return f"{name}: truncated, {actual} of {size} bytes"
        if actual != size:
            return f"{name}: {actual} bytes, {size} in {MANIFEST}"
        if sha256_of(path) != sha256:
            return f"{name}: corrupted, its sha256 differs from {MANIFEST}"
    return None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """``step-N`` and ``.incomplete-step-N`` folders under ``output_dir``, newest step first."""
    folders = [f for f in Path(output_dir).glob("*") if f.is_dir() and checkpoint_step(f) is not None]
    return sorted(folders, key=lambda f: (checkpoint_step(f), not f.name.startswith(INCOMPLETE_PREFIX)), reverse=True)


def resumable_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete and intact checkpoint under ``output_dir``; None when there is none at all.

    Logs in one line which newer ones it skipped and why; raises :class:`CheckpointError` when
    checkpoints exist but none is usable."""
    skipped = []
    for folder in checkpoint_folders(output_dir) if Path(output_dir).is_dir() else []:
        problem = checkpoint_problem(folder)
        if problem is None:
            if skipped:
                log.warning("resuming from %s; skipped %s", folder.name, "; ".join(f"{n} ({p})" for n, p in skipped))
            return folder
        skipped.append((folder.name.removeprefix(INCOMPLETE_PREFIX), problem))
    if skipped:
        reasons = "; ".join(f"{name} is unusable ({problem})" for name, problem in skipped)
        raise CheckpointError(f"no usable checkpoint in {output_dir}: {reasons}; train without resume to start afresh")
    return None


def prune_checkpoints(output_dir: str | os.PathLike, current_step: int, keep: int | None) -> None:
    """Keep the ``keep`` newest checkpoints up to ``current_step`` (None keeps all).

    Checkpoints of later steps belong to a run that was resumed from an earlier step, and leftovers
    of interrupted saves are unusable: both are removed too."""
    if keep is None:
        return
    kept = 0
    for folder in checkpoint_folders(output_dir):
        if folder.name.startswith(INCOMPLETE_PREFIX) or checkpoint_step(folder) > current_step or kept >= keep:
            shutil.rmtree(folder)
        else:
            kept += 1


@dataclass
class Checkpoints:
    """The checkpoints of one ``training.fit`` run: saved into ``output_dir`` (nowhere without one), the newest
    ``keep`` kept, the newest intact one resumed from.

    The objects are the accelerator's prepared ones. Under several processes only the main process writes (the
    weights and optimizer states are the same in all of them), and all wait until it has."""

    output_dir: str | os.PathLike | None
    keep: int | None
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: object = None

    def save(self, step: int, epoch: int, batches_done: int, history: dict) -> Path | None:
        """Save the run after optimizer step ``step``, to resume at batch ``batches_done`` of ``epoch``."""
        if not self.output_dir:
            return None
        state = {"step": step, "epoch": epoch, "batches_done": batches_done, "history": history}
        if self.accelerator.scaler is not None:  # the fp16 loss scale
            state["scaler"] = self.accelerator.scaler.state_dict()
        folder = Path(self.output_dir) / f"{CHECKPOINT_PREFIX}{step}"
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            save_checkpoint(folder, model, self.tokenizer, self.optimizer, self.scheduler, state)
            prune_checkpoints(self.output_dir, step, self.keep)
        self.accelerator.wait_for_everyone()
        return folder

    def resume(self) -> tuple[Path, dict] | None:
        """Restore the newest intact checkpoint into the model, optimizer, scheduler, loss scaler and random
        states; return its folder and the state :meth:`save` gave it, or None when there is none."""
        folder = resumable_checkpoint(self.output_dir) if self.output_dir else None
        if folder is None:
            return None
        model = self.accelerator.unwrap_model(self.model)
        state = load_checkpoint(folder, model, self.optimizer, self.scheduler)
        if self.accelerator.scaler is not None and "scaler" in state:
            self.accelerator.scaler.load_state_dict(state.pop("scaler"))
        return folder, state

    def write_history(self, history: dict) -> None:
        """``history.json`` next to the checkpoints, for plots of a run that has ended."""
        if self.output_dir and self.accelerator.is_main_process:
            Path(self.output_dir, "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
