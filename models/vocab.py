"""Caption vocabulary and tokeniser.

Pure Python on purpose: the API validates captions with this module and must never import torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PAD = "<pad>"  # index 0; never a real word, masked out of every alignment
BEGIN, END = "<bos>", "<eos>"  # a text family's start and end words (models/textvae.py SPECIALS)

# Number words and numerals are one token each ("seven" == "7"): captions say digits either way.
NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}

# A word is a run of letters/digits (with inner apostrophes or hyphens); every other non-space char is its own token.
_TOKEN = re.compile(r"[^\W_]+(?:['-][^\W_]+)*|[^\w\s]|_")
_CHUNK = re.compile(r"\S+")
_NOT_WHOLE = {PAD, BEGIN, END}  # markers a user never types: mid-sentence they would end or restart it


@dataclass(frozen=True)
class Token:
    text: str  # normalised form (lower-case, numerals for number words)
    start: int  # character offsets into the caption as given, so a UI can mark the word
    end: int


@dataclass(frozen=True)
class UnknownWord:
    word: str  # as the user typed it
    position: int  # index among the caption's tokens (0-based)
    start: int
    end: int


class CaptionError(ValueError):
    """A caption the model cannot take; subclasses say why."""


class EmptyCaptionError(CaptionError):
    pass


class CaptionTooLongError(CaptionError):
    def __init__(self, length: int, max_length: int):
        super().__init__(f"caption has {length} tokens; the limit is {max_length}")
        self.length = length
        self.max_length = max_length


class UnknownWordsError(CaptionError):
    def __init__(self, unknown: Sequence[UnknownWord]):
        names = ", ".join(f"{u.word!r} at position {u.position}" for u in unknown)
        super().__init__(f"unknown words: {names}")
        self.unknown = list(unknown)


def normalise(word: str) -> str:
    w = word.lower()
    return NUMBER_WORDS.get(w, w)


CHECKED_KEPT = 4096


def tokenize(caption: str) -> list[Token]:
    """Lower-case, split punctuation off words, map number words to numerals."""
    return [Token(normalise(m.group()), m.start(), m.end()) for m in _TOKEN.finditer(caption)]


class Vocabulary:
    """Word <-> index map with a reserved padding index 0 and a maximum caption length."""

    def __init__(self, words: Iterable[str], max_length: int = 32, spelling: Mapping[str, str] | None = None):
        words = [normalise(w) for w in words]
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique after normalisation")
        if PAD in words:
            raise ValueError(f"{PAD} is reserved")
        self.itos: list[str] = [PAD, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        # id -> word as the data wrote it where normalise() changed it (Penn Treebank's "N", "one"): what sentence()
        # writes; a checkpoint records it in extra["spelling"] (training/tasks.py)
        self.written: list[str] = list(self.itos)
        for i, word in (spelling or {}).items():
            self.written[int(i)] = word
        self._checked: dict[str, tuple[Token, ...]] = {}  # check()'s answers for valid captions, by caption

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return normalise(word) in self.stoi and normalise(word) != PAD

    @property
    def words(self) -> list[str]:
        return self.itos[1:]

    def check(self, caption: str) -> list[Token]:
        """Tokenise and validate; raises a CaptionError naming what is wrong. A valid caption's tokens are kept (up to
        CHECKED_KEPT captions): a job's captions are checked by the API, when the worker loads the job, when it
        encodes each chunk and when it records the attention, and n > 1 repeats each caption."""
        if (kept := self._checked.get(caption)) is not None:
            return list(kept)
        tokens = self._check(caption)
        if len(self._checked) >= CHECKED_KEPT:
            self._checked.clear()
        self._checked[caption] = tuple(tokens)
        return tokens

    def tokens(self, caption: str) -> list[Token]:
        """`tokenize`, except that a whitespace-separated chunk that is itself one of the words stays whole: a text
        family's sentences ("mr. smith 's <unk>", Penn Treebank's own tokens) then read back as the model wrote
        them. Caption words split no differently (a chunk like "left." is no word, so it splits as before)."""
        out: list[Token] = []
        for chunk in _CHUNK.finditer(caption):
            word = normalise(chunk.group())
            if word in self.stoi and word not in _NOT_WHOLE:
                out.append(Token(word, chunk.start(), chunk.end()))
            else:
                out += [Token(t.text, chunk.start() + t.start, chunk.start() + t.end) for t in tokenize(chunk.group())]
        return out

    def typeable(self) -> list[str]:
        """The words a user can type: those `tokens` gives back whole (all but <bos> and <eos>)."""
        return [w for w in self.words if [t.text for t in self.tokens(w)] == [w]]

    def _check(self, caption: str) -> list[Token]:
        tokens = self.tokens(caption)
        if not tokens:
            raise EmptyCaptionError("caption is empty")
        unknown = [
            UnknownWord(caption[t.start : t.end], i, t.start, t.end)
            for i, t in enumerate(tokens)
            if t.text not in self.stoi or t.text == PAD
        ]
        if unknown:
            raise UnknownWordsError(unknown)
        if len(tokens) > self.max_length:
            raise CaptionTooLongError(len(tokens), self.max_length)
        return tokens

    def encode(self, caption: str) -> list[int]:
        return [self.stoi[t.text] for t in self.check(caption)]

    def encode_batch(self, captions: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Right-padded ids (B, K) with K = longest caption, and the true lengths (B,)."""
        ids = [self.encode(c) for c in captions]
        k = max(len(i) for i in ids)
        return [i + [0] * (k - len(i)) for i in ids], [len(i) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i != 0)

    def sentence(self, ids: Iterable[int], *, spelling: Sequence[str] | None = None,
                 max_words: int | None = None) -> str:
        """A text family's row of ids -> its words up to the first <eos> (the whole row without one), <pad> and
        <bos> dropped, at most `max_words` of them, in the data's spelling (`written`, or `spelling`: id -> word)."""
        itos = self.written if spelling is None else spelling
        end = self.stoi.get(END)
        skip = {0, self.stoi.get(BEGIN)}
        words = []
        for i in ids:
            if int(i) == end:
                break
            if int(i) not in skip:
                words.append(itos[int(i)])
        return " ".join(words[:max_words])

    def to_dict(self) -> dict:
        return {"words": self.words, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict, spelling: Mapping[str, str] | None = None) -> Vocabulary:
        return cls(d["words"], max_length=int(d["max_length"]), spelling=spelling)
