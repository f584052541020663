"""A training step eager against `--compile` (torch.compile of the loss and its backward), in one process.

    .venv/bin/python bench/train_speed.py [--model iwae] [--batch-size 500] [--threads 1 2] [--rounds 5] \
        [--set FIELD=VALUE ...]

The step is the trainer's (`training.train.step`: the family's optimizers, per-group backward, gradient clipping)
on the family's default config (IWAE: the paper's two-layer net, k = 50), or that config with `python -m training
train`'s `--set` overrides, and a fixed random binary batch;
flush-to-zero on, as `python -m training` sets it.
Per thread count the two are timed in alternating rounds of a few steps each (a shared VM's clock drifts within
seconds); the ratio is the median over rounds of eager seconds over compiled seconds. The first compiled step
(the compile itself) is reported apart and not in the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker_throughput import cpu_model  # noqa: E402  (bench/, the script's own folder, is on sys.path)

from models.family import FAMILIES, family, param_groups  # noqa: E402
from training.config import TrainConfig, parse_override  # noqa: E402
from training.device import flush_denormals  # noqa: E402
from training.train import Objective, make_optimizers, step  # noqa: E402

IMAGE_FAMILIES = [k for k in FAMILIES if family(k).data == "images"]  # those a binary image batch trains


def stepper(model: torch.nn.Module, net, batch: dict[str, torch.Tensor], noise_shape: tuple[int, ...]):
    """The trainer's update (training.train.step: per-group backward, gradient clipping, the family's optimizers)
    on the loss `net` computes."""
    config = TrainConfig(model=model.kind, dataset="mnist")
    optimizers, groups = make_optimizers(model, config), param_groups(model)
    generator = torch.Generator().manual_seed(0)

    def one() -> None:
        noise = torch.randn(batch["x"].shape[0], *noise_shape, generator=generator)
        step(net(batch, noise, 1.0), optimizers, groups, config.clip)
    return one


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=IMAGE_FAMILIES, default="iwae")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="FIELD=VALUE", help="model config override, as for `python -m training train`")
    args = parser.parse_args()
    flush_denormals()
    torch.manual_seed(0)
    cls = family(args.model)
    model = cls(cls.Config(**dict(args.overrides)))
    batch = {"x": (torch.rand(args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()}
    noise_shape = tuple(model.loss_noise_shape())
    eager_net = Objective(model)
    compiled_net = torch.compile(Objective(model))
    eager, compiled = stepper(model, eager_net, batch, noise_shape), stepper(model, compiled_net, batch, noise_shape)
    t0 = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - t0
    print(f"machine: {cpu_model()}; torch {torch.__version__}; {args.model} {dict(args.overrides)}, batch "
          f"{args.batch_size}, noise {noise_shape}; first compiled step (the compile) {compile_s:.1f} s\n")
    print("| torch threads | eager images/s | compiled images/s | compiled / eager |")
    print("|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        eager(), compiled()  # warm at this thread count
        pairs = [(timed(eager, args.steps), timed(compiled, args.steps)) for _ in range(args.rounds)]
        e, c = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"| {threads} | {args.batch_size / e:.0f} | {args.batch_size / c:.0f} | {ratio:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
