"""The identity probe on the shipped service model: its latents redraw their image, its words name the digit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import absent
from training.probe import changed_digits

REPO = Path(__file__).resolve().parents[2]
WORDS = REPO / "checkpoints" / "aligndraw-mnist-captions-words"


def test_changed_digits_changes_every_named_digit_and_only_those():
    digits = np.array([[3, -1], [0, 9], [7, 7]] * 50)
    other = changed_digits(digits, seed=0)
    assert ((other == -1) == (digits == -1)).all()
    named = digits >= 0
    assert (other[named] != digits[named]).all() and set(np.unique(other[named])) == set(range(10))


def test_probe_on_the_shipped_model_redraws_images_and_reads_identity_from_the_caption(real_digits):
    from models.checkpoint import load_checkpoint
    from training.classifier import load_classifier
    from training.data import captions as cap
    from training.fidelity import CLASSIFIER
    from training.probe import attention_by_word, identity_probe

    if not (WORDS / "checkpoint.json").exists() or not (CLASSIFIER / "checkpoint.json").exists():
        absent("shipped checkpoints absent")
    ckpt = load_checkpoint(WORDS)
    assert ckpt.vocab is not None
    batch = cap.generate(real_digits, 40, generator=5, banned=tuple(ckpt.extra["banned"]))
    classifier = load_classifier(CLASSIFIER)
    shares = identity_probe(ckpt.model.eval(), ckpt.vocab, batch, classifier)
    assert shares["reconstruction_reads_a"] > 0.9  # q's means fed through decode redraw the image's digits
    assert shares["z_of_a_caption_b_reads_b"] > shares["z_of_a_caption_b_reads_a"]  # the words carry identity
    assert shares["z_zero_caption_b_reads_b"] > 0.7
    attention = attention_by_word(ckpt.model.eval(), ckpt.vocab, batch)
    left_of = attention["left of"]
    assert set(left_of) == {"word 2", "word 10"}  # "the digit A is on the left of the digit B ."
    for word in left_of.values():
        assert len(word["alpha_by_step"]) == ckpt.model.steps
        assert word["alpha_sum"] == pytest.approx(sum(word["alpha_by_step"]), abs=0.02)
    # read at the digit words themselves: recomputed from the same seeded samples at token positions 2 and 10
    from models.sampling import sample
    from training.fidelity import caption_batch

    data = caption_batch(ckpt.vocab, batch)
    drawn = sample(ckpt.model.eval(), captions=data["captions"], lengths=data["lengths"],
                   seeds=list(range(len(batch.captions))), keep_canvases=False)
    assert drawn.alignments is not None
    rows = torch.from_numpy(batch.templates == 0)  # template 0: "left of"
    for j in (2, 10):
        expected = drawn.alignments[rows][:, :, j].float().sum(1).mean().item()
        assert left_of[f"word {j}"]["alpha_sum"] == pytest.approx(expected, abs=1e-6)
