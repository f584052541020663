"""AVB (models/avb.py): the basis encoder's exact moments against Monte Carlo, the adversary recovering an analytic
log q − log p, gradient routing on real parameter gradients, log_weight and L_k under the proposal r_α (the paper's
diagonal and the full-covariance contrast) against float64 recomputations and a quadrature, the full contrast's
whitening, the VAE baseline's bound, generation and the registry."""

import copy
import hashlib
import math
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import models.avb as avb_module
from models.avb import AVB, AVBConfig, GaussianProposal, ImplicitEncoder, adversary_cost
from models.bounds import importance_weighted
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.family import build, param_groups
from models.sampling import sample
from tests.models.conftest import assert_lk_closes_on, log_px_by_quadrature
from training.train import step

TINY = AVBConfig(height=8, width=8, z_size=3, eps_dim=4, n_basis=3, basis_hidden=(8, 8), basis_samples=64,
                 conv=(4, 4), deconv=(4, 4), adversary_conv=(4,), adversary_hidden=(16, 16))
LOG_2PI = math.log(2 * math.pi)


def tiny(config: AVBConfig = TINY, seed: int = 0) -> AVB:
    torch.manual_seed(seed)
    model = AVB(config)
    with torch.no_grad():  # off the official near-zero starts (z0, T's output, a ≈ e^−5), so every path shows
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if config.objective == "avb":
            model.encoder.a.bias.add_(5.0)  # a_i(x) = elu(linear − 5) + 1 of order 1: q is no point mass
    return model


def binary(n: int, config: AVBConfig = TINY, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, config.channels, config.height, config.width, generator=g) > 0.5).float()


MANY = 40_000  # the Monte Carlo tests: draws of z an image, and the basis draws behind the exact moments


def many_draws(config: AVBConfig = TINY) -> tuple[AVB, torch.Tensor]:
    """A tiny model whose exact moments come from MANY basis draws (so they are tight), and two images."""
    config = AVBConfig(**{**config.to_dict(), "basis_samples": MANY})
    return tiny(config).eval(), binary(2, config)


def draws_of_q(model: AVB, z0: torch.Tensor, a: torch.Tensor, row: int) -> torch.Tensor:
    """MANY fresh z ~ q(z | x) of image `row` (its z₀, a), (MANY, Z), seeded by the row."""
    c = model.config
    eps = torch.randn(MANY, c.n_basis, c.eps_dim, generator=torch.Generator().manual_seed(row))
    return model.encoder.sample(z0[row].expand(MANY, -1), a[row].expand(MANY, -1, -1), eps)


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params,
                            strict=True)]


def basis_by_hand(model: AVB, eps: torch.Tensor, i: int) -> torch.Tensor:
    """v_i = MLP_i(ε) written out for basis vector i: ε (N, eps_dim) -> (N, Z)."""
    weights, biases = model.encoder.basis.weights, model.encoder.basis.biases
    h = eps
    for j in range(len(weights)):
        h = h @ weights[j][i] + biases[j][i, 0]
        if j < len(weights) - 1:
            h = F.elu(h)
    return h


def coefficients_by_hand(model: AVB, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z₀ (B, Z) and a (B, n, Z) = elu(linear − 5) + 1 from the encoder's trunk and heads."""
    c = model.config
    h = model.encoder.trunk(x)
    return model.encoder.z0(h), (F.elu(model.encoder.a(h) - 5) + 1).view(-1, c.n_basis, c.z_size)


def moments_by_hand(model: AVB, z0: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[z | x] and Var[z | x] + floor from per-basis sample moments over the model's fixed basis draws."""
    mean, var = z0.detach().clone(), torch.full_like(z0, model.config.var_floor)
    for i in range(model.config.n_basis):
        v = basis_by_hand(model, model.encoder.basis_nodes[i], i).detach()
        mean = mean + a[:, i].detach() * v.mean(0)
        var = var + a[:, i].detach() ** 2 * v.var(0)
    return mean, var


def test_the_exact_moments_of_z_given_x_match_monte_carlo():
    """E[z | x] = z₀ + Σ a_i E[v_i] and Var[z | x] = Σ a_i² Var[v_i] against the sample mean and variance of z over
    40,000 fresh ε per image, within 5 standard errors of both estimates (the moments' own basis draws are an MC
    estimate too: they are made many here so the comparison is tight)."""
    model, x = many_draws()
    with torch.no_grad():
        z0, a = model.encoder.coefficients(x)
        mean, var = model.encoder.moments(z0, a)
        assert a.min() < 0.5 and a.max() > 2  # a² and a differ, so a variance that took a would show
        for row in range(2):
            z = draws_of_q(model, z0, a, row).double()
            mc_mean, mc_var = z.mean(0), z.var(0)
            fourth = ((z - mc_mean) ** 4).mean(0)
            scale = math.sqrt(2 / MANY)  # the draws' and the basis draws' errors
            assert ((mc_mean - mean[row]).abs() < 5 * mc_var.sqrt() * scale).all(), (mc_mean, mean[row])
            assert ((mc_var - var[row]).abs() < 5 * (fourth - mc_var**2).sqrt() * scale).all(), (mc_var, var[row])
            assert var[row].max() > 1  # a spread worth comparing


def test_a_trained_adversary_recovers_log_q_minus_log_p_on_a_toy_problem():
    """Three images x, q(z | x) = N(m_x, s_x²) in 1-d against p = N(0, 1): 600 Adam steps of the adversary alone on
    the family's logistic loss, and T(x, z) is log q(z | x) − log p(z) within 0.15 nats on a grid over each q's bulk.
    With the loss's labels swapped the error is > 0.8, with x hidden from T > 0.7 (measured)."""
    config = AVBConfig(height=4, width=4, z_size=1, eps_dim=2, n_basis=1, basis_hidden=(4,), basis_samples=16,
                       conv=(2,), deconv=(2,), adaptive_contrast=False, adversary_conv=(4,), adversary_hidden=(32, 32))
    torch.manual_seed(0)
    adversary = AVB(config).adversary
    assert adversary is not None
    x = torch.zeros(3, 1, 4, 4)
    x[1, 0, :2] = 1
    x[2, 0, :, :2] = 1
    m, s = torch.tensor([-0.8, 0.0, 1.0]), torch.tensor([0.6, 1.5, 0.8])

    def log_ratio(k: int, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((z - m[k]) / s[k]) ** 2 - torch.log(s[k]) + 0.5 * z**2  # the 2π terms cancel

    steps, b = 600, 512
    opt = torch.optim.Adam(adversary.parameters(), lr=3e-3, betas=(0.5, 0.999))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        k = torch.randint(0, 3, (b,), generator=g)
        z_q = (m[k] + s[k] * torch.randn(b, generator=g))[:, None]
        z_p = torch.randn(b, 1, generator=g)
        features = adversary.features(x[k])
        loss = adversary_cost(adversary.head(features, z_q), adversary.head(features, z_p)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        for k in range(3):
            z = torch.linspace(max(float(m[k] - 1.5 * s[k]), -1.5), min(float(m[k] + 1.5 * s[k]), 1.5), 21)[:, None]
            error = (adversary(x[k].expand(21, -1, -1, -1), z) - log_ratio(k, z[:, 0])).abs()
            assert error.max() < 0.15, (k, error)


def covariance_by_hand(model: AVB, a: torch.Tensor) -> torch.Tensor:
    """Cov[z | x] + floor · I, (B, Z, Z) float64: Σ_i diag(a_i) Cov[v_i] diag(a_i), each Cov[v_i] by torch.cov over
    the model's fixed basis draws."""
    c = model.config
    a = a.detach().double()
    cov = c.var_floor * torch.eye(c.z_size, dtype=torch.float64).expand(a.shape[0], -1, -1).clone()
    for i in range(c.n_basis):
        cov_i = torch.cov(basis_by_hand(model, model.encoder.basis_nodes[i], i).detach().double().T)
        cov += a[:, i, :, None] * cov_i * a[:, i, None, :]
    return cov


@pytest.mark.parametrize("contrast", ["diagonal", "full", None])
def test_each_group_gets_only_its_own_loss_gradient(contrast):
    """Trainer `step` on the two groups: encoder and decoder get ∇ of mean(−log p(x | z) + KL term), the KL term
    T(x, z̄) + log r_α(z | x) − log p(z) (T(x, z) without AC; with the full contrast z̄ = L⁻¹(z − μ) and r_α the
    Gaussian with q's covariance, by torch.distributions), and the adversary ∇ of its logistic loss, all written
    out here; what routing prevents is checked to be nonzero: the model loss reaches the adversary (through T) and
    the adversary's loss reaches the encoder (through z)."""
    config = AVBConfig(**{**TINY.to_dict(), "adaptive_contrast": contrast is not None,
                          "contrast": contrast or "diagonal"})
    model = tiny(config).train()
    c = config
    x = binary(6, config)
    noise = torch.randn(6, *model.loss_noise_shape(), generator=torch.Generator().manual_seed(3))
    assert noise.shape[1] == c.n_basis * c.eps_dim + c.z_size
    eps = noise[:, : c.n_basis * c.eps_dim].view(6, c.n_basis, c.eps_dim)
    z_p = noise[:, c.n_basis * c.eps_dim :]
    groups = param_groups(model)
    assert set(groups) == {"model", "adversary"}
    assert model.adversary is not None
    z0, a = coefficients_by_hand(model, x)
    z = z0 + sum(a[:, i] * basis_by_hand(model, eps[:, i], i) for i in range(c.n_basis))
    log_p = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(1)
    if contrast == "diagonal":
        mean, var = moments_by_hand(model, z0, a)
        z_bar = (z - mean) / var.sqrt()
        log_r = (-0.5 * z_bar**2 - 0.5 * torch.log(var) - 0.5 * LOG_2PI).sum(1)
        t_q = model.adversary(x, z_bar)
        kl = t_q + log_r - log_p
    elif contrast == "full":
        mean = moments_by_hand(model, z0, a)[0].double()
        sigma = covariance_by_hand(model, a)
        z_bar = (torch.linalg.inv(torch.linalg.cholesky(sigma)) @ (z.double() - mean)[:, :, None])[:, :, 0]
        log_r = torch.distributions.MultivariateNormal(mean, covariance_matrix=sigma).log_prob(z.double())
        t_q = model.adversary(x, z_bar.float())
        kl = t_q + log_r.float() - log_p
    else:
        t_q = model.adversary(x, z)
        kl = t_q
    t_p = model.adversary(x, z_p)
    reconstruction = F.binary_cross_entropy_with_logits(model.decoder(z), x, reduction="none").flatten(1).sum(1)
    model_loss = (reconstruction + kl).mean()
    adversary_loss = (-torch.log(torch.sigmoid(t_q)) - torch.log(1 - torch.sigmoid(t_p))).mean()
    expected = {"model": grads(model_loss, groups["model"]), "adversary": grads(adversary_loss, groups["adversary"])}
    assert any(g.abs().max() > 1e-4 for g in grads(model_loss, groups["adversary"]))
    assert any(g.abs().max() > 1e-4 for g in grads(adversary_loss, groups["model"]))

    losses = model.loss({"x": x}, noise)
    torch.testing.assert_close(losses.bound, (reconstruction + kl).detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(losses.terms["kl"], kl.detach(), rtol=1e-5, atol=1e-4)
    optimizers = {name: torch.optim.SGD(params, lr=0.0) for name, params in groups.items()}
    step(losses, optimizers, groups, clip=1e9)
    for name, params in groups.items():
        for p, e in zip(params, expected[name], strict=True):
            got = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(got, e, rtol=1e-4, atol=1e-5, msg=f"group {name}")


def log_weight_by_hand(model: AVB, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | σ(logits)) + log N(z; 0, I) − log r_α(z | x) at z = μ + σ ε, float64, written out."""
    m = copy.deepcopy(model).double()
    x, eps = x.double(), eps.double()
    with torch.no_grad():
        mean, var = moments_by_hand(m, *coefficients_by_hand(m, x))
        z = mean + var.sqrt() * eps
        logits = m.decoder(z)
        log_bernoulli = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(1).sum(1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(1)
        log_r = (-0.5 * eps**2 - 0.5 * torch.log(var) - 0.5 * LOG_2PI).sum(1)
    return log_bernoulli + log_prior - log_r


def test_log_weight_is_the_importance_weight_under_r_alpha_and_l1_is_its_elbo():
    """log_weight against a float64 recomputation; with k = 1, models.bounds' L_1 and mean log-weight are that
    per-sample ELBO at the ε the bound draws (its generator's first (B, Z) draw); and a row's weight does not depend
    on what shares its batch (r_α's basis moments come from fixed draws, not from the batch)."""
    model = tiny().eval()
    x = binary(5)
    eps = torch.randn(5, TINY.z_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model.log_weight({"x": x}, eps)
        alone = model.log_weight({"x": x[2:3]}, eps[2:3])
    expected = log_weight_by_hand(model, x, eps)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(alone, got[2:3], rtol=1e-6, atol=1e-4)

    l1, mean = importance_weighted(model, {"x": x}, 1, generator=torch.Generator().manual_seed(7))
    elbo = log_weight_by_hand(model, x, torch.randn(5, TINY.z_size, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(l1, elbo, rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(mean, elbo, rtol=1e-5, atol=2e-3)


def test_the_decoder_nll_in_slices_is_each_rows_own():
    """Decoder.nll decodes the CPU's rows in slices (L_5000's 5,000 at once ran at half speed): every row's value is
    its own −log p(x | z) whatever the slicing, so three slices' rows match a float64 recomputation row by row."""
    model = tiny().eval()
    n = 2 * avb_module._CPU_ROWS + 44  # two whole slices and a short one
    z = torch.randn(n, TINY.z_size, generator=torch.Generator().manual_seed(8))
    x = binary(n, seed=3)
    with torch.no_grad():
        got = model.decoder.nll(z, x)
        logits = model.decoder.double()(z.double())
    expected = -(x.double() * F.logsigmoid(logits) + (1 - x.double()) * F.logsigmoid(-logits)).flatten(1).sum(1)
    assert got.shape == (n,)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_decoders_last_layer_by_taps_is_the_transposed_conv(channels):
    """Inference on the CPU runs a stride-1 last layer as one matmul and k² shifted adds (oneDNN's was slow): the
    decoder's logits equal those of its nn.ConvTranspose2d stack run plainly, in float64; training keeps the stack."""
    model = tiny(AVBConfig(**{**TINY.to_dict(), "channels": channels})).double()
    decoder = model.decoder
    assert decoder.up[-1].stride == (1, 1) and decoder.up[0].stride == (2, 2)
    z = torch.randn(6, TINY.z_size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    plain = decoder.up(decoder.project(z).view(-1, *decoder.shape))
    with torch.no_grad():
        got = decoder(z)
    assert got.shape == plain.shape == (6, channels, TINY.height, TINY.width)
    torch.testing.assert_close(got, plain.detach(), rtol=1e-12, atol=1e-12)
    taps = patch.object(avb_module, "_stride_one_transposed", side_effect=AssertionError("taps"))
    with torch.no_grad(), taps, pytest.raises(AssertionError, match="taps"):
        decoder(z)
    with taps:  # with gradients: the module itself
        torch.testing.assert_close(decoder(z), plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "padding", "bias"), [((5, 5), (2, 2), True), ((3, 5), (0, 1), True),
                                                       ((4, 4), (1, 1), False), ((5, 3), (0, 0), True)])
def test_the_tap_sum_is_torchs_transposed_conv_for_any_kernel_and_padding(kernel, padding, bias):
    """_stride_one_transposed against F.conv_transpose2d in float64, on a 6 × 7 map (not square), 3 → 2 channels:
    kernels square or not, padding 0..2 per side; and _by_taps hands the module every layer it does not cover."""
    by_taps, tap_sum = avb_module._by_taps, avb_module._stride_one_transposed
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(3, 2, kernel, padding=padding, bias=bias).double()
    x = torch.randn(4, 3, 6, 7, dtype=torch.float64)
    assert by_taps(conv)
    with torch.no_grad():
        expected = F.conv_transpose2d(x, conv.weight, conv.bias, padding=padding)
        got = tap_sum(conv, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for other in ({"stride": 2}, {"dilation": 2}, {"groups": 3, "out_channels": 3},
                  {"stride": 2, "output_padding": 1}, {"padding": "same"}):
        args = {"in_channels": 3, "out_channels": 2, "kernel_size": kernel, "padding": padding} | other
        assert not by_taps(torch.nn.ConvTranspose2d(**args)), other


FULL = AVBConfig(**{**TINY.to_dict(), "contrast": "full"})


@pytest.mark.parametrize("contrast", ["diagonal", "full"])
def test_log_weight_of_m_draws_a_row_equals_one_draw_a_row(contrast):
    """log_weight_broadcasts: noise (B, m, Z) gives the (B, m) weights of each row repeated m times."""
    model = tiny(AVBConfig(**{**TINY.to_dict(), "contrast": contrast})).eval()
    x = binary(3)
    eps = torch.randn(3, 4, TINY.z_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        together = model.log_weight({"x": x}, eps)
        apart = model.log_weight({"x": x.repeat_interleave(4, 0)}, eps.reshape(12, -1))
    assert together.shape == (3, 4)
    torch.testing.assert_close(together, apart.view(3, 4), rtol=1e-6, atol=1e-4)


def test_full_contrast_log_weight_is_the_importance_weight_under_n_mu_sigma_and_l1_is_its_elbo():
    """With contrast="full", r_α = N(μ, Σ) with q's exact covariance: log_weight against float64 torch.distributions
    at z = μ + L ε (L Σ's Cholesky factor), and L_1 = that ELBO at the bound's first draw. The diagonal r_α's weight at
    the same ε differs (the covariance here has real correlations), so a proposal that dropped them fails; the
    variance floor is raised to 0.05 so that one left out of Σ shows too."""
    model = tiny(AVBConfig(**{**FULL.to_dict(), "var_floor": 0.05})).eval()
    x = binary(5)

    def by_hand(eps: torch.Tensor) -> torch.Tensor:
        m = copy.deepcopy(model).double()
        with torch.no_grad():
            z0, a = coefficients_by_hand(m, x.double())
            mean, sigma = moments_by_hand(m, z0, a)[0], covariance_by_hand(m, a)
            z = mean + (torch.linalg.cholesky(sigma) @ eps.double()[:, :, None])[:, :, 0]
            logits = m.decoder(z)
            log_bernoulli = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(1).sum(1)
            log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(1)
            log_r = torch.distributions.MultivariateNormal(mean, covariance_matrix=sigma).log_prob(z)
        return log_bernoulli + log_prior - log_r

    eps = torch.randn(5, TINY.z_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model.log_weight({"x": x}, eps)
        assert (_as_diagonal(model).log_weight({"x": x}, eps) - got).abs().max() > 0.05
    torch.testing.assert_close(got.double(), by_hand(eps), rtol=1e-5, atol=2e-3)
    l1, mean = importance_weighted(model, {"x": x}, 1, generator=torch.Generator().manual_seed(7))
    elbo = by_hand(torch.randn(5, TINY.z_size, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(l1, elbo, rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(mean, elbo, rtol=1e-5, atol=2e-3)


def test_the_full_contrast_whitens_q_where_the_diagonal_does_not():
    """z̄ = L⁻¹(z − μ) of 40,000 encoder draws z ~ q(z | x) has mean 0 and identity covariance within Monte Carlo
    error, whatever q's correlations; the diagonal contrast's z̄ = (z − μ) / σ keeps them (off-diagonal > 0.1)."""
    model, x = many_draws(FULL)
    with torch.no_grad():
        z0, a = model.encoder.coefficients(x)
        full, diagonal = model.contrast(z0, a), _as_diagonal(model).contrast(z0, a)
        for row in range(2):
            z = draws_of_q(model, z0, a, row)
            eye = torch.eye(FULL.z_size, dtype=torch.float64)
            for r, whitened in ((full, True), (diagonal, False)):
                z_bar = _row(r, row).whiten(z[None])[0].double()  # (1, n, Z): the m-draws-a-row path
                assert z_bar.mean(0).abs().max() < 0.03
                off = (torch.cov(z_bar.T) - eye).abs().max()
                assert off < 0.04 if whitened else off > 0.1, (whitened, off)


def _row(r: GaussianProposal, row: int) -> GaussianProposal:
    return GaussianProposal(r.mean[row : row + 1],
                            log_sigma=None if r.log_sigma is None else r.log_sigma[row : row + 1],
                            scale_tril=None if r.scale_tril is None else r.scale_tril[row : row + 1])


def _as_diagonal(model: AVB) -> AVB:
    twin = copy.deepcopy(model)
    twin.config = AVBConfig(**{**model.config.to_dict(), "contrast": "diagonal"})
    return twin


def test_the_full_contrast_needs_adaptive_contrast_and_avb():
    with pytest.raises(ValueError, match="contrast"):
        AVBConfig(contrast="full", adaptive_contrast=False)
    with pytest.raises(ValueError, match="contrast"):
        AVBConfig(contrast="full", objective="vae")
    with pytest.raises(ValueError, match="contrast"):
        AVBConfig(contrast="block")


def test_l_k_under_r_alpha_closes_on_log_p_x_by_quadrature():
    """1-d latent: log p(x) = log ∫ p(x | z) N(z; 0, 1) dz on a fine grid. With r_α as the proposal the mean
    log-weight (an ELBO) lies below it and L_2000 within 4 standard errors of it (delta method, each < 0.06 nats
    here), so a proposal density off by a constant, e.g. one missing log σ (≈ 1 nat here), cannot pass."""
    config = AVBConfig(**{**TINY.to_dict(), "z_size": 1, "height": 4, "width": 4})
    model = tiny(config).eval()
    x = binary(3, config, seed=5)
    log_px = log_px_by_quadrature(copy.deepcopy(model).double().decoder, x)
    with torch.no_grad():
        sigma = model.proposal(x).log_sigma.exp()
    assert (sigma > 0.3).all()  # a proposal of real width: the test sees its density, not a point mass
    assert sigma.log().abs().max() > 4 * 0.06 + 0.1  # a missing log σ moves some image past 4 standard errors
    assert_lk_closes_on(model, x, log_px, max_stderr=0.06)


def test_vae_baseline_bound_and_log_weight_match_a_float64_recomputation():
    config = AVBConfig(**{**TINY.to_dict(), "objective": "vae"})
    model = tiny(config).eval()
    assert model.adversary is None and set(param_groups(model)) == {"model"}
    assert model.loss_noise_shape() == (config.z_size,) and not hasattr(model.encoder, "basis_nodes")
    x = binary(4, config)
    eps = torch.randn(4, config.z_size, generator=torch.Generator().manual_seed(2))
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        mu, log_sigma = m.encoder.head(m.encoder.trunk(x.double())).chunk(2, dim=1)
        sigma = log_sigma.exp()
        z = mu + sigma * eps.double()
        kl = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2) - 1).sum(1)
        logits = m.decoder(z)
        log_bernoulli = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(1).sum(1)
        log_q = (-0.5 * eps.double() ** 2 - log_sigma - 0.5 * LOG_2PI).sum(1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(1)
        out = model.loss({"x": x}, eps)
        log_w = model.log_weight({"x": x}, eps)
    torch.testing.assert_close(out.terms["kl"].double(), kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.bound.double(), kl - log_bernoulli, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.minimise["model"].double(), (kl - log_bernoulli).mean(), rtol=1e-5, atol=1e-3)
    assert out.log_weight is not None
    torch.testing.assert_close(out.log_weight.double(), log_bernoulli + log_prior - log_q, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log_w.double(), log_bernoulli + log_prior - log_q, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("objective", ["avb", "vae"])
def test_generation_reconstruction_walk_and_the_registry(objective, tmp_path):
    """The family contract on a tiny config (tests/models/test_family.py has no entry for it): registry build, loss
    groups, shapes of generate / reconstruct / encode_noise, the sampler, a checkpoint round trip, config errors."""
    model = build("avb", {**TINY.to_dict(), "objective": objective})
    assert isinstance(model, AVB) and model.steps == 1 and model.noise_shape() == (3,) and model.likelihood
    x = binary(4)
    noise = torch.randn(4, *model.loss_noise_shape())
    losses = model.loss({"x": x}, noise)
    assert set(losses.minimise) == set(param_groups(model)) == ({"model", "adversary"} if objective == "avb"
                                                               else {"model"})
    assert losses.bound.shape == (4,) and all(t.shape == (4,) for t in losses.terms.values())
    model.eval()
    with torch.no_grad():
        z = torch.randn(5, 3)
        [prior] = list(model.generate(z))
        assert prior.logits is not None and prior.logits.shape == (5, 1, 8, 8)
        torch.testing.assert_close(prior.logits, model.decoder(z))
        [recon] = list(model.generate(torch.zeros(4, 3), images=x))
        encoded = model.encode_noise(x)
        assert encoded.shape == (4, 3)
        torch.testing.assert_close(encoded, model.proposal(x).mean)
        torch.testing.assert_close(recon.logits, model.decoder(encoded))
        [one] = list(model.generate(z[:1]))  # batch independence in eval mode
        torch.testing.assert_close(one.logits, prior.logits[:1])
        counts, variances = model.active_units(x, chunk=3)
        assert len(counts) == 1 and variances[0].shape == (3,)
    out = sample(model, seeds=[0, 1, 2], batch_size=3)
    assert out.images.shape == (3, 1, 8, 8) and out.steps_done == 1
    save_checkpoint(tmp_path / "m", Checkpoint(model))
    loaded = load_checkpoint(tmp_path / "m").model
    assert type(loaded) is AVB and loaded.config == model.config
    assert torch.equal(sample(loaded, seeds=[5, 6], batch_size=2).images, sample(model, seeds=[5, 6],
                                                                                  batch_size=2).images)
    with torch.no_grad():
        assert torch.equal(loaded.log_weight({"x": x}, z[:4]), model.log_weight({"x": x}, z[:4]))
    with pytest.raises(ValueError, match="no condition"):
        model.generate(z, captions=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="objective"):
        AVBConfig(objective="gan")
    with pytest.raises(ValueError, match="multiples"):
        AVBConfig(height=30)


def test_the_defaults_are_the_official_avb_mnist_32_ac():
    c = AVBConfig()
    assert (c.z_size, c.eps_dim, c.n_basis, c.basis_hidden, c.conv, c.deconv) == (
        32, 64, 32, (128, 128, 128), (64, 128, 256, 512), (512, 256, 128, 64))
    assert c.adaptive_contrast and c.objective == "avb"
    assert AVB.optimizer_options["betas"] == (0.5, 0.999) and AVB.default_lr == 5e-5
    assert AVB.default_lr * AVB.lr_scale["adversary"] == 1e-4 and AVB.train_defaults["val_holdout"] == 5000
    # conv0 at 28×28: strides 1, 1, 2, 2 down to 7×7 in the encoder, and back up in the decoder
    model = AVB(AVBConfig(conv=(2, 2, 2, 2), deconv=(2, 2, 2, 2), adversary_conv=(), adversary_hidden=(4,),
                          basis_hidden=(4,), basis_samples=8))
    assert [m.stride for m in model.encoder.trunk.modules() if isinstance(m, torch.nn.Conv2d)] == [(1, 1), (1, 1),
                                                                                                 (2, 2), (2, 2)]
    assert model.encoder.trunk.size == 2 * 7 * 7 and model.decoder.shape == (2, 7, 7)
    assert model.decoder(torch.zeros(2, 32)).shape == (2, 1, 28, 28)


def test_the_basis_nodes_come_from_the_seed_and_are_not_saved(tmp_path):
    """r_α's fixed draws are rebuilt from _NODES_SEED, not stored: their checksum is pinned (a torch whose generator
    drew other nodes would move every shipped AVB's r_α, and fails here), and a checkpoint leaves them out."""
    nodes = ImplicitEncoder(AVBConfig()).basis_nodes  # the official sizes, as avb-mnist: 32 × 1024 × 64
    digest = hashlib.sha256(nodes.numpy().tobytes()).hexdigest()
    assert digest == "38456c1c974d4c9a8d7034db70a3fb897d07149e38a5aba4e16db07f3694838b"
    model = build("avb", TINY.to_dict())
    save_checkpoint(tmp_path / "m", Checkpoint(model))
    assert not any("basis_nodes" in k for k in load_file(str(tmp_path / "m" / "model.safetensors")))
    assert torch.equal(load_checkpoint(tmp_path / "m").model.encoder.basis_nodes, model.encoder.basis_nodes)


def test_the_exact_covariance_of_z_given_x_matches_monte_carlo_and_the_moments():
    """Cov[z | x] = Σ_i diag(a_i) Cov[v_i] diag(a_i): its diagonal is moments' variance, and it matches the sample
    covariance of z over 40,000 fresh ε within 5 standard errors entry by entry (Var of a product's mean ≈ E[(u v −
    c)²] / n)."""
    model, x = many_draws()
    with torch.no_grad():
        z0, a = model.encoder.coefficients(x)
        cov = model.encoder.covariance(a)
        torch.testing.assert_close(torch.diagonal(cov, dim1=1, dim2=2), model.encoder.moments(z0, a)[1].double(),
                                   rtol=1e-5, atol=1e-7)
        for row in range(2):
            z = draws_of_q(model, z0, a, row).double()
            u = z - z.mean(0)
            mc = u.T @ u / (MANY - 1)
            spread = ((u[:, :, None] * u[:, None, :] - mc) ** 2).mean(0).sqrt()
            scale = math.sqrt(2 / MANY)  # the draws' and the basis draws' errors
            assert ((mc - cov[row]).abs() < 5 * spread * scale + 1e-9).all(), (mc, cov[row])
            sd = torch.diagonal(cov[row]).sqrt()
            corr = cov[row] / sd[:, None] / sd[None, :] - torch.eye(len(sd), dtype=torch.float64)
            assert corr.abs().max() > 0.05, corr  # correlations worth comparing, not a diagonal matrix


def test_the_kept_basis_moments_follow_the_weights():
    """basis_moments is computed once per set of basis weights: a step, a cast or a reload gives fresh moments; the
    covariances (asked for separately) follow the same weights."""
    from models.avb import ImplicitEncoder

    encoder = ImplicitEncoder(TINY)
    first = encoder.basis_moments()
    assert encoder.basis_moments() is first  # kept
    with torch.no_grad():
        next(encoder.basis.parameters()).add_(0.5)  # as an optimizer step does, in place
    second = encoder.basis_moments()
    assert second is not first and not torch.equal(second[0], first[0])
    v = encoder.basis(encoder.basis_nodes)
    torch.testing.assert_close(second[0], v.mean(1))
    torch.testing.assert_close(second[1], v.var(1))
    torch.testing.assert_close(encoder.basis_covariances()[1], torch.cov(v[1].T.double()), rtol=1e-5, atol=1e-8)
    assert encoder.basis_moments() is second  # the covariances' pass did not redo the moments
    assert encoder.double().basis_moments()[0].dtype == torch.float64  # a cast is new storage: recomputed


def test_the_covariances_leave_the_kept_draws_as_they_were_in_float64():
    """In float64 the kept draws are the covariances' own input (no cast copies them): asking for Cov[v_i] first
    leaves E[v_i] and Var[v_i] what the draws give."""
    encoder = ImplicitEncoder(TINY).double()
    v = encoder.basis(encoder.basis_nodes).detach()
    assert v.mean(1).abs().max() > 0.1  # nothing to find if the draws were centred already
    covariances = encoder.basis_covariances()
    mean, var = encoder.basis_moments()
    torch.testing.assert_close(mean, v.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, v.var(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(covariances[0], torch.cov(v[0].T), rtol=1e-10, atol=1e-12)
