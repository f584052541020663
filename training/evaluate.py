"""Evaluation: test-set ELBO and the importance-weighted bound L_k (Burda et al. 2016, eq. 8), in nats.

L_k = E[log (1/k) Σ_i p(x, z_i) / q(z_i | x)] with z_i ~ q: L_1 is the ELBO in expectation and L_k rises
towards log p(x) as k grows. The k samples of one image are run as batches of repeated copies of it and
combined with a running log-sum-exp, so k = 5000 needs no more memory than one chunk.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from models.aligndraw import AlignDRAW
from models.checkpoint import load_checkpoint
from models.draw import DRAW
from training.tasks import Batch
from training.train import forward, resolve_device, validate


@torch.no_grad()
def log_weight_stats(model: DRAW | AlignDRAW, batch: Batch, k: int, *, chunk: int = 500,
                     generator: torch.Generator | None = None,
                     device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(L_k, mean log-weight) per image, both (B,), from the same k samples z_i ~ q(z | x).

    The mean log-weight is a k-sample ELBO estimate, so L_k minus it is each image's bound gap with little noise
    (never negative: a log-mean-exp is at least the mean). Each image's k log-weights come in chunks of ≤ `chunk`.
    """
    device = device or next(model.parameters()).device
    n = batch["x"].shape[0]
    lk, mean = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for i in range(n):
        acc = torch.tensor(-math.inf, dtype=torch.float64)
        total = torch.tensor(0.0, dtype=torch.float64)
        done = 0
        while done < k:
            m = min(chunk, k - done)
            rep = {key: v[i : i + 1].expand(m, *v.shape[1:]) for key, v in batch.items()}
            rep["noise"] = torch.randn(m, model.steps, model.z_size, generator=generator)
            log_w = forward(model, rep, device).log_weight.double().cpu()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
            total += log_w.sum()
            done += m
        lk[i], mean[i] = acc - math.log(k), total / k
    return lk, mean


@torch.no_grad()
def elbo_terms(model: DRAW | AlignDRAW, data: Batch, *, batch_size: int = 100, seed: int = 0) -> dict[str, float]:
    """Mean −ELBO, reconstruction and KL in nats per image (one z sample per image): the trainer's validation pass."""
    terms = validate(model, data, batch_size, next(model.parameters()).device, seed)
    return {key.removeprefix("val_"): value for key, value in terms.items()}


def nll_k(model: DRAW | AlignDRAW, data: Batch, k: int, *, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """−L_k over `data` with its standard error, and the gap L_k − ELBO measured on the same samples."""
    g = torch.Generator().manual_seed(seed)
    n = data["x"].shape[0]
    pairs = [log_weight_stats(model, {key: v[i : i + 1] for key, v in data.items()}, k, generator=g)
             for i in tqdm(range(n), desc=f"L_{k}", disable=not progress, leave=False)]
    lk = torch.cat([p[0] for p in pairs])
    gap = lk - torch.cat([p[1] for p in pairs])

    def stderr(v: Tensor) -> float:
        return (v.std() / math.sqrt(n)).item() if n > 1 else 0.0

    return {f"nll_L{k}": -lk.mean().item(), f"nll_L{k}_stderr": stderr(lk), f"images_L{k}": n,
            f"gap_L{k}": gap.mean().item(), f"gap_L{k}_stderr": stderr(gap)}


def subset(n: int, size: int | None, seed: int = 0) -> Tensor:
    """Indices of a seeded random `size` of n images, sorted (all n without a size). Random, not the first few:
    for the 6-epoch draw-mnist the first 40 binarized-MNIST test digits' −ELBO was 114.4 nats, all 10,000's 101.8."""
    if not size or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def main(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, 0)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    model = ckpt.model.eval()
    results: dict[str, Any] = {"checkpoint": str(Path(args.checkpoint).resolve()), "k": args.k}
    dataset = ckpt.extra.get("dataset")
    if dataset in ("binarized-mnist", "mnist"):
        from training.data.binarized import dynamic_binarize, load_binarized_mnist
        from training.data.mnist import load_mnist

        if dataset == "binarized-mnist":
            x = torch.from_numpy(load_binarized_mnist("test", root=args.data_dir)).float().view(-1, 1, 28, 28)
        else:
            grey = torch.from_numpy(load_mnist("test", root=args.data_dir).images).float().div(255)
            x = dynamic_binarize(grey.view(-1, 1, 28, 28), torch.Generator().manual_seed(0))
        data = {"x": x[: args.limit] if args.limit else x}
        test = elbo_terms(model, data)
        lk = nll_k(model, {"x": data["x"][subset(len(data["x"]), args.lk_images)]}, args.k)
        if lk[f"images_L{args.k}"] < test["images"]:
            # L_k on every image costs k passes each; the paired gap from a random subset carries it to all of them
            lk[f"nll_L{args.k}_estimate_all"] = test["nll_bound"] - lk[f"gap_L{args.k}"]
        results["test"] = test | lk
    else:
        from training.fidelity import evaluate_captions

        results |= evaluate_captions(ckpt, k=args.k, limit=args.limit, data_dir=args.data_dir,
                                     lk_images=args.lk_images or 100, temperatures=args.temperatures)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0

