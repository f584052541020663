"""Diagnostic (2026-12-04, a seventh session): is the 32-d AVB's loose −L_5000 the diagonal proposal's fault?

The implicit encoder's z = z₀ + Σ_i a_i(x) ⊙ v_i(ε_i) has an exact full covariance given x,
Σ(x) = Σ_i (a_i a_iᵀ) ⊙ Cov[v_i] (Cov[v_i] over the same fixed basis draws that give r_α's variances). This script
compares, on the evaluation's seeded test images and with the same ε for both, L_k under r_α = N(μ, diag Σ) (what the
product reports) and under N(μ, Σ) (also a valid proposal), and prints how correlated q(z | x) is.

    .venv/bin/python docs/experiments/2026-12-04-avb/full_covariance.py checkpoints/avb-mnist --images 100 --k 500
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.bounds import log_mean_exp  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.elbo import bernoulli_nll  # noqa: E402
from models.gaussian import log_density, log_standard_density  # noqa: E402
from training.data.binarized import dynamic_binarize  # noqa: E402
from training.data.mnist import load_mnist  # noqa: E402
from training.likelihood import subset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_checkpoint(args.checkpoint).model.eval()
    c = model.config
    grey = torch.from_numpy(load_mnist("test", root=args.data_dir).images).float().div(255)
    x = dynamic_binarize(grey.view(-1, 1, 28, 28), torch.Generator().manual_seed(0))  # as `training evaluate`
    x = x[subset(len(x), args.images)]
    enc = model.encoder
    with torch.no_grad():
        z0, a = enc.coefficients(x)
        mean, var = enc.moments(z0, a)
        sigma = enc.covariance(a).float() + c.var_floor * torch.eye(c.z_size)  # from the fixed basis draws
        assert torch.allclose(torch.diagonal(sigma, dim1=1, dim2=2), var + c.var_floor, rtol=1e-4, atol=1e-6)
        chol = torch.linalg.cholesky(sigma)
        sd = torch.diagonal(sigma, dim1=1, dim2=2).sqrt()
        off = (sigma / sd[:, :, None] / sd[:, None, :] - torch.eye(c.z_size)).abs()
        logdet_full = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        logdet_diag = torch.log(var + c.var_floor).sum(1)
        print(f"{args.images} seeded test images; q(z | x) correlations: mean |off-diagonal| {off.mean():.3f}, "
              f"largest {off.max():.4f}; log det Σ {logdet_full.mean():.1f} against the diagonal's "
              f"{logdet_diag.mean():.1f} (mean over images)")
        g = torch.Generator().manual_seed(0)
        rows = []
        for i in range(len(x)):
            eps = torch.randn(args.k, c.z_size, generator=g)  # the same ε for both proposals
            xi = x[i : i + 1].expand(args.k, -1, -1, -1)
            log_sigma = 0.5 * torch.log(var[i] + c.var_floor)
            z = mean[i] + eps * log_sigma.exp()
            diag = (-bernoulli_nll(model.decoder(z), xi) + log_standard_density(z)
                    - log_density(z, mean[i].expand_as(z), log_sigma.expand_as(z)))
            z = mean[i] + eps @ chol[i].T
            log_r = (-0.5 * (eps * eps).sum(1) - torch.log(torch.diagonal(chol[i])).sum()
                     - 0.5 * c.z_size * math.log(2 * math.pi))
            full = -bernoulli_nll(model.decoder(z), xi) + log_standard_density(z) - log_r
            rows.append([-log_mean_exp(diag.double()).item(), -diag.double().mean().item(),
                         -log_mean_exp(full.double()).item(), -full.double().mean().item()])
    t = torch.tensor(rows, dtype=torch.float64)
    se = t.std(0) / math.sqrt(len(t))
    for name, col in (("r_α, diagonal (reported)", 0), ("N(μ, Σ), full covariance", 2)):
        print(f"{name}: −L_{args.k} {t[:, col].mean():.2f} ± {se[col]:.2f}; −ELBO (same samples) "
              f"{t[:, col + 1].mean():.2f} ± {se[col + 1]:.2f}")
    d = t[:, 2] - t[:, 0]
    print(f"full − diagonal, −L_{args.k}: {d.mean():+.2f} ± {d.std() / math.sqrt(len(d)):.2f} nats (paired s.e.)")


if __name__ == "__main__":
    main()
