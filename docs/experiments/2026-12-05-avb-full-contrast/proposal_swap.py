"""A diagnostic, on validation only (2026-12-05, a sixteenth session): −L_k of AVB checkpoints under each of the two
Gaussian proposals, the diagonal r_α and the full-covariance one, on the seeded validation digits of val_bound.py,
paired. Both are valid bounds for the same model (any proposal is), so the difference says how much of a model's
bound is lost to its proposal rather than to the model. It selects nothing.

    .venv/bin/python docs/experiments/2026-12-05-avb-full-contrast/proposal_swap.py checkpoints/avb-mnist \
        [--images 100] [--k 500] [--data-dir ../shared/data] [--threads 1]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "docs/experiments/2026-12-05-avb-rate")]

from val_bound import arguments, chosen_digits, paired  # noqa: E402

from models.checkpoint import load_checkpoint  # noqa: E402
from training.likelihood import nll_k  # noqa: E402


def main() -> None:
    args = arguments()
    x, _ = chosen_digits(args)
    print(f"{len(x)} seeded validation digits, k = {args.k}")
    for path in args.checkpoints:
        model = load_checkpoint(path).model.eval()
        trained = model.config.contrast
        per: dict[str, dict[str, torch.Tensor]] = {}
        for contrast in ("diagonal", "full"):
            model.config = dataclasses.replace(model.config, contrast=contrast)  # the proposal only: no weight moves
            per[contrast] = {}
            with torch.no_grad():
                r = nll_k(model, {"x": x}, args.k, seed=0, progress=False, per_example=per[contrast])
            print(f"{path} (trained with {trained}), proposal {contrast}: −L_{args.k} {r[f'nll_L{args.k}']:.2f} ± "
                  f"{r[f'nll_L{args.k}_stderr']:.2f}, −ELBO same samples {r[f'neg_elbo_L{args.k}_samples']:.2f}",
                  flush=True)
        gain = -(per["full"]["lk"] - per["diagonal"]["lk"])
        print(f"  full minus diagonal: {paired(gain)} nats (paired)", flush=True)


if __name__ == "__main__":
    main()
