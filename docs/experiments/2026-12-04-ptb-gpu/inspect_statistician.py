"""The ranges of a statistician checkpoint's Gaussian heads on 256 fixed validation sets (seed 0, undilated).

Usage: .venv/bin/python docs/experiments/2026-12-04-ptb-gpu/inspect_statistician.py CHECKPOINT_DIR
"""

import sys

import torch
import torch.nn.functional as F

from models.checkpoint import load_checkpoint
from training.data import omniglot as om

torch.set_num_threads(2)
model = load_checkpoint(sys.argv[1]).model.eval()
val = om.load_split("val", root="../shared/data", radii=(0,))
sets = om.make_sets(val, 5, torch.Generator().manual_seed(0), dilation=False).x[:256]
with torch.no_grad():
    b, s = sets.shape[:2]
    h = model.encoder(sets.flatten(0, 1))
    c_mu, c_ls = model.statistic(h.view(b, s, -1), None)
    c_items = c_mu.repeat_interleave(s, 0)  # c at its posterior mean
    zq_mu, zq_ls = model.inference(F.elu(model.inference_x(h) + model.inference_c(c_items)))
    zp_mu, zp_ls = model.prior(c_items)
heads = {"c mean": c_mu, "c log sigma": c_ls, "q(z) mean": zq_mu, "q(z) log sigma": zq_ls,
         "p(z|c) mean": zp_mu, "p(z|c) log sigma": zp_ls}
for name, t in heads.items():
    q = [t.min(), t.quantile(0.01), t.median(), t.quantile(0.99), t.max()]
    print(f"{name:17s} min / 1% / median / 99% / max: " + " / ".join(f"{v:.2f}" for v in q))
