"""The Neural Statistician (Edwards & Storkey, ICLR 2017): a VAE over sets, for new samples and few-shot labels.

From a few examples of a concept it draws new samples of it, and it classifies a drawing among classes given by
a few examples each.

Generative process for a set D = {x_1..x_S}: c ~ p(c) = N(0, I); z_i ~ p(z | c); x_i ~ p(x | z_i, c) (Bernoulli).
Inference: the statistic network q(c | D) embeds every item with the shared encoder, maps it through one layer,
averages over the set (so q(c | D) is invariant to order and defined for any set size) and maps the mean to a
Gaussian; q(z | x, c) per item. The dataset-level ELBO (§3):

    log p(D) ≥ Σ_i [E log p(x_i | z_i, c) − KL(q(z_i | x_i, c) ‖ p(z_i | c))] − KL(q(c | D) ‖ p(c)).

Few-shot classification (§5.2): a query x goes to the class k whose context posterior is nearest in KL,
argmin_k KL(q(c | {x}) ‖ q(c | D_k)).

Shapes: a batch of sets is (B, S, C, H, W); `set_mask` (B, S) marks real items where sets are padded to one S.
ε layout of one training example (a set of S): [ε_c (c), ε_z item 1 (z), ..., ε_z item S]; of one generated
image: [ε_c, ε_z]. Nothing here depends on B or S, so any set size from 1 up serves (the paper trains on 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.elbo import bernoulli_nll
from models.family import Losses, Step
from models.gaussian import kl_diagonal, kl_standard_normal, log_density, log_standard_density, reparameterise


@dataclass(frozen=True)
class StatisticianConfig:
    """Defaults: the released Omniglot model (conormdurkan/neural-statistician, said to match the paper)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    sample_size: int = 5  # items per training set
    widths: tuple[int, ...] = (64, 128, 256)  # conv channels of the encoder's 3 stages (28 -> 14 -> 7 -> 4 px)
    convs: int = 3  # 3×3 convolutions per stage, the last with stride 2
    hidden: int = 256  # width of every fully connected layer
    layers: int = 3  # residual FC layers after pooling, and in q(z | x, c) and p(z | c)
    c_dim: int = 512  # context
    z_dim: int = 16  # per-item latent
    # batch norm after every conv and FC layer, and one over each Gaussian head's [μ, log σ²] (the released code's
    # "global" batch norm, which keeps their scale in check); off in the first checkpoints, which predate it
    batch_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # JSON hands back lists
        if len(self.widths) != 3 or self.convs < 1 or self.sample_size < 1:
            raise ValueError(f"need 3 encoder widths, convs >= 1, sample_size >= 1; got {self}")
        if self.height % 8 not in (0, 4) or self.width % 8 not in (0, 4):
            raise ValueError("height and width must halve three times to whole pixels (28 -> 14 -> 7 -> 4)")

    @property
    def feature_size(self) -> tuple[int, int]:
        """Spatial size after the three stride-2 stages (padding 1): ⌈x/8⌉, 4 for 28."""
        return -(-self.height // 8), -(-self.width // 8)

    def to_dict(self) -> dict:
        return asdict(self)


def _norm2d(channels: int, on: bool) -> list[nn.Module]:
    """A BatchNorm2d where the config asks for one, else nothing (no placeholder: older checkpoints' keys stay)."""
    return [nn.BatchNorm2d(channels)] if on else []


def _stage(c_in: int, c_out: int, convs: int, norm: bool = False) -> list[nn.Module]:
    """`convs` 3×3 convolutions with ELU, the last halving the size (stride 2, padding 1)."""
    out: list[nn.Module] = []
    for i in range(convs):
        out += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride=2 if i == convs - 1 else 1, padding=1),
                *_norm2d(c_out, norm), nn.ELU()]
    return out


class SharedEncoder(nn.Module):
    """x (N, C, H, W) -> features (N, widths[-1] · 4 · 4): the conv stack both q(c | D) and q(z | x, c) read."""

    def __init__(self, c: StatisticianConfig):
        super().__init__()
        chans = (c.channels, *c.widths)
        self.net = nn.Sequential(*[m for i in range(3) for m in _stage(chans[i], chans[i + 1], c.convs,
                                                                        c.batch_norm)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class ResidualFC(nn.Module):
    """`layers` fully connected ELU layers with skip connections (the released code's residual blocks)."""

    def __init__(self, width: int, layers: int, norm: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        # None when off: no placeholder modules, so older checkpoints' keys stay
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(layers)) if norm else None

    def forward(self, h: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            e = layer(h)
            h = h + F.elu(self.norms[i](e) if self.norms is not None else e)
        return h


class GaussianHead(nn.Module):
    """h (N, width) -> μ, log σ (N, out): a diagonal Gaussian, log σ as models.gaussian takes it."""

    def __init__(self, width: int, out: int, norm: bool = False):
        super().__init__()
        self.mean = nn.Linear(width, out)
        self.log_sigma = nn.Linear(width, out)
        # one mean and variance over all 2·out parameters of the batch, eps and momentum as released
        self.norm = nn.BatchNorm1d(1, eps=1e-3, momentum=1e-2) if norm else None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self.mean(h), self.log_sigma(h)
        if self.norm is None:
            return mu, log_sigma
        # over [μ, log σ²] as released (log σ would double the spread of log σ², widening σ's range e-fold)
        mu, log_var = self.norm(torch.cat([mu, 2 * log_sigma], -1).unsqueeze(1)).squeeze(1).chunk(2, dim=-1)
        return mu, log_var / 2


class StatisticNetwork(nn.Module):
    """q(c | D): per-item layer, mean over the set's real items, residual MLP, Gaussian over c."""

    def __init__(self, features: int, c: StatisticianConfig):
        super().__init__()
        self.item = nn.Linear(features, c.hidden)
        self.item_norm = nn.BatchNorm1d(c.hidden) if c.batch_norm else None
        self.post = ResidualFC(c.hidden, c.layers, c.batch_norm)
        self.head = GaussianHead(c.hidden, c.c_dim, c.batch_norm)

    def forward(self, h: Tensor, set_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """h (B, S, F), set_mask (B, S) or None (all real) -> μ, log σ (B, c_dim)."""
        e = self.item(h)
        if self.item_norm is not None:  # per item: its statistics are the batch's items' (the running ones in eval)
            e = self.item_norm(e.flatten(0, 1)).view_as(e)
        e = F.elu(e)
        if set_mask is None:
            pooled = e.mean(1)
        else:
            m = set_mask.to(e.dtype).unsqueeze(-1)
            pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)  # padding items never reach c
        return self.head(self.post(pooled))


class Statistician(nn.Module):
    Config = StatisticianConfig
    kind = "statistician"
    modes = {"none": "images", "image_set": "images", "few_shot": "labels"}  # models/family.py: condition -> output
    data = "image_sets"
    likelihood = False  # its bound is per set, not per image: no per-image scoring mode
    bound_name = "−ELBO per set"
    # Adam at 1e-3 as the released code; the trainer's KL warm-up stands in for its reconstruction up-weighting.
    train_defaults = {"optimizer": "adam", "kl_warmup": 0}
    optimizer_options: dict = {}
    pixels = "binary"
    # (selector, measurement, published value) for cards: the paper's table as quoted by the prototypical-networks
    # and MAML papers (Omniglot) and by ashysheya/neural-stat (MNIST); then that reproduction's own numbers
    paper_results = [
        ({"dataset": "omniglot"}, "Omniglot 5-way 1-shot", "98.1 % (a reproduction: 95.7 %)"),
        ({"dataset": "omniglot"}, "Omniglot 5-way 5-shot", "99.5 % (98.5 %)"),
        ({"dataset": "omniglot"}, "Omniglot 20-way 1-shot", "93.2 % (85.6 %)"),
        ({"dataset": "omniglot"}, "Omniglot 20-way 5-shot", "98.1 % (95.5 %)"),
        ({"dataset": "omniglot"}, "MNIST 10-way 1-shot", "78.6 % (70.2 %)"),
        ({"dataset": "omniglot"}, "MNIST 10-way 5-shot", "93.2 % (87.6 %)"),
    ]

    def __init__(self, config: StatisticianConfig | None = None):
        super().__init__()
        self.config = c = config or StatisticianConfig()
        fh, fw = c.feature_size
        features = c.widths[-1] * fh * fw
        self.encoder = SharedEncoder(c)
        self.statistic = StatisticNetwork(features, c)
        # q(z | x, c): the item's features and the context, summed after one linear map each (released code)
        self.inference_x = nn.Linear(features, c.hidden)
        self.inference_c = nn.Linear(c.c_dim, c.hidden)
        self.inference = nn.Sequential(ResidualFC(c.hidden, c.layers, c.batch_norm),
                                       GaussianHead(c.hidden, c.z_dim, c.batch_norm))
        # p(z | c)
        self.prior = nn.Sequential(nn.Linear(c.c_dim, c.hidden), nn.ELU(), ResidualFC(c.hidden, c.layers, c.batch_norm),
                                   GaussianHead(c.hidden, c.z_dim, c.batch_norm))
        # p(x | z, c): FC to the encoder's last feature map, then the encoder mirrored with transposed convs
        self.decode_z = nn.Linear(c.z_dim, c.hidden)
        self.decode_c = nn.Linear(c.c_dim, c.hidden)
        self.decode_fc = nn.Linear(c.hidden, features)
        self.decoder = nn.Sequential(*self._deconv_stack())
        self.pixel_bias = nn.Parameter(torch.zeros(c.channels, c.height, c.width))  # logit of the pixel means

    def _deconv_stack(self) -> list[nn.Module]:
        """4 -> 7 -> 14 -> 28 for 28 px: each stage a stride-2 transposed conv (kernel 4; the first trims a row
        and column when the size is odd) and convs − 1 3×3 convs; then a 1×1 conv to the pixels' logits."""
        c = self.config
        chans = (*reversed(c.widths), c.widths[0])
        sizes = [(c.height, c.width), (-(-c.height // 2), -(-c.width // 2)), (-(-c.height // 4), -(-c.width // 4))]
        out: list[nn.Module] = []
        for i in range(3):
            target = sizes[2 - i]
            out += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1), _Crop(*target),
                    *_norm2d(chans[i + 1], c.batch_norm), nn.ELU()]
            for _ in range(c.convs - 1):
                out += [nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1), *_norm2d(chans[i + 1], c.batch_norm),
                        nn.ELU()]
        out.append(nn.Conv2d(chans[-1], c.channels, 1))
        return out

    @property
    def steps(self) -> int:
        return 1  # a one-shot decoder

    def noise_shape(self) -> tuple[int, ...]:
        return (self.config.c_dim + self.config.z_dim,)  # [ε_c, ε_z] of one generated image

    def loss_noise_shape(self) -> tuple[int, ...]:
        return (self.config.c_dim + self.config.sample_size * self.config.z_dim,)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # --- the networks ---------------------------------------------------------------------------------------

    def context(self, sets: Tensor, set_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(c | D): sets (B, S, C, H, W), set_mask (B, S) or None -> μ, log σ (B, c_dim)."""
        b, s = sets.shape[:2]
        h = self.encoder(sets.flatten(0, 1)).view(b, s, -1)
        return self.statistic(h, set_mask)

    def decode(self, z: Tensor, c: Tensor) -> Tensor:
        """z (N, z_dim), c (N, c_dim) -> Bernoulli logits (N, C, H, W) of p(x | z, c)."""
        cfg = self.config
        fh, fw = cfg.feature_size
        h = F.elu(self.decode_fc(F.elu(self.decode_z(z) + self.decode_c(c))))
        return self.decoder(h.view(-1, cfg.widths[-1], fh, fw)) + self.pixel_bias

    def _split(self, noise: Tensor, s: int) -> tuple[Tensor, Tensor]:
        """(B, c + S·z) -> ε_c (B, c), ε_z (B·S, z)."""
        c = self.config
        if noise.shape[-1] != c.c_dim + s * c.z_dim:
            raise ValueError(f"noise has {noise.shape[-1]} values per set; sets of {s} need {c.c_dim + s * c.z_dim}")
        return noise[:, : c.c_dim], noise[:, c.c_dim:].reshape(-1, c.z_dim)

    def _terms(self, sets: Tensor, noise: Tensor, set_mask: Tensor | None) -> dict[str, Tensor]:
        """Every per-set term of the ELBO and of the log importance weight at one (c, z) sample, each (B,)."""
        b, s = sets.shape[:2]
        eps_c, eps_z = self._split(noise.to(sets.device), s)
        h = self.encoder(sets.flatten(0, 1))
        c_mu, c_ls = self.statistic(h.view(b, s, -1), set_mask)
        c = reparameterise(c_mu, c_ls, eps_c)
        c_items = c.repeat_interleave(s, 0)  # (B·S, c_dim): item (b, i) at row b·S + i
        zq_mu, zq_ls = self.inference(F.elu(self.inference_x(h) + self.inference_c(c_items)))
        z = reparameterise(zq_mu, zq_ls, eps_z)
        zp_mu, zp_ls = self.prior(c_items)
        mask = torch.ones(b, s, device=sets.device) if set_mask is None else set_mask.to(sets.device, sets.dtype)

        def per_set(v: Tensor) -> Tensor:
            return (v.view(b, s) * mask).sum(1)  # padding items add nothing

        return {
            "reconstruction": per_set(bernoulli_nll(self.decode(z, c_items), sets.flatten(0, 1))),
            "kl_z": per_set(kl_diagonal(zq_mu, zq_ls, zp_mu, zp_ls)),
            "kl_c": kl_standard_normal(c_mu, c_ls),
            "log_ratio_z": per_set(log_density(z, zq_mu, zq_ls) - log_density(z, zp_mu, zp_ls)),
            "log_ratio_c": log_density(c, c_mu, c_ls) - log_standard_density(c),
            "items": mask.sum(1),
        }

    # --- the contract ---------------------------------------------------------------------------------------

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        """batch["x"] (B, S, C, H, W) in [0, 1] (optional batch["set_mask"] (B, S)), noise (B, c + S·z) -> the
        dataset ELBO. `bound` is −ELBO per set in nats; the scalar minimised is per item (−ELBO / S), so the
        gradient scale does not grow with the set size; kl_weight < 1 scales both KLs during a warm-up."""
        t = self._terms(batch["x"], noise, batch.get("set_mask"))
        kl = t["kl_z"] + t["kl_c"]
        bound = t["reconstruction"] + kl
        objective = (t["reconstruction"] + kl_weight * kl) / t["items"]
        log_weight = -t["reconstruction"] - t["log_ratio_z"] - t["log_ratio_c"]
        return Losses(minimise={"model": objective.mean()}, bound=bound.detach(), log_weight=log_weight.detach(),
                      terms={"reconstruction": t["reconstruction"].detach(), "kl": kl.detach(),
                             "kl_z": t["kl_z"].detach(), "kl_c": t["kl_c"].detach()})

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """log p(D, c, z) − log q(c, z | D) at one sample per set: (B,) nats; its mean over ε is the ELBO."""
        t = self._terms(batch["x"], noise, batch.get("set_mask"))
        return -t["reconstruction"] - t["log_ratio_z"] - t["log_ratio_c"]

    def generate(self, noise: Tensor, **conditions: Tensor) -> Iterator[Step]:
        """One Step with logits (B, C, H, W) for noise (B, c + z): without conditions c = ε_c from the prior;
        with `sets` (B, S, C, H, W) (and optional `set_mask` (B, S)) c ~ q(c | D) of row b's set, new samples of
        that concept. Then z ~ p(z | c) and the decoder's logits."""
        unknown = sorted(set(conditions) - {"sets", "set_mask"})
        if unknown:
            raise ValueError(f"Statistician.generate takes no condition(s) {unknown}; known: ['sets', 'set_mask']")
        cfg = self.config
        noise = noise.to(self._device())
        eps_c, eps_z = noise[:, : cfg.c_dim], noise[:, cfg.c_dim:]
        if "sets" in conditions:
            mu, log_sigma = self.context(conditions["sets"].to(noise.device), conditions.get("set_mask"))
            c = reparameterise(mu, log_sigma, eps_c)
        else:
            c = eps_c
        z_mu, z_log_sigma = self.prior(c)
        z = reparameterise(z_mu, z_log_sigma, eps_z)
        return iter((Step(logits=self.decode(z, c)),))  # not a generator function: bad conditions raise at the call

    # --- few-shot classification ----------------------------------------------------------------------------

    def class_scores(self, support: Tensor, query: Tensor, support_mask: Tensor | None = None) -> Tensor:
        """support (N, K, C, H, W) (K shots of each of N classes; `support_mask` (N, K) where classes have fewer),
        query (Q, C, H, W) -> scores (Q, N) = −KL(q(c | {x_q}) ‖ q(c | D_n)); the class is the argmax (§5.2)."""
        mu_n, ls_n = self.context(support, support_mask)
        mu_q, ls_q = self.context(query.unsqueeze(1))
        kl = kl_diagonal(mu_q.unsqueeze(1), ls_q.unsqueeze(1), mu_n.unsqueeze(0), ls_n.unsqueeze(0))
        # KL ≥ 0: rounding at a query's own class gave +3e-7 scores (the API says ≤ 0); 0 − KL makes a zero +0
        return 0.0 - kl.clamp(min=0.0)

    @torch.no_grad()
    def init_output_bias(self, pixel_means: Tensor) -> None:
        """Start p(x | z, c) at the training pixels' marginal: pixel_bias = logit(mean), (C, H, W)."""
        m = pixel_means.to(self.pixel_bias).reshape(self.pixel_bias.shape).clamp(1e-3, 1 - 1e-3)
        self.pixel_bias.copy_(torch.logit(m))


class _Crop(nn.Module):
    """Keep the top-left (h, w) of a feature map: a transposed conv doubles 4 to 8 where the encoder had 7."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : self.h, : self.w]
