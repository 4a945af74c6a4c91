"""Batches of rows of similar length, in random order.

Every trainer here pads a batch to its longest row, so random batches of texts whose lengths
vary a lot are mostly padding (the tiny policy's texts: ~40%). Grouping rows by length cuts
that, but transformers' own ``group_by_length`` sampler sorts each 50-batch "megabatch"
longest-first, so a small epoch runs as one sorted sweep from the longest rows to the shortest.
Here each epoch shuffles the rows, sorts buckets of ``bucket_batches`` batches by length, cuts
them into batches and shuffles the batches: every step still sees a random draw of rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any


def epoch_batches(lengths: list[int], batch_size: int, rng: random.Random, bucket_batches: int = 50) -> list[list[int]]:
    """One epoch's row indices as batches of similar length, in random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches: list[list[int]] = []
    for b in range(0, len(order), bucket):
        ranked = sorted(order[b : b + bucket], key=lambda i: lengths[i])
        batches += [ranked[k : k + batch_size] for k in range(0, len(ranked), batch_size)]
    rng.shuffle(batches)
    return batches


def length_batches(lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 50) -> Iterator[list[int]]:
    """``epoch_batches`` endlessly, epoch after epoch (the tiny models' plain training loop)."""
    rng = random.Random(seed)
    while True:
        yield from epoch_batches(lengths, batch_size, rng, bucket_batches)


class LengthGroupedSampler:
    """A Trainer's sampler: the indices of ``epoch_batches`` one batch after another, the one
    short batch last, so the DataLoader's chunks of ``batch_size`` are exactly those batches
    (under accelerate each rank takes whole batches in turn). ``set_epoch`` (``length_grouped``
    calls it as each epoch starts, also in a run resumed mid-epoch) makes epoch k's order the
    same in a resumed run as in an uninterrupted one."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.bucket_batches = list(lengths), batch_size, seed, bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        batches = epoch_batches(self.lengths, self.batch_size, rng, self.bucket_batches)
        batches.sort(key=lambda b: len(b) < self.batch_size)  # stable: the short batch moves last
        for batch in batches:
            yield from batch


def row_length(row: dict[str, Any]) -> int:
    """Tokens a tokenized training row pads to: SFT rows' ``input_ids``; a preference row's prompt
    plus its longer completion (TRL pads chosen and rejected to one width)."""
    if "input_ids" in row:
        return len(row["input_ids"])
    if "prompt_ids" in row:
        return len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
    raise KeyError(f"cannot size a training row with columns {sorted(row)}: expected input_ids or prompt_ids")


def length_grouped(trainer_cls: type) -> type:
    """``trainer_cls`` drawing its training batches from ``LengthGroupedSampler`` over the
    tokenized training set (TRL's SFT and DPO trainers tokenize in their constructor)."""

    class LengthGrouped(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            data = train_dataset if train_dataset is not None else self.train_dataset
            columns = [c for c in ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids") if c in data.column_names]
            lengths = [
                row_length(dict(zip(columns, values, strict=True))) for values in zip(*(data[c] for c in columns), strict=True)
            ]
            # the DataLoader's batch size (per device x GPUs of this process)
            self._length_sampler = LengthGroupedSampler(lengths, self._train_batch_size, self.args.seed)
            return self._length_sampler

        def _run_epoch(self, *args, **kwargs):
            # The Trainer's own set_epoch does not reach a sampler that accelerate wrapped twice
            # (a run resumed mid-epoch with several processes): set it here, before every epoch.
            sampler = getattr(self, "_length_sampler", None)
            if sampler is not None and "epoch" in kwargs:
                sampler.set_epoch(kwargs["epoch"])
            return super()._run_epoch(*args, **kwargs)

    LengthGrouped.__name__ = LengthGrouped.__qualname__ = f"LengthGrouped{trainer_cls.__name__}"
    return LengthGrouped
