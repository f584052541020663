"""Encoding of canvases as PNG, GIF, animated WebP and of attention records as JSON (Pillow + numpy, no torch).

Every encoder is deterministic (same pixels → same bytes), which is what makes a rerun of a job after a crash
byte-identical. Each output is checked against its bound from worker.protocol.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from worker.protocol import attention_bound, attention_source_bound, gif_bound, png_bound, raw_bound, webp_bound


class ResultTooLargeError(RuntimeError):
    """An encoder produced more bytes than its stated bound (a bug in the bound, never the user's fault)."""


def _check(kind: str, data: bytes, bound: int) -> bytes:
    if len(data) > bound:
        raise ResultTooLargeError(f"{kind}: {len(data)} bytes exceed the bound {bound}")
    return data


def _image(pixels: np.ndarray, scale: int) -> Image.Image:
    """pixels (H, W, C) uint8, C = 1 or 3."""
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")


def raw(pixels: np.ndarray) -> bytes:
    """pixels (H, W, C) uint8 -> their bytes, uncompressed: zlib level 1 made them 2.5× smaller but cost 95 µs a
    60×60 canvas here, a third of a sampler step's time at 16 rows; uncompressed costs 1 µs."""
    h, w, c = pixels.shape
    return _check("raw", np.ascontiguousarray(pixels).tobytes(), raw_bound(h, w, c))


def raw_rows(frames: np.ndarray) -> list[bytes]:
    """frames (B, H, W, C) uint8 -> each frame's `raw` bytes, cut from one copy of the batch: the sampler's callback
    stores a row's canvas every step, and one `raw` call a row cost more than the step's uint8 conversion."""
    b, h, w, c = frames.shape
    data = _check("raw", frames.tobytes(), b * raw_bound(h, w, c))  # C order, however the array is laid out
    size = h * w * c
    return [data[k * size : (k + 1) * size] for k in range(b)]


def unraw(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """The inverse of `raw`: (H, W, C) uint8; bytes of another size are an error, never a guess."""
    size = int(np.prod(shape))
    if len(data) != size:
        raise ValueError(f"a raw canvas of shape {tuple(shape)} has {size} bytes, not {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(tuple(shape))


def png(pixels: np.ndarray, *, scale: int = 1) -> bytes:
    """pixels (H, W, C) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    _image(pixels, scale).save(buf, format="PNG", compress_level=6)
    h, w, c = pixels.shape
    return _check("png", buf.getvalue(), png_bound(h * scale, w * scale, c))


def gif(frames: np.ndarray, *, frame_ms: int, scale: int = 1) -> bytes:
    """frames (T, H, W, C) uint8 -> looping GIF (colour frames are quantised to ≤ 256 colours)."""
    images = [_image(f, scale) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    t, h, w, _ = frames.shape
    return _check("gif", buf.getvalue(), gif_bound(h * scale, w * scale, t))


def webp(frames: np.ndarray, *, frame_ms: int, scale: int = 1) -> bytes:
    """frames (T, H, W, C) uint8 -> looping animated lossless WebP."""
    images = [_image(f, scale).convert("RGB") for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   lossless=True, quality=0, method=0)  # lossless: quality/method only trade speed for size
    t, h, w, c = frames.shape
    return _check("webp", buf.getvalue(), webp_bound(h * scale, w * scale, c, t))


def _round(rows: np.ndarray, digits: int = 4) -> list[list[float]]:
    """[[round(float(v), digits) ...] ...], vectorised. Python's round is correctly rounded: it rounds the exact
    value to n·10⁻ᵈ and returns the double nearest that decimal, which n / 10ᵈ (both exact, one division) is too.
    numpy's rint(x·10ᵈ) finds the same n unless x·10ᵈ lies within its rounding error of a half; those few values
    go through round() itself. So the attention JSON's bytes do not change (tested against round() on 10⁶ values
    and on every such tie)."""
    x = np.asarray(rows, dtype=np.float64)
    scaled = x * 10.0**digits
    out = np.rint(scaled) / 10.0**digits
    with np.errstate(invalid="ignore"):  # ±inf: inf − inf is NaN, not near a half, and rint keeps inf as round does
        near_half = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-6
    if near_half.any():
        out[near_half] = [round(v, digits) for v in x[near_half].tolist()]
    return out.tolist()


def attention(windows: np.ndarray | None, alignment: np.ndarray | None, words: Sequence[str], *,
              max_words: int, longest_word: int) -> bytes:
    """windows (T, 4) x0,y0,x1,y1 pixels, alignment (T, K) over the caption's words (K = len(words))."""
    doc = {
        "steps": int(windows.shape[0]) if windows is not None else None,
        "windows": _round(windows) if windows is not None else None,
        "alignment": _round(alignment) if alignment is not None else None,
        "words": list(words),
    }
    data = json.dumps(doc, separators=(",", ":")).encode()
    steps = windows.shape[0] if windows is not None else (alignment.shape[0] if alignment is not None else 0)
    return _check("json", data, attention_bound(steps, max_words, longest_word))


def attention_source(windows: np.ndarray | None, alignment: np.ndarray | None, words: Sequence[str], *,
                     max_words: int, longest_word: int) -> bytes:
    """What `attention` encodes, kept as drawn: a JSON header line (each array's shape and dtype, the words, the
    JSON's bound), then the arrays' bytes. The API encodes the JSON from it when a client first asks
    (`attention_json`, the same bytes), so rounding and printing thousands of floats a job stay off the sampler's
    path."""
    arrays = {"windows": windows, "alignment": alignment}
    for name, a in arrays.items():  # the JSON's bound gives a value 16 characters: "-123456789.1234," at most
        if a is not None and (np.abs(a[np.isfinite(a)]) >= 1e9).any():
            raise ResultTooLargeError(f"attention: a {name} value of 1e9 or more has no room in the JSON's bound")
    head: dict[str, Any] = {k: None if a is None else {"shape": list(a.shape), "dtype": a.dtype.str}
                            for k, a in arrays.items()}
    head |= {"words": list(words), "max_words": max_words, "longest_word": longest_word}
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values() if a is not None)
    data = json.dumps(head, separators=(",", ":")).encode() + b"\n" + body  # JSON escapes every newline it holds
    steps = next((a.shape[0] for a in arrays.values() if a is not None), 0)
    return _check("attention source", data, attention_source_bound(steps, max_words, longest_word))


def attention_json(source: bytes) -> bytes:
    """The attention JSON of an `attention_source` record: exactly what `attention` makes of the same arrays."""
    line, _, body = source.partition(b"\n")
    head = json.loads(line)
    arrays: dict[str, np.ndarray | None] = {}
    at = 0
    for key in ("windows", "alignment"):
        spec = head[key]
        if spec is None:
            arrays[key] = None
            continue
        dtype = np.dtype(spec["dtype"])
        size = math.prod(spec["shape"]) * dtype.itemsize
        if at + size > len(body):
            raise ValueError(f"an attention source holds {len(body)} bytes of arrays, fewer than its header says")
        arrays[key] = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=at).reshape(spec["shape"])
        at += size
    if at != len(body):
        raise ValueError(f"an attention source holds {len(body)} bytes of arrays, not the {at} its header says")
    return attention(arrays["windows"], arrays["alignment"], head["words"], max_words=head["max_words"],
                     longest_word=head["longest_word"])
