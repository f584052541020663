
import numpy as np
import pytest
import torch

from models.vocab import Vocabulary, tokenize
from training.data import captions as cap
from training.data.captions import (
    CAPTION_WORDS,
    DEFAULT_BANNED,
    NO_BANNED,
    TEMPLATES,
    CaptionedDataset,
    all_combinations,
    caption_text,
    generate,
    held_out_captions,
    is_banned,
    render,
    render_batch,
    seen_captions,
)

# Written out independently from papers.md §1.2 (0-based template ids = papers.md id - 1):
# (caption builder from layout-order digits (first, second), rows per digit, cols per digit, shared coordinate)
_LR = ([(16, 18), (16, 18)], [(0, 4), (28, 32)], "row")
_TB = ([(0, 2), (30, 32)], [(16, 18), (16, 18)], "col")
SPEC = {
    0: (lambda a, b: f"the digit {a} is on the left of the digit {b} .", *_LR),
    1: (lambda a, b: f"the digit {b} is on the right of the digit {a} .", *_LR),
    2: (lambda a, b: f"the digit {a} is at the top of the digit {b} .", *_TB),
    3: (lambda a, b: f"the digit {b} is at the bottom of the digit {a} .", *_TB),
    4: (lambda a: f"the digit {a} is at the top left of the image .", [(0, 2)], [(0, 4)], None),
    5: (lambda a: f"the digit {a} is at the bottom right of the image .", [(30, 32)], [(28, 32)], None),
    6: (lambda a: f"the digit {a} is at the top right of the image .", [(0, 2)], [(28, 32)], None),
    7: (lambda a: f"the digit {a} is at the bottom left of the image .", [(30, 32)], [(0, 4)], None),
}


def spec_banned(t: int, ds: tuple[int, ...], banned) -> bool:
    """The original rule, restated: two-digit k bans first == banned[2k] or second == banned[2k+1]; one-digit k
    bans digit == banned[k+4]."""
    if t < 4:
        return ds[0] == banned[2 * t] or ds[1] == banned[2 * t + 1]
    return ds[0] == banned[t + 4]


def all_specs():
    for t in range(8):
        if t < 4:
            for a in range(10):
                for b in range(10):
                    yield t, (a, b)
        else:
            for a in range(10):
                yield t, (a,)


def test_vocabulary_has_the_22_caption_tokens():
    words = "0 1 2 3 4 5 6 7 8 9 the digit is on at left right bottom top of image ."
    assert sorted(CAPTION_WORDS) == sorted(words.split())
    assert len(CAPTION_WORDS) == 22
    assert len(Vocabulary(CAPTION_WORDS)) == 23  # + padding, the paper's dimY


def test_templates_match_the_paper_table():
    assert len(TEMPLATES) == 8
    for t in TEMPLATES:
        build, rows, cols, shared = SPEC[t.index]
        assert [tuple(r) for r in t.rows] == rows and [tuple(c) for c in t.cols] == cols and t.shared == shared
        ds = (3, 8)[: t.n_digits]
        assert caption_text(t.index, ds) == build(*ds)
    assert caption_text(0, (1, 0)) == "the digit 1 is on the left of the digit 0 ."
    assert caption_text(1, (1, 0)) == "the digit 0 is on the right of the digit 1 ."


def test_every_caption_is_12_tokens_of_the_vocabulary():
    vocab = Vocabulary(CAPTION_WORDS)
    combos = all_combinations()
    assert len(combos) == 4 * 100 + 4 * 10
    assert len({c.caption for c in combos}) == 440  # captions identify (template, digits)
    for c in combos:
        ids = vocab.encode(c.caption)
        assert len(ids) == 12 and 0 not in ids
        assert vocab.decode(ids) == c.caption
        numerals = [tok.text for tok in tokenize(c.caption) if tok.text.isdigit()]
        assert len(numerals) == len(c.digits)


def test_held_out_captions_are_exactly_the_banned_ones():
    for banned in (DEFAULT_BANNED, (10, 3, 0, 10, 9, 9, 1, 2, 10, 5, 5, 10)):
        expected = {SPEC[t][0](*ds) for t, ds in all_specs() if spec_banned(t, ds, banned)}
        expected_seen = {SPEC[t][0](*ds) for t, ds in all_specs() if not spec_banned(t, ds, banned)}
        assert set(held_out_captions(banned)) == expected
        assert set(seen_captions(banned)) == expected_seen
        assert len(held_out_captions(banned)) == len(expected)
    assert len(held_out_captions(DEFAULT_BANNED)) == 80
    assert held_out_captions(NO_BANNED) == []


def test_is_banned_examples():
    assert DEFAULT_BANNED == (1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 0, 3)
    assert is_banned(0, (1, 0)) and is_banned(0, (1, 7)) and is_banned(0, (5, 0)) and not is_banned(0, (0, 1))
    assert "the digit 1 is on the left of the digit 0 ." in held_out_captions()
    assert is_banned(1, (2, 5)) and is_banned(1, (5, 3)) and not is_banned(1, (3, 2))
    assert is_banned(4, (8,)) and not is_banned(4, (9,)) and is_banned(5, (9,)) and is_banned(6, (0,))
    assert is_banned(7, (3,)) and not is_banned(7, (8,))
    assert not any(is_banned(t, ds, NO_BANNED) for t, ds in all_specs())
    with pytest.raises(ValueError):
        is_banned(0, (1, 2), banned=(1, 2, 3))
    with pytest.raises(ValueError):
        is_banned(8, (1,))


def test_default_banned_bans_something_per_template_and_keeps_every_digit():
    combos = all_combinations()
    for t in range(8):
        assert any(c.banned for c in combos if c.template == t)
        assert any(not c.banned for c in combos if c.template == t)
    seen_digits = {d for c in combos if not c.banned for d in c.digits}
    assert seen_digits == set(range(10))
    # every digit is seen both as first and as second digit of a two-digit template
    for k in range(2):
        assert {c.digits[k] for c in combos if not c.banned and c.template < 4} == set(range(10))


def reference_paint(pool_images: np.ndarray, indices: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Naive per-image painting: digit 0 then digit 1 assigned (not added) at their boxes."""
    out = np.zeros((len(indices), 60, 60), np.uint8)
    for i in range(len(indices)):
        for k in range(2):
            if indices[i, k] >= 0:
                r, c = boxes[i, k]
                out[i, r : r + 28, c : c + 28] = pool_images[indices[i, k]]
    return out


def check_layout(batch, pool):
    n = len(batch)
    assert batch.images.shape == (n, 1, 60, 60) and batch.images.dtype == torch.float32
    assert batch.digits.shape == (n, 2) and batch.boxes.shape == (n, 2, 2) and batch.templates.shape == (n,)
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    for i in range(n):
        t = int(batch.templates[i])
        build, rows, cols, shared = SPEC[t]
        nd = len(rows)
        ds = tuple(int(d) for d in batch.digits[i, :nd])
        assert batch.captions[i] == build(*ds)
        assert all(batch.digits[i, nd:] == -1) and (batch.boxes[i, nd:] == -1).all()
        for k in range(nd):
            r, c = batch.boxes[i, k]
            assert rows[k][0] <= r <= rows[k][1] and cols[k][0] <= c <= cols[k][1]
            assert int(pool.labels[batch.indices[i, k]]) == ds[k]
        if shared == "row":
            assert batch.boxes[i, 0, 0] == batch.boxes[i, 1, 0] and batch.boxes[i, 0, 1] < batch.boxes[i, 1, 1]
        if shared == "col":
            assert batch.boxes[i, 0, 1] == batch.boxes[i, 1, 1] and batch.boxes[i, 0, 0] < batch.boxes[i, 1, 0]
    expected = reference_paint(pool.images, batch.indices, batch.boxes)
    got = np.rint(batch.images[:, 0].numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_generated_layout_and_overwrite_on_synthetic_blocks(synth):
    batch = generate(synth, 600, generator=1, allow_banned=True)
    check_layout(batch, synth)
    # full-block digits: the second digit's whole box carries its pixels (assigned over the first)
    two = np.flatnonzero(batch.templates < 4)
    for i in two[:50]:
        r, c = batch.boxes[i, 1]
        np.testing.assert_array_equal(
            np.rint(batch.images[i, 0, r : r + 28, c : c + 28].numpy() * 255), synth.images[batch.indices[i, 1]])
    # the boxes actually vary over the whole allowed range
    lr = batch.templates == 0
    assert set(batch.boxes[lr, 0, 1]) == {0, 1, 2, 3, 4} and set(batch.boxes[lr, 1, 1]) == {28, 29, 30, 31, 32}
    assert set(batch.boxes[lr, 0, 0]) == {16, 17, 18}


def test_real_digits_ink_lies_in_the_template_regions(real_digits):
    batch = generate(real_digits, 300, generator=torch.Generator().manual_seed(5))
    check_layout(batch, real_digits)
    imgs = batch.images[:, 0].numpy()
    for i in range(len(batch)):
        t = int(batch.templates[i])
        _, rows, cols, _ = SPEC[t]
        allowed = np.zeros((60, 60), bool)
        for k in range(len(rows)):
            allowed[rows[k][0] : rows[k][1] + 28, cols[k][0] : cols[k][1] + 28] = True
        ink = imgs[i] > 0
        assert ink.any() and not (ink & ~allowed).any()
        if t in (4, 5, 6, 7):  # one digit: the ink is the pool digit's ink, shifted by the box
            src = real_digits.images[batch.indices[i, 0]] > 0
            r, c = batch.boxes[i, 0]
            np.testing.assert_array_equal(ink[r : r + 28, c : c + 28], src)
            assert ink.sum() == src.sum()
        if t < 4:  # two digits: the first pool digit's ink at its box, the second's over it (its whole 28×28 box)
            painted = np.zeros((60, 60), bool)
            for k in range(2):
                r, c = batch.boxes[i, k]
                painted[r : r + 28, c : c + 28] = real_digits.images[batch.indices[i, k]] > 0
            np.testing.assert_array_equal(ink, painted)
            axis = 0 if t < 2 else 1  # left/right: ink columns; top/bottom: ink rows
            spans = [np.flatnonzero((real_digits.images[batch.indices[i, k]] > 0).any(axis=axis))
                     + batch.boxes[i, k, 1 - axis] for k in range(2)]
            assert spans[0].max() < 33 and spans[1].min() > 27  # the first digit's ink left of (above) the second's


def test_banned_combinations_never_appear_in_an_epoch(synth):
    held = set(held_out_captions())
    batch = generate(synth, 10000, generator=3)
    assert not held & set(batch.captions)
    assert not cap.banned_mask(batch.templates, batch.digits).any()
    assert set(batch.captions) == set(seen_captions())  # 360 seen captions, ~15 expected draws each
    assert set(np.unique(batch.templates)) == set(range(8))
    # the same draw without rejection does contain banned ones (so the check above is not vacuous)
    free = generate(synth, 2000, generator=3, allow_banned=True)
    assert held & set(free.captions)
    assert cap.banned_mask(free.templates, free.digits).any()
    counts = np.bincount(free.templates, minlength=8)
    assert counts.min() > 170  # uniform: 250 expected each


def test_held_out_only_and_render_batch(real_digits):
    held = set(held_out_captions())
    h = generate(real_digits, 200, generator=2, held_out_only=True)
    assert set(h.captions) <= held and cap.banned_mask(h.templates, h.digits).all()
    combos = [c for c in all_combinations() if c.banned]
    b = render_batch(cap.specs_for(combos), real_digits, generator=0)
    check_layout(b, real_digits)
    assert b.captions == [c.caption for c in combos]
    img, caption, boxes = render(0, (1, 0), real_digits, generator=9)
    assert img.shape == (1, 60, 60) and caption == "the digit 1 is on the left of the digit 0 ."
    assert 16 <= boxes[0, 0] <= 18 and 0 <= boxes[0, 1] <= 4 and 28 <= boxes[1, 1] <= 32


def test_generation_is_seeded(synth):
    a = generate(synth, 200, generator=7)
    b = generate(synth, 200, generator=np.random.default_rng(7))
    c = generate(synth, 200, generator=8)
    assert a.captions == b.captions and torch.equal(a.images, b.images)
    assert a.captions != c.captions
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert generate(synth, 50, generator=g1).captions == generate(synth, 50, generator=g2).captions
    assert generate(synth, 50, generator=g1).captions != generate(synth, 50, generator=torch.Generator().manual_seed(4)
                                                                 ).captions  # the torch generator advances
    assert len(generate(synth, 10000, generator=0)) == 10000  # its speed is a benchmark's, not a test's


def test_dataset_wrapper_and_subset(synth):
    batch = generate(synth, 20, generator=0)
    ds = CaptionedDataset(batch)
    img, caption = ds[3]
    assert img.shape == (1, 60, 60) and caption == batch.captions[3]
    sub = batch.subset([3, 5])
    assert sub.captions == [batch.captions[3], batch.captions[5]] and torch.equal(sub.images[0], img)


def test_bad_inputs(synth):
    with pytest.raises(ValueError):
        generate(synth, 10, generator=0, banned=(11,) * 12)
    with pytest.raises(ValueError):
        generate(synth, 10, generator=0, banned=NO_BANNED, held_out_only=True)
    with pytest.raises(ValueError):
        render(0, (1,), synth, generator=0)
    only_ones = synth.subset(synth.labels == 1)
    with pytest.raises(ValueError, match="could not draw"):
        generate(only_ones, 10, generator=0, banned=(1,) * 12)
    with pytest.raises(ValueError, match="no image with label 2"):
        render(4, (2,), only_ones, generator=0)
