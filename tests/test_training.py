import json
import random
import re

import pytest
import torch

from qa_lib import training
from qa_lib.batching import LengthGroupedBatches, pad_batch, padding_fraction
from qa_lib.data import Answer, QAExample
from qa_lib.models import load_qa_model
from qa_lib.training import (
    decay_parameter_groups,
    get_accelerator,
    preset,
    reset_accelerator,
    resolve_mixed_precision,
    same_seeds,
    train_qa,
)

FILLER = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"


def birth_year_examples(count, seed=0):
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        name = rng.choice("张王李赵刘陈杨黄周吴") + rng.choice("伟芳娜敏静丽强磊军洋")
        year = f"{rng.randint(1900, 2020)}年"
        context = (
            "".join(rng.choice(FILLER) for _ in range(rng.randint(10, 150))) + f"{name}出生于{year}。" + "其他" * 20
        )
        examples.append(QAExample(str(i), "", context, f"{name}出生于哪一年？", (Answer(year, context.index(year)),)))
    return examples


def squad_json(examples) -> dict:
    """``examples`` in the SQuAD format that ``qa-kit train --train FILE`` reads."""
    paragraphs = [
        {
            "context": example.context,
            "qas": [
                {
                    "id": example.id,
                    "question": example.question,
                    "answers": [{"text": answer.text, "answer_start": answer.start} for answer in example.answers],
                }
            ],
        }
        for example in examples
    ]
    return {"data": [{"title": "", "paragraphs": paragraphs}]}


def smoke_model(tokenizer, config):
    same_seeds(config.seed)
    return load_qa_model("offline-tiny", tokenizer, **config.model_overrides)


def test_loss_decreases(offline_tokenizer):
    config = preset("smoke", max_steps=None, epochs=3)
    history = train_qa(smoke_model(offline_tokenizer, config), offline_tokenizer, birth_year_examples(48), config)
    losses = [epoch["loss"] for epoch in history["epochs"]]
    assert losses[-1] < losses[0] - 0.3
    assert {"start_acc", "end_acc", "lr", "samples_per_s"} <= set(history["epochs"][0])


def test_resume_gives_the_same_next_step(offline_tokenizer, tmp_path):
    config = preset("smoke", max_steps=6, save_every_steps=3, epochs=2)
    examples = birth_year_examples(40)
    straight = train_qa(
        smoke_model(offline_tokenizer, config), offline_tokenizer, examples, config, output_dir=tmp_path / "a"
    )

    class Disconnect(Exception):
        pass

    calls = []

    def accuracy_until_disconnect(predicted, gold):  # the Colab runtime dies during step 5
        calls.append(1)
        if len(calls) > 8:  # two calls (start, end) per batch
            raise Disconnect
        return 0.0

    with pytest.raises(Disconnect):
        train_qa(
            smoke_model(offline_tokenizer, config),
            offline_tokenizer,
            examples,
            config,
            output_dir=tmp_path / "b",
            span_accuracy=accuracy_until_disconnect,
        )
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step-3"]
    resumed = train_qa(
        smoke_model(offline_tokenizer, config),
        offline_tokenizer,
        examples,
        config,
        output_dir=tmp_path / "b",
        resume=True,
    )
    assert [s["step"] for s in resumed["steps"]] == list(range(1, 7))
    assert resumed["steps"][3]["loss"] == pytest.approx(straight["steps"][3]["loss"], abs=1e-6)
    assert resumed["steps"][5]["loss"] == pytest.approx(straight["steps"][5]["loss"], abs=1e-6)
    assert json.loads((tmp_path / "b" / "history.json").read_text())["steps"][-1]["step"] == 6
    assert not list((tmp_path / "b").rglob("*.bin")) and not list((tmp_path / "b").rglob("*.pt"))


def test_each_step_logs_the_rate_it_used_and_the_mean_loss_of_its_group(offline_tokenizer):
    config = preset("smoke", max_steps=None, gradient_accumulation_steps=2, warmup_ratio=0.0)
    model = smoke_model(offline_tokenizer, config)
    micro_batch_losses = []
    model.register_forward_hook(lambda module, inputs, outputs: micro_batch_losses.append(outputs.loss.item()))
    steps = train_qa(model, offline_tokenizer, birth_year_examples(10), config)["steps"]
    assert len(micro_batch_losses) == 5 and len(steps) == 3  # groups of 2, 2 and 1 micro-batches
    groups = [micro_batch_losses[0:2], micro_batch_losses[2:4], micro_batch_losses[4:5]]
    assert [step["loss"] for step in steps] == pytest.approx([sum(group) / len(group) for group in groups])
    # Linear decay without warmup over 3 steps: step k uses lr * (3 - (k - 1)) / 3; none uses 0.
    assert [step["lr"] for step in steps] == pytest.approx([config.learning_rate * k / 3 for k in (3, 2, 1)])


class GradientRecorder(torch.optim.SGD):
    """Records the gradient each optimizer step sees and leaves the weights as they are."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.gradients = []

    def step(self, closure=None):
        parameters = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.gradients.append(torch.cat([p.grad.flatten() for p in parameters]).clone())


def step_gradients(tokenizer, accumulation: int) -> list[torch.Tensor]:
    no_dropout = {**preset("smoke").model_overrides, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = preset(
        "smoke", max_steps=None, gradient_accumulation_steps=accumulation, max_grad_norm=1e9, model_overrides=no_dropout
    )
    recorders = []

    def recording_optimizer(model, lr):
        recorders.append(GradientRecorder(model.parameters(), lr))
        return recorders[-1]

    train_qa(
        smoke_model(tokenizer, config),
        tokenizer,
        birth_year_examples(10),
        config,
        optimizer_factory=recording_optimizer,
    )
    return recorders[0].gradients


def test_a_short_last_accumulation_group_is_averaged_over_its_own_batches(offline_tokenizer):
    single = step_gradients(offline_tokenizer, accumulation=1)  # one gradient per micro-batch, same weights
    accumulated = step_gradients(offline_tokenizer, accumulation=2)
    assert len(single) == 5 and len(accumulated) == 3
    expected = [(single[0] + single[1]) / 2, (single[2] + single[3]) / 2, single[4]]
    for got, want in zip(accumulated, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_student_functions_drive_the_progress_metrics(offline_tokenizer):
    calls = []

    def student_accuracy(predicted, gold):
        calls.append(len(gold))
        return 0.25

    config = preset("smoke", max_steps=2)
    history = train_qa(
        smoke_model(offline_tokenizer, config),
        offline_tokenizer,
        birth_year_examples(12),
        config,
        span_accuracy=student_accuracy,
    )
    assert calls and history["epochs"][0]["start_acc"] == pytest.approx(0.25)


def test_no_weight_decay_on_bias_and_layernorm(offline_tokenizer):
    model = load_qa_model("offline-tiny", offline_tokenizer, **preset("smoke").model_overrides)
    decay, no_decay = decay_parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


MACHINES = {  # name: (torch.cuda.is_available, compute capability, torch.backends.mps.is_available)
    "T4": (True, (7, 5), False),
    "V100": (True, (7, 0), False),
    "A100": (True, (8, 0), False),
    "H100": (True, (9, 0), False),
    "CPU": (False, None, False),
    "MPS": (False, None, True),
}


def pretend_machine(monkeypatch, name):
    """Make torch report the devices of ``name``; is_bf16_supported answers True as it does on a T4."""
    cuda, capability, mps = MACHINES[name]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "machine, expected",
    [("T4", "fp16"), ("V100", "fp16"), ("A100", "bf16"), ("H100", "bf16"), ("CPU", "no"), ("MPS", "no")],
)
def test_auto_precision_follows_the_compute_capability(monkeypatch, machine, expected):
    pretend_machine(monkeypatch, machine)
    assert resolve_mixed_precision("auto") == expected


def test_explicit_precision_is_refused_where_it_would_be_fake(monkeypatch, caplog):
    pretend_machine(monkeypatch, "CPU")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_mixed_precision("fp16")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        resolve_mixed_precision("fp8")
    pretend_machine(monkeypatch, "MPS")
    assert resolve_mixed_precision("fp16") == "fp16"
    pretend_machine(monkeypatch, "T4")
    with caplog.at_level("WARNING", logger="qa_lib.training"):
        assert resolve_mixed_precision("bf16") == "bf16"
    assert "emulated" in caplog.text


@pytest.fixture
def fresh_accelerator():
    reset_accelerator()
    yield
    reset_accelerator()  # later tests train with mixed_precision="no"


@pytest.mark.parametrize("machine", ["this machine", "T4", "A100"])
def test_rerunning_reuses_the_accelerator_and_explains_a_precision_change(monkeypatch, fresh_accelerator, machine):
    if machine != "this machine":  # Accelerate itself stays on this machine's device; only the choice is mocked
        monkeypatch.setattr(training, "detect_device", lambda: ("cuda", MACHINES[machine][1]))
    auto = resolve_mixed_precision("auto")
    assert get_accelerator(auto).mixed_precision == auto
    assert get_accelerator("auto").mixed_precision == auto  # the same cell run twice
    with pytest.raises(RuntimeError, match="reset_accelerator"):
        get_accelerator("bf16" if auto == "no" else "no")


def test_dynamic_padding_and_length_grouping():
    rows = [{"input_ids": [1] * n, "token_type_ids": [0] * n, "start_positions": 0, "end_positions": 0} for n in (3, 9)]
    batch = pad_batch(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum().item() == 12
    lengths = [random.Random(i).randint(50, 512) for i in range(400)]
    grouped = LengthGroupedBatches(lengths, 8, seed=1)
    plain = LengthGroupedBatches(lengths, 8, seed=1, group=1)
    assert sorted(i for b in grouped for i in b) == list(range(400))
    assert padding_fraction(list(grouped), lengths) < padding_fraction(list(plain), lengths) / 3
    grouped.set_epoch(1)
    assert list(grouped) != list(LengthGroupedBatches(lengths, 8, seed=1))
    assert torch.equal(torch.tensor(list(grouped)[0]), torch.tensor(list(grouped)[0]))


def test_answerless_windows_are_dropped_and_reported(offline_tokenizer, caplog):
    config = preset("smoke", answerless_windows=0.0)
    with caplog.at_level("INFO", logger="qa_lib.training"):
        train_qa(smoke_model(offline_tokenizer, config), offline_tokenizer, birth_year_examples(16), config)
    (message,) = [r.getMessage() for r in caplog.records if "without the answer" in r.getMessage()]
    kept, total, dropped = map(int, re.match(r"training on (\d+) of (\d+) windows: dropped (\d+)", message).groups())
    assert kept + dropped == total and dropped > 0
