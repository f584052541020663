"""Checkpoints: a directory with `model.safetensors` and `checkpoint.json`.

The JSON names the model kind and holds its config, the caption vocabulary, the training metadata and the
metrics training measured; the model is rebuilt from these files alone. Weights load with safetensors, which
cannot execute code, and their sha256 is checked against the JSON so a swapped file is caught.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch import nn

from models.family import FAMILIES, family
from models.vocab import Vocabulary

FORMAT = "glimpse-checkpoint/1"
WEIGHTS = "model.safetensors"
MANIFEST = "checkpoint.json"


class CheckpointError(ValueError):
    pass


@dataclass
class Checkpoint:
    model: nn.Module  # a family of models/family.py
    vocab: Vocabulary | None = None
    training: dict[str, Any] = field(default_factory=dict)  # command, data, epochs, wall time, machine...
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. held-out caption combinations
    weights_sha256: str | None = None  # set by load_checkpoint: the digest of the very bytes it loaded


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, ckpt: Checkpoint, *, weights_dtype: torch.dtype | None = None) -> Path:
    """`weights_dtype` (float16) stores the floating-point weights at that precision, recorded in the manifest; they
    load back into the model's own float32 parameters (halving a large checkpoint, at a rounding of ~5e-4 relative)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = ckpt.model
    kind = getattr(model, "kind", None)
    if kind not in FAMILIES or not isinstance(model, family(kind)):
        raise CheckpointError(f"cannot save a model of kind {kind!r}")
    # Write to temporary names and rename: a crash mid-save never leaves a half checkpoint behind.
    tmp_weights = directory / (WEIGHTS + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if weights_dtype is not None:
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(tmp_weights))
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "config": model.config.to_dict(),
        "vocabulary": ckpt.vocab.to_dict() if ckpt.vocab is not None else None,
        "training": ckpt.training,
        "metrics": ckpt.metrics,
        "extra": ckpt.extra,
        "weights_sha256": _sha256(tmp_weights),
    }
    if weights_dtype is not None:
        manifest["weights_dtype"] = str(weights_dtype).removeprefix("torch.")
    tmp_manifest = _write_manifest_tmp(directory, manifest)
    tmp_weights.replace(directory / WEIGHTS)
    tmp_manifest.replace(directory / MANIFEST)
    return directory


def _write_manifest_tmp(directory: Path, manifest: dict[str, Any]) -> Path:
    """The manifest as JSON under a temporary name beside it, for the caller to rename over the real one."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return tmp


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The JSON document alone (no weights)."""
    path = Path(directory) / MANIFEST
    if Path(directory).is_file():  # a .pt or .safetensors file given where the folder was meant
        raise CheckpointError(f"{directory} is a file; a checkpoint is a folder holding {MANIFEST} and {WEIGHTS} "
                              "(pickled .pt files are never loaded)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} not found: not a checkpoint directory") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("kind") not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model kind {manifest.get('kind')!r}")
    return manifest


def amend_manifest(directory: str | Path, **sections: dict[str, Any]) -> None:
    """Merge keys into the manifest's `training`, `metrics` or `extra` (records made after training: example sets,
    a compaction's command), written as save_checkpoint writes it; the weights and their digest are untouched."""
    unknown = set(sections) - {"training", "metrics", "extra"}
    if unknown:
        raise ValueError(f"a manifest section to amend is one of training, metrics, extra; got {sorted(unknown)}")
    manifest = read_manifest(directory)
    for name, values in sections.items():
        manifest[name] = {**(manifest.get(name) or {}), **values}
    _write_manifest_tmp(Path(directory), manifest).replace(Path(directory) / MANIFEST)


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{weights} not found")
    data = weights.read_bytes()  # hashed and loaded from one read: a file replaced in between cannot slip past
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["weights_sha256"]:
        raise CheckpointError(f"{weights}: sha256 {digest} does not match {manifest['weights_sha256']}")
    cls = family(manifest["kind"])
    model: nn.Module = cls(cls.Config(**manifest["config"]))
    model.load_state_dict(load(data), strict=True)
    model.to(device).eval()
    vocab = manifest.get("vocabulary")
    extra = manifest.get("extra", {})
    return Checkpoint(
        model=model,
        vocab=Vocabulary.from_dict(vocab, spelling=extra.get("spelling")) if vocab is not None else None,
        training=manifest.get("training", {}),
        metrics=manifest.get("metrics", {}),
        extra=extra,
        weights_sha256=digest,
    )
