"""Text families through the trainer, the evaluator and the card: `captions-text` (the caption language of the image
models) and `ptb`; the caption well-formedness check; plain SGD with the learning rate halved on plateaus."""

import csv
import json
import math
import re
import shutil

import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.conftest import absent
from tests.training.conftest import synthetic_digits
from training.__main__ import main as cli
from training.config import TrainConfig
from training.data import captions as cap
from training.data import fashion as fa

TINY = ["--set", "embed=8", "--set", "hidden=8", "--set", "z_dim=4", "--set", "preset=small"]


def _train_captions(out, data, *extra):
    return cli(["train", "--model", "textvae", "--dataset", "captions-text", "--out", str(out), "--data-dir",
                str(data), "--batch-size", "16", "--pairs-per-epoch", "300", "--val-size", "60", *TINY, *extra])


def _preview_sentences(path):
    """The sentences of a previews/samples-epochNNNN.txt: numbered samples, validation lines and their decodings."""
    out = []
    for line in path.read_text().splitlines():
        if m := re.match(r"^\s*\d+  (.*)$", line):
            out.append(m.group(1))
        elif line.startswith("    ") or line.startswith(" -> "):
            out.append(line[4:])
    return out


def test_captions_text_trains_evaluates_and_renders_its_card(tmp_path, shared_data, monkeypatch):
    """Two batches of a tiny text VAE on the caption corpus: the vocabulary and held-out captions go into the
    checkpoint, the text previews decode to its words (the image previews are never called), `evaluate` reports
    the shares and the card shows them."""
    from training import artefacts, train
    from training.card import render

    def no_pictures(*args, **kwargs):
        raise AssertionError("image previews called for a text family")

    for name in ("save_sample_grid", "save_canvas_strip", "save_alignment_map"):
        monkeypatch.setattr(artefacts, name, no_pictures)
    monkeypatch.setattr(train, "sample", no_pictures)
    run = tmp_path / "run"
    _train_captions(run, shared_data, "--epochs", "1", "--max-batches", "2")
    ckpt = load_checkpoint(run / "last")
    extra, vocab = ckpt.extra, ckpt.vocab
    assert vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert ckpt.model.config.vocab_size == len(vocab) and ckpt.model.config.max_length == 13  # 12 words + <eos>
    words = set(cap.CAPTION_WORDS) | (set(fa.FASHION_WORDS) if "fashion" in extra["languages"] else set())
    assert set(vocab.words[3:]) == words  # every word is an alignDRAW word
    assert len(extra["held_out_captions"]) == 80 * len(extra["languages"])
    assert not set(extra["training_captions"]) & set(extra["held_out_captions"])
    assert all(any(cap.parse(c, names=n) for n in (cap.DIGIT_NAMES, fa.FASHION_NAMES))
               for c in extra["training_captions"])

    preview = run / "previews" / "samples-epoch0001.txt"
    assert not (run / "previews" / "samples-epoch0001.png").exists()  # no image grid for a text family
    sentences = _preview_sentences(preview)
    assert len(sentences) == 16 + 16 + 2 * 8  # sampled, greedy, 8 validation captions and their decodings
    known = set(vocab.itos) - {"<pad>", "<bos>", "<eos>"}
    assert all(w in known for s in sentences for w in s.split()), sentences
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_kl", "val_active_units", "val_mutual_information", "val_mutual_information_batch"} <= set(row)

    cli(["evaluate", str(run / "last"), "--samples", "30", "--limit", "25", "--data-dir", str(shared_data),
         "--json", str(run / "last" / "evaluation.json")])
    text = json.loads((run / "last" / "evaluation.json").read_text())["text"]
    assert text["samples"] == 30 and text["validation_captions"] == 25 and text["posterior_samples"] == 25
    for shares in text["prior_samples"].values():
        assert shares["count"] == 30 and 1 <= shares["distinct"] <= 30
        assert 0 <= shares["well_formed"] <= shares["in_vocabulary"] <= 1
        assert shares["held_out"] <= shares["well_formed_novel"] <= shares["well_formed"]  # held out: never seen
    assert text["z_matters"] == (text["distinct_greedy_prior"] > 1 and text["distinct_greedy_posterior"] > 1)
    path = text["examples"]["path"]  # the card's example: what `interpolate` returns between two fixed captions
    assert path["from"] == "the digit 3 is at the top left of the image ." and len(path["texts"]) == 8
    assert len(text["examples"]["greedy_prior_samples"]) == 8
    card = render(run / "last")
    assert "## Text" in card and "| well-formed |" in card and "reconstruction accuracy" in card
    assert card.startswith(f"# {run.name}/last\n")  # a run's card is titled by its run, not "last"
    assert f"card {run / 'last'}`" in card and f"goes on from `{run / 'last'}`" in card
    assert f"| {text['examples']['greedy_prior_samples'][0]} | {path['texts'][0]} |" in card


def test_ptb_trains_and_its_perplexity_is_the_per_sentence_nll_over_the_tokens(tmp_path, shared_data):
    from training.card import render
    from training.data.ptb import count_tokens, find_ptb_file, read_sentences

    try:
        find_ptb_file("test", shared_data)
    except FileNotFoundError:
        absent("Penn Treebank absent from the shared data folder")
    run = tmp_path / "run"
    cli(["train", "--model", "textvae", "--dataset", "ptb", "--out", str(run), "--data-dir", str(shared_data),
         "--batch-size", "16", "--val-size", "40", "--max-batches", "2", "--epochs", "1", *TINY])
    ckpt = load_checkpoint(run / "last")
    assert ckpt.model.config.vocab_size == 10_002 and ckpt.model.config.max_length == 83
    assert ckpt.extra["spelling"]["5"] == "N"  # the files' spelling where Vocabulary normalises ("n")
    assert (run / "previews" / "samples-epoch0001.txt").exists()

    sentences = run / "sentences.csv"
    cli(["evaluate", str(run / "last"), "--limit", "20", "--k", "5", "--data-dir", str(shared_data),
         "--per-sentence", str(sentences), "--json", str(run / "last" / "evaluation.json")])
    text = json.loads((run / "last" / "evaluation.json").read_text())["text"]
    rows = list(csv.DictReader(sentences.open()))
    test = read_sentences("test", root=shared_data)[:20]
    assert [int(r["tokens"]) for r in rows] == [len(s) + 1 for s in test]
    nll = [float(r["nll"]) for r in rows]
    assert text["tokens"] == count_tokens(test) == sum(int(r["tokens"]) for r in rows)
    assert text["ppl"] == pytest.approx(math.exp(sum(nll) / text["tokens"]), rel=1e-12)
    assert text["nll"] == pytest.approx(sum(nll) / 20, rel=1e-12) and text["k"] == 5 and not text["nll_exact"]
    assert text["neg_elbo_ppl"] == pytest.approx(math.exp(text["neg_elbo"] * 20 / text["tokens"]))
    # each NLL is its own sentence's: two batches in, a sentence costs about the same per token whatever its length
    # (measured: 8.95–9.37 nats a token over sentences of 6 to 38 tokens), which NLLs on other rows would break
    per_token = [v / int(r["tokens"]) for v, r in zip(nll, rows, strict=True)]
    assert max(per_token) < 1.15 * min(per_token), per_token
    assert 0 <= text["active_units"] <= 4 and text["kl"] > 0
    card = render(run / "last")
    assert "test NLL / PPL (−L_5, importance sampling, k = 5)" in card and f"{text['ppl']:.2f}" in card
    assert f"goes on from `{run / 'last'}`" in card  # a run's own card: the run resumes from its last/
    shipped = tmp_path / "textvae-tiny"  # as copied into checkpoints/: its optimizer state ships, or not
    shutil.copytree(run / "last", shipped)
    assert "The optimizer state ships beside the weights" in render(shipped)
    (shipped / "optimizer.safetensors").unlink()  # shipped without it (textvae-ptb: Adam's moments are 31 MB)
    assert "The optimizer state is not shipped" in render(shipped)


def test_well_formedness_accepts_every_generated_caption_and_rejects_others():
    digits = synthetic_digits(per_label=4)
    for names, parse in ((cap.DIGIT_NAMES, cap.parse), (fa.FASHION_NAMES, fa.parse_fashion)):
        batch = cap._generate(digits, 1000, cap.as_rng(0), cap.DEFAULT_BANNED, "all", names)
        assert len(set(batch.captions)) > 300
        for caption, template, ds in zip(batch.captions, batch.templates, batch.digits, strict=True):
            combination = parse(caption)
            assert combination is not None, caption
            assert combination.template == template and combination.digits == tuple(d for d in ds if d >= 0)
            assert combination.banned == cap.is_banned(template, ds)
    # what generate draws, without the pictures
    assert cap.draw_captions(digits, 200, generator=5) == cap.generate(digits, 200, generator=5).captions
    assert cap.is_caption("The digit seven is at the top left of the image.")  # alignDRAW's tokeniser
    assert not cap.is_caption("the digit 7 is at the left top of the image .")  # two words swapped
    assert not cap.is_caption("top the digit 7 is at the left of the image .")
    assert not cap.is_caption("the digit 7 is at the top left of the picture .")  # "picture": not a caption word
    assert not cap.is_caption("the sandal is at the top left of the image .")  # a Fashion caption
    assert fa.is_fashion_caption("the sandal is at the top left of the image .")
    assert not fa.is_fashion_caption("the sandal is at the top left of the image")  # no full stop


def test_caption_shares_count_vocabulary_templates_novelty_and_held_out():
    from training.evaluate import caption_shares

    held = "the digit 1 is on the left of the digit 0 ."  # banned under DEFAULT_BANNED
    seen = "the digit 2 is at the top left of the image ."
    texts = [seen, seen, held, "the digit digit is . image", "the sandal is at the top left of the image .", ""]
    shares = caption_shares(texts, ["mnist"], training={seen})
    assert shares == {"count": 6, "distinct": 5, "in_vocabulary": 4 / 6, "well_formed": 3 / 6, "novel": 4 / 6,
                      "well_formed_novel": 1 / 6, "held_out": 1 / 6, "held_out_distinct": 1}
    both = caption_shares(texts, ["mnist", "fashion"], training={seen})
    assert both["well_formed"] == 4 / 6 and both["in_vocabulary"] == 5 / 6


def _lrs(run):
    return [(r["epoch"], r["lr"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _never_improve(run):
    """As if an earlier epoch had reached a validation bound of 0: no later epoch improves on it."""
    path = run / "last" / "progress.json"
    saved = json.loads(path.read_text())
    saved["progress"]["best_val"] = 0.0
    path.write_text(json.dumps(saved))


def test_sgd_halves_the_rate_after_n_epochs_without_improvement_and_a_resume_goes_on(tmp_path, shared_data):
    """Plain SGD; --lr-decay-patience 2: the rate halves after every 2 epochs without improvement, the count kept in
    the run state, so a run split by a resume ends bit-identical to a straight one (dropout included)."""
    sgd = ["--optimizer", "sgd", "--lr", "0.1", "--clip", "5", "--lr-decay-patience", "2", "--patience", "100",
           "--max-batches", "2"]
    for name, stops in (("straight", [6]), ("split", [4, 6])):
        run = tmp_path / name
        _train_captions(run, shared_data, "--epochs", "1", *sgd)
        _never_improve(run)
        for epochs in stops:
            _train_captions(run, shared_data, "--epochs", str(epochs), *sgd)
    for name in ("straight", "split"):
        lrs = _lrs(tmp_path / name)
        assert [e for e, _ in lrs] == [1, 2, 3, 4, 5, 6]
        assert [lr for _, lr in lrs] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025])
    progress = json.loads((tmp_path / "split" / "last" / "progress.json").read_text())
    assert progress["progress"]["lr_decays"] == 2 and progress["progress"]["epochs_since_decay"] == 1
    group = progress["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.025) and group["momentum"] == 0 and "betas" not in group  # plain SGD
    a, b = (load_checkpoint(tmp_path / n / "last").model.state_dict() for n in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_decay_options_are_checked():
    base = {"model": "textvae", "dataset": "ptb"}
    assert TrainConfig(**base).lr_decay_patience is None and TrainConfig(**base, optimizer="sgd").optimizer == "sgd"
    with pytest.raises(ValueError, match="never fires"):
        TrainConfig(**base, lr_decay_patience=5)  # the family's patience is 3: early stopping comes first
    with pytest.raises(ValueError, match="lr-stages"):
        TrainConfig(**base, lr_decay_patience=2, patience=9, lr_stages="burda:1")
    with pytest.raises(ValueError, match="factor"):
        TrainConfig(**base, lr_decay_patience=2, patience=9, lr_decay_factor=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(**base, optimizer="adagrad")
    with pytest.raises(ValueError, match="does not train"):
        TrainConfig(model="textvae", dataset="mnist")


def test_a_text_batch_is_cut_to_its_longest_sentence_and_nothing_else_is():
    from training.batching import trim_padding

    x = torch.tensor([[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0]])
    trimmed = trim_padding({"x": x, "lengths": torch.tensor([3, 2])})
    assert torch.equal(trimmed["x"], x[:, :3])
    images = {"x": torch.rand(2, 1, 4, 4), "captions": x, "lengths": torch.tensor([3, 2])}
    assert trim_padding(images) is images


def test_the_caption_corpus_is_seeded_and_without_fashion_data_speaks_mnist_only(monkeypatch):
    from training.data import caption_texts as ct
    from training.data.mnist import DatasetNotFoundError

    def load(split, root=None, dataset="mnist", download=False):
        if dataset == "fashion-mnist" and monkeypatch_state["fashion_absent"]:
            raise DatasetNotFoundError("no fashion-mnist here")
        return synthetic_digits(per_label=30, seed=0 if dataset == "mnist" else 1)

    monkeypatch_state = {"fashion_absent": False}
    monkeypatch.setattr(ct, "load_mnist", load)
    both = ct.caption_texts(200, 50, seed=3, val_seed=4)
    assert both.languages == ["mnist", "fashion"] and len(both.train) == 400 and len(both.valid) == 50
    assert ct.caption_texts(200, 50, seed=3, val_seed=4) == both  # the same seed, the same corpus
    assert ct.caption_texts(200, 50, seed=5, val_seed=4).sha256 != both.sha256
    held = set(both.held_out)
    assert len(held) == 160 and not {" ".join(s) for s in both.train + both.valid} & held
    monkeypatch_state["fashion_absent"] = True
    mnist = ct.caption_texts(200, 50, seed=3, val_seed=4)
    assert mnist.languages == ["mnist"] and mnist.sources["fashion"].startswith("absent")
    assert mnist.itos[4:] == cap.CAPTION_WORDS and len(mnist.held_out) == 80
    assert mnist.train == both.train[:200]  # MNIST's draws do not depend on Fashion's presence
