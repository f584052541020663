"""Bounds over a data set, in nats per image: the trainer's validation pass (the family's `bound`, fixed noise) and
−L_k with its standard error (models/bounds.py, the one L_k). A leaf: the trainer, the evaluator and the caption
fidelity report all import it, and it imports none of them.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from models.bounds import importance_weighted
from training.batching import Batch, batches, trim_padding
from training.device import evaluating


def on_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(model: Any, data: Batch, batch_size: int, device: torch.device, seed: int,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """Mean bound (−ELBO for the DRAW family) and its logged terms per image over a data set, with fixed noise so
    epochs compare: {"val_nll_bound", "val_<term>"..., "val_images"}."""
    noise = (tuple(model.loss_noise_shape()), torch.Generator().manual_seed(seed))
    sums: dict[str, float] = {}
    count = 0.0
    with evaluating(model):
        for batch in batches(data, batch_size, rank=rank, world=world, noise=noise):
            batch = on_device(trim_padding(batch), device)
            eps = batch.pop("noise")
            losses = model.loss(batch, eps)
            for name, value in {"nll_bound": losses.bound, **losses.terms}.items():
                sums[name] = sums.get(name, 0.0) + value.double().sum().item()
            count += batch["x"].shape[0]
    totals = torch.tensor([*sums.values(), count], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals)
    n = totals[-1].item()
    return {f"val_{name}": totals[i].item() / n for i, name in enumerate(sums)} | {"val_images": int(n)}


def elbo_terms(model: Any, data: Batch, *, batch_size: int = 100, seed: int = 0) -> dict[str, float]:
    """Mean bound and its terms per image, one draw of the family's loss noise per image (one z for the DRAW
    family, its training k for IWAE): the trainer's validation pass."""
    terms = validate(model, data, batch_size, next(model.parameters()).device, seed)
    return {key.removeprefix("val_"): value for key, value in terms.items()}


PER_IMAGE_HEADER = "index,nll,neg_elbo_k_samples"


def per_image_row(index: int, lk: float, mean_log_weight: float) -> str:
    """One --per-image CSV row: the test index, −L_k and the −ELBO from the same k samples (repr: exact floats)."""
    return f"{index},{-lk!r},{-mean_log_weight!r}"


class JournalError(ValueError):
    """A --per-image file and its state that this evaluation cannot go on from, or would overwrite."""


class Journal:
    """−L_k per example written as it is measured, with the random stream's state after each pass, so an evaluation
    cut short (a session's end, `--time-limit`, a lent GPU's budget) resumes where it stopped and ends with the same
    numbers as one that ran through: the same bytes in its CSV on the same device; ε is drawn on the CPU, so a run
    may also go on on another device, with the same samples but its own last float bits. `path` is the --per-image
    CSV; its state lives beside it in `path.state.json`. The CSV row is written before the state: a crash between
    them leaves a row the state does not count, and a resume drops it. Without `resume`, both start afresh.
    `source` names the model (evaluate: its weights' sha256); nll_k adds k, chunk and seed to what a state must
    match."""

    def __init__(self, path: str | Path, indices: list[int], *, source: str, resume: bool = True):
        self.path, self.state = Path(path), Path(f"{path}.state.json")
        self.indices, self.resume = indices, resume
        images = hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()  # the state is rewritten each pass
        self.run: dict[str, Any] = {"source": source, "images": images}

    def restore(self, generator: torch.Generator, lk: Tensor, mean: Tensor, **run: Any) -> int:
        """Fill the rows measured so far into lk and mean (as L_k and mean log-weight), set the generator to where
        they left it, and return how many there are; 0 (and a fresh CSV) when there is nothing to resume. `run`:
        the evaluation's own settings, which a state must match too."""
        self.run |= run
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        if not self.resume or not self.state.exists():
            if self.resume and len(lines) > 1:
                raise JournalError(f"{self.path} holds {len(lines) - 1} rows but no state to resume them from "
                                   f"({self.state}): remove it to start afresh")
            if len(lines) > 1:  # measured rows are not thrown away without a word
                raise JournalError(f"{self.path} already holds {len(lines) - 1} measured rows: --resume to go on from "
                                   "them, or remove it (and its .state.json) to measure afresh")
            self.state.unlink(missing_ok=True)
            _replace(self.path, PER_IMAGE_HEADER + "\n")
            return 0
        saved = read_state(self.state)
        if not lines:
            raise JournalError(f"{self.path} is missing or empty, but its state {self.state} counts "
                               f"{saved.get('done')} rows: restore the file, or remove the state to measure afresh")
        differs = [key for key, value in self.run.items() if saved.get(key) != value]
        if differs:
            raise JournalError(f"{self.state} is of another evaluation (its {', '.join(differs)} differ): remove it "
                               f"and {self.path}, or run the same command as the one that wrote them")
        done = int(saved["done"])
        if lines[:1] != [PER_IMAGE_HEADER] or len(lines) < done + 1:
            raise JournalError(f"{self.path} holds {len(lines) - 1} rows where its state counts {done}")
        rows = [line.split(",") for line in lines[1 : done + 1]]
        if [int(r[0]) for r in rows] != self.indices[:done]:
            raise JournalError(f"{self.path}: its rows are not the first {done} of this evaluation's images")
        _replace(self.path, "\n".join(lines[: done + 1]) + "\n")  # drops a row written after the last state
        lk[:done] = torch.tensor([-float(r[1]) for r in rows], dtype=torch.float64)
        mean[:done] = torch.tensor([-float(r[2]) for r in rows], dtype=torch.float64)
        generator.set_state(torch.frombuffer(bytearray(base64.b64decode(saved["generator"])), dtype=torch.uint8))
        return done

    def record(self, start: int, stop: int, lk: Tensor, mean: Tensor, generator: torch.Generator) -> None:
        """Append rows start..stop−1, then the state that counts them (replaced atomically)."""
        with self.path.open("a") as f:
            f.writelines(per_image_row(self.indices[i], lk[i].item(), mean[i].item()) + "\n"
                         for i in range(start, stop))
        stream = base64.b64encode(generator.get_state().numpy().tobytes()).decode()
        _replace(self.state, json.dumps(self.run | {"done": stop, "generator": stream}) + "\n")


def read_state(state: Path) -> dict[str, Any]:
    """A journal's FILE.state.json; a damaged one is a JournalError naming it."""
    try:
        return json.loads(state.read_text())
    except ValueError:
        raise JournalError(f"{state} is damaged (not JSON): restore it, or remove it and its CSV to measure "
                           "afresh") from None


def _replace(path: Path, text: str) -> None:
    """Write a file whole or not at all (a kill mid-write leaves the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def nll_k(model: Any, data: Batch, k: int, *, seed: int = 0, progress: bool = True, chunk: int = 500,
          per_example: dict[str, Tensor] | None = None, journal: Journal | None = None,
          stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """−L_k over `data` with its standard error, and the gap L_k − ELBO measured on the same samples. A dict given
    as `per_example` receives each example's L_k ("lk") and mean log-weight ("mean_log_weight"), (N,) float64.

    With a `journal` each pass's examples are written as they are measured and the work resumes from it. `stop`
    is asked before each pass after the first this call runs; when it says True the figures cover the examples
    measured so far, and `partial_L<k>` says how many of how many."""
    g = torch.Generator().manual_seed(seed)
    n = data["x"].shape[0]
    per = max(1, chunk // k)  # examples whose k samples share one pass
    lk, mean = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    start = done = journal.restore(g, lk, mean, k=k, chunk=chunk, seed=seed) if journal is not None else 0
    for i in tqdm(range(start, n, per), desc=f"L_{k}", disable=not progress, leave=False, initial=start // per,
                  total=math.ceil(n / per)):
        if stop is not None and i > start and stop():
            break
        # Written into buffers made up front: 10,000 small result tensors kept alive between each pass's large
        # temporaries pinned glibc's heap (measured: ~2 MB of RSS an image, 23 GB and an OOM kill at 9,412 images).
        lk[i : i + per], mean[i : i + per] = importance_weighted(
            model, {key: v[i : i + per] for key, v in data.items()}, k, chunk=chunk, generator=g)
        done = min(n, i + per)
        if journal is not None:
            journal.record(i, done, lk, mean, g)
    lk, mean = lk[:done], mean[:done]
    gap = lk - mean
    if per_example is not None:
        per_example |= {"lk": lk, "mean_log_weight": mean}

    def stderr(v: Tensor) -> float:
        return (v.std() / math.sqrt(done)).item() if done > 1 else 0.0

    elbo = lk - gap  # the mean log-weight: a k-sample ELBO estimate from the same samples
    partial = {f"partial_L{k}": f"{done} of {n} examples"} if done < n else {}
    return {f"nll_L{k}": -lk.mean().item(), f"nll_L{k}_stderr": stderr(lk), f"images_L{k}": done,
            f"gap_L{k}": gap.mean().item(), f"gap_L{k}_stderr": stderr(gap),
            f"neg_elbo_L{k}_samples": -elbo.mean().item(), f"neg_elbo_L{k}_samples_stderr": stderr(elbo)} | partial


def subset(n: int, size: int | None, seed: int = 0) -> Tensor:
    """Indices of a seeded random `size` of n images, sorted (all n without a size). Random, not the first few:
    for the 6-epoch draw-mnist the first 40 binarized-MNIST test digits' −ELBO was 114.4 nats, all 10,000's 101.8."""
    if not size or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def read_per_example(path: str | Path) -> dict[int, float]:
    """A --per-image or --per-sentence CSV -> {test index: NLL}."""
    with Path(path).open(newline="") as f:
        rows = csv.DictReader(f)
        if not {"index", "nll"} <= set(rows.fieldnames or ()):
            raise ValueError(f"{path}: not a per-example file (its header must name index and nll)")
        out: dict[int, float] = {}
        for row in rows:
            try:
                out[int(row["index"])] = float(row["nll"])
            except (TypeError, ValueError):  # a short row gives None; a damaged one text
                raise ValueError(f"{path}, line {rows.line_num}: not an index and an NLL: {row}") from None
        return out


def measured_alike(a: str | Path, b: str | Path) -> None:
    """Two --per-image files are paired only if measured alike: the same test images (their digest) and k, where
    each has the journal state that says so (FILE.state.json, written by --per-image); else a ValueError."""
    states: list[dict[str, Any]] = []
    for path in (a, b):
        state = Path(f"{path}.state.json")
        if not state.exists():
            return  # a --per-sentence file, or one kept without its state: nothing to compare
        states.append(read_state(state))
    sa, sb = states
    differ = [f"{key} {sa.get(key)!r} and {sb.get(key)!r}" for key in ("images", "k") if sa.get(key) != sb.get(key)]
    if differ:
        raise ValueError("the two files were not measured alike (their journal states differ in " + ", ".join(differ)
                         + "): a paired difference needs the same test images and k")


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """B − A on the same examples: the mean NLL difference with its paired standard error (far smaller than either
    model's own when the examples' difficulty dominates their NLL), beside the two unpaired ones."""
    if a.keys() != b.keys():
        raise ValueError(f"the two files cover different examples ({len(a)} and {len(b)}, {len(a.keys() & b.keys())} "
                         "shared): evaluate both with the same --limit and --lk-images")
    n = len(a)
    if n < 2:
        raise ValueError("a standard error needs at least two examples")
    index = sorted(a)
    va = torch.tensor([a[i] for i in index], dtype=torch.float64)
    vb = torch.tensor([b[i] for i in index], dtype=torch.float64)
    d = vb - va

    def se(v: Tensor) -> float:
        return (v.std() / math.sqrt(n)).item()

    return {"examples": n, "nll_a": va.mean().item(), "nll_b": vb.mean().item(), "b_minus_a": d.mean().item(),
            "b_minus_a_paired_stderr": se(d), "nll_a_stderr": se(va), "nll_b_stderr": se(vb)}
