"""IWAE (models/iwae.py): the log-weight against a float64 recomputation by hand, L_k and its gradient (Burda eq. 8,
14), the VAE baseline, active units, generation and the config round trip."""

import copy
import json
import math

import pytest
import torch
from torch import nn

from models.bounds import importance_weighted, log_weights
from models.family import Losses, Step, build
from models.iwae import IWAE, IWAEConfig
from tests.models.conftest import assert_lk_closes_on, log_px_by_quadrature

# Small networks keep the file fast on one thread; the paper's sizes are checked for construction and shapes.
TINY1 = IWAEConfig(height=4, width=4, layers=1, k=4, hidden=(16,), latent=(4,))
TINY2 = IWAEConfig(height=4, width=4, layers=2, k=4, hidden=(16, 8), latent=(6, 3))
LOG_2PI = math.log(2 * math.pi)


def tiny(config: IWAEConfig, seed: int = 0, *, scale: float = 0.3) -> IWAE:
    """A model with every parameter moved off its initialisation (biases nonzero), as after some training."""
    torch.manual_seed(seed)
    model = IWAE(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def binary(n: int, config: IWAEConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, config.channels, config.height, config.width), 0.4), generator=g)


# ---- an independent float64 log-weight: explicit formulas, the module's weights only ------------------------------

def linear(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    return h @ layer.weight.T + layer.bias


def trunk(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Two tanh layers, read off the module's Linear weights (the paper's every deterministic layer)."""
    linears = [m for m in net.trunk if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    for layer in linears:
        h = torch.tanh(linear(layer, h))
    return h


def gaussian_log_density(z, mu, log_sigma):
    sigma = torch.exp(log_sigma)
    return (-((z - mu) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * LOG_2PI).sum(-1)


def reference_log_weight(model: IWAE, x: torch.Tensor, eps: torch.Tensor, parts: bool = False):
    """log p(x|h1) + Σ log p(h_l|h_{l+1}) + log N(h_L; 0, I) − Σ log q(h_{l+1}|h_l), float64, h_l sampled in turn;
    with `parts`, (log p(x|h1), the latent log-ratio Σ log q − Σ log p) instead."""
    m = copy.deepcopy(model).double()
    x, eps = x.double(), eps.double()
    pieces = eps.split(m.config.latent, dim=-1)
    h, samples, log_q = x.flatten(1), [], 0.0
    for q, e in zip(m.encoder, pieces, strict=True):
        t = trunk(q, h)
        mu, log_sigma = linear(q.mean, t), linear(q.log_sigma, t)
        h = mu + torch.exp(log_sigma) * e
        log_q = log_q + gaussian_log_density(h, mu, log_sigma)
        samples.append(h)
    log_p = gaussian_log_density(samples[-1], torch.zeros_like(h), torch.zeros_like(h))
    for j, p in enumerate(m.decoder):  # p(h_{j+1} | h_{j+2})
        t = trunk(p, samples[j + 1])
        log_p = log_p + gaussian_log_density(samples[j], linear(p.mean, t), linear(p.log_sigma, t))
    s = torch.sigmoid(linear(m.output.logits, trunk(m.output, samples[0])))
    xf = x.flatten(1)
    log_px = (xf * torch.log(s) + (1 - xf) * torch.log1p(-s)).sum(-1)
    return (log_px, log_q - log_p) if parts else log_px + log_p - log_q


# ---- 1. the log-weight ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "scale"),
                         [(TINY1, 0.1), (TINY2, 0.1), (IWAEConfig(layers=1), 0.03), (IWAEConfig(layers=2), 0.03)],
                         ids=["tiny1", "tiny2", "paper1", "paper2"])
def test_log_weight_matches_float64_by_hand(config, scale):
    model = tiny(config, scale=scale)  # paper sizes: log-weights of −600 to −1000 nats, float32's 1e-3 at most
    x = torch.rand(5, config.channels, config.height, config.width)  # grey levels: Bernoulli cross-entropy
    x[:2] = binary(2, config)
    noise = torch.randn(5, *model.noise_shape(), generator=torch.Generator().manual_seed(1))
    got = model.log_weight({"x": x}, noise)
    assert got.shape == (5,) and got.dtype == torch.float32
    want = reference_log_weight(model, x, noise)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-3)
    assert want.std() > 1  # the rows differ: a broadcast or row-order slip could not pass


@pytest.mark.parametrize(("k", "chunk"), [(7, 30), (12, 5)], ids=["rows-per-pass", "chunks-of-one-row"])
def test_log_weights_from_broadcast_samples_equal_the_repeated_rows(k, chunk, monkeypatch):
    # L_k hands IWAE each row once with (B, m, Z) noise (log_weight_broadcasts); the same samples through rows
    # repeated m times, as for every other family, must give the same log-weights, in the same places
    model = tiny(TINY2)
    x = torch.rand(5, 1, 4, 4)
    shared = log_weights(model, {"x": x}, k, chunk=chunk, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(model, "log_weight_broadcasts", False)
    repeated = log_weights(model, {"x": x}, k, chunk=chunk, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(shared, repeated, rtol=2e-6, atol=1e-5)  # float32 rounding of ~−150 nats
    noise = torch.randn(5, k, model.z_size, generator=torch.Generator().manual_seed(4))
    by_row = torch.stack([model.log_weight({"x": x}, noise[:, i]) for i in range(k)], 1)
    torch.testing.assert_close(model.log_weight({"x": x}, noise), by_row, rtol=2e-6, atol=1e-5)
    assert shared.std(1).min() > 0.1  # the samples differ: a broadcast slip would not pass


# ---- 2. the bound in Losses ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [TINY1, TINY2], ids=["1-layer", "2-layer"])
def test_bound_is_minus_log_mean_exp_of_the_weights(config):
    model = tiny(config)
    b, k = 3, 7
    x = binary(b, config)
    noise = torch.randn(b, k, model.z_size, generator=torch.Generator().manual_seed(2))
    out = model.loss({"x": x}, noise)
    assert isinstance(out, Losses) and set(out.minimise) == {"model"}
    assert out.bound.shape == out.log_weight.shape == out.terms["kl"].shape == (b,)
    # Row b of the (B, k) weights is image b with its own k noises (repeat_interleave and reshape agree).
    ref = reference_log_weight(model, x.repeat_interleave(k, 0), noise.reshape(b * k, -1)).view(b, k)
    torch.testing.assert_close(out.bound.double(), -(torch.logsumexp(ref, 1) - math.log(k)), rtol=0, atol=1e-3)
    # The −log k is there: −logsumexp alone is log k lower, far beyond the tolerance above.
    torch.testing.assert_close(out.bound.double() + torch.logsumexp(ref, 1), torch.full((b,), math.log(k),
                               dtype=torch.float64), rtol=0, atol=1e-3)
    torch.testing.assert_close(out.log_weight.double(), ref[:, 0], rtol=0, atol=1e-3)
    # terms are the k-sample −ELBO: reconstruction + kl = −mean log-weight, each part on its own (a latent density
    # counted in the reconstruction would keep the sum); L_k is at least that ELBO.
    log_px, log_ratio = reference_log_weight(model, x.repeat_interleave(k, 0), noise.reshape(b * k, -1), parts=True)
    torch.testing.assert_close(out.terms["reconstruction"].double(), -log_px.view(b, k).mean(1), rtol=0, atol=1e-3)
    torch.testing.assert_close(out.terms["kl"].double(), log_ratio.view(b, k).mean(1), rtol=0, atol=1e-3)
    assert (out.bound <= out.terms["reconstruction"] + out.terms["kl"] + 1e-4).all()
    torch.testing.assert_close(out.minimise["model"], out.bound.mean())
    assert not out.bound.requires_grad and out.minimise["model"].requires_grad


def test_one_sample_bound_is_the_elbo():
    model = tiny(TINY2)
    x = binary(4, TINY2)
    noise = torch.randn(4, 1, model.z_size, generator=torch.Generator().manual_seed(3))
    out = model.loss({"x": x}, noise)
    log_w = reference_log_weight(model, x, noise[:, 0])  # float64, written out here, not the model's own path
    torch.testing.assert_close(out.bound.double(), -log_w, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.bound, out.terms["reconstruction"] + out.terms["kl"])
    torch.testing.assert_close(out.minimise["model"], (out.terms["reconstruction"] + out.terms["kl"]).mean())


def twins(config):
    """The same weights under the IWAE objective and the k-sample VAE objective."""
    iwae = tiny(config)
    vae = IWAE(IWAEConfig(**{**config.to_dict(), "objective": "vae"}))
    vae.load_state_dict(iwae.state_dict())
    return iwae, vae


def test_vae_objective_reports_the_same_bound_but_minimises_the_mean_weight():
    iwae, vae = twins(TINY1)
    x = binary(3, TINY1)
    noise = torch.randn(3, 6, iwae.z_size, generator=torch.Generator().manual_seed(4))
    a, b = iwae.loss({"x": x}, noise), vae.loss({"x": x}, noise)
    torch.testing.assert_close(a.bound, b.bound)
    torch.testing.assert_close(b.minimise["model"], (b.terms["reconstruction"] + b.terms["kl"]).mean())
    assert b.minimise["model"] > a.minimise["model"] + 1e-3  # −ELBO_k above −L_k


def test_kl_weight_is_ignored():
    model = tiny(TINY1)
    x, noise = binary(2, TINY1), torch.randn(2, 3, model.z_size)
    assert torch.equal(model.loss({"x": x}, noise, kl_weight=0.1).minimise["model"],
                       model.loss({"x": x}, noise).minimise["model"])


# ---- 3. L_k rises with k (Burda Theorem 1) -------------------------------------------------------------------------

def test_importance_weighted_bound_rises_with_k_towards_log_px():
    """E L_1 ≤ E L_5 ≤ E L_50 ≤ log p(x), with log p(x) by quadrature (1-d latent), not by L_k itself: an L_k off
    by a constant (a missing − log k: 1.6 and 3.9 nats at k = 5 and 50) would pass a comparison with L_5000 but
    not this one; and L_50 closes most of L_1's gap."""
    config = IWAEConfig(height=4, width=4, layers=1, k=4, hidden=(16,), latent=(1,))
    model = tiny(config, seed=1, scale=0.1)
    x = binary(1, config, seed=9)
    log_px = log_px_by_quadrature(copy.deepcopy(model).double().output, x).item()
    g = torch.Generator().manual_seed(6)
    stats = {}
    for k in (1, 5, 50):
        l_k, _ = importance_weighted(model, {"x": x.expand(400, -1, -1, -1)}, k, chunk=20000, generator=g)
        stats[k] = (l_k.double().mean().item(), l_k.double().std().item() / math.sqrt(400))
    (m1, s1), (m5, s5), (m50, s50) = (stats[k] for k in (1, 5, 50))
    assert m50 - m1 > 3 * math.hypot(s1, s50)  # a real rise, not noise
    assert m1 <= m5 + 3 * math.hypot(s1, s5) and m5 <= m50 + 3 * math.hypot(s5, s50)
    for m, s in ((m1, s1), (m5, s5), (m50, s50)):
        assert m <= log_px + 3 * s + 1e-4, (m, s, log_px)
    # towards log p(x): most of the gap closed at k = 50 (0.25 set after seeing this toy's gaps, 0.100 and 0.011)
    assert log_px - m50 < 0.25 * (log_px - m1)


def test_l_k_closes_on_log_p_x_by_quadrature():
    """1-d latent: log p(x) = log ∫ p(x | h) N(h; 0, 1) dh on a fine grid, independent of models.bounds. The mean
    log-weight (an ELBO) lies below it and L_2000 within 4 standard errors of it (delta method, < 0.03 nats each
    here), so an L_k off by a constant (a missing − log k: 7.6 nats) or a wrong q density (a missing log σ: up to
    0.4 nats here) cannot pass. Seed and scale give q a usable width (σ 0.67–1.44) on an untrained net."""
    config = IWAEConfig(height=4, width=4, layers=1, k=4, hidden=(16,), latent=(1,))
    model = tiny(config, seed=1, scale=0.1)
    x = binary(3, config, seed=9)
    log_px = log_px_by_quadrature(copy.deepcopy(model).double().output, x)
    with torch.no_grad():
        sigma = model.encoder[0](x.flatten(1))[1].exp()
    assert (sigma > 0.5).all()  # a proposal of real width: the test sees its density, not a point mass
    assert sigma.log().abs().max() > 4 * 0.03 + 0.1  # a missing log σ moves some image past 4 standard errors
    assert_lk_closes_on(model, x, log_px, max_stderr=0.03)  # Jensen's gap 0.1–0.3 nats here


# ---- 4-5. gradient routing (eq. 14 and the VAE baseline) -----------------------------------------------------------

def per_sample_gradients(model: IWAE, x: torch.Tensor, noise: torch.Tensor):
    """∇ log w_{b,i} for each example b and sample i, one autograd call each, and the detached log w (B, k)."""
    params = list(model.parameters())
    b, k = noise.shape[:2]
    grads, log_w = [], torch.empty(b, k, dtype=x.dtype)
    for row in range(b):
        for i in range(k):
            lw = model.log_weight({"x": x[row : row + 1]}, noise[row : row + 1, i]).sum()
            grads.append(torch.autograd.grad(lw, params))
            log_w[row, i] = lw.detach()
    return grads, log_w


def loss_gradients(model: IWAE, x: torch.Tensor, noise: torch.Tensor):
    model.zero_grad()
    model.loss({"x": x}, noise).minimise["model"].backward()
    return [p.grad.clone() for p in model.parameters()]


def test_gradients_are_the_normalised_and_the_uniform_weightings():
    base = tiny(TINY2).double()
    vae = IWAE(IWAEConfig(**{**TINY2.to_dict(), "objective": "vae"})).double()
    vae.load_state_dict(base.state_dict())
    b, k = 2, 4
    x = binary(b, TINY2).double()
    noise = torch.randn(b, k, base.z_size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads, log_w = per_sample_gradients(base, x, noise)
    w_tilde = torch.softmax(log_w, dim=1).flatten()  # w̃_i = w_i / Σ_j w_j, per example
    assert w_tilde.max() > 1.5 / k  # the weights are far from uniform, so the two objectives must differ
    n = len(grads[0])
    want_iwae = [-sum(w_tilde[j] * grads[j][p] for j in range(b * k)) / b for p in range(n)]
    want_vae = [-sum(grads[j][p] for j in range(b * k)) / (k * b) for p in range(n)]
    got_iwae, got_vae = loss_gradients(base, x, noise), loss_gradients(vae, x, noise)
    for got, want in ((got_iwae, want_iwae), (got_vae, want_vae)):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
    gap = max((a - v).abs().max().item() for a, v in zip(got_iwae, got_vae, strict=True))
    assert gap > 1e-2


def test_one_sample_iwae_and_vae_are_identical():
    iwae, vae = twins(TINY2)
    x = binary(3, TINY2)
    noise = torch.randn(3, 1, iwae.z_size, generator=torch.Generator().manual_seed(8))
    assert torch.equal(iwae.loss({"x": x}, noise).minimise["model"], vae.loss({"x": x}, noise).minimise["model"])
    for a, v in zip(loss_gradients(iwae, x, noise), loss_gradients(vae, x, noise), strict=True):
        assert torch.equal(a, v)


# ---- 6. active units -----------------------------------------------------------------------------------------------

def test_active_units_counts_units_whose_posterior_mean_varies():
    model = tiny(TINY1)
    x = binary(64, TINY1)
    with torch.no_grad():
        mean = model.encoder[0].mean
        mean.weight[:2] *= 10  # units 0, 1 follow x strongly
        mean.weight[2:] = 0  # units 2, 3: constant means at distinct values
        mean.bias[2:] = torch.tensor([0.5, -1.0])
    counts, variances = model.active_units(x)
    assert counts == (2,) and variances[0].shape == (4,)
    assert (variances[0][:2] > 1e-2).all() and (variances[0][2:] < 1e-12).all()
    torch.testing.assert_close(variances[0], model.encode_means(x).var(0, correction=0))
    assert model.active_units(x, threshold=float("inf"))[0] == (0,)


def test_active_units_of_layer_two_follow_the_posterior_mean_path():
    model = tiny(TINY2)
    x = binary(64, TINY2)
    with torch.no_grad():
        model.encoder[0].mean.weight *= 10
        model.encoder[1].mean.weight[:2] *= 10
        model.encoder[1].mean.weight[2] = 0  # unit 3 of h2 ignores h1
    counts, variances = model.active_units(x)
    assert [v.shape for v in variances] == [(6,), (3,)]
    assert counts == (6, 2) and variances[1][2] < 1e-12
    with torch.no_grad():
        model.encoder[0].mean.weight.zero_()  # μ1 constant: so is μ2(μ1), however q(h2 | h1) depends on h1
    counts, variances = model.active_units(x)
    assert counts == (0, 0) and (variances[1] < 1e-12).all()


# ---- 7. generation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [TINY1, TINY2], ids=["1-layer", "2-layer"])
def test_generate_yields_one_step_equal_to_decode_top(config):
    model = tiny(config)
    noise = torch.randn(3, *model.noise_shape(), generator=torch.Generator().manual_seed(9))
    steps = list(model.generate(noise))
    assert len(steps) == model.steps == 1 and isinstance(steps[0], Step)
    assert steps[0].logits.shape == (3, 1, 4, 4)
    assert torch.equal(steps[0].logits, model.decode_top(noise))
    assert torch.equal(next(model.generate(noise.clone())).logits, steps[0].logits)
    # Ancestral order: h_L = ε_L (the last entries), then h_1 = μ_p(h_2) + σ_p(h_2) ε_1 (the first).
    eps = noise.split(config.latent, dim=-1)
    if config.layers == 1:
        h1 = eps[0]
    else:
        mu, log_sigma = model.decoder[0](eps[1])
        h1 = mu + torch.exp(log_sigma) * eps[0]
    torch.testing.assert_close(steps[0].logits, model.decode(h1))


def test_generate_from_images_reconstructs_through_the_posterior_mean():
    model = tiny(TINY2)
    x = binary(2, TINY2)
    a = next(model.generate(torch.randn(2, model.z_size), images=x)).logits
    b = next(model.generate(torch.randn(2, model.z_size), images=x)).logits
    assert a.shape == x.shape and torch.equal(a, b)  # deterministic, the noise unused
    torch.testing.assert_close(a, model.decode(model.encode_means(x)[:, :6]))
    with pytest.raises(ValueError, match="caption"):
        model.generate(torch.randn(2, model.z_size), caption=x)


# ---- 8. config, registry, shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [IWAEConfig(layers=1), IWAEConfig(), TINY2, IWAEConfig(objective="vae", k=5)])
def test_config_round_trips_through_json_and_the_registry(config):
    back = IWAEConfig(**json.loads(json.dumps(config.to_dict())))
    assert back == config and isinstance(back.hidden, tuple) and isinstance(back.latent, tuple)
    model = build("iwae", config.to_dict())
    assert isinstance(model, IWAE) and model.config == config


def test_paper_sizes_and_noise_shapes():
    one, two = IWAE(IWAEConfig(layers=1)), IWAE(IWAEConfig(layers=2))
    assert (one.z_size, one.noise_shape(), one.loss_noise_shape()) == (50, (50,), (50, 50))
    assert (two.z_size, two.noise_shape(), two.loss_noise_shape()) == (150, (150,), (50, 150))
    assert IWAE.kind == "iwae" and IWAE.likelihood and IWAE.data == "images" and IWAE.Config is IWAEConfig
    assert IWAE.modes == {"none": "images", "images": "images", "walk": "frames"}

    def widths(net):  # (in, out) of every Linear, in order
        return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]

    assert widths(two.encoder[0]) == [(784, 200), (200, 200), (200, 100), (200, 100)]  # trunk, μ, log σ
    assert widths(two.encoder[1]) == [(100, 100), (100, 100), (100, 50), (100, 50)]
    assert widths(two.decoder[0]) == [(50, 100), (100, 100), (100, 100), (100, 100)]
    assert widths(two.output) == [(100, 200), (200, 200), (200, 784)]
    assert widths(one.encoder[0])[-1] == (200, 50) and len(one.decoder) == 0
    assert all(isinstance(m, nn.Tanh) for m in two.output.trunk[1::2])
    # Glorot uniform weights, zero biases.
    w = two.output.trunk[0].weight
    assert w.abs().max() <= math.sqrt(6 / (100 + 200)) and w.std() > 0.5 * math.sqrt(2 / 300)
    assert all(not m.bias.any() for m in two.modules() if isinstance(m, nn.Linear))


def test_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="objective"):
        IWAEConfig(objective="elbo")
    with pytest.raises(ValueError, match="one entry per"):
        IWAEConfig(layers=2, hidden=(200,))
    with pytest.raises(ValueError, match="no 3-layer"):
        IWAEConfig(layers=3)
    with pytest.raises(ValueError, match="k >= 1"):
        IWAEConfig(k=0)


# ---- 9. output bias ------------------------------------------------------------------------------------------------

def test_init_output_bias_is_the_logit_of_clamped_pixel_means():
    model = IWAE(TINY1)
    means = torch.rand(1, 4, 4)
    means[0, 0, :2] = torch.tensor([0.0, 1.0])  # an always-black and an always-white pixel stay finite
    model.init_output_bias(means)
    want = torch.logit(means.clamp(1e-3, 1 - 1e-3)).flatten()
    assert torch.equal(model.output.logits.bias.data, want) and torch.isfinite(want).all()
    with torch.no_grad():
        for layer in model.output.trunk[::2]:
            layer.weight.zero_()  # a zero top hidden layer: the decoder outputs the bias, the data's marginal
    torch.testing.assert_close(torch.sigmoid(model.decode(torch.randn(1, 4))), means.clamp(1e-3, 1 - 1e-3)[None])
    with pytest.raises(ValueError, match="16"):
        model.init_output_bias(torch.rand(1, 5, 5))


@pytest.mark.parametrize("layers", [1, 2])
def test_encode_noise_inverts_decode_top_on_the_posterior_mean_path(layers):
    torch.manual_seed(0)
    model = IWAE(IWAEConfig(layers=layers)).eval()
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    with torch.no_grad():
        eps = model.encode_noise(x)
        means = model.encode_means(x)
        assert eps.shape == (3, model.z_size)
        torch.testing.assert_close(model.decode_top(eps), model.decode(means[:, : model.config.latent[0]]),
                                   atol=1e-4, rtol=0)
