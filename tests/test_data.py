import json
import sys
import types

import pytest

from qa_lib.data import (
    DataFormatError,
    DataUnavailable,
    cmrc_file,
    cmrc_json,
    cmrc_splits,
    examples_from_squad,
    load_squad,
    nearest_occurrence,
    references_of,
    resolve_data,
    write_json_atomically,
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
        (lambda d: d["data"][0]["paragraphs"][0].update(context="  "), "paragraph 0: field 'context' is empty"),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"].append(qa("x", "q2", ("甲", 0))),
            "record x: field 'id' is not unique (article 0 paragraph 0 qas 0 and article 0 paragraph 0 qas 1)",
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


def test_out_of_range_and_negative_starts_are_repaired_and_counted():
    context = "甲乙丙丁"
    data = squad(paragraph(context, qa("far", "q", ("丙", 99)), qa("neg", "q", ("乙", -5)), qa("ok", "q", ("丁", 3))))
    examples, report = examples_from_squad(data)
    assert [(e.id, e.answers[0].start) for e in examples] == [("far", 2), ("neg", 1), ("ok", 3)]
    assert report.repaired_out_of_range == 2 and report.repaired_misaligned == 0
    assert "out of range: 2" in report.summary()


def test_empty_reference_texts_are_dropped_and_counted_but_stay_in_the_gold():
    data = squad(paragraph("甲乙丙", qa("x", "q", ("", 0), ("乙", 1))))
    examples, report = examples_from_squad(data)
    assert [a.text for a in examples[0].answers] == ["乙"]
    assert report.dropped_references == 1 and "empty text" in report.events[0]
    assert references_of(examples) == {"x": ["", "乙"]}


def test_questions_without_a_usable_reference_are_kept_for_scoring_when_asked():
    data = squad(paragraph("甲乙丙", qa("lost", "q", ("丁", 0)), qa("kept", "q", ("乙", 1))))
    training, dropped = examples_from_squad(data)
    scoring, kept = examples_from_squad(data, drop_unanswered=False)
    assert [e.id for e in training] == ["kept"] and dropped.dropped_questions == 1
    assert [e.id for e in scoring] == ["lost", "kept"] and kept.unanswered_questions == 1
    assert scoring[0].answers == () and references_of(scoring)["lost"] == ["丁"]


def test_a_file_to_predict_may_lack_answers_but_a_training_file_may_not():
    data = squad(paragraph("甲乙", {"id": "x", "question": "q"}))
    examples, report = examples_from_squad(data, drop_unanswered=False)
    assert [(e.id, e.answers, e.gold) for e in examples] == [("x", (), ())] and report.unanswered_questions == 1
    with pytest.raises(DataFormatError, match="record x: missing field 'answers'"):
        examples_from_squad(data)


def test_empty_questions_are_kept_and_counted():
    examples, report = examples_from_squad(squad(paragraph("甲乙", qa("x", " ", ("乙", 1)), qa("y", "q", ("甲", 0)))))
    assert [e.id for e in examples] == ["x", "y"] and report.empty_questions == 1
    assert "kept 1 empty questions" in report.summary()


def test_ids_with_surrounding_spaces_are_stripped_and_counted():
    examples, report = examples_from_squad(squad(paragraph("甲乙", qa(" x ", "q", ("乙", 1)))))
    assert examples[0].id == "x" and report.stripped_ids == 1


def test_write_json_atomically_replaces_the_file_whole(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old", encoding="utf-8")
    write_json_atomically(path, {"问": "答"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"问": "答"}
    with pytest.raises(TypeError):
        write_json_atomically(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"问": "答"}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


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
    with pytest.raises(DataUnavailable, match=f"{tmp_path} holds no cmrc2018_<split>.json file"):
        cmrc_file("dev", tmp_path)
    with pytest.raises(DataUnavailable, match="folder does not exist"):
        cmrc_file("dev", tmp_path / "absent")


def write_split(folder, split):
    data = squad(paragraph("甲乙丙", qa(f"{split}-1", "q", ("乙", 1))))
    (folder / f"cmrc2018_{split}.json").write_text(json.dumps(data), encoding="utf-8")


def test_every_cmrc_file_in_the_folder_is_a_split_name(monkeypatch, tmp_path):
    for split in ("train", "dev", "my-sample"):
        write_split(tmp_path, split)
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv("QA_KIT_CMRC_DIR", str(tmp_path))
    assert cmrc_splits() == ["dev", "my-sample", "train"]
    assert resolve_data("train") == tmp_path / "cmrc2018_train.json"
    examples, _ = load_squad(resolve_data("my-sample"))
    assert [e.id for e in examples] == ["my-sample-1"]


def test_an_unknown_split_lists_the_folder_and_where_to_get_the_others(monkeypatch, tmp_path):
    write_split(tmp_path, "dev")
    monkeypatch.setenv("QA_KIT_CMRC_DIR", str(tmp_path))
    with pytest.raises(DataUnavailable) as error:
        resolve_data("train")
    message = str(error.value)
    assert f"train: no such split: {tmp_path} holds dev." in message
    assert "cmrc2018_train.json" in message and "github.com/ymcui/cmrc2018" in message


def test_a_path_is_a_file_and_never_a_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_split(tmp_path, "mine")
    assert resolve_data(str(tmp_path / "cmrc2018_mine.json")) == tmp_path / "cmrc2018_mine.json"
    with pytest.raises(DataFormatError, match="data: is a folder, not a data file"):
        resolve_data("data/")
    with pytest.raises(DataFormatError, match="absent.json: file not found"):
        resolve_data("absent.json")


def test_files_with_a_byte_order_mark_load_and_gbk_files_say_how_to_convert(tmp_path):
    data = squad(paragraph("北京是首都", qa("x", "首都？", ("北京", 0))))
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode("utf-8"))
    assert [e.id for e in load_squad(with_bom)[0]] == ["x"]
    gbk = tmp_path / "gbk.json"
    gbk.write_bytes(json.dumps(data, ensure_ascii=False).encode("gbk"))
    with pytest.raises(DataFormatError, match=r"gbk.json: not UTF-8 .*iconv -f GBK -t UTF-8"):
        load_squad(gbk)


def test_cmrc_json_reads_the_folder_and_fails_fast_offline_without_the_file(tmp_path, monkeypatch):
    data = squad(paragraph("北京是首都", qa("x", "首都？", ("北京", 0))))
    write_json_atomically(tmp_path / "cmrc2018_dev.json", data)
    assert cmrc_json("dev", tmp_path) == data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match=r"cmrc2018_train.json: missing.*HF_HUB_OFFLINE"):
        cmrc_json("train", tmp_path)
    assert not (tmp_path / "cmrc2018_train.json").exists()


def test_cmrc_json_downloads_a_split_in_the_official_format_and_saves_it(tmp_path, monkeypatch):
    row = {"id": "DEV_0_QUERY_0", "context": "北京是首都", "question": "首都？",
           "answers": {"text": ["北京", "北京"], "answer_start": [0, 0]}}  # fmt: skip
    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return [row]

    hub = types.ModuleType("datasets")
    hub.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", hub)
    monkeypatch.setattr("qa_lib.models.hub_is_offline", lambda: False)
    folder = tmp_path / "drive" / "cmrc2018"
    downloaded = cmrc_json("dev", folder)
    assert asked == [("cmrc2018", "validation")]
    assert json.loads((folder / "cmrc2018_dev.json").read_text(encoding="utf-8")) == downloaded
    (example,), report = examples_from_squad(downloaded)
    assert (example.id, example.context, example.question) == ("DEV_0_QUERY_0", "北京是首都", "首都？")
    assert example.gold == ("北京", "北京") and report.repaired == report.dropped_references == 0
    assert cmrc_json("dev", folder) == downloaded and len(asked) == 1  # read back, not downloaded again


def test_cmrc_dev_repairs_and_drops(cmrc_dir):
    examples, report = load_squad(cmrc_file("dev", cmrc_dir))
    assert report.questions == 3219 and report.references == 9657
    # 193 references have answer_start -1; none of their texts occurs in the context, so all are dropped.
    assert report.dropped_references == 193 and report.repaired_missing_start == 0
    assert report.repaired_misaligned == 7
    assert report.dropped_questions == 0 and len(examples) == 3219
    # The metric's gold keeps all 9,657 texts, the 193 dropped ones included, in file order.
    gold = references_of(examples)
    assert sum(len(texts) for texts in gold.values()) == 9657 and len(gold) == 3219
    assert all({a.text for a in e.answers} <= set(gold[e.id]) for e in examples)
    for example in examples:
        for answer in example.answers:
            assert example.context[answer.start : answer.end] == answer.text


def test_cmrc_trial_loads_every_question(cmrc_dir):
    examples, report = load_squad(cmrc_file("trial", cmrc_dir))
    assert len(examples) == 1002 and report.repaired_misaligned == 5 and report.dropped_references == 0
    assert report.empty_questions == 2  # TRIAL_20_QUERY_0 and TRIAL_776_QUERY_4
