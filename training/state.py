"""Resumable run state without pickle: the model as a checkpoint, the optimizers' tensors in safetensors, the
rest (epoch, best score, history, optimizer scalars) in JSON. The family's group "model" keeps the file names of
a one-optimizer run (`optimizer.safetensors`, progress.json "optimizer"); other groups add
`optimizer-{group}.safetensors` and progress.json "optimizers"[group].

A run directory holds `last/` (written after every epoch, atomically) and `best/` (best validation so far).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

OPTIMIZER = "optimizer.safetensors"
PROGRESS = "progress.json"
MAIN = "model"  # the optimiser group of one-network families


def optimizer_file(group: str) -> str:
    return OPTIMIZER if group == MAIN else f"optimizer-{group}.safetensors"


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    best_val: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0  # early stopping's count (it goes on across learning-rate decays)
    epochs_since_decay: int = 0  # --lr-decay-patience's count: without improvement since the last one or decay
    lr_decays: int = 0  # decays applied so far
    lr_decayed: float = 1.0  # their product: the run's rate is its --lr times this (a resume's same --lr keeps it)
    wall_seconds: float = 0.0  # training time summed over all sessions of the run
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (what metrics.jsonl holds)


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and plain JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def saved_optimizer(directory: Path, group: str = MAIN) -> tuple[dict[int, dict[str, Any]], list]:
    """The optimizer state saved beside a checkpoint: per-parameter state keyed by index, and the param groups.
    Read onto the host: load_state_dict moves each moment to its parameter's device and leaves Adam's `step` on the
    host, where torch keeps it (a step on a GPU costs Adam a host sync per parameter per update)."""
    saved = json.loads((directory / PROGRESS).read_text())
    meta = saved["optimizer"] if group == MAIN else saved["optimizers"][group]
    state: dict[int, dict[str, Any]] = {}
    for name, value in load_file(str(directory / optimizer_file(group))).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return state, meta["param_groups"]


def save_run_state(directory: Path, ckpt: Checkpoint, optimizers: dict[str, torch.optim.Optimizer],
                   progress: Progress) -> None:
    """Write to `<directory>.tmp` then swap it in: a run killed mid-save still has its previous state."""
    tmp = directory.with_name(directory.name + ".tmp")
    save_checkpoint(tmp, ckpt)
    doc: dict[str, Any] = {"progress": progress.__dict__}
    for group, optimizer in optimizers.items():
        tensors, meta = optimizer_to_files(optimizer)
        save_file(tensors, str(tmp / optimizer_file(group)))
        if group == MAIN:
            doc["optimizer"] = meta
        else:
            doc.setdefault("optimizers", {})[group] = meta
    (tmp / PROGRESS).write_text(json.dumps(doc, indent=1))
    old = directory.with_name(directory.name + ".old")
    if old.exists():  # a kill in an earlier save's last step (recover_run_state clears it at start)
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    # fsync the parent so the rename survives a power cut, not only a killed process
    fd = os.open(directory.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_run_state(directory: Path) -> str | None:
    """Undo what a kill inside `save_run_state` left, before a run resumes from `directory`: with the directory gone
    between the two renames, the newer whole state takes its place (`.tmp` is whole once its progress file, written
    last, is there; else `.old`); leftovers of either are removed. Returns what was done, for the log."""
    tmp, old = (directory.with_name(directory.name + suffix) for suffix in (".tmp", ".old"))
    done = None
    if not directory.exists():
        for candidate in (tmp, old):
            if (candidate / PROGRESS).exists():
                candidate.rename(directory)
                done = f"{directory} restored from {candidate.name} (a save was cut short)"
                break
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    return done


def recover_run(run: Path) -> list[str]:
    """Before a run resumes: `recover_run_state` on last/ and best/, and, with last/ not yet written after best/
    (saved first in an epoch, the same state), last/ from a copy of best/. Returns what was done, for the log."""
    last, best = run / "last", run / "best"
    done = [d for d in (recover_run_state(last), recover_run_state(best)) if d]
    if not last.exists() and (best / PROGRESS).exists():
        shutil.copytree(best, last)
        done.append(f"{last} restored from {best} (a save was cut short)")
    return done


def load_progress(directory: Path) -> Progress:
    return Progress(**json.loads((directory / PROGRESS).read_text())["progress"])


def restore_optimizers(optimizers: dict[str, torch.optim.Optimizer], directory: Path) -> None:
    """Load the optimizer states saved beside a checkpoint into optimizers built on the loaded model."""
    for group, optimizer in optimizers.items():
        state, param_groups = saved_optimizer(directory, group)
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def warm_start(model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], directory: Path,
               device: str | torch.device = "cpu") -> list[str]:
    """Start a new run from a checkpoint's weights wherever name and shape match, and from the optimizer state
    saved beside it for those parameters (so RMSprop does not restart its averages from zero on trained weights);
    -> the names of the tensors that start fresh. Optimizer state carries over for one-group families."""
    source = load_checkpoint(directory, device=device).model
    own = model.state_dict()
    matched = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    optimizer = optimizers.get(MAIN)
    if optimizer is not None and len(optimizers) == 1 and (directory / OPTIMIZER).exists():
        saved, saved_groups = saved_optimizer(directory)
        current = optimizer.state_dict()
        if set(saved_groups[0]) == set(current["param_groups"][0]):  # same optimizer kind
            old_names = [name for name, _ in source.named_parameters()]
            new_index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
            state = {new_index[old_names[i]]: values for i, values in saved.items() if old_names[i] in matched}
            optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return sorted(set(own) - set(matched))
