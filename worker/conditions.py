"""A job's condition as the tensors a family's `generate` or `log_weight` takes, in fixed-shape chunks.

Captions are padded to the model's `max_caption_tokens` and every chunk to `batch_rows` rows (padding rows: a
one-word caption, a blank image, the first row's set), so a row's pixels never depend on what shares its sampler
call (jobs.py). Sets of examples (image_set, few_shot) of different sizes are padded to the largest with a mask.
Uploaded images are read back from the job's files hash and decoded by worker.inputs, the same code the API ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis
import torch
from torch import Tensor

from models.sampling import draw_noise, lerp, slerp
from models.vocab import END, Vocabulary
from worker import inputs
from worker.protocol import InvalidJobError, Keys, ModelInfo

PAD_CAPTION = [1]  # any valid word: padding rows are drawn and thrown away


def captions(vocab: Vocabulary, texts: Sequence[str], rows: int, max_tokens: int) -> dict[str, Tensor]:
    """`captions` (rows, max_tokens) ids and `lengths` (rows,), padding rows after the given captions."""
    ids = [vocab.encode(t) for t in texts] + [PAD_CAPTION] * (rows - len(texts))
    return {"captions": torch.tensor([x + [0] * (max_tokens - len(x)) for x in ids], dtype=torch.long),
            "lengths": torch.tensor([len(x) for x in ids], dtype=torch.long)}


def sentences(vocab: Vocabulary, texts: Sequence[str]) -> dict[str, Tensor]:
    """Sentences as a text family reads them (its batch layout): `texts` (B, L) ids, each sentence's words then
    <eos>, right-padded with 0, and `lengths` (B,) counting the <eos>."""
    ids = [vocab.encode(t) + [vocab.stoi[END]] for t in texts]
    longest = max(len(x) for x in ids)
    return {"texts": torch.tensor([x + [0] * (longest - len(x)) for x in ids], dtype=torch.long),
            "lengths": torch.tensor([len(x) for x in ids], dtype=torch.long)}


def read_images(conn: redis.Redis, keys: Keys, job_id: str, names: Sequence[str], info: ModelInfo) -> Tensor:
    """The job's uploaded images as the model reads them (binary or grey, `info.pixels`), (N, C, H, W) float32."""
    raw = conn.hmget(keys.files(job_id), list(names)) if names else []
    out = []
    for name, data in zip(names, raw, strict=True):
        if data is None:
            raise InvalidJobError(f"{name} is missing from the job's files (expired, or never stored)")
        try:
            raw_bytes = data.encode() if isinstance(data, str) else data
            height, width, channels = info.shape
            pixels = inputs.decode(raw_bytes, height=height, width=width, channels=channels)
        except inputs.InputImageError as e:
            raise InvalidJobError(f"{name}: {e}") from None
        out.append(inputs.grey(pixels) if info.pixels == "grey" else inputs.binary(pixels))
    return torch.from_numpy(np.stack(out))


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """x (N, ...) -> (rows, ...) with zero rows after it."""
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])]) if x.shape[0] < rows else x


def stack_sets(sets: Sequence[Tensor], rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Sets of different sizes, each (S_i, C, H, W), as one batch: (rows, S_max, C, H, W) with blank items after each
    set's own, and the mask (rows, S_max) of real items. Rows past the given sets repeat the first (any valid set
    serves a padding row; its output is thrown away)."""
    rows = len(sets) if rows is None else rows
    s_max = max(x.shape[0] for x in sets)
    first = sets[0]
    out = first.new_zeros(rows, s_max, *first.shape[1:])
    mask = torch.zeros(rows, s_max, dtype=torch.bool)
    for r in range(rows):
        x = sets[r] if r < len(sets) else first
        out[r, : x.shape[0]] = x
        mask[r, : x.shape[0]] = True
    return out, mask


def walk_path(model, seeds: Sequence[int], ends: Tensor | None, points: int) -> Tensor:
    """The walk's noise, (points, *noise_shape): slerp between the seeds' draws, or lerp between the two images'
    encodings (`model.encode_noise`, the family's inverse of its decoder on the posterior-mean path)."""
    if ends is None:
        a, b = draw_noise(2, *model.noise_shape(), seeds=list(seeds))
        return slerp(a, b, points)
    device = next(model.parameters()).device
    with torch.inference_mode():
        encoded = model.encode_noise(ends.to(device)).cpu()
    return lerp(encoded[0], encoded[1], points)
