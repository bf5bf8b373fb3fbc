"""Length-grouped batches: rows of similar length share a batch, so little of each batch is padding."""
from __future__ import annotations

import random


def length_grouped(lengths: list[int], batch_size: int, seed: int, window: int = 8) -> list[list[int]]:
    """Row indices in batches: shuffle, sort each window of ``window`` batches by length, cut it into
    batches and shuffle the batches. Every row appears once per call; the order depends on ``seed`` only."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out: list[list[int]] = []
    span = batch_size * window
    for i in range(0, len(order), span):
        chunk = sorted(order[i:i + span], key=lambda j: lengths[j])
        out += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out
