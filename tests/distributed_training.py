"""Trainings that tests/test_distributed.py runs under ``accelerate launch`` with two processes.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/distributed_training.py OUTPUT_DIR
Writes OUTPUT_DIR/{plain,straight,resumed}/history.json (plain: without dropout, for comparison
with one process; straight and resumed: with dropout, resumed from straight's step-2).
"""

import logging
import shutil
import sys
from pathlib import Path

from accelerate import PartialState
from test_training import birth_year_examples, smoke_model

from qa_lib.models import build_offline_tokenizer
from qa_lib.training import preset, train_qa

NO_DROPOUT = {**preset("smoke").model_overrides, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TRAIN_EXAMPLES, EVAL_EXAMPLES = birth_year_examples(30), birth_year_examples(12, seed=1)


def train(tokenizer, output_dir: Path, resume: bool = False, **overrides) -> None:
    config = preset("smoke", save_every_steps=2, keep_checkpoints=None, **overrides)
    model = smoke_model(tokenizer, config)
    train_qa(
        model, tokenizer, TRAIN_EXAMPLES, config, eval_examples=EVAL_EXAMPLES, output_dir=output_dir, resume=resume
    )


def main(output_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tokenizer = build_offline_tokenizer()
    train(tokenizer, output_dir / "plain", model_overrides=NO_DROPOUT)
    train(tokenizer, output_dir / "straight")
    if PartialState().is_main_process:
        shutil.copytree(output_dir / "straight" / "step-2", output_dir / "resumed" / "step-2")
    PartialState().wait_for_everyone()
    train(tokenizer, output_dir / "resumed", resume=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
