import json

import pytest

from qa_lib.cli import main
from qa_lib.course.synthetic import generate_squad
from qa_lib.data import QAExample, examples_from_squad
from qa_lib.features import prepare_eval_features
from qa_lib.models import load_qa_model
from qa_lib.predict import answer, predict_examples
from qa_lib.training import preset, same_seeds


@pytest.fixture(scope="module")
def tiny_model(offline_tokenizer):
    same_seeds(0)
    return load_qa_model("offline-tiny", offline_tokenizer, **preset("smoke").model_overrides)


@pytest.mark.parametrize("repeat", [1, 40])
def test_answer_lies_inside_the_context_for_short_and_long_contexts(tiny_model, offline_tokenizer, repeat):
    context = "北京是中华人民共和国的首都，位于华北平原的北部。" * repeat
    result = answer(
        "中国的首都是哪里？", context, tiny_model, offline_tokenizer, top_k=3, max_length=128, doc_stride=32
    )
    assert 0 <= result["start"] <= result["end"] <= len(context)
    assert result["text"] == context[result["start"] : result["end"]] and result["text"]
    assert 1 <= len(result["nbest"]) <= 3
    assert [c["score"] for c in result["nbest"]] == sorted((c["score"] for c in result["nbest"]), reverse=True)


def test_a_long_context_goes_through_the_model_a_batch_of_windows_at_a_time(tiny_model, offline_tokenizer):
    context = "北京是中华人民共和国的首都，位于华北平原的北部。" * 200  # 4,800 characters
    question = "中国的首都是哪里？"
    example = QAExample("q", "", context, question, answers=())
    windows = len(prepare_eval_features(offline_tokenizer, [example], 128, 32)["input_ids"])
    batch_sizes = []
    hook = tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        result = answer(question, context, tiny_model, offline_tokenizer, max_length=128, doc_stride=32, batch_size=4)
    finally:
        hook.remove()
    assert windows > 40 and max(batch_sizes) == 4
    assert sum(batch_sizes) == windows and len(batch_sizes) == -(-windows // 4)
    assert result["text"] == context[result["start"] : result["end"]] and result["text"]


def test_answer_refuses_the_batch_of_two_texts_mistake(tiny_model, offline_tokenizer):
    with pytest.raises(TypeError, match="two arguments"):
        answer(["北京是首都。", "首都是哪里？"], "北京是首都。", tiny_model, offline_tokenizer)


def test_truncation_only_sees_the_first_window(tiny_model, offline_tokenizer):
    examples, _ = examples_from_squad(generate_squad(3, seed=5))
    windows, _ = predict_examples(tiny_model, offline_tokenizer, examples, 128, 32)
    truncated, nbest = predict_examples(tiny_model, offline_tokenizer, examples, 128, 32, first_window_only=True)
    assert set(windows) == set(truncated) == {e.id for e in examples}
    for example in examples:
        for candidate in nbest[example.id]:
            assert candidate.end_char <= len(example.context[:400])  # 128 tokens reach at most ~120 characters


@pytest.fixture()
def squad_file(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(generate_squad(4, seed=3), ensure_ascii=False), encoding="utf-8")
    return path


def last_json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_train_predict_evaluate_end_to_end(squad_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "smoke",
                "--train",
                str(squad_file),
                "--eval",
                str(squad_file),
                "--output-dir",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    trained = last_json_line(capsys)
    assert trained["em"] is not None and (out / "final" / "model.safetensors").is_file()
    assert (
        main(["predict", "--model", str(out / "final"), "--data", str(squad_file), "--output-dir", str(tmp_path / "p")])
        == 0
    )
    predictions = json.loads((tmp_path / "p" / "predictions.json").read_text(encoding="utf-8"))
    assert len(predictions) == 24 and (tmp_path / "p" / "nbest_predictions.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(squad_file), str(tmp_path / "p" / "predictions.json")]) == 0
    scores = last_json_line(capsys)
    assert scores["TOTAL"] == 24 and scores["SKIP"] == 0 and 0 <= scores["EM"] <= 100
    assert (
        main(["predict", "--model", str(out / "final"), "--question", "谁？", "--context", "张伟是老师。", "--json"])
        == 0
    )
    assert last_json_line(capsys)["text"]


def test_cli_train_without_eval_says_it_did_not_evaluate(squad_file, tmp_path, capsys):
    argv = ["train", "--preset", "smoke", "--train", str(squad_file), "--max-steps", "1", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    assert (
        capsys.readouterr().out.strip().endswith(f"model saved to {tmp_path / 'final'}; not evaluated (no --eval file)")
    )


def test_cli_errors_are_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["evaluate", str(tmp_path / "missing.json"), str(tmp_path / "p.json")]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err
    assert main(["predict", "--model", "bert-base-chinese", "--question", "q", "--context", "c"]) == 2
    assert "offline-tiny" in capsys.readouterr().err
    monkeypatch.delenv("QA_KIT_CMRC_DIR", raising=False)
    assert main(["train", "--train", "trial"]) == 2
    assert "QA_KIT_CMRC_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])


def test_cli_pretrain_mlm_ends_with_a_json_line(squad_file, tmp_path, capsys):
    args = [
        "pretrain-mlm",
        "--data",
        str(squad_file),
        "--max-steps",
        "4",
        "--output-dir",
        str(tmp_path / "mlm"),
        "--json",
    ]
    assert main(args) == 0
    result = last_json_line(capsys)
    assert {"loss_first", "loss_last", "masking", "seconds"} <= set(result) and result["masking"] == "wwm"


def test_cli_quick_demo_reports_windows_truncation_and_grades(tmp_path, capsys, caplog):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "demo"), "--json"]) == 0
    result = last_json_line(capsys)
    assert {"em_windows", "f1_windows", "em_truncation", "f1_truncation", "seconds"} <= set(result)
    assert result["oracle_em"] > 99 and (tmp_path / "demo" / "learning_curves.png").is_file()
    grades = result["grading"]["students"]
    assert all(g["score"] == g["max_score"] > 0 for g in grades["solution"].values())
    assert all(g["score"] == 0 for g in grades["blank"].values())
    assert not [r for r in caplog.records if r.name == "traitlets" and r.levelname == "WARNING"]
