"""The demo's spread over training seeds: EM on the validation and test sets, seconds of training.

The demo reports one seed's EM; this script says how much that number owes to the seed. Each seed
runs the whole demo training (``qa_lib.course.demo.train_demo``, both stages) with ``--threads``
torch threads, then prints one line per seed and the median and range over the seeds. Seconds
depend on the machine and on its load (recorded in the JSON line); EM does not, up to the
floating-point differences between thread counts.

Run from the repository root: ``python bench/demo_seeds.py --seeds 0 1 2 3 4 --threads 2``
(about two minutes per seed on two idle cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile

import torch

from qa_lib.course.demo import DEMO_TRAIN_ARTICLES, train_demo


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f}, range {min(values):.1f}-{max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--train-articles", type=int, default=DEMO_TRAIN_ARTICLES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # the per-epoch lines of every seed would bury the table
    rows = []
    print(f"{'seed':>4}{'validation EM':>15}{'test EM':>9}{'truncation EM':>15}{'train s':>9}{'load':>6}", flush=True)
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            result = train_demo(lambda line: None, folder, seed=seed, train_articles=args.train_articles)
        result["load_average_1min"] = os.getloadavg()[0]
        rows.append(result)
        print(
            f"{seed:>4}{result['em_validation']:>15.1f}{result['em_windows']:>9.1f}{result['em_truncation']:>15.1f}"
            f"{result['train_seconds']:>9.0f}{result['load_average_1min']:>6.1f}",
            flush=True,
        )
    for key, name in (("em_validation", "validation EM"), ("em_windows", "test EM")):
        print(f"{name}: {spread([row[key] for row in rows])}")
    summary = {"threads": args.threads, "train_articles": args.train_articles, "cpus": os.cpu_count(), "runs": rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
