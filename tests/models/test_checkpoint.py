import json

import pytest
import torch

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest, save_checkpoint
from models.sampling import sample
from models.vocab import Vocabulary
from tests.models.conftest import TINY_ALIGN, random_captions


def test_round_trip_gives_identical_samples(tiny_align, tmp_path, monkeypatch):
    vocab = Vocabulary([f"w{i}" for i in range(TINY_ALIGN.vocab_size - 1)], max_length=9)
    ckpt = Checkpoint(tiny_align, vocab=vocab, training={"command": "test"}, metrics={"val_nll": 1.5},
                      extra={"held_out": [[0, 1]]})
    save_checkpoint(tmp_path / "ck", ckpt)

    def no_pickle(*args, **kwargs):
        raise AssertionError("checkpoints must never unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.vocab.itos == vocab.itos and loaded.metrics == {"val_nll": 1.5}
    assert loaded.extra == {"held_out": [[0, 1]]} and loaded.training == {"command": "test"}
    ids, lengths = random_captions(3, 6, TINY_ALIGN.vocab_size)
    a = sample(tiny_align.eval(), captions=ids, lengths=lengths, seeds=[1, 2, 3])
    b = sample(loaded.model, captions=ids, lengths=lengths, seeds=[1, 2, 3])
    assert torch.equal(a.images, b.images) and torch.equal(a.canvases, b.canvases)


def test_draw_round_trip_rebuilds_the_config(tiny_draw, tmp_path):
    save_checkpoint(tmp_path / "d", Checkpoint(tiny_draw))
    manifest = read_manifest(tmp_path / "d")
    assert manifest["kind"] == "draw" and manifest["config"]["write_n"] == 4
    loaded = load_checkpoint(tmp_path / "d")
    assert loaded.model.config == tiny_draw.config and loaded.vocab is None
    assert loaded.weights_sha256 == manifest["weights_sha256"]  # what evaluate's journal names the weights by
    a = sample(tiny_draw, batch_size=2, seeds=[4, 5])
    assert torch.equal(a.images, sample(loaded.model, batch_size=2, seeds=[4, 5]).images)


def test_tampered_weights_and_bad_manifests_are_refused(tiny_draw, tmp_path):
    save_checkpoint(tmp_path / "d", Checkpoint(tiny_draw))
    weights = tmp_path / "d" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "d")
    manifest = tmp_path / "d" / "checkpoint.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(doc | {"kind": "pickle-bomb"}))
    with pytest.raises(CheckpointError, match="unknown model kind"):
        read_manifest(tmp_path / "d")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_manifest(tmp_path / "missing")
