"""The README's real run, rehearsed at real size on the CPU: a random model with bert-base-chinese's shape
and vocabulary, the colab-t4 preset's 512-token windows, a stand-in training split (no hub, no GPU).

What is reduced, so that the module takes minutes: 1-2 optimizer steps (``--max-steps``), 2 windows per
step without accumulation instead of 8 x 4 (``--batch-size 2 --gradient-accumulation-steps 1``), 24 training
questions from the trial split and 10 dev questions. Window length, stride, model size, learning-rate
schedule, checkpoints and evaluation are the preset's. The full step's cost is in bench/rehearsal.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qa_lib.checkpoint import CHECKPOINT_PREFIX
from qa_lib.models import load_qa_model, load_tokenizer
from qa_lib.predict import answer
from qa_lib.rehearsal import random_base_model_folder, stand_in_cmrc

pytestmark = pytest.mark.real_size
ROOT = Path(__file__).resolve().parents[1]
TRAIN_QUESTIONS, DEV_QUESTIONS = 24, 10
REDUCED_STEP = ["--batch-size", "2", "--gradient-accumulation-steps", "1"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, vocab_dir) -> Path:
    return random_base_model_folder(tmp_path_factory.mktemp("bert-base-random"), vocab_dir)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory, cmrc_dir) -> Path:
    return stand_in_cmrc(tmp_path_factory.mktemp("cmrc2018"), cmrc_dir, TRAIN_QUESTIONS, DEV_QUESTIONS)


def qa_kit(*args: str, cmrc: Path) -> subprocess.CompletedProcess:
    """``qa-kit ARGS`` (the console script's entry point) with QA_KIT_CMRC_DIR pointing at the stand-in."""
    env = {**os.environ, "QA_KIT_CMRC_DIR": str(cmrc)}
    run = subprocess.run([sys.executable, "-m", "qa_lib.cli", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_model, stand_in) -> tuple[Path, str]:
    """The README's Colab command, model folder and step cap aside: one step with a checkpoint, then
    ``--resume`` to step 2. Returns the output folder and the resumed run's log."""
    output = tmp_path_factory.mktemp("colab-run")
    command = ["train", "--preset", "colab-t4", "--model", str(base_model), "--train", "train", "--eval", "dev"]
    command += ["--output-dir", str(output), *REDUCED_STEP]
    qa_kit(*command, "--max-steps", "1", cmrc=stand_in)
    assert (output / f"{CHECKPOINT_PREFIX}1").is_dir()
    resumed = qa_kit(*command, "--max-steps", "2", "--resume", cmrc=stand_in)
    return output, resumed.stderr


def test_colab_command_trains_checkpoints_and_resumes_at_real_size(trained):
    output, log = trained
    history = json.loads((output / "history.json").read_text(encoding="utf-8"))
    assert [step["step"] for step in history["steps"]] == [1, 2]
    assert "resumed from" in log and "at step 1" in log
    assert (output / f"{CHECKPOINT_PREFIX}2").is_dir() and (output / "final" / "model.safetensors").is_file()
    assert {"em", "f1"} <= set(history["epochs"][-1])  # the dev subset was evaluated


def test_predict_command_answers_every_dev_question(trained, stand_in, tmp_path):
    output, _ = trained
    qa_kit("predict", "--model", str(output / "final"), "--data", "dev", "--output-dir", str(tmp_path), cmrc=stand_in)
    predictions = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
    assert len(predictions) == DEV_QUESTIONS


def test_answer_reads_a_5000_character_context(trained, cmrc_dir):
    output, _ = trained
    squad = json.loads((cmrc_dir / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    contexts = (paragraph["context"] for article in squad["data"] for paragraph in article["paragraphs"])
    context = ""
    while len(context) < 5000:
        context += next(contexts)
    context = context[:5000]
    tokenizer = load_tokenizer(output / "final")
    result = answer("这段文字讲的是什么？", context, load_qa_model(output / "final", tokenizer), tokenizer)
    assert result["text"] and result["text"] == context[result["start"] : result["end"]]


def test_notebook_full_run_path_rehearsed(base_model, stand_in, tmp_path):
    """Notebook 1 headless with FULL_RUN forced (qa_lib.rehearsal's variables): the cells a GPU user runs."""
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "solutions" / "bert_qa" / "01_finetune_qa.ipynb", as_version=4)
    env = {
        **os.environ,
        "QA_KIT_CMRC_DIR": str(stand_in),
        "QA_KIT_FULL_RUN": "1",
        "QA_KIT_REHEARSAL_MODEL": str(base_model),
        "QA_KIT_REHEARSAL_MAX_STEPS": "1",
        "QA_KIT_REHEARSAL_BATCH_SIZE": "2",
    }
    env.pop("NBGRADER_EXECUTION", None)
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources)
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "colab-t4" in printed and f"model={base_model}, max_length=512" in printed
    work = tmp_path / "runs" / "bert_qa"
    assert (work / "checkpoints" / f"{CHECKPOINT_PREFIX}1").is_dir()
    assert (work / "final" / "model.safetensors").is_file()
