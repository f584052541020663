import os
from pathlib import Path

import numpy as np

from models.vocab import Vocabulary
from tests.conftest import absent
from training.data import fashion, mnist
from training.data.captions import DEFAULT_BANNED, banned_mask
from training.data.fashion import (
    FASHION_NAMES,
    FASHION_WORDS,
    fashion_caption,
    fashion_held_out_captions,
    fashion_seen_captions,
    generate_fashion,
)


def test_fashion_captions_tokenise_one_token_per_item():
    vocab = Vocabulary(FASHION_WORDS)
    assert len(FASHION_WORDS) == 21 and len(set(FASHION_WORDS)) == 21
    assert fashion_caption(4, (5,)) == "the sandal is at the top left of the image ."
    assert fashion_caption(1, (8, 7)) == "the sneaker is on the right of the bag ."
    assert fashion_caption(0, (0, 9)) == "the t-shirt is on the left of the boot ."
    captions = fashion_seen_captions() + fashion_held_out_captions()
    assert len(set(captions)) == 440 and len(fashion_held_out_captions()) == 80
    for c in captions:
        ids = vocab.encode(c)
        assert len(ids) in (10, 11)
        names = [vocab.itos[i] for i in ids if vocab.itos[i] in FASHION_NAMES]
        assert len(names) == (2 if len(ids) == 10 else 1)


def fashion_available() -> bool:
    env = os.environ.get("GLIMPSE_DATA_DIR")
    dirs = [mnist.DEBIAN_FASHION_DIR] + ([Path(env) / "fashion-mnist", Path(env)] if env else [])
    return any((d / "t10k-images-idx3-ubyte.gz").is_file() for d in dirs)


def require_fashion() -> None:
    """Skip without the files, or fail under CI (tests.conftest.absent), which installs them."""
    if not fashion_available():
        absent(f"Fashion-MNIST absent: apt-get install dataset-fashion-mnist (provides {mnist.DEBIAN_FASHION_DIR}) "
               "or put the IDX files in $GLIMPSE_DATA_DIR/fashion-mnist")


def test_generate_fashion_from_the_debian_files():
    require_fashion()
    items = fashion.load_fashion("test")
    assert items.images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(items.labels), [1000] * 10)
    assert "fashion-mnist" in items.source
    batch = generate_fashion(items, 400, generator=0)
    assert batch.images.shape == (400, 1, 60, 60)
    assert not set(batch.captions) & set(fashion_held_out_captions())
    assert not banned_mask(batch.templates, batch.digits, DEFAULT_BANNED).any()
    for i in range(len(batch)):
        nd = 2 if batch.templates[i] < 4 else 1
        ds = tuple(int(d) for d in batch.digits[i, :nd])
        assert batch.captions[i] == fashion_caption(int(batch.templates[i]), ds)
        assert all(items.labels[batch.indices[i, k]] == ds[k] for k in range(nd))
    # images are Fashion-MNIST items, not digits: the canvases hold exactly the pool images
    i = int(np.flatnonzero(batch.templates >= 4)[0])
    r, c = batch.boxes[i, 0]
    np.testing.assert_array_equal(
        np.rint(batch.images[i, 0, r : r + 28, c : c + 28].numpy() * 255), items.images[batch.indices[i, 0]])
