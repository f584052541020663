import torch
from torch.distributions import Normal, kl_divergence

from models.gaussian import kl_diagonal, kl_standard_normal, log_density, log_standard_density


def _random(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2, torch.randn(shape, generator=g,
                                                                                 dtype=torch.float64)


def test_kl_between_diagonal_gaussians_matches_torch_distributions():
    mu_q, ls_q = _random((64, 20), 0)
    mu_p, ls_p = _random((64, 20), 1)
    expected = kl_divergence(Normal(mu_q, ls_q.exp()), Normal(mu_p, ls_p.exp())).sum(-1)
    torch.testing.assert_close(kl_diagonal(mu_q, ls_q, mu_p, ls_p), expected)


def test_kl_to_standard_normal_matches_torch_distributions_and_the_general_form():
    mu, ls = _random((64, 20), 2)
    zero = torch.zeros_like(mu)
    expected = kl_divergence(Normal(mu, ls.exp()), Normal(zero, torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, ls), expected)
    torch.testing.assert_close(kl_diagonal(mu, ls, zero, zero), expected)


def test_log_densities_match_torch_distributions():
    mu, ls = _random((32, 10), 3)
    z, _ = _random((32, 10), 4)
    torch.testing.assert_close(log_density(z, mu, ls), Normal(mu, ls.exp()).log_prob(z).sum(-1))
    torch.testing.assert_close(log_standard_density(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
