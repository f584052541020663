"""Seconds an image of −L_k (k = 5,000 by default) for a checkpoint, the way `python -m training evaluate` measures
it (models/bounds.py's importance_weighted, --chunk 5000), for AVB's decoder as it runs now (channels-last, rows in
slices of models.avb._CPU_ROWS, the stride-1 last layer as a matmul and shifted adds) against its two earlier paths,
in one process: "first" (NCHW, all of a pass's rows at once, before fcec18a) and "oneDNN last" (as now, but the last
layer through nn.ConvTranspose2d, fcec18a until the tap sum).

    .venv/bin/python bench/likelihood_speed.py [--checkpoint checkpoints/avb-mnist] [--threads 1 2] [--rounds 5]

The paths are timed in alternating rounds (a shared VM's clock drifts within seconds) on fixed random binary images;
each ratio is the median over rounds of an earlier path's seconds over the current one's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker_throughput import cpu_model  # noqa: E402  (bench/, the script's own folder, is on sys.path)

import models.avb as avb  # noqa: E402
from models.bounds import importance_weighted  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from training.device import flush_denormals  # noqa: E402


@contextmanager
def earlier_path() -> Iterator[None]:
    """AVB's decoder as before fcec18a: NCHW maps and every row of a pass decoded at once."""
    forward, rows = avb.Decoder.forward, avb._CPU_ROWS

    def nchw(self: avb.Decoder, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(z).view(-1, *self.shape))

    avb.Decoder.forward, avb._CPU_ROWS = nchw, 10**9  # type: ignore[method-assign]
    try:
        yield
    finally:
        avb.Decoder.forward, avb._CPU_ROWS = forward, rows  # type: ignore[method-assign]


@contextmanager
def onednn_last_layer() -> Iterator[None]:
    """The decoder as now, but its stride-1 last layer through nn.ConvTranspose2d (oneDNN) again."""
    taps = avb._stride_one_transposed
    avb._stride_one_transposed = lambda conv, x: conv(x)
    try:
        yield
    finally:
        avb._stride_one_transposed = taps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/avb-mnist")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=2, help="images per timed round")
    args = parser.parse_args()
    flush_denormals()
    model = load_checkpoint(args.checkpoint).model.eval()
    x = (torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.15).float()

    def seconds() -> float:
        t0 = time.perf_counter()
        importance_weighted(model, {"x": x}, args.k, chunk=5000, generator=torch.Generator().manual_seed(0))
        return (time.perf_counter() - t0) / args.images

    paths: dict[str, Callable[[], AbstractContextManager[None]]] = {
        "first": earlier_path, "oneDNN last": onednn_last_layer, "now": nullcontext}

    def timed(path: str) -> float:
        with paths[path]():
            return seconds()

    print(f"machine: {cpu_model()}; torch {torch.__version__}; {args.checkpoint}, L_{args.k}, --chunk 5000, "
          f"slices of {avb._CPU_ROWS} rows\n")
    print("| torch threads | first: s an image | oneDNN last: s an image | now: s an image | first / now "
          "| oneDNN last / now |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for path in paths:  # warm at this thread count
            timed(path)
        rounds = [{path: timed(path) for path in paths} for _ in range(args.rounds)]
        med = {path: statistics.median(r[path] for r in rounds) for path in paths}
        ratio = {path: statistics.median(r[path] / r["now"] for r in rounds) for path in ("first", "oneDNN last")}
        print(f"| {threads} | {med['first']:.2f} | {med['oneDNN last']:.2f} | {med['now']:.2f} "
              f"| {ratio['first']:.2f}× | {ratio['oneDNN last']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
