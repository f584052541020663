"""Reproducible data and noise streams for training and validation: seeds per (run, epoch, purpose) and batches
sliced the same way for one process or N data-parallel ranks. A leaf module (no other training imports).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

Batch = dict[str, Tensor]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Independent, reproducible streams per (run seed, epoch, purpose/rank): resuming replays them exactly."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def batches(data: Batch, batch_size: int, *, rank: int = 0, world: int = 1, limit: int | None = None,
            noise: tuple[tuple[int, ...], torch.Generator] | None = None) -> Iterator[Batch]:
    """Consecutive batches; with world > 1 each global batch is split into equal per-rank slices.

    With `noise=(shape, generator)` each batch also gets its ε under "noise", (size, *shape): drawn for the whole
    global batch and sliced like the data, so N ranks see exactly what one process would.
    """
    n = next(iter(data.values())).shape[0]
    count = -(-n // batch_size) if limit is None else min(limit, -(-n // batch_size))
    for b in range(count):
        size = min(batch_size, n - b * batch_size)
        per_rank = size // world
        lo = b * batch_size + rank * per_rank
        out = {k: v[lo : lo + per_rank] for k, v in data.items()}
        if noise is not None:
            shape, gen = noise
            # drawn where the generator lives, so a GPU run does not draw each step's noise (IWAE: batch × k × 150
            # normals) on the host and copy it over
            out["noise"] = torch.randn(size, *shape, generator=gen, device=gen.device)[
                rank * per_rank : (rank + 1) * per_rank]
        yield out


def trim_padding(batch: Batch) -> Batch:
    """A batch of token ids (integer `x` (B, L) with `lengths` (B,), models/textvae.py's layout) without the columns
    past its longest row, which are padding only: what a padding-invariant model computes is the same, at the cost
    of the batch's longest sentence instead of the split's. Any other batch is returned as it is."""
    x, lengths = batch.get("x"), batch.get("lengths")
    if x is None or lengths is None or x.is_floating_point() or x.dim() != 2 or lengths.numel() == 0:
        return batch
    longest = int(lengths.max())
    return batch if longest >= x.shape[1] else batch | {"x": x[:, :longest]}
