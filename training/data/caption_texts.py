"""The caption language the image models speak, as a text corpus for the text VAE (`--dataset captions-text`).

Captions of MNIST with Captions (captions.py) and, when the Fashion-MNIST data is found (Debian's
dataset-fashion-mnist, or the data folder), of Fashion captions (fashion.py), drawn exactly as the captioned-image
datasets draw them (`draw_captions`: the same templates, the same DEFAULT_BANNED rule, the same draws a seed gives
`generate`) but without painting images. Training captions come from the training digits (items), validation
captions from the held-out last ones (`split_validation`'s hold-out, as CaptionsTask), so the 80 held-out
combinations of each language never appear in either.

Tokens are alignDRAW's (models/vocab.py `tokenize`: "the digit 7 is at the top left of the image ."), ids follow
models/textvae.py: 0 padding, 1 <bos>, 2 <eos>, 3 <unk>, then MNIST's caption words (CAPTION_WORDS order), then the
Fashion words that MNIST lacks. Every word of the vocabulary is a word of an alignDRAW vocabulary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from models.textvae import SPECIALS
from models.vocab import Vocabulary, tokenize

from . import captions as cap
from . import fashion as fa
from .mnist import DatasetNotFoundError, Digits, load_mnist, split_validation

LANGUAGES = ("mnist", "fashion")


@dataclass(frozen=True)
class CaptionTexts:
    itos: list[str]  # id -> word, index 0 "<pad>"
    train: list[list[str]]  # token lists in draw order (MNIST's, then Fashion's)
    valid: list[list[str]]
    sources: dict[str, str]  # language -> the digits' (items') source, or why it is absent
    held_out: list[str]  # the held-out captions of the languages present (never in train or valid)
    sha256: str  # of the corpus (train then valid, one caption a line): a rebuild must give the same

    @property
    def languages(self) -> list[str]:
        return [lang for lang in LANGUAGES if not self.sources[lang].startswith("absent")]

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.itos[1:], max_length=max(len(s) for s in self.train + self.valid))


def _pools(root: str | Path | None, download: bool) -> dict[str, Digits | str]:
    pools: dict[str, Digits | str] = {"mnist": load_mnist("train", root=root, download=download)}
    try:
        pools["fashion"] = load_mnist("train", root=root, dataset="fashion-mnist")
    except DatasetNotFoundError:
        try:  # an explicit data folder without fashion-mnist/: Debian's package, $GLIMPSE_DATA_DIR
            pools["fashion"] = load_mnist("train", dataset="fashion-mnist")
        except DatasetNotFoundError as e:
            pools["fashion"] = f"absent ({e})"
    return pools


def caption_texts(size: int, val_size: int, *, seed: int, val_seed: int, root: str | Path | None = None,
                  download: bool = False) -> CaptionTexts:
    """`size` training captions of each language present (drawn from its training digits with `seed`) and
    `val_size` validation captions in all (split evenly between the languages, from the held-out digits with
    `val_seed`). The same arguments and data give the same corpus (its sha256 says so)."""
    pools = _pools(root, download)
    present = [lang for lang in LANGUAGES if isinstance(pools[lang], Digits)]
    train: list[str] = []
    valid: list[str] = []
    held_out: list[str] = []
    sources: dict[str, str] = {}
    for i, lang in enumerate(LANGUAGES):
        pool = pools[lang]
        if not isinstance(pool, Digits):
            sources[lang] = pool
            continue
        sources[lang] = pool.source
        names = cap.DIGIT_NAMES if lang == "mnist" else fa.FASHION_NAMES
        train_pool, val_pool = split_validation(pool, n_val=min(10_000, len(pool) // 6))
        n_val = val_size // len(present) + (val_size % len(present) if i == 0 else 0)
        train += cap.draw_captions(train_pool, size, generator=seed + i, names=names)
        valid += cap.draw_captions(val_pool, n_val, generator=val_seed + i, names=names)
        held_out += cap.held_out_captions(cap.DEFAULT_BANNED, names)
    words = list(dict.fromkeys(cap.CAPTION_WORDS + (fa.FASHION_WORDS if "fashion" in present else [])))
    itos = ["<pad>", *SPECIALS, *words]
    tokens = {name: [[t.text for t in tokenize(c)] for c in text] for name, text in (("train", train),
                                                                                   ("valid", valid))}
    stray = {w for split in tokens.values() for s in split for w in s} - set(words)
    assert not stray, f"caption words outside the alignDRAW vocabularies: {sorted(stray)}"
    digest = hashlib.sha256("\n".join(train + ["", *valid]).encode()).hexdigest()
    return CaptionTexts(itos, tokens["train"], tokens["valid"], sources, held_out, digest)
