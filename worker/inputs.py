"""Uploaded images: decoded and checked without torch (the API calls this before queueing, the worker again on
what it reads back from Redis), and the rule that turns them into a model's binary pixels.

Rules, stated once: a PNG of at most MAX_INPUT_BYTES whose size is exactly the model's height × width. Grey models
take it as 8-bit grey (colour is converted with Pillow's ITU-R 601-2 luma, alpha composited onto black, which is
the models' background); colour models take RGB. Bernoulli models see pixel > 127 as 1, else 0; grey-level models
(ModelInfo.pixels "grey") see pixel / 255.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image

from worker.protocol import MAX_INPUT_BYTES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
THRESHOLD = 127  # pixel > 127 -> 1 for Bernoulli models
_OBJECT_REPR = re.compile(r" ?<[^<>]* object at 0x[0-9a-fA-F]+>")  # " <_io.BytesIO object at 0x7f…>"


class InputImageError(ValueError):
    """An uploaded image the model cannot take; the message says why (the API's 422 names the image)."""


def from_base64(text: str) -> bytes:
    """A base64 string (optionally a `data:image/png;base64,` URL) -> bytes."""
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise InputImageError("a data URL must be base64 (data:image/png;base64,...)")
    if len(text) > 4 * (MAX_INPUT_BYTES // 3 + 2):
        raise InputImageError(f"more than {MAX_INPUT_BYTES} bytes once decoded; the limit is {MAX_INPUT_BYTES}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputImageError("not valid base64") from None


def decode(data: bytes, *, height: int, width: int, channels: int) -> np.ndarray:
    """PNG bytes -> (height, width, channels) uint8, or InputImageError saying what is wrong."""
    if len(data) > MAX_INPUT_BYTES:
        raise InputImageError(f"{len(data)} bytes; the limit is {MAX_INPUT_BYTES}")
    if not data.startswith(PNG_MAGIC):
        raise InputImageError("not a PNG (send PNG bytes, base64-encoded)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=["PNG"])
            if image.size != (width, height):  # read from the header, before any pixel is decoded
                raise InputImageError(f"{image.size[0]}×{image.size[1]} pixels; this model takes {width}×{height}")
            image.load()
    except InputImageError:
        raise
    except Exception as e:  # Pillow raises many types for a broken file; its messages may name a buffer's address
        reason = _OBJECT_REPR.sub("", str(e))
        raise InputImageError(f"not a readable PNG ({type(e).__name__}: {reason})") from None
    if image.mode.startswith("I"):  # 16-bit grey ("I;16…", or "I"): convert("L") would clip at 255, not scale
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))  # to 0..255, rounded
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return pixels.reshape(height, width, channels)


def normalised_png(pixels: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> the PNG stored with the job: what the worker decodes is exactly what was checked."""
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def binary(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (C, H, W) float32 in {0, 1}: pixel > 127 is ink."""
    return (pixels > THRESHOLD).astype(np.float32).transpose(2, 0, 1)


def grey(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (C, H, W) float32 in [0, 1]: pixel / 255, for models trained on grey levels."""
    return (pixels.astype(np.float32) / 255).transpose(2, 0, 1)
