"""VAE/GAN (models/vaegan.py): gradient routing on real parameter gradients, the feature loss at the configured layer,
the equilibrium rule, the pixel-VAE baseline's bound against a float64 recomputation, generation and the registry."""

import math

import pytest
import torch

from models.family import build, param_groups
from models.sampling import prior_images, reconstructions, sample
from models.vaegan import VAEGAN, VAEGANConfig
from training.train import step

TINY = VAEGANConfig(height=8, width=8, z_size=3, base=4, margin=0.0)
LOG_2PI = math.log(2 * math.pi)


def tiny(config: VAEGANConfig = TINY, seed: int = 0) -> VAEGAN:
    torch.manual_seed(seed)
    model = VAEGAN(config)
    with torch.no_grad():  # off DCGAN's N(0, 0.02) start, so every path carries a visible gradient
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def batch(n: int = 6, seed: int = 0, config: VAEGANConfig = TINY) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, config.channels, config.height, config.width, generator=g)
    return {"x": x}, torch.randn(n, 2, config.z_size, generator=g)


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params,
                            strict=True)]


def parts(model: VAEGAN, x: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loss's pieces recomputed from the modules, as the paper names them (batch means)."""
    assert model.discriminator is not None
    b = x.shape[0]
    mu, log_sigma = model.encoder(x)
    z = mu + torch.exp(log_sigma) * noise[:, 0]
    kl = 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(1)
    fakes = torch.sigmoid(model.decoder(torch.cat([z, noise[:, 1]])))
    logits, features = model.discriminator(torch.cat([x, fakes]))
    p = torch.sigmoid(logits)
    real, recon, prior = p[:b], p[b : 2 * b], p[2 * b :]
    llike = 0.5 * ((features[:b].detach() - features[b : 2 * b]) ** 2).sum(1) + 0.5 * features.shape[1] * LOG_2PI
    if not model.config.recon_fakes:  # the CelebA script's setting: prior samples are the only fakes
        return {"kl": kl.mean(), "llike": llike.mean(), "gen": (-torch.log(prior)).mean(),
                "dis": (-0.5 * torch.log(real) - 0.5 * torch.log(1 - prior)).mean(),
                "llike_through_dis": (0.5 * ((features[:b] - features[b : 2 * b]) ** 2).sum(1)).mean()}
    return {"kl": kl.mean(), "llike": llike.mean(),
            "gen": (-0.5 * (torch.log(recon) + torch.log(prior))).mean(),
            "dis": (-0.5 * torch.log(real) - 0.25 * (torch.log(1 - recon) + torch.log(1 - prior))).mean(),
            "llike_through_dis": (0.5 * ((features[:b] - features[b : 2 * b]) ** 2).sum(1)).mean()}


@pytest.mark.parametrize("recon_fakes", [True, False])
def test_each_group_gets_only_its_own_loss_gradient(recon_fakes):
    """Trainer `step` on the three groups: the encoder gets ∇(KL + L_llike) and no GAN gradient, the decoder
    ∇(γ L_llike + L_gen), the discriminator ∇L_dis and no feature-loss gradient (each checked to be nonzero where
    it would wrongly leak, so the routing is what makes the difference)."""
    # float64: in float32 the two routes' sums differ by a few 1e-6 on some CPUs, which is not what is tested here
    model = tiny(VAEGANConfig(**{**TINY.to_dict(), "recon_fakes": recon_fakes})).double()
    data, noise = batch()
    data, noise = {"x": data["x"].double()}, noise.double()
    groups = param_groups(model)
    assert set(groups) == {"encoder", "decoder", "discriminator"}
    expected_parts = parts(model, data["x"], noise)
    gamma = model.config.gamma
    expected = {"encoder": grads(expected_parts["kl"] + expected_parts["llike"], groups["encoder"]),
                "decoder": grads(gamma * expected_parts["llike"] + expected_parts["gen"], groups["decoder"]),
                "discriminator": grads(expected_parts["dis"], groups["discriminator"])}
    # what would leak without the routing: the GAN loss into the encoder, the feature loss into the discriminator
    assert any(g.abs().max() > 1e-6 for g in grads(expected_parts["gen"], groups["encoder"]))
    assert any(g.abs().max() > 1e-6 for g in grads(expected_parts["llike_through_dis"], groups["discriminator"]))

    optimizers = {name: torch.optim.SGD(params, lr=0.0) for name, params in groups.items()}
    step(model.loss(data, noise), optimizers, groups, clip=1e9)
    for name, params in groups.items():
        for p, e in zip(params, expected[name], strict=True):
            got = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(got, e, rtol=1e-9, atol=1e-12, msg=f"group {name}")


def test_the_feature_loss_is_taken_at_the_configured_discriminator_block():
    data, noise = batch()
    for layer in (1, 2, 3, 4):
        model = tiny(VAEGANConfig(**{**TINY.to_dict(), "feature_layer": layer})).eval()
        assert model.discriminator is not None
        with torch.no_grad():
            mu, log_sigma = model.encoder(data["x"])
            recon = torch.sigmoid(model.decoder(mu + torch.exp(log_sigma) * noise[:, 0]))
            f_real, f_recon = data["x"], recon
            for block in list(model.discriminator.blocks)[:layer]:
                f_real, f_recon = block(f_real), block(f_recon)
            d = f_real[0].numel()
            expected = 0.5 * ((f_real - f_recon) ** 2).flatten(1).sum(1) + 0.5 * d * LOG_2PI
            got = model.loss(data, noise).terms["reconstruction"]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_equilibrium_rule_skips_the_winning_player():
    model = tiny(VAEGANConfig(**{**TINY.to_dict(), "margin": 0.35})).train()

    def rule(real: float, fake: float) -> tuple[bool, bool]:  # the batch's mean costs, as one-image batches
        return model._equilibrium(torch.tensor([real]), torch.tensor([fake]))

    assert rule(0.2, 0.7) == (False, True)  # the discriminator wins on real images: it sits out
    assert rule(0.7, 0.2) == (False, True)
    assert rule(1.2, 0.7) == (True, False)  # it loses badly: the decoder sits out
    assert rule(0.7, 0.7) == (True, True)
    assert rule(0.2, 1.2) == (True, True)  # both conditions: never both idle
    model.eval()
    assert rule(0.2, 0.7) == (True, True)  # validation applies no rule


@pytest.mark.parametrize("equilibrium, idle", [(0.2, "decoder"), (3.0, "discriminator")])
def test_the_player_the_rule_benches_is_not_stepped(equilibrium, idle):
    """The model's own costs (≈ 0.7-0.85 here) against a balance point far below or above them: the rule benches
    the decoder (the discriminator is losing) or the discriminator (it is winning); `loss` hands the trainer None
    for exactly that group, and the trainer leaves its weights and Adam moments untouched."""
    model = tiny(VAEGANConfig(**{**TINY.to_dict(), "equilibrium": equilibrium, "margin": 0.01}))
    data, noise = batch()
    groups = param_groups(model)
    optimizers = {name: torch.optim.Adam(params, lr=1e-2) for name, params in groups.items()}
    losses = model.loss(data, noise)
    assert [name for name, loss in losses.minimise.items() if loss is None] == [idle]
    before = {name: [p.detach().clone() for p in groups[name]] for name in groups}
    step(losses, optimizers, groups, clip=10.0)
    for name in groups:
        moved = any(not torch.equal(a, p) for a, p in zip(before[name], groups[name], strict=True))
        assert moved == (name != idle), (name, idle)
        assert (len(optimizers[name].state) == 0) == (name == idle)
    assert losses.terms["dis_updated"].mean().item() == float(idle != "discriminator")
    assert losses.terms["dec_updated"].mean().item() == float(idle != "decoder")


def test_pixel_vae_baseline_bound_matches_a_float64_recomputation():
    """Evaluation: −log N(x | σ(logits), s²) + KL with the kept scale s; training: s² is the batch's mean squared
    error (its optimum) and the kept scale moves 1% of the way to it."""
    config = VAEGANConfig(**{**TINY.to_dict(), "objective": "vae"})
    model = tiny(config)
    model.pixel_log_sigma.fill_(-1.3)
    assert model.discriminator is None and set(param_groups(model)) == {"model"}
    data, noise = batch(config=config)
    m = tiny(config).double().eval()
    x, eps = data["x"].double(), noise.double()
    with torch.no_grad():
        mu, log_sigma = m.encoder(x)
        mean = torch.sigmoid(m.decoder(mu + torch.exp(log_sigma) * eps[:, 0]))
        kl = (0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1) - log_sigma).sum(1)

    def nll(s: float) -> torch.Tensor:
        return (((x - mean) ** 2) / (2 * s**2) + math.log(s) + 0.5 * LOG_2PI).flatten(1).sum(1)

    out = model.eval().loss(data, noise)
    torch.testing.assert_close(out.bound.double(), nll(math.exp(-1.3)) + kl, rtol=1e-5, atol=1e-3)
    out = model.train().loss(data, noise)  # batch norm's batch statistics: the float64 twin runs in train mode too
    with torch.no_grad():
        m.train()
        mu, log_sigma = m.encoder(x)
        mean = torch.sigmoid(m.decoder(mu + torch.exp(log_sigma) * eps[:, 0]))
        kl = (0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1) - log_sigma).sum(1)
    s = (x - mean).square().mean().sqrt().item()
    torch.testing.assert_close(out.minimise["model"].double(), (nll(s) + kl).mean(), rtol=1e-5, atol=1e-3)
    assert nll(s).mean() < nll(s * 1.1).mean() and nll(s).mean() < nll(s / 1.1).mean()  # the optimum, indeed
    torch.testing.assert_close(model.pixel_log_sigma.double(), torch.tensor(-1.3 + 0.01 * (math.log(s) + 1.3),
                                                                             dtype=torch.float64), rtol=0, atol=1e-6)


def test_calibrated_feature_scale_is_the_batch_optimum_in_training_and_the_kept_scale_after():
    """feature_scale "calibrated": −log N(Dis_l(x) | Dis_l(x̃), s²I) with s² the batch's mean squared feature error
    in training (moving the kept scale 1% of the way) and the kept s in evaluation, against a float64 recomputation;
    "unit" (the default) stays the paper's s = 1, and only the calibrated model carries the buffer."""
    config = VAEGANConfig(**{**TINY.to_dict(), "feature_scale": "calibrated"})
    assert tiny().feature_log_sigma is None and "feature_log_sigma" not in tiny().state_dict()
    model = tiny(config)
    model.feature_log_sigma.fill_(-0.7)
    data, noise = batch(config=config)
    twin = tiny(config).double()
    x, eps = data["x"].double(), noise.double()

    def squared_errors(train: bool) -> torch.Tensor:
        twin.train(train)
        with torch.no_grad():
            mu, log_sigma = twin.encoder(x)
            z = torch.cat([mu + torch.exp(log_sigma) * eps[:, 0], eps[:, 1]])
            _, features = twin.discriminator(torch.cat([x, torch.sigmoid(twin.decoder(z))]))
        b = x.shape[0]
        return (features[:b] - features[b : 2 * b]) ** 2

    def nll(sq: torch.Tensor, s: float) -> torch.Tensor:
        return (sq / (2 * s**2) + math.log(s) + 0.5 * LOG_2PI).sum(1)

    sq = squared_errors(train=False)
    out = model.eval().loss(data, noise)
    torch.testing.assert_close(out.terms["reconstruction"].double(), nll(sq, math.exp(-0.7)), rtol=1e-5, atol=1e-3)
    out = model.train().loss(data, noise)
    sq = squared_errors(train=True)
    s = sq.mean().sqrt().item()
    torch.testing.assert_close(out.terms["reconstruction"].double(), nll(sq, s), rtol=1e-5, atol=1e-3)
    assert nll(sq, s).mean() < nll(sq, 1.1 * s).mean() and nll(sq, s).mean() < nll(sq, s / 1.1).mean()
    torch.testing.assert_close(model.feature_log_sigma.double(), torch.tensor(-0.7 + 0.01 * (math.log(s) + 0.7),
                                                                              dtype=torch.float64), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="feature_scale"):
        VAEGANConfig(feature_scale="learned")


def test_chunked_prior_images_and_reconstructions_do_not_depend_on_the_chunk():
    """The evaluator's and the trainer's chunked helpers: seeded per sample, so any chunk (even a ragged last one)
    gives the images of one whole-batch call; reconstructions are deterministic Dec(μ(x)) row by row."""
    model = tiny().eval()
    x = batch(7)[0]["x"]
    whole = sample(model, seeds=list(range(7)), keep_canvases=False).images
    for chunk in (1, 3, 7, 500):
        torch.testing.assert_close(prior_images(model, 7, chunk=chunk), whole, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(reconstructions(model, x, chunk=chunk),
                                   sample(model, images=x, keep_canvases=False).images, rtol=1e-6, atol=1e-6)
    assert prior_images(model, 7, chunk=3).shape == (7, 1, 8, 8)


def test_generation_walks_and_the_registry():
    model = build("vaegan", TINY.to_dict())
    assert isinstance(model, VAEGAN) and model.steps == 1 and model.noise_shape() == (3,)
    model.eval()
    with torch.no_grad():
        noise = torch.randn(5, 3)
        [prior] = list(model.generate(noise))
        assert prior.logits is not None and prior.logits.shape == (5, 1, 8, 8)
        x = torch.rand(2, 1, 8, 8)
        [recon] = list(model.generate(torch.zeros(2, 3), images=x))
        torch.testing.assert_close(recon.logits, model.decoder(model.encode_noise(x)))
        # batch independence in eval mode: one row alone draws what it draws in the batch
        [one] = list(model.generate(noise[:1]))
        torch.testing.assert_close(one.logits, prior.logits[:1])
    with pytest.raises(ValueError, match="no condition"):
        model.generate(noise, captions=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="objective"):
        VAEGANConfig(objective="gan")


@pytest.mark.parametrize("upsample", ["deconv5", "deconv4", "resize"])
def test_each_upsampling_doubles_exactly_and_the_leak_reaches_the_discriminator(upsample):
    """Every decoder upsampling maps the (4·base, H/4, W/4) map to H × W; "resize" has no transposed conv (so no
    uneven kernel overlap); leak > 0 makes the discriminator's activations leaky, 0 keeps the paper's ReLU."""
    config = VAEGANConfig(**{**TINY.to_dict(), "height": 12, "width": 16, "upsample": upsample, "leak": 0.2})
    model = tiny(config)
    assert model.decoder(torch.randn(2, config.z_size)).shape == (2, 1, 12, 16)
    transposed = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert {"deconv5": [5, 5], "deconv4": [4, 4], "resize": []}[upsample] == [m.kernel_size[0] for m in transposed]
    assert model.discriminator is not None
    slopes = [m.negative_slope for m in model.discriminator.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert slopes == [0.2] * 4
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in tiny().modules())
    with pytest.raises(ValueError, match="upsample"):
        VAEGANConfig(upsample="bilinear")
    with pytest.raises(ValueError, match="leak"):
        VAEGANConfig(leak=1.0)
