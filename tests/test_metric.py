"""Tests for qa_lib.metric, the official CMRC 2018 EM/F1. Expected values are derived by hand from the rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nltk
import pytest

from qa_lib.data import DataFormatError, load_squad, references_of
from qa_lib.metric import (
    PUNCTUATION,
    corpus_scores,
    evaluate_files,
    exact_match,
    f1_score,
    normalize,
    read_predictions,
    remove_punctuation,
    segment,
)

ASCII_PUNCTUATION = "-:_*^/\\~`+="
FULL_WIDTH_PUNCTUATION = "，。：？！“”；’《》·、「」（）－～『』"


# --- normalisation and punctuation -------------------------------------------------------------------------------


def test_normalize_lowercases_and_strips_only_the_ends():
    assert normalize("  Hello  World \n") == "hello  world"


@pytest.mark.parametrize("char", list(ASCII_PUNCTUATION + FULL_WIDTH_PUNCTUATION))
def test_every_listed_punctuation_character_is_removed(char):
    assert remove_punctuation(f"北{char}京") == "北京"


@pytest.mark.parametrize("char", list(ASCII_PUNCTUATION))
def test_ascii_punctuation_is_skipped_without_ending_the_english_run(char):
    # Skipping "a", char, "b" leaves the run "ab": one word, not two.
    assert segment(f"a{char}b") == ["ab"]
    assert segment(f"a{char}b", remove_punctuation=False) == ["a", char, "b"]


@pytest.mark.parametrize("char", list(FULL_WIDTH_PUNCTUATION))
def test_kept_full_width_punctuation_is_its_own_segment(char):
    assert segment(f"北{char}京", remove_punctuation=False) == ["北", char, "京"]
    assert segment(f"北{char}京") == ["北", "京"]


@pytest.mark.parametrize("char", [".", ",", "(", ")", "!", "?", '"', "'", "‘", "%", "…"])
def test_characters_outside_the_set_are_kept(char):
    assert remove_punctuation(f"北{char}京") == f"北{char}京"


def test_ascii_period_comma_and_bracket_become_segments():
    # Not in the set, not Chinese: each is a one-character run that the tokenizer returns as one word.
    assert segment("北.京") == ["北", ".", "京"]
    assert segment("北,京") == ["北", ",", "京"]
    assert segment("北(京") == ["北", "(", "京"]


def test_two_character_ellipsis_never_matches_a_single_character():
    # "……" sits in the set, but membership is tested per character and "…" alone is not in it.
    assert "……" in PUNCTUATION and "…" not in PUNCTUATION
    assert remove_punctuation("等等……") == "等等……"
    assert segment("好……") == ["好", "……"]
    assert exact_match("北京……", ["北京"]) == 0.0


# --- segmentation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("北京大学", ["北", "京", "大", "学"]),
        ("Barack Obama", ["barack", "obama"]),
        ("iPhone手机", ["iphone", "手", "机"]),
        ("约3.5公里", ["约", "3.5", "公", "里"]),
        ("1990年", ["1990", "年"]),
        ("2019-01-02", ["20190102"]),  # the hyphens are skipped inside one run
        ("U.S. Army", ["u.s.", "army"]),
        ("U.S.总统", ["u.s", ".", "总", "统"]),  # Treebank splits the period that ends a run
        ("hello, world", ["hello", ",", "world"]),
        ("迈克尔·乔丹", ["迈", "克", "尔", "乔", "丹"]),
        ("中 国", ["中", "国"]),  # a run of spaces yields no word
        ("   ", []),
        ("", []),
    ],
)
def test_segment(text, expected):
    assert segment(text) == expected


def test_segment_keeping_punctuation_splits_english_runs_at_it():
    assert segment("2019-01-02", remove_punctuation=False) == ["2019", "-", "01", "-", "02"]
    assert segment("《红楼梦》", remove_punctuation=False) == ["《", "红", "楼", "梦", "》"]


def test_chinese_range_ends_at_u9fa5():
    # U+9FA5 is the last character of the official range; U+9FA6 joins a run like a Latin letter.
    assert segment("\u9fa5\u9fa5") == ["\u9fa5", "\u9fa5"]
    assert segment("\u9fa6\u9fa6") == ["\u9fa6\u9fa6"]


def test_known_deviation_inner_sentence_period_stays_attached():
    # word_tokenize would let Punkt end a sentence after "went." and give "went", "."; we document the difference.
    assert segment("went. then") == ["went.", "then"]


def test_english_words_need_no_nltk_data(monkeypatch):
    def no_data(*args, **kwargs):
        raise LookupError("nltk data must not be needed")

    monkeypatch.setattr(nltk.data, "find", no_data)
    monkeypatch.setattr(nltk.data, "load", no_data)
    # A run seen by no other test, so the word cache cannot answer for the tokenizer.
    assert segment("Data-free tokenizer works, doesn't it?") == [
        "datafree",
        "tokenizer",
        "works",
        ",",
        "does",
        "n't",
        "it",
        "?",
    ]


# --- F1 and EM -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("北京大学", ["北京大学"], 1.0),
        # Only one of 北/大 counts (run 1): P = 1/2, R = 1/4, F1 = 2(1/8)/(3/4) = 1/3.
        ("北大", ["北京大学"], 1 / 3),
        # Run 京大学 = 3: P = 3/4, R = 3/4, F1 = 3/4.
        ("京大学生", ["北京大学"], 3 / 4),
        # Max over references: 上海 gives 0; 北京大学 gives run 2, P = 1, R = 1/2, F1 = 2/3.
        ("北京", ["上海", "北京大学"], 2 / 3),
        ("北京", ["北京大学", "上海"], 2 / 3),
        # English words are whole segments: run 1, P = 1, R = 1/2, F1 = 2/3.
        ("Obama", ["Barack Obama"], 2 / 3),
        ("199", ["1990年"], 0.0),
        ("《红楼梦》", ["红楼梦"], 1.0),
        # "." is not punctuation here, so it is a third prediction segment: P = 2/3, R = 1, F1 = 4/5.
        ("北京.", ["北京"], 4 / 5),
        ("  OBAMA ", ["obama"], 1.0),
        ("", ["北京"], 0.0),
        ("", [""], 0.0),  # an empty run scores 0, even against an empty reference
    ],
)
def test_f1_score(prediction, references, expected):
    assert f1_score(prediction, references) == pytest.approx(expected)


def test_f1_credits_contiguous_runs_not_bags_of_tokens():
    # SQuAD's bag-of-tokens F1 would count both 北 and 大: P = 1, R = 2/4, F1 = 2/3.
    squad_style = 2 / 3
    assert f1_score("北大", ["北京大学"]) < squad_style


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        (" 北京大学。", ["北京大学"], 1.0),
        ("北京", ["北京大学"], 0.0),
        ("上海", ["北京", "上海"], 1.0),
        ("New York", ["new york"], 1.0),
        ("New York", ["New-York"], 0.0),  # EM keeps the space: "new york" != "newyork"
        ("New York", ["new york!"], 0.0),  # ASCII "!" is not in the set
        ("", [""], 1.0),
        ("。", [""], 1.0),
    ],
)
def test_exact_match(prediction, references, expected):
    assert exact_match(prediction, references) == expected


def test_scores_need_a_reference():
    with pytest.raises(ValueError):
        f1_score("北京", [])
    with pytest.raises(ValueError):
        exact_match("北京", [])


# --- corpus scores -------------------------------------------------------------------------------------------------


def test_corpus_scores_with_a_missing_and_an_extra_prediction(caplog):
    references = {"q1": ["北京大学"], "q2": ["北京", "上海"], "q3": ["1990年"]}
    predictions = {"q1": "北大", "q2": "上海", "unknown": "北京"}
    with caplog.at_level(logging.INFO, logger="qa_lib.metric"):
        scores = corpus_scores(references, predictions)
    # q1: EM 0, F1 1/3; q2: EM 1, F1 1; q3 skipped: 0 and 0.
    # EM = 100 (1/3), F1 = 100 (4/3)/3 = 400/9, AVERAGE = (300/9 + 400/9)/2 = 350/9.
    assert list(scores) == ["AVERAGE", "F1", "EM", "TOTAL", "SKIP"]
    assert scores == pytest.approx({"AVERAGE": 350 / 9, "F1": 400 / 9, "EM": 100 / 3, "TOTAL": 3, "SKIP": 1})
    assert "1 predictions are for ids not in the gold file" in caplog.text
    assert "1 of 3 questions have no prediction" in caplog.text


def test_corpus_scores_without_predictions_is_zero():
    assert corpus_scores({"q1": ["北京"]}, {}) == {"AVERAGE": 0.0, "F1": 0.0, "EM": 0.0, "TOTAL": 1, "SKIP": 1}


def test_corpus_scores_needs_questions():
    with pytest.raises(ValueError):
        corpus_scores({}, {"q1": "北京"})


# --- files ---------------------------------------------------------------------------------------------------------


def _gold_document() -> dict:
    return {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "北京是首都，建于1990年。",
                        "qas": [
                            {
                                "id": "A_0",
                                "question": "首都是哪里？",
                                "answers": [
                                    {"text": "北京", "answer_start": 0},
                                    # not in the context, answer_start -1: still a reference text of the gold
                                    {"text": "北京大学", "answer_start": -1},
                                ],
                            },
                            {"id": "A_1", "question": "哪一年？", "answers": [{"text": "1990年", "answer_start": 8}]},
                        ],
                    }
                ]
            },
            {
                "paragraphs": [
                    {"context": "无题。", "qas": []},
                    {
                        "context": "他去了上海。",
                        "qas": [
                            {"id": "B_0", "question": "去了哪里？", "answers": [{"text": "上海", "answer_start": 3}]}
                        ],
                    },
                ]
            },
        ]
    }


def _write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def test_gold_keeps_every_text_in_file_order(tmp_path):
    examples, _ = load_squad(_write_json(tmp_path / "gold.json", _gold_document()), drop_unanswered=False)
    references = references_of(examples)
    assert list(references.items()) == [("A_0", ["北京", "北京大学"]), ("A_1", ["1990年"]), ("B_0", ["上海"])]


def _drop_data(document):
    del document["data"]


def _drop_paragraphs(document):
    del document["data"][1]["paragraphs"]


def _drop_id(document):
    del document["data"][0]["paragraphs"][0]["qas"][1]["id"]


def _drop_answers(document):
    del document["data"][0]["paragraphs"][0]["qas"][1]["answers"]


def _empty_answers(document):
    document["data"][1]["paragraphs"][1]["qas"][0]["answers"] = []


def _number_text(document):
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"][1]["text"] = 1990


def _duplicate_id(document):
    document["data"][1]["paragraphs"][1]["qas"][0]["id"] = "A_0"


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (_drop_data, ["missing field 'data'"]),
        (_drop_paragraphs, ["article 1", "'paragraphs'"]),
        (_drop_id, ["article 0 paragraph 0 qas 1", "'id'"]),
        (_drop_answers, ["record A_1", "'answers'"]),
        (_empty_answers, ["record B_0", "'answers'", "empty"]),
        (_number_text, ["record A_0 answer 1", "'text'", "int"]),
        (_duplicate_id, ["record A_0", "not unique"]),
    ],
)
def test_gold_file_errors_name_file_record_and_field(tmp_path, damage, fragments):
    document = _gold_document()
    damage(document)
    path = _write_json(tmp_path / "gold.json", document)
    predictions = _write_json(tmp_path / "preds.json", {"A_0": "北京"})
    with pytest.raises(DataFormatError) as error:
        evaluate_files(path, predictions)
    for fragment in [str(path), *fragments]:
        assert fragment in str(error.value)


def test_malformed_json_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        read_predictions(path)
    with pytest.raises(ValueError, match="broken.json"):
        evaluate_files(path, path)


def test_read_predictions_rejects_non_string_answers_and_non_objects(tmp_path):
    with pytest.raises(DataFormatError, match=r"preds.json: question 'A_1': answer should be str, got int"):
        read_predictions(_write_json(tmp_path / "preds.json", {"A_0": "北京", "A_1": 1990}))
    with pytest.raises(DataFormatError, match="list.json: expected a JSON object"):
        read_predictions(_write_json(tmp_path / "list.json", ["北京"]))


def test_evaluate_files(tmp_path):
    gold = _write_json(tmp_path / "gold.json", _gold_document())
    predictions = _write_json(tmp_path / "preds.json", {"A_0": "北京大学", "B_0": "上海市", "extra": "x"})
    # A_0: EM 1, F1 1 (second reference). A_1 skipped. B_0 vs 上海: run 2, P = 2/3, R = 1, F1 = 4/5, EM 0.
    # EM = 100/3, F1 = 100 (9/5)/3 = 60, AVERAGE = (100/3 + 60)/2 = 140/3.
    assert evaluate_files(gold, predictions) == pytest.approx(
        {"AVERAGE": 140 / 3, "F1": 60.0, "EM": 100 / 3, "TOTAL": 3, "SKIP": 1}
    )


# --- real data -----------------------------------------------------------------------------------------------------


def test_dev_set_scored_against_its_first_references(cmrc_dir, tmp_path):
    gold = cmrc_dir / "cmrc2018_dev.json"
    examples, report = load_squad(gold, drop_unanswered=False)
    references = references_of(examples)
    # All 9,657 references count, also the 193 that loading cannot place in their context (answer_start -1).
    assert report.dropped_references == 193
    assert sum(len(texts) for texts in references.values()) == report.references == 9657

    first = {question_id: texts[0] for question_id, texts in references.items()}
    scores = evaluate_files(gold, _write_json(tmp_path / "first.json", first))
    assert scores == {"AVERAGE": 100.0, "F1": 100.0, "EM": 100.0, "TOTAL": 3219, "SKIP": 0}

    kept = dict(list(first.items())[::2])
    half = evaluate_files(gold, _write_json(tmp_path / "half.json", kept))
    # Every kept prediction scores 1, every removed question 0.
    assert half["SKIP"] == len(first) - len(kept)
    assert half["EM"] == pytest.approx(100 * len(kept) / 3219)
    assert half["F1"] == pytest.approx(100 * len(kept) / 3219)
