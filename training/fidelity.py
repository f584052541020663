"""Caption fidelity for MNIST with Captions: does the sample show the right digit in the right place, and nothing
else?

For every digit a caption names, the 28×28 window at the middle of that template's placement range is cut out of
the sample and read by the shipped digit classifier; a window with almost no ink reads as blank, never as a digit.
A sample counts as faithful when every named digit is read correctly and at most MAX_STRAY of its ink pixels lie
outside the region where the caption's digits may be placed (a digit drawn in every corner fails a corner caption).
Run on the dataset's own images the judge scores ~97% (tests), which is the ceiling to compare with.
Beside it, where the align operator looks: the share of α (eq. 4) on the digit words, on the place words and on the
rest, which the paper's MNIST evaluation inspects by eye; a model that composes digit and place should put its
weight on those words while it draws, not read the whole caption out of one word's bidirectional state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.aligndraw import AlignDRAW
from models.checkpoint import Checkpoint
from models.sampling import sample
from models.vocab import Vocabulary, tokenize
from training.classifier import DigitClassifier, load_classifier
from training.data import captions as cap
from training.likelihood import elbo_terms, nll_k

CLASSIFIER = Path(__file__).resolve().parents[1] / "checkpoints" / "mnist-classifier"


BLANK = -2  # read in a window with too little ink to be a digit
MIN_INK = 10.0  # Σ intensity of a window below which it is blank: MNIST's faintest test digit has 22
INK = 0.5  # a pixel of a sample is ink above this intensity (the sampler's haze stays below it)
MAX_STRAY = 0.2  # share of ink pixels a sample may have outside its caption's placement region (dataset: 0)


def allowed(templates: np.ndarray, size: int = 60) -> np.ndarray:
    """(N, size, size) bool: the pixels a digit of this template may cover, over its whole placement range."""
    out = np.zeros((len(templates), size, size), bool)
    for i, t in enumerate(templates):
        tpl = cap.TEMPLATES[int(t)]
        for rows, cols in zip(tpl.rows, tpl.cols, strict=True):
            out[i, rows[0] : rows[1] + 28, cols[0] : cols[1] + 28] = True
    return out


def stray_ink(images: Tensor, templates: np.ndarray) -> np.ndarray:
    """(N,) share of each sample's ink pixels outside its caption's placement region (0 for an inkless sample)."""
    ink = (images[:, 0] > INK).cpu().numpy()
    outside = (ink & ~allowed(templates, ink.shape[-1])).sum((1, 2))
    return outside / np.maximum(ink.sum((1, 2)), 1)


def windows(templates: np.ndarray) -> np.ndarray:
    """Top-left (row, col) of each named digit's judged window, (N, 2, 2); -1 where the template has one digit."""
    out = np.full((len(templates), 2, 2), -1, np.int64)
    for i, t in enumerate(templates):
        tpl = cap.TEMPLATES[int(t)]
        for j, (rows, cols) in enumerate(zip(tpl.rows, tpl.cols, strict=True)):
            out[i, j] = ((rows[0] + rows[1]) // 2, (cols[0] + cols[1]) // 2)
    return out


@torch.no_grad()
def read_digits(images: Tensor, templates: np.ndarray, digits: np.ndarray, classifier: DigitClassifier) -> np.ndarray:
    """images (N, 1, 60, 60) in [0, 1] -> (N, 2) the digit the judge reads in each named digit's window, layout
    order as `digits`; -1 where the template names one digit, BLANK where the window holds less than MIN_INK."""
    boxes = windows(templates)
    read = np.full(digits.shape, -1, np.int64)
    for j in range(2):
        rows = np.flatnonzero(digits[:, j] >= 0)
        if rows.size == 0:
            continue
        crops = torch.stack([images[i, :, r : r + 28, c : c + 28] for i, (r, c) in zip(rows, boxes[rows, j],
                                                                                       strict=True)])
        digit = classifier(crops.float().cpu()).argmax(1).numpy()
        ink = crops.float().cpu().flatten(1).sum(1).numpy()
        read[rows, j] = np.where(ink < MIN_INK, BLANK, digit)  # an empty window is no digit, whatever it argmaxes
    return read


def all_read_right(read: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """(N, 2) digits read and named (-1 where none is named on both) -> (N,) bool: the sample is accepted."""
    return (read == digits).all(axis=1)


def judge(images: Tensor, templates: np.ndarray, digits: np.ndarray, classifier: DigitClassifier) -> np.ndarray:
    """images (N, 1, 60, 60) in [0, 1] -> (N,) bool: every digit the caption names is read in its place, and little
    ink lies elsewhere."""
    read = read_digits(images, templates, digits, classifier)
    return all_read_right(read, digits) & (stray_ink(images, templates) <= MAX_STRAY)


def caption_batch(vocab: Vocabulary, batch: cap.CaptionedBatch) -> dict[str, Tensor]:
    ids, lengths = vocab.encode_batch(batch.captions)
    return {"x": batch.images, "captions": torch.tensor(ids), "lengths": torch.tensor(lengths)}


PLACE_WORDS = frozenset({"left", "right", "top", "bottom"})
DIGIT_WORDS = frozenset(str(d) for d in range(10))


def attention_shares(alignments: Tensor, captions: Sequence[str]) -> dict[str, float]:
    """alignments (N, T, K) α over each caption's words -> mean α mass per step on digit words, place words, rest."""
    k = alignments.shape[2]
    roles = torch.zeros(len(captions), k, 2)
    for i, caption in enumerate(captions):
        for j, token in enumerate(tokenize(caption)[:k]):
            roles[i, j, 0], roles[i, j, 1] = token.text in DIGIT_WORDS, token.text in PLACE_WORDS
    digit, place = (alignments.float().cpu() @ roles).mean(dim=(0, 1)).tolist()  # (N, T, 2) -> mean over N, T
    return {"digit_words": digit, "place_words": place, "other_words": 1.0 - digit - place}


def by_template(accepted: np.ndarray, templates: np.ndarray) -> dict[str, dict[str, float]]:
    """Fidelity per caption template: which wordings and places a model composes and which it does not."""
    return {cap.TEMPLATES[t].name: {"fidelity": float(accepted[templates == t].mean()),
                                    "samples": int((templates == t).sum())} for t in np.unique(templates)}


# Each digit's place in layout order (captions.py): index 0 is the left / top / only digit, 1 the right / bottom.
PLACE_NAMES = {0: ("left", "right"), 1: ("left", "right"), 2: ("top", "bottom"), 3: ("top", "bottom")}


def by_place(read: np.ndarray, templates: np.ndarray, digits: np.ndarray, worst: int = 3) -> dict[str, Any]:
    """Per template and digit place: the share of named digits read right, and the commonest misreadings
    ("4→9": count), so a failure shows whether the place or the identity goes wrong and which digit replaces it."""
    out: dict[str, Any] = {}
    for t in np.unique(templates):
        rows = templates == t
        places: dict[str, Any] = {}
        for j, name in enumerate(PLACE_NAMES.get(int(t), ("only",))):
            truth, seen = digits[rows, j], read[rows, j]
            wrong = truth != seen
            pairs, counts = np.unique(np.stack([truth[wrong], seen[wrong]], 1), axis=0, return_counts=True)
            order = np.argsort(-counts, kind="stable")[:worst]
            misread = {f"{a}→{'blank' if b == BLANK else b}": int(c)
                       for (a, b), c in zip(pairs[order], counts[order], strict=True)}
            places[name] = {"accuracy": float((~wrong).mean()), "samples": int(rows.sum()), "misread": misread}
        out[cap.TEMPLATES[int(t)].name] = places
    return out


@dataclass(frozen=True)
class Judged:
    read: np.ndarray  # (N, 2) the digit read in each named place of each sample (-1 where none is named)
    digits: np.ndarray  # (N, 2) the digits the captions name, same layout
    alignments: Tensor  # (N, T, K) α_t of each sample
    stray: np.ndarray  # (N,) share of each sample's ink outside its caption's placement region

    @property
    def accepted(self) -> np.ndarray:
        """(N,) bool: every named digit read right and little stray ink, one sample per caption."""
        return all_read_right(self.read, self.digits) & (self.stray <= MAX_STRAY)

    @property
    def fidelity(self) -> float:
        """Share of the samples that the judge accepts."""
        return float(self.accepted.mean())


def sample_and_judge(model: AlignDRAW, vocab: Vocabulary, batch: cap.CaptionedBatch, classifier: DigitClassifier, *,
                     seed: int = 0, chunk: int = 250, temperature: float = 1.0) -> Judged:
    """One sample per caption of `batch` at this sampling temperature, judged; with its word alignments."""
    data = caption_batch(vocab, batch)
    read, alignments, stray = [], [], []
    for lo in range(0, len(batch.captions), chunk):
        hi = min(lo + chunk, len(batch.captions))
        out = sample(model, captions=data["captions"][lo:hi], lengths=data["lengths"][lo:hi],
                     seeds=list(range(seed + lo, seed + hi)), keep_canvases=False, temperature=temperature)
        read.append(read_digits(out.images, batch.templates[lo:hi], batch.digits[lo:hi], classifier))
        stray.append(stray_ink(out.images, batch.templates[lo:hi]))
        assert out.alignments is not None
        alignments.append(out.alignments.cpu())  # every chunk keeps the batch's K (padding: α = 0)
    return Judged(np.concatenate(read), batch.digits, torch.cat(alignments), np.concatenate(stray))


def evaluate_captions(ckpt: Checkpoint, *, k: int, limit: int | None, data_dir: str | None, lk_images: int = 100,
                      classifier_dir: str | Path = CLASSIFIER, temperatures: Sequence[float] = ()) -> dict[str, Any]:
    """ELBO, L_k and fidelity on MNIST-test digits, for captions seen in training and for held-out captions.

    `fidelity` samples the prior as trained (temperature 1); `temperatures` adds the fidelity at each of those.
    """
    from training.data.mnist import load_mnist

    test = load_mnist("test", root=data_dir)
    classifier = load_classifier(classifier_dir)
    assert ckpt.vocab is not None and isinstance(ckpt.model, AlignDRAW)
    banned = tuple(ckpt.extra.get("banned", cap.DEFAULT_BANNED))
    n = limit or 1000
    results: dict[str, Any] = {"digits_source": test.source, "captions_per_split": n}
    for split, held_out in (("seen", False), ("held_out", True)):
        batch = cap.generate(test, n, generator=7 + held_out, banned=banned, held_out_only=held_out)
        data = caption_batch(ckpt.vocab, batch)
        model = ckpt.model
        results[split] = {
            **elbo_terms(model, data),
            **nll_k(model, {key: v[: min(n, lk_images)] for key, v in data.items()}, k),
            "fidelity": (judged := sample_and_judge(model, ckpt.vocab, batch, classifier)).fidelity,
            "fidelity_by_template": by_template(judged.accepted, batch.templates),
            "fidelity_by_place": by_place(judged.read, batch.templates, batch.digits),
            "attention": attention_shares(judged.alignments, batch.captions),
            "fidelity_of_dataset_images": float(judge(batch.images, batch.templates, batch.digits, classifier).mean()),
        }
        if temperatures:
            results[split]["fidelity_by_temperature"] = {
                str(t): sample_and_judge(model, ckpt.vocab, batch, classifier, temperature=t).fidelity
                for t in temperatures}
    return results
