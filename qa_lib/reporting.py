"""What training prints: one aligned table row per epoch, and progress bars that suit where output goes.

On a terminal (or in Jupyter) a progress bar redraws in place. Written to a file or a pipe (``make demo >
log``, nohup, CI) tqdm would write every redraw with a carriage return and no newline: thousands of frames
on one line. There the bar prints a few whole lines per loop instead (the start, every quarter, the end):
enough to see a long epoch move, few enough to read, and none of them wider than the bar itself.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping

from tqdm.auto import tqdm
from tqdm.std import tqdm as plain_tqdm

# (record key, column title, width, format): the columns an epoch record may have, in this order.
EPOCH_COLUMNS = (
    ("epoch", "epoch", 5, "d"),
    ("loss", "loss", 8, ".4f"),
    ("start_acc", "start acc", 10, ".3f"),
    ("end_acc", "end acc", 8, ".3f"),
    ("em", "EM", 7, ".2f"),
    ("f1", "F1", 7, ".2f"),
    ("heldout_loss", "held-out loss", 14, ".4f"),
    ("seconds", "seconds", 8, ".1f"),
)
# Lines a progress bar prints per loop when output is not a terminal (plus its first line).
LINES_WHEN_NOT_A_TERMINAL = 4


def epoch_columns(record: Mapping) -> list[tuple]:
    return [column for column in EPOCH_COLUMNS if column[0] in record]


def epoch_header(record: Mapping) -> str:
    """The titles of the columns ``record`` has, aligned with :func:`epoch_row`."""
    return " ".join(f"{title:>{width}}" for _, title, width, _ in epoch_columns(record))


def epoch_row(record: Mapping) -> str:
    """One epoch's numbers in the columns of :func:`epoch_header`."""
    return " ".join(f"{record[key]:>{width}{spec}}" for key, _, width, spec in epoch_columns(record))


class WholeLines:
    """A file for tqdm that turns each redraw (``"\\r" + bar``) into a line of its own, skipping a redraw
    at the same count as the line before (tqdm redraws the last one when it closes)."""

    def __init__(self, stream):
        self.stream = stream
        self.last_count = None

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.split("[", 1)[0]  # description, percentage, bar and n/total: all before the timings
        if line and count != self.last_count:
            self.stream.write(line + "\n")
            self.last_count = count

    def flush(self) -> None:
        self.stream.flush()


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (a widget bar there), not merely when ipykernel was imported (tests)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(iterable: Iterable, total: int, desc: str, stream=None, disable: bool = False):
    """tqdm over ``iterable``: redrawn in place on a terminal or in Jupyter, else a few whole lines."""
    stream = stream or sys.stderr
    if stream.isatty() or in_jupyter_kernel():
        return tqdm(iterable, total=total, desc=desc, disable=disable)
    every = max(1, math.ceil(total / LINES_WHEN_NOT_A_TERMINAL))
    # maxinterval=inf: else tqdm's monitor thread, finding no line for 10 s, sets miniters to 1 for good and
    # a slow loop (bert-base on a CPU) prints at every batch.
    return plain_tqdm(
        iterable,
        total=total,
        desc=desc,
        file=WholeLines(stream),
        miniters=every,
        mininterval=0,
        maxinterval=math.inf,
        disable=disable,
    )
