"""The README's Colab run rehearsed at real size on this machine's CPU: its costs, and a T4 epoch predicted.

A random model with bert-base-chinese's shape and the real vocabulary (``qa_lib.rehearsal``), the colab-t4
preset unchanged (8 windows x 4 accumulation of 512 tokens per optimizer step), a stand-in training split
of trial questions and 10 dev questions. Runs ``qa-kit train --preset colab-t4 --max-steps N`` once and
reports seconds per optimizer step (training loop only, from the run's history), the process's peak
resident memory and the size of one checkpoint. Then the T4 prediction for one epoch of the CMRC 2018
training split: windows per question measured on the trial split (the training file is not available
offline) x the training split's 10,142 questions, divided by an ASSUMED T4 throughput (``--t4-windows-per-s``;
nothing here measures a T4).

Run from the repository root with QA_KIT_CMRC_DIR and QA_KIT_VOCAB_DIR set:
``python bench/rehearsal.py`` (about two minutes per step plus start-up on two idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CMRC_VARIABLE, DOC_STRIDE, MAX_LENGTH, VOCAB_VARIABLE, required_folder

from qa_lib.checkpoint import CHECKPOINT_PREFIX
from qa_lib.data import cmrc_file, load_squad
from qa_lib.features import prepare_train_features
from qa_lib.models import load_tokenizer
from qa_lib.rehearsal import random_base_model_folder, stand_in_cmrc
from qa_lib.training import preset

CMRC_TRAIN_QUESTIONS = 10_142  # Cui et al. 2019, the CMRC 2018 training split


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def rehearse(work: Path, cmrc: Path, vocab: Path, steps: int) -> dict:
    """One ``qa-kit train`` run of the colab-t4 preset; its step time, peak memory and checkpoint size."""
    model = random_base_model_folder(work / "model", vocab)
    stand_in = stand_in_cmrc(work / "cmrc2018", cmrc, train=40, dev=10)
    output = work / "run"
    command = [sys.executable, "-m", "qa_lib.cli", "train", "--preset", "colab-t4", "--model", str(model)]
    command += ["--train", "train", "--eval", "dev", "--max-steps", str(steps), "--output-dir", str(output)]
    started = time.perf_counter()
    subprocess.run(command, env={**os.environ, CMRC_VARIABLE: str(stand_in)}, check=True)
    history = json.loads((output / "history.json").read_text(encoding="utf-8"))
    return {
        "command_s": time.perf_counter() - started,
        "seconds_per_step": history["epochs"][0]["seconds"] / len(history["steps"]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,  # KiB on Linux
        "checkpoint_gib": folder_bytes(output / f"{CHECKPOINT_PREFIX}{steps}") / 2**30,
        "model_gib": folder_bytes(output / "final") / 2**30,
    }


def t4_epoch(cmrc: Path, vocab: Path, t4_windows_per_s: float, cpu_seconds_per_step: float) -> dict:
    """Windows and optimizer steps in one epoch of the training split, and the hours they take on each side."""
    examples, _ = load_squad(cmrc_file("trial", cmrc))
    windows_per_question = len(
        prepare_train_features(load_tokenizer(vocab), examples, MAX_LENGTH, DOC_STRIDE)["input_ids"]
    ) / len(examples)
    windows = windows_per_question * CMRC_TRAIN_QUESTIONS
    steps = windows / preset("colab-t4").effective_batch_size
    return {
        "windows_per_question": windows_per_question,
        "epoch_windows": windows,
        "epoch_steps": steps,
        "cpu_epoch_hours": steps * cpu_seconds_per_step / 3600,
        "t4_epoch_minutes": windows / t4_windows_per_s / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--t4-windows-per-s", type=float, default=18.0, help="an assumption, not a measurement")
    args = parser.parse_args()
    cmrc = required_folder(CMRC_VARIABLE, "cmrc2018_trial.json and cmrc2018_dev.json")
    vocab = required_folder(VOCAB_VARIABLE, "vocab.txt of bert-base-chinese")
    with tempfile.TemporaryDirectory(prefix="qa-kit-rehearsal-") as work:
        costs = rehearse(Path(work), cmrc, vocab, args.steps)
    epoch = t4_epoch(cmrc, vocab, args.t4_windows_per_s, costs["seconds_per_step"])
    cpu_windows_per_s = preset("colab-t4").effective_batch_size / costs["seconds_per_step"]
    print(
        f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}): {costs['seconds_per_step']:.1f} s per step "
        f"of 8 x 4 windows of 512 tokens ({cpu_windows_per_s:.2f} windows/s); "
        f"peak RSS {costs['peak_rss_gib']:.2f} GiB; "
        f"checkpoint {costs['checkpoint_gib']:.2f} GiB, final model {costs['model_gib']:.2f} GiB"
    )
    print(
        f"CMRC train epoch: {epoch['windows_per_question']:.3f} windows per question (trial) "
        f"x {CMRC_TRAIN_QUESTIONS:,} questions = {epoch['epoch_windows']:,.0f} windows "
        f"= {epoch['epoch_steps']:.0f} steps"
    )
    print(
        f"  on this CPU: {epoch['cpu_epoch_hours']:.1f} h; on a T4 at an assumed {args.t4_windows_per_s:g} windows/s "
        f"(fp16): {epoch['t4_epoch_minutes']:.0f} min ({args.t4_windows_per_s / cpu_windows_per_s:.0f}x this CPU)"
    )
    print(
        json.dumps(
            {
                **costs,
                **epoch,
                "t4_windows_per_s_assumed": args.t4_windows_per_s,
                "load_average_1min": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
