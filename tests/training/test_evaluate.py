"""L_k on a small trained model, and the caption-fidelity judge against the dataset's own images."""

import math

import numpy as np
import pytest
import torch

from models.draw import DRAW
from tests.models.conftest import TINY_DRAW, block_images
from training.classifier import accuracy, load_classifier
from training.evaluate import importance_weighted_bound
from training.fidelity import CLASSIFIER, judge


@pytest.fixture(scope="module")
def trained_draw():
    torch.manual_seed(0)
    model = DRAW(TINY_DRAW)
    x = block_images(8, 12, 10)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        model(x, generator=g).loss.backward()
        opt.step()
    return model.eval(), x


def test_lk_rises_with_k_and_l1_is_the_elbo_in_expectation(trained_draw):
    model, x = trained_draw
    pool, images = 2000, 4
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # one pool of log-weights per image, from a single batched forward
        rep = x[:images].repeat_interleave(pool, 0)
        out = model(rep, generator=g)
    log_w = out.log_weight.double().view(images, pool)
    elbo = -out.nll_bound.double().view(images, pool)

    def l_k(k):  # mean over groups of k of log (1/k) Σ w
        return (torch.logsumexp(log_w.view(images, pool // k, k), -1) - math.log(k)).mean(1)

    # L_1 and the analytic-KL ELBO share an expectation: agree within 4 standard errors.
    se = ((log_w.var(1) + elbo.var(1)) / pool).sqrt()
    assert ((l_k(1) - elbo.mean(1)).abs() < 4 * se).all(), (l_k(1), elbo.mean(1), se)
    l1, l10, l200 = l_k(1), l_k(10), l_k(200)
    assert (l10 > l1).all() and (l200 > l10).all(), (l1, l10, l200)
    assert (l200 - l1).min() > 4 * se.max()  # a real rise, not noise


def test_lk_chunking_does_not_change_the_estimate(trained_draw):
    model, x = trained_draw
    a = importance_weighted_bound(model, {"x": x[:2]}, 300, chunk=300, generator=torch.Generator().manual_seed(5))
    b = importance_weighted_bound(model, {"x": x[:2]}, 300, chunk=7, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def judge_inputs():
    import os
    from pathlib import Path

    from training.data import captions as cap
    from training.data.mnist import load_mnist

    root = os.environ.get("GLIMPSE_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "data")
    if not Path(root, "mnist").is_dir():
        pytest.skip("shared MNIST absent: set GLIMPSE_DATA_DIR")
    test = load_mnist("test", root=root)
    return test, cap.generate(test, 600, generator=3, allow_banned=True), load_classifier(CLASSIFIER)


def test_shipped_classifier_reads_mnist_test_digits(judge_inputs):
    test, _, classifier = judge_inputs
    x = torch.from_numpy(test.images[:2000]).float().div(255).unsqueeze(1)
    assert accuracy(classifier, x, torch.from_numpy(test.labels[:2000]).long()) > 0.97


def test_judge_accepts_the_datasets_own_images_and_rejects_wrong_digits_or_places(judge_inputs):
    _, batch, classifier = judge_inputs
    own = judge(batch.images, batch.templates, batch.digits, classifier).mean()
    assert own > 0.93, own
    wrong = np.where(batch.digits >= 0, (batch.digits + 1) % 10, -1)
    assert judge(batch.images, batch.templates, wrong, classifier).mean() < 0.05
    swapped = batch.templates ^ 1  # 4<->5, 6<->7: the one digit judged in the opposite corner
    one = batch.templates >= 4
    moved = judge(batch.images[one], swapped[one], batch.digits[one], classifier).mean()
    assert moved < 0.15, moved
