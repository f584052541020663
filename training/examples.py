"""python -m training examples CHECKPOINT: example sets a page or a client can pick, kept in the checkpoint.

For a set model trained on Omniglot (the Neural Statistician), a seeded few of the test split's characters, upright
(rot000), each with some of its drawings: characters the model never read in training, as 28×28 PNGs exactly as
the API takes uploads. They go into the checkpoint's manifest (`extra.example_sets`, with the split file's sha256),
the command into `training.examples`; the weights are not touched. The worker publishes them in the model's
`example_sets` (GET /v1/models).
"""

from __future__ import annotations

import argparse
import base64
import io
import shlex
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.checkpoint import CheckpointError, amend_manifest, read_manifest
from models.family import family


def png(grey: np.ndarray, pixels: str) -> str:
    """(H, W) grey levels in [0, 1] -> base64 PNG as an upload: 8-bit grey, or for a model that reads binary pixels
    the 1-bit image it reads (an 8-bit level > 127 is ink, worker/inputs.py), a third of the bytes."""
    level = np.rint(grey * 255).astype(np.uint8)
    image = Image.fromarray(level > 127) if pixels == "binary" else Image.fromarray(level, mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def omniglot_sets(data_dir: str | None, count: int, size: int, seed: int, pixels: str) -> dict[str, Any]:
    """`count` upright test characters (seeded), `size` of each one's 20 drawings (seeded, undilated)."""
    from training.data import omniglot as om

    split = om.load_split("test", root=data_dir, radii=(0,))
    upright = [i for i, name in enumerate(split.names) if name.endswith("/rot000")]
    g = torch.Generator().manual_seed(seed)
    chosen = [upright[i] for i in torch.randperm(len(upright), generator=g)[:count].tolist()]
    sets = []
    for c in chosen:
        drawings = torch.randperm(om.DRAWINGS, generator=g)[:size].tolist()
        images = split.images[c, drawings, 0].numpy()  # (size, 28, 28) grey levels
        sets.append({"name": om.character_of(split.names[c]), "images": [png(x, pixels) for x in images]})
    return {"split": "vinyals/test", "split_sha256": split.split_sha256, "seed": seed, "sets": sets}


def main(args: argparse.Namespace, argv: list[str]) -> int:
    manifest = read_manifest(args.checkpoint)
    if manifest["extra"].get("dataset") != "omniglot":
        raise CheckpointError(f"{args.checkpoint}: example sets are made for models trained on Omniglot (set "
                              f"models); this one's dataset is {manifest['extra'].get('dataset')!r}")
    pixels = getattr(family(manifest["kind"]), "pixels", "binary")
    examples = omniglot_sets(args.data_dir, args.count, args.size, args.seed, pixels)
    amend_manifest(args.checkpoint, extra={"example_sets": examples},
                   training={"examples": shlex.join(["python", "-m", "training", *argv])})
    print(f"{args.checkpoint}: {len(examples['sets'])} example sets of {args.size} drawings "
          f"({examples['split']}, seed {args.seed})")
    return 0
