"""VAE/GAN: a VAE whose reconstruction is measured in a GAN discriminator's features (Larsen et al., ICML 2016).

With z ~ q(z | x), x̃ = Dec(z), x_p = Dec(z_p) for z_p ~ N(0, I), and Dis_l the discriminator's l-th block:

    L_prior = KL(q(z | x) ‖ N(0, I)),   L_llike = −log N(Dis_l(x) | Dis_l(x̃), I)   (§2.2, eq. 8)
    encoder:        minimise L_prior + L_llike
    decoder:        minimise γ·L_llike + L_gen,      L_gen = −½ [log D(x̃) + log D(x_p)]   (non-saturating)
    discriminator:  minimise ½ [−log D(x)] + ½ · ½ [−log(1 − D(x̃)) − log(1 − D(x_p))]

Both reconstructions and prior samples are the discriminator's fakes (the paper); `recon_fakes=False` keeps prior
samples only (the released CelebA script), and the GAN costs then average over those alone. The paper writes the
decoder's GAN term as −L_GAN; we use the non-saturating form every practitioner uses, whose sign cannot be got
wrong. Each group's loss reaches only its own parameters: the trainer backpropagates every group's scalar into that
group alone (training/train.py `step`), so the encoder never sees the GAN gradient and the discriminator never sees
the feature loss (tested on real gradients).

`objective="vae"` is the issue's baseline: the same encoder and decoder, a Gaussian pixel likelihood with one
scale s for every pixel (the batch's optimum in training, a running average in evaluation), one optimiser group,
no discriminator at all.

The equilibrium rule of the released code (aegan.train) is an option: when the discriminator's real or fake cost
falls below `equilibrium − margin` it sits the batch out; when one rises above `equilibrium + margin` the decoder
does; never both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.family import Losses, Step
from models.gaussian import kl_standard_normal, reparameterise

_LOG_2PI = math.log(2 * math.pi)
_OBJECTIVES = ("vaegan", "vae")
_UPSAMPLES = ("deconv5", "deconv4", "resize")
_FEATURE_SCALES = ("unit", "calibrated")
_MOMENTUM = 0.01  # of the baseline's running pixel scale: an average over about the last 100 batches


@dataclass(frozen=True)
class VAEGANConfig:
    """Defaults: a DCGAN-sized 28×28 grey model (the paper's 64×64 CelebA nets with strides adapted, widths ÷ 2)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    z_size: int = 64
    base: int = 32  # conv channels of the first block; later blocks double it (the paper's 64-128-256 at base 64)
    # Discriminator block whose output (after batch norm and ReLU) is Dis_l. The released code's recon_depth 9 is
    # the fourth conv's output before its batch norm; we take the third block's, 7×7 at 28×28 (the fourth is 4×4).
    feature_layer: int = 3
    gamma: float = 1e-2  # γ: weight of L_llike against the GAN term in the decoder's loss
    objective: str = "vaegan"  # "vaegan", or "vae": the pixel-likelihood baseline with the same nets
    equilibrium: float = 0.68  # the released code's balance point of the discriminator's costs (≈ ln 2)
    margin: float = 0.35  # its margin; 0 turns the rule off
    recon_fakes: bool = True  # reconstructions are fakes too (the paper); False: prior samples only (the CelebA script)
    # The decoder's ×2 upsampling: "deconv5" (5×5 transposed conv, the paper's; its kernel overlaps unevenly and
    # prints a checkerboard), "deconv4" (4×4: kernel divisible by the stride) or "resize" (nearest ×2, then a 5×5
    # conv: no uneven overlap at all; Odena et al. 2016, "Deconvolution and checkerboard artifacts").
    upsample: str = "deconv5"
    leak: float = 0.0  # negative slope of the discriminator's ReLUs (DCGAN's 0.2); 0: the paper's plain ReLU
    # The scale of N(Dis_l(x) | Dis_l(x̃), s²I): "unit" (the paper's s = 1) or "calibrated": s² the batch's mean
    # squared feature error in training and its running average after, as the baseline's pixel scale (σ-VAE).
    # A unit scale weighs the feature term against the KL by the discriminator's arbitrary feature magnitude.
    feature_scale: str = "unit"

    def __post_init__(self) -> None:
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if not 1 <= self.feature_layer <= 4:
            raise ValueError(f"feature_layer must be a discriminator block 1..4, got {self.feature_layer}")
        if self.upsample not in _UPSAMPLES:
            raise ValueError(f"upsample must be one of {_UPSAMPLES}, got {self.upsample!r}")
        if self.feature_scale not in _FEATURE_SCALES:
            raise ValueError(f"feature_scale must be one of {_FEATURE_SCALES}, got {self.feature_scale!r}")
        if not 0.0 <= self.leak < 1.0:
            raise ValueError(f"leak must be in [0, 1), got {self.leak}")
        if self.height % 4 or self.width % 4:
            raise ValueError(f"height and width must be multiples of 4 (two stride-2 stages), got "
                             f"{self.height}×{self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(n_in: int, n_out: int, stride: int, norm: bool = True, leak: float = 0.0) -> nn.Sequential:
    """5×5 conv (the paper's every conv), 'same' padding, batch norm, ReLU (leaky when leak > 0)."""
    norms = [nn.BatchNorm2d(n_out)] if norm else []
    act = nn.LeakyReLU(leak) if leak > 0 else nn.ReLU()
    return nn.Sequential(nn.Conv2d(n_in, n_out, 5, stride, padding=2, bias=not norm), *norms, act)


def _cells(c: VAEGANConfig) -> int:
    """Features after three stride-2 stages of 4·base channels: what the encoder's and discriminator's heads read."""
    return 4 * c.base * math.ceil(c.height / 8) * math.ceil(c.width / 8)


def _up(n_in: int, n_out: int, how: str) -> nn.Sequential:
    """A stage that doubles height and width exactly (VAEGANConfig.upsample says how), batch norm, ReLU."""
    if how == "deconv5":
        layers: list[nn.Module] = [nn.ConvTranspose2d(n_in, n_out, 5, 2, padding=2, output_padding=1, bias=False)]
    elif how == "deconv4":
        layers = [nn.ConvTranspose2d(n_in, n_out, 4, 2, padding=1, bias=False)]
    else:
        layers = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(n_in, n_out, 5, padding=2, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(n_out), nn.ReLU())


class Encoder(nn.Module):
    """x (B, C, H, W) -> μ, log σ of q(z | x), (B, Z) each: three stride-2 conv blocks, then a linear head."""

    def __init__(self, c: VAEGANConfig):
        super().__init__()
        b = c.base
        self.trunk = nn.Sequential(_conv(c.channels, b, 2), _conv(b, 2 * b, 2), _conv(2 * b, 4 * b, 2), nn.Flatten())
        self.head = nn.Linear(_cells(c), 2 * c.z_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self.head(self.trunk(x)).chunk(2, dim=1)
        return mu, log_sigma


class Decoder(nn.Module):
    """z (B, Z) -> pixel logits (B, C, H, W): linear to a (4·base, H/4, W/4) map, two upsampling blocks, a conv."""

    def __init__(self, c: VAEGANConfig):
        super().__init__()
        b = c.base
        self.shape = (4 * b, c.height // 4, c.width // 4)
        self.project = nn.Sequential(nn.Linear(c.z_size, math.prod(self.shape), bias=False),
                                     nn.BatchNorm1d(math.prod(self.shape)), nn.ReLU())
        self.up = nn.Sequential(_up(4 * b, 2 * b, c.upsample), _up(2 * b, b, c.upsample))
        self.out = nn.Conv2d(b, c.channels, 5, padding=2)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.up(self.project(z).view(-1, *self.shape)))


class Discriminator(nn.Module):
    """x -> (logit of "real" (B,), Dis_l(x) (B, F)): four conv blocks (stride 1, 2, 2, 2), then a linear head."""

    def __init__(self, c: VAEGANConfig):
        super().__init__()
        b = c.base
        self.blocks = nn.ModuleList([_conv(c.channels, b, 1, norm=False, leak=c.leak), _conv(b, 2 * b, 2, leak=c.leak),
                                     _conv(2 * b, 4 * b, 2, leak=c.leak), _conv(4 * b, 4 * b, 2, leak=c.leak)])
        self.head = nn.Linear(_cells(c), 1)
        self.feature_layer = c.feature_layer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = x
        for i, block in enumerate(self.blocks, 1):
            x = block(x)
            if i == self.feature_layer:
                features = x
        return self.head(x.flatten(1)).squeeze(1), features.flatten(1)


class VAEGAN(nn.Module):
    Config = VAEGANConfig
    pixel_log_sigma: Tensor | None  # buffer: the baseline's kept log s (objective "vae"), else None
    feature_log_sigma: Tensor | None  # buffer: the kept log s of Dis_l (feature_scale "calibrated"), else None
    kind = "vaegan"
    modes = {"none": "images", "images": "images", "walk": "frames"}  # models/family.py: condition -> output
    data = "images"
    likelihood = False  # the feature-space "likelihood" is no density of x, so no L_k and no scoring
    pixels = "grey"  # uploads are read as grey levels in [0, 1], not thresholded to {0, 1}
    # DCGAN's Adam (β1 = 0.5, lr 2e-4) for every group: the paper's RMSprop rate is unconfirmed (papers.md §4.2).
    # A GAN's validation number does not fall steadily, so runs end on --epochs, not on patience.
    train_defaults = {"optimizer": "adam", "kl_warmup": 0, "patience": 1_000_000}
    optimizer_options = {"betas": (0.5, 0.999)}
    default_lr = 2e-4  # the run's lr without --lr (a resume keeps the saved one)
    bound_name = "{objective} −ELBO"  # formatted with the config: vaegan's is in feature space, not nats of x

    def __init__(self, config: VAEGANConfig | None = None):
        super().__init__()
        self.config = c = config or VAEGANConfig()
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.discriminator = Discriminator(c) if c.objective == "vaegan" else None
        # log s of the baseline's N(x | σ(logits), s²), one scale for every pixel: in training the batch's optimum
        # (s² = its mean squared error, the σ-VAE of Rybkin et al. 2021: a learned s crawls there at Adam's 2e-4 a
        # step), kept as a running average that evaluation and the bound use, as batch norm keeps its statistics
        self.register_buffer("pixel_log_sigma", torch.zeros(()) if c.objective == "vae" else None)
        calibrated = c.objective == "vaegan" and c.feature_scale == "calibrated"
        self.register_buffer("feature_log_sigma", torch.zeros(()) if calibrated else None)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)  # DCGAN's initialisation
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def steps(self) -> int:
        return 1  # a one-shot decoder

    @property
    def z_size(self) -> int:
        return self.config.z_size

    def noise_shape(self) -> tuple[int, ...]:
        return (self.z_size,)  # z itself: the prior is N(0, I)

    def loss_noise_shape(self) -> tuple[int, ...]:
        return (2, self.z_size)  # ε of q(z | x), then a prior draw z_p

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.discriminator is None:
            return {"model": list(self.parameters())}
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters()),
                "discriminator": list(self.discriminator.parameters())}

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        raise NotImplementedError("VAE/GAN has no likelihood (likelihood = False)")

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        """batch["x"] (B, C, H, W) grey in [0, 1], noise (B, 2, Z) -> the objective's groups (module doc)."""
        x = batch["x"]
        mu, log_sigma = self.encoder(x)
        z = reparameterise(mu, log_sigma, noise[:, 0].to(x.device))
        kl = kl_standard_normal(mu, log_sigma)
        if self.discriminator is None:
            return self._pixel_vae(x, self.decoder(z), kl, kl_weight)
        b = x.shape[0]
        # One decoder and one discriminator pass over the whole batch, so batch norm sees real and fake together.
        fakes = self.decoder(torch.cat([z, noise[:, 1].to(x.device)]))
        logits, features = self.discriminator(torch.cat([x, torch.sigmoid(fakes)]))
        real, recon, prior = logits.split(b)
        f_real, f_recon = features[:b], features[b : 2 * b]
        # −log N(Dis_l(x) | Dis_l(x̃), s²I); the target side is detached: the feature loss trains the encoder and the
        # decoder to match the features of x, not the discriminator to move them (its group sees none of it anyway).
        llike = self._gaussian_nll(f_real.detach(), f_recon, self.feature_log_sigma)
        d_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="none")
        fake_logits = [recon, prior] if self.config.recon_fakes else [prior]
        fake = torch.stack(fake_logits)  # (fake kinds, B): each kind weighs the same, as the released 0.5 / 0.5
        d_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="none").mean(0)
        gen = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake), reduction="none").mean(0)
        train_dis, train_dec = self._equilibrium(d_real, d_fake)
        minimise: dict[str, Tensor | None] = {
            "encoder": (kl_weight * kl + llike).mean(),
            "decoder": (self.config.gamma * llike + gen).mean() if train_dec else None,
            "discriminator": (0.5 * d_real + 0.5 * d_fake).mean() if train_dis else None,
        }
        bound = (kl + llike).detach()
        terms = {"kl": kl.detach(), "reconstruction": llike.detach(), "d_real_cost": d_real.detach(),
                 "d_fake_cost": d_fake.detach(), "gen_cost": gen.detach(),
                 "dis_updated": torch.full_like(kl, float(train_dis)),
                 "dec_updated": torch.full_like(kl, float(train_dec))}
        return Losses(minimise=minimise, bound=bound, terms=terms)

    def _pixel_vae(self, x: Tensor, logits: Tensor, kl: Tensor, kl_weight: float) -> Losses:
        """The baseline: −log N(x | σ(logits), s²) per image, plus the KL: a −ELBO in nats of the continuous density
        of grey levels; s is the kept scale, or in training the batch's optimum."""
        nll = self._gaussian_nll(x, torch.sigmoid(logits), self.pixel_log_sigma)
        return Losses(minimise={"model": (nll + kl_weight * kl).mean()}, bound=(nll + kl).detach(),
                      terms={"kl": kl.detach(), "reconstruction": nll.detach()})

    def _gaussian_nll(self, target: Tensor, mean: Tensor, kept: Tensor | None) -> Tensor:
        """−log N(target | mean, s²I) per row, summed over the rest: s = 1 when kept is None; else s is the kept
        scale, or in training the batch's optimum, which also moves the kept running average."""
        if kept is None:
            return (0.5 * (target - mean) ** 2 + 0.5 * _LOG_2PI).flatten(1).sum(1)
        log_s = kept
        if self.training:  # the optimal s for this batch; no gradient needed through it: ∂/∂s is 0 at the optimum
            log_s = 0.5 * torch.log((target - mean).detach().square().mean().clamp_min(1e-6))
            with torch.no_grad():
                kept.lerp_(log_s, _MOMENTUM)
        return (0.5 * ((target - mean) * torch.exp(-log_s)) ** 2 + log_s + 0.5 * _LOG_2PI).flatten(1).sum(1)

    def _equilibrium(self, d_real: Tensor, d_fake: Tensor) -> tuple[bool, bool]:
        """(update the discriminator, update the decoder) this batch, by the released code's rule (module doc), from
        the discriminator's per-image costs; read to the host only when the rule applies (a device sync a step)."""
        eq, margin = self.config.equilibrium, self.config.margin
        if margin <= 0 or not self.training:
            return True, True
        real_cost, fake_cost = d_real.mean().item(), d_fake.mean().item()
        train_dis = not (real_cost < eq - margin or fake_cost < eq - margin)
        train_dec = not (real_cost > eq + margin or fake_cost > eq + margin)
        if not (train_dis or train_dec):
            return True, True
        return train_dis, train_dec

    def encode_noise(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> μ(x) (B, Z): the decoder maps z itself, so a walk between images runs between means."""
        return self.encoder(x.to(self._device()))[0]

    def generate(self, noise: Tensor, **conditions: Tensor) -> Iterator[Step]:
        """One Step with logits (B, C, H, W): Dec(noise) for z = noise (B, Z), or with `images` (B, C, H, W) grey
        in [0, 1] the reconstruction Dec(μ(x)) (noise then unused)."""
        unknown = sorted(set(conditions) - {"images"})
        if unknown:
            raise ValueError(f"VAEGAN.generate takes no condition(s) {unknown}; known: ['images']")
        z = self.encode_noise(conditions["images"]) if "images" in conditions else noise.to(self._device())
        return iter((Step(logits=self.decoder(z)),))  # not a generator function: bad conditions raise at the call
