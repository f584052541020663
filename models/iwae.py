"""IWAE: the importance weighted autoencoder (Burda, Grosse & Salakhutdinov, ICLR 2016), one or two stochastic layers.

Generative model p(x, h) = p(h_L) Π_l p(h_l | h_{l+1}) p(x | h_1) with p(h_L) = N(0, I), Gaussian p(h_l | h_{l+1})
and Bernoulli p(x | h_1); recognition model q(h | x) = q(h_1 | x) Π_l q(h_{l+1} | h_l), all diagonal Gaussians
with σ = exp(·) (§5). With w_i = p(x, h_i) / q(h_i | x) and h_i ~ q, the objective is (eq. 8)

    L_k(x) = E[log (1/k) Σ_i w_i],   ∇ L_k = E[Σ_i w̃_i ∇ log w_i],  w̃_i = w_i / Σ_j w_j   (eq. 14),

and the "VAE with k samples" baseline weighs every ∇ log w_i by 1/k instead. L_k itself lives in models.bounds
(shared with evaluation's −L_5000), so training and evaluation cannot drift apart.

ε layout, everywhere (log_weight, loss, generate, decode_top): one vector (Z,) = [ε_1, ..., ε_L], layer 1 first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bounds import log_mean_exp
from models.family import Losses, Step
from models.gaussian import log_density, log_standard_density, reparameterise

# The paper's MNIST/Omniglot networks (§5): layers -> (tanh widths per stochastic layer, latent sizes).
_PAPER: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    1: ((200,), (50,)),  # x -> 200 -> 200 -> h1 (50)
    2: ((200, 100), (100, 50)),  # x -> 200 -> 200 -> h1 (100) -> 100 -> 100 -> h2 (50)
}
_DEPTH = 2  # tanh layers in every network between two stochastic layers (the paper's 200-200 and 100-100)
_OBJECTIVES = ("iwae", "vae")


@dataclass(frozen=True)
class IWAEConfig:
    """Defaults: the paper's 2-stochastic-layer MNIST model trained with L_50 (Table 1's best row)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    layers: int = 2  # stochastic layers L
    k: int = 50  # importance samples per example in the training objective
    objective: str = "iwae"  # "iwae": maximise L_k; "vae": the paper's baseline, the mean of the k log-weights
    hidden: tuple[int, ...] = ()  # tanh width of the networks into/out of each stochastic layer; () = the paper's
    latent: tuple[int, ...] = ()  # units per stochastic layer, h1 first; () = the paper's

    def __post_init__(self) -> None:
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.k < 1 or self.layers < 1:
            raise ValueError(f"need k >= 1 and layers >= 1, got k={self.k}, layers={self.layers}")
        for index, name in enumerate(("hidden", "latent")):
            value = getattr(self, name)
            if not value:
                if self.layers not in _PAPER:
                    raise ValueError(f"the paper has no {self.layers}-layer model: give hidden and latent")
                value = _PAPER[self.layers][index]
            value = tuple(int(v) for v in value)  # JSON hands back lists; a tuple keeps the config hashable and ==
            if len(value) != self.layers:
                raise ValueError(f"{name}={value} needs one entry per stochastic layer ({self.layers})")
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        return asdict(self)


def _tanh_mlp(n_in: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(_DEPTH):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.Tanh()]
    return nn.Sequential(*layers)


class GaussianLayer(nn.Module):
    """A diagonal Gaussian over n_out units given n_in: tanh trunk, then linear heads for μ and log σ (σ = exp)."""

    def __init__(self, n_in: int, width: int, n_out: int):
        super().__init__()
        self.trunk = _tanh_mlp(n_in, width)
        self.mean = nn.Linear(width, n_out)
        self.log_sigma = nn.Linear(width, n_out)  # the released code's exp(Linear) σ, kept in log space

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """h: (N, n_in) -> μ, log σ: (N, n_out)."""
        t = self.trunk(h)
        return self.mean(t), self.log_sigma(t)


class BernoulliLayer(nn.Module):
    """p(x | h_1): tanh trunk, then a linear map to the pixels' Bernoulli logits."""

    def __init__(self, n_in: int, width: int, pixels: int):
        super().__init__()
        self.trunk = _tanh_mlp(n_in, width)
        self.logits = nn.Linear(width, pixels)

    def forward(self, h: Tensor) -> Tensor:
        """h: (N, n_in) -> logits (N, pixels)."""
        return self.logits(self.trunk(h))


class IWAE(nn.Module):
    Config = IWAEConfig
    kind = "iwae"
    modes = {"none": "images", "images": "images", "walk": "frames"}  # models/family.py: condition -> output
    data = "images"
    likelihood = True
    log_weight_broadcasts = True  # models/family.py: q(h_1 | x) once for all of a row's samples
    bound_name = "−L_{k}"  # formatted with the config: the bound of the training objective's k
    # Adam with the paper's ε = 1e-4; no KL warm-up; the last 400 training digits validate, as the released code.
    train_defaults = {"optimizer": "adam", "kl_warmup": 0, "val_holdout": 400}
    optimizer_options = {"eps": 1e-4}
    # (selector, measurement, published value) for cards: Burda et al. 2016, Tables 1 (dynamic) and 3 (fixed)
    paper_results = [
        ({"dataset": "mnist", "layers": 2, "k": 50, "objective": "iwae"}, "−L_5000", "82.90, 26+7 active (Table 1)"),
        ({"dataset": "mnist", "layers": 2, "k": 5, "objective": "iwae"}, "−L_5000", "83.89, 21+5 active (Table 1)"),
        ({"dataset": "mnist", "layers": 2, "k": 1}, "−L_5000", "85.33, 16+5 active (Table 1)"),
        ({"dataset": "mnist", "layers": 1, "k": 50, "objective": "iwae"}, "−L_5000", "84.78, 25 active (Table 1)"),
        ({"dataset": "mnist", "layers": 1, "k": 1}, "−L_5000", "86.76, 19 active (Table 1)"),
        ({"dataset": "binarized-mnist", "layers": 2, "k": 50, "objective": "iwae"}, "−L_5000", "85.32 (Table 3)"),
        ({"dataset": "binarized-mnist", "layers": 1, "k": 50, "objective": "iwae"}, "−L_5000", "87.10 (Table 3)"),
    ]

    def __init__(self, config: IWAEConfig | None = None):
        super().__init__()
        self.config = c = config or IWAEConfig()
        sizes = (c.channels * c.height * c.width, *c.latent)  # h_0 = x
        # encoder[l]: q(h_{l+1} | h_l); decoder[l]: p(h_{l+1} | h_{l+2}) (1-based h), mirroring its q's widths.
        self.encoder = nn.ModuleList(GaussianLayer(sizes[l], c.hidden[l], sizes[l + 1]) for l in range(c.layers))
        self.decoder = nn.ModuleList(GaussianLayer(sizes[l + 1], c.hidden[l], sizes[l]) for l in range(1, c.layers))
        self.output = BernoulliLayer(c.latent[0], c.hidden[0], sizes[0])
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)  # Glorot uniform, as the released nnet.Linear.random
                nn.init.zeros_(module.bias)

    @property
    def steps(self) -> int:
        return 1  # a one-shot decoder

    @property
    def z_size(self) -> int:
        return sum(self.config.latent)

    def noise_shape(self) -> tuple[int, ...]:
        return (self.z_size,)  # [ε_1, ..., ε_L] for one sample of h

    def loss_noise_shape(self) -> tuple[int, ...]:
        return (self.config.k, self.z_size)  # k samples of h per example

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _terms(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, H, W), ε (N, Z) or (N, k, Z) -> −log p(x | h_1) and log q(h | x) − log p(h) at h = h(x, ε), each
        (N,) or (N, k). With k samples, q(h_1 | x) runs once per image and its k samples share it: run k times,
        its 784-200-200 trunk was 45% of a step's FLOPs at k = 50."""
        eps = noise.to(x.device).split(self.config.latent, dim=-1)
        pixels = x.flatten(1)
        h = pixels if noise.dim() == 2 else pixels[:, None]  # (N, 1, D) broadcasts over the k samples
        samples = []
        log_q = x.new_zeros(())
        for q, e in zip(self.encoder, eps, strict=True):
            mu, log_sigma = q(h)
            h = reparameterise(mu, log_sigma, e)  # sequential: h_{l+1} ~ q(· | h_l), the sampled h_l
            log_q = log_q + log_density(h, mu, log_sigma)
            samples.append(h)
        log_p = log_standard_density(samples[-1])
        for p, below, above in zip(self.decoder, samples[:-1], samples[1:], strict=True):
            mu, log_sigma = p(above)
            log_p = log_p + log_density(below, mu, log_sigma)
        logits = self.output(samples[0])  # (N, [k,] D)
        # −log p(x | h_1) = Σ_d softplus(l_d) − x_d l_d (x may be grey: the cross-entropy), the x-part as one batched
        # matmul against x instead of a pass over the (N, k, D) logits
        x_dot_l = (logits.view(len(pixels), -1, pixels.shape[1]) @ pixels[:, :, None]).view(logits.shape[:-1])
        return F.softplus(logits).sum(-1) - x_dot_l, log_q - log_p

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """log p(x, h) − log q(h | x) at one h per row: batch["x"] (B, C, H, W) in [0, 1], noise (B, Z) -> (B,);
        or at k per row: noise (B, k, Z) -> (B, k) (log_weight_broadcasts)."""
        reconstruction, log_ratio = self._terms(batch["x"], noise)
        return -reconstruction - log_ratio

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        """batch["x"] (B, C, H, W), noise (B, k, Z) -> the config's objective over k samples per example.

        k is noise.shape[1] (loss_noise_shape gives config.k). `bound` is −L_k for either objective: the VAE
        baseline's k samples still give a valid, tighter bound to report. `terms` are k-sample means, so
        reconstruction + kl = −mean log-weight, the k-sample −ELBO. Everything but `minimise` is detached.
        """
        # kl_weight is ignored: the IWAE paper uses no KL warm-up, and a β < 1 would make L_k no bound at all.
        x = batch["x"]
        reconstruction, log_ratio = self._terms(x, noise)  # (B, k) each
        log_w = -reconstruction - log_ratio
        l_k = log_mean_exp(log_w, dim=1)  # eq. 8; autograd gives eq. 14's Σ w̃_i ∇ log w_i
        objective = l_k if self.config.objective == "iwae" else log_w.mean(1)
        return Losses(minimise={"model": -objective.mean()}, bound=-l_k.detach(), log_weight=log_w[:, 0].detach(),
                      terms={"reconstruction": reconstruction.mean(1).detach(), "kl": log_ratio.mean(1).detach()})

    def decode(self, h1: Tensor) -> Tensor:
        """h_1 (B, latent[0]) -> Bernoulli logits of p(x | h_1), (B, C, H, W)."""
        c = self.config
        return self.output(h1).view(-1, c.channels, c.height, c.width)

    def decode_top(self, z: Tensor) -> Tensor:
        """ε (B, Z) -> logits (B, C, H, W) by ancestral sampling: h_L = ε_L, h_l = μ_p(h_{l+1}) + σ_p(h_{l+1}) ε_l.

        A deterministic map of ε, so a latent walk can interpolate ε between two seeds and decode each point.
        """
        eps = z.to(self._device()).split(self.config.latent, dim=-1)
        h = eps[-1]  # the prior N(0, I)
        for l in reversed(range(len(self.decoder))):
            mu, log_sigma = self.decoder[l](h)
            h = reparameterise(mu, log_sigma, eps[l])
        return self.decode(h)

    def encode_means(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> [μ_1, ..., μ_L] (B, Z) along the posterior-mean path: μ_{l+1} = mean of q(· | μ_l)."""
        h, means = x.to(self._device()).flatten(1), []
        for q in self.encoder:
            h = q(h)[0]
            means.append(h)
        return torch.cat(means, dim=-1)

    def encode_noise(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> the ε (B, Z) that decode_top maps to the posterior-mean path's h: ε_L = μ_L and
        ε_l = (μ_l − μ_p(μ_{l+1})) / σ_p(μ_{l+1}), so a walk between two images can run in ε like one between seeds."""
        means = self.encode_means(x).split(self.config.latent, dim=-1)
        eps = [means[-1]]
        for l in reversed(range(len(self.decoder))):
            mu, log_sigma = self.decoder[l](means[l + 1])
            eps.insert(0, (means[l] - mu) * torch.exp(-log_sigma))
        return torch.cat(eps, dim=-1)

    def generate(self, noise: Tensor, **conditions: Tensor) -> Iterator[Step]:
        """One Step with logits (B, C, H, W): a prior sample decode_top(noise) for noise (B, Z), or with
        `images` (B, C, H, W) a deterministic reconstruction p(x | h_1 = μ_1(x)) (noise then unused).

        A walk is the caller's: interpolate ε between seeds and call decode_top, the same map as here.
        """
        unknown = sorted(set(conditions) - {"images"})
        if unknown:
            raise ValueError(f"IWAE.generate takes no condition(s) {unknown}; known: ['images']")
        if "images" in conditions:
            logits = self.decode(self.encode_means(conditions["images"])[:, : self.config.latent[0]])
        else:
            logits = self.decode_top(noise)
        return iter((Step(logits=logits),))  # not a generator function: bad conditions raise at the call

    @torch.no_grad()
    def init_output_bias(self, pixel_means: Tensor) -> None:
        """Sets p(x | h_1)'s output bias to logit(training pixel means), (C, H, W), as the released code does,
        so a fresh model starts at the data's marginal instead of spending epochs learning it."""
        bias = self.output.logits.bias
        m = pixel_means.reshape(-1).to(bias).clamp(1e-3, 1 - 1e-3)  # finite logits for all-black/white pixels
        if m.shape != bias.shape:
            raise ValueError(f"pixel_means has {m.numel()} values, the output layer {bias.numel()}")
        bias.copy_(torch.logit(m))

    @torch.no_grad()
    def active_units(self, x: Tensor, threshold: float = 1e-2) -> tuple[tuple[int, ...], tuple[Tensor, ...]]:
        """A_u = Cov_x(E_q[u | x]) per unit (§5.2): x (N, C, H, W) -> (active count per layer, (latent[l],) each).

        A unit is active if A_u > threshold. E_q[h_1 | x] is μ_1(x) exactly; for h_2 this takes μ_2(μ_1(x)), the
        posterior-mean path, rather than E over q(h_1 | x) (the released code uses one sampled h_1): deterministic,
        and equal to the exact value when q(h_1 | x) is narrow. Variances are over the N images (population, ddof 0).
        """
        means = self.encode_means(x).split(self.config.latent, dim=-1)
        variances = tuple(m.var(0, correction=0) for m in means)
        return tuple(int((v > threshold).sum()) for v in variances), variances
