"""Encoded data set and length-bucketed batches (little padding, no cross-example attention)."""

from __future__ import annotations

import random
from typing import Iterator

import torch


class EncodedDataset:
    """Token ids and labels of every example, stored flat (ids, labels, offsets)."""

    def __init__(self, pairs: list[tuple[list[int], list[int]]]):
        lengths = torch.tensor([len(ids) for ids, _ in pairs], dtype=torch.long)
        self.offsets = torch.zeros(len(pairs) + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(lengths, 0)
        self.ids = torch.tensor([t for ids, _ in pairs for t in ids], dtype=torch.int32)
        self.labels = torch.tensor([t for _, lab in pairs for t in lab], dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def state(self) -> dict:
        return {"offsets": self.offsets, "ids": self.ids, "labels": self.labels}

    @classmethod
    def from_state(cls, state: dict) -> "EncodedDataset":
        obj = cls.__new__(cls)
        obj.offsets, obj.ids, obj.labels = state["offsets"], state["ids"], state["labels"]
        return obj


def epoch_order(n_examples: int, batch_size: int, seed: int, epoch: int, lengths: torch.Tensor) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, then sorted by length within
    windows of 32 batches so that each batch pads little; the batch order is shuffled again."""
    rng = random.Random(f"order-{seed}-{epoch}")
    idx = list(range(n_examples))
    rng.shuffle(idx)
    window = batch_size * 32
    batches = []
    for w in range(0, n_examples, window):
        chunk = sorted(idx[w : w + window], key=lambda i: int(lengths[i]))
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches[:1]
    rng.shuffle(batches)
    return batches


def trained_counts(data: EncodedDataset) -> torch.Tensor:
    """Per example, the number of tokens its loss is taken on: the labels that are not -100,
    but the first (a causal LM predicts token t + 1 from tokens up to t; the loss of a batch
    is the mean over these tokens of all its examples)."""
    mask = data.labels != -100
    lengths = data.offsets[1:] - data.offsets[:-1]
    mask[data.offsets[:-1][lengths > 0]] = False
    cum = torch.zeros(len(mask) + 1, dtype=torch.long)
    cum[1:] = torch.cumsum(mask, 0)
    return cum[data.offsets[1:]] - cum[data.offsets[:-1]]


def collate(data: EncodedDataset, batch: list[int], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    lens = [data.length(i) for i in batch]
    width = -(-max(lens) // multiple) * multiple
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (i, n) in enumerate(zip(batch, lens)):
        a = int(data.offsets[i])
        ids[row, :n] = data.ids[a : a + n]
        labels[row, :n] = data.labels[a : a + n]
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def iterate(data: EncodedDataset, batch_size: int, seed: int, start_step: int = 0) -> Iterator[tuple[int, int, list[int]]]:
    """(step, epoch, batch) forever, starting at ``start_step`` (for --resume)."""
    lengths = data.offsets[1:] - data.offsets[:-1]
    step, epoch = 0, 0
    while True:
        order = epoch_order(len(data), batch_size, seed, epoch, lengths)
        if step + len(order) <= start_step:
            step += len(order)
            epoch += 1
            continue
        for batch in order:
            if step >= start_step:
                yield step, epoch, batch
            step += 1
        epoch += 1
