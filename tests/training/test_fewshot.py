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


def test_the_model_sees_the_episodes_drawings_and_no_query_in_its_support():
    """few_shot hands the model each episode's drawings (`episode` with the run's seed): the support of each class,
    and queries of that class that its support does not hold. Each image's pixel codes its class and item
    (100·class + item), so a query taken from the support, or drawings other than the episode's, would show."""
    codes = (torch.arange(10)[:, None] * 100 + torch.arange(20)[None]).float()
    images = codes.view(10, 20, 1, 1, 1).expand(10, 20, 1, 2, 2)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))

        def class_scores(self, support, query):
            s, q = support[..., 0, 0, 0], query[:, 0, 0, 0]  # (way, shot) and (way·queries,) codes
            seen.append((s.clone(), q.clone()))
            return -((q[:, None] // 100) - (s[:, 0] // 100)[None]).abs()  # the right class scores 0, others < 0

    result = few_shot(Spy(), images, way=5, shot=5, episodes=30, queries=2, seed=4)
    assert result.accuracy == 1.0 and len(seen) == 30
    g = torch.Generator().manual_seed(4)
    for s, q in seen:
        classes, support, query = episode(10, 20, 5, 5, 2, g)
        assert torch.equal(s, (classes[:, None] * 100 + support).float())
        assert torch.equal(q, (classes[:, None] * 100 + query).flatten().float())
        for c in range(5):
            assert not set(q.view(5, 2)[c].tolist()) & set(s[c].tolist())


def test_train_evaluate_and_card_of_a_set_model(shared_data, tmp_path):
    """`python -m training train --dataset omniglot` (a few batches of a tiny statistician), then `evaluate` on the
    test characters and MNIST, then its card: the few-shot table beside the paper's and the sample pictures."""
    import json

    from training.__main__ import main
    from training.card import render

    run = tmp_path / "run"
    assert main(["train", "--model", "statistician", "--dataset", "omniglot", "--out", str(run), "--epochs", "1",
                 "--max-batches", "2", "--batch-size", "8", "--val-size", "16", "--data-dir", str(shared_data),
                 "--set", "widths=[4,4,4]", "--set", "convs=1", "--set", "hidden=16", "--set", "layers=1",
                 "--set", "c_dim=8", "--set", "z_dim=4"]) == 0
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= metrics["val_5way_1shot"] <= 1 and "val_kl_c" in metrics
    ckpt = run / "best"
    assert main(["evaluate", str(ckpt), "--episodes", "3", "--limit", "12", "--data-dir", str(shared_data),
                 "--pictures", str(ckpt), "--json", str(ckpt / "evaluation.json")]) == 0
    result = json.loads((ckpt / "evaluation.json").read_text())
    assert result["test sets"]["sets"] == 12 and result["test sets"]["set_size"] == 5
    tasks = [(r["way"], r["shot"]) for r in result["few_shot"]["omniglot_test"] + result["few_shot"]["mnist"]]
    assert tasks == [(5, 1), (5, 5), (20, 1), (20, 5), (10, 1), (10, 5)]
    assert result["few_shot"]["classes"] == 423 * 4
    card = render(ckpt)
    assert "| Omniglot 20-way 5-shot | 3 |" in card and "98.1 % (95.5 %)" in card and "test-samples.png" in card
    assert "nats per set" in card
