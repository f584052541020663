"""Omniglot few-shot pipeline (training/data/omniglot.py) and its training task.

The real data is loaded once per module (the `val` split, 688 classes); only the task test loads `train`.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import absent
from tests.training.conftest import shared_data_dir
from training.data import omniglot as om


@pytest.fixture(scope="module")
def root() -> Path:
    d = shared_data_dir()
    if d is None or not (d / "omniglot" / "omniglot_characters.tsv").is_file():
        absent("Omniglot absent: set GLIMPSE_DATA_DIR or provide <repo>/../shared/data/omniglot")
    assert d is not None
    return d


@pytest.fixture(scope="module")
def val(root: Path) -> om.OmniglotSplit:
    return om.load_split("val", root=root)


def fingerprints(images: torch.Tensor) -> torch.Tensor:
    """One float64 number per 28×28 image (random projection): equal images give equal numbers."""
    r = torch.rand(28 * 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return images.reshape(*images.shape[:-2], 28 * 28).to(torch.float64) @ r


# ---------------------------------------------------------------------------------------------------------------
# Splits


def test_split_counts_and_disjoint_characters(root):
    files = {s: om.read_split(s, root=root) for s in om.SPLITS}
    chars = {s: {om.character_of(n) for n in f.names} for s, f in files.items()}
    assert {s: (len(f.names), len(chars[s])) for s, f in files.items()} == {
        "train": (4112, 1028), "val": (688, 172), "trainval": (4800, 1200), "test": (1692, 423)}
    assert not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert not chars["train"] & chars["val"]
    assert set(files["trainval"].names) == set(files["train"].names) | set(files["val"].names)
    for s, f in files.items():
        assert len(set(f.names)) == len(f.names)  # every (character, rotation) once
        assert {n for n in f.names} == {f"{c}/{r}" for c in chars[s] for r in om.ROTATIONS}
        assert f.sha256 == om.SPLIT_SHA256[s]


def test_rotations_are_distinct_classes_with_rotated_images(val, root):
    assert val.images.shape == (688, 20, 3, 28, 28) and val.images.dtype == torch.float32
    assert val.characters == {om.character_of(n) for n in val.names} and len(val.characters) == 172
    index = {n: i for i, n in enumerate(val.names)}
    chars = sorted(val.characters)[::40]
    inks = torch.from_numpy(om.load_ink(chars, root=root))
    for char, ink in zip(chars, inks, strict=True):
        base = val.images[index[f"{char}/rot000"]]
        for k, suffix in enumerate(om.ROTATIONS):
            rotated = val.images[index[f"{char}/{suffix}"]]
            assert torch.equal(rotated, torch.rot90(base, k, dims=(-2, -1)))
            if k:
                assert not torch.equal(rotated, base)
        # Independent: rotating the 105-px ink then resizing gives the same class images.
        expected = om.resize(torch.rot90(ink, 1, dims=(-2, -1)))
        torch.testing.assert_close(val.images[index[f"{char}/rot090"], :, 0], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(base[:, 0], om.resize(ink), rtol=0, atol=1e-6)


def test_rotate_is_counter_clockwise():
    x = torch.tensor([[1, 2], [3, 4]])
    assert om.rotate(x, 90).tolist() == [[2, 4], [1, 3]]  # the top-right corner moves to the top-left (PIL rotate)
    assert om.rotate(x, 360).tolist() == x.tolist()
    with pytest.raises(ValueError):
        om.rotate(x, 45)


def test_ink_is_one_on_strokes(root):
    ink = om.load_ink(["Latin/character01"], root=root)
    assert ink.shape == (1, 20, 105, 105) and ink.dtype == bool
    assert 0.01 < ink.mean() < 0.2  # strokes are the minority: ink is not the white background
    assert not ink[..., 0, :].any() and not ink[..., :, 0].any()  # the page border is background


def test_lookup_and_verification(root, val, tmp_path, monkeypatch):
    src = root / "omniglot"
    mine = tmp_path / "omniglot"
    (mine / "splits" / "vinyals").mkdir(parents=True)
    for name in om.SHA256:
        (mine / name).symlink_to(src / name)
    lines = (src / "splits" / "vinyals" / "val.txt").read_text().splitlines(keepends=True)[:8]  # 2 characters
    (mine / "splits" / "vinyals" / "val.txt").write_text("".join(lines))
    assert om.find_omniglot_dir(tmp_path) == mine
    monkeypatch.setenv("GLIMPSE_DATA_DIR", str(tmp_path))
    assert om.find_omniglot_dir() == mine
    with pytest.raises(om.DatasetError, match=om.SPLIT_SHA256["val"]):
        om.read_split("val")  # a custom split file needs verify=False
    small = om.load_split("val", verify=False, radii=(0,))
    assert small.names == val.names[:8] and torch.equal(small.images, val.images[:8, :, :1])
    with pytest.raises(om.DatasetNotFoundError, match="omniglot_characters.tsv"):
        om.find_omniglot_dir(tmp_path / "nothing")  # an explicit root never falls through
    with pytest.raises(ValueError, match="split"):
        om.read_split("validation", root=root)


# ---------------------------------------------------------------------------------------------------------------
# Image operations


def area_reference(ink: np.ndarray) -> np.ndarray:
    """Exact area averaging 105 -> 28: nearest upsampling ×4 to 420×420, then the mean of each 15×15 block."""
    up = np.kron(ink.astype(np.float64), np.ones((4, 4)))
    return up.reshape(28, 15, 28, 15).mean(axis=(1, 3))


def test_resize_is_the_ink_fraction_of_each_cell():
    ink = np.zeros((105, 105), bool)
    ink[:4, :4] = True  # 4×4 px block: covers cell (0, 0) = [0, 3.75)² fully, 0.25 px into its neighbours
    got = om.resize(torch.from_numpy(ink)).double().numpy()
    expected = np.zeros((28, 28))
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 1, 1 / 15, 1 / 15, 1 / 225
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(got, area_reference(ink), atol=1e-7)
    # interpolate(mode="area") is whole-pixel adaptive pooling: it would give 1 and 0 here, not 1/15.
    area = F.interpolate(torch.from_numpy(ink).float()[None, None], size=(28, 28), mode="area")[0, 0]
    assert abs(float(area[0, 1]) - 1 / 15) > 0.05

    rng = np.random.default_rng(0)
    drawings = rng.random((3, 105, 105)) < 0.2
    got = om.resize(torch.from_numpy(drawings))
    assert got.shape == (3, 28, 28) and got.dtype == torch.float32
    for d, g in zip(drawings, got, strict=True):
        np.testing.assert_allclose(g.double().numpy(), area_reference(d), atol=1e-6)
    assert torch.equal(om.resize(torch.ones(105, 105)), torch.ones(28, 28))


def test_dilate_grows_a_pixel_into_a_square():
    x = torch.zeros(105, 105, dtype=torch.bool)
    x[50, 50] = True
    x[0, 104] = True  # a corner pixel's square is clipped by the border
    for r in range(4):
        got = om.dilate(x, r)
        expected = torch.zeros_like(x)
        expected[50 - r : 51 + r, 50 - r : 51 + r] = True
        expected[: r + 1, 104 - r :] = True
        assert torch.equal(got, expected), r
    assert torch.equal(om.dilate(x, 0), x)
    with pytest.raises(ValueError):
        om.dilate(x, -1)


def test_dilate_matches_max_pool_and_never_removes_ink():
    g = torch.Generator().manual_seed(0)
    ink = torch.rand(4, 105, 105, generator=g) < 0.01
    grey = torch.rand(2, 3, 30, 30, generator=g)
    for r in (1, 2, 3):
        got = om.dilate(ink, r)
        assert got.dtype == torch.bool and bool((got | ~ink).all())  # every ink pixel is kept
        pooled = F.max_pool2d(ink.float()[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]
        assert torch.equal(got.float(), pooled)
        assert torch.equal(om.dilate(grey, r), F.max_pool2d(grey, 2 * r + 1, stride=1, padding=r))
        assert (got.sum() > ink.sum()) and (om.dilate(ink, r + 1).sum() > got.sum())


def test_load_split_checks_radii(root):
    with pytest.raises(ValueError, match="radii"):
        om.load_split("val", root=root, radii=(1, 2))


# ---------------------------------------------------------------------------------------------------------------
# Sets


def match_items(split: om.OmniglotSplit, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(drawing, version) of every item of grey sets x (N, S, 1, 28, 28) within its labelled class; asserts each
    item is exactly one of that class's images."""
    ref = fingerprints(split.images)[labels]  # (N, 20, V)
    items = fingerprints(x[:, :, 0])  # (N, S)
    hit = (items[:, :, None, None] - ref[:, None]).abs() < 1e-9  # (N, S, 20, V)
    assert bool((hit.flatten(2).sum(-1) == 1).all()), "an item is not exactly one drawing of its set's class"
    flat = hit.flatten(2).float().argmax(-1)
    versions = split.images.shape[2]
    return flat // versions, flat % versions


@pytest.mark.parametrize("set_size", [5, 3])
def test_make_sets_draws_each_set_from_one_class(val, set_size):
    per = 20 // set_size
    sets = om.make_sets(val, set_size, torch.Generator().manual_seed(0), dilation=True, binarize=False)
    assert sets.x.shape == (688 * per, set_size, 1, 28, 28) and sets.x.dtype == torch.float32
    assert sets.labels.shape == (688 * per,) and sets.labels.dtype == torch.long
    assert torch.equal(torch.bincount(sets.labels, minlength=688), torch.full((688,), per))
    assert not torch.equal(sets.labels, torch.arange(688).repeat_interleave(per))  # sets are shuffled
    drawing, version = match_items(val, sets.x, sets.labels)
    for c in range(0, 688, 97):  # one class's sets use distinct drawings: none repeated within a set or across
        used = drawing[sets.labels == c].flatten()
        assert len(used) == per * set_size and len(set(used.tolist())) == len(used)
    assert set(version.unique().tolist()) == {0, 1, 2}  # dilation picks every version

    plain = om.make_sets(val, set_size, torch.Generator().manual_seed(0), dilation=False, binarize=False)
    _, version = match_items(val, plain.x, plain.labels)
    assert not version.any()


def test_make_sets_binarises_and_is_deterministic(val):
    def sets(seed: int, **kw: Any) -> om.Sets:
        return om.make_sets(val, 5, torch.Generator().manual_seed(seed), dilation=True, **kw)

    a, b, c = sets(0), sets(0), sets(1)
    assert set(a.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.labels, c.labels)
    grey = sets(0, binarize=False)
    assert torch.equal(a.labels, grey.labels)  # binarisation does not change which drawings are picked
    assert bool((a.x <= (grey.x > 0)).all())  # ink only where the grey level is > 0
    assert abs(float(a.x.mean()) - float(grey.x.mean())) < 0.002  # a Bernoulli of the grey level
    with pytest.raises(ValueError, match="set_size"):
        om.make_sets(val, 21, torch.Generator(), dilation=False)


def test_class_images_are_undilated_and_fixed(val):
    x = om.class_images(val, torch.Generator().manual_seed(3))
    assert x.shape == (688, 20, 1, 28, 28) and set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x, om.class_images(val, torch.Generator().manual_seed(3)))
    assert torch.equal(om.class_images(val, torch.Generator(), binarize=False)[:, :, 0], val.images[:, :, 0])


def test_mnist_few_shot_digits(root):
    if not (root / "mnist").is_dir():
        absent(f"{root / 'mnist'} absent")
    from training.data.mnist import load_mnist

    x, source = om.mnist_few_shot(7, torch.Generator().manual_seed(0), root=root)
    assert x.shape == (10, 7, 1, 28, 28) and set(x.unique().tolist()) == {0.0, 1.0}
    assert "t10k-images" in source
    again, _ = om.mnist_few_shot(7, torch.Generator().manual_seed(0), root=root)
    assert torch.equal(x, again)
    digits = load_mnist("test", root=root)
    for d in range(10):
        grey = torch.from_numpy(digits.images[digits.labels == d][:7])
        assert bool((x[d, :, 0] <= (grey > 0)).all())  # digit d's own first 7 test images


# ---------------------------------------------------------------------------------------------------------------
# Task


@dataclass(frozen=True)
class StandInConfig:
    sample_size: int = 5


class StandIn:
    """The statistician family's class attributes the config and task read (models/statistician.py may not exist)."""

    Config = StandInConfig
    data = "image_sets"
    train_defaults: ClassVar[dict[str, Any]] = {}


def test_task_shapes_and_it_never_reads_the_test_split(root, val, monkeypatch):
    from training import config as config_module
    from training import tasks
    from training.config import TrainConfig

    monkeypatch.setattr(config_module, "MODELS", (*config_module.MODELS, "statistician"))
    monkeypatch.setattr(config_module, "family", lambda kind: StandIn)
    monkeypatch.setattr(tasks, "family", lambda kind: StandIn)
    read: list[str] = []
    real_read = om._read_verified

    def recording(path: Path, expected: str, verify: bool) -> bytes:
        read.append(path.name)
        return real_read(path, expected, verify)

    monkeypatch.setattr(om, "_read_verified", recording)
    config = TrainConfig(model="statistician", dataset="omniglot", data_dir=str(root), val_size=100,
                         model_overrides={"sample_size": 4})
    start = time.perf_counter()
    task = tasks.make_task(config)
    print(f"OmniglotTask load: {time.perf_counter() - start:.1f} s")
    assert isinstance(task, tasks.OmniglotTask)
    assert "test.txt" not in read and "trainval.txt" not in read
    assert {"train.txt", "val.txt"} <= set(read)

    x = task.train_data(1)["x"]
    assert x.shape == (4112 * 5, 4, 1, 28, 28) and bool(((x == 0) | (x == 1)).all())
    assert not torch.equal(x, task.train_data(2)["x"])  # a fresh partition per epoch (make_sets is seeded: above)
    v = task.val_data()["x"]
    assert v.shape == (100, 4, 1, 28, 28) and torch.equal(v, task.val_data()["x"])
    # every validation set is drawings of one `val` class, undilated: each binary item's ink lies inside the ink of
    # one of that class's drawings (dynamic binarisation inks only where the grey image has ink)
    items = v.flatten(2).bool()  # (N, S, 784)
    assert bool(items.any(-1).all())
    outside = (~(val.images[:, :, 0] > 0)).flatten(2).float()  # (688, 20, 784): where each undilated drawing has none
    stray = torch.einsum("nsp,cdp->nscd", items.float(), outside)  # ink of item (n, s) outside drawing (c, d)
    fits = (stray == 0).any(-1)  # (N, S, 688): the item fits some drawing of class c
    assert bool(fits.all(1).any(-1).all()), "a validation set is not of one val class, undilated"
    assert task.pixel_means().shape == (1, 28, 28)
    undilated = task._train.images[:, :, 0].flatten(0, 1).mean(0, keepdim=True)
    torch.testing.assert_close(task.pixel_means(), undilated, atol=1e-6, rtol=0)
    assert float(task.pixel_means().mean()) < float(x.mean())  # training items are dilated: more ink
    sets = task.preview_conditions()["sets"]  # 8 validation sets, each repeated for a row of 8 samples
    assert sets.shape == (64, 4, 1, 28, 28) and torch.equal(sets[8], task.val_data()["x"][1])
    assert task.extra == {
        "dataset": "omniglot", "split": "vinyals", "train_split_sha256": om.SPLIT_SHA256["train"],
        "val_split_sha256": om.SPLIT_SHA256["val"], "train_classes": 4112, "set_size": 4,
        "resize": "area 105->28", "dilation_radii": [0, 1, 2], "binarisation": "dynamic"}
    assert "test.txt" not in read  # nor while building epochs
