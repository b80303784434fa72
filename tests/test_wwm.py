"""Chinese whole word masking: jieba words, word ids per token, the mask rule, BERT's 80/10/10 and the collator."""

from __future__ import annotations

import logging
import random
import socket
import tempfile
from collections import Counter, defaultdict

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

from qa_lib.models import tiny_bert_config
from qa_lib.wwm import (
    IGNORE_INDEX,
    WholeWordMaskCollator,
    align_words_to_tokens,
    char_mask,
    encode_for_mlm,
    mask_tokens,
    replacement_token_ids,
    segment_words,
    target_mask_count,
    visualise_masking,
    whole_word_mask,
    word_ids_for_text,
)

CHINESE_WORDS = [
    "我们", "今天", "天气", "很好", "北京", "大学", "研究", "机器学习", "自然语言处理", "模型", "的", "了",
    "在", "是", "中国", "人工智能", "发展", "问题", "答案", "阅读理解", "我", "喜欢", "电脑", "比赛",
]  # fmt: skip
LATIN_WORDS = ["Transformer", "BERT", "GPU", "PyTorch", "hello", "CMRC"]
PUNCTUATION = ["，", "。", "！", "？", "、", "："]
FULL_WIDTH = ["ＡＢＣ", "Ｔｅｓｔ", "１２３"]


def _part(rng: random.Random) -> str:
    kind = rng.choices(["chinese", "latin", "number", "punctuation", "full", "space"], [12, 2, 2, 3, 1, 1])[0]
    if kind == "number":
        return rng.choice([f"{rng.randint(1900, 2030)}年", f"{rng.randint(1, 99)}%", "3.14"])
    if kind == "space":
        return " "
    pool = {"chinese": CHINESE_WORDS, "latin": LATIN_WORDS, "punctuation": PUNCTUATION, "full": FULL_WIDTH}[kind]
    return rng.choice(pool)


def sentence(rng: random.Random, parts: int) -> str:
    return "".join(_part(rng) for _ in range(parts))


def sentences(count: int, max_parts: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, rng.randint(1, max_parts)) for _ in range(count)]


@pytest.fixture(params=["offline_tokenizer", "real_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


# --- segmentation ---------------------------------------------------------------------------------------------


def test_segment_words_covers_every_non_space_character_once():
    for text in sentences(100, 12) + ["  前后 有空格  的句子 "]:
        spans = segment_words(text)
        covered = [char for start, end in spans for char in range(start, end)]
        assert covered == sorted(set(covered)), "spans overlap or are out of order"
        assert covered == [char for char, letter in enumerate(text) if not letter.isspace()]


def test_jieba_starts_offline_and_silently_with_a_user_dictionary(tmp_path, monkeypatch, capfd):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    # An empty temp dir makes jieba build its prefix dictionary from scratch: the step that logs to stderr.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    terms = tmp_path / "terms.txt"
    terms.write_text("全词掩码 100 n\n", encoding="utf-8")
    text = "我们使用全词掩码训练模型"
    start = text.index("全词掩码")

    assert (start, start + 4) not in segment_words(text)
    assert (start, start + 4) in segment_words(text, user_dict=terms)
    assert (tmp_path / "jieba.cache").is_file()
    assert capfd.readouterr().err == ""


def test_missing_user_dictionary_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        segment_words("我们", user_dict=tmp_path / "nope.txt")


# --- word ids -------------------------------------------------------------------------------------------------


def test_word_ids_never_split_a_jieba_word_nor_a_bert_word(tokenizer):
    for text in sentences(150, 15, seed=1):
        encoding, word_ids = word_ids_for_text(tokenizer, text)
        ids_in_jieba_word, ids_in_bert_word = defaultdict(set), defaultdict(set)
        jieba_word_of_char = {char: index for index, (s, e) in enumerate(segment_words(text)) for char in range(s, e)}
        for position, word in enumerate(word_ids):
            if encoding["special_tokens_mask"][position]:
                assert word is None
                continue
            start = encoding["offset_mapping"][position][0]
            ids_in_jieba_word[jieba_word_of_char[start]].add(word)
            ids_in_bert_word[encoding.word_ids()[position]].add(word)
        assert all(len(ids) == 1 for ids in ids_in_jieba_word.values()), text
        assert all(len(ids) == 1 for ids in ids_in_bert_word.values()), text
        numbered = [word for word in word_ids if word is not None]
        assert numbered == sorted(numbered) and set(numbered) == set(range(len(set(numbered))))


def test_one_character_words_and_wordpiece_words_get_one_id_each(tokenizer):
    encoding, word_ids = word_ids_for_text(tokenizer, "他和transformer")
    tokens = encoding.tokens()
    assert tokens[1:3] == ["他", "和"] and word_ids[1] != word_ids[2]
    latin = [word for token, word in zip(tokens, word_ids, strict=True) if token not in {"[CLS]", "[SEP]", "他", "和"}]
    assert len(latin) > 1 and len(set(latin)) == 1
    assert word_ids[1] not in latin and word_ids[2] not in latin


def test_unk_covering_several_jieba_words_joins_the_first(offline_tokenizer):
    text = "ＡＢＣ全角"
    assert segment_words(text)[:3] == [(0, 1), (1, 2), (2, 3)]
    encoding, word_ids = word_ids_for_text(offline_tokenizer, text)
    assert encoding.tokens() == ["[CLS]", "[UNK]", "全", "角", "[SEP]"]
    assert encoding["offset_mapping"][1] == (0, 3)
    assert word_ids == [None, 0, 1, 1, None]


def test_token_spanning_two_words_merges_them_and_empty_offsets_get_none():
    offsets = [(0, 0), (0, 1), (1, 3), (3, 4), (4, 5), (0, 0)]
    word_spans = [(0, 2), (2, 4), (4, 5)]
    assert align_words_to_tokens(offsets, word_spans) == [None, 0, 0, 0, 1, None]
    assert align_words_to_tokens(offsets, word_spans, special_mask=[0, 0, 0, 0, 1, 0]) == [None, 0, 0, 0, None, None]


def test_question_and_context_pair_get_separate_words(offline_tokenizer):
    encoding, word_ids = word_ids_for_text(offline_tokenizer, "谁发明了电话？", "贝尔发明了电话。")
    sequence_ids = encoding.sequence_ids()
    question = {word for word, owner in zip(word_ids, sequence_ids, strict=True) if owner == 0}
    context = {word for word, owner in zip(word_ids, sequence_ids, strict=True) if owner == 1}
    assert question and context and not question & context
    assert all(word is None for word, owner in zip(word_ids, sequence_ids, strict=True) if owner is None)


# --- whole_word_mask ------------------------------------------------------------------------------------------


def test_whole_word_mask_takes_whole_words_only_and_stops_after_one_word(tokenizer):
    generator = torch.Generator().manual_seed(0)
    for text in sentences(80, 20, seed=3):
        _, word_ids = word_ids_for_text(tokenizer, text)
        sizes = Counter(word for word in word_ids if word is not None)
        target = target_mask_count(sum(sizes.values()), 0.15)
        for _ in range(5):
            mask = whole_word_mask(word_ids, 0.15, generator).tolist()
            assert not any(selected for selected, word in zip(mask, word_ids, strict=True) if word is None)
            chosen = {word for selected, word in zip(mask, word_ids, strict=True) if selected}
            assert all(mask[position] == (word in chosen) for position, word in enumerate(word_ids))
            selected = sum(mask)
            assert selected >= target >= 1
            # the last word taken is what crossed the target: some chosen word, removed, leaves us below it
            assert any(selected - sizes[word] < target for word in chosen)


def test_mask_ratio_is_fifteen_percent_on_average(tokenizer):
    generator = torch.Generator().manual_seed(1)
    ratios = []
    for text in [sentence(random.Random(seed), 150) for seed in range(6)]:
        _, word_ids = word_ids_for_text(tokenizer, text)
        maskable = sum(word is not None for word in word_ids)
        ratios += [whole_word_mask(word_ids, 0.15, generator).sum().item() / maskable for _ in range(60)]
    assert abs(sum(ratios) / len(ratios) - 0.15) < 0.02


def test_char_mask_selects_exactly_the_target_and_may_split_words(offline_tokenizer):
    _, word_ids = word_ids_for_text(offline_tokenizer, "自然语言处理和机器学习是人工智能的研究方向" * 3)
    maskable = sum(word is not None for word in word_ids)
    generator = torch.Generator().manual_seed(2)
    split_a_word = False
    for _ in range(30):
        mask = char_mask(word_ids, 0.15, generator).tolist()
        assert sum(mask) == target_mask_count(maskable, 0.15)
        assert not mask[0] and not mask[-1]
        by_word = defaultdict(set)
        for selected, word in zip(mask, word_ids, strict=True):
            by_word[word].add(selected)
        split_a_word |= any(len(states) == 2 for states in by_word.values())
    assert split_a_word


def test_seeded_generator_gives_the_same_mask():
    word_ids = [None] + [index // 2 for index in range(60)] + [None]
    first = whole_word_mask(word_ids, 0.15, torch.Generator().manual_seed(7))
    again = whole_word_mask(word_ids, 0.15, torch.Generator().manual_seed(7))
    others = [whole_word_mask(word_ids, 0.15, torch.Generator().manual_seed(seed)) for seed in range(8, 13)]
    assert torch.equal(first, again)
    assert any(not torch.equal(first, other) for other in others)


def test_edge_cases_of_the_mask_count():
    assert whole_word_mask([None, 0, 0, 0, None], 0.15).tolist() == [False, True, True, True, False]
    assert not whole_word_mask([None, 0, 1, None], 0.0).any()
    assert whole_word_mask([None, None], 0.15).tolist() == [False, False]
    assert whole_word_mask([], 0.15).tolist() == []
    with pytest.raises(ValueError, match="mask_ratio"):
        whole_word_mask([0, 1], 1.5)


# --- mask_tokens ----------------------------------------------------------------------------------------------


def test_mask_tokens_80_10_10_and_labels(real_tokenizer):
    replacement_ids = replacement_token_ids(real_tokenizer)
    generator = torch.Generator().manual_seed(3)
    input_ids = replacement_ids[torch.randint(len(replacement_ids), (40, 1000), generator=generator)]
    selected = torch.rand(input_ids.shape, generator=generator) < 0.5
    masked, labels = mask_tokens(
        input_ids, selected, mask_token_id=real_tokenizer.mask_token_id, replacement_ids=replacement_ids,
        generator=generator,
    )  # fmt: skip
    assert torch.equal(labels[selected], input_ids[selected])
    assert (labels[~selected] == IGNORE_INDEX).all()
    assert torch.equal(masked[~selected], input_ids[~selected])
    became_mask = (masked == real_tokenizer.mask_token_id)[selected].float().mean().item()
    became_other = ((masked != input_ids) & (masked != real_tokenizer.mask_token_id))[selected].float().mean().item()
    kept = (masked == input_ids)[selected].float().mean().item()
    assert abs(became_mask - 0.8) < 0.015 and abs(became_other - 0.1) < 0.015 and abs(kept - 0.1) < 0.015
    assert not torch.isin(masked[selected], torch.tensor(real_tokenizer.all_special_ids[:4])).any()
    assert input_ids.ne(masked).any(), "mask_tokens must not modify its input in place"


def test_replacement_ids_skip_special_and_unused_tokens(real_tokenizer):
    replacement_ids = set(replacement_token_ids(real_tokenizer).tolist())
    vocab = real_tokenizer.get_vocab()
    assert not replacement_ids & set(real_tokenizer.all_special_ids)
    assert vocab["[unused1]"] not in replacement_ids
    assert vocab["模"] in replacement_ids and vocab["##ran"] in replacement_ids


# --- features and collator ------------------------------------------------------------------------------------


def test_encode_for_mlm_splits_long_texts_and_logs_empty_ones(offline_tokenizer, caplog):
    long_text = "".join(sentences(40, 30, seed=5))
    whole = offline_tokenizer(long_text, add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="qa_lib.wwm"):
        features = encode_for_mlm(offline_tokenizer, [long_text, "   "], max_length=128)
    assert "indices [1]" in caplog.text
    assert len(features) > 1 and all(len(feature["input_ids"]) <= 128 for feature in features)
    assert [token for feature in features for token in feature["input_ids"][1:-1]] == whole
    assert all(len(feature["word_ids"]) == len(feature["input_ids"]) for feature in features)


def test_collator_pads_and_its_batch_trains_bert_for_masked_lm(offline_tokenizer):
    features = encode_for_mlm(offline_tokenizer, sentences(6, 25, seed=6), max_length=64)
    lengths = [len(feature["input_ids"]) for feature in features]
    collator = WholeWordMaskCollator(offline_tokenizer, pad_to_multiple_of=8, seed=0)
    batch = next(iter(DataLoader(features, batch_size=len(features), collate_fn=collator)))

    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= max(lengths)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    padding = batch["attention_mask"] == 0
    assert (batch["input_ids"][padding] == offline_tokenizer.pad_token_id).all()
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) >= 1).all()

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(offline_tokenizer))
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_collator_masks_whole_words_and_char_mode_does_not(offline_tokenizer):
    features = encode_for_mlm(offline_tokenizer, ["自然语言处理和机器学习是人工智能的研究方向。" * 4] * 8)
    split = {}
    for masking in ("wwm", "char"):
        labels = WholeWordMaskCollator(offline_tokenizer, masking=masking, seed=1)(features)["labels"]
        split[masking] = False
        for row, feature in zip(labels.tolist(), features, strict=True):
            states = defaultdict(set)
            for label, word in zip(row, feature["word_ids"], strict=True):
                states[word].add(label != IGNORE_INDEX)
            split[masking] |= any(len(state) == 2 for state in states.values())
    assert split == {"wwm": False, "char": True}


def test_collator_with_a_seed_is_reproducible(offline_tokenizer):
    features = encode_for_mlm(offline_tokenizer, sentences(4, 25, seed=7))
    first = WholeWordMaskCollator(offline_tokenizer, seed=5)(features)
    again = WholeWordMaskCollator(offline_tokenizer, seed=5)(features)
    assert all(torch.equal(first[key], again[key]) for key in first)


def test_collator_names_the_bad_feature(offline_tokenizer):
    collator = WholeWordMaskCollator(offline_tokenizer)
    with pytest.raises(KeyError, match="feature 1 has no 'word_ids'"):
        collator([{"input_ids": [2, 3], "word_ids": [None, None]}, {"input_ids": [2, 3]}])
    with pytest.raises(ValueError, match="feature 0"):
        collator([{"input_ids": [2, 5, 3], "word_ids": [None, None]}])
    with pytest.raises(ValueError, match="masking"):
        WholeWordMaskCollator(offline_tokenizer, masking="words")


# --- display and the transformers alternative -----------------------------------------------------------------


def test_visualise_masking_shows_selected_tokens_as_markers():
    tokens = ["[CLS]", "我", "用", "t", "##r", "hello", "world", "[SEP]", "[PAD]"]
    assert visualise_masking(tokens, [0] * 9) == "我用tr hello world"
    assert visualise_masking(tokens, [0, 0, 1, 1, 1, 0, 1, 0, 0]) == "我[M][M][M] hello [M]"


def test_transformers_whole_word_mask_sees_unspaced_chinese_as_one_word(offline_tokenizer):
    text = "我们研究自然语言处理和机器学习"
    encoding = offline_tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    with pytest.warns(UserWarning, match="Random token replacement is not supported"):
        collator = DataCollatorForLanguageModeling(offline_tokenizer, whole_word_mask=True, seed=0)
    labels = collator([dict(encoding) for _ in range(32)])["labels"]
    text_tokens = torch.tensor(encoding["special_tokens_mask"]) == 0
    masked_per_row = (labels[:, text_tokens] != IGNORE_INDEX).sum(1)
    # all or nothing: the only "word" it finds is the whole sentence
    assert set(masked_per_row.tolist()) == {0, len(text)}
    _, word_ids = word_ids_for_text(offline_tokenizer, text)
    assert len({word for word in word_ids if word is not None}) > 5
