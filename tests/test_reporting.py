"""Training output a person can read: epoch rows under one header, progress bars that do not flood a log file."""

import io

from qa_lib.reporting import LINES_WHEN_NOT_A_TERMINAL, epoch_header, epoch_row, progress_bar

RECORD = {"epoch": 3, "loss": 2.41208, "start_acc": 0.5, "end_acc": 0.25, "lr": 1e-4, "em": 80.55, "f1": 86.7,
          "samples_per_s": 95.0, "seconds": 12.34}  # fmt: skip


def test_epoch_row_lines_up_under_its_header_and_rounds():
    header, row = epoch_header(RECORD), epoch_row(RECORD)
    assert header.split() == ["epoch", "loss", "start", "acc", "end", "acc", "EM", "F1", "seconds"]
    assert row.split() == ["3", "2.4121", "0.500", "0.250", "80.55", "86.70", "12.3"]
    assert len(header) == len(row)
    assert header.index("seconds") + len("seconds") == row.index("12.3") + len("12.3")  # right-aligned columns


def test_epoch_row_leaves_out_columns_a_record_lacks():
    mlm = {"epoch": 1, "loss": 5.0, "heldout_loss": 4.5, "seconds": 3.0}
    assert epoch_header(mlm).split() == ["epoch", "loss", "held-out", "loss", "seconds"]
    assert epoch_row(mlm).split() == ["1", "5.0000", "4.5000", "3.0"]


def test_progress_bar_prints_a_few_whole_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = progress_bar(range(1000), 1000, "train epoch 1/2", stream=stream)
    for _ in bar:
        bar.set_postfix({"loss": "1.000"}, refresh=False)
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == LINES_WHEN_NOT_A_TERMINAL + 1
    assert lines[0].startswith("train epoch 1/2:   0%") and "1000/1000" in lines[-1] and "1000/1000" not in lines[-2]
