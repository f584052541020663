"""Few-shot classification by a family that offers it (`class_scores`, the Neural Statistician): seeded episodes.

An episode draws `way` classes, then for each class `shot` support drawings and `queries` query drawings, all
distinct; every query goes to the class of highest score (the statistician: nearest context posterior in KL).
Accuracy is the share of all queries classified right; its standard error is over episodes (their accuracies are
independent; the queries inside one episode are not). Episodes depend only on the seed and the data's shape, so
two models are compared on the very same episodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class FewShotResult:
    way: int
    shot: int
    episodes: int
    queries: int  # per class per episode
    seed: int
    accuracy: float  # share of queries
    stderr: float  # standard error of the accuracy over episodes

    @property
    def name(self) -> str:
        return f"{self.way}-way {self.shot}-shot"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode(n_classes: int, n_items: int, way: int, shot: int, queries: int,
            generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One episode's indices: classes (way,), support items (way, shot), query items (way, queries)."""
    if way > n_classes or shot + queries > n_items:
        raise ValueError(f"{way}-way {shot}-shot with {queries} queries needs {way} classes of {shot + queries} "
                         f"items; the data has {n_classes} of {n_items}")
    classes = torch.randperm(n_classes, generator=generator)[:way]
    items = torch.stack([torch.randperm(n_items, generator=generator)[: shot + queries] for _ in range(way)])
    return classes, items[:, :shot], items[:, shot:]


@torch.no_grad()
def few_shot(model: Any, images: Tensor, way: int, shot: int, *, episodes: int = 1000, queries: int = 1,
             seed: int = 0) -> FewShotResult:
    """images (n_classes, n_items, C, H, W) -> accuracy over `episodes` seeded episodes (the model in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    correct = torch.zeros(episodes, dtype=torch.float64)
    for e in range(episodes):
        classes, support, query = episode(images.shape[0], images.shape[1], way, shot, queries, g)
        rows = classes.unsqueeze(1)
        scores = model.class_scores(images[rows, support].to(device), images[rows, query].flatten(0, 1).to(device))
        truth = torch.arange(way).repeat_interleave(queries)
        correct[e] = (scores.argmax(1).cpu() == truth).double().mean()
    accuracy = float(correct.mean())
    stderr = float(correct.std() / math.sqrt(episodes)) if episodes > 1 else float("nan")
    return FewShotResult(way, shot, episodes, queries, seed, accuracy, stderr)
