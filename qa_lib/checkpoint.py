"""Checkpoints that survive a Colab disconnect, stored without pickles.

Taught in notebook 1, section 3 (training on Colab: save to Drive, resume after a disconnect).

A checkpoint folder holds the model and tokenizer (``save_pretrained``, safetensors), the
optimizer's tensors (safetensors) and its hyper-parameters (JSON), the scheduler state, the
random number generator states and the step counter (JSON). ``torch.load`` is never called, so
loading a checkpoint cannot execute code hidden in a pickle.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .models import no_progress_bars

CHECKPOINT_PREFIX = "step-"


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
    """Save everything needed to continue training; ``progress`` holds step/epoch counters (JSON)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    opt_tensors, opt_rest = optimizer_tensors(optimizer)
    save_file(opt_tensors, folder / "optimizer.safetensors")
    rng_tensors, rng_rest = rng_state()
    save_file(rng_tensors, folder / "rng.safetensors")
    state = {"optimizer": opt_rest, "scheduler": scheduler.state_dict(), "rng": rng_rest, "progress": progress}
    # Written last: a folder without trainer_state.json is an interrupted save and is ignored.
    (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    return folder


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


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir``, if any."""
    folders = [
        f
        for f in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if (f / "trainer_state.json").is_file() and f.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(folders, key=lambda f: int(f.name[len(CHECKPOINT_PREFIX) :]), default=None)
