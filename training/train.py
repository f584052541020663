"""The training loop: epochs of fresh data, validation, early stopping, resume, and DDP under torchrun.

Run `python -m training train --model aligndraw --dataset mnist-captions`. Under `torchrun --nproc_per_node N`
the same command trains data-parallel: each global batch is split across ranks and gradients are averaged.
A run directory keeps `last/` (every epoch) and `best/`; starting the same command again resumes from `last/`.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.aligndraw import AlignDRAW, AlignDRAWConfig
from models.checkpoint import Checkpoint, load_checkpoint
from models.draw import DRAW
from models.sampling import sample
from training import artefacts
from training.config import DEFAULT_LR, TrainConfig
from training.state import Progress, load_progress, restore_optimizer, save_run_state, warm_start
from training.tasks import Batch, Task, batches, epoch_seed, make_task


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} GPU)"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    lr = DEFAULT_LR if config.lr is None else config.lr
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    # The official alignDRAW update: running mean of squared gradients, decay 0.9, eps 1e-6.
    return torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-6)


def build_model(task: Task) -> DRAW | AlignDRAW:
    cfg = task.model_config()
    return AlignDRAW(cfg) if isinstance(cfg, AlignDRAWConfig) else DRAW(cfg)


def forward(model: nn.Module, batch: Batch, device: torch.device):
    """The model's ELBO terms for a batch dict (`x`, its conditions and `noise`)."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    x = batch.pop("x")
    return model(x, **batch)


@torch.no_grad()
def validate(model: nn.Module, data: Batch, batch_size: int, device: torch.device, seed: int,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """Mean −ELBO, reconstruction and KL per image over a data set (fixed noise, so epochs compare)."""
    was_training = model.training
    model.eval()
    noise = (model.steps, model.z_size, torch.Generator().manual_seed(seed))
    sums = torch.zeros(4, dtype=torch.float64)
    for batch in batches(data, batch_size, rank=rank, world=world, noise=noise):  # type: ignore[arg-type]
        n = batch["x"].shape[0]
        elbo = forward(model, batch, device)
        sums += torch.tensor([elbo.nll_bound.sum().item(), elbo.reconstruction.sum().item(),
                              elbo.kl.sum().item(), n], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    total = sums[3].item()
    return {"val_nll_bound": sums[0].item() / total, "val_reconstruction": sums[1].item() / total,
            "val_kl": sums[2].item() / total, "val_images": int(total)}


def kl_weight(step: int, warmup: int) -> float:
    """β for global batch `step` (0-based): rises linearly from 1/warmup to 1 over the first `warmup` batches."""
    return 1.0 if step >= warmup else (step + 1) / warmup


def train_epoch(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, epoch: int,
                device: torch.device, rank: int, world: int) -> dict[str, float]:
    cfg = task.config
    data = task.train_data(epoch)
    noise = (model.steps, model.z_size, torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, stream=1)))
    n_batches = next(iter(data.values())).shape[0] // cfg.batch_size  # a last partial batch is dropped
    if cfg.max_batches is not None:
        n_batches = min(n_batches, cfg.max_batches)
    bar = tqdm(batches(data, cfg.batch_size, rank=rank, world=world, limit=n_batches, noise=noise),  # type: ignore[arg-type]
               total=n_batches, desc=f"epoch {epoch}", disable=rank != 0, dynamic_ncols=True, leave=False,
               mininterval=0.5 if sys.stderr.isatty() else 60)  # a log file gets a line a minute, not a flood
    sums = torch.zeros(4, dtype=torch.float64)
    start = time.perf_counter()
    beta = 1.0
    for i, batch in enumerate(bar):
        n = batch["x"].shape[0]
        elbo = forward(net, batch, device)
        beta = kl_weight((epoch - 1) * n_batches + i, cfg.kl_warmup or 0)
        optimizer.zero_grad(set_to_none=True)
        elbo.annealed_loss(beta).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        sums += torch.tensor([elbo.nll_bound.detach().sum().item(), elbo.kl.detach().sum().item(), n,
                              grad_norm.item()], dtype=torch.float64)
        seen = sums[2].item() * world
        bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.2f}", kl=f"{sums[1].item() / sums[2].item():.2f}",
                        img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False,  # bar's own pace
                        **({"kl_weight": f"{beta:.2f}"} if beta < 1 else {}))
    if world > 1:
        dist.all_reduce(sums)
    seconds = time.perf_counter() - start
    return {"train_nll_bound": sums[0].item() / sums[2].item(), "train_kl": sums[1].item() / sums[2].item(),
            "images_per_s": sums[2].item() / seconds, "epoch_seconds": seconds, "kl_weight": beta,
            "lr": optimizer.param_groups[0]["lr"]}


def write_previews(model: nn.Module, task: Task, run: Path, epoch: int, device: torch.device) -> None:
    conditions = task.preview_conditions()
    count = next(iter(conditions.values())).shape[0] if conditions else 64
    out = sample(model, batch_size=None if conditions else count, seeds=list(range(count)), **conditions)  # type: ignore[arg-type]
    previews = run / "previews"
    previews.mkdir(exist_ok=True)
    artefacts.save_sample_grid(previews / f"samples-epoch{epoch:04d}.png", out.images, task.preview_labels())
    artefacts.save_canvas_strip(previews / f"canvas-epoch{epoch:04d}.png", out.canvases[:4])
    if out.alignments is not None:  # where each preview sample looked in its caption, step by step
        artefacts.save_alignment_map(previews / f"alignment-epoch{epoch:04d}.png", out.alignments,
                                     task.preview_labels())


def train(config: TrainConfig) -> Progress:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} does not split over {world} processes")
    run = config.run_dir
    last, best = run / "last", run / "best"
    task = make_task(config)

    if (last / "checkpoint.json").exists():
        model = load_checkpoint(last, device=device).model.train()
        optimizer = make_optimizer(model, config)
        restore_optimizer(optimizer, last, device)
        progress = load_progress(last)
        saved_lr = optimizer.param_groups[0]["lr"]
        new_rate = config.lr is not None and config.lr != saved_lr
        if new_rate:  # an explicit --lr wins: go on at a lower rate
            for group in optimizer.param_groups:
                group["lr"] = config.lr
            progress.epochs_without_improvement = 0  # a new rate gets its own patience, even after a stop
        if rank == 0:
            print(f"resuming {run} after epoch {progress.epoch}, lr {optimizer.param_groups[0]['lr']:g}"
                  + (f" (was {saved_lr:g})" if new_rate else ""), file=sys.stderr)
    else:
        torch.manual_seed(config.seed)
        model = build_model(task).to(device)
        optimizer = make_optimizer(model, config)
        progress = Progress()
        if config.init_from:
            fresh = warm_start(model, optimizer, Path(config.init_from), device)
            if rank == 0:
                print(f"initialised from {config.init_from}; fresh: {', '.join(fresh) or 'none'}", file=sys.stderr)
    net = DistributedDataParallel(model) if distributed else model
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)

    stopped = progress.epochs_without_improvement >= config.patience
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if stopped:
            break
        row: dict[str, Any] = {"epoch": epoch}
        row |= train_epoch(net, model, optimizer, task, epoch, device, rank, world)
        row |= validate(model, task.val_data(), config.batch_size, device, seed=epoch_seed(config.seed, 0, 99),
                        rank=rank, world=world)
        progress.epoch = epoch
        progress.wall_seconds += row["epoch_seconds"]
        progress.history.append(row)
        improved = progress.best_val is None or row["val_nll_bound"] < progress.best_val
        if improved:
            progress.best_val, progress.best_epoch = row["val_nll_bound"], epoch
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        stopped = progress.epochs_without_improvement >= config.patience
        if rank == 0:
            row |= task.epoch_metrics(model)
            ckpt = Checkpoint(model, vocab=task.vocab, training=training_record(config, progress),
                              metrics={"best_val_nll_bound": progress.best_val, "best_epoch": progress.best_epoch,
                                       "last": row},
                              extra=task.extra)
            if improved:
                save_run_state(best, ckpt, optimizer, progress)
            save_run_state(last, ckpt, optimizer, progress)
            artefacts.append_jsonl(run / "metrics.jsonl", row)
            if epoch % config.preview_every == 0 or stopped:
                write_previews(model, task, run, epoch, device)
                artefacts.save_loss_curves(run / "loss-curves.png", progress.history)
            print(f"epoch {epoch}: train −ELBO {row['train_nll_bound']:.2f}, val −ELBO {row['val_nll_bound']:.2f} "
                  f"(KL {row['val_kl']:.2f}), {row['images_per_s']:.0f} img/s"
                  + "".join(f", {k.removeprefix('val_')} {v:.1%}" for k, v in row.items()
                            if "fidelity" in k or "attention" in k)
                  + ("" if improved else f", no improvement for {progress.epochs_without_improvement}"),
                  file=sys.stderr, flush=True)
    if distributed:
        dist.destroy_process_group()
    return progress


def training_record(config: TrainConfig, progress: Progress) -> dict[str, Any]:
    return {
        "command": "python -m training " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py")
        else " ".join(sys.argv),
        "config": asdict(config),
        "epochs": progress.epoch,
        "wall_seconds": round(progress.wall_seconds, 1),
        "machine": machine(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "torch": torch.__version__,
    }
