"""The ``qa-kit`` command: evaluate, train, predict, pretrain-mlm; the course's sub-commands (demo, check,
integrity, grade, report) come from ``qa_lib.course.commands``.

Every sub-command turns a user's mistake (a missing, unreadable or mis-encoded file, a folder in place of a
file, a wrong JSON shape, an unknown split or preset, a model that cannot be loaded offline) into one line on
stderr naming the file and the problem, with exit status 2. A traceback means a bug in the kit (``--debug``
shows one for user mistakes too). Ctrl-C ends with a one-line message and exit status 130 (training
saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn


class UsageError(ValueError):
    """A command line that names something that does not exist (a preset) or combines options wrongly."""


def user_error_types() -> tuple[type[Exception], ...]:
    """The exceptions that mean a user's mistake rather than a bug in the kit (imported late: startup speed)."""
    from .checkpoint import CheckpointError
    from .data import DataFormatError, DataUnavailable
    from .models import ModelFilesMissing

    return UsageError, DataFormatError, DataUnavailable, ModelFilesMissing, CheckpointError


def one_line(error: BaseException) -> str:
    """The error's message on one line (library messages, e.g. from transformers, span several)."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return " ".join(str(error).split())


def load_model_and_tokenizer(name: str, config_overrides: dict | None = None):
    from .models import load_qa_model, load_tokenizer

    tokenizer = load_tokenizer(name)
    return load_qa_model(name, tokenizer, **(config_overrides or {})), tokenizer


def command_evaluate(args) -> dict:
    from .data import resolve_data
    from .metric import evaluate_files

    scores = evaluate_files(resolve_data(args.gold), args.predictions)
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in scores.items()}


def is_main_process() -> bool:
    """False in the processes after the first that `accelerate launch` (torchrun) starts: they set RANK.

    Read from the environment because it is needed before training creates Accelerate's state."""
    return int(os.environ.get("RANK", "0")) == 0


def command_train(args) -> dict:
    from .data import load_squad, resolve_data
    from .models import save_model_folder
    from .training import PRESETS, preset, same_seeds, train_qa

    if args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset}: no such preset; choose one of {', '.join(sorted(PRESETS))}")
    options = (
        "epochs",
        "max_steps",
        "save_every_steps",
        "keep_checkpoints",
        "batch_size",
        "gradient_accumulation_steps",
    )
    overrides = {key: getattr(args, key) for key in options if getattr(args, key) is not None}
    config = preset(args.preset, **({"model": args.model} if args.model else {}), **overrides)
    train_examples, _ = load_squad(resolve_data(args.train))  # load_squad logs its own summary
    # Every question of the evaluation file is scored against every reference it gives (see references_of).
    eval_examples = load_squad(resolve_data(args.eval), drop_unanswered=False)[0] if args.eval else None
    same_seeds(config.seed)
    model, tokenizer = load_model_and_tokenizer(config.model, config.model_overrides)
    started = time.perf_counter()
    history = train_qa(
        model,
        tokenizer,
        train_examples,
        config,
        eval_examples=eval_examples,
        output_dir=args.output_dir,
        resume=args.resume,
    )
    final = Path(args.output_dir) / "final"
    if is_main_process():  # under `accelerate launch` every process holds the same model
        save_model_folder(model, tokenizer, final)  # without transformers' "Writing model shards" bar
        measured = f"scores on {args.eval} are printed as measured" if args.eval else "not evaluated (no --eval file)"
        print(f"model saved to {final}; {measured}")
    last = history["epochs"][-1] if history["epochs"] else {}
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
    from .data import load_squad, resolve_data

    examples, _ = load_squad(resolve_data(args.data), drop_unanswered=False)
    predictions, nbest = predict_examples(model, tokenizer, examples, n_best=args.top_k)
    paths = write_predictions(args.output_dir, predictions, nbest)
    print(f"wrote {paths[0]} and {paths[1]}")
    return {"questions": len(predictions), "predictions": str(paths[0])}


def command_pretrain_mlm(args) -> dict:
    from .pretraining import pretrain_mlm_command

    return pretrain_mlm_command(
        args.data, args.model, args.masking, args.epochs, args.max_steps, args.output_dir, args.seed, resume=args.resume
    )


def build_parser() -> argparse.ArgumentParser:
    from .course.commands import add_course_commands

    parser = argparse.ArgumentParser(prog="qa-kit", description="BERT extractive QA on CMRC 2018: a teaching kit")
    parser.add_argument("--verbose", action="store_true", help="log every data repair and drop")
    parser.add_argument("--debug", action="store_true", help="show a traceback for user mistakes too")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser("evaluate", help="official CMRC 2018 EM/F1 of a predictions file")
    evaluate.add_argument("gold", help="gold SQuAD-format JSON, or a split name (dev, trial, ...)")
    evaluate.add_argument("predictions", help="JSON object {question_id: answer}")
    evaluate.set_defaults(run=command_evaluate)

    train = commands.add_parser("train", help="fine-tune a BERT for extractive QA")
    train.add_argument("--preset", default="cpu-demo", help="colab-t4, cpu-demo or smoke")
    train.add_argument(
        "--model", help="hub name or local folder (overrides the preset); offline-tiny for a tiny random BERT"
    )
    train.add_argument(
        "--train", required=True, help="training file, or a split name: any cmrc2018_<split>.json in QA_KIT_CMRC_DIR"
    )
    train.add_argument("--eval", help="evaluation file, or a split name (dev, trial, ...)")
    train.add_argument("--output-dir", default="runs/train")
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--save-every-steps", type=int, help="also save a checkpoint every N optimizer steps")
    train.add_argument("--keep-checkpoints", type=int, help="keep the newest N checkpoints (default 2)")
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest intact checkpoint in --output-dir"
    )
    train.add_argument("--batch-size", type=int, help="windows per forward pass (overrides the preset)")
    train.add_argument("--gradient-accumulation-steps", type=int, help="forward passes per optimizer step")
    train.set_defaults(run=command_train)

    predict = commands.add_parser("predict", help="answer questions with a trained model")
    predict.add_argument("--model", required=True, help="trained model folder (or hub name)")
    predict.add_argument("--data", help="SQuAD-format file or split name: writes predictions.json + nbest")
    predict.add_argument("--question", help="one question (with --context)")
    predict.add_argument("--context", help="its context, any length")
    predict.add_argument("--output-dir", default="runs/predict")
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(run=command_predict)

    pretrain = commands.add_parser(
        "pretrain-mlm", help="continued masked-LM pretraining on QA contexts, with whole word or character masking"
    )
    pretrain.add_argument("--data", default="trial", help="SQuAD file whose contexts are the texts, or a split name")
    pretrain.add_argument("--model", default="offline-tiny", help="hub name or local folder; offline-tiny by default")
    pretrain.add_argument("--masking", choices=("wwm", "char"), default="wwm")
    pretrain.add_argument("--epochs", type=int)
    pretrain.add_argument("--max-steps", type=int)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--output-dir", default="runs/mlm")
    pretrain.add_argument("--resume", action="store_true")
    pretrain.set_defaults(run=command_pretrain_mlm)

    for sub in (train, predict, evaluate, pretrain, *add_course_commands(commands)):
        sub.add_argument("--json", action="store_true", help="end with one JSON line of results")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    main_process = is_main_process()  # under `accelerate launch` the other processes stay quiet
    level = (logging.DEBUG if args.verbose else logging.INFO) if main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_predict_options(args)
        result = args.run(args)
    except (*user_error_types(), OSError) as error:
        # An OSError naming no file comes from deep inside a library: a bug to show, not a user's mistake.
        if args.debug or (isinstance(error, OSError) and error.filename is None):
            raise
        print(f"qa-kit {args.command}: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # training stops at a step end and saves first (TrainingInterrupted)
        resume_hint = " (continue with --resume)" if getattr(interrupt, "checkpoint", None) else ""
        if main_process:
            print(f"qa-kit {args.command}: {str(interrupt) or 'interrupted'}{resume_hint}", file=sys.stderr)
        return 130
    if main_process and (args.json or args.command == "evaluate"):
        print(json.dumps(result, ensure_ascii=False))
    return 0


def check_predict_options(args) -> None:
    if args.command != "predict":
        return
    if (args.question is None) == (args.data is None):
        raise UsageError("give either --data FILE or --question Q --context C")
    if args.question is not None and args.context is None:
        raise UsageError("--question needs --context")


def run() -> NoReturn:
    """The ``qa-kit`` command: :func:`main`, then :func:`leave`."""
    leave(main())


def leave(status: int) -> NoReturn:
    """End this process without Python's teardown of its modules: after a command that imported torch (or
    nbgrader) it takes 0.5-1.5 s of CPU, and at the end of ``qa-kit grade`` the whole class waits for it. The exit
    handlers still run first (temporary folders, sandboxed servers, logging), then the output is flushed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
