"""Feeding windows to the model: dataset, dynamic padding and length-grouped batches.

Taught in notebook 1, section 3 ("dataset and dataloader").

Padding every window to 512 wastes work on short ones; padding each batch only to its longest
window (rounded up to a multiple of 8 for tensor cores) and grouping windows of similar length
into the same batch removes most of that padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

MODEL_INPUTS = ("input_ids", "token_type_ids")
LABELS = ("start_positions", "end_positions")


class WindowDataset(Dataset):
    """Windows from ``prepare_train_features``/``prepare_eval_features`` as model-ready rows."""

    def __init__(self, features: dict):
        self.features = features
        self.keys = [key for key in (*MODEL_INPUTS, *LABELS) if key in features]

    def __len__(self) -> int:
        return len(self.features["input_ids"])

    def __getitem__(self, index: int) -> dict:
        return {key: self.features[key][index] for key in self.keys}

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.features["input_ids"]]


def pad_batch(rows: Sequence[dict], pad_token_id: int = 0, multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Pad a list of rows to the longest (rounded up to ``multiple_of``) and build the attention mask."""
    longest = max(len(row["input_ids"]) for row in rows)
    width = -(-longest // multiple_of) * multiple_of
    batch = {
        "input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
        "token_type_ids": torch.zeros((len(rows), width), dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.as_tensor(np.asarray(row["input_ids"]))
        batch["token_type_ids"][i, :n] = torch.as_tensor(np.asarray(row["token_type_ids"]))
        batch["attention_mask"][i, :n] = 1
    for key in LABELS:
        if key in rows[0]:
            batch[key] = torch.tensor([row[key] for row in rows], dtype=torch.long)
    return batch


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of windows of similar length.

    Windows are shuffled, cut into mega-batches of ``group`` batches, sorted by length inside each
    mega-batch and split into batches; the batch order is shuffled again. ``group=1`` gives plain
    shuffled batches. Randomness comes from ``seed + epoch`` only, so a resumed run sees the same
    batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group: int = 50, shuffle: bool = True):
        self.lengths, self.batch_size, self.seed, self.group, self.shuffle = (
            list(lengths),
            batch_size,
            seed,
            group,
            shuffle,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = (
            torch.randperm(len(self.lengths), generator=generator).tolist()
            if self.shuffle
            else list(range(len(self.lengths)))
        )
        mega = self.batch_size * self.group
        batches = []
        for first in range(0, len(order), mega):
            chunk = sorted(order[first : first + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter(batches)


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int], multiple_of: int = 8) -> float:
    """Share of padded positions when each batch is padded to its longest window."""
    real = padded = 0
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        padded += len(batch) * (-(-longest // multiple_of) * multiple_of)
        real += sum(lengths[i] for i in batch)
    return 1 - real / padded if padded else 0.0
