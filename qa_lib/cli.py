"""The ``qa-kit`` command: evaluate, train, predict, demo (and the notebook/wwm tools).

Every sub-command prints a clear one-line error (exit status 2) for missing files and for model
names that cannot be loaded offline, instead of a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

DATA_SPLITS = ("train", "trial", "dev")


def resolve_data(name: str) -> Path:
    """``train``/``trial``/``dev`` mean the CMRC 2018 files in QA_KIT_CMRC_DIR; anything else is a path."""
    from .data import DataFormatError, cmrc_file

    if name in DATA_SPLITS:
        return cmrc_file(name)
    path = Path(name)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    return path


def load_model_and_tokenizer(name: str, config_overrides: dict | None = None):
    from .models import load_qa_model, load_tokenizer

    tokenizer = load_tokenizer(name)
    return load_qa_model(name, tokenizer, **(config_overrides or {})), tokenizer


def command_evaluate(args) -> dict:
    from .metric import evaluate_files

    scores = evaluate_files(resolve_data(args.gold), args.predictions)
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in scores.items()}


def command_train(args) -> dict:
    from .data import load_squad
    from .metric import read_references
    from .models import save_model_folder
    from .training import preset, same_seeds, train_qa

    given = {
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    config = preset(args.preset, **({"model": args.model} if args.model else {}), **overrides)
    train_examples, _ = load_squad(resolve_data(args.train))  # load_squad logs its own summary
    eval_examples = references = None
    if args.eval:
        eval_path = resolve_data(args.eval)
        eval_examples, _ = load_squad(eval_path)
        references = read_references(eval_path)
    same_seeds(config.seed)
    model, tokenizer = load_model_and_tokenizer(config.model, config.model_overrides)
    started = time.perf_counter()
    history = train_qa(
        model,
        tokenizer,
        train_examples,
        config,
        eval_examples=eval_examples,
        references=references,
        output_dir=args.output_dir,
        resume=args.resume,
    )
    final = Path(args.output_dir) / "final"
    save_model_folder(model, tokenizer, final)  # without transformers' "Writing model shards" bar
    last = history["epochs"][-1] if history["epochs"] else {}
    print(f"model saved to {final}; scores from the {args.eval or 'no'} split are printed as measured")
    return {
        "em": last.get("em"),
        "f1": last.get("f1"),
        "loss": last.get("loss"),
        "seconds": time.perf_counter() - started,
    }


def command_predict(args) -> dict:
    from .predict import answer, predict_examples, write_predictions

    model, tokenizer = load_model_and_tokenizer(args.model)
    if args.question is not None:
        result = answer(args.question, args.context, model, tokenizer, top_k=args.top_k)
        print(result["text"])
        return {key: result[key] for key in ("text", "start", "end", "score", "probability")}
    from .data import load_squad

    examples, _ = load_squad(resolve_data(args.data))
    predictions, nbest = predict_examples(model, tokenizer, examples, n_best=args.top_k)
    paths = write_predictions(args.output_dir, predictions, nbest)
    print(f"wrote {paths[0]} and {paths[1]}")
    return {"questions": len(predictions), "predictions": str(paths[0])}


def demo_summary(results: dict, grading_log: str) -> str:
    """The demo's last three lines: what it showed, where its files are, what to run next."""
    return (
        f"\nShown: answers beyond 512 tokens need windows; the tiny BERT learnt (test EM {results['em_windows']:.1f} "
        f"with windows, {results['em_truncation']:.1f} with truncation); nbgrader graded both notebooks.\n"
        f"Files: learning curves {results['learning_curves']}, nbgrader's log {grading_log}\n"
        "Next: jupyter lab notebooks/bert_qa/01_finetune_qa.ipynb"
    )


def command_demo(args) -> dict:
    from .course.demo import report_data, train_demo

    # Flushed line by line: in a log file the demo's lines must stay in order with the logging on stderr.
    say = functools.partial(print, flush=True)
    started = time.perf_counter()
    data = report_data(say)
    results = train_demo(say, args.output_dir, quick=args.quick)
    from .course.grading import grading_demo

    grading = grading_demo(say, Path(args.output_dir) / "nbgrader.log")
    say(demo_summary(results, grading["log"]))
    return {
        **results,
        "oracle_em": data["oracle_em"],
        "data_source": data["source"],
        "grading": grading,
        "seconds": time.perf_counter() - started,
    }


def command_pretrain_mlm(args) -> dict:
    from .pretraining import pretrain_mlm_command

    source = str(resolve_data(args.data))
    return pretrain_mlm_command(
        source, args.model, args.masking, args.epochs, args.max_steps, args.output_dir, args.seed, resume=args.resume
    )


def command_check(args) -> dict:
    from .course.grading import check_notebook
    from .data import DataFormatError

    reports = []
    for name in args.notebooks:
        if not Path(name).is_file():
            raise DataFormatError(f"{name}: notebook not found")
        report, _ = check_notebook(name)
        print("\n".join(report.lines()))
        reports.append(report)
    if not all(report.passed for report in reports):
        raise SystemExit(1)  # unlike `nbgrader validate`, which exits 0 even when tests fail
    return {"notebooks": len(reports), "passed": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-kit", description="BERT extractive QA on CMRC 2018: a teaching kit")
    parser.add_argument("--verbose", action="store_true", help="log every data repair and drop")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser("evaluate", help="official CMRC 2018 EM/F1 of a predictions file")
    evaluate.add_argument("gold", help="gold SQuAD-format JSON, or trial/dev")
    evaluate.add_argument("predictions", help="JSON object {question_id: answer}")
    evaluate.set_defaults(run=command_evaluate)

    train = commands.add_parser("train", help="fine-tune a BERT for extractive QA")
    train.add_argument("--preset", default="cpu-demo", help="colab-t4, cpu-demo or smoke")
    train.add_argument(
        "--model", help="hub name or local folder (overrides the preset); offline-tiny for a tiny random BERT"
    )
    train.add_argument("--train", required=True, help="training file, or trial/dev from QA_KIT_CMRC_DIR")
    train.add_argument("--eval", help="evaluation file, or trial/dev")
    train.add_argument("--output-dir", default="runs/train")
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--batch-size", type=int, help="windows per forward pass (overrides the preset)")
    train.add_argument("--gradient-accumulation-steps", type=int, help="forward passes per optimizer step")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    train.set_defaults(run=command_train)

    predict = commands.add_parser("predict", help="answer questions with a trained model")
    predict.add_argument("--model", required=True, help="trained model folder (or hub name)")
    predict.add_argument("--data", help="SQuAD-format file (or trial/dev): writes predictions.json + nbest")
    predict.add_argument("--question", help="one question (with --context)")
    predict.add_argument("--context", help="its context, any length")
    predict.add_argument("--output-dir", default="runs/predict")
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(run=command_predict)

    demo = commands.add_parser("demo", help="offline demo: data report, then train the tiny model on synthetic data")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="a few seconds of training (smoke test)")
    demo.set_defaults(run=command_demo)

    pretrain = commands.add_parser(
        "pretrain-mlm", help="continued masked-LM pretraining on QA contexts, with whole word or character masking"
    )
    pretrain.add_argument("--data", default="trial", help="SQuAD file whose contexts are the texts, or trial/dev")
    pretrain.add_argument("--model", default="offline-tiny", help="hub name or local folder; offline-tiny by default")
    pretrain.add_argument("--masking", choices=("wwm", "char"), default="wwm")
    pretrain.add_argument("--epochs", type=int)
    pretrain.add_argument("--max-steps", type=int)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--output-dir", default="runs/mlm")
    pretrain.add_argument("--resume", action="store_true")
    pretrain.set_defaults(run=command_pretrain_mlm)

    check = commands.add_parser(
        "check", help="run a notebook's visible tests like `nbgrader validate`; exit status 1 when any fails"
    )
    check.add_argument("notebooks", nargs="+", help="notebook files, e.g. notebooks/bert_qa/01_finetune_qa.ipynb")
    check.set_defaults(run=command_check)

    for sub in (train, predict, demo, evaluate, pretrain, check):
        sub.add_argument("--json", action="store_true", help="end with one JSON line of results")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "predict" and (args.question is None) == (args.data is None):
        print("qa-kit predict: give either --data FILE or --question Q --context C", file=sys.stderr)
        return 2
    if args.command == "predict" and args.question is not None and args.context is None:
        print("qa-kit predict: --question needs --context", file=sys.stderr)
        return 2
    from .data import DataFormatError, DataUnavailable
    from .metric import MetricInputError
    from .models import ModelFilesMissing

    try:
        result = args.run(args)
    except (DataFormatError, DataUnavailable, MetricInputError, ModelFilesMissing, KeyError) as error:
        print(f"qa-kit {args.command}: {error}", file=sys.stderr)
        return 2
    if args.json or args.command == "evaluate":
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
