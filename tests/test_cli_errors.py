"""The table of bad inputs: every `qa-kit` command answers a user's mistake with one line on stderr that names the
file and the problem, exit status 2, no traceback and no output written.

Each case is ``(arguments, expected message fragment)``; ``{name}`` in either is a file of the ``inputs``
fixture, ``{out}`` the output folder, which must not exist afterwards. ``QA_KIT_CMRC_DIR`` names a data folder
holding only ``cmrc2018_dev.json``, except in the cases of ``CMRC_FOLDER_CASES``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qa_lib.cli import main
from qa_lib.data import DataFormatError
from qa_lib.models import build_offline_tokenizer


def squad_document(*questions, context="北京是中国的首都，上海是中国最大的城市。"):
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": list(questions)}]}]}


def question(question_id, text="北京", start=0):
    return {"id": question_id, "question": "哪里？", "answers": [{"text": text, "answer_start": start}]}


def two_contexts():
    document = squad_document(question("a"))
    document["data"].append(squad_document(question("b", "上海", 2), context="他去了上海。")["data"][0])
    return document


def write(path, value, encoding="utf-8"):
    path.write_bytes(json.dumps(value, ensure_ascii=False).encode(encoding))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    cmrc = folder / "cmrc"
    cmrc.mkdir()
    write(cmrc / "cmrc2018_dev.json", two_contexts())
    files = {
        "good": write(folder / "good.json", two_contexts()),
        "gbk": write(folder / "gbk.json", two_contexts(), "gbk"),
        "gbk_predictions": write(folder / "gbk_predictions.json", {"a": "北京"}, "gbk"),
        "list": write(folder / "list.json", ["北京"]),
        "number_answer": write(folder / "number_answer.json", {"a": 1990}),
        "no_data": write(folder / "no_data.json", {"version": "v1"}),
        "empty_answers": write(folder / "empty_answers.json", squad_document({**question("a"), "answers": []})),
        "duplicate": write(folder / "duplicate.json", squad_document(question("a"), question("a"))),
        "string_start": write(
            folder / "string_start.json",
            squad_document({**question("a"), "answers": [{"text": "北京", "answer_start": "0"}]}),
        ),  # fmt: skip
        "one_context": write(folder / "one_context.json", squad_document(question("a"), question("b", "上海", 9))),
        "folder": folder,
        "missing": folder / "missing.json",
        "cmrc": cmrc,
    }
    files["broken"] = folder / "broken.json"
    files["broken"].write_text('{"a": ', encoding="utf-8")
    files["no_weights"] = folder / "no_weights"
    build_offline_tokenizer().save_pretrained(files["no_weights"])
    files["a_file"] = folder / "a_file"
    files["a_file"].write_text("not a folder", encoding="utf-8")
    return files


@pytest.fixture()
def refused(inputs, tmp_path, monkeypatch, capsys):
    """Run one case and check the contract: exit 2, one stderr line naming the problem, nothing written."""

    def check(arguments, expected, cmrc_dir=inputs["cmrc"]):
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("QA_KIT_CMRC_DIR", raising=False)
        if cmrc_dir is not None:
            monkeypatch.setenv("QA_KIT_CMRC_DIR", str(cmrc_dir))
        out = tmp_path / "out"
        names = {key: str(value) for key, value in inputs.items()} | {"out": str(out)}
        argv = [argument.format(**names) for argument in arguments]
        assert main(argv) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"qa-kit {argv[0]}: "), captured.err
        assert expected.format(**names) in lines[0]
        assert captured.out == ""
        assert not out.exists(), sorted(out.rglob("*"))

    return check


EVALUATE_CASES = {
    "missing predictions": (["{good}", "{missing}"], "{missing}: file not found"),
    "missing gold": (["{missing}", "{good}"], "{missing}: file not found"),
    "folder as predictions": (["{good}", "{folder}"], "{folder}: is a folder, not a file"),
    "folder as gold": (["{folder}", "{good}"], "{folder}: is a folder, not a data file"),
    "GBK predictions": (["{good}", "{gbk_predictions}"], "{gbk_predictions}: not UTF-8"),
    "GBK gold": (["{gbk}", "{good}"], "iconv -f GBK -t UTF-8"),
    "predictions a list": (["{good}", "{list}"], "{list}: expected a JSON object"),
    "predictions broken JSON": (["{good}", "{broken}"], "{broken}: not valid JSON"),
    "answer not a string": (["{good}", "{number_answer}"], "question 'a': answer should be str, got int"),
    "gold without data": (["{no_data}", "{good}"], "{no_data}: missing field 'data'"),
    "gold without answers": (["{empty_answers}", "{good}"], "record a: field 'answers' is missing or empty"),
    "unknown split": (["train", "{good}"], "train: no such split: {cmrc} holds dev."),
}


@pytest.mark.parametrize("arguments, expected", EVALUATE_CASES.values(), ids=EVALUATE_CASES)
def test_evaluate_refuses_bad_input_in_one_line(arguments, expected, refused):
    refused(["evaluate", *arguments], expected)


# QA_KIT_CMRC_DIR itself wrong: the same message from every command that takes a split name.
CMRC_FOLDER_CASES = {
    "evaluate, folder unset": (None, ["evaluate", "dev", "{good}"], "set QA_KIT_CMRC_DIR"),
    "train, folder missing": ("no-such-folder", ["train", "--train", "dev"], "no-such-folder: folder does not exist"),
    "predict, folder unset": (None, ["predict", "--model", "offline-tiny", "--data", "dev"], "set QA_KIT_CMRC_DIR"),
    "pretrain-mlm, folder missing": ("no-such-folder", ["pretrain-mlm", "--data", "dev"], "folder does not exist"),
}


@pytest.mark.parametrize("folder, arguments, expected", CMRC_FOLDER_CASES.values(), ids=CMRC_FOLDER_CASES)
def test_split_names_need_an_existing_data_folder(folder, arguments, expected, refused, tmp_path):
    argv = [arguments[0], *(["--output-dir", "{out}"] if arguments[0] != "evaluate" else []), *arguments[1:]]
    refused(argv, expected, cmrc_dir=folder and tmp_path / folder)


TRAIN_CASES = {
    "missing training file": (["--train", "{missing}"], "{missing}: file not found"),
    "unknown split": (["--train", "train"], "train: no such split: {cmrc} holds dev. Put cmrc2018_train.json"),
    "folder as training file": (["--train", "{folder}"], "{folder}: is a folder, not a data file"),
    "GBK training file": (["--train", "{gbk}"], "{gbk}: not UTF-8"),
    "missing evaluation file": (["--train", "dev", "--eval", "{missing}"], "{missing}: file not found"),
    "unknown preset": (["--train", "dev", "--preset", "nope"], "--preset nope: no such preset"),
    "hub name offline": (["--train", "dev", "--model", "bert-base-chinese"], "'offline-tiny'"),
    "model folder without weights": (["--train", "dev", "--model", "{no_weights}"], "no file named model.safetensors"),
    "duplicate question ids": (["--train", "{duplicate}"], "record a: field 'id' is not unique"),
    "answer_start a string": (["--train", "{string_start}"], "record a answer 0: field 'answer_start' should be int"),
}


@pytest.mark.parametrize("arguments, expected", TRAIN_CASES.values(), ids=TRAIN_CASES)
def test_train_refuses_bad_input_in_one_line(arguments, expected, refused):
    argv = ["train", "--preset", "smoke", "--output-dir", "{out}", *arguments]
    refused(argv, expected)


PREDICT_CASES = {
    "missing data file": (["--model", "offline-tiny", "--data", "{missing}"], "{missing}: file not found"),
    "unknown split": (["--model", "offline-tiny", "--data", "test"], "test: no such split"),
    "GBK data file": (["--model", "offline-tiny", "--data", "{gbk}"], "{gbk}: not UTF-8"),
    "model folder without weights": (["--model", "{no_weights}", "--data", "dev"], "no file named model.safetensors"),
    "model folder that does not exist": (["--model", "runs/none", "--data", "dev"], "nor is there a folder runs/none"),
    "neither data nor question": (["--model", "offline-tiny"], "give either --data FILE or --question"),
    "question without context": (["--model", "offline-tiny", "--question", "谁？"], "--question needs --context"),
}


@pytest.mark.parametrize("arguments, expected", PREDICT_CASES.values(), ids=PREDICT_CASES)
def test_predict_refuses_bad_input_in_one_line(arguments, expected, refused):
    refused(["predict", "--output-dir", "{out}", *arguments], expected)


def test_predict_into_a_file_instead_of_a_folder_leaves_the_file_alone(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "taken"
    target.write_text("keep me", encoding="utf-8")
    argv = ["predict", "--model", "offline-tiny", "--data", str(inputs["good"]), "--output-dir", str(target)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"qa-kit predict: {target}: File exists"
    assert target.read_text(encoding="utf-8") == "keep me" and [p.name for p in tmp_path.iterdir()] == ["taken"]


PRETRAIN_CASES = {
    "missing data file": (["--data", "{missing}"], "{missing}: file not found"),
    "unknown split": (["--data", "train"], "train: no such split: {cmrc} holds dev."),
    "folder as data file": (["--data", "{folder}"], "{folder}: is a folder, not a data file"),
    "a single context": (["--data", "{one_context}"], "{one_context}: need at least 2 distinct texts"),
    "hub name offline": (["--data", "dev", "--model", "bert-base-chinese"], "'offline-tiny'"),
}


@pytest.mark.parametrize("arguments, expected", PRETRAIN_CASES.values(), ids=PRETRAIN_CASES)
def test_pretrain_mlm_refuses_bad_input_in_one_line(arguments, expected, refused):
    argv = ["pretrain-mlm", "--max-steps", "1", "--output-dir", "{out}", *arguments]
    refused(argv, expected)


CHECK_CASES = {
    "missing notebook": (["{missing}"], "{missing}: notebook not found"),
    "folder as notebook": (["{folder}"], "{folder}: is a folder, not a notebook"),
}


@pytest.mark.parametrize("arguments, expected", CHECK_CASES.values(), ids=CHECK_CASES)
def test_check_refuses_bad_input_in_one_line(arguments, expected, refused):
    refused(["check", *arguments], expected)


def test_predictions_with_a_byte_order_mark_are_read(inputs, tmp_path, capsys):
    predictions = tmp_path / "bom.json"
    predictions.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "北京", "b": "上海"}).encode("utf-8"))
    assert main(["evaluate", str(inputs["good"]), str(predictions)]) == 0
    assert json.loads(capsys.readouterr().out)["EM"] == 100.0


def test_debug_shows_the_traceback_of_a_user_mistake(inputs):
    with pytest.raises(DataFormatError, match="file not found"):
        main(["--debug", "evaluate", str(inputs["good"]), str(inputs["missing"])])


def test_the_real_command_exits_2_with_one_line_and_no_traceback(inputs):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run(
        [sys.executable, "-m", "qa_lib.cli", "evaluate", str(inputs["missing"]), str(inputs["good"])],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == f"qa-kit evaluate: {inputs['missing']}: file not found\n"


def test_leaving_runs_the_exit_handlers_and_flushes_the_output():
    """``qa-kit`` skips Python's teardown of its modules, not its exit handlers (temporary folders, servers)."""
    script = "import atexit\nfrom qa_lib.cli import leave\natexit.register(print, 'handler ran')\n"
    script += "print('out')\nleave(3)"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert (completed.returncode, completed.stdout) == (3, "out\nhandler ran\n")
