"""The Chinese BERTs of the README's backbone table load by hub id with the kit's Bert classes, as
`qa-kit train --model HUB_ID` loads them (qa_lib.cli.load_model_and_tokenizer), or fail fast offline."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import torch
from transformers import BertForQuestionAnswering, BertTokenizerFast

from qa_lib.cli import load_model_and_tokenizer
from qa_lib.models import ModelFilesMissing, build_offline_tokenizer, load_qa_model

README_BACKBONES = (
    "bert-base-chinese",
    "hfl/chinese-bert-wwm-ext",
    "hfl/chinese-roberta-wwm-ext",
    "hfl/chinese-macbert-base",
)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A hub cache with nothing in it, whatever the developer's own cache holds; the hub is offline."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def save_tiny_bert(folder):
    tokenizer = build_offline_tokenizer()
    torch.manual_seed(0)
    model = load_qa_model("offline-tiny", tokenizer, hidden_size=32, intermediate_size=64)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def assert_same_weights(loaded, saved):
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("hub_id", README_BACKBONES)
def test_every_backbone_fails_fast_offline_and_says_how_to_get_the_files(hub_id, empty_hub_cache):
    started = time.perf_counter()
    with pytest.raises(ModelFilesMissing, match="Get the files") as error:
        load_model_and_tokenizer(hub_id)
    assert hub_id in str(error.value)
    assert time.perf_counter() - started < 5


def test_roberta_wwm_loads_from_the_hub_cache_with_bert_classes(empty_hub_cache):
    repo = empty_hub_cache / "models--hfl--chinese-roberta-wwm-ext"
    revision = "0" * 40
    saved = save_tiny_bert(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)

    model, tokenizer = load_model_and_tokenizer("hfl/chinese-roberta-wwm-ext")
    assert isinstance(tokenizer, BertTokenizerFast) and type(model) is BertForQuestionAnswering
    assert tokenizer("阅读理解")["input_ids"] == build_offline_tokenizer()("阅读理解")["input_ids"]
    assert_same_weights(model, saved)


def test_local_folder_loads_by_path(tmp_path, empty_hub_cache):
    saved = save_tiny_bert(tmp_path / "my-bert")
    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "my-bert"))
    assert isinstance(tokenizer, BertTokenizerFast)
    assert_same_weights(model, saved)
