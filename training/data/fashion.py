"""Fashion-MNIST with Captions: the 8 MNIST-captions templates and placements over Fashion-MNIST items.

Captions name the item instead of "digit N": "the sandal is at the top left of the image .",
"the bag is on the left of the sneaker .". Tokenisation: every class is **one token**, so each word the
alignment attends to maps to exactly one class, and captions have a fixed length per template kind
(10 tokens for two-item templates, 11 for one-item ones):

    0 "T-shirt/top" -> "t-shirt"   (models.vocab keeps inner hyphens: one token; distinct from "shirt")
    1 "Trouser"     -> "trouser"
    2 "Pullover"    -> "pullover"
    3 "Dress"       -> "dress"
    4 "Coat"        -> "coat"
    5 "Sandal"      -> "sandal"
    6 "Shirt"       -> "shirt"
    7 "Sneaker"     -> "sneaker"
    8 "Bag"         -> "bag"
    9 "Ankle boot"  -> "boot"      (the only boot class, so unambiguous)

Banned combinations use the same 12-int rule as MNIST captions, on class labels (DEFAULT_BANNED by default).
Data come from `load_mnist(split, dataset="fashion-mnist")` (Debian's dataset-fashion-mnist package, or
$GLIMPSE_DATA_DIR/fashion-mnist); MNIST digits are never substituted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .captions import (
    DEFAULT_BANNED,
    CaptionedBatch,
    Combination,
    GeneratorLike,
    _generate,
    all_combinations,
    as_rng,
    caption_text,
    parse,
    render_batch,
)
from .mnist import Digits, load_mnist

FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
)
FASHION_WORDS: list[str] = list(FASHION_NAMES) + [
    "the", "is", "on", "at", "left", "right", "bottom", "top", "of", "image", ".",
]


def load_fashion(split: str = "train", *, root: str | Path | None = None, download: bool = False) -> Digits:
    return load_mnist(split, root=root, dataset="fashion-mnist", download=download)


def fashion_caption(template: int, items: Sequence[int]) -> str:
    return caption_text(template, items, FASHION_NAMES)


def generate_fashion(
    items: Digits | None,
    n: int,
    *,
    generator: GeneratorLike,
    split: str = "train",
    banned: Sequence[int] = DEFAULT_BANNED,
    allow_banned: bool = False,
    held_out_only: bool = False,
) -> CaptionedBatch:
    """Like captions.generate over Fashion-MNIST items (loads `split` when `items` is None)."""
    pool = items if items is not None else load_fashion(split)
    mode = "held_out" if held_out_only else ("all" if allow_banned else "seen")
    return _generate(pool, n, as_rng(generator), banned, mode, FASHION_NAMES)


def render_fashion(specs: Sequence[tuple[int, Sequence[int]]], items: Digits, *,
                   generator: GeneratorLike) -> CaptionedBatch:
    return render_batch(specs, items, generator=generator, names=FASHION_NAMES)


def fashion_held_out_captions(banned: Sequence[int] = DEFAULT_BANNED) -> list[str]:
    return [c.caption for c in all_combinations(banned, FASHION_NAMES) if c.banned]


def fashion_seen_captions(banned: Sequence[int] = DEFAULT_BANNED) -> list[str]:
    return [c.caption for c in all_combinations(banned, FASHION_NAMES) if not c.banned]


def parse_fashion(caption: str, banned: Sequence[int] = DEFAULT_BANNED) -> Combination | None:
    """The (template, items) combination a Fashion caption states, or None (captions.parse over FASHION_NAMES)."""
    return parse(caption, banned, FASHION_NAMES)


def is_fashion_caption(caption: str) -> bool:
    """Whether `caption` is one of the 440 Fashion captions: well-formed for the fashion-captions alignDRAW."""
    return parse_fashion(caption) is not None
