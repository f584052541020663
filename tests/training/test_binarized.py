import gzip

import numpy as np
import pytest
import torch

from tests.conftest import absent
from training.data import binarized
from training.data.binarized import dynamic_binarize, load_binarized_mnist, parse_amat
from training.data.mnist import DatasetError, DatasetNotFoundError


def amat_text(x: np.ndarray) -> bytes:
    return "".join(" ".join(str(v) for v in row) + "\n" for row in x).encode()


def test_parse_matches_a_generated_file(tmp_path, monkeypatch):
    x = (np.random.default_rng(0).random((5, 784)) < 0.3).astype(np.uint8)
    np.testing.assert_array_equal(parse_amat(amat_text(x)), x)
    np.testing.assert_array_equal(parse_amat(amat_text(x)[:-1]), x)  # missing final newline is fine
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    (folder / "binarized_mnist_valid.amat.gz").write_bytes(gzip.compress(amat_text(x)))
    (tmp_path / "binarized_mnist_test.amat").write_bytes(amat_text(x[:2]))
    got = load_binarized_mnist("valid", root=tmp_path, verify=False)
    assert got.dtype == np.uint8 and got.shape == (5, 784)
    np.testing.assert_array_equal(got, x)
    monkeypatch.setenv("GLIMPSE_DATA_DIR", str(tmp_path))
    np.testing.assert_array_equal(load_binarized_mnist("test", verify=False), x[:2])
    with pytest.raises(DatasetError) as err:
        load_binarized_mnist("valid")  # tiny file: content hash differs
    assert "binarized_mnist_valid.amat.gz" in str(err.value) and binarized.RAW_SHA256["valid"] in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="binarized_mnist_train.amat"):
        load_binarized_mnist("train")
    with pytest.raises(ValueError, match="split"):
        load_binarized_mnist("validation")


def test_malformed_text_is_rejected():
    x = np.zeros((3, 784), np.uint8)
    text = bytearray(amat_text(x))
    with pytest.raises(DatasetError, match="whole number"):
        parse_amat(bytes(text[:-10]))
    bad = bytearray(text)
    bad[1568 + 40] = ord("2")
    with pytest.raises(DatasetError, match="line 2"):
        parse_amat(bytes(bad))
    bad = bytearray(text)
    bad[2 * 1568 + 3] = ord(",")
    with pytest.raises(DatasetError, match="line 3"):
        parse_amat(bytes(bad))
    with pytest.raises(DatasetError, match="MAT-file"):
        parse_amat(b"MATLAB 5.0 MAT-file, Platform: x" + bytes(100))


def test_real_binarized_mnist(shared_data):
    if not (shared_data / "binarized_mnist").is_dir():
        absent(f"{shared_data / 'binarized_mnist'} absent")
    x = load_binarized_mnist("train", root=shared_data)
    assert x.shape == (50000, 784) and x.dtype == np.uint8
    assert set(np.unique(x)) == {0, 1}
    assert abs(x.mean() - 0.1306) < 2e-4
    assert load_binarized_mnist("test", root=shared_data / "binarized_mnist").shape == (10000, 784)


def test_dynamic_binarize_is_seeded_and_unbiased():
    p = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    p[0] = 0.0
    p[1] = 1.0
    a = dynamic_binarize(p, torch.Generator().manual_seed(1))
    b = dynamic_binarize(p, torch.Generator().manual_seed(1))
    c = dynamic_binarize(p, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == p.shape and a.dtype == p.dtype
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert a[0].sum() == 0 and a[1].min() == 1
    assert abs(a.mean().item() - p.mean().item()) < 0.005  # 156,800 Bernoulli draws
    # per-pixel probability follows the intensity, not a threshold
    half = torch.full((20000,), 0.25)
    assert abs(dynamic_binarize(half, torch.Generator().manual_seed(3)).mean().item() - 0.25) < 0.015
    with pytest.raises(TypeError):
        dynamic_binarize(torch.zeros(3, dtype=torch.uint8))
