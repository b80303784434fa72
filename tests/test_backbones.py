"""Backbone switch: the table of published Chinese BERTs, lookup, presets, and loading with Bert classes."""

from __future__ import annotations

import time
from dataclasses import replace

import huggingface_hub.constants
import pytest
import torch
from transformers import BertForQuestionAnswering, BertTokenizerFast

from qa_lib.backbones import (
    BACKBONES,
    PUBLISHED,
    backbone,
    load_backbone,
    model_source,
    qa_preset,
    results_table,
)
from qa_lib.models import ModelFilesMissing, build_offline_tokenizer, load_qa_model
from qa_lib.training import preset


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


def test_table_holds_the_four_published_backbones_in_order_of_their_scores():
    table = list(BACKBONES.values())
    assert [b.hub_id for b in table] == [
        "bert-base-chinese", "hfl/chinese-bert-wwm-ext", "hfl/chinese-roberta-wwm-ext", "hfl/chinese-macbert-base",
    ]  # fmt: skip
    # wwm, more data, RoBERTa training, MLM as correction: each step helped on CMRC 2018 dev
    assert [b.dev_em for b in table] == sorted(b.dev_em for b in table)
    assert [b.dev_f1 for b in table] == sorted(b.dev_f1 for b in table)
    assert all(b.dev_em_mean <= b.dev_em and b.dev_f1_mean <= b.dev_f1 for b in table)
    assert all(b.status == PUBLISHED == "published, not verifiable offline" for b in table)
    assert "BERT architecture" in backbone("chinese-roberta-wwm-ext").architecture


def test_lookup_by_name_or_hub_id_and_a_clear_error():
    assert backbone("chinese-macbert-base") is backbone("hfl/chinese-macbert-base")
    with pytest.raises(KeyError, match="chinese-roberta-wwm-ext") as error:
        backbone("roberta")
    assert all(name in str(error.value) for name in BACKBONES)


def test_qa_preset_is_the_colab_recipe_with_the_backbone():
    config = qa_preset("chinese-roberta-wwm-ext")
    assert config == replace(preset("colab-t4"), model="hfl/chinese-roberta-wwm-ext")
    assert qa_preset("bert-base-chinese", epochs=3).epochs == 3
    with pytest.raises(KeyError, match="unknown backbone"):
        qa_preset("bert-large")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_fails_fast_offline_and_says_how_to_get_the_files(name, empty_hub_cache):
    started = time.perf_counter()
    with pytest.raises(ModelFilesMissing, match="Get the files") as error:
        load_backbone(name)
    assert backbone(name).hub_id in str(error.value)
    assert time.perf_counter() - started < 5


def test_roberta_wwm_loads_from_the_hub_cache_with_bert_classes(empty_hub_cache):
    repo = empty_hub_cache / "models--hfl--chinese-roberta-wwm-ext"
    revision = "0" * 40
    saved = save_tiny_bert(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)

    tokenizer, model = load_backbone("chinese-roberta-wwm-ext")
    assert isinstance(tokenizer, BertTokenizerFast) and type(model) is BertForQuestionAnswering
    assert tokenizer("阅读理解")["input_ids"] == build_offline_tokenizer()("阅读理解")["input_ids"]
    assert_same_weights(model, saved)


def test_local_folder_loads_by_path(tmp_path, empty_hub_cache):
    saved = save_tiny_bert(tmp_path / "my-bert")
    tokenizer, model = load_backbone(tmp_path / "my-bert")
    assert isinstance(tokenizer, BertTokenizerFast)
    assert_same_weights(model, saved)


def test_model_source_maps_names_and_rejects_the_rest(tmp_path):
    assert model_source("chinese-bert-wwm-ext") == "hfl/chinese-bert-wwm-ext"
    assert model_source("offline-tiny") == "offline-tiny"
    assert model_source(tmp_path) == str(tmp_path)
    with pytest.raises(KeyError, match="neither a backbone"):
        model_source(tmp_path / "not-there")


def test_results_table_is_markdown_with_every_published_score():
    lines = results_table().splitlines()
    assert lines[0].startswith("| Backbone |") and set(lines[1]) <= set("|-:")
    rows = lines[2 : 2 + len(BACKBONES)]
    for row, entry in zip(rows, BACKBONES.values(), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:4] == [
            entry.name,
            f"`{entry.hub_id}`",
            f"{entry.dev_em} ({entry.dev_em_mean})",
            f"{entry.dev_f1} ({entry.dev_f1_mean})",
        ]
    assert PUBLISHED in results_table()
