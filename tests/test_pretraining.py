"""Continued MLM pretraining through training.fit: loss, held-out loss, checkpoints, QA transfer, the command."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM, BertForQuestionAnswering

from qa_lib import pretraining
from qa_lib.data import DataFormatError, DataUnavailable
from qa_lib.models import ModelFilesMissing, load_tokenizer, save_model_folder
from qa_lib.pretraining import (
    MaskedOnlyBertForMaskedLM,
    heldout_mlm_loss,
    load_mlm_model,
    masked_batches,
    mlm_preset,
    pretrain_mlm,
    pretrain_mlm_command,
    qa_model_from_mlm,
    split_held_out,
)
from qa_lib.training import preset, same_seeds
from qa_lib.wwm import IGNORE_INDEX, WholeWordMaskCollator

# A small repetitive corpus: a tiny model learns its few dozen characters within a few dozen steps.
CORPUS = [
    "自然语言处理和机器学习是人工智能的研究方向。",
    "北京大学的研究人员喜欢阅读理解比赛。",
    "我们今天用电脑训练中文模型，天气很好。",
    "中国的人工智能发展很快，问题和答案都在文章里。",
] * 6
HELD_OUT = ["研究人员今天用机器学习训练阅读理解模型。", "人工智能的发展是中国的研究方向。"]


def tiny_config(**overrides):
    return mlm_preset(**{"max_length": 32, "batch_size": 4, **overrides})


def tiny_model(tokenizer, config):
    same_seeds(config.seed)
    return load_mlm_model("offline-tiny", tokenizer, **config.model_overrides)


def write_squad(path, contexts):
    def question(i, context):
        return {"id": f"q{i}", "question": "问题？", "answers": [{"text": context[:2], "answer_start": 0}]}

    paragraphs = [{"context": context, "qas": [question(i, context)]} for i, context in enumerate(contexts)]
    squad = {"data": [{"title": "t", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    return path


def mean(values):
    return sum(values) / len(values)


# --- the model ------------------------------------------------------------------------------------------------


def test_masked_only_head_gives_the_loss_and_logits_of_bert_for_masked_lm(offline_tokenizer):
    config = tiny_config()
    model = tiny_model(offline_tokenizer, config).eval()
    reference = BertForMaskedLM(model.config).eval()
    reference.load_state_dict(model.state_dict())
    batch = WholeWordMaskCollator(offline_tokenizer, seed=0)(pretraining.encode_for_mlm(offline_tokenizer, CORPUS[:4]))
    masked = batch["labels"] != IGNORE_INDEX

    ours, theirs = model(**batch), reference(**batch)
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), abs=1e-5)
    assert ours.logits.shape == (int(masked.sum()), model.config.vocab_size)
    assert torch.allclose(ours.logits, theirs.logits[masked], atol=1e-5)
    without_labels = {key: value for key, value in batch.items() if key != "labels"}
    assert torch.allclose(model(**without_labels).logits, theirs.logits, atol=1e-5)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_unknown_model_fails_fast_offline_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelFilesMissing, match="Get the files for 'no-such/model'"):
        load_mlm_model("no-such/model")
    assert time.perf_counter() - started < 5


def test_mlm_presets():
    tiny = mlm_preset()
    assert tiny.model == "offline-tiny" and tiny.model_overrides == preset("smoke").model_overrides
    assert tiny.max_steps is None and tiny.mixed_precision == "no"
    real = mlm_preset("hfl/chinese-macbert-base", epochs=1)
    assert real.model == "hfl/chinese-macbert-base" and real.epochs == 1 and real.learning_rate == 5e-5
    assert real.max_length == preset("colab-t4").max_length == 512


# --- training and held-out loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("masking", ["wwm", "char"])
def test_loss_decreases_with_either_masking(offline_tokenizer, masking):
    config = tiny_config(max_steps=30, epochs=5)
    model = tiny_model(offline_tokenizer, config)
    history = pretrain_mlm(model, offline_tokenizer, CORPUS, config, masking=masking, held_out_texts=HELD_OUT)

    losses = [step["loss"] for step in history["steps"]]
    assert len(losses) == 30
    assert mean(losses[-5:]) < mean(losses[:5]) - 1.0
    assert (history["loss_first"], history["loss_last"]) == (losses[0], losses[-1])
    assert history["masking"] == masking and history["config"]["max_steps"] == 30
    heldout = [epoch["heldout_loss"] for epoch in history["epochs"]]
    assert heldout[-1] < history["heldout_loss_before"] - 1.0


def test_heldout_loss_is_fixed_by_its_seed_and_leaves_the_model_and_rng_alone(offline_tokenizer):
    model = tiny_model(offline_tokenizer, tiny_config()).train()
    rng_before = torch.get_rng_state()
    first = heldout_mlm_loss(model, offline_tokenizer, CORPUS[:8], "wwm", seed=3)
    assert heldout_mlm_loss(model, offline_tokenizer, CORPUS[:8], "wwm", seed=3) == first
    others = {heldout_mlm_loss(model, offline_tokenizer, CORPUS[:8], "wwm", seed=seed) for seed in (4, 5, 6)}
    assert first not in others
    assert heldout_mlm_loss(model, offline_tokenizer, CORPUS[:8], "char", seed=3) != first
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)


def test_heldout_loss_weights_every_masked_token_equally(offline_tokenizer):
    model = tiny_model(offline_tokenizer, tiny_config())
    batches = masked_batches(offline_tokenizer, CORPUS[:8], "wwm", 0, batch_size=3)
    assert len(batches) == 3
    with torch.no_grad():
        model.eval()
        per_token = torch.cat([
            torch.nn.functional.cross_entropy(model(**batch).logits, batch["labels"][batch["labels"] != IGNORE_INDEX],
                                              reduction="none")
            for batch in batches
        ])  # fmt: skip
    assert pretraining.mean_masked_loss(model, batches) == pytest.approx(per_token.mean().item(), rel=1e-5)


# --- checkpoints ------------------------------------------------------------------------------------------------


def test_checkpoint_and_resume_through_fit_with_tied_weights(offline_tokenizer, tmp_path, monkeypatch):
    config = tiny_config(max_steps=5, save_every_steps=3)
    straight_model = tiny_model(offline_tokenizer, config)
    straight = pretrain_mlm(straight_model, offline_tokenizer, CORPUS, config, output_dir=tmp_path / "a")

    class Disconnect(Exception):
        pass

    class CollatorThatDisconnects(WholeWordMaskCollator):
        calls = 0

        def __call__(self, features):
            CollatorThatDisconnects.calls += 1
            if CollatorThatDisconnects.calls == 5:  # the Colab runtime dies while batch 5 is prepared
                raise Disconnect
            return super().__call__(features)

    with monkeypatch.context() as patch:
        patch.setattr(pretraining, "WholeWordMaskCollator", CollatorThatDisconnects)
        interrupted_model = tiny_model(offline_tokenizer, config)
        with pytest.raises(Disconnect):
            pretrain_mlm(interrupted_model, offline_tokenizer, CORPUS, config, output_dir=tmp_path / "b")
    assert [folder.name for folder in (tmp_path / "b").iterdir()] == ["step-3"]
    saved = load_file(tmp_path / "b" / "step-3" / "model.safetensors")
    assert "bert.embeddings.word_embeddings.weight" in saved and "cls.predictions.decoder.weight" not in saved

    resumed_model = tiny_model(offline_tokenizer, config)
    resumed = pretrain_mlm(resumed_model, offline_tokenizer, CORPUS, config, output_dir=tmp_path / "b", resume=True)
    assert [step["step"] for step in resumed["steps"]] == list(range(1, 6))
    for index in (3, 4):  # steps 4 and 5: same masks, same dropout, same weights as without the disconnect
        assert resumed["steps"][index]["loss"] == pytest.approx(straight["steps"][index]["loss"], abs=1e-6)
    assert resumed["loss_first"] == straight["loss_first"]
    assert resumed_model.cls.predictions.decoder.weight is resumed_model.bert.embeddings.word_embeddings.weight
    for name, tensor in straight_model.state_dict().items():
        assert torch.allclose(resumed_model.state_dict()[name], tensor, atol=1e-6), name


# --- from MLM to QA ---------------------------------------------------------------------------------------------


def test_qa_model_from_mlm_keeps_the_encoder_and_starts_a_fresh_head(offline_tokenizer, tmp_path, capfd):
    config = tiny_config(max_steps=3)
    mlm = tiny_model(offline_tokenizer, config)
    pretrain_mlm(mlm, offline_tokenizer, CORPUS, config)
    folder = save_model_folder(mlm, offline_tokenizer, tmp_path / "adapted")
    capfd.readouterr()

    for source in (mlm, folder):
        qa_model = qa_model_from_mlm(source)
        assert isinstance(qa_model, BertForQuestionAnswering)
        encoder = mlm.bert.state_dict()
        transferred = qa_model.bert.state_dict()
        assert transferred.keys() == encoder.keys()
        for name, tensor in encoder.items():
            assert torch.equal(transferred[name], tensor), name
            assert transferred[name].data_ptr() != tensor.data_ptr(), f"{name} is shared, not copied"
        head = qa_model.qa_outputs
        assert head.out_features == 2 and (head.bias == 0).all()
        assert head.weight.std().item() == pytest.approx(qa_model.config.initializer_range, rel=0.3)
    assert capfd.readouterr().err == ""
    assert isinstance(load_tokenizer(folder).get_vocab(), dict)


# --- the command and its data ---------------------------------------------------------------------------------


def test_split_held_out_is_seeded_disjoint_and_keeps_order():
    texts = [f"文本{i}" for i in range(40)]
    train, held_out = split_held_out(texts, seed=1)
    assert len(held_out) == 4 and sorted(train + held_out, key=texts.index) == texts
    assert train == sorted(train, key=texts.index) and held_out == sorted(held_out, key=texts.index)
    assert split_held_out(texts, seed=1) == (train, held_out) and split_held_out(texts, seed=2) != (train, held_out)
    assert len(split_held_out(texts[:3])[1]) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_held_out(texts[:1])


def test_pretrain_mlm_command_on_a_squad_file_offline(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    data = write_squad(tmp_path / "squad.json", [text + str(i) for i, text in enumerate(CORPUS[:10])])
    result = pretrain_mlm_command(str(data), "offline-tiny", "char", epochs=3, output_dir=tmp_path / "run")

    assert {"loss_first", "loss_last", "masking", "seconds", "heldout_loss_char", "heldout_loss_wwm"} <= set(result)
    assert result["masking"] == "char" and result["steps"] == 3
    assert (result["train_texts"], result["heldout_texts"]) == (9, 1)
    assert all(result[key] > 0 for key in ("loss_first", "loss_last", "heldout_loss_before", "seconds"))
    assert json.loads(json.dumps(result)) == result
    adapted = load_mlm_model(result["model_dir"])
    assert isinstance(adapted, MaskedOnlyBertForMaskedLM)
    assert (tmp_path / "run" / "history.json").is_file()


def test_pretrain_mlm_command_names_bad_input(tmp_path, monkeypatch):
    with pytest.raises(DataFormatError, match="missing.json"):
        pretrain_mlm_command(str(tmp_path / "missing.json"))
    with pytest.raises(DataFormatError, match="one.json: need at least 2"):
        pretrain_mlm_command(str(write_squad(tmp_path / "one.json", ["只有一段文本。"])))
    with pytest.raises(ValueError, match="masking must be one of"):
        pretrain_mlm_command(str(tmp_path / "any.json"), masking="words")
    monkeypatch.delenv("QA_KIT_CMRC_DIR", raising=False)
    with pytest.raises(DataUnavailable, match="QA_KIT_CMRC_DIR"):
        pretrain_mlm_command("trial")


def test_pretrain_mlm_command_on_cmrc_trial_contexts(cmrc_dir, monkeypatch):
    monkeypatch.setenv("QA_KIT_CMRC_DIR", str(cmrc_dir))
    result = pretrain_mlm_command("trial", "offline-tiny", "wwm", max_steps=8)
    contexts = result["train_texts"] + result["heldout_texts"]
    assert result["steps"] == 8 and result["heldout_texts"] == round(0.1 * contexts)
    assert result["loss_last"] < result["loss_first"]
    assert result["model_dir"] is None
