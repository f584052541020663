"""Load every generator checkpoint of a directory once, at worker start.

The directory also holds other checkpoints (e.g. `mnist-classifier/`, format "glimpse-classifier/1"): those are
skipped with a log line. A model's id is its directory name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch

from models.checkpoint import FORMAT, MANIFEST, Checkpoint, CheckpointError, load_checkpoint
from models.vocab import Vocabulary
from worker.protocol import MODEL_ID, ModelInfo, ModeOutput

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    info: ModelInfo
    model: Any  # a family of models/family.py
    vocab: Vocabulary | None

    @property
    def longest_word(self) -> int:
        return max((len(w) for w in self.vocab.words), default=0) if self.vocab is not None else 0


def pick_device(preference: str | None = None) -> torch.device:
    if preference:
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_models(directory: str | Path, device: torch.device | str = "cpu") -> dict[str, LoadedModel]:
    """Every generator checkpoint directly under `directory`, keyed by directory name."""
    import re

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoints directory {directory} does not exist")
    models: dict[str, LoadedModel] = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        manifest_path = sub / MANIFEST
        if not manifest_path.exists():
            log.info("skipping %s: no %s", sub, MANIFEST)
            continue
        try:
            fmt = json.loads(manifest_path.read_text()).get("format")
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: unreadable manifest (%s)", sub, e)
            continue
        if fmt != FORMAT:
            log.info("skipping %s: format %r is not a generator checkpoint (%s)", sub, fmt, FORMAT)
            continue
        if not re.match(MODEL_ID, sub.name):
            log.warning("skipping %s: directory name is not a valid model id", sub)
            continue
        try:
            ckpt = load_checkpoint(sub, device=device)
        except CheckpointError as e:
            log.error("skipping %s: %s", sub, e)
            continue
        family: Any = ckpt.model
        unserved = sorted(set(family.modes.values()) - set(get_args(ModeOutput)))
        if unserved:  # a family whose outputs the job contract has no place for yet (text): skip, never crash
            log.warning("skipping %s: %s returns %s, which this worker does not serve", sub, family.kind, unserved)
            continue
        info = describe(sub.name, ckpt)
        if ("caption" in info.modes or "text" in info.modes.values()) and ckpt.vocab is None:
            log.error("skipping %s: a captions or text model (%s) without a vocabulary", sub, info.kind)
            continue
        models[info.id] = LoadedModel(info=info, model=ckpt.model, vocab=ckpt.vocab)
        size = "text" if info.height is None else f"{info.height}x{info.width}x{info.channels}"
        log.info("loaded %s (%s, %s, T=%d) on %s", info.id, info.kind, size, info.steps, device)
    return models


def describe(model_id: str, ckpt: Checkpoint) -> ModelInfo:
    """The family's contract (models/family.py) and the checkpoint's records as the ModelInfo the API sees."""
    m: Any = ckpt.model
    cfg = m.config
    images = m.data != "texts"  # a text family has no image size (and the API scores images, not sentences)
    modes = dict(m.modes) | ({"likelihood": "scores"} if m.likelihood and images else {})
    return ModelInfo(
        id=model_id, kind=m.kind, modes=modes, steps=m.steps,
        pixels=getattr(m, "pixels", "binary") if images else None,  # a text family reads no images
        **({"height": cfg.height, "width": cfg.width, "channels": cfg.channels} if images else {}),
        vocabulary=ckpt.vocab.typeable() if ckpt.vocab is not None else None,
        max_caption_tokens=ckpt.vocab.max_length if ckpt.vocab is not None else None,
        example_captions=list(dict.fromkeys(ckpt.extra.get("example_captions", []))),  # a caption once, in order
        held_out_captions=list(ckpt.extra.get("held_out_captions", [])),
        example_sets=ckpt.extra.get("example_sets", {}).get("sets", []),
    )
