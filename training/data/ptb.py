"""Penn Treebank, Mikolov's language-modelling version (/work/shared/data/README.md §4), as token-id sentences.

Files `ptb.{train,valid,test}.txt[.gz]`, looked up in `root`, else `$GLIMPSE_DATA_DIR`, else the sibling shared
folder `<repo>/../shared/data`, each directly or in a `ptb/` subfolder (an explicit root that lacks them is an error,
never a silent fall-through). The decompressed text is checked against the README's sha256 unless `verify=False`.

One line is one sentence; its words are the line split on whitespace (the files already hold `<unk>` and `N`). Ids
follow models/textvae.py: 0 padding, 1 <bos>, 2 <eos>, 3 <unk>, then the other training words by falling count
(ties alphabetical). Each split is `tokens` (N, L) long, the words then <eos>, right-padded with 0, and `lengths`
(N,) = words + 1; L is the split's longest. Perplexity counts those same tokens: Σ (words + 1), <eos> in, <bos> out.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.textvae import EOS, PAD, SPECIALS, UNK
from models.vocab import Vocabulary

from .mnist import DatasetError, DatasetNotFoundError, read_checked

SPLITS = ("train", "valid", "test")
SIZES = {"train": 42_068, "valid": 3_370, "test": 3_761}  # sentences (README §4: the standard Mikolov counts)
TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}  # Σ (words + 1)
TRAIN_WORDS = 9_999  # distinct training words, <unk> included; + <eos> = the usual "10k vocabulary"

# sha256 of the decompressed text (README §4), so a recompressed copy still passes
RAW_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # the sibling shared folder


def find_ptb_file(split: str, root: str | Path | None = None) -> Path:
    """ptb.<split>.txt.gz (or .txt) in root (or root/ptb), else $GLIMPSE_DATA_DIR, else SHARED_DATA."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if root is not None:
        bases = [Path(root)]
    else:
        env = os.environ.get("GLIMPSE_DATA_DIR")
        bases = ([Path(env)] if env else []) + [SHARED_DATA]
    name = f"ptb.{split}.txt"
    for base in bases:
        for folder in (base / "ptb", base):
            for candidate in (folder / (name + ".gz"), folder / name):
                if candidate.is_file():
                    return candidate
    where = " or ".join(str(b) for b in bases)
    raise DatasetNotFoundError(f"no {name}[.gz] in {where} (nor a ptb/ subfolder); expected raw sha256 "
                               f"{RAW_SHA256[split]} (README §4)")


def read_sentences(split: str, *, root: str | Path | None = None, verify: bool = True) -> list[list[str]]:
    """The split's sentences, one per line, each a list of words (a blank line would be a sentence of 0 words)."""
    path = find_ptb_file(split, root)
    raw = read_checked(path, RAW_SHA256[split], f"PTB {split}", verify=verify)
    return [line.split() for line in raw.decode("utf-8").splitlines()]


def count_tokens(sentences: Iterable[Sequence[str]]) -> int:
    """The perplexity denominator: Σ (words + 1) over sentences, the end token counted and the start token not."""
    return sum(len(s) + 1 for s in sentences)


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(Σ NLL / Σ tokens), NLL in nats summed over sentences, tokens from count_tokens (= Σ lengths)."""
    return math.exp(total_nll / total_tokens)


def build_vocabulary(train: Iterable[Sequence[str]]) -> list[str]:
    """The id -> word list (itos) exactly as in the files: padding, <bos>, <eos>, <unk>, then the other training
    words by falling count, ties alphabetical."""
    counts = Counter(w for s in train for w in s)
    clash = sorted(set(counts) & ({"<pad>", *SPECIALS} - {"<unk>"}))
    if clash:
        raise DatasetError(f"training text holds reserved token(s) {clash}")
    words = sorted((w for w in counts if w != "<unk>"), key=lambda w: (-counts[w], w))
    return ["<pad>", *SPECIALS, *words]


@dataclass(frozen=True)
class TextSplit:
    tokens: Tensor  # (N, L) long: words, <eos>, then padding 0
    lengths: Tensor  # (N,) long: words + 1
    unknown: int  # words absent from the vocabulary, mapped to <unk> (0 on PTB's valid and test)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def token_count(self) -> int:
        """Σ lengths = Σ (words + 1): the perplexity denominator."""
        return int(self.lengths.sum())

    def batch(self) -> dict[str, Tensor]:
        """The family's batch layout (models/textvae.py): {"x": tokens, "lengths": lengths}."""
        return {"x": self.tokens, "lengths": self.lengths}


def encode(sentences: Sequence[Sequence[str]], stoi: dict[str, int]) -> TextSplit:
    """Sentences of words -> TextSplit; a word outside stoi becomes <unk> (counted)."""
    lengths = torch.tensor([len(s) + 1 for s in sentences], dtype=torch.long)
    width = int(lengths.max()) if len(sentences) else 1
    tokens = torch.full((len(sentences), width), PAD, dtype=torch.long)
    unknown = 0
    for i, s in enumerate(sentences):
        ids = [stoi.get(w, UNK) for w in s]
        unknown += sum(w not in stoi for w in s)
        tokens[i, : len(ids) + 1] = torch.tensor([*ids, EOS], dtype=torch.long)
    return TextSplit(tokens, lengths, unknown)


@dataclass(frozen=True)
class PTBCorpus:
    itos: list[str]  # id -> word exactly as in the files (index 0 "<pad>")
    splits: dict[str, TextSplit]  # "train", "valid", "test"
    dropped: int  # training sentences over max_length left out (valid and test are never filtered)

    @property
    def vocab(self) -> Vocabulary:
        """The ids as a models.vocab.Vocabulary (what a checkpoint carries). Its constructor normalises words, so
        its itos shows 11 PTB words differently ("N" as "n", "one" as "1"); the ids are the same. Decode text with
        `decode`, which uses the files' spelling."""
        return Vocabulary(self.itos[1:], max_length=max(int(s.lengths.max()) for s in self.splits.values()) - 1)

    def decode(self, tokens: Sequence[int] | Tensor) -> str:
        """Ids -> the words up to <eos> (padding and <bos> dropped)."""
        words = []
        for i in (tokens.tolist() if isinstance(tokens, Tensor) else tokens):
            if i == EOS:
                break
            if i > EOS:
                words.append(self.itos[i])
        return " ".join(words)


def ptb_corpus(root: str | Path | None = None, max_length: int | None = None, *, verify: bool = True) -> PTBCorpus:
    """The vocabulary of the training words and the three splits as ids.

    max_length (tokens incl. <eos>) leaves out the *training* sentences longer than it, counted in `dropped`; valid
    and test are always whole, so their NLL and perplexity compare with published ones. None keeps everything
    (PTB's longest sentence has 82 words: L = 83).
    """
    text = {s: read_sentences(s, root=root, verify=verify) for s in SPLITS}
    itos = build_vocabulary(text["train"])
    stoi = {w: i for i, w in enumerate(itos) if i > 0}
    dropped = 0
    if max_length is not None:
        kept = [s for s in text["train"] if len(s) + 1 <= max_length]
        dropped, text["train"] = len(text["train"]) - len(kept), kept
    return PTBCorpus(itos, {s: encode(text[s], stoi) for s in SPLITS}, dropped)
