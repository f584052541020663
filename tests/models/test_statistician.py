"""The Neural Statistician's math: q(c | D) ignores the order, the padding and the batch of a set and takes any set
size; the dataset ELBO equals a float64 recomputation with torch.distributions, and the Monte Carlo mean of its log
weight; the classification rule picks the class whose context is nearest in KL; generation depends only on a row's
own noise and set."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

from models.statistician import Statistician, StatisticianConfig

TINY = StatisticianConfig(height=12, width=12, sample_size=4, widths=(4, 6, 8), convs=2, hidden=16, layers=2,
                          c_dim=6, z_dim=3)


@pytest.fixture(params=[False, True], ids=["plain", "batch_norm"])
def model(request) -> Statistician:
    torch.manual_seed(0)
    m = Statistician(replace(TINY, batch_norm=request.param))
    with torch.no_grad():  # a non-trivial posterior: untrained heads give σ ≈ 1 everywhere
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for seed in range(3):  # batch norm: running statistics that are not the identity's
            m.loss({"x": sets(8, TINY.sample_size, seed=10 + seed)},
                   torch.randn(8, TINY.c_dim + TINY.sample_size * TINY.z_dim))
    return m.eval()


def sets(b: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, s, 1, TINY.height, TINY.width, generator=g) < 0.3).float()


def test_the_context_ignores_set_order_and_takes_any_set_size(model):
    x = sets(3, 20)
    mu, ls = model.context(x)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    mu_p, ls_p = model.context(x[:, perm])
    torch.testing.assert_close(mu_p, mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(ls_p, ls, rtol=0, atol=1e-5)
    for s in range(1, 21):
        mu_s, ls_s = model.context(x[:, :s])
        assert mu_s.shape == ls_s.shape == (3, TINY.c_dim) and torch.isfinite(mu_s).all()
    # nothing about the set size is baked in: the loss takes sets of 1 and 20 with the noise they need
    for s in (1, 20):
        noise = torch.randn(3, TINY.c_dim + s * TINY.z_dim)
        assert model.loss({"x": x[:, :s]}, noise).bound.shape == (3,)
    with pytest.raises(ValueError, match="sets of 2 need"):
        model.loss({"x": x[:, :2]}, torch.randn(3, TINY.c_dim + 5 * TINY.z_dim))


def test_padding_and_batch_mates_change_nothing(model):
    x = sets(4, 5)
    short = x[:1, :3]
    padded = torch.cat([short, torch.ones(1, 2, 1, TINY.height, TINY.width)], 1)  # junk padding items
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    mu, ls = model.context(short)
    mu_p, ls_p = model.context(padded, mask)
    torch.testing.assert_close(mu_p, mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(ls_p, ls, rtol=0, atol=1e-5)
    # the loss of the padded set equals the short set's at the same ε for its real items
    eps_c, eps_z = torch.randn(1, TINY.c_dim), torch.randn(1, 5, TINY.z_dim)
    full = model.loss({"x": padded, "set_mask": mask}, torch.cat([eps_c, eps_z.flatten(1)], 1))
    real = model.loss({"x": short}, torch.cat([eps_c, eps_z[:, :3].flatten(1)], 1))
    torch.testing.assert_close(full.bound, real.bound, rtol=1e-5, atol=1e-4)
    # ... and so are its importance weight (L_k, served scores: padded items would add log q − log p terms) and
    # the scalar minimised (the −ELBO per real item, not per padded slot)
    assert full.log_weight is not None and real.log_weight is not None
    torch.testing.assert_close(full.log_weight, real.log_weight, rtol=1e-5, atol=1e-4)
    full_min, real_min = full.minimise["model"], real.minimise["model"]
    assert full_min is not None and real_min is not None
    torch.testing.assert_close(full_min, real_min, rtol=1e-5, atol=1e-4)
    # a set's context is the same alone and beside other sets
    torch.testing.assert_close(model.context(x)[0][2:3], model.context(x[2:3])[0], rtol=0, atol=1e-5)


def test_the_dataset_elbo_matches_a_float64_recomputation(model):
    """Σ_i [−log p(x_i | z_i, c) + KL(q(z_i | x_i, c) ‖ p(z_i | c))] + KL(q(c | D) ‖ N(0, I)), rebuilt from the
    networks' outputs with torch.distributions in float64."""
    m = model.double()
    x = sets(3, 4).double()
    noise = torch.randn(3, TINY.c_dim + 4 * TINY.z_dim, dtype=torch.float64)
    losses = m.loss({"x": x}, noise)

    b, s = 3, 4
    c_mu, c_ls = m.context(x)
    q_c = Normal(c_mu, c_ls.exp())
    c = c_mu + c_ls.exp() * noise[:, : TINY.c_dim]
    items = c.repeat_interleave(s, 0)
    h = m.encoder(x.flatten(0, 1))
    zq_mu, zq_ls = m.inference(torch.nn.functional.elu(m.inference_x(h) + m.inference_c(items)))
    z = zq_mu + zq_ls.exp() * noise[:, TINY.c_dim:].reshape(-1, TINY.z_dim)
    zp_mu, zp_ls = m.prior(items)
    recon = -Bernoulli(logits=m.decode(z, items)).log_prob(x.flatten(0, 1)).flatten(1).sum(1).view(b, s).sum(1)
    kl_z = kl_divergence(Normal(zq_mu, zq_ls.exp()), Normal(zp_mu, zp_ls.exp())).sum(1).view(b, s).sum(1)
    kl_c = kl_divergence(q_c, Normal(torch.zeros_like(c_mu), torch.ones_like(c_mu))).sum(1)
    torch.testing.assert_close(losses.terms["reconstruction"], recon)
    torch.testing.assert_close(losses.terms["kl_z"], kl_z)
    torch.testing.assert_close(losses.terms["kl_c"], kl_c)
    torch.testing.assert_close(losses.bound, recon + kl_z + kl_c)
    # the scalar minimised is the mean −ELBO per item, and the warm-up scales only the KLs
    torch.testing.assert_close(losses.minimise["model"], ((recon + kl_z + kl_c) / s).mean())
    half = m.loss({"x": x}, noise, kl_weight=0.5).minimise["model"]
    torch.testing.assert_close(half, ((recon + 0.5 * (kl_z + kl_c)) / s).mean())


def test_the_mean_log_weight_is_the_elbo():
    """E_q[log p(D, c, z) − log q(c, z | D)] = ELBO: the sampled log-ratios average to the closed-form KLs."""
    torch.manual_seed(2)
    cfg = StatisticianConfig(height=8, width=8, sample_size=3, widths=(2, 2, 2), convs=1, hidden=8, layers=1,
                             c_dim=4, z_dim=2)
    m, n = Statistician(cfg).double().eval(), 16000
    x = (torch.rand(1, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3)) < 0.3).double().expand(n, -1, -1, -1, -1)
    noise = torch.randn(n, cfg.c_dim + 3 * cfg.z_dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        log_w = m.log_weight({"x": x}, noise)
        losses = m.loss({"x": x}, noise)
    torch.testing.assert_close(losses.log_weight, log_w)
    kl = losses.terms["kl_z"] + losses.terms["kl_c"]
    log_ratio = -log_w - losses.terms["reconstruction"]
    gap = log_ratio.mean() - kl.mean()  # E[log-ratio] − KL: zero in expectation
    se = (log_ratio - kl).std() / n**0.5
    assert abs(gap) < 4 * se, (gap, se)
    assert se < 0.06, se  # the check has teeth: a KL off by 0.3 nat fails it (tried)


def test_the_classification_rule_picks_the_nearest_context(model):
    """Each class's one shot is a distinct drawing; a query that is one of them has KL 0 to its own class and a
    positive KL to every other, so it is classified correctly whatever the weights."""
    shots = sets(5, 1, seed=4)  # (N=5, K=1, C, H, W)
    query = shots[[3, 0, 4], 0]
    scores = model.class_scores(shots, query)
    assert scores.shape == (3, 5)
    assert scores.argmax(1).tolist() == [3, 0, 4]
    torch.testing.assert_close(scores[[0, 1, 2], [3, 0, 4]], torch.zeros(3), rtol=0, atol=1e-5)
    assert (scores <= 0).all()  # never above 0, its own class's rounding included
    assert not torch.signbit(scores[scores == 0]).any()  # and a zero is 0, not −0 (JSON would show "-0.0")
    # the score is −KL(q(c|x) ‖ q(c|D_n)) between the networks' Gaussians, checked against torch.distributions
    support = sets(5, 3, seed=5)
    mu_n, ls_n = model.context(support)
    mu_q, ls_q = model.context(query.unsqueeze(1))
    expected = torch.stack([-kl_divergence(Normal(mu_q[i], ls_q[i].exp()), Normal(mu_n, ls_n.exp())).sum(-1)
                            for i in range(3)])
    torch.testing.assert_close(model.class_scores(support, query), expected, rtol=1e-5, atol=1e-5)
    # fewer shots in one class: the masked mean is that class's context alone
    mask = torch.tensor([[1, 1, 1]] * 4 + [[1, 0, 0]])
    masked = model.class_scores(support, query, mask)
    torch.testing.assert_close(masked[:, 4], model.class_scores(support[4:, :1], query)[:, 0], rtol=1e-5, atol=1e-5)


def test_generation_depends_only_on_a_rows_own_noise_and_set(model):
    x = sets(3, 5, seed=6)
    noise = torch.randn(3, *model.noise_shape(), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        together = next(model.generate(noise, sets=x)).logits
        alone = next(model.generate(noise[1:2], sets=x[1:2])).logits
        prior = next(model.generate(noise)).logits
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-5)
    assert together.shape == prior.shape == (3, 1, TINY.height, TINY.width)
    assert not torch.allclose(together, prior)  # the set moves c away from the prior draw
    with pytest.raises(ValueError, match="no condition"):
        model.generate(noise, captions=x)


def test_output_bias_starts_at_the_pixel_marginal():
    m = Statistician(TINY)
    means = torch.rand(1, TINY.height, TINY.width).clamp(0.05, 0.95)
    m.init_output_bias(means)
    torch.testing.assert_close(torch.sigmoid(m.pixel_bias), means)


def test_batch_norm_is_opt_in_and_holds_the_gaussian_parameters_to_one_scale():
    """With batch_norm the heads' [μ, log σ²] are standardised together over the batch in training (the released
    code's "global" batch norm: what keeps z's scale from drifting); without it no module is added, so the first
    checkpoints load as they were saved."""
    from models.statistician import GaussianHead

    plain = Statistician(TINY)
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in plain.modules())
    normed = Statistician(replace(TINY, batch_norm=True))
    norms = sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in normed.modules())
    assert norms == 6 + 6 + 1 + 3 * 2 + 3  # encoder convs, decoder convs, the item layer, residual FC layers, heads
    head = GaussianHead(8, 3, norm=True).train()
    torch.manual_seed(0)
    mu, log_sigma = head(50 * torch.randn(64, 8) + 20)  # features far from unit scale
    both = torch.cat([mu, 2 * log_sigma], -1)  # [μ, log σ²], as the released code normalises them
    torch.testing.assert_close(both.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(both.var(unbiased=False), torch.tensor(1.0), atol=2e-3, rtol=0)
    assert not torch.allclose(mu.std(), log_sigma.std())  # one statistic for both, not one per column
