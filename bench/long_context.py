"""Benchmark: one question about a 200,000-character context through ``qa_lib.predict.answer``.

The context's windows (512 tokens, stride 128) go through the model ``--batch-size`` at a time, so
memory should grow with the context only by the windows' token ids and logits, not by the model's
activations. The script reports the windows, the seconds and the peak resident memory of this
process (``ru_maxrss``) before and after answering; run it once per setting, since a peak never goes
down within a process.

The model is the kit's tiny random BERT (``offline-tiny`` with the ``smoke`` preset's sizes) and the
offline tokenizer, so the script needs neither downloads nor data files; the answer itself is
meaningless, only time and memory are measured.

Run: ``python bench/long_context.py [--characters 200000] [--batch-size 32]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from qa_lib.data import QAExample
from qa_lib.features import prepare_eval_features
from qa_lib.models import build_offline_tokenizer, load_qa_model
from qa_lib.predict import answer
from qa_lib.training import preset, same_seeds

SENTENCE = "北京是中华人民共和国的首都，位于华北平原的北部，2019年常住人口约为2154万人。"
QUESTION = "北京的常住人口是多少？"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", type=int, default=200_000, help="length of the context")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; one thread gives comparable numbers
    tokenizer = build_offline_tokenizer()
    same_seeds(0)
    model = load_qa_model("offline-tiny", tokenizer, **preset("smoke").model_overrides)
    context = (SENTENCE * (args.characters // len(SENTENCE) + 1))[: args.characters]
    before = peak_rss_mib()
    started = time.perf_counter()
    result = answer(QUESTION, context, model, tokenizer, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    windows = len(prepare_eval_features(tokenizer, [QAExample("q", "", context, QUESTION, ())])["input_ids"])
    summary = {
        "characters": len(context),
        "windows": windows,
        "batch_size": args.batch_size,
        "seconds": round(seconds, 2),
        "peak_rss_mib_before": round(before, 1),
        "peak_rss_mib_after": round(peak_rss_mib(), 1),
        "answer_inside_context": context[result["start"] : result["end"]] == result["text"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
