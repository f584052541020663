"""The importance-weighted bound L_k (Burda et al. 2016, eq. 8), in nats: the one implementation that training
(IWAE's objective), evaluation (−L_5000) and the worker's likelihood scoring share.

L_k = log (1/k) Σ_i w_i with w_i = p(x, z_i) / q(z_i | x), z_i ~ q: L_1 is the ELBO in expectation, L_k rises
towards log p(x) as k grows (Burda Theorem 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/k) Σ_i exp(log_w_i) along `dim` (k = its length), stable for any scale of the log-weights.

    Its gradient is Σ_i w̃_i ∇ log w_i with w̃ = softmax(log w): the paper's normalised weights (eq. 14), detached
    by construction since softmax's own gradient cancels in the sum.
    """
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class Interrupted(Exception):
    """`log_weights` was told to stop between two passes (its `stop` returned True)."""


@torch.no_grad()
def log_weights(model, batch: Mapping[str, Tensor], k: int, *, chunk: int = 500,
                generator: torch.Generator | None = None, device: torch.device | None = None,
                stop: Callable[[], bool] | None = None) -> Tensor:
    """k log-weights per example, (B, k) float64 on the CPU, from z_i ~ q(z | x) with ε drawn on the CPU.

    A pass holds at most `chunk` rows: whole examples × k when k ≤ chunk, else `chunk` samples of one example, so
    k = 5000 needs no more memory than one chunk. `batch` holds `x` and the model's conditions, one row each.
    `stop` is asked before every pass after the first; when it says True, Interrupted is raised (a caller that can be
    cancelled waits one pass, not one example's k samples).
    """
    device = device or next(model.parameters()).device
    n = batch["x"].shape[0]
    shape = tuple(model.noise_shape())
    broadcasts = getattr(model, "log_weight_broadcasts", False)  # models/family.py: (B, m, *shape) noise
    out = torch.empty(n, k, dtype=torch.float64)
    per = max(1, chunk // k)  # examples per pass
    for lo in range(0, n, per):
        rows = range(lo, min(n, lo + per))
        done = 0
        while done < k:
            if stop is not None and (lo or done) and stop():
                raise Interrupted
            m = min(k - done, chunk)
            part = {key: v[rows.start : rows.stop].to(device) for key, v in batch.items()}
            noise = torch.randn(len(rows) * m, *shape, generator=generator).to(device)  # row r's m samples together
            if broadcasts:
                log_w = model.log_weight(part, noise.view(len(rows), m, *shape))
            else:
                log_w = model.log_weight({key: v.repeat_interleave(m, 0) for key, v in part.items()}, noise)
            out[rows.start : rows.stop, done : done + m] = log_w.double().cpu().view(-1, m)
            done += m
    return out


def importance_weighted(model, batch: Mapping[str, Tensor], k: int, *, chunk: int = 500,
                        generator: torch.Generator | None = None,
                        stop: Callable[[], bool] | None = None) -> tuple[Tensor, Tensor]:
    """(L_k, mean log-weight) per example, both (B,) float64, from the same k samples.

    The mean log-weight is a k-sample ELBO estimate, so L_k minus it is the bound gap with little noise (never
    negative: a log-mean-exp is at least the mean).
    """
    log_w = log_weights(model, batch, k, chunk=chunk, generator=generator, stop=stop)
    return log_mean_exp(log_w, dim=1), log_w.mean(1)
