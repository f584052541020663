import pytest
import torch

from models.sampling import draw_noise, sample
from tests.models.conftest import TINY_ALIGN, random_captions


def _run(model, seed=None, seeds=None, batch=3, **kw):
    if hasattr(model, "caption_encoder"):
        ids, lengths = random_captions(batch, 6, TINY_ALIGN.vocab_size)
        kw |= {"captions": ids, "lengths": lengths}
    else:
        kw |= {"batch_size": batch}
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return sample(model, generator=gen, seeds=seeds, **kw)


@pytest.mark.parametrize("which", ["tiny_draw", "tiny_align"])
def test_same_seed_gives_bit_identical_outputs_and_another_seed_differs(which, request):
    model = request.getfixturevalue(which)
    a, b, c = _run(model, seed=5), _run(model, seed=5), _run(model, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.canvases, b.canvases)
    assert torch.equal(a.windows, b.windows)
    if a.alignments is not None:
        assert torch.equal(a.alignments, b.alignments)
    assert not torch.allclose(a.images, c.images)


@pytest.mark.parametrize("which", ["tiny_draw", "tiny_align"])
@pytest.mark.parametrize("batch", [1, 3])
def test_sampling_leaves_the_weights_alone(which, batch, request):
    """The canvas is written in place each step: never into the learned c_0 (at batch 1 an expand aliases it)."""
    model = request.getfixturevalue(which)
    with torch.no_grad():
        model.canvas0.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _run(model, seed=1, batch=batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("which", ["tiny_draw", "tiny_align"])
def test_per_image_seeds_fix_each_image_whatever_shares_its_batch(which, request):
    model = request.getfixturevalue(which)
    together = _run(model, seeds=[11, 12, 13])
    again = _run(model, seeds=[11, 12, 13])
    assert torch.equal(together.images, again.images)
    alone = _run(model, seeds=[12], batch=1)
    if hasattr(model, "caption_encoder"):  # same caption as row 1 of the batch of three
        ids, lengths = random_captions(3, 6, TINY_ALIGN.vocab_size)
        alone = sample(model, captions=ids[1:2], lengths=lengths[1:2], seeds=[12])
    torch.testing.assert_close(alone.images[0], together.images[1], atol=1e-5, rtol=0)
    noise = draw_noise(3, model.steps, model.z_size, seeds=[11, 12, 13])
    assert torch.equal(noise[1], draw_noise(1, model.steps, model.z_size, seeds=[12])[0])


def test_callback_sees_every_step_in_order_and_can_stop_early(tiny_align):
    seen = []
    out = _run(tiny_align, seed=0, callback=lambda s: seen.append((s.t, s.steps, s.canvas.clone())))
    assert [t for t, _, _ in seen] == list(range(1, TINY_ALIGN.steps + 1))
    assert all(total == TINY_ALIGN.steps for _, total, _ in seen)
    for t, _, canvas in seen:
        assert torch.equal(canvas, out.canvases[:, t - 1])
    assert out.completed

    stopped = _run(tiny_align, seed=0, callback=lambda s: s.t < 2)
    assert stopped.steps_done == 2 and not stopped.completed
    assert stopped.canvases.shape[1] == 2 and stopped.alignments.shape[1] == 2
    assert torch.equal(stopped.canvases, out.canvases[:, :2])
    assert torch.equal(stopped.images, out.canvases[:, 1])


def test_canvases_change_from_step_to_step(tiny_draw):
    out = _run(tiny_draw, seed=0)
    diffs = (out.canvases[:, 1:] - out.canvases[:, :-1]).abs().flatten(2).amax(-1)
    assert (diffs > 0).all()


@pytest.mark.parametrize("which", ["tiny_draw", "tiny_align"])
def test_sampling_stores_nothing_on_the_model(which, request):
    model = request.getfixturevalue(which)

    def snapshot():
        """Each module's attributes, and the entries of its dict attributes (_parameters, _buffers, hooks, …) one
        level down, as objects (compared by identity); the state's values."""
        attrs = {name: {key: (value, dict(value) if isinstance(value, dict) else None)
                        for key, value in vars(m).items()} for name, m in model.named_modules()}
        return attrs, {k: v.clone() for k, v in model.state_dict().items()}

    modules_before, state_before = snapshot()
    _run(model, seed=1, callback=lambda s: None)
    modules_after, state_after = snapshot()
    assert modules_before.keys() == modules_after.keys()
    for name, attrs in modules_before.items():
        assert attrs.keys() == modules_after[name].keys(), name
        for key, (value, entries) in attrs.items():
            after, after_entries = modules_after[name][key]
            assert after is value, (name, key)
            if entries is not None:
                assert after_entries.keys() == entries.keys(), (name, key)
                assert all(after_entries[k] is v for k, v in entries.items()), (name, key)
    assert state_before.keys() == state_after.keys()
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)


def test_no_gradients_are_recorded(tiny_draw):
    out = _run(tiny_draw, seed=0)
    assert not out.images.requires_grad and not out.canvases.requires_grad


def test_keep_canvases_false_keeps_the_final_image(tiny_draw):
    full = _run(tiny_draw, seed=3)
    light = _run(tiny_draw, seed=3, keep_canvases=False)
    assert torch.equal(full.images, light.images)
    assert light.canvases.shape[1] == 0 and light.windows.shape == full.windows.shape


def test_bad_sampler_arguments_are_refused(tiny_draw):
    with pytest.raises(ValueError, match="one seed per image"):
        sample(tiny_draw, batch_size=3, seeds=[1, 2])
    with pytest.raises(ValueError, match="either generator or seeds"):
        sample(tiny_draw, batch_size=1, seeds=[1], generator=torch.Generator())

    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            sample(tiny_draw, batch_size=1, temperature=bad)


@pytest.mark.parametrize("which", ["tiny_draw", "tiny_align"])
def test_temperature_scales_the_prior_noise(which, request):
    model = request.getfixturevalue(which)
    assert torch.equal(_run(model, seed=4).images, _run(model, seed=4, temperature=1.0).images)
    if which == "tiny_align":  # one caption for every row, so z_t = μ_t alone decides the image
        ids, lengths = random_captions(1, 6, TINY_ALIGN.vocab_size)
        one = {"captions": ids.expand(3, -1), "lengths": lengths.expand(3)}
        cold = sample(model, seeds=[1, 2, 3], temperature=0.0, **one).images
    else:
        cold = _run(model, seeds=[1, 2, 3], temperature=0.0).images
    torch.testing.assert_close(cold[1:], cold[:1].expand_as(cold[1:]), atol=1e-6, rtol=0)  # seeds no longer matter
    warm, half = _run(model, seed=4).images, _run(model, seed=4, temperature=0.5).images
    assert not torch.allclose(half, warm) and not torch.allclose(half, _run(model, seed=4, temperature=0.0).images)
    # linear in ε (not T², √T or σ alone): temperature 0.5 is the seeded draw halved, bit for bit
    halved = 0.5 * draw_noise(3, *model.noise_shape(), seeds=[4, 5, 6])
    assert torch.equal(_run(model, seeds=[4, 5, 6], temperature=0.5).images, _run(model, noise=halved).images)


def test_slerp_runs_from_one_draw_to_the_other_at_a_typical_norm():
    from models.sampling import lerp, slerp

    a, b = draw_noise(2, 6, 50, seeds=[1, 2])
    path = slerp(a, b, 7)
    assert path.shape == (7, 6, 50)
    torch.testing.assert_close(path[0], a, atol=1e-5, rtol=0)
    torch.testing.assert_close(path[-1], b, atol=1e-5, rtol=0)
    norms = path.flatten(1).norm(dim=1)
    assert (norms - a.norm()).abs().max() < 0.1 * a.norm()  # the arc keeps the norm of a typical draw ...
    assert lerp(a, b, 7)[3].norm() < 0.8 * a.norm()  # ... where the straight line's middle sinks towards 0
