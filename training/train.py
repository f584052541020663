"""The training loop: epochs of fresh data, validation, early stopping, resume, and DDP under torchrun.

Run `python -m training train --model aligndraw --dataset mnist-captions`. Under `torchrun --nproc_per_node N`
the same command trains data-parallel: each global batch is split across ranks and gradients are averaged.
A run directory keeps `last/` (every epoch) and `best/`; starting the same command again resumes from `last/`.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest
from models.family import Losses, family, param_groups
from models.sampling import draw_noise, sample, seed_walks
from training import artefacts
from training.batching import Batch, batches, epoch_seed, trim_padding
from training.config import DEFAULT_LR, ConfigError, TrainConfig, family_defaults, stage_lr, stages
from training.device import evaluating, machine, resolve_device
from training.likelihood import on_device, validate
from training.state import (
    Progress,
    load_progress,
    recover_run,
    restore_optimizers,
    save_run_state,
    warm_start,
)
from training.tasks import Task, make_task

Optimizers = dict[str, torch.optim.Optimizer]  # one per optimiser group of the family (models/family.py)


def make_optimizer(params: Any, config: TrainConfig, options: dict[str, Any] | None = None,
                   scale: float = 1.0, default_lr: float = DEFAULT_LR) -> torch.optim.Optimizer:
    """The run's optimizer over `params` (a module's parameters or a list) at `scale` × the run's lr (--lr, else the
    family's `default_lr`); `options` from the family."""
    lr = (default_lr if config.lr is None else config.lr) * scale
    params = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, **(options or {}))
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, **(options or {}))
    # The official alignDRAW update: running mean of squared gradients, decay 0.9, eps 1e-6.
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-6, **(options or {}))


def lr_scales(model: nn.Module) -> dict[str, float]:
    """Each optimiser group's multiple of the run's lr: the family's `lr_scale` (AVB's adversary at twice its model's
    rate, as the paper), 1 for a group it does not name. Every place that sets a group's lr applies it."""
    scale = dict(getattr(model, "lr_scale", {}))
    return {group: float(scale.get(group, 1.0)) for group in param_groups(model)}


def set_lr(optimizers: Optimizers, scales: dict[str, float], lr: float) -> None:
    """The run's rate `lr` for every group, times the group's scale."""
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = lr * scales[name]


def make_optimizers(model: nn.Module, config: TrainConfig) -> Optimizers:
    # the family's options are its paper optimizer's (Adam's β, ε): another --optimizer runs with its own defaults
    paper = family_defaults(type(model))["optimizer"]
    options = dict(getattr(model, "optimizer_options", {})) if config.optimizer == paper else {}
    scales = lr_scales(model)
    # the family's rate stays a default, not a --lr: a resume without --lr then keeps the rate it saved
    default_lr = float(getattr(model, "default_lr", DEFAULT_LR))
    return {group: make_optimizer(params, config, options, scales[group], default_lr)
            for group, params in param_groups(model).items()}


def build_model(task: Task) -> nn.Module:
    cfg = task.checked_model_config()
    try:  # sizes the family's constructor refuses (an unknown align_values, a key_blind word out of range)
        return family(task.config.model)(cfg)
    except (ValueError, TypeError, RuntimeError, IndexError) as e:
        raise ConfigError(f"{task.config.model}'s config: {e}") from e


class Objective(nn.Module):
    """The family's `loss` as a module call, so DistributedDataParallel's gradient hooks see every batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, noise: torch.Tensor, kl_weight: float) -> Losses:
        return self.model.loss(batch, noise, kl_weight=kl_weight)  # type: ignore[operator]


_POSTFIX_EVERY = 50  # batches between the progress bar's reads of the running sums (each read is a host sync)


def kl_weight(step: int, warmup: int) -> float:
    """β for global batch `step` (0-based): rises linearly from 1/warmup to 1 over the first `warmup` batches."""
    return 1.0 if step >= warmup else (step + 1) / warmup


def train_epoch(net: Callable[..., Losses], model: nn.Module, optimizers: Optimizers, task: Task, epoch: int,
                device: torch.device, rank: int, world: int) -> dict[str, float]:
    cfg = task.config
    # the global stream (dropout, word dropout) from the epoch's own seed, so a resumed run replays it exactly
    torch.manual_seed(epoch_seed(cfg.seed, epoch, stream=2 + rank))
    data = task.train_data(epoch)
    # the noise generator lives on the training device (the same draws on the CPU as before; its own on a GPU)
    noise = (tuple(model.loss_noise_shape()),  # type: ignore[operator]
             torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch, stream=1)))
    groups = param_groups(model)
    n_examples = next(iter(data.values())).shape[0]
    n_batches = n_examples // cfg.batch_size  # a last partial batch is dropped
    if n_batches == 0:  # epochs of no update, saved as if trained
        raise ConfigError(f"--batch-size {cfg.batch_size} is more than the {n_examples} training examples of an "
                          "epoch: not one batch would train")
    if cfg.max_batches is not None:
        n_batches = min(n_batches, cfg.max_batches)
    bar = tqdm(batches(data, cfg.batch_size, rank=rank, world=world, limit=n_batches, noise=noise),
               total=n_batches, desc=f"epoch {epoch}", disable=rank != 0, dynamic_ncols=True, leave=False,
               mininterval=0.5 if sys.stderr.isatty() else 60)  # a log file gets a line a minute, not a flood
    # the bound and every logged term of the family (KL, a GAN's costs, how often each player moved) summed on the
    # device: no host sync a step (on a GPU each one stalls the launch queue); the bar reads them every
    # _POSTFIX_EVERY batches
    bound_sum = torch.zeros((), dtype=torch.float64, device=device)
    term_sums: dict[str, torch.Tensor] = {}
    seen = 0  # this process's images
    start = time.perf_counter()
    beta = 1.0
    for i, batch in enumerate(bar):
        batch = on_device(trim_padding(batch), device)
        eps = batch.pop("noise")
        beta = kl_weight((epoch - 1) * n_batches + i, cfg.kl_warmup or 0)
        losses = net(batch, eps, beta)
        step(losses, optimizers, groups, cfg.clip)
        bound_sum += losses.bound.detach().sum()
        seen += batch["x"].shape[0]
        for name, value in losses.terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.detach().double().sum()
        if rank == 0 and i % _POSTFIX_EVERY == 0:
            kl = term_sums["kl"].item() if "kl" in term_sums else 0.0
            bar.set_postfix(loss=f"{bound_sum.item() / seen:.2f}", kl=f"{kl / seen:.2f}",
                            img_s=f"{seen * world / (time.perf_counter() - start):.0f}", refresh=False,
                            **({"kl_weight": f"{beta:.2f}"} if beta < 1 else {}))
    # one tensor on the device for all processes' sums (nccl reduces device tensors only)
    totals = torch.stack([bound_sum, torch.tensor(float(seen), dtype=torch.float64, device=device),
                          *term_sums.values()])
    if world > 1:
        dist.all_reduce(totals)
    bound, images, *terms = totals.tolist()
    seconds = time.perf_counter() - start
    named = dict(zip(term_sums, terms, strict=True))
    images_per_s = images / seconds
    images = images or math.nan  # --max-batches 0 validates only: no training numbers
    return {"train_nll_bound": bound / images, "train_kl": named.get("kl", 0.0) / images,
            "images_per_s": images_per_s, "epoch_seconds": seconds, "kl_weight": beta,
            "lr": next(iter(optimizers.values())).param_groups[0]["lr"]} | {
            f"train_{name}": value / images for name, value in named.items() if name != "kl"}


def step(losses: Losses, optimizers: Optimizers, groups: dict[str, list[nn.Parameter]], clip: float) -> None:
    """One update of every optimiser group from its own loss, gradients routed to that group's parameters only;
    a group whose loss is None is not stepped (its Adam moments do not move)."""
    if set(losses.minimise) != set(optimizers):
        raise ValueError(f"loss groups {sorted(losses.minimise)} do not match the optimizers {sorted(optimizers)}")
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    active = [(name, loss) for name, loss in losses.minimise.items() if loss is not None]
    for j, (name, loss) in enumerate(active):
        inputs = groups[name] if len(losses.minimise) > 1 else None  # one group: the plain backward of every parameter
        loss.backward(inputs=inputs, retain_graph=j < len(active) - 1)
    for name, _ in active:
        torch.nn.utils.clip_grad_norm_(groups[name], clip)
        optimizers[name].step()


def decay_lr(optimizers: Optimizers, scales: dict[str, float], config: TrainConfig, progress: Progress,
             improved: bool) -> float | None:
    """--lr-decay-patience N: after N epochs without validation improvement (counted since the last improvement
    or decay, kept in the run state so a resume goes on with the same count) the run's rate is multiplied by
    --lr-decay-factor for the epochs that follow; -> the new rate, or None."""
    progress.epochs_since_decay = 0 if improved else progress.epochs_since_decay + 1
    if config.lr_decay_patience is None or progress.epochs_since_decay < config.lr_decay_patience:
        return None
    first, opt = next(iter(optimizers.items()))
    rate = opt.param_groups[0]["lr"] / scales[first] * config.lr_decay_factor
    set_lr(optimizers, scales, rate)
    progress.epochs_since_decay = 0
    progress.lr_decays += 1
    progress.lr_decayed *= config.lr_decay_factor
    return rate


def text_output(model: nn.Module) -> bool:
    """Whether the family writes text and no pictures (its generation modes' outputs, models/family.py)."""
    outputs = set(getattr(model, "modes", {}).values())
    return "text" in outputs and not outputs & {"frames", "images"}


@torch.no_grad()
def write_text_previews(model: nn.Module, task: Task, run: Path, epoch: int, count: int = 16) -> Path:
    """previews/samples-epochNNNN.txt: `count` prior samples (z from seeds 0..count−1) decoded by ancestral sampling
    at temperature 1 (one generator, seed 0) and greedily (the family's `generate`), then the task's validation
    sentences with the greedy decoding of their posterior means. The same seeds every epoch, so epochs compare."""
    device = next(model.parameters()).device
    noise = draw_noise(count, *model.noise_shape(), seeds=list(range(count))).to(device)  # type: ignore[operator]
    [greedy] = list(model.generate(noise))  # type: ignore[operator]
    if greedy.tokens is None:
        raise TypeError(f"{type(model).__name__}.generate yields no tokens: not a text generator")
    lines = [f"# epoch {epoch}: {count} prior samples z (seeds 0..{count - 1})", ""]
    decode = getattr(model, "decode", None)
    if callable(decode):
        sampled = decode(noise, strategy="sample", temperature=1.0, generator=torch.Generator().manual_seed(0))
        lines += ["## sampled (temperature 1, generator seed 0)", ""]
        lines += [f"{i:2d}  {task.text(row)}" for i, row in enumerate(sampled.cpu())] + [""]
    lines += ["## greedy", ""] + [f"{i:2d}  {task.text(row)}" for i, row in enumerate(greedy.tokens.cpu())] + [""]
    conditions = task.preview_conditions()
    if conditions:
        rows = next(iter(conditions.values())).shape[0]
        given = {k: v.to(device) for k, v in conditions.items()}
        [recon] = list(model.generate(noise[:1].expand(rows, *noise.shape[1:]), **given))  # type: ignore[operator]
        assert recon.tokens is not None
        lines += ["## validation sentences -> greedy decoding of the posterior mean", ""]
        for label, row in zip(task.preview_labels(), recon.tokens.cpu(), strict=True):
            lines += [f"    {label}", f" -> {task.text(row)}", ""]
    previews = run / "previews"
    previews.mkdir(exist_ok=True)
    path = previews / f"samples-epoch{epoch:04d}.txt"
    path.write_text("\n".join(lines))
    return path


def write_previews(model: nn.Module, task: Task, run: Path, epoch: int) -> None:
    if text_output(model):
        write_text_previews(model, task, run, epoch)
        return
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
    if "walk" in getattr(model, "modes", {}) and not conditions:  # 8 latent walks of 10 points between seeds
        artefacts.save_canvas_strip(previews / f"walk-epoch{epoch:04d}.png", seed_walks(model),  # type: ignore[arg-type]
                                    max_columns=10)


def train(config: TrainConfig) -> Progress:
    began = time.perf_counter()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"--batch-size {config.batch_size} does not split over {world} processes")
    run = config.run_dir
    last, best = run / "last", run / "best"
    if rank == 0:
        for done in recover_run(run):  # what a kill inside a save left
            print(done, file=sys.stderr)
    if distributed:
        dist.barrier()  # every rank reads last/ as rank 0 left it
    check_resumable(config, run)
    task = make_task(config)

    earlier: list[dict[str, Any]] = []  # the invocations that made the run so far (a resume goes on from them)
    origin = None  # for a run begun with --init-from: where its weights began (`initialised_from`)
    if (last / "checkpoint.json").exists():
        resumed = load_checkpoint(last, device=device)
        model = resumed.model.train()
        if config.model_overrides:  # a --set that differs from the run's model would be silently ignored: refuse
            wanted = task.checked_model_config()
            changed = {k: (getattr(model.config, k), getattr(wanted, k)) for k in config.model_overrides
                       if json.dumps(getattr(model.config, k)) != json.dumps(getattr(wanted, k))}
            if changed:
                raise ConfigError(f"{run} holds a model with " + ", ".join(
                    f"{k}={json.dumps(old)}" for k, (old, _) in changed.items()) + "; the --set " + ", ".join(
                    f"{k}={json.dumps(new)}" for k, (_, new) in changed.items()) + " would build another: give "
                    "another --out, or resume without it")
        earlier = invocations(resumed.training)
        origin = resumed.training.get("initialised_from")  # as read when the run began
        scales = lr_scales(model)
        optimizers = make_optimizers(model, config)
        try:  # the weights were checked by their digest; the optimizer state and progress beside them were not
            restore_optimizers(optimizers, last)
            progress = load_progress(last)
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise CheckpointError(f"{last} cannot be resumed: its optimizer state or progress is damaged "
                                  f"({type(e).__name__}: {e}); copy best/ over it, or start again in another "
                                  "--out") from e
        first, opt = next(iter(optimizers.items()))
        saved_lr = opt.param_groups[0]["lr"] / scales[first]  # the run's rate, whatever the first group's scale
        # the command's own --lr, decayed as the run decayed it (--lr-decay-patience), is no new rate
        new_rate = config.lr is not None and not math.isclose(config.lr * progress.lr_decayed * scales[first],
                                                              opt.param_groups[0]["lr"], rel_tol=1e-9)
        if new_rate:  # an explicit --lr wins: go on at a lower rate (each group keeps its multiple of it)
            assert config.lr is not None
            set_lr(optimizers, scales, config.lr)
            progress.epochs_without_improvement = 0  # a new rate gets its own patience, even after a stop
            progress.epochs_since_decay, progress.lr_decayed = 0, 1.0
        if rank == 0:
            print(f"resuming {run} after epoch {progress.epoch}, lr {config.lr if new_rate else saved_lr:g}"
                  + (f" (was {saved_lr:g})" if new_rate else ""), file=sys.stderr)
    else:
        torch.manual_seed(config.seed)
        model = build_model(task).to(device)
        init_bias = getattr(model, "init_output_bias", None)
        if callable(init_bias):  # IWAE's released code: output bias = logit of the training pixel means
            init_bias(task.pixel_means().to(device))
        scales = lr_scales(model)
        optimizers = make_optimizers(model, config)
        progress = Progress()
        if config.init_from:
            origin = initialised_from(config.init_from)
            fresh = warm_start(model, optimizers, Path(config.init_from), device)
            if set(fresh) >= set(model.state_dict()):  # not one tensor matched: a start from scratch, not from it
                raise ConfigError(f"--init-from {config.init_from}: none of its tensors matches this {config.model} "
                                  "model's names and shapes; nothing would start from it")
            if rank == 0:
                print(f"initialised from {config.init_from}; fresh: {', '.join(fresh) or 'none'}", file=sys.stderr)
    if distributed and len(param_groups(model)) > 1:
        # DDP expects every parameter's gradient each step; a group that sits a batch out (VAE/GAN's equilibrium
        # rule, decided per process from its own batch) breaks that, and the processes could disagree
        raise ConfigError(f"{config.model} trains several optimiser groups: run it in one process, not under torchrun")
    objective = Objective(model)
    net: Callable[..., Losses] = DistributedDataParallel(objective) if distributed else objective
    if config.compile:  # one graph for the loss and its backward: validation and sampling stay eager
        net = torch.compile(net)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)

    patience = config.patience
    assert patience is not None, "TrainConfig sets it from the family's defaults"
    stopped = progress.epochs_without_improvement >= patience
    first_epoch, last_epoch_seconds, wall_before = progress.epoch + 1, 0.0, progress.wall_seconds
    if progress.epoch >= config.epochs:
        idle = f"has run {progress.epoch} epochs, --epochs is {config.epochs} (raise it to go on)"
    elif stopped:
        idle = (f"stopped early after epoch {progress.epoch} ({patience} epochs without a better validation bound; a "
                "larger --patience goes on)")
    elif config.lr_stages and stage_lr(config.lr_stages, progress.epoch + 1) is None:
        idle = f"has run its --lr-stages schedule to its end (epoch {progress.epoch})"
    else:
        idle = ""
    if idle and rank == 0:
        print(f"nothing to do: {run} {idle}", file=sys.stderr)
    scheduled = sum(e for e, _ in stages(config.lr_stages))
    if not idle and rank == 0 and scheduled > config.epochs:  # e.g. burda:1 (3,280 epochs) under the default 1000
        print(f"note: --lr-stages runs {scheduled} epochs; --epochs {config.epochs} ends the run first",
              file=sys.stderr)
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        staged = stage_lr(config.lr_stages, epoch) if config.lr_stages else None
        if stopped or (config.lr_stages and staged is None):  # early stopping, or the schedule's end
            break
        if config.time_limit is not None and epoch > first_epoch and out_of_time(
                time.perf_counter() - began + last_epoch_seconds > config.time_limit * 60, distributed, device):
            if rank == 0:
                print(f"--time-limit {config.time_limit:g} min: stopping before epoch {epoch} "
                      f"(the last took {last_epoch_seconds:.0f} s); the same command resumes", file=sys.stderr)
            break
        epoch_began = time.perf_counter()
        if staged is not None:
            set_lr(optimizers, scales, staged)
        row: dict[str, Any] = {"epoch": epoch}
        row |= train_epoch(net, model, optimizers, task, epoch, device, rank, world)
        row |= validate(model, task.val_data(), config.batch_size, device, seed=epoch_seed(config.seed, 0, 99),
                        rank=rank, world=world)
        trained = row["images_per_s"] > 0  # --max-batches 0 validates only: its train bound is NaN by design
        if (trained and not math.isfinite(row["train_nll_bound"])) or not math.isfinite(row["val_nll_bound"]):
            # diverged: Adam's moments are non-finite too, so nothing after it can recover; last/ keeps the epoch
            # before, from which a lower rate (--lr) can go on. The same on every rank: both bounds are all-reduced.
            if rank == 0:
                artefacts.append_jsonl(run / "metrics.jsonl", row | {"diverged": True})
                print(f"epoch {epoch}: the bound is not finite (train {row['train_nll_bound']}, validation "
                      f"{row['val_nll_bound']}): stopping; last/ and best/ keep epochs {progress.epoch} and "
                      f"{progress.best_epoch}", file=sys.stderr, flush=True)
            break
        progress.epoch = epoch
        progress.wall_seconds += row["epoch_seconds"]
        progress.history.append(row)
        improved = progress.best_val is None or row["val_nll_bound"] < progress.best_val
        if improved:
            progress.best_val, progress.best_epoch = row["val_nll_bound"], epoch
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        decayed = decay_lr(optimizers, scales, config, progress, improved)
        if decayed is not None:
            row["lr_decayed_to"] = decayed
        stopped = progress.epochs_without_improvement >= patience
        if rank == 0:
            with evaluating(model):  # as the worker draws; in train mode sampling moved batch norm's statistics
                row |= task.epoch_metrics(model)
            record = training_record(config, progress, earlier, first_epoch, wall_before, origin)
            ckpt = Checkpoint(model, vocab=task.vocab, training=record,
                              metrics={"best_val_nll_bound": progress.best_val, "best_epoch": progress.best_epoch,
                                       "last": row},
                              extra=task.extra)
            if improved:
                save_run_state(best, ckpt, optimizers, progress)
            save_run_state(last, ckpt, optimizers, progress)
            artefacts.append_jsonl(run / "metrics.jsonl", row)
            fields_: Any = getattr(model, "config", None)  # the family's Config names its bound (IWAE: −L_{k})
            bound = getattr(model, "bound_name", "−ELBO").format(**(fields_.to_dict() if fields_ is not None else {}))
            if epoch % config.preview_every == 0 or stopped:
                with evaluating(model):  # after the save: in train mode a resumed run would differ (tested)
                    write_previews(model, task, run, epoch)
                artefacts.save_loss_curves(run / "loss-curves.png", progress.history,
                                           artefacts.UNITS.get(getattr(model, "data", ""), "nats per image"),
                                           bound.split(" (")[0])  # a legend holds the name, not its gloss
            print(f"epoch {epoch}: train {bound} {row['train_nll_bound']:.2f}, val {bound} {row['val_nll_bound']:.2f} "
                  f"(KL {row.get('val_kl', float('nan')):.2f}), {row['images_per_s']:.0f} "
                  f"{'sentences' if getattr(model, 'data', '') == 'texts' else 'img'}/s"
                  + "".join(f", {k.removeprefix('val_')} {v:.1%}" for k, v in row.items()
                            if "fidelity" in k or "attention" in k)
                  + (f", active units {row['val_active_units']:.0f}" if "val_active_units" in row else "")
                  + (f", I_q {row['val_mutual_information']:.2f}" if "val_mutual_information" in row else "")
                  + (f", lr now {decayed:g}" if decayed is not None else "")
                  + ("" if improved else f", no improvement for {progress.epochs_without_improvement}"),
                  file=sys.stderr, flush=True)
        last_epoch_seconds = time.perf_counter() - epoch_began  # training, validation, saving and previews
    if distributed:
        dist.destroy_process_group()
    return progress


def out_of_time(mine: bool, distributed: bool, device: torch.device) -> bool:
    """Whether any process says the next epoch would not fit: all of them stop together, or DDP would hang."""
    if not distributed:
        return mine
    flag = torch.tensor([float(mine)], device=device)  # nccl reduces device tensors only
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def invocations(training: dict[str, Any]) -> list[dict[str, Any]]:
    """The commands that trained a checkpoint, each with its epochs, machine and wall time; a record written before
    these were kept counts as one command for all its epochs."""
    if "invocations" in training:
        return list(training["invocations"])
    if "command" not in training:
        return []
    return [{"command": training["command"], "epochs": [1, training.get("epochs")],
             "wall_seconds": training.get("wall_seconds"), "machine": training.get("machine"),
             "torch": training.get("torch"), "world_size": training.get("world_size", 1)}]


def check_resumable(config: TrainConfig, run: Path) -> None:
    """Before any data loads: a run folder is resumed only by the command that made it (the same model, dataset and
    --init-from)."""
    last = run / "last"
    if (run / "checkpoint.json").exists() and not (last / "checkpoint.json").exists():
        raise ConfigError(f"--out {run} is a finished checkpoint, not a run folder: train into another --out, with "
                          f"--init-from {run} to start from its weights")
    if not (last / "checkpoint.json").exists():
        if config.init_from is not None:  # a new run: a typo or a file is named now, not once the data has loaded
            read_manifest(config.init_from)  # (a resume may name a source since gone: its record holds it)
        return
    training = read_manifest(last).get("training", {})
    stored = training.get("config", {})
    # another optimizer cannot take the saved one's state (RMSprop's from Adam's is a KeyError a step in)
    changed = [f"--{k} {stored[k]} (this command: {getattr(config, k)})" for k in ("model", "dataset", "optimizer")
               if stored.get(k) not in (None, getattr(config, k))]
    if changed:
        raise ConfigError(f"{run} holds a run of " + ", ".join(changed) + ": resume it with its own, or give another "
                          "--out")
    # where the run began: its record (or, in records older than that, the command's own --init-from)
    began = (training.get("initialised_from") or {}).get("checkpoint") or stored.get("init_from")
    if config.init_from is not None and (began is None or Path(config.init_from).resolve() != Path(began).resolve()):
        raise ConfigError(f"{run} holds a run begun from {began or 'scratch'}; --init-from {config.init_from} would be "
                          "ignored: resume without it, or give another --out")


def initialised_from(directory: str | Path) -> dict[str, Any]:
    """What a run's --init-from checkpoint was: its path, weights digest, epochs and the commands that trained it, kept
    in the new run's record so its card still says where its weights began once that checkpoint is replaced; and,
    where that checkpoint was itself begun from another, its own `initialised_from`, so the chain is kept whole."""
    manifest = read_manifest(directory)
    training = manifest.get("training", {})
    earlier = training.get("initialised_from")
    return {"checkpoint": str(directory), "weights_sha256": manifest.get("weights_sha256"),
            "epochs": training.get("epochs"), "invocations": invocations(training)} | (
        {"initialised_from": earlier} if earlier else {})


def training_record(config: TrainConfig, progress: Progress, earlier: list[dict[str, Any]] | None = None,
                    first_epoch: int = 1, wall_before: float = 0.0,
                    origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's `training`: this command (quoted as a shell reads it), its config, machine and epochs,
    `invocations`: every command that trained the run, with its epoch range, machine and wall time, and for a run
    begun with --init-from, `initialised_from` (see `initialised_from`)."""
    argv = sys.argv[1:] if sys.argv[0].endswith("__main__.py") else sys.argv
    command = ("python -m training " if sys.argv[0].endswith("__main__.py") else "") + shlex.join(argv)
    this = {"command": command, "epochs": [first_epoch, progress.epoch],
            "wall_seconds": round(progress.wall_seconds - wall_before, 1), "machine": machine(),
            "torch": torch.__version__, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    return {
        "command": command,
        "config": asdict(config),
        "epochs": progress.epoch,
        "wall_seconds": round(progress.wall_seconds, 1),
        "machine": this["machine"],
        "world_size": this["world_size"],
        "torch": this["torch"],
        "invocations": [*(earlier or []), this],
    } | ({"initialised_from": origin} if origin else {})
