"""Crash-safe checkpoints: atomic saves with a manifest, keeping the newest K, resuming from the newest intact
one after SIGKILL, Ctrl-C or a corrupted file, and reaching the losses of an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training import birth_year_examples, smoke_model, squad_json

from qa_lib.checkpoint import MANIFEST, CheckpointError, checkpoint_problem, prune_checkpoints
from qa_lib.cli import main
from qa_lib.data import load_squad
from qa_lib.training import StopAtStepEnd, TrainingInterrupted, preset, train_qa

ROOT = Path(__file__).resolve().parent.parent
PAUSE_IN_SAVE = ROOT / "tests" / "pause_in_save"  # its sitecustomize holds a save half-way
CHECKPOINT_FILES = (
    "model.safetensors",
    "optimizer.safetensors",
    "rng.safetensors",
    "trainer_state.json",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    MANIFEST,
)


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(squad_json(birth_year_examples(30)), ensure_ascii=False), "utf-8")
    return path


def train_arguments(squad_file: Path, output_dir: Path) -> list[str]:
    """Six smoke steps with a checkpoint every two; the default keeps the newest two."""
    return ["train", "--preset", "smoke", "--train", str(squad_file), "--output-dir", str(output_dir)] + [
        "--save-every-steps",
        "2",
    ]


def step_losses(output_dir: Path) -> list[tuple[int, float]]:
    steps = json.loads((output_dir / "history.json").read_text(encoding="utf-8"))["steps"]
    return [(step["step"], step["loss"]) for step in steps]


@pytest.fixture(scope="module")
def straight_run(squad_file, tmp_path_factory) -> Path:
    """An uninterrupted run: step-4 and step-6 remain, history.json holds the reference losses."""
    output_dir = tmp_path_factory.mktemp("straight")
    assert main(train_arguments(squad_file, output_dir)) == 0
    return output_dir


def assert_same_losses(resumed_dir: Path, straight_dir: Path) -> None:
    resumed, straight = step_losses(resumed_dir), step_losses(straight_dir)
    assert [step for step, _ in resumed] == [step for step, _ in straight] == list(range(1, 7))
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-6)


def start_paused_in_save(
    command: list[str], output_dir: Path, checkpoint: str, environment: dict | None = None, **popen
) -> subprocess.Popen:
    """Run ``command`` (a training into ``output_dir``) until it is held half-way through saving ``checkpoint``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(environment or {}), "QA_KIT_TEST_PAUSE_SAVE": checkpoint}
    environment["PYTHONPATH"] = os.pathsep.join([str(PAUSE_IN_SAVE), environment["PYTHONPATH"]])
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )
    deadline = time.monotonic() + 180
    while not (output_dir / "save-paused").exists():
        assert process.poll() is None, process.communicate()[1][-5000:]
        assert time.monotonic() < deadline, "training never reached the paused save"
        time.sleep(0.1)
    return process


def start_training_that_pauses_in_save(squad_file: Path, output_dir: Path, checkpoint: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "qa_lib.cli", *train_arguments(squad_file, output_dir)]
    return start_paused_in_save(command, output_dir, checkpoint)


def test_a_checkpoint_lists_every_file_with_size_hash_and_versions(straight_run):
    assert sorted(p.name for p in straight_run.iterdir()) == ["final", "history.json", "step-4", "step-6"]
    manifest = json.loads((straight_run / "step-6" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["step"] == 6 and {"torch", "transformers", "qa_lib"} <= set(manifest["versions"])
    assert set(manifest["files"]) | {MANIFEST} == set(CHECKPOINT_FILES)
    model = manifest["files"]["model.safetensors"]
    assert model["bytes"] == (straight_run / "step-6" / "model.safetensors").stat().st_size
    assert len(model["sha256"]) == 64


def test_sigkill_in_the_middle_of_a_save_resumes_from_the_last_complete_checkpoint(
    squad_file, straight_run, tmp_path, caplog
):
    output_dir = tmp_path / "killed"
    process = start_training_that_pauses_in_save(squad_file, output_dir, "step-4")
    process.kill()
    process.communicate()
    assert not (output_dir / "step-4").exists() and (output_dir / ".incomplete-step-4" / "model.safetensors").exists()
    with caplog.at_level("WARNING", logger="qa_lib.checkpoint"):
        assert main([*train_arguments(squad_file, output_dir), "--resume"]) == 0
    assert "resuming from step-2; skipped step-4 (interrupted while saving)" in caplog.text
    assert_same_losses(output_dir, straight_run)
    assert not list(output_dir.glob(".incomplete-*"))


def test_ctrl_c_saves_at_the_step_end_and_exits_130_without_a_traceback(squad_file, straight_run, tmp_path):
    output_dir = tmp_path / "interrupted"
    process = start_training_that_pauses_in_save(squad_file, output_dir, "step-2")
    process.send_signal(signal.SIGINT)
    (output_dir / "save-paused").unlink()  # the save goes on; training stops once step 2 is complete
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"qa-kit train: training interrupted after step 2; checkpoint saved to {output_dir / 'step-2'}"
        " (continue with --resume)"
    )
    assert sorted(p.name for p in output_dir.glob("step-*")) == ["step-2"]
    assert main([*train_arguments(squad_file, output_dir), "--resume"]) == 0
    assert_same_losses(output_dir, straight_run)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, damage",
    [(name, truncate) for name in CHECKPOINT_FILES]
    + [("model.safetensors", flip_a_byte), ("trainer_state.json", flip_a_byte), ("rng.safetensors", Path.unlink)],
)
def test_a_damaged_newest_checkpoint_is_skipped(squad_file, straight_run, tmp_path, caplog, name, damage):
    output_dir = tmp_path / "damaged"
    shutil.copytree(straight_run, output_dir)
    damage(output_dir / "step-6" / name)
    with caplog.at_level("WARNING", logger="qa_lib.checkpoint"):
        assert main([*train_arguments(squad_file, output_dir), "--resume"]) == 0
    (skipped,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from step-4")]
    assert f"skipped step-6 ({name}:" in skipped
    assert_same_losses(output_dir, straight_run)


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    edit(manifest["files"])
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda files: files["model.safetensors"].pop("sha256"), "manifest.json: unreadable, KeyError"),
        (lambda files: files.pop("optimizer.safetensors"), "optimizer.safetensors: not in manifest.json"),
        (lambda files: files["rng.safetensors"].update(bytes=0), "rng.safetensors: {size} bytes, 0 in manifest.json"),
    ],
)
def test_a_manifest_that_does_not_vouch_for_the_files_is_reported(straight_run, tmp_path, edit, problem):
    folder = shutil.copytree(straight_run / "step-6", tmp_path / "step-6")
    assert checkpoint_problem(folder) is None
    edit_manifest(folder, edit)
    assert checkpoint_problem(folder) == problem.format(size=(folder / "rng.safetensors").stat().st_size)
    (folder / MANIFEST).unlink()
    assert checkpoint_problem(folder).startswith("no manifest.json")


def test_resume_fails_in_one_line_when_no_checkpoint_is_usable(
    squad_file, straight_run, offline_tokenizer, tmp_path, capsys
):
    output_dir = tmp_path / "ruined"
    shutil.copytree(straight_run, output_dir)
    truncate(output_dir / "step-6" / "model.safetensors")
    (output_dir / "step-4" / "trainer_state.json").write_text("{", encoding="utf-8")
    capsys.readouterr()
    assert main([*train_arguments(squad_file, output_dir), "--resume"]) == 2
    model_size = (straight_run / "step-6" / "model.safetensors").stat().st_size
    state_size = (straight_run / "step-4" / "trainer_state.json").stat().st_size
    assert capsys.readouterr().err == (
        f"qa-kit train: no usable checkpoint in {output_dir}: "
        f"step-6 is unusable (model.safetensors: truncated, {model_size // 2} of {model_size} bytes); "
        f"step-4 is unusable (trainer_state.json: truncated, 1 of {state_size} bytes); "
        "train without resume to start afresh\n"
    )
    config = preset("smoke")
    examples, _ = load_squad(squad_file)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train_qa(
            smoke_model(offline_tokenizer, config),
            offline_tokenizer,
            examples,
            config,
            output_dir=output_dir,
            resume=True,
        )


def test_pruning_keeps_the_newest_up_to_the_current_step(tmp_path):
    for name in ("step-1", "step-2", "step-3", "step-4", "step-5", ".incomplete-step-6", "final"):
        (tmp_path / name).mkdir()
    prune_checkpoints(tmp_path, current_step=3, keep=2)  # resumed from step-2, saved step-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "step-2", "step-3"]
    prune_checkpoints(tmp_path, current_step=3, keep=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "step-2", "step-3"]


def test_ctrl_c_in_process_stops_after_the_current_step(offline_tokenizer, tmp_path):
    config = preset("smoke", save_every_steps=None)
    calls = []

    def accuracy_that_presses_ctrl_c(predicted, gold):
        calls.append(1)
        if len(calls) == 3:  # in batch 2, before its optimizer step; twice, as torchrun forwards Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return 0.0

    with pytest.raises(TrainingInterrupted) as interrupted:
        train_qa(
            smoke_model(offline_tokenizer, config),
            offline_tokenizer,
            birth_year_examples(20),
            config,
            output_dir=tmp_path,
            span_accuracy=accuracy_that_presses_ctrl_c,
        )
    assert interrupted.value.step == 2 and interrupted.value.checkpoint == tmp_path / "step-2"
    state = json.loads((tmp_path / "step-2" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["progress"]["step"] == 2 and state["progress"]["batches_done"] == 2


def test_a_second_ctrl_c_later_stops_at_once(monkeypatch):
    clock = iter([100.0, 100.5, 102.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    with StopAtStepEnd() as ctrl_c:
        ctrl_c.request(signal.SIGINT, None)
        ctrl_c.request(signal.SIGINT, None)  # half a second later: the same key press, forwarded
        assert ctrl_c.requested
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.request(signal.SIGINT, None)
