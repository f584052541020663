"""Penn Treebank loader (training/data/ptb.py): the file lookup, token ids and the perplexity token accounting on a
toy corpus, then the real files' split sizes, vocabulary and sha256."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch

from models.textvae import BOS, EOS, PAD, UNK
from tests.conftest import absent
from tests.training.conftest import shared_data_dir
from training.data import ptb
from training.data.mnist import DatasetError, DatasetNotFoundError

TOY = {"train": "the cat sat\n a dog\n N\n", "valid": " the dog sat\n", "test": " a bird\n"}


def write(folder: Path, texts: dict[str, str], compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        if compress:
            (folder / f"ptb.{split}.txt.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (folder / f"ptb.{split}.txt").write_text(text)
    return folder


def test_toy_corpus_ids_and_perplexity_token_accounting(tmp_path):
    # Breaking it, tried: count_tokens without the <eos>, or with the <bos> too, fails the 9; a base-2 perplexity
    # fails e².
    corpus = ptb.ptb_corpus(write(tmp_path / "ptb", TOY), verify=False)
    # the 3 training sentences: 3 + 2 + 1 words, each + <eos>, <bos> not counted: 4 + 3 + 2 = 9 tokens
    train = corpus.splits["train"]
    assert ptb.count_tokens([["the", "cat", "sat"], ["a", "dog"], ["N"]]) == 9 == train.token_count
    assert train.lengths.tolist() == [4, 3, 2]
    # ids: padding, <bos>, <eos>, <unk>, then by count (every toy word once: alphabetical, "N" before lower case)
    assert corpus.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "N", "a", "cat", "dog", "sat", "the"]
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert train.tokens.tolist() == [[9, 6, 8, EOS], [5, 7, EOS, PAD], [4, EOS, PAD, PAD]]
    test = corpus.splits["test"]  # "bird" is not a training word
    assert test.tokens.tolist() == [[5, UNK, EOS]] and test.unknown == 1 and corpus.splits["valid"].unknown == 0
    assert corpus.decode(train.tokens[0]) == "the cat sat" and corpus.decode([4, EOS, 9]) == "N"
    # a total NLL of 18 nats over those 9 tokens: PPL = exp(18 / 9) = e² ≈ 7.389
    assert ptb.perplexity(18.0, 9) == pytest.approx(math.e**2)
    assert ptb.perplexity(18.0, 9) == pytest.approx(7.38905609893065)
    batch = train.batch()
    assert torch.equal(batch["x"], train.tokens) and torch.equal(batch["lengths"], train.lengths)
    vocab = corpus.vocab
    assert len(vocab) == 10 and vocab.itos[4] == "n" and vocab.max_length == 3  # normalised "N"; same ids


def test_max_length_leaves_out_training_sentences_only(tmp_path):
    root = write(tmp_path, TOY | {"test": " a b c d e f\n a\n"}, compress=False)
    corpus = ptb.ptb_corpus(root, max_length=3, verify=False)  # at most 2 words + <eos>
    assert corpus.dropped == 1 and corpus.splits["train"].lengths.tolist() == [3, 2]
    assert corpus.splits["test"].lengths.tolist() == [7, 2]  # never filtered: evaluation stays comparable
    assert ptb.ptb_corpus(root, verify=False).dropped == 0


def test_lookup_and_checks(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="ptb.train.txt"):
        ptb.find_ptb_file("train", tmp_path)  # an explicit root never falls through to the shared folder
    write(tmp_path / "env" / "ptb", TOY)
    monkeypatch.setenv("GLIMPSE_DATA_DIR", str(tmp_path / "env"))
    assert ptb.find_ptb_file("valid") == tmp_path / "env" / "ptb" / "ptb.valid.txt.gz"
    with pytest.raises(DatasetError, match="sha256"):
        ptb.read_sentences("train")  # the toy text is not PTB
    (tmp_path / "env" / "ptb" / "ptb.test.txt.gz").write_bytes(b"\x1f\x8b" + b"junk")
    with pytest.raises(DatasetError, match="gzip"):
        ptb.read_sentences("test", verify=False)
    with pytest.raises(ValueError, match="split"):
        ptb.find_ptb_file("dev")
    write(tmp_path / "bad", TOY | {"train": "a <bos> b\n"})
    with pytest.raises(DatasetError, match="reserved"):
        ptb.ptb_corpus(tmp_path / "bad", verify=False)


@pytest.fixture(scope="module")
def corpus() -> ptb.PTBCorpus:
    d = shared_data_dir()
    if d is None or not (d / "ptb" / "ptb.train.txt.gz").is_file():
        absent("PTB absent: set GLIMPSE_DATA_DIR or provide <repo>/../shared/data/ptb")
    return ptb.ptb_corpus(d)  # sha256-checked


def test_real_ptb_splits_vocabulary_and_token_counts(corpus):
    sizes = {s: len(corpus.splits[s]) for s in ptb.SPLITS}
    assert sizes == ptb.SIZES == {"train": 42_068, "valid": 3_370, "test": 3_761}
    assert {s: corpus.splits[s].token_count for s in ptb.SPLITS} == ptb.TOKENS
    assert corpus.splits["train"].token_count - sizes["train"] == 887_521  # words alone (README §4)
    # 9,999 training words with <unk>, + <eos> = the usual 10k; + <bos> and padding = 10,002 ids
    assert len(corpus.itos) == 10_002 and len(set(corpus.itos)) == 10_002 and corpus.itos[UNK] == "<unk>"
    assert all(corpus.splits[s].unknown == 0 for s in ptb.SPLITS)  # valid/test words are all training words
    assert {s: int(corpus.splits[s].lengths.max()) for s in ptb.SPLITS} == {"train": 83, "valid": 75, "test": 78}
    assert corpus.dropped == 0 and len(corpus.vocab) == 10_002
    assert corpus.decode(corpus.splits["test"].tokens[0]) == "no it was n't black monday"
    for split in corpus.splits.values():  # words, one <eos>, then padding
        mask = torch.arange(split.tokens.shape[1]) < split.lengths[:, None]
        assert (split.tokens[~mask] == PAD).all() and (split.tokens[mask] > BOS).all()
        assert torch.equal((split.tokens == EOS).sum(1), torch.ones(len(split), dtype=torch.long))
        assert (split.tokens.gather(1, split.lengths[:, None] - 1) == EOS).all()
