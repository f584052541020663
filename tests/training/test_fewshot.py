"""Few-shot episodes: distinct support and query drawings from `way` distinct classes, reproducible by seed, and an
accuracy that is right on a model whose scores are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.fewshot import episode, few_shot


def test_episodes_draw_distinct_classes_and_items_and_repeat_by_seed():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        classes, support, query = episode(30, 20, way=5, shot=5, queries=2, generator=g)
        assert classes.unique().numel() == 5 and support.shape == (5, 5) and query.shape == (5, 2)
        for row in torch.cat([support, query], 1):
            assert row.unique().numel() == 7  # no drawing is both shot and query, or twice a shot
    a = episode(30, 20, 20, 1, 1, torch.Generator().manual_seed(3))
    b = episode(30, 20, 20, 1, 1, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class Oracle(nn.Module):
    """Items are one-hot class codes (pixel value = class id); scores = −|mean support code − query code|, and a
    `wrong` share of classes is made to fail on purpose."""

    def __init__(self, wrong: set[int]):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.wrong = wrong

    def class_scores(self, support, query):
        centre = support.flatten(2).mean((1, 2))  # (N,) class ids
        q = query.flatten(1).mean(1)  # (Q,)
        scores = -(q[:, None] - centre[None, :]).abs()
        for i, cls in enumerate(q.tolist()):
            if int(cls) in self.wrong:
                scores[i] = -scores[i]  # the farthest class wins: always wrong for this class
        return scores


def test_accuracy_counts_queries_and_errors():
    images = torch.arange(10.0).view(10, 1, 1, 1, 1).expand(10, 20, 1, 2, 2)
    perfect = few_shot(Oracle(set()), images, way=5, shot=1, episodes=200, seed=1)
    assert perfect.accuracy == 1.0 and perfect.stderr == 0.0
    # classes 0 and 1 always wrong: each appears in half the 5-way episodes, so accuracy = 1 − 2·(1/10) = 0.8
    half = few_shot(Oracle({0, 1}), images, way=5, shot=1, episodes=2000, seed=1)
    assert abs(half.accuracy - 0.8) < 4 * half.stderr and 0 < half.stderr < 0.01
    ten = few_shot(Oracle({0, 1}), images, way=10, shot=5, episodes=20, queries=3)
    assert ten.accuracy == pytest.approx(0.8, abs=1e-12) and ten.name == "10-way 5-shot"
