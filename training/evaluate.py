"""`python -m training evaluate CKPT`: the test-set bound and −L_k (models/bounds.py) in nats, and for captions
models the caption fidelity (training/fidelity.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_checkpoint
from training.device import resolve_device
from training.likelihood import elbo_terms, nll_k, subset


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
        lk = nll_k(model, {"x": data["x"][subset(len(data["x"]), args.lk_images)]}, args.k, chunk=args.chunk)
        if lk[f"images_L{args.k}"] < test["images"]:
            # L_k on every image costs k passes each; the paired gap from a random subset carries it to all of them
            lk[f"nll_L{args.k}_estimate_all"] = test["nll_bound"] - lk[f"gap_L{args.k}"]
        results["test"] = test | lk
        active = getattr(model, "active_units", None)
        if callable(active):  # A_u = Cov_x E_q[u | x] > 1e-2 (Burda et al. §5.2), per stochastic layer
            counts, variances = active(data["x"].to(device))
            results["test"]["active_units"] = list(counts)
            results["test"]["active_units_threshold"] = 1e-2
    else:
        from training.fidelity import evaluate_captions

        results |= evaluate_captions(ckpt, k=args.k, limit=args.limit, data_dir=args.data_dir,
                                     lk_images=args.lk_images or 100, temperatures=args.temperatures)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0

