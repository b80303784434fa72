"""The offline demo behind ``make demo``: why sliding windows matter, then a model that learns.

1. A data report (real CMRC 2018 trial data when QA_KIT_CMRC_DIR is set, else synthetic data):
   repairs and drops, windows per question, answers reachable with truncation vs with windows,
   and the oracle EM/F1 of gold labels through the windowed decoding path.
2. Training the tiny offline BERT on synthetic Chinese QA on the CPU, then EM/F1 with sliding
   windows vs with the assignment's truncation at 512 tokens, and a few predicted examples.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from .data import DataUnavailable, QAExample, cmrc_file, examples_from_squad, load_squad
from .decoding import gold_logits, postprocess_predictions
from .features import CLS_INDEX, answer_coverage, label_windows, prepare_eval_features
from .metric import corpus_scores
from .models import build_offline_tokenizer, load_qa_model, load_tokenizer
from .predict import predict_examples
from .synthetic import generate_squad
from .training import preset, same_seeds, train_qa

VOCAB_DIR_VARIABLE = "QA_KIT_VOCAB_DIR"
DEMO_TRAIN_ARTICLES, DEMO_EVAL_ARTICLES = 60, 30
ROW_NAMES = {"windows": "sliding windows", "truncation": "truncation at 512 (assignment)"}


def references_of(examples: Sequence[QAExample]) -> dict[str, list[str]]:
    return {e.id: [a.text for a in e.answers] for e in examples}


def data_report(
    tokenizer, examples: Sequence[QAExample], load_summary: str, max_length: int = 512, doc_stride: int = 128
) -> dict:
    """Windows per question, answer coverage with truncation vs windows, and the oracle scores."""
    features = label_windows(prepare_eval_features(tokenizer, examples, max_length, doc_stride), examples)
    labelled = [
        (i, start)
        for i, start, s in zip(features["example_index"], features["context_start"], features["start_positions"])
        if s != CLS_INDEX
    ]
    starts, ends = gold_logits(features)
    predictions, _ = postprocess_predictions(examples, features, starts, ends, max_answer_length=max_length)
    oracle = corpus_scores(references_of(examples), predictions)
    return {
        "loading": load_summary,
        "questions": len(examples),
        "windows": len(features["input_ids"]),
        "windows_per_question": len(features["input_ids"]) / len(examples),
        "covered_by_truncation": len({i for i, start in labelled if start == 0}) / len(examples),
        "covered_by_windows": answer_coverage(features, len(examples)),
        "oracle_em": oracle["EM"],
        "oracle_f1": oracle["F1"],
    }


def report_data(say) -> dict:
    """The data report on CMRC trial data when available, else on the synthetic evaluation set."""
    try:
        examples, report = load_squad(cmrc_file("trial"))
        source = "CMRC 2018 trial"
    except DataUnavailable as error:
        say(f"({error}; using the built-in synthetic sample instead)")
        examples, report = examples_from_squad(generate_squad(DEMO_EVAL_ARTICLES, seed=1), "synthetic sample")
        source = "synthetic sample"
    vocab_dir = os.environ.get(VOCAB_DIR_VARIABLE)
    tokenizer = load_tokenizer(vocab_dir) if vocab_dir else build_offline_tokenizer()
    stats = data_report(tokenizer, examples, report.summary())
    say(f"\n== Data: {source} ==")  # the loading summary itself is logged by qa_lib.data
    say(
        f"{stats['windows']} windows of 512 tokens (stride 128) for {stats['questions']} questions "
        f"({stats['windows_per_question']:.2f} per question)"
    )
    say(f"answers inside the first 512 tokens (truncation): {100 * stats['covered_by_truncation']:.1f}%")
    say(f"answers inside some window (sliding windows):   {100 * stats['covered_by_windows']:.1f}%")
    say(f"oracle EM/F1 (gold labels through windowed decoding): {stats['oracle_em']:.2f} / {stats['oracle_f1']:.2f}")
    return {"source": source, **stats}


def train_demo(say, output_dir: str | Path = "runs/demo", quick: bool = False) -> dict:
    """Train the tiny offline model on synthetic data and compare windows with truncation."""
    config = preset("cpu-demo", epochs=1) if quick else preset("cpu-demo")
    train_articles = DEMO_TRAIN_ARTICLES // 8 if quick else DEMO_TRAIN_ARTICLES
    train, _ = examples_from_squad(generate_squad(train_articles, seed=0), "synthetic train")
    held_out, _ = examples_from_squad(generate_squad(DEMO_EVAL_ARTICLES, seed=1), "synthetic eval")
    tokenizer = build_offline_tokenizer()
    same_seeds(config.seed)
    model = load_qa_model(config.model, tokenizer, **config.model_overrides)
    say(f"\n== Training the tiny offline BERT on {len(train)} synthetic questions (CPU) ==")
    started = time.perf_counter()
    history = train_qa(model, tokenizer, train, config, eval_examples=held_out)
    seconds = time.perf_counter() - started
    results = {}
    for name, first_only in (("windows", False), ("truncation", True)):
        predictions, _ = predict_examples(
            model,
            tokenizer,
            held_out,
            config.max_length,
            config.doc_stride,
            config.max_answer_length,
            first_window_only=first_only,
        )
        scores = corpus_scores(references_of(held_out), predictions)
        results[name] = (scores["EM"], scores["F1"], predictions)
    say(f"\n{'held-out synthetic questions':<32}{'EM':>8}{'F1':>8}")
    for name in ("windows", "truncation"):
        say(f"{ROW_NAMES[name]:<32}{results[name][0]:>8.1f}{results[name][1]:>8.1f}")
    for example in held_out[:3]:
        say(f"Q: {example.question}  gold: {example.answers[0].text}  predicted: {results['windows'][2][example.id]}")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    from .plots import plot_learning_curves

    curve = Path(output_dir) / "learning_curves.png"
    plot_learning_curves(history, curve)
    say(f"learning curves: {curve}")
    return {
        "em_windows": results["windows"][0],
        "f1_windows": results["windows"][1],
        "em_truncation": results["truncation"][0],
        "f1_truncation": results["truncation"][1],
        "train_seconds": seconds,
    }
