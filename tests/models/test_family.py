"""Every registered family honours the generator contract (models/family.py) on a tiny config: the registry
builds it, `loss` gives a scalar per optimiser group and per-example bounds, `log_weight` and `generate` have the
contract's shapes, the sampler runs it, and a checkpoint round trip changes nothing."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from models.avb import AVBConfig
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.family import FAMILIES, Condition, Data, Losses, Output, Step, build, family, param_groups
from models.iwae import IWAEConfig
from models.sampling import sample
from models.statistician import StatisticianConfig
from models.textvae import EOS, UNK, TextVAEConfig
from models.vaegan import VAEGANConfig
from tests.models.conftest import TINY_ALIGN, TINY_DRAW, block_images, random_captions

# One tiny config per family: a new family must add its own here.
TINY = {"draw": TINY_DRAW, "aligndraw": TINY_ALIGN,
        "iwae": IWAEConfig(height=6, width=5, layers=2, k=3, hidden=(8, 6), latent=(4, 3)),
        "vaegan": VAEGANConfig(height=8, width=8, z_size=3, base=4),
        "avb": AVBConfig(height=8, width=8, z_size=3, eps_dim=4, n_basis=3, basis_hidden=(8,), basis_samples=32,
                         conv=(4, 4), deconv=(4, 4), adversary_conv=(4,), adversary_hidden=(16,)),
        "statistician": StatisticianConfig(height=8, width=8, sample_size=3, widths=(3, 4, 5), convs=1, hidden=8,
                                           layers=1, c_dim=4, z_dim=2),
        "textvae": TextVAEConfig(vocab_size=15, max_length=6, embed=8, hidden=8, z_dim=3, preset="small")}


def test_every_family_has_a_tiny_config_and_resolves():
    assert set(TINY) == set(FAMILIES)
    for kind in FAMILIES:
        cls = family(kind)
        assert cls.kind == kind and isinstance(TINY[kind], cls.Config)
        assert cls.data in get_args(Data)
        assert set(cls.modes) <= set(get_args(Condition)) and set(cls.modes.values()) <= set(get_args(Output))


def conditions(model, b: int) -> tuple[dict, dict]:
    """(the training batch, the generation conditions) the family takes."""
    if model.data == "texts":  # word ids then <eos>, right-padded; generation reconstructs them
        ids, lengths = random_captions(b, 5, model.config.vocab_size)
        ids = torch.where(ids > 0, ids.clamp_min(UNK), 0).scatter(1, lengths[:, None] - 1, EOS)
        return {"x": ids, "lengths": lengths}, {"texts": ids, "lengths": lengths}
    x = block_images(b, model.config.height, model.config.width)
    batch, given = {"x": x}, {}
    if model.data == "image_sets":  # sets of sample_size copies; generation conditioned on them
        batch = {"x": x.unsqueeze(1).repeat(1, model.config.sample_size, 1, 1, 1)}
        given = {"sets": batch["x"]}
    if model.data == "captioned_images":
        ids, lengths = random_captions(b, 5, model.config.vocab_size)
        batch |= {"captions": ids, "lengths": lengths}
    if "caption" in model.modes:
        given = {"captions": batch["captions"], "lengths": batch["lengths"]}
    return batch, given


@pytest.fixture(params=sorted(FAMILIES))
def tiny(request):
    torch.manual_seed(0)
    return build(request.param, TINY[request.param].to_dict())


def test_loss_has_a_scalar_per_group_and_per_example_bounds(tiny):
    c = tiny.config
    batch, _ = conditions(tiny, 4)
    noise = torch.randn(4, *tiny.loss_noise_shape(), generator=torch.Generator().manual_seed(1))
    losses = tiny.loss(batch, noise)
    assert isinstance(losses, Losses) and set(losses.minimise) == set(param_groups(tiny))
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.minimise.values())
    assert losses.bound.shape == (4,) and (losses.bound > 0).all()  # nats of binary images or words: positive
    chance = (batch["lengths"].max() * math.log(c.vocab_size) if tiny.data == "texts"
              else c.height * c.width * c.channels * math.log(2))
    assert losses.bound.max() < chance * 4  # near chance, not absurd
    for term in losses.terms.values():
        assert term.shape == (4,)
    if tiny.likelihood:
        one = torch.randn(4, *tiny.noise_shape(), generator=torch.Generator().manual_seed(2))
        assert tiny.log_weight(batch, one).shape == (4,)
    groups = param_groups(tiny)
    for name, loss in losses.minimise.items():  # every group's loss reaches its parameters
        grads = torch.autograd.grad(loss, groups[name], allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_generate_yields_the_contract_steps_and_the_sampler_runs_it(tiny):
    c = tiny.config
    _, given = conditions(tiny, 3)
    noise = torch.randn(3, *tiny.noise_shape(), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        steps = list(tiny.generate(noise, **given))
    assert len(steps) == tiny.steps and all(isinstance(s, Step) for s in steps)
    if steps[-1].logits is None:  # a text family: word ids (B, L), which the image sampler does not take
        assert steps[-1].tokens is not None and steps[-1].tokens.shape[0] == 3
        return
    assert steps[-1].logits.shape == (3, c.channels, c.height, c.width)
    out = sample(tiny, seeds=[0, 1, 2], batch_size=3, **given)
    assert out.images.shape == (3, c.channels, c.height, c.width) and out.steps_done == tiny.steps
    assert torch.equal(out.images, sample(tiny, seeds=[0, 1, 2], batch_size=3, **given).images)


def test_a_checkpoint_round_trip_changes_nothing(tiny, tmp_path):
    _, given = conditions(tiny, 2)
    save_checkpoint(tmp_path / "m", Checkpoint(tiny))
    loaded = load_checkpoint(tmp_path / "m").model
    assert type(loaded) is type(tiny) and loaded.config == tiny.config
    if "text" in tiny.modes.values():  # word ids, which the image sampler does not take: the same from both
        noise = torch.randn(2, *tiny.noise_shape(), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            ours, theirs = (list(m.generate(noise, **given))[-1].tokens for m in (tiny.eval(), loaded))
        assert ours is not None and theirs is not None and torch.equal(ours, theirs)
        return
    assert torch.equal(sample(loaded, seeds=[5, 6], batch_size=2, **given).images,
                       sample(tiny.eval(), seeds=[5, 6], batch_size=2, **given).images)
