"""What both benchmarks share: the real data from environment variables, best-of-N timing, the JSON line.

Benchmarks are scripts, not tests: timings depend on the machine and on whatever else runs on it,
so a benchmark reports ratios measured in one run instead of asserting absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from qa_lib.data import QAExample, cmrc_file, load_squad
from qa_lib.models import load_tokenizer

CMRC_VARIABLE = "QA_KIT_CMRC_DIR"
VOCAB_VARIABLE = "QA_KIT_VOCAB_DIR"
MAX_LENGTH, DOC_STRIDE = 512, 128


class Timing(NamedTuple):
    seconds: float  # best wall time of the repeats
    cpu_seconds: float  # best CPU time of this process (all its threads) over the repeats
    result: Any  # what the side returned


def required_folder(variable: str, holds: str) -> Path:
    """The folder named by ``variable``; exits with a message saying what to set when it is missing."""
    value = os.environ.get(variable)
    if not value:
        sys.exit(f"error: set {variable} to the folder holding {holds}")
    folder = Path(value)
    if not folder.is_dir():
        sys.exit(f"error: {variable}={value} is not a folder (it should hold {holds})")
    return folder


def load_dev_data() -> tuple[list[QAExample], Any]:
    """All CMRC 2018 dev questions and the bert-base-chinese tokenizer, from the two variables."""
    cmrc_dir = required_folder(CMRC_VARIABLE, "cmrc2018_dev.json")
    vocab_dir = required_folder(VOCAB_VARIABLE, "vocab.txt of bert-base-chinese")
    examples, _ = load_squad(cmrc_file("dev", cmrc_dir))
    return examples, load_tokenizer(vocab_dir)


def repeats_argument(description: str, default: int) -> int:
    """Parse the command line: only ``--repeats`` (how many times each side is timed)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=default, help="time each side this many times, keep the best")
    repeats = parser.parse_args().repeats
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    return repeats


def best_of(repeats: int, sides: Mapping[str, Callable[[], Any]]) -> dict[str, Timing]:
    """Fastest wall and CPU time of each side over ``repeats`` rounds, with the side's last result.

    Rounds interleave the sides (a, b, c, a, b, c, ...) so that a burst of load from other
    processes hits all of them alike instead of one side's whole series. The minimum, not the
    mean: other processes only ever add time, so the fastest run is closest to the code's own cost.
    CPU time is kept too because other processes change it much less (time spent waiting for a core
    is not counted); it exceeds the wall time when the code keeps several threads busy.
    """
    timings = {name: Timing(float("inf"), float("inf"), None) for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            result = side()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best = timings[name]
            timings[name] = Timing(min(best.seconds, wall), min(best.cpu_seconds, cpu), result)
    return timings


def seconds_record(timings: Mapping[str, Timing]) -> dict[str, float]:
    """``{side}_s`` (wall) and ``{side}_cpu_s`` for each side, for the JSON line."""
    record = {}
    for name, timing in timings.items():
        record[f"{name}_s"] = round(timing.seconds, 4)
        record[f"{name}_cpu_s"] = round(timing.cpu_seconds, 4)
    return record


def print_timings(repeats: int, labels: Mapping[str, str], timings: Mapping[str, Timing], baseline: str) -> None:
    """A table of each side's best wall and CPU time and its speed-up over ``baseline`` on both."""
    width = max(map(len, labels.values()))
    print(f"best of {repeats}{'':{width - 10}}    wall s  speed-up     CPU s  speed-up")
    reference = timings[baseline]
    for name, label in labels.items():
        timing = timings[name]
        print(
            f"  {label:{width}}  {timing.seconds:8.3f}  {reference.seconds / timing.seconds:7.2f}x"
            f"  {timing.cpu_seconds:8.3f}  {reference.cpu_seconds / timing.cpu_seconds:7.2f}x"
        )


def machine() -> dict[str, Any]:
    """What the timings depend on, recorded next to them: a load average above the core count means
    other processes competed for the CPUs during the run."""
    return {
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "<unset>"),
    }


def emit(record: dict[str, Any]) -> None:
    """Print the benchmark's numbers as one JSON line, always the last line of the output."""
    print(json.dumps(record, ensure_ascii=False, sort_keys=False))
