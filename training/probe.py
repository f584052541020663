"""python -m training.probe CHECKPOINT: where a trained MNIST-captions alignDRAW keeps a digit's identity, and how
its align operator reads each digit word of seen and held-out captions.

Identity: latents inferred from an image under its caption A (`posterior_means`) redraw it under caption B, a copy
of A with every digit changed (`decode`). A generator that takes the identity from the words draws B's digits; one
that takes it from z draws A's. Beside it, z = 0 under B: no latent information at all. Shares are of the named
digits that the shipped judge reads right.

Attention: per template and digit word (caption order), α summed over the T steps and its mean per step, for
seen and for held-out captions, one sample each at temperature 1; a held-out word that align reads less, or
later, than the same word of a seen caption points at the keys, not at the generator.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from models.aligndraw import AlignDRAW
from models.checkpoint import load_checkpoint
from models.sampling import sample
from models.vocab import Vocabulary, tokenize
from training.classifier import DigitClassifier, load_classifier
from training.data import captions as cap
from training.fidelity import CLASSIFIER, DIGIT_WORDS, caption_batch, read_digits


def _share(read: np.ndarray, digits: np.ndarray) -> float:
    named = digits >= 0
    return float((read[named] == digits[named]).mean())


def changed_digits(digits: np.ndarray, seed: int) -> np.ndarray:
    """(N, 2) digits (-1 where none) -> each named digit replaced by a different one, uniformly."""
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, 10, size=digits.shape)
    return np.where(digits >= 0, (digits + shift) % 10, digits)


@torch.no_grad()
def identity_probe(model: AlignDRAW, vocab: Vocabulary, batch: cap.CaptionedBatch, classifier: DigitClassifier,
                   seed: int = 0) -> dict[str, float]:
    a = caption_batch(vocab, batch)
    other = changed_digits(batch.digits, seed)
    ids, lengths = vocab.encode_batch([cap.caption_text(int(t), [int(d) for d in row if d >= 0])
                                       for t, row in zip(batch.templates, other, strict=True)])
    b_captions, b_lengths = torch.tensor(ids), torch.tensor(lengths)
    z = model.posterior_means(a["x"], a["captions"], a["lengths"])

    def read(z: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        images = torch.sigmoid(model.decode(z, captions, lengths))
        return read_digits(images, batch.templates, batch.digits, classifier)

    redrawn = read(z, a["captions"], a["lengths"])
    swapped = read(z, b_captions, b_lengths)
    blank = read(torch.zeros_like(z), b_captions, b_lengths)
    return {
        "reconstruction_reads_a": _share(redrawn, batch.digits),
        "z_of_a_caption_b_reads_a": _share(swapped, batch.digits),
        "z_of_a_caption_b_reads_b": _share(swapped, other),
        "z_zero_caption_b_reads_b": _share(blank, other),
    }


def attention_by_word(model: AlignDRAW, vocab: Vocabulary, batch: cap.CaptionedBatch) -> dict[str, Any]:
    """Per template, per digit word of the caption: α summed over steps and per step (means over captions)."""
    data = caption_batch(vocab, batch)
    drawn = sample(model, captions=data["captions"], lengths=data["lengths"], seeds=list(range(len(batch.captions))),
                  keep_canvases=False)  # the same seeds as sample_and_judge; only α is needed, nothing is judged
    assert drawn.alignments is not None
    alpha = drawn.alignments.float().cpu().numpy()  # (N, T, K)
    out: dict[str, Any] = {}
    for t in np.unique(batch.templates):
        rows = batch.templates == t
        first = batch.captions[int(np.flatnonzero(rows)[0])]
        words = [j for j, token in enumerate(tokenize(first)) if token.text in DIGIT_WORDS]
        out[cap.TEMPLATES[int(t)].name] = {
            f"word {j}": {"alpha_sum": float(alpha[rows][:, :, j].sum(1).mean()),
                          "alpha_by_step": np.round(alpha[rows][:, :, j].mean(0), 3).tolist()}
            for j in words}
    return out


def main(argv: list[str] | None = None) -> None:
    from training.data.mnist import load_mnist

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--captions", type=int, default=400, help="MNIST-test captions per split")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    if not isinstance(ckpt.model, AlignDRAW) or ckpt.vocab is None or ckpt.extra.get("dataset") != "mnist-captions":
        parser.error(f"{args.checkpoint} is not an alignDRAW checkpoint trained on mnist-captions")
    model, vocab = ckpt.model.eval(), ckpt.vocab
    classifier = load_classifier(CLASSIFIER)
    test = load_mnist("test", root=args.data_dir)
    banned = tuple(ckpt.extra.get("banned", cap.DEFAULT_BANNED))
    results: dict[str, Any] = {"checkpoint": args.checkpoint, "captions_per_split": args.captions}
    for split, held_out in (("seen", False), ("held_out", True)):
        batch = cap.generate(test, args.captions, generator=11 + held_out, banned=banned, held_out_only=held_out)
        results[split] = {"identity": identity_probe(model, vocab, batch, classifier),
                          "attention_by_word": attention_by_word(model, vocab, batch)}
    text = json.dumps(results, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
