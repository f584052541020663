"""`python -m training examples`: a set model's example sets, test characters it never read, kept in its manifest."""

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import Checkpoint, load_checkpoint, read_manifest, save_checkpoint
from models.iwae import IWAE, IWAEConfig
from models.statistician import Statistician, StatisticianConfig
from tests.training.test_omniglot import root  # noqa: F401  (fixture)
from training.__main__ import main
from training.data import omniglot as om
from worker import inputs


def _tiny_statistician(directory: Path) -> Path:
    torch.manual_seed(0)
    model = Statistician(StatisticianConfig(widths=(4, 4, 4), convs=1, hidden=16, layers=1, c_dim=8, z_dim=4))
    save_checkpoint(directory, Checkpoint(model, training={"command": "python -m training train ..."},
                                          extra={"dataset": "omniglot"}))
    return directory


def test_example_sets_are_upright_test_characters_as_the_model_reads_them(root, tmp_path):  # noqa: F811
    ckpt = _tiny_statistician(tmp_path / "stat")
    before = read_manifest(ckpt)
    argv = ["examples", str(ckpt), "--data-dir", str(root), "--count", "3", "--size", "4", "--seed", "5"]
    assert main(argv) == 0
    after = read_manifest(ckpt)
    assert after["weights_sha256"] == before["weights_sha256"] and load_checkpoint(ckpt) is not None
    assert after["training"] == before["training"] | {"examples": "python -m training " + " ".join(argv)}
    examples = after["extra"]["example_sets"]
    assert examples["split"] == "vinyals/test" and examples["split_sha256"] == om.SPLIT_SHA256["test"]

    test = om.load_split("test", root=root, radii=(0,))
    trained = om.read_split("trainval", root=root).names
    names = [s["name"] for s in examples["sets"]]
    assert len(set(names)) == 3 and not set(names) & {om.character_of(n) for n in trained}
    for s in examples["sets"]:
        drawings = test.images[test.names.index(f"{s['name']}/rot000"), :, 0].numpy()  # (20, 28, 28) upright
        read = np.rint(drawings * 255) > 127  # the model's binary pixels of each of its 20 drawings
        assert len(s["images"]) == 4
        picked = []
        for png in s["images"]:
            pixels = inputs.binary(inputs.decode(base64.b64decode(png), height=28, width=28, channels=1))[0]
            match = [i for i in range(20) if np.array_equal(pixels, read[i])]
            assert match, f"{s['name']}: an example is none of its character's drawings as the model reads them"
            picked += match[:1]
        assert len(set(picked)) == 4  # four different drawings

    assert main(argv) == 0  # seeded: the same sets again
    assert read_manifest(ckpt)["extra"]["example_sets"] == examples


def test_only_a_set_model_takes_example_sets(tmp_path, capsys):
    iwae = tmp_path / "iwae"
    save_checkpoint(iwae, Checkpoint(IWAE(IWAEConfig(height=28, width=28, layers=1, k=2, hidden=(8,), latent=(2,))),
                                     extra={"dataset": "mnist"}))
    manifest = (iwae / "checkpoint.json").read_text()
    assert main(["examples", str(iwae)]) == 2
    assert "made for models trained on Omniglot" in capsys.readouterr().err
    assert (iwae / "checkpoint.json").read_text() == manifest
    with pytest.raises(SystemExit):
        main(["examples", str(iwae), "--size", "21"])
    assert (iwae / "checkpoint.json").read_text() == manifest  # a usage error changes nothing either
