"""models/bounds.py, the one L_k: against an independent float64 log-mean-exp of the same log-weights, chunking,
and k = 1 being an unbiased ELBO estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.bounds import Interrupted, importance_weighted, log_mean_exp, log_weights
from models.draw import DRAW
from tests.models.conftest import TINY_DRAW, block_images


@pytest.fixture(scope="module")
def draw():
    torch.manual_seed(0)
    return DRAW(TINY_DRAW).eval()


def np_log_mean_exp(v: np.ndarray) -> np.ndarray:
    """log (1/k) Σ exp(v) per row in float64 numpy, written out: max-shift, mean, log."""
    top = v.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(v - top).mean(axis=1, keepdims=True)))[:, 0]


def test_log_mean_exp_is_the_log_of_the_mean_weight():
    v = torch.tensor([[0.0, math.log(3.0)], [-1000.0, -1000.0]], dtype=torch.float64)
    torch.testing.assert_close(log_mean_exp(v, dim=1), torch.tensor([math.log(2.0), -1000.0], dtype=torch.float64))


def test_lk_equals_a_float64_log_mean_exp_of_the_models_own_log_weights(draw):
    x, k = block_images(3, 12, 10), 10
    lk, mean = importance_weighted(draw, {"x": x}, k, generator=torch.Generator().manual_seed(4))
    # The same ε, drawn as log_weights draws it (all 3 × k rows in one pass), through the model directly.
    noise = torch.randn(3 * k, *draw.noise_shape(), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        direct = draw.log_weight({"x": x.repeat_interleave(k, 0)}, noise).double().view(3, k).numpy()
    np.testing.assert_allclose(lk.numpy(), np_log_mean_exp(direct), rtol=0, atol=1e-9)
    np.testing.assert_allclose(mean.numpy(), direct.mean(1), rtol=0, atol=1e-9)
    assert (lk > mean).all()  # a log-mean-exp exceeds the mean unless the weights are equal


def test_chunking_and_grouping_draw_the_same_samples(draw):
    x = block_images(4, 12, 10)
    a = log_weights(draw, {"x": x}, 12, chunk=500, generator=torch.Generator().manual_seed(9))  # 4 images a pass
    b = log_weights(draw, {"x": x}, 12, chunk=5, generator=torch.Generator().manual_seed(9))  # 5 samples a pass
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_one_sample_is_an_unbiased_elbo_estimate(draw):
    """L_1 is one log-weight, log p(x, z) − log q(z | x): its mean over draws is the ELBO, which DRAW's loss gives
    with closed-form KLs (−bound). Compared over 2,000 independent draws each, within 4 standard errors: a log-ratio
    off by a constant (a missing log σ, the wrong prior) moves the mean by nats."""
    x = block_images(2, 12, 10)
    n = 2000
    rows = x.repeat_interleave(n, 0)
    l1, _ = importance_weighted(draw, {"x": rows}, 1, chunk=4000, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2 * n, *draw.loss_noise_shape(), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        elbo = -draw.loss({"x": rows}, noise).bound.double()
    l1, elbo = l1.view(2, n), elbo.view(2, n)
    se = (l1.var(1) / n + elbo.var(1) / n).sqrt()
    assert ((l1.mean(1) - elbo.mean(1)).abs() < 4 * se).all(), (l1.mean(1), elbo.mean(1), se)
    assert (se < 0.15).all()  # measured 0.03: a nat-sized bias is far outside 4 standard errors
    lk, mean = importance_weighted(draw, {"x": x}, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lk, mean, rtol=0, atol=1e-12)  # and one sample's L_1 is its own log-weight


def test_stop_is_asked_between_passes_and_interrupts_there(draw, monkeypatch):
    x = block_images(2, 12, 10)  # k = 12 in passes of 5: 3 passes an image, 6 in all
    asked: list[int] = []

    def never() -> bool:
        asked.append(1)
        return False

    free = log_weights(draw, {"x": x}, 12, chunk=5, generator=torch.Generator().manual_seed(9))
    asked_along = log_weights(draw, {"x": x}, 12, chunk=5, generator=torch.Generator().manual_seed(9), stop=never)
    assert torch.equal(free, asked_along) and len(asked) == 5  # before every pass but the first

    passes = 0
    real = draw.log_weight

    def counted(*args, **kwargs):
        nonlocal passes
        passes += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(draw, "log_weight", counted)
    with pytest.raises(Interrupted):
        log_weights(draw, {"x": x}, 12, chunk=5, stop=lambda: passes >= 4)
    assert passes == 4  # it stopped at the first pass boundary after the stop said so
