"""Omniglot few-shot data (Lake et al. 2015) in the Vinyals et al. (2016) split, as sets of 28×28 binary drawings.

Files (see /work/shared/data/README.md §3), looked up in `root`, else `$GLIMPSE_DATA_DIR`, else the sibling shared
folder `<repo>/../shared/data`, each directly or in an `omniglot/` subfolder (an explicit root that lacks them is
an error, never a silent fall-through):

- `images_background.npz`, `images_evaluation.npz`: `images` bool (characters, 20, 105, 105), True = white
  background, False = stroke (the original 1-bit PNGs, losslessly repackaged);
- `omniglot_characters.tsv`: `char_id, set, npz_index, alphabet, character`, where each character's drawings are;
- `splits/vinyals/{train,val,trainval,test}.txt`: one class per line, `alphabet/character/rotNNN`. Every rotation
  (0, 90, 180, 270 degrees) of a character is its own class; trainval = train (1028 characters) ∪ val (172),
  test holds the other 423 characters.

Pipeline: ink (stroke = 1) at 105×105 → optional stroke dilation (square max filter) → exact area resize to 28×28
grey levels → rotation by multiples of 90°. Dilation versions are computed once at load, so an epoch only picks,
binarises (dynamically) and shuffles. Files are checked against the README's sha256 unless `verify=False`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .binarized import dynamic_binarize
from .mnist import DatasetError, DatasetNotFoundError, read_checked

SPLITS = ("train", "val", "trainval", "test")
SETS = ("background", "evaluation")
DRAWINGS = 20  # drawers per character
SOURCE_SIZE = 105
SIZE = 28
RADII = (0, 1, 2)  # dilation radii at 105 px precomputed by `load_split`; version 0 is the undilated drawing
ROTATIONS = {"rot000": 0, "rot090": 1, "rot180": 2, "rot270": 3}  # class suffix -> quarter turns (torch.rot90 k)

# sha256 of the files as stored (README §3).
SHA256 = {
    "images_background.npz": "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
    "images_evaluation.npz": "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
    "omniglot_characters.tsv": "d99c403fc8ba04e6523b1710d93f3d154d3035f0b01d70d46e4915286f59fbd1",
}
SPLIT_SHA256 = {
    "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    "trainval": "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
    "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
}

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # the sibling shared folder
_CHUNK = 64  # characters processed at once at 105 px: bounds the float32 working memory to ~60 MB


# ---------------------------------------------------------------------------------------------------------------
# Files


def _holds_omniglot(folder: Path) -> bool:
    return (folder / "omniglot_characters.tsv").is_file()


def find_omniglot_dir(root: str | Path | None = None) -> Path:
    """The folder holding the Omniglot files: root (or root/omniglot), else $GLIMPSE_DATA_DIR, else SHARED_DATA."""
    if root is not None:
        candidates = [Path(root)]
    else:
        env = os.environ.get("GLIMPSE_DATA_DIR")
        candidates = ([Path(env)] if env else []) + [SHARED_DATA]
    for base in candidates:
        for folder in (base / "omniglot", base):
            if _holds_omniglot(folder):
                return folder
    where = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"no Omniglot in {where} (nor an omniglot/ subfolder): expected omniglot_characters.tsv, "
        f"images_background.npz, images_evaluation.npz and splits/vinyals/*.txt (README §3)"
    )


def _read_verified(path: Path, expected: str, verify: bool) -> bytes:
    return read_checked(path, expected, f"Omniglot {path.name}", verify=verify)


class SplitFile(NamedTuple):
    names: list[str]  # "alphabet/character/rotNNN", in file order
    sha256: str  # of the file's bytes


def read_split(split: str, *, root: str | Path | None = None, verify: bool = True) -> SplitFile:
    """The class names of `split` (splits/vinyals/<split>.txt) and the file's sha256."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    path = find_omniglot_dir(root) / "splits" / "vinyals" / f"{split}.txt"
    raw = _read_verified(path, SPLIT_SHA256[split], verify)
    names = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    for name in names:
        parts = name.split("/")
        if len(parts) != 3 or parts[2] not in ROTATIONS:
            raise DatasetError(f"{path}: line {name!r} is not alphabet/character/rotNNN with NNN in 000/090/180/270")
    return SplitFile(names, hashlib.sha256(raw).hexdigest())


def character_of(name: str) -> str:
    """"alphabet/character/rotNNN" -> "alphabet/character"."""
    return name.rsplit("/", 1)[0]


def read_characters(root: str | Path | None = None, *, verify: bool = True) -> dict[str, tuple[str, int]]:
    """"alphabet/character" -> (set, npz_index) for all 1623 characters (omniglot_characters.tsv)."""
    path = find_omniglot_dir(root) / "omniglot_characters.tsv"
    text = _read_verified(path, SHA256[path.name], verify).decode("utf-8")
    rows = csv.DictReader(io.StringIO(text), delimiter="\t")
    return {f"{r['alphabet']}/{r['character']}": (r["set"], int(r["npz_index"])) for r in rows}


def load_ink(characters: Sequence[str], *, root: str | Path | None = None, verify: bool = True) -> np.ndarray:
    """bool (len(characters), 20, 105, 105), True (1) = stroke, False (0) = background; only the npz files these
    characters live in are read."""
    folder = find_omniglot_dir(root)
    where = read_characters(folder, verify=verify)
    missing = [c for c in characters if c not in where]
    if missing:
        raise DatasetError(f"{folder / 'omniglot_characters.tsv'}: no row for {missing[:3]} ({len(missing)} missing)")
    out = np.empty((len(characters), DRAWINGS, SOURCE_SIZE, SOURCE_SIZE), dtype=bool)
    for name in SETS:
        rows = [i for i, c in enumerate(characters) if where[c][0] == name]
        if not rows:
            continue  # e.g. val: background only
        file = f"images_{name}.npz"
        with np.load(io.BytesIO(_read_verified(folder / file, SHA256[file], verify))) as npz:
            images = npz["images"]
        if images.dtype != bool or images.shape[1:] != (DRAWINGS, SOURCE_SIZE, SOURCE_SIZE):
            raise DatasetError(f"{folder / file}: expected bool (N, 20, 105, 105) images; got {images.dtype} "
                               f"{images.shape}")
        out[rows] = ~images[[where[characters[i]][1] for i in rows]]  # True is background in the file
    return out


# ---------------------------------------------------------------------------------------------------------------
# Image operations


def _box_weights(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) overlap of input pixel j = [j, j+1) with output cell i = [i·s, (i+1)·s), s = n_in / n_out,
    measured in 1/n_out of a pixel so that every entry is an integer (0..n_out)."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * n_in  # cell edges ×n_out: integers
    pixels = torch.arange(n_in + 1, dtype=torch.float64) * n_out  # pixel edges ×n_out
    lo = torch.maximum(edges[:-1, None], pixels[None, :-1])
    hi = torch.minimum(edges[1:, None], pixels[None, 1:])
    return (hi - lo).clamp(min=0)


def resize(ink: Tensor, size: int = SIZE) -> Tensor:
    """(..., 105, 105) ink -> (..., size, size) grey levels in [0, 1] by exact area averaging: each output pixel is
    the fraction of ink in its 3.75×3.75-px cell of the source (partly covered pixels count by the area covered),
    i.e. nearest upsampling ×4 to 420×420 then the mean of each 15×15 block.

    How: out = W x Wᵀ / 105² with W the (28, 105) overlap matrix in 1/28 px (`_box_weights`, integers), so the
    float32 sums are exact and only the final division rounds. Not `interpolate(mode="area")`: at a non-integer
    ratio that is adaptive average pooling over whole-pixel bins (4 or 5 pixels wide), off by up to 0.16 here.
    """
    n_in = ink.shape[-1]
    if ink.shape[-2] != n_in:
        raise ValueError(f"resize expects square images; got {tuple(ink.shape)}")
    w = _box_weights(n_in, size).to(torch.float32)
    x = ink.view(torch.uint8) if ink.dtype == torch.bool else ink  # uint8 -> float32 converts faster than bool
    cols = x.to(torch.float32).reshape(-1, n_in) @ w.T  # one large product, not a batch of small ones
    return (w @ cols.view(*ink.shape[:-1], size)) / float(n_in * n_in)


def dilate(ink: Tensor, radius: int) -> Tensor:
    """Stroke dilation: a (2r+1)×(2r+1) square max filter over the last two dims, the same as
    max_pool2d(kernel 2r+1, stride 1, padding r), so the shape is kept; radius 0 is the identity. Any dtype (bool
    ink included). Dilation never removes ink."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    if radius == 0:
        return ink.clone()
    # Separable: a row pass then a column pass of shifted maxima (2r shifts each), several times faster on CPU than
    # max_pool2d; positions outside the image are simply not candidates, as max_pool2d's -inf padding.
    src = ink
    for dim in (-1, -2):
        out = src.clone()
        n = ink.shape[dim]
        for d in range(1, min(radius, n - 1) + 1):
            head, tail = out.narrow(dim, d, n - d), out.narrow(dim, 0, n - d)
            torch.maximum(head, src.narrow(dim, 0, n - d), out=head)
            torch.maximum(tail, src.narrow(dim, d, n - d), out=tail)
        src = out
    return out


def rotate(images: Tensor, degrees: int) -> Tensor:
    """Rotate the last two dims (rows, cols) by `degrees` (a multiple of 90) counter-clockwise, as PIL's
    `Image.rotate` in the prototypical-networks loader: torch.rot90(k=degrees/90, dims=(-2, -1)). Exact area
    resizing commutes with quarter turns, so rotating at 28 px equals rotating at 105 px then resizing."""
    if degrees % 90:
        raise ValueError(f"degrees must be a multiple of 90; got {degrees}")
    return torch.rot90(images, k=(degrees // 90) % 4, dims=(-2, -1))


# ---------------------------------------------------------------------------------------------------------------
# Splits and sets


@dataclass(frozen=True)
class OmniglotSplit:
    split: str
    names: list[str]  # the classes, "alphabet/character/rotNNN", in file order
    images: Tensor  # float32 (n_classes, 20, V, 28, 28) grey levels; version v is dilated by radii[v] at 105 px
    split_sha256: str  # of the split file's bytes
    radii: tuple[int, ...]

    @property
    def characters(self) -> set[str]:
        """"alphabet/character" of every class (a character's 4 rotations share it)."""
        return {character_of(n) for n in self.names}

    def __len__(self) -> int:
        return len(self.names)


def load_split(split: str, *, root: str | Path | None = None, radii: Sequence[int] = RADII,
               verify: bool = True) -> OmniglotSplit:
    """The split's classes with every drawing at every dilation radius, as 28×28 grey levels (module doc)."""
    radii = tuple(radii)
    if not radii or radii[0] != 0 or any(b <= a for a, b in zip(radii, radii[1:], strict=False)):
        raise ValueError(f"radii must increase from 0 (version 0 is the undilated drawing); got {radii}")
    file = read_split(split, root=root, verify=verify)
    chars = list(dict.fromkeys(character_of(n) for n in file.names))  # unique, in file order
    index = {c: i for i, c in enumerate(chars)}
    char_of = torch.tensor([index[character_of(n)] for n in file.names])
    quarter = torch.tensor([ROTATIONS[n.rsplit("/", 1)[1]] for n in file.names])
    ink = load_ink(chars, root=root, verify=verify)
    images = torch.empty(len(file.names), DRAWINGS, len(radii), SIZE, SIZE)
    for lo in range(0, len(chars), _CHUNK):
        x = torch.from_numpy(ink[lo : lo + _CHUNK])  # bool: dilation moves 4x fewer bytes than in float32
        versions = []
        for v, r in enumerate(radii):
            # Square max filters compose (radius a then b = radius a + b): grow each version from the previous.
            x = dilate(x, r - radii[v - 1]) if v else x
            versions.append(resize(x))
        chunk = torch.stack(versions, dim=2)  # (chars, 20, V, 28, 28)
        for k in range(4):  # every class of these characters, rotated by its quarter turns
            rows = ((char_of >= lo) & (char_of < lo + _CHUNK) & (quarter == k)).nonzero().squeeze(1)
            images[rows] = rotate(chunk[char_of[rows] - lo], 90 * k)
    return OmniglotSplit(split, file.names, images, file.sha256, radii)


class Sets(NamedTuple):
    x: Tensor  # float32 (N_sets, set_size, 1, 28, 28)
    labels: Tensor  # long (N_sets,) class index into the split's `names`


def make_sets(split: OmniglotSplit, set_size: int, generator: torch.Generator, dilation: bool,
              binarize: bool = True) -> Sets:
    """Every class's 20 drawings in a random order, cut into 20 // set_size sets of `set_size` (the leftover
    drawings are dropped); each item takes a random dilation version when `dilation` (else the undilated one), is
    binarised dynamically when `binarize`, and the sets are shuffled. Deterministic given `generator`."""
    if not 1 <= set_size <= DRAWINGS:
        raise ValueError(f"set_size must be in 1..{DRAWINGS}; got {set_size}")
    n_classes, per = len(split), DRAWINGS // set_size
    # Per-class permutations in one call: argsort of uniform noise is a uniformly random permutation.
    order = torch.rand(n_classes, DRAWINGS, generator=generator).argsort(dim=1)
    drawing = order[:, : per * set_size].reshape(n_classes, per, set_size)
    # Drawn either way (all 0 without dilation) so `dilation` does not change the stream the shuffle draws from.
    version = torch.randint(0, split.images.shape[2] if dilation else 1, drawing.shape, generator=generator)
    label = torch.arange(n_classes)[:, None, None].expand_as(drawing)
    # Shuffled before binarising, so `binarize` changes only the pixels, never which drawings are picked.
    shuffle = torch.randperm(n_classes * per, generator=generator)
    label, drawing, version = (t.reshape(n_classes * per, set_size)[shuffle] for t in (label, drawing, version))
    x = split.images[label, drawing, version].unsqueeze(2)  # (N_sets, set_size, 1, 28, 28)
    if binarize:
        x = dynamic_binarize(x, generator)
    return Sets(x, label[:, 0].contiguous())


def class_images(split: OmniglotSplit, generator: torch.Generator, binarize: bool = True) -> Tensor:
    """(n_classes, 20, 1, 28, 28): every class's 20 undilated drawings, binarised once with `generator` (for
    evaluation: a fixed generator gives the same binary images every time)."""
    x = split.images[:, :, :1].contiguous()
    return dynamic_binarize(x, generator) if binarize else x


def mnist_few_shot(n_per_class: int, generator: torch.Generator, *,
                   root: str | Path | None = None) -> tuple[Tensor, str]:
    """(10, n_per_class, 1, 28, 28) MNIST test digits for few-shot transfer: the first n_per_class of each digit in
    file order, grey levels /255 binarised once with `generator`; and the digits' source. Without root the
    Omniglot lookup's shared folder is used when it has mnist/, else load_mnist's own sources."""
    from .mnist import load_mnist

    if root is None:
        env = os.environ.get("GLIMPSE_DATA_DIR")
        for base in ([Path(env)] if env else []) + [SHARED_DATA]:
            if (base / "mnist").is_dir():
                root = base
                break
    digits = load_mnist("test", root=root)
    picks = []
    for d in range(10):
        rows = np.flatnonzero(digits.labels == d)
        if len(rows) < n_per_class:
            raise ValueError(f"{digits.source}: only {len(rows)} test images of digit {d}; asked {n_per_class}")
        picks.append(rows[:n_per_class])
    grey = torch.from_numpy(digits.images[np.stack(picks)]).to(torch.float32).div(255)
    return dynamic_binarize(grey.unsqueeze(2), generator), digits.source
