"""training/classifier.py: the features the Fréchet distance reads, and the shipped checkpoints."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import absent
from training.classifier import DigitClassifier, accuracy, load_classifier, save_classifier

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "checkpoints" / "mnist-classifier"
FASHION = ROOT / "checkpoints" / "fashion-classifier"


def test_features_are_the_128_d_penultimate_activations():
    torch.manual_seed(0)
    model = DigitClassifier().eval()
    x = torch.rand(5, 1, 28, 28)
    f = model.penultimate(x)
    assert f.shape == (5, 128) and (f >= 0).all()  # after the ReLU
    assert torch.equal(model.head[-1](f), model(x))  # the logits are one Linear away


def test_a_saved_classifier_keeps_the_on_disk_names_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier().eval()
    save_classifier(model, tmp_path / "fashion", {"test_accuracy": 0.5}, dataset="fashion-mnist")
    names = set(load_file(str(tmp_path / "fashion" / "model.safetensors")))
    assert names == {f"features.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")} | {
        f"head.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")}
    manifest = json.loads((tmp_path / "fashion" / "checkpoint.json").read_text())
    assert manifest["kind"] == "fashion-classifier" and manifest["dataset"] == "fashion-mnist"
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(load_classifier(tmp_path / "fashion")(x), model(x))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.json").write_text(json.dumps({"kind": "draw"}))
    with pytest.raises(ValueError, match="not a classifier"):
        load_classifier(tmp_path / "other")


def test_the_mnist_classifier_loads_and_saves_back_byte_for_byte(tmp_path):
    """Its format is unchanged by the Fashion generalisation: same tensor names, same bytes, same manifest."""
    if not (MNIST / "model.safetensors").is_file():
        absent(f"{MNIST} absent")
    model = load_classifier(MNIST)  # checks the sha256
    manifest = json.loads((MNIST / "checkpoint.json").read_text())
    save_classifier(model, tmp_path, manifest["metrics"])
    assert (tmp_path / "model.safetensors").read_bytes() == (MNIST / "model.safetensors").read_bytes()
    assert (tmp_path / "checkpoint.json").read_text() == (MNIST / "checkpoint.json").read_text()


def test_the_shipped_fashion_classifier_reads_fashion_mnist_test_items():
    if not (FASHION / "model.safetensors").is_file():
        absent(f"{FASHION} absent: python -m training.classifier --dataset fashion-mnist --out {FASHION}")
    from training.data.mnist import DatasetNotFoundError, load_mnist

    manifest = json.loads((FASHION / "checkpoint.json").read_text())
    assert manifest["kind"] == "fashion-classifier" and manifest["dataset"] == "fashion-mnist"
    assert hashlib.sha256((FASHION / "model.safetensors").read_bytes()).hexdigest() == manifest["weights_sha256"]
    model = load_classifier(FASHION)
    try:
        test = load_mnist("test", dataset="fashion-mnist")
    except DatasetNotFoundError as e:
        absent(f"Fashion-MNIST test split absent ({e})")
    x = torch.from_numpy(test.images[:1000]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(test.labels[:1000]).long()
    # The recorded figure is on all 10,000; on 1000 its standard error is about 0.01.
    assert accuracy(model, x, y) >= manifest["metrics"]["test_accuracy"] - 0.03
    assert model.penultimate(x[:7]).shape == (7, 128)
