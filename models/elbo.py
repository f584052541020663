"""The variational bound, kept term by term so training can log and evaluation can importance-weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ELBO:
    """Per-image terms in nats. −ELBO = reconstruction + Σ_t kl[:, t] (DRAW eq. 12)."""

    reconstruction: Tensor  # (B,) −log p(x | z_1:T) = L^x
    kl: Tensor  # (B, T) analytic KL(q_t ‖ p_t) per step; Σ_t = L^z
    log_ratio: Tensor  # (B, T) log q(z_t|·) − log p(z_t|·) at the sampled z; E_q equals kl

    @property
    def nll_bound(self) -> Tensor:
        """−ELBO per image, (B,): an upper bound on −log p(x)."""
        return self.reconstruction + self.kl.sum(1)

    @property
    def log_weight(self) -> Tensor:
        """log p(x, z) − log q(z | x) at the sampled z, (B,): the IWAE importance weight (Burda eq. 8)."""
        return -self.reconstruction - self.log_ratio.sum(1)

    @property
    def loss(self) -> Tensor:
        """Mean −ELBO over the batch: the scalar to minimise."""
        return self.nll_bound.mean()

    def annealed_loss(self, kl_weight: float) -> Tensor:
        """Mean of reconstruction + β·KL: β < 1 during a KL warm-up (Sønderby et al. 2016), the −ELBO at β = 1."""
        return self.loss if kl_weight == 1 else (self.reconstruction + kl_weight * self.kl.sum(1)).mean()


def bernoulli_nll(canvas_logits: Tensor, x: Tensor) -> Tensor:
    """−log Bernoulli(x | σ(c_T)) summed over pixels, (B, C, H, W) -> (B,); x may be grey (cross-entropy)."""
    return F.binary_cross_entropy_with_logits(canvas_logits, x, reduction="none").flatten(1).sum(1)
