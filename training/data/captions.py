"""MNIST with Captions (alignDRAW, Mansimov et al. 2016), following create-captions.py as summarised in
/work/shared/reference/papers.md §1.2.

* Canvas 60x60, black; one or two 28x28 grey-level MNIST digits (not binarised), intensities in [0, 1].
* 8 templates, uniform. Template ids here are **0-based**: `TEMPLATES[k]` is template k + 1 of papers.md.
* Every caption has exactly 12 tokens; digits are numerals ("the digit 7 is at the top left of the image .").
* Placement: the top-left corner (row, col) of each 28x28 digit box is drawn uniformly from inclusive integer
  ranges (see `TEMPLATES`); in the left/right pair both digits share one row draw, in the top/bottom pair one
  column draw. The second digit is assigned over the first (pixels are overwritten, not added).
* Digit order: arrays `digits` / `boxes` are in **layout order**: index 0 is the digit drawn first (the left one
  for templates 0/1, the top one for 2/3, the only one for 4..7), index 1 the second (right / bottom), or -1.
  Templates 1 and 3 mention the second digit first: "the digit B is on the right of the digit A ." has A = digits[0]
  on the left and B = digits[1] on the right, exactly like the original code.
* Held-out ("banned") combinations, the original rule with a 12-int list over 0..10 (10 bans nothing):
  two-digit template k in 0..3 is banned when digits[0] == banned[2k] or digits[1] == banned[2k+1];
  one-digit template k in 4..7 is banned when digits[0] == banned[k+4].
  The original draws the list at random per run; we fix `DEFAULT_BANNED` so runs are comparable:

      DEFAULT_BANNED = (1, 0,  2, 3,  4, 5,  6, 7,  8, 9, 0, 3)

  - template 0 (left of):  left digit 1 or right digit 0 held out -> includes the original sampling script's
    example "the digit 1 is on the left of the digit 0 ." (19 of 100 pairs held out);
  - template 1 (right of): left digit 2 or right digit 3;  template 2 (top of): top 4 or bottom 5;
  - template 3 (bottom of): top 6 or bottom 7;
  - template 4 (top left): 8;  5 (bottom right): 9;  6 (top right): 0;  7 (bottom left): 3.
  Every template holds out at least one real digit, no template holds out everything, and every digit 0..9 still
  appears in training in every template except where it is itself banned (so each digit is seen in every position
  through other templates). 2 x 4 x 19 + 4 x 1 = 80 of the 440 possible captions are held out.

`generate` makes a fresh set each call (the paper regenerates 10,000 pairs per epoch). A banned draw is rejected
as a whole (template and digits redrawn), which is the original's skip-and-continue: the kept pairs follow the
uniform draw conditioned on "not banned", so with DEFAULT_BANNED two-digit templates are slightly rarer
(~11.8 % each vs ~13.2 % for one-digit ones). `allow_banned` keeps every draw; `held_out_only` keeps only banned
ones (for held-out evaluation sets). `render_batch` renders given (template, digits) specs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.vocab import tokenize

from .mnist import Digits

CANVAS = 60
DIGIT = 28

CAPTION_WORDS: list[str] = [str(d) for d in range(10)] + [
    "the", "digit", "is", "on", "at", "left", "right", "bottom", "top", "of", "image", ".",
]

# How a class is named inside a caption: "digit 7" (two tokens), so templates read "the {0} is ...".
DIGIT_NAMES: tuple[str, ...] = tuple(f"digit {d}" for d in range(10))


@dataclass(frozen=True)
class Template:
    index: int  # 0-based; papers.md numbers templates index + 1
    name: str
    pattern: str  # "{0}" / "{1}" = name of digits[0] / digits[1] (layout order)
    rows: tuple[tuple[int, int], ...]  # per digit: inclusive range of the box's top row
    cols: tuple[tuple[int, int], ...]  # per digit: inclusive range of the box's left column
    shared: str | None = None  # "row" / "col": both digits use one draw of that coordinate

    @property
    def n_digits(self) -> int:
        return len(self.rows)


_LEFT, _RIGHT, _TOP, _BOTTOM = (0, 4), (28, 32), (0, 2), (30, 32)
_MID = (16, 18)

TEMPLATES: tuple[Template, ...] = (
    Template(0, "left of", "the {0} is on the left of the {1} .", (_MID, _MID), (_LEFT, _RIGHT), "row"),
    Template(1, "right of", "the {1} is on the right of the {0} .", (_MID, _MID), (_LEFT, _RIGHT), "row"),
    Template(2, "top of", "the {0} is at the top of the {1} .", (_TOP, _BOTTOM), (_MID, _MID), "col"),
    Template(3, "bottom of", "the {1} is at the bottom of the {0} .", (_TOP, _BOTTOM), (_MID, _MID), "col"),
    Template(4, "top left", "the {0} is at the top left of the image .", (_TOP,), (_LEFT,)),
    Template(5, "bottom right", "the {0} is at the bottom right of the image .", (_BOTTOM,), (_RIGHT,)),
    Template(6, "top right", "the {0} is at the top right of the image .", (_TOP,), (_RIGHT,)),
    Template(7, "bottom left", "the {0} is at the bottom left of the image .", (_BOTTOM,), (_LEFT,)),
)
N_TEMPLATES = len(TEMPLATES)

DEFAULT_BANNED: tuple[int, ...] = (1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 0, 3)
NO_BANNED: tuple[int, ...] = (10,) * 12


def _table(attr: str, end: int) -> np.ndarray:
    out = np.zeros((N_TEMPLATES, 2), np.int64)
    for t in TEMPLATES:
        for j, rng in enumerate(getattr(t, attr)):
            out[t.index, j] = rng[end]
    return out


_ROW_LO, _ROW_HI = _table("rows", 0), _table("rows", 1)
_COL_LO, _COL_HI = _table("cols", 0), _table("cols", 1)
_N_DIGITS = np.array([t.n_digits for t in TEMPLATES])
_SHARE_ROW = np.array([t.shared == "row" for t in TEMPLATES])
_SHARE_COL = np.array([t.shared == "col" for t in TEMPLATES])


@dataclass
class CaptionedBatch:
    images: torch.Tensor  # (N, 1, 60, 60) float32 in [0, 1]
    captions: list[str]
    templates: np.ndarray  # (N,) int64, 0-based template ids
    digits: np.ndarray  # (N, 2) int64 labels in layout order; second = -1 for one-digit templates
    boxes: np.ndarray  # (N, 2, 2) int64 top-left (row, col) of each digit's 28x28 box; -1 where absent
    indices: np.ndarray | None = None  # (N, 2) int64 index into the pool's images per digit; -1 where absent

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, index: np.ndarray | slice | Sequence[int]) -> CaptionedBatch:
        idx = np.arange(len(self))[index]
        return CaptionedBatch(self.images[torch.from_numpy(idx)], [self.captions[i] for i in idx],
                              self.templates[idx], self.digits[idx], self.boxes[idx],
                              None if self.indices is None else self.indices[idx])


class CaptionedDataset(torch.utils.data.Dataset):
    """A CaptionedBatch as a map-style Dataset of (image (1,60,60), caption) pairs."""

    def __init__(self, batch: CaptionedBatch):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.batch.images[i], self.batch.captions[i]


# ---------------------------------------------------------------------------------------------------------------
# Captions and banned combinations


def _check_template(template: int) -> Template:
    if not 0 <= int(template) < N_TEMPLATES:
        raise ValueError(f"template must be 0..{N_TEMPLATES - 1} (0-based); got {template}")
    return TEMPLATES[int(template)]


def _digit_tuple(template: int, digits: Iterable[int]) -> tuple[int, ...]:
    t = _check_template(template)
    ds = tuple(int(d) for d in digits)
    if t.n_digits == 1 and len(ds) == 2 and ds[1] == -1:
        ds = ds[:1]
    if len(ds) != t.n_digits:
        raise ValueError(f"template {template} ({t.name}) takes {t.n_digits} digit(s); got {ds}")
    if any(not 0 <= d <= 9 for d in ds):
        raise ValueError(f"digits must be 0..9; got {ds}")
    return ds


def caption_text(template: int, digits: Iterable[int], names: Sequence[str] = DIGIT_NAMES) -> str:
    """The caption of `template` (0-based) for `digits` in layout order, e.g. (0, (1, 0)) ->
    "the digit 1 is on the left of the digit 0 ."; (1, (1, 0)) -> "the digit 0 is on the right of the digit 1 ."."""
    t = _check_template(template)
    ds = _digit_tuple(template, digits)
    return t.pattern.format(*(names[d] for d in ds))


def check_banned(banned: Sequence[int]) -> tuple[int, ...]:
    b = tuple(int(x) for x in banned)
    if len(b) != 12 or any(not 0 <= x <= 10 for x in b):
        raise ValueError(f"banned must be 12 integers in 0..10 (10 bans nothing); got {b}")
    return b


def is_banned(template: int, digits: Iterable[int], banned: Sequence[int] = DEFAULT_BANNED) -> bool:
    """Whether (template, digits in layout order) is held out under the original rule (see module doc)."""
    b = check_banned(banned)
    ds = _digit_tuple(template, digits)
    if template < 4:
        return ds[0] == b[2 * template] or ds[1] == b[2 * template + 1]
    return ds[0] == b[template + 4]


def banned_mask(templates: np.ndarray, digits: np.ndarray, banned: Sequence[int] = DEFAULT_BANNED) -> np.ndarray:
    """Vectorised is_banned over (N,) templates and (N, 2) layout-order digits."""
    b = np.asarray(check_banned(banned), np.int64)
    t = np.asarray(templates, np.int64)
    d = np.asarray(digits, np.int64)
    two = t < 4
    first = np.where(two, b[np.minimum(2 * t, 11)], b[np.clip(t + 4, 0, 11)])
    second = np.where(two, b[np.minimum(2 * t + 1, 11)], -2)
    return (d[:, 0] == first) | (two & (d[:, 1] == second))


@dataclass(frozen=True)
class Combination:
    template: int
    digits: tuple[int, ...]  # layout order
    caption: str
    banned: bool


def all_combinations(banned: Sequence[int] = DEFAULT_BANNED, names: Sequence[str] = DIGIT_NAMES) -> list[Combination]:
    """All 440 (template, digits) combinations with their caption and banned flag."""
    out = []
    for t in TEMPLATES:
        combos = [(a, b) for a in range(10) for b in range(10)] if t.n_digits == 2 else [(a,) for a in range(10)]
        for ds in combos:
            out.append(Combination(t.index, ds, caption_text(t.index, ds, names), is_banned(t.index, ds, banned)))
    return out


def held_out_captions(banned: Sequence[int] = DEFAULT_BANNED, names: Sequence[str] = DIGIT_NAMES) -> list[str]:
    """Every caption whose combination is banned (never generated for training/validation)."""
    return [c.caption for c in all_combinations(banned, names) if c.banned]


def seen_captions(banned: Sequence[int] = DEFAULT_BANNED, names: Sequence[str] = DIGIT_NAMES) -> list[str]:
    """Every caption that training/validation sets can contain."""
    return [c.caption for c in all_combinations(banned, names) if not c.banned]


@functools.cache
def _by_tokens(banned: tuple[int, ...], names: tuple[str, ...]) -> dict[tuple[str, ...], Combination]:
    return {tuple(t.text for t in tokenize(c.caption)): c for c in all_combinations(banned, names)}


def parse(caption: str, banned: Sequence[int] = DEFAULT_BANNED,
          names: Sequence[str] = DIGIT_NAMES) -> Combination | None:
    """The (template, digits) combination a caption states, or None when it is none of the 8 templates filled with
    `names`. Tokenised as alignDRAW's vocabulary does (models/vocab.py `tokenize`: lower case, numerals for number
    words), so "The digit seven is at the top left of the image." parses and a shuffled or unknown word does not.
    `banned` sets the result's `banned` flag only."""
    return _by_tokens(check_banned(banned), tuple(names)).get(tuple(t.text for t in tokenize(caption)))


def is_caption(caption: str, names: Sequence[str] = DIGIT_NAMES) -> bool:
    """Whether `caption` is one of the 440 captions of the templates over `names` (well-formed for the alignDRAW
    model of that dataset: every such caption is in its vocabulary and its language)."""
    return parse(caption, names=names) is not None


# ---------------------------------------------------------------------------------------------------------------
# Randomness and rendering

GeneratorLike = torch.Generator | np.random.Generator | int | None


def as_rng(generator: GeneratorLike) -> np.random.Generator:
    """A numpy Generator from a numpy Generator (used as is), a torch.Generator (one seed drawn from it, so it
    advances), an int seed, or None (fresh entropy: not reproducible)."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return np.random.default_rng(seed)
    if generator is None or (isinstance(generator, int | np.integer) and not isinstance(generator, bool)):
        return np.random.default_rng(None if generator is None else int(generator))
    raise TypeError(f"generator must be a torch.Generator, numpy Generator, int seed or None; got {type(generator)}")


def _draw_boxes(rng: np.random.Generator, templates: np.ndarray) -> np.ndarray:
    n = len(templates)
    rows = rng.integers(_ROW_LO[templates], _ROW_HI[templates] + 1, size=(n, 2))
    cols = rng.integers(_COL_LO[templates], _COL_HI[templates] + 1, size=(n, 2))
    share_row, share_col = _SHARE_ROW[templates], _SHARE_COL[templates]
    rows[share_row, 1] = rows[share_row, 0]
    cols[share_col, 1] = cols[share_col, 0]
    boxes = np.stack([rows, cols], axis=-1)  # (n, 2, 2)
    boxes[_N_DIGITS[templates] == 1, 1] = -1
    return boxes


def _paint(pool_images: np.ndarray, index: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
    """Assign pool_images[index[:, k]] at boxes[:, k] for k = 0 then 1 (the second overwrites the first)."""
    n = len(index)
    canvas = np.zeros((n, CANVAS, CANVAS), np.uint8)
    offs = np.arange(DIGIT)
    for k in range(2):
        present = np.flatnonzero(index[:, k] >= 0)
        if present.size == 0:
            continue
        r = boxes[present, k, 0][:, None, None] + offs[None, :, None]
        c = boxes[present, k, 1][:, None, None] + offs[None, None, :]
        canvas[present[:, None, None], r, c] = pool_images[index[present, k]]
    return torch.from_numpy(canvas).to(torch.float32).div_(255.0).unsqueeze(1)


def _assemble(pool: Digits, templates: np.ndarray, index: np.ndarray, boxes: np.ndarray,
              names: Sequence[str]) -> CaptionedBatch:
    labels = np.where(index >= 0, pool.labels.astype(np.int64)[np.maximum(index, 0)], -1)
    return CaptionedBatch(_paint(pool.images, index, boxes), _captions(pool, templates, index, names),
                          templates.astype(np.int64), labels, boxes, index)


def _check_pool(pool: Digits) -> None:
    if len(pool) == 0:
        raise ValueError("the digit pool is empty")
    if pool.labels.size and int(pool.labels.max()) > 9:
        raise ValueError("pool labels must be 0..9")


def _draw(pool: Digits, n: int, rng: np.random.Generator, banned: Sequence[int],
          mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(templates (n,), pool indices (n, 2), -1 where absent) of n draws: the part of `generate` that decides the
    captions, before any placement is drawn or pixel painted."""
    _check_pool(pool)
    banned = check_banned(banned)
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if mode == "held_out" and all(x == 10 for x in banned):
        raise ValueError("held_out_only with a banned list that bans nothing")
    labels = pool.labels.astype(np.int64)
    templates = np.empty(n, np.int64)
    index = np.empty((n, 2), np.int64)
    todo = np.arange(n)
    for _ in range(1000):
        if todo.size == 0:
            break
        t = rng.integers(0, N_TEMPLATES, size=todo.size)
        idx = rng.integers(0, len(pool), size=(todo.size, 2))
        idx[_N_DIGITS[t] == 1, 1] = -1
        templates[todo], index[todo] = t, idx
        if mode == "all":
            todo = todo[:0]
            continue
        d = np.where(idx >= 0, labels[np.maximum(idx, 0)], -1)
        bad = banned_mask(t, d, banned)
        todo = todo[bad] if mode == "seen" else todo[~bad]
    else:
        raise ValueError(f"could not draw {n} {mode} combinations from this pool (labels {np.unique(labels)})")
    return templates, index


def _generate(pool: Digits, n: int, rng: np.random.Generator, banned: Sequence[int], mode: str,
              names: Sequence[str]) -> CaptionedBatch:
    templates, index = _draw(pool, n, rng, banned, mode)
    return _assemble(pool, templates, index, _draw_boxes(rng, templates), names)


def _captions(pool: Digits, templates: np.ndarray, index: np.ndarray, names: Sequence[str]) -> list[str]:
    labels = np.where(index >= 0, pool.labels.astype(np.int64)[np.maximum(index, 0)], -1)
    return [TEMPLATES[t].pattern.format(*(names[d] for d in ds[: TEMPLATES[t].n_digits]))
            for t, ds in zip(templates.tolist(), labels.tolist(), strict=True)]


def draw_captions(pool: Digits, n: int, *, generator: GeneratorLike, banned: Sequence[int] = DEFAULT_BANNED,
                  allow_banned: bool = False, held_out_only: bool = False,
                  names: Sequence[str] = DIGIT_NAMES) -> list[str]:
    """The captions `generate` would give for the same arguments (the same draws from the same generator), without
    placing or painting any image: a text corpus in the language of the captioned images."""
    mode = "held_out" if held_out_only else ("all" if allow_banned else "seen")
    templates, index = _draw(pool, n, as_rng(generator), banned, mode)
    return _captions(pool, templates, index, names)


def generate(
    digits: Digits,
    n: int,
    *,
    generator: GeneratorLike,
    banned: Sequence[int] = DEFAULT_BANNED,
    allow_banned: bool = False,
    held_out_only: bool = False,
) -> CaptionedBatch:
    """A fresh set of `n` image/caption pairs: template uniform, each digit drawn uniformly from the pool,
    banned combinations redrawn (unless `allow_banned`), or only banned ones kept (`held_out_only`)."""
    mode = "held_out" if held_out_only else ("all" if allow_banned else "seen")
    return _generate(digits, n, as_rng(generator), banned, mode, DIGIT_NAMES)


def render_batch(
    specs: Sequence[tuple[int, Sequence[int]]],
    digits: Digits,
    *,
    generator: GeneratorLike,
    names: Sequence[str] = DIGIT_NAMES,
) -> CaptionedBatch:
    """Render given (template, digits-in-layout-order) specs: each digit is a random pool image with that label,
    placed per the template. Banned status is not checked: use this to build held-out evaluation sets."""
    _check_pool(digits)
    rng = as_rng(generator)
    labels = digits.labels.astype(np.int64)
    by_label = [np.flatnonzero(labels == k) for k in range(10)]
    templates = np.empty(len(specs), np.int64)
    index = np.full((len(specs), 2), -1, np.int64)
    for i, (t, ds) in enumerate(specs):
        ds = _digit_tuple(t, ds)
        templates[i] = t
        for k, d in enumerate(ds):
            if by_label[d].size == 0:
                raise ValueError(f"the pool has no image with label {d} (spec {i}: template {t}, digits {ds})")
            index[i, k] = by_label[d][rng.integers(by_label[d].size)]
    return _assemble(digits, templates, index, _draw_boxes(rng, templates), names)


def render(
    template: int, digit_values: Sequence[int], digits: Digits, *, generator: GeneratorLike
) -> tuple[torch.Tensor, str, np.ndarray]:
    """One image (1, 60, 60), its caption and its boxes (2, 2) for `template` and layout-order `digit_values`."""
    b = render_batch([(template, digit_values)], digits, generator=generator)
    return b.images[0], b.captions[0], b.boxes[0]


def specs_for(combinations: Iterable[Combination], repeat: int = 1) -> list[tuple[int, tuple[int, ...]]]:
    """(template, digits) specs for render_batch, each combination `repeat` times (e.g. all held-out ones)."""
    return [(c.template, c.digits) for c in combinations for _ in range(repeat)]
