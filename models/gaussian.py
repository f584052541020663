"""Diagonal Gaussians parameterised by mean and log standard deviation, as DRAW's q and alignDRAW's prior."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def kl_diagonal(mu_q: Tensor, log_sigma_q: Tensor, mu_p: Tensor, log_sigma_p: Tensor) -> Tensor:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) summed over the last dim, in nats: (..., Z) -> (...).

    Closed form per dimension: log σ_p/σ_q + (σ_q² + (μ_q − μ_p)²) / (2σ_p²) − ½.
    """
    var_ratio = torch.exp(2 * (log_sigma_q - log_sigma_p))
    mean_term = ((mu_q - mu_p) * torch.exp(-log_sigma_p)) ** 2
    return (0.5 * (var_ratio + mean_term - 1) - (log_sigma_q - log_sigma_p)).sum(-1)


def kl_standard_normal(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − log σ² − 1) (DRAW eq. 11): (..., Z) -> (...)."""
    return 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(-1)


def log_density(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(z; μ, σ²) summed over the last dim: (..., Z) -> (...)."""
    return (-0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * _LOG_2PI).sum(-1)


def log_standard_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dim: (..., Z) -> (...)."""
    return (-0.5 * z**2 - 0.5 * _LOG_2PI).sum(-1)


def reparameterise(mu: Tensor, log_sigma: Tensor, eps: Tensor) -> Tensor:
    """z = μ + σ ⊙ ε with ε ~ N(0, I) drawn by the caller (who owns the generator)."""
    return torch.addcmul(mu, torch.exp(log_sigma), eps)
