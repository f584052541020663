"""Binarized MNIST (Larochelle & Murray fixed binarisation, 50k/10k/10k) and dynamic binarisation.

Files: `binarized_mnist_{train,valid,test}.amat[.gz]`, looked up in `root` (or `$GLIMPSE_DATA_DIR` when root is
None), directly or in a `binarized_mnist/` subfolder. Layout: one image per line, 784 values `0`/`1` separated by
single spaces, ending in `\\n`; so each line is exactly 1568 bytes and the values sit at the even byte offsets.
The parser checks that layout on the whole buffer and takes every other byte: the 78 MB train file decodes in well
under a second (np.loadtxt needs tens of seconds).

The content is checked against the sha256 of the decompressed text (`RAW_SHA256`, from
/work/shared/data/README.md) unless `verify=False`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .mnist import DatasetError, DatasetNotFoundError, read_checked

SPLITS = ("train", "valid", "test")
SIZES = {"train": 50000, "valid": 10000, "test": 10000}
PIXELS = 784
LINE_BYTES = 2 * PIXELS

RAW_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}


def find_binarized_file(split: str, root: str | Path | None = None) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if root is None:
        env = os.environ.get("GLIMPSE_DATA_DIR")
        if not env:
            raise DatasetNotFoundError(
                f"binarized MNIST {split}: no root given and $GLIMPSE_DATA_DIR is not set; expected "
                f"binarized_mnist_{split}.amat[.gz] with raw sha256 {RAW_SHA256[split]}"
            )
        root = env
    root = Path(root)
    name = f"binarized_mnist_{split}.amat"
    for folder in (root, root / "binarized_mnist"):
        for candidate in (folder / (name + ".gz"), folder / name):
            if candidate.is_file():
                return candidate
    raise DatasetNotFoundError(
        f"{root}: no {name}[.gz] in it or in {root / 'binarized_mnist'} (expected raw sha256 {RAW_SHA256[split]})"
    )


def parse_amat(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode Larochelle's text layout into (N, 784) uint8 in {0, 1}; raises DatasetError on any other layout."""
    if data.startswith(b"MATLAB"):
        raise DatasetError(f"{name}: this is a MATLAB MAT-file despite its name; read it with scipy.io.loadmat(p)['X']")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if len(data) % LINE_BYTES:
        raise DatasetError(
            f"{name}: {len(data)} bytes is not a whole number of {LINE_BYTES}-byte lines "
            f"('0 1 0 ... 1\\n', {PIXELS} values): truncated or not the binarized-MNIST text layout"
        )
    a = np.frombuffer(data, np.uint8).reshape(-1, LINE_BYTES)
    seps = a[:, 1::2]
    bad_sep = (seps[:, :-1] != ord(" ")).any(axis=1) | (seps[:, -1] != ord("\n"))
    values = a[:, 0::2] - np.uint8(ord("0"))  # uint8 wrap-around makes anything below '0' large
    bad_val = (values > 1).any(axis=1)
    bad = bad_sep | bad_val
    if bad.any():
        line = int(np.argmax(bad)) + 1
        raise DatasetError(f"{name}: line {line} is not {PIXELS} single-space-separated 0/1 values ending in '\\n'")
    return np.ascontiguousarray(values)


def load_binarized_mnist(split: str, *, root: str | Path | None = None, verify: bool = True) -> np.ndarray:
    """(N, 784) uint8 in {0, 1}: train 50000, valid 10000, test 10000."""
    path = find_binarized_file(split, root)
    raw = read_checked(path, RAW_SHA256[split], f"binarized MNIST {split}", verify=verify)
    return parse_amat(raw, str(path))


def dynamic_binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic binarisation: each pixel is 1 with probability equal to its intensity (in [0, 1]).

    Returns the same dtype and shape as `images`. Draws from `generator` (CPU) so a seeded epoch is reproducible.
    """
    if not torch.is_floating_point(images):
        raise TypeError(f"dynamic_binarize expects float intensities in [0, 1]; got {images.dtype}")
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (u < images).to(images.dtype)
