"""Bounds over a data set, in nats per image: the trainer's validation pass (the family's `bound`, fixed noise) and
−L_k with its standard error (models/bounds.py, the one L_k). A leaf: the trainer, the evaluator and the caption
fidelity report all import it, and it imports none of them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from models.bounds import importance_weighted
from training.batching import Batch, batches, trim_padding
from training.device import evaluating


def on_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(model: Any, data: Batch, batch_size: int, device: torch.device, seed: int,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """Mean bound (−ELBO for the DRAW family) and its logged terms per image over a data set, with fixed noise so
    epochs compare: {"val_nll_bound", "val_<term>"..., "val_images"}."""
    noise = (tuple(model.loss_noise_shape()), torch.Generator().manual_seed(seed))
    sums: dict[str, float] = {}
    count = 0.0
    with evaluating(model):
        for batch in batches(data, batch_size, rank=rank, world=world, noise=noise):
            batch = on_device(trim_padding(batch), device)
            eps = batch.pop("noise")
            losses = model.loss(batch, eps)
            for name, value in {"nll_bound": losses.bound, **losses.terms}.items():
                sums[name] = sums.get(name, 0.0) + value.double().sum().item()
            count += batch["x"].shape[0]
    totals = torch.tensor([*sums.values(), count], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals)
    n = totals[-1].item()
    return {f"val_{name}": totals[i].item() / n for i, name in enumerate(sums)} | {"val_images": int(n)}


def elbo_terms(model: Any, data: Batch, *, batch_size: int = 100, seed: int = 0) -> dict[str, float]:
    """Mean bound and its terms per image, one draw of the family's loss noise per image (one z for the DRAW
    family, its training k for IWAE): the trainer's validation pass."""
    terms = validate(model, data, batch_size, next(model.parameters()).device, seed)
    return {key.removeprefix("val_"): value for key, value in terms.items()}


def nll_k(model: Any, data: Batch, k: int, *, seed: int = 0, progress: bool = True, chunk: int = 500,
          per_example: dict[str, Tensor] | None = None) -> dict[str, float]:
    """−L_k over `data` with its standard error, and the gap L_k − ELBO measured on the same samples. A dict given
    as `per_example` receives each example's L_k ("lk") and mean log-weight ("mean_log_weight"), (N,) float64."""
    g = torch.Generator().manual_seed(seed)
    n = data["x"].shape[0]
    per = max(1, chunk // k)  # examples whose k samples share one pass
    lk, mean = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for i in tqdm(range(0, n, per), desc=f"L_{k}", disable=not progress, leave=False):
        # Written into buffers made up front: 10,000 small result tensors kept alive between each pass's large
        # temporaries pinned glibc's heap (measured: ~2 MB of RSS an image, 23 GB and an OOM kill at 9,412 images).
        lk[i : i + per], mean[i : i + per] = importance_weighted(
            model, {key: v[i : i + per] for key, v in data.items()}, k, chunk=chunk, generator=g)
    gap = lk - mean
    if per_example is not None:
        per_example |= {"lk": lk, "mean_log_weight": mean}

    def stderr(v: Tensor) -> float:
        return (v.std() / math.sqrt(n)).item() if n > 1 else 0.0

    elbo = lk - gap  # the mean log-weight: a k-sample ELBO estimate from the same samples
    return {f"nll_L{k}": -lk.mean().item(), f"nll_L{k}_stderr": stderr(lk), f"images_L{k}": n,
            f"gap_L{k}": gap.mean().item(), f"gap_L{k}_stderr": stderr(gap),
            f"neg_elbo_L{k}_samples": -elbo.mean().item(), f"neg_elbo_L{k}_samples_stderr": stderr(elbo)}


def subset(n: int, size: int | None, seed: int = 0) -> Tensor:
    """Indices of a seeded random `size` of n images, sorted (all n without a size). Random, not the first few:
    for the 6-epoch draw-mnist the first 40 binarized-MNIST test digits' −ELBO was 114.4 nats, all 10,000's 101.8."""
    if not size or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def read_per_example(path: str | Path) -> dict[int, float]:
    """A --per-image or --per-sentence CSV -> {test index: NLL}."""
    with Path(path).open(newline="") as f:
        rows = csv.DictReader(f)
        if not {"index", "nll"} <= set(rows.fieldnames or ()):
            raise ValueError(f"{path}: not a per-example file (its header must name index and nll)")
        return {int(row["index"]): float(row["nll"]) for row in rows}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """B − A on the same examples: the mean NLL difference with its paired standard error (far smaller than either
    model's own when the examples' difficulty dominates their NLL), beside the two unpaired ones."""
    if a.keys() != b.keys():
        raise ValueError(f"the two files cover different examples ({len(a)} and {len(b)}, {len(a.keys() & b.keys())} "
                         "shared): evaluate both with the same --limit and --lk-images")
    n = len(a)
    if n < 2:
        raise ValueError("a standard error needs at least two examples")
    index = sorted(a)
    va = torch.tensor([a[i] for i in index], dtype=torch.float64)
    vb = torch.tensor([b[i] for i in index], dtype=torch.float64)
    d = vb - va

    def se(v: Tensor) -> float:
        return (v.std() / math.sqrt(n)).item()

    return {"examples": n, "nll_a": va.mean().item(), "nll_b": vb.mean().item(), "b_minus_a": d.mean().item(),
            "b_minus_a_paired_stderr": se(d), "nll_a_stderr": se(va), "nll_b_stderr": se(vb)}
