"""L_k on a small trained model, and the caption-fidelity judge against the dataset's own images."""

import math

import numpy as np
import pytest
import torch

from models.bounds import importance_weighted
from models.draw import DRAW
from tests.conftest import absent
from tests.models.conftest import TINY_DRAW, block_images
from training.classifier import accuracy, load_classifier
from training.fidelity import CLASSIFIER, attention_shares, by_place, judge
from training.likelihood import Journal, nll_k, subset


@pytest.fixture(scope="module")
def trained_draw():
    torch.manual_seed(0)
    model = DRAW(TINY_DRAW)
    x = block_images(8, 12, 10)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        model(x, generator=g).loss.backward()
        opt.step()
    return model.eval(), x


def test_lk_rises_with_k_and_l1_is_the_elbo_in_expectation(trained_draw):
    """E[L_k] rises with k (Burda et al., theorem 1), each k measured through importance_weighted on draws of its
    own: groups nested in one pool would rise by Jensen whatever the weights were."""
    model, x = trained_draw
    pool, images = 2000, 4
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # one pool of log-weights per image, from a single batched forward
        rep = x[:images].repeat_interleave(pool, 0)
        out = model(rep, generator=g)
    log_w = out.log_weight.double().view(images, pool)
    elbo = -out.nll_bound.double().view(images, pool)
    # L_1 and the analytic-KL ELBO share an expectation; the same z on both sides, so the paired difference's error
    diff = log_w - elbo
    assert (diff.mean(1).abs() < 4 * diff.std(1) / math.sqrt(pool)).all(), diff.mean(1)

    def expected_lk(k, seed, reps=40):  # `reps` independent L_k per image: their mean and its standard error
        rows = x[:images].repeat(reps, *[1] * (x.dim() - 1))
        lk, _ = importance_weighted(model, {"x": rows}, k, chunk=2000, generator=torch.Generator().manual_seed(seed))
        lk = lk.view(reps, images)
        return lk.mean(0), lk.std(0) / math.sqrt(reps)

    (l1, s1), (l10, s10), (l200, s200) = expected_lk(1, 2, reps=400), expected_lk(10, 3), expected_lk(200, 4)
    assert (l10 - l1 > 4 * (s1**2 + s10**2).sqrt()).all(), (l1, l10, s1, s10)
    assert (l200 - l1 > 4 * (s1**2 + s200**2).sqrt()).all(), (l1, l200, s1, s200)
    assert (l200 - l10 > -3 * (s10**2 + s200**2).sqrt()).all(), (l10, l200, s10, s200)  # ~0.1 nats: never a fall


def test_lk_chunking_does_not_change_the_estimate(trained_draw):
    model, x = trained_draw
    a = importance_weighted(model, {"x": x[:2]}, 300, chunk=300, generator=torch.Generator().manual_seed(5))
    b = importance_weighted(model, {"x": x[:2]}, 300, chunk=7, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # L_k and the mean log-weight alike


def test_nll_k_reports_each_images_lk_in_order_and_their_mean(trained_draw):
    """Passes of two images (chunk 12, k 6) from one generator: per image the L_k that importance_weighted gives
    for all seven at once from the same seed (the same samples, in the same order), and the figures their means."""
    model, x = trained_draw
    x = x[:7]
    per: dict = {}
    figures = nll_k(model, {"x": x}, 6, chunk=12, progress=False, per_example=per)
    lk, mean = importance_weighted(model, {"x": x}, 6, chunk=12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(per["lk"], lk, atol=1e-4, rtol=0)
    torch.testing.assert_close(per["mean_log_weight"], mean, atol=1e-4, rtol=0)
    assert len(set(lk.tolist())) == 7  # seven different images, not one scored seven times
    assert figures["nll_L6"] == pytest.approx(-lk.mean().item(), abs=1e-4)
    assert figures["nll_L6_stderr"] == pytest.approx(lk.std().item() / math.sqrt(7), abs=1e-4)
    assert figures["gap_L6"] == pytest.approx((lk - mean).mean().item(), abs=1e-4)
    assert figures["neg_elbo_L6_samples"] == pytest.approx(-mean.mean().item(), abs=1e-4)


def _journal(path, x, source="tiny"):
    return Journal(path, [10 + 3 * i for i in range(len(x))], source=source)


def test_an_lk_run_cut_short_and_resumed_ends_as_one_that_ran_through(trained_draw, tmp_path):
    """Stopped after two passes (two images each), then after one more, then run to the end: the same per-image
    file, byte for byte, and the same figures as a run that was never stopped; a row written after the last state
    (a crash between the two writes) is dropped and measured again."""
    model, x = trained_draw
    x = x[:7]
    through = nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "through.csv", x))
    passes = []

    def after(n):  # stop when asked for the (n+1)-th time: asked before each pass but a call's first
        return lambda: passes.append(1) or len(passes) > n

    cut = _journal(tmp_path / "cut.csv", x)
    first = nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=cut, stop=after(1))
    assert first["images_L6"] == 4 and first["partial_L6"] == "4 of 7 examples"
    assert len((tmp_path / "cut.csv").read_text().splitlines()) == 1 + 4
    with (tmp_path / "cut.csv").open("a") as f:
        f.write("22,1.0,2.0\n")  # a row its state does not count
    passes.clear()
    second = nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "cut.csv", x),
                   stop=after(0))
    assert second["partial_L6"] == "6 of 7 examples"
    last = nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "cut.csv", x))
    assert (tmp_path / "cut.csv").read_bytes() == (tmp_path / "through.csv").read_bytes()
    assert last == through and "partial_L6" not in last
    rows = (tmp_path / "through.csv").read_text().splitlines()
    assert rows[0] == "index,nll,neg_elbo_k_samples" and [int(r.split(",")[0]) for r in rows[1:]] == list(
        range(10, 31, 3))


def test_an_lk_resume_refuses_another_evaluations_state(trained_draw, tmp_path):
    model, x = trained_draw
    x = x[:4]
    nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "a.csv", x), stop=lambda: True)
    for k, chunk, seed, source in ((5, 12, 0, "tiny"), (6, 6, 0, "tiny"), (6, 12, 0, "another checkpoint")):
        with pytest.raises(ValueError, match="another evaluation"):
            nll_k(model, {"x": x}, k, chunk=chunk, seed=seed, progress=False,
                  journal=_journal(tmp_path / "a.csv", x, source))
    elsewhere = Journal(tmp_path / "a.csv", [11, 13, 16, 19], source="tiny")
    with pytest.raises(ValueError, match="its images differ"):
        nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=elsewhere)
    with pytest.raises(ValueError, match="seed"):
        nll_k(model, {"x": x}, 6, chunk=12, seed=1, progress=False, journal=_journal(tmp_path / "a.csv", x))
    state = (tmp_path / "a.csv.state.json").read_text()
    rows = (tmp_path / "a.csv").read_text()
    (tmp_path / "a.csv").unlink()  # a state without its rows: named, not "holds -1 rows"
    with pytest.raises(ValueError, match="is missing or empty, but its state .* counts 2 rows"):
        nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "a.csv", x))
    (tmp_path / "a.csv").write_text(rows)
    (tmp_path / "a.csv.state.json").write_text(state[:20])  # a state cut short
    with pytest.raises(ValueError, match="is damaged"):
        nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "a.csv", x))
    (tmp_path / "a.csv.state.json").unlink()  # rows without their state: a resume refuses
    with pytest.raises(ValueError, match="no state"):
        nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=_journal(tmp_path / "a.csv", x))
    # measured rows are not overwritten by a fresh run either: it starts over only once they are removed
    fresh = Journal(tmp_path / "a.csv", [10, 13, 16, 19], source="tiny", resume=False)
    with pytest.raises(ValueError, match="already holds 2 measured rows"):
        nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=fresh)
    (tmp_path / "a.csv").unlink()
    assert nll_k(model, {"x": x}, 6, chunk=12, progress=False, journal=fresh)["images_L6"] == 4
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 1 + 4


def test_the_mean_log_weight_beside_lk_is_the_elbo_in_expectation(trained_draw):
    model, x = trained_draw
    lk, mean = importance_weighted(model, {"x": x[:3]}, 400, chunk=64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the mean log-weight is the ELBO in expectation: the analytic-KL one from many z
        out = model(x[:3].repeat_interleave(4000, 0), generator=torch.Generator().manual_seed(3))
    elbo, log_w = -out.nll_bound.double().view(3, 4000), out.log_weight.double().view(3, 4000)
    se = (elbo.var(1) / 4000 + log_w.var(1) / 400).sqrt()  # the 400-sample mean's error dominates
    assert ((mean - elbo.mean(1)).abs() < 4 * se).all(), (mean, elbo.mean(1), se)


def test_the_lk_subset_is_a_seeded_sorted_random_sample():
    a, b = subset(10_000, 40), subset(10_000, 40)
    assert torch.equal(a, b) and len(a.unique()) == 40 and torch.equal(a, a.sort().values)
    assert a.max() > 1000 and not torch.equal(a, torch.arange(40))  # not the first 40
    assert not torch.equal(a, subset(10_000, 40, seed=1))
    assert torch.equal(subset(30, None), torch.arange(30)) and torch.equal(subset(30, 50), torch.arange(30))


@pytest.fixture(scope="module")
def judge_inputs():
    import os
    from pathlib import Path

    from training.data import captions as cap
    from training.data.mnist import load_mnist

    root = os.environ.get("GLIMPSE_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "data")
    if not Path(root, "mnist").is_dir():
        absent("shared MNIST absent: set GLIMPSE_DATA_DIR")
    test = load_mnist("test", root=root)
    return test, cap.generate(test, 600, generator=3, allow_banned=True), load_classifier(CLASSIFIER)


def test_shipped_classifier_reads_mnist_test_digits(judge_inputs):
    test, _, classifier = judge_inputs
    x = torch.from_numpy(test.images[:2000]).float().div(255).unsqueeze(1)
    assert accuracy(classifier, x, torch.from_numpy(test.labels[:2000]).long()) > 0.97


def test_judge_accepts_the_datasets_own_images_and_rejects_wrong_digits_or_places(judge_inputs):
    _, batch, classifier = judge_inputs
    own = judge(batch.images, batch.templates, batch.digits, classifier).mean()
    assert own > 0.93, own
    wrong = np.where(batch.digits >= 0, (batch.digits + 1) % 10, -1)
    assert judge(batch.images, batch.templates, wrong, classifier).mean() < 0.05
    swapped = batch.templates ^ 1  # 4<->5, 6<->7: the one digit judged in the opposite corner
    one = batch.templates >= 4
    moved = judge(batch.images[one], swapped[one], batch.digits[one], classifier).mean()
    assert moved < 0.15, moved


def test_sample_and_judge_judges_each_captions_own_sample(judge_inputs, monkeypatch):
    """The fidelity the trainer logs and evaluate reports judges the model's samples, one per caption, in the
    caption's row across chunks. With the sampler replaced by painters: one that returns each caption's dataset
    image is accepted as often as the judge accepts the dataset (> 0.93), a blank one never, and one whose rows are
    shifted by one caption (a sample judged against another caption) rarely."""
    from types import SimpleNamespace

    from models.vocab import Vocabulary
    from training import fidelity
    from training.data import captions as cap

    _, batch, classifier = judge_inputs
    vocab = Vocabulary(cap.CAPTION_WORDS, max_length=16)
    n = len(batch.captions)

    def painter(images):
        def sample(model, *, captions, lengths, seeds, **kwargs):
            lo, hi = seeds[0], seeds[-1] + 1  # seeds are seed + row: the rows this chunk samples
            assert hi - lo == len(captions)
            return SimpleNamespace(images=images[lo:hi], alignments=torch.zeros(hi - lo, 1, captions.shape[1]))
        return sample

    def fidelity_of(images):
        monkeypatch.setattr(fidelity, "sample", painter(images))
        return fidelity.sample_and_judge(None, vocab, batch, classifier, chunk=250).fidelity  # 600: three chunks

    assert fidelity_of(batch.images) > 0.93
    assert fidelity_of(torch.zeros_like(batch.images)) == 0
    assert fidelity_of(batch.images.roll(1, 0)) < 0.2
    assert n == 600


def test_by_place_counts_each_named_digit_and_names_what_replaced_it():
    templates = np.array([0, 0, 0, 4, 2])
    digits = np.array([[1, 0], [2, 0], [3, 0], [8, -1], [4, 5]])
    read = np.array([[1, 8], [2, 8], [3, 0], [0, -1], [9, 5]])
    places = by_place(read, templates, digits)
    assert places["left of"] == {"left": {"accuracy": 1.0, "samples": 3, "misread": {}},
                                 "right": {"accuracy": pytest.approx(1 / 3), "samples": 3, "misread": {"0→8": 2}}}
    assert places["top left"] == {"only": {"accuracy": 0.0, "samples": 1, "misread": {"8→0": 1}}}
    assert places["top of"]["top"]["misread"] == {"4→9": 1} and places["top of"]["bottom"]["accuracy"] == 1.0


def test_attention_shares_count_alpha_on_digit_words_and_place_words():
    captions = ["the digit 7 is at the top left of the image .", "the digit 2 is on the left of the digit 1 .",
                "the digit 3 is at the top ."]  # 7 words: padding after it must carry no weight and count for nothing
    t, k = 5, 12
    on = torch.zeros(3, t, k)
    on[:, :, 2] = 1  # every step on the first digit word
    assert attention_shares(on, captions) == pytest.approx({"digit_words": 1, "place_words": 0, "other_words": 0})
    on = torch.zeros(3, t, k)
    on[:, :, 6] = 1  # "top", "left", "top"
    assert attention_shares(on, captions)["place_words"] == pytest.approx(1)
    uniform = torch.zeros(3, t, k)
    for i, n in enumerate((12, 12, 7)):
        uniform[i, :, :n] = 1 / n
    shares = attention_shares(uniform, captions)
    assert shares["digit_words"] == pytest.approx((1 / 12 + 2 / 12 + 1 / 7) / 3)
    assert shares["place_words"] == pytest.approx((2 / 12 + 1 / 12 + 1 / 7) / 3)
    assert sum(shares.values()) == pytest.approx(1)
    half = uniform.clone()
    half[0, :3] = 0
    half[0, :3, 10] = 1  # caption 0, steps 1-3 on "image": its digit share falls from 1/12 to 2/5 of that
    assert attention_shares(half, captions)["digit_words"] == pytest.approx((2 / 5 / 12 + 2 / 12 + 1 / 7) / 3)


def test_caption_evaluation_draws_held_out_captions_on_mnist_test_digits(monkeypatch, shared_data):
    """evaluate_captions' two splits: the seen split has no banned (digit, template) combination, the held-out
    split has only banned ones, and both draw their digits from the MNIST test file, never from training."""
    from models.aligndraw import AlignDRAW, AlignDRAWConfig
    from models.checkpoint import Checkpoint
    from models.vocab import Vocabulary
    from training import fidelity
    from training.data import captions as cap
    from training.data import mnist

    if not (CLASSIFIER / "checkpoint.json").exists():
        absent("the shipped digit judge is absent")
    splits, drawn = [], []
    real_load, real_generate = mnist.load_mnist, cap.generate

    def load(split, **kw):
        splits.append(split)
        return real_load(split, **kw)

    def generate(digits, n, **kw):
        batch = real_generate(digits, n, **kw)
        drawn.append((kw.get("held_out_only", False), digits.source, batch))
        return batch

    monkeypatch.setattr(mnist, "load_mnist", load)
    monkeypatch.setattr(fidelity.cap, "generate", generate)
    vocab = Vocabulary(cap.CAPTION_WORDS, max_length=16)
    torch.manual_seed(0)
    model = AlignDRAW(AlignDRAWConfig(vocab_size=len(vocab), steps=2, enc_size=16, dec_size=16, z_size=4,
                                      embed_size=8, lang_size=8, align_size=8))
    out = fidelity.evaluate_captions(Checkpoint(model, vocab=vocab), k=2, limit=12, data_dir=str(shared_data),
                                     lk_images=2)
    assert splits == ["test"] and "t10k" in out["digits_source"]
    assert [held for held, _, _ in drawn] == [False, True]
    for held, source, batch in drawn:
        assert "t10k" in source and len(batch.captions) == 12
        assert cap.banned_mask(batch.templates, batch.digits).all() == held
        assert cap.banned_mask(batch.templates, batch.digits).any() == held


def test_a_blank_window_is_no_digit_and_a_digit_everywhere_fails_a_corner_caption(judge_inputs):
    """The judge's two loopholes, closed: an empty canvas read as "1" (the classifier's argmax on nothing) passed
    every caption naming only 1s; and a digit drawn in all four corners passed every corner caption."""
    from training import fidelity
    from training.data import captions as cap

    _, batch, classifier = judge_inputs
    ones = np.array([[1, -1]] * 4 + [[1, 1]] * 4)
    templates = np.array([4, 5, 6, 7, 0, 1, 2, 3])
    blank = torch.zeros(8, 1, 60, 60)
    read = fidelity.read_digits(blank, templates, ones, classifier)
    assert (read[ones >= 0] == fidelity.BLANK).all()
    assert not judge(blank, templates, ones, classifier).any()
    assert by_place(read, templates, ones)["top left"]["only"]["misread"] == {"1→blank": 1}

    corner = np.flatnonzero(batch.templates == 4)[:20]  # one digit at the top left, accepted as it is
    alone = batch.images[corner]
    assert judge(alone, batch.templates[corner], batch.digits[corner], classifier).mean() > 0.9
    everywhere = alone.clone()
    for shift in ((0, 28), (30, 0), (30, 28)):  # the same digit pasted into the other three corners too
        everywhere = torch.maximum(everywhere, torch.roll(alone, shifts=shift, dims=(2, 3)))
    assert judge(everywhere, batch.templates[corner], batch.digits[corner], classifier).sum() == 0
    assert (fidelity.stray_ink(everywhere, batch.templates[corner]) > 0.6).all()
    # The dataset's own images put no ink outside their template's placement region.
    assert fidelity.stray_ink(batch.images, batch.templates).max() == 0
    assert cap.TEMPLATES[4].name == "top left"
