"""Selection on validation (2026-12-05, a fifteenth session): AVB checkpoints' −L_k with r_α as the proposal (a valid
bound whatever T learned) on a seeded random subset of the validation digits the trainer holds out, paired image by
image, and how far each q(z | x) has collapsed (log det of its exact covariance against the diagonal's).

    .venv/bin/python docs/experiments/2026-12-05-avb-rate/val_bound.py checkpoints/avb-mnist runs/X/last \
        [--images 100] [--k 500] [--data-dir ../shared/data] [--threads 1]

The validation digits are the trainer's own: the last 5,000 MNIST training digits, binarised once with its seed
(training/tasks.py ImagesTask); never the test set. The first checkpoint is the reference of the paired differences.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.checkpoint import load_checkpoint  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.likelihood import nll_k, subset  # noqa: E402
from training.tasks import ImagesTask  # noqa: E402


def validation(data_dir: str) -> torch.Tensor:
    """The validation digits of an AVB run on dynamic MNIST (its --val-holdout 5000), binarised as the trainer does."""
    config = TrainConfig(model="avb", dataset="mnist", data_dir=data_dir, val_holdout=5000)
    return ImagesTask(config).val_data()["x"]


def arguments() -> argparse.Namespace:
    """The command line of this script (module doc), also taken by the scripts that score the same digits; sets the
    torch threads."""
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def chosen_digits(args: argparse.Namespace) -> tuple[torch.Tensor, int]:
    """The seeded `--images` of the validation digits, and how many validation digits there are."""
    x = validation(args.data_dir)
    return x[subset(len(x), args.images)], len(x)


def paired(d: torch.Tensor) -> str:
    """A paired difference per image as "mean ± standard error"."""
    return f"{d.mean():+.2f} ± {d.std() / math.sqrt(len(d)):.2f}"


def collapse(model, x: torch.Tensor) -> tuple[float, float, float]:
    """Means over images of log det Σ(x), q(z | x)'s exact covariance (plus r_α's variance floor), of log det of its
    diagonal, and of KL(N(μ, Σ) ‖ N(0, I)) without the floor: a lower bound on KL(q(z | x) ‖ p(z)), since E_q log p(z)
    depends on q's first two moments only and no density with them has more entropy than the Gaussian."""
    enc, c = model.encoder, model.config
    z0, a = enc.coefficients(x)
    mean, var = enc.moments(z0, a)
    exact = enc.covariance(a)
    eye = torch.eye(c.z_size, dtype=torch.float64)
    full = torch.linalg.slogdet(exact + c.var_floor * eye)[1]
    diag = torch.log(var.double() + c.var_floor).sum(1)
    kl_floor = 0.5 * (torch.diagonal(exact, dim1=1, dim2=2).sum(1) + mean.double().pow(2).sum(1) - c.z_size
                      - torch.linalg.slogdet(exact)[1])
    return full.mean().item(), diag.mean().item(), kl_floor.mean().item()


def kl_through_t(model, x: torch.Tensor, samples: int) -> float:
    """The KL term the encoder is charged in training, T(x, z̄) + log r_α(z | x) − log p(z), averaged over `samples`
    draws of z per image and over the images: the adversary's estimate of KL(q(z | x) ‖ p(z))."""
    rows = x.repeat_interleave(samples, 0)
    noise = torch.randn(len(rows), *model.loss_noise_shape(), generator=torch.Generator().manual_seed(1))
    return model.loss({"x": rows}, noise).terms["kl"].mean().item()


def main() -> None:
    args = arguments()
    x, held = chosen_digits(args)
    print(f"{len(x)} seeded validation digits of the {held}, k = {args.k}")
    ref = None
    for path in args.checkpoints:
        model = load_checkpoint(path).model.eval()
        per: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            r = nll_k(model, {"x": x}, args.k, seed=0, progress=False, per_example=per)
            full, diag, kl_floor = collapse(model, x)
            kl_t = kl_through_t(model, x, 64)
        line = (f"{path}: −L_{args.k} {r[f'nll_L{args.k}']:.2f} ± {r[f'nll_L{args.k}_stderr']:.2f}, "
                f"−ELBO same samples {r[f'neg_elbo_L{args.k}_samples']:.2f}; log det Σ {full:.1f}, "
                f"diagonal {diag:.1f}; KL through T {kl_t:.1f}, at least {kl_floor:.1f} (moment-matched Gaussian)")
        if ref is None:
            ref = per["lk"]
        else:
            line += f"; minus the first: {paired(-(per['lk'] - ref))} (paired)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
