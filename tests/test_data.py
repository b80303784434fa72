import json

import pytest

from qa_lib.data import (
    DataFormatError,
    DataUnavailable,
    cmrc_file,
    examples_from_squad,
    load_hub_split,
    load_squad,
    nearest_occurrence,
)


def squad(*paragraphs, title="t"):
    return {"data": [{"title": title, "paragraphs": list(paragraphs)}]}


def paragraph(context, *qas):
    return {"context": context, "qas": list(qas)}


def qa(qid, question, *answers):
    return {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers]}


def test_reads_every_paragraph_of_every_article():
    data = {
        "data": [
            {
                "title": "a",
                "paragraphs": [
                    paragraph("甲乙丙", qa("1", "q", ("乙", 1))),
                    paragraph("丁戊", qa("2", "q", ("戊", 1))),
                ],
            },
            {"title": "b", "paragraphs": [paragraph("己庚", qa("3", "q", ("己", 0)), qa("4", "q", ("庚", 1)))]},
        ]
    }
    examples, report = examples_from_squad(data)
    assert [e.id for e in examples] == ["1", "2", "3", "4"]
    assert examples[1].context == "丁戊" and examples[2].title == "b"
    assert report.questions == 4 and report.repaired == 0 and report.dropped_references == 0


def test_nearest_occurrence_picks_the_closest_copy():
    assert nearest_occurrence("ab ab ab", "ab", 4) == 3
    assert nearest_occurrence("ab ab ab", "ab", 0) == 0
    assert nearest_occurrence("abc", "x", 1) == -1


def test_repairs_minus_one_and_misaligned_starts_and_counts_them():
    data = squad(
        paragraph("北京是首都，北京很大", qa("m", "q", ("北京很大", -1)), qa("w", "q", ("北京", 5), ("首都", 3)))
    )
    examples, report = examples_from_squad(data)
    assert examples[0].answers[0].start == 6
    assert examples[1].answers[0].start == 6  # nearest copy of 北京 to the wrong start 5
    assert examples[1].answers[1].start == 3
    assert (report.repaired_missing_start, report.repaired_misaligned) == (1, 1)
    assert len(report.events) == 2


def test_drops_references_not_in_context_and_questions_left_without_answers():
    data = squad(paragraph("甲乙丙", qa("keep", "q", ("乙", 1), ("不在", -1)), qa("gone", "q", ("丁", 0))))
    examples, report = examples_from_squad(data)
    assert [e.id for e in examples] == ["keep"]
    assert [a.text for a in examples[0].answers] == ["乙"]
    assert report.dropped_references == 2 and report.dropped_questions == 1
    assert "dropped" in report.summary()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.pop("data"), "missing field 'data'"),
        (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "article 0 paragraph 0: missing field 'context'"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), "record x: missing field 'question'"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("id"), "qas 0: missing field 'id'"),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="1"),
            "record x answer 0: field 'answer_start' should be int",
        ),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, mutate, expected):
    data = squad(paragraph("甲乙", qa("x", "q", ("乙", 1))))
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataFormatError) as error:
        load_squad(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataFormatError, match="broken.json: not valid JSON"):
        load_squad(path)
    with pytest.raises(DataFormatError, match="file not found"):
        load_squad(tmp_path / "nope.json")


def test_cmrc_file_needs_the_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("QA_KIT_CMRC_DIR", raising=False)
    with pytest.raises(DataUnavailable, match="QA_KIT_CMRC_DIR"):
        cmrc_file("dev")
    with pytest.raises(DataUnavailable, match="does not exist"):
        cmrc_file("dev", tmp_path)


def test_hub_loading_fails_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match="QA_KIT_CMRC_DIR"):
        load_hub_split("cmrc2018", "validation")


def test_cmrc_dev_repairs_and_drops(cmrc_dir):
    examples, report = load_squad(cmrc_file("dev", cmrc_dir))
    assert report.questions == 3219 and report.references == 9657
    # 193 references have answer_start -1; none of their texts occurs in the context, so all are dropped.
    assert report.dropped_references == 193 and report.repaired_missing_start == 0
    assert report.repaired_misaligned == 7
    assert report.dropped_questions == 0 and len(examples) == 3219
    for example in examples:
        for answer in example.answers:
            assert example.context[answer.start : answer.end] == answer.text


def test_cmrc_trial_loads_every_question(cmrc_dir):
    examples, report = load_squad(cmrc_file("trial", cmrc_dir))
    assert len(examples) == 1002 and report.repaired_misaligned == 5 and report.dropped_references == 0
