"""Training under `accelerate launch` with two CPU processes (gloo): the same steps as one process."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from distributed_training import EVAL_EXAMPLES, NO_DROPOUT, TRAIN_EXAMPLES
from test_checkpoint import start_paused_in_save
from test_training import smoke_model, squad_json

from qa_lib.cli import main
from qa_lib.training import preset, train_qa

TESTS = Path(__file__).resolve().parent


def history(folder: Path) -> dict:
    return json.loads((folder / "history.json").read_text(encoding="utf-8"))


# --multi_gpu starts the processes with torchrun and ACCELERATE_USE_CPU puts them on CPU with gloo
# (`--cpu --num_processes 2` starts one process unless MPI is installed). No GPU is used even where
# there is one: the runs are compared with CPU numbers.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
LAUNCH += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
LAUNCH_ENVIRONMENT = {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS.parent)}


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("distributed")
    run = subprocess.run(
        [*LAUNCH, str(TESTS / "distributed_training.py"), str(output_dir)],
        env={**os.environ, **LAUNCH_ENVIRONMENT},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    (output_dir / "launch.log").write_text(run.stderr, encoding="utf-8")
    return output_dir


def test_two_processes_reach_the_losses_and_scores_of_one(two_process_runs, offline_tokenizer):
    config = preset("smoke", model_overrides=NO_DROPOUT)
    one = train_qa(
        smoke_model(offline_tokenizer, config), offline_tokenizer, TRAIN_EXAMPLES, config, eval_examples=EVAL_EXAMPLES
    )
    two = history(two_process_runs / "plain")
    assert [s["step"] for s in two["steps"]] == [s["step"] for s in one["steps"]] == list(range(1, 7))
    assert [s["loss"] for s in two["steps"]] == pytest.approx([s["loss"] for s in one["steps"]], rel=1e-4)
    assert [s["lr"] for s in two["steps"]] == pytest.approx([s["lr"] for s in one["steps"]])
    for score in ("em", "f1", "loss"):
        assert two["epochs"][-1][score] == pytest.approx(one["epochs"][-1][score], rel=1e-4, abs=1e-6)


def test_two_processes_resume_to_the_same_losses(two_process_runs):
    straight, resumed = history(two_process_runs / "straight"), history(two_process_runs / "resumed")
    assert [s["step"] for s in resumed["steps"]] == list(range(1, 7))
    assert [s["loss"] for s in resumed["steps"]] == pytest.approx([s["loss"] for s in straight["steps"]], abs=1e-6)
    assert sorted(p.name for p in (two_process_runs / "straight").iterdir()) == [
        "history.json", "step-2", "step-4", "step-6"
    ]  # fmt: skip


def test_only_the_main_process_logs(two_process_runs):
    log = (two_process_runs / "launch.log").read_text(encoding="utf-8")
    # three trainings, each with one table header (qa_lib.reporting) from the main process only
    assert len(re.findall(r"qa_lib\.training: epoch +loss", log)) == 3
    assert log.count("qa_lib.training: resumed from") == 1


@pytest.fixture
def squad_file(tmp_path) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(squad_json(TRAIN_EXAMPLES), ensure_ascii=False), encoding="utf-8")
    return path


def test_the_command_prints_and_saves_the_final_model_only_in_the_first_process(
    squad_file, tmp_path, capsys, monkeypatch
):
    arguments = ["train", "--preset", "smoke", "--train", str(squad_file), "--max-steps", "1", "--json"]
    monkeypatch.setenv("RANK", "1")  # what torchrun sets in the second process
    assert main([*arguments, "--output-dir", str(tmp_path / "second")]) == 0
    assert capsys.readouterr().out == "" and not (tmp_path / "second" / "final").exists()
    monkeypatch.setenv("RANK", "0")
    assert main([*arguments, "--output-dir", str(tmp_path / "first")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["loss"] > 0
    assert (tmp_path / "first" / "final" / "model.safetensors").is_file()


def test_ctrl_c_stops_both_processes_after_the_same_step(squad_file, tmp_path):
    output_dir = tmp_path / "interrupted"
    command = ["-m", "qa_lib.cli", "train", "--preset", "smoke", "--train", str(squad_file), "--save-every-steps", "2"]
    process = start_paused_in_save(
        [*LAUNCH, *command, "--output-dir", str(output_dir)],
        output_dir,
        "step-2",
        LAUNCH_ENVIRONMENT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: every process, and torchrun forwards it once more
    (output_dir / "save-paused").unlink()
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr[-5000:]
    interrupted = f"qa-kit train: training interrupted after step 2; checkpoint saved to {output_dir / 'step-2'}"
    assert stderr.count(interrupted) == 1 and "Traceback" not in stderr
    assert sorted(p.name for p in output_dir.glob("step-*")) == ["step-2"]
