"""AVB: Adversarial Variational Bayes with adaptive contrast (Mescheder, Nowozin & Geiger, ICML 2017), and its VAE
baseline on the same networks.

The encoder is implicit, z = f(x, ε), so log q(z | x) has no closed form. An adversary T(x, z) is trained with the
logistic loss to tell (x, z ~ q(z | x)) from (x, z ~ p(z)); at its optimum T*(x, z) = log q(z | x) − log p(z)
(Prop. 1), which stands in for the KL term of the ELBO:

    adversary:            minimise  E[−log σ(T(x, z_q))] + E[−log(1 − σ(T(x, z_p)))]
    encoder and decoder:  minimise  E_q[−log p(x | z) + T(x, z)]

Adaptive contrast: the encoder's mean μ(x) and variance σ²(x) are known (below), so the adversary compares the
standardised z̄ = (z − μ) / σ with N(0, I) instead, and with the Gaussian r_α(z | x) = N(μ, σ²) (moments under
stop-gradient) the KL term is the official code's `KL = Td + logr − logz`:

    log q(z | x) − log p(z) = [log q(z̄ | x) − log N(z̄; 0, I)] + log r_α(z | x) − log p(z),   T(x, z̄) ≈ the bracket.

`contrast="full"` (not in the paper) takes r_α = N(μ, Σ(x)) with the encoder's exact covariance Σ(x) (below) instead
of its diagonal, and z̄ = L⁻¹(z − μ) with L Lᵀ = Σ(x): the identity holds for any Gaussian r, and with this one
log r_α charges a q(z | x) squeezed onto a thin subspace for its small determinant, where the diagonal charges
only the per-dimension variances and leaves T to find the rest (the collapse measured in
docs/experiments/2026-12-05-avb-rate.md: T underestimated the KL there by 55 nats or more).

T is an MLP's output f(x, z) plus ½‖z‖², as the official code adds to T ("adds log p(z)" in the notes: it is
−log p(z) up to a constant, the sign that makes T* = log q − log p), so f itself only has to learn log q. Its x
arrives through the adversary's own conv trunk and joins z in the MLP's first layer (the official avb_mnist_32_ac
adversary reads x with a fully connected net instead; `adversary_conv=()` gives that x-path here), so T sees both x
and z, which a port whose adversary saw z alone could not (its optimum is then log q(z) − log p(z), the aggregate
posterior's).

Encoder (official `conv0_ac`): conv trunk → z₀(x) and a_i(x) = elu(linear − 5) + 1 > 0, i = 1..n; n basis noises
ε_i ~ N(0, I_eps), each through its own ELU MLP to v_i; z = z₀ + Σ_i a_i ⊙ v_i. The v_i do not depend on x and are
independent of one another, so the moments of z given x are exact in x:

    E[z | x] = z₀(x) + Σ_i a_i(x) ⊙ E[v_i],      Var[z | x] = Σ_i a_i(x)² ⊙ Var[v_i],
    Cov[z | x] = Σ_i diag(a_i(x)) Cov[v_i] diag(a_i(x)).

E[v_i] and Var[v_i] are Monte Carlo estimates, as in the official code, which takes `tf.nn.moments` of v_i over the
training batch's own 128 draws of ε_i (fresh each step, so its r_α changes with the batch). Here they come from a
fixed set of `basis_samples` draws of each ε_i (the buffer `basis_nodes`, drawn from a fixed seed whenever the
model is built, not saved: 8 MB of a 32-d checkpoint that the seed gives back; tests/models/test_avb.py pins their
checksum, so a torch whose generator drew other nodes fails there): r_α is then one Gaussian per x, the same in
training, in validation, in every L_k pass and in every worker batch, and not a function of the samples it weighs,
which is what makes log_weight a valid importance weight.
The estimate's error only moves r_α; the AC identity above holds for any Gaussian r, T absorbs the difference.
σ² = Var[z | x] + `var_floor` everywhere (the official standardises with √(Var + 1e-4) but takes log r with Var).

Bound (the CPU protocol of papers.md §5.3): log_weight is log p(x, z) − log r_α(z | x) at z ~ r_α (diagonal or full,
as the model trained), so models.bounds' L_k with r_α as the proposal is a valid lower bound on log p(x) whatever T
learned; `Losses.bound` is the approximate −ELBO through T (reconstruction + KL term), which validation and early
stopping use and which is no bound.

`objective="vae"` is the issue's baseline: the same trunk with a Gaussian head (μ, log σ), analytic KL, one optimiser
group, no adversary, the same decoder.

Training follows the official update: both groups' gradients come from one forward pass and both step together
(training/train.py `step` backpropagates each group's loss into that group only). Departures from the official code:
losses are in nats per image, not divided by the 784 pixels (Adam hardly notices, but the trainer's gradient clip
does); the adversary's x-path is convolutional (above); the moments' basis draws are fixed (above); batch norm keeps
PyTorch's defaults (momentum 0.1, not slim's decay 0.999).

Noise layout of `loss` (AVB): one row (n·eps_dim + Z,) = [ε_1, ..., ε_n, z_p], z_p the prior draw the adversary
contrasts with (N(0, I) in z̄ space with AC); VAE: ε (Z,) of q. `noise_shape` (Z,) is a prior z for `generate`
and ε of r_α for `log_weight`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.elbo import bernoulli_nll
from models.family import Losses, Step
from models.gaussian import kl_standard_normal, log_density, log_standard_density, reparameterise

_OBJECTIVES = ("avb", "vae")
_CONTRASTS = ("diagonal", "full")
_NODES_SEED = 20170301  # the fixed basis-noise draws behind E[v_i], Var[v_i]: any seed, but always the same one
_A_SHIFT = 5.0  # a_i = elu(linear − 5) + 1: starts near e^−5, so q starts nearly deterministic (conv0_ac)
_LEAK = 0.2  # the official adversary's leaky ReLU
_CPU_ROWS = 128  # decoder rows a slice in Decoder.nll on the CPU: 50–200 ran alike (2-core Xeon), 5,000 at half speed


@dataclass(frozen=True)
class AVBConfig:
    """Defaults: the official avb_mnist_32_ac (conv0_ac encoder, conv0 decoder, df_dim = gf_dim = 64)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    z_size: int = 32
    eps_dim: int = 64  # size of each basis noise ε_i
    n_basis: int = 32  # basis vectors v_i
    basis_hidden: tuple[int, ...] = (128, 128, 128)  # each ε_i -> v_i ELU MLP (conv0_ac's three 128s)
    basis_samples: int = 1024  # fixed draws of each ε_i estimating E[v_i], Var[v_i] (official: the batch's 128)
    adaptive_contrast: bool = True  # T sees z̄ against N(0, I), KL adds log r_α − log p; False: T sees z, KL = T
    contrast: str = "diagonal"  # r_α's covariance: the paper's "diagonal", or "full" (Cov[z | x] exact, module doc)
    objective: str = "avb"  # "avb", or "vae": the Gaussian-encoder baseline (analytic KL, no adversary)
    conv: tuple[int, ...] = (64, 128, 256, 512)  # encoder trunk channels, 5×5, df_dim × (1, 2, 4, 8)
    deconv: tuple[int, ...] = (512, 256, 128, 64)  # decoder channels before the output conv, gf_dim × (8, 4, 2, 1)
    adversary_conv: tuple[int, ...] = (64, 128, 256, 512)  # the adversary's own trunk for x; () reads raw pixels
    adversary_hidden: tuple[int, ...] = (1024, 1024, 1024)  # its MLP on (x features, z): the official widths
    var_floor: float = 1e-4  # added to Var[z | x]: the official z_std = √(Var + 1e-4)

    def __post_init__(self) -> None:
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.contrast not in _CONTRASTS:
            raise ValueError(f"contrast must be one of {_CONTRASTS}, got {self.contrast!r}")
        if self.contrast == "full" and not (self.adaptive_contrast and self.objective == "avb"):
            raise ValueError("contrast='full' is a kind of adaptive contrast: it needs objective 'avb' and "
                             "adaptive_contrast")
        for name in ("conv", "deconv", "basis_hidden", "adversary_conv", "adversary_hidden"):
            # JSON hands back lists; a tuple keeps the config hashable and ==
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not (self.conv and self.deconv and self.adversary_hidden):
            raise ValueError("conv, deconv and adversary_hidden need at least one layer each")
        if min(self.z_size, self.eps_dim, self.n_basis, *self.conv, *self.deconv, *self.basis_hidden,
               *self.adversary_conv, *self.adversary_hidden) < 1:
            raise ValueError("sizes and widths must be >= 1")
        if self.basis_samples < 2:
            raise ValueError(f"basis_samples must be >= 2 to estimate a variance, got {self.basis_samples}")
        if not self.var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {self.var_floor}")
        scale = 2 ** _strides(self.height, self.width, len(self.deconv)).count(2)
        if self.height % scale or self.width % scale:
            raise ValueError(f"height and width must be multiples of {scale} (the decoder's stride-2 stages), got "
                             f"{self.height}×{self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


def _strides(height: int, width: int, layers: int) -> list[int]:
    """conv0's strides: 2 on the last n of `layers` convs, n = ⌊log₂ size⌋ − 2 within [0, layers] (28: 1, 1, 2, 2)."""
    down = max(min(int(math.log2(min(height, width))) - 2, layers), 0)
    return [1] * (layers - down) + [2] * down


def _init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, slim's defaults in the official code."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass(frozen=True, eq=False)
class GaussianProposal:
    """N(mean, Σ) over z, one per row: Σ = diag(σ²) from `log_sigma` (r_α's diagonal contrast, the VAE's q), or
    Σ = L Lᵀ from the lower-triangular `scale_tril` L (the full contrast); exactly one of the two is set. mean (B, Z),
    log_sigma (B, Z), scale_tril (B, Z, Z); z and ε are (B, Z), or (B, m, Z) for m draws of each row."""

    mean: Tensor
    log_sigma: Tensor | None = None
    scale_tril: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.log_sigma is None) == (self.scale_tril is None):
            raise ValueError("a GaussianProposal takes exactly one of log_sigma and scale_tril")

    def _rows(self, t: Tensor, like: Tensor) -> Tensor:
        """A per-row tensor (B, ...) lined up with z or ε of (B, m, Z): (B, 1, ...); unchanged for (B, Z)."""
        return t.unsqueeze(1) if like.dim() == self.mean.dim() + 1 else t

    def sample(self, eps: Tensor) -> Tensor:
        """ε ~ N(0, I) -> z = μ + σ ⊙ ε, or μ + L ε."""
        mean = self._rows(self.mean, eps)
        if self.log_sigma is not None:
            return reparameterise(mean, self._rows(self.log_sigma, eps), eps)
        assert self.scale_tril is not None
        if eps.dim() == 3:  # (B, m, Z): one (Z, Z) @ (Z, m) product a row
            return mean + (self.scale_tril @ eps.mT).mT
        return mean + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def whiten(self, z: Tensor) -> Tensor:
        """z -> z̄ = (z − μ) / σ, or L⁻¹(z − μ): N(0, I) when z ~ N(μ, Σ), and zero-mean with identity covariance
        whenever z has mean μ and covariance Σ (AC's standardisation)."""
        centred = z - self._rows(self.mean, z)
        if self.log_sigma is not None:
            return centred * torch.exp(-self._rows(self.log_sigma, z))
        assert self.scale_tril is not None
        if z.dim() == 3:  # (B, m, Z): one solve a row with m right-hand sides
            return torch.linalg.solve_triangular(self.scale_tril, centred.mT, upper=False).mT
        return torch.linalg.solve_triangular(self.scale_tril, centred.unsqueeze(-1), upper=False).squeeze(-1)

    def whiten_and_log_prob(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, [m,] Z) -> z̄ (B, [m,] Z) and log N(z; μ, Σ) (B, [m]), the full covariance's from one solve."""
        z_bar = self.whiten(z)
        if self.log_sigma is not None:
            return z_bar, log_density(z, self._rows(self.mean, z), self._rows(self.log_sigma, z))
        assert self.scale_tril is not None
        half_log_det = torch.log(torch.diagonal(self.scale_tril, dim1=-2, dim2=-1)).sum(-1)  # ½ log det Σ
        return z_bar, log_standard_density(z_bar) - self._rows(half_log_det, z)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; μ, Σ): (B, [m,] Z) -> (B, [m])."""
        if self.log_sigma is not None:  # without whitening: the same arithmetic as before the full contrast existed
            return log_density(z, self._rows(self.mean, z), self._rows(self.log_sigma, z))
        return self.whiten_and_log_prob(z)[1]


class Trunk(nn.Module):
    """x (B, C, H, W) in [0, 1] -> features (B, F): conv0's 5×5 convs on 2x − 1, ELU after each, batch norm after all
    but the last when `norm` (the encoder; the adversary has none); no convs: the pixels themselves."""

    def __init__(self, c: AVBConfig, widths: tuple[int, ...], norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        n_in = c.channels
        strides = _strides(c.height, c.width, len(widths))
        for i, (n_out, stride) in enumerate(zip(widths, strides, strict=True)):
            bn = norm and i < len(widths) - 1
            layers += [nn.Conv2d(n_in, n_out, 5, stride, padding=2, bias=not bn),
                       *([nn.BatchNorm2d(n_out)] if bn else []), nn.ELU()]
            n_in = n_out
        self.net = nn.Sequential(*layers, nn.Flatten())
        down = 2 ** strides.count(2)
        self.size = n_in * math.ceil(c.height / down) * math.ceil(c.width / down)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(2 * x - 1)


class BasisNets(nn.Module):
    """n independent ELU MLPs ε_i -> v_i, their weights stacked so all n run as one batched matmul:
    ε (n, N, eps_dim) -> v (n, N, Z). Each is Glorot-initialised on its own fan-in and fan-out."""

    def __init__(self, n: int, sizes: tuple[int, ...]):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = math.sqrt(6 / (n_in + n_out))
            self.weights.append(nn.Parameter(torch.empty(n, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.zeros(n, 1, n_out)))

    def forward(self, eps: Tensor) -> Tensor:
        h = eps
        for j, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if j < len(self.weights) - 1:
                h = F.elu(h)
        return h


@dataclass(eq=False)
class _BasisDraws:
    """What ImplicitEncoder keeps for one set of basis weights: v (n, S, Z) at the fixed nodes, and what it has
    derived from them so far."""

    v: Tensor
    moments: tuple[Tensor, Tensor] | None = None  # E[v_i], Var[v_i] (n, Z) each
    covariances: Tensor | None = None  # Cov[v_i] (n, Z, Z), float64


class ImplicitEncoder(nn.Module):
    """conv0_ac: z = z₀(x) + Σ_i a_i(x) ⊙ v_i(ε_i), with its exact moments given x (module doc)."""

    basis_nodes: Tensor

    def __init__(self, c: AVBConfig):
        super().__init__()
        self.config = c
        self.trunk = Trunk(c, c.conv, norm=True)
        self.z0 = nn.Linear(self.trunk.size, c.z_size)
        self.a = nn.Linear(self.trunk.size, c.n_basis * c.z_size)  # the n heads a_i, side by side
        self.basis = BasisNets(c.n_basis, (c.eps_dim, *c.basis_hidden, c.z_size))
        _init(self)
        nn.init.trunc_normal_(self.z0.weight, std=1e-5, a=-2e-5, b=2e-5)  # the official z0's start
        bound = math.sqrt(6 / (self.trunk.size + c.z_size))  # Glorot per head a_i, not for the stacked n·Z outputs
        nn.init.uniform_(self.a.weight, -bound, bound)
        nodes = torch.randn(c.n_basis, c.basis_samples, c.eps_dim, generator=torch.Generator().manual_seed(_NODES_SEED))
        self.register_buffer("basis_nodes", nodes, persistent=False)  # derived from the seed, so not saved
        self._draws_key: tuple | None = None
        self._draws: _BasisDraws | None = None

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> z₀ (B, Z), a (B, n, Z)."""
        h = self.trunk(x)
        a = F.elu(self.a(h) - _A_SHIFT) + 1
        return self.z0(h), a.view(x.shape[0], self.config.n_basis, self.config.z_size)

    def _basis_draws(self) -> _BasisDraws:
        """v_i at the fixed `basis_nodes` and the statistics computed from them so far, no gradient.

        Kept until a basis weight or the nodes change (in place: their version counters; moved or cast: their
        storage): n × basis_samples MLP passes, which every L_k chunk and worker call would otherwise repeat."""
        key = tuple((t.data_ptr(), t._version) for t in (*self.basis.parameters(), self.basis_nodes))
        if self._draws is None or self._draws_key != key:
            with torch.no_grad():
                self._draws = _BasisDraws(self.basis(self.basis_nodes))
            self._draws_key = key
        return self._draws

    def basis_moments(self) -> tuple[Tensor, Tensor]:
        """E[v_i], Var[v_i] (n, Z) each: mean and unbiased variance over the fixed `basis_nodes`, no gradient."""
        draws = self._basis_draws()
        if draws.moments is None:
            draws.moments = draws.v.mean(1), draws.v.var(1)
        return draws.moments

    def basis_covariances(self) -> Tensor:
        """Cov[v_i] (n, Z, Z) in float64 over the same draws, no gradient: only when asked (the diagonal contrast's
        training steps never need it)."""
        draws = self._basis_draws()
        if draws.covariances is None:
            v = draws.v.double()  # the kept draws themselves when the model is float64: not centred in place
            centred = v - v.mean(1, keepdim=True)
            draws.covariances = torch.einsum("nsz,nsw->nzw", centred, centred) / (draws.v.shape[1] - 1)
        return draws.covariances

    def sample(self, z0: Tensor, a: Tensor, eps: Tensor) -> Tensor:
        """z₀ (B, Z), a (B, n, Z), ε (B, n, eps_dim) -> z (B, Z) = z₀ + Σ_i a_i ⊙ v_i(ε_i)."""
        v = self.basis(eps.transpose(0, 1))  # (n, B, Z)
        return z0 + torch.einsum("bnz,nbz->bz", a, v)

    def moments(self, z0: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """E[z | x], Var[z | x] (B, Z) each, from the coefficients and the basis moments; detached (stop-gradient)."""
        mean_v, var_v = self.basis_moments()
        z0, a = z0.detach(), a.detach()
        return z0 + torch.einsum("bnz,nz->bz", a, mean_v), torch.einsum("bnz,nz->bz", a * a, var_v)

    @torch.no_grad()
    def covariance(self, a: Tensor) -> Tensor:
        """Cov[z | x] (B, Z, Z) in float64: Σ_i diag(a_i) Cov[v_i] diag(a_i), Cov[v_i] over the same fixed basis draws
        as `basis_moments`, so its diagonal is `moments`' variance; detached (stop-gradient)."""
        a = a.double()
        return torch.einsum("bnz,bnw,nzw->bzw", a, a, self.basis_covariances())

    def scale_tril(self, a: Tensor) -> Tensor:
        """L (B, Z, Z), lower-triangular with L Lᵀ = Cov[z | x] + var_floor · I (the full contrast's Σ): a Cholesky
        in float64, since a collapsed q makes Σ ill-conditioned; detached, in a's dtype."""
        cov = self.covariance(a)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return torch.linalg.cholesky(cov + self.config.var_floor * eye).to(a.dtype)


class GaussianEncoder(nn.Module):
    """The baseline's q(z | x) = N(μ, σ²): the same trunk, then linear heads μ and log σ (the official VAE conv0)."""

    def __init__(self, c: AVBConfig):
        super().__init__()
        self.trunk = Trunk(c, c.conv, norm=True)
        self.head = nn.Linear(self.trunk.size, 2 * c.z_size)
        _init(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> μ, log σ (B, Z) each."""
        mu, log_sigma = self.head(self.trunk(x)).chunk(2, dim=1)
        return mu, log_sigma


class Decoder(nn.Module):
    """z (B, Z) -> Bernoulli logits (B, C, H, W), conv0: linear + ELU to a (deconv[0], H/2^s, W/2^s) map, then 5×5
    transposed convs with the encoder's strides reversed (ELU after all but the last, which outputs C channels)."""

    def __init__(self, c: AVBConfig):
        super().__init__()
        strides = _strides(c.height, c.width, len(c.deconv))[::-1]
        down = 2 ** strides.count(2)
        self.shape = (c.deconv[0], c.height // down, c.width // down)
        self.project = nn.Sequential(nn.Linear(c.z_size, math.prod(self.shape)), nn.ELU())
        layers: list[nn.Module] = []
        for i, stride in enumerate(strides):
            last = i == len(strides) - 1
            n_out = c.channels if last else c.deconv[i + 1]
            layers.append(nn.ConvTranspose2d(c.deconv[i], n_out, 5, stride, padding=2, output_padding=stride - 1))
            if not last:
                layers.append(nn.ELU())
        self.up = nn.Sequential(*layers)
        _init(self)

    def forward(self, z: Tensor) -> Tensor:
        # channels-last: oneDNN's transposed convs skip a layout copy a layer (CPU, 2 threads: 1.8x on 5,000 rows)
        h = self.project(z).view(-1, *self.shape).contiguous(memory_format=torch.channels_last)
        *body, last = self.up
        for layer in body:
            h = layer(h)
        assert isinstance(last, nn.ConvTranspose2d)
        if h.device.type == "cpu" and _by_taps(last) and not torch.is_grad_enabled():  # (training: slower)
            return _stride_one_transposed(last, h)
        return last(h)

    def nll(self, z: Tensor, x: Tensor) -> Tensor:
        """−log p(x | z) per row, z (N, Z), x (N, C, H, W) -> (N,). On the CPU the rows are decoded in slices whose
        activations stay in cache: L_5000's 5,000 rows at once ran at half the speed (bench/README.md)."""
        rows = _CPU_ROWS if z.device.type == "cpu" else len(z)
        if len(z) <= rows:
            return bernoulli_nll(self(z), x)
        return torch.cat([bernoulli_nll(self(z[i : i + rows]), x[i : i + rows]) for i in range(0, len(z), rows)])


def _by_taps(conv: nn.ConvTranspose2d) -> bool:
    """Whether _stride_one_transposed computes this layer: stride 1, no dilation, groups or output padding."""
    return (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.output_padding == (0, 0) and all(isinstance(p, int) for p in conv.padding))  # not "same"


def _stride_one_transposed(conv: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """conv(x) for a stride-1 transposed conv (_by_taps) as one matmul and k_h·k_w shifted adds, for inference:
    oneDNN's took a quarter of the decoder's CPU time for the 32 → 1 channel 5×5 last layer (bench/README.md). Its
    backward through the slice adds was slower than oneDNN's, so training keeps the module."""
    b, c, h, w = x.shape
    (kh, kw), c_out = conv.kernel_size, conv.out_channels
    ph, pw = (int(p) for p in conv.padding)  # pixels (_by_taps)
    # each kernel tap's contribution of every input pixel: (C_out·kh·kw, B·H·W), one contiguous map per tap
    taps = conv.weight.reshape(c, c_out * kh * kw).t() @ x.permute(0, 2, 3, 1).reshape(-1, c).t()
    taps = taps.view(c_out, kh, kw, b, h, w)
    full = x.new_zeros(b, c_out, h + kh - 1, w + kw - 1)  # input pixel (u, v) reaches (u + i, v + j) by tap (i, j)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i : i + h, j : j + w] += taps[:, i, j].transpose(0, 1)
    out = full[:, :, ph : h + kh - 1 - ph, pw : w + kw - 1 - pw]  # padding p crops p pixels a side
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


class Adversary(nn.Module):
    """T(x, z) = f(x, z) + ½‖z‖², f a leaky-ReLU MLP on the adversary's x features joined with z in its first layer
    (a Linear of the concatenation, kept as two): x (B, C, H, W), z (B, Z) -> T (B,). ½‖z‖² is the official term,
    −log N(z; 0, I) less its constant ½·Z·log 2π (f's output bias holds that), so f learns log q and a constant."""

    def __init__(self, c: AVBConfig):
        super().__init__()
        widths = c.adversary_hidden
        self.trunk = Trunk(c, c.adversary_conv, norm=False)
        self.x_in = nn.Linear(self.trunk.size, widths[0])
        self.z_in = nn.Linear(c.z_size, widths[0], bias=False)
        layers: list[nn.Module] = [nn.LeakyReLU(_LEAK)]
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(_LEAK)]
        out = nn.Linear(widths[-1], 1)
        self.mlp = nn.Sequential(*layers, out)
        _init(self)
        nn.init.trunc_normal_(out.weight, std=1e-5, a=-2e-5, b=2e-5)  # the official T's start: f ≈ 0

    def features(self, x: Tensor) -> Tensor:
        """x's share of the first layer, (B, widths[0]): computed once for both of a batch's contrasts."""
        return self.x_in(self.trunk(x))

    def head(self, features: Tensor, z: Tensor) -> Tensor:
        return self.mlp(features + self.z_in(z)).squeeze(-1) + 0.5 * z.square().sum(-1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.head(self.features(x), z)


def adversary_cost(t_q: Tensor, t_p: Tensor) -> Tensor:
    """The adversary's logistic loss per example, (B,): −log σ(T) on (x, z ~ q) plus −log(1 − σ(T)) on
    (x, z ~ p); its minimiser is T* = log q(z | x) − log p(z) (Prop. 1)."""
    return F.softplus(-t_q) + F.softplus(t_p)


class AVB(nn.Module):
    Config = AVBConfig
    kind = "avb"
    modes = {"none": "images", "images": "images", "walk": "frames"}  # models/family.py: condition -> output
    data = "images"
    likelihood = True  # log_weight under the Gaussian r_α: L_k and scoring
    log_weight_broadcasts = True  # models/family.py: r_α once a row for all of its L_k samples
    bound_name = "−ELBO ({objective}; for avb approximate: its KL is the adversary's estimate)"
    # The official avb_mnist_32_ac: Adam β1 = 0.5, lr 5e-5 for encoder and decoder and 1e-4 for the adversary (the
    # trainer multiplies the run's lr by lr_scale per group); 55k / 5k of MNIST's training digits, dynamically
    # binarised. It trains a fixed 2.5 M steps; the approximate bound through T is no signal to stop on.
    train_defaults = {"optimizer": "adam", "kl_warmup": 0, "val_holdout": 5000, "patience": 1_000_000}
    optimizer_options = {"betas": (0.5, 0.999)}
    default_lr = 5e-5  # the run's lr without --lr (a resume keeps the saved one)
    lr_scale = {"adversary": 2.0}
    # (selector, measurement, published value) for cards: papers.md §5 and its addendum; all by AIS, not L_k, and
    # unconfirmed (Table 3 could not be read), so a figure to read beside ours, not one measured the same way
    paper_results = [
        ({"dataset": "mnist", "objective": "avb", "z_size": 32, "adaptive_contrast": True}, "−L_5000",
         "≈ 80.2 by AIS (AVB + AC, unconfirmed)"),
        ({"dataset": "mnist", "objective": "avb", "z_size": 8}, "−L_5000", "≈ 83.6 by AIS (AVB, unconfirmed)"),
        ({"dataset": "mnist", "objective": "vae", "z_size": 32}, "−L_5000", "≈ 81.7 by AIS (VAE, unconfirmed)"),
        ({"dataset": "mnist", "objective": "vae", "z_size": 8}, "−L_5000", "≈ 83.7 by AIS (VAE, unconfirmed)"),
    ]

    def __init__(self, config: AVBConfig | None = None):
        super().__init__()
        self.config = c = config or AVBConfig()
        self.encoder: ImplicitEncoder | GaussianEncoder
        self.encoder = ImplicitEncoder(c) if c.objective == "avb" else GaussianEncoder(c)
        self.decoder = Decoder(c)
        self.adversary = Adversary(c) if c.objective == "avb" else None

    @property
    def bound_is_approximate(self) -> bool:
        """Whether `Losses.bound` is no bound (AVB's KL is T's estimate): evaluation then carries nothing from it."""
        return self.config.objective == "avb"

    @property
    def steps(self) -> int:
        return 1  # a one-shot decoder

    @property
    def z_size(self) -> int:
        return self.config.z_size

    def noise_shape(self) -> tuple[int, ...]:
        return (self.z_size,)  # a prior z for generate; ε of r_α for log_weight

    def loss_noise_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.n_basis * c.eps_dim + c.z_size,) if c.objective == "avb" else (c.z_size,)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.adversary is None:
            return {"model": list(self.parameters())}
        return {"model": [*self.encoder.parameters(), *self.decoder.parameters()],
                "adversary": list(self.adversary.parameters())}

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def contrast(self, z0: Tensor, a: Tensor) -> GaussianProposal:
        """r_α(z | x) from the encoder's coefficients: the Gaussian with its exact mean and its variance (the paper's
        diagonal) or covariance (`contrast="full"`), floored by var_floor; detached (stop-gradient)."""
        assert isinstance(self.encoder, ImplicitEncoder)
        mean, var = self.encoder.moments(z0, a)
        if self.config.contrast == "full":
            return GaussianProposal(mean, scale_tril=self.encoder.scale_tril(a))
        return GaussianProposal(mean, log_sigma=0.5 * torch.log(var + self.config.var_floor))

    def proposal(self, x: Tensor) -> GaussianProposal:
        """x (B, C, H, W) -> the Gaussian proposal of L_k: r_α(z | x) for AVB, q(z | x) itself for the baseline."""
        if isinstance(self.encoder, GaussianEncoder):
            mu, log_sigma = self.encoder(x)
            return GaussianProposal(mu, log_sigma=log_sigma)
        return self.contrast(*self.encoder.coefficients(x))

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """log p(x, z) − log r(z | x) at z = sample(ε) ~ r (r_α for AVB, q for the baseline): batch["x"]
        (B, C, H, W) in {0, 1}, noise ε (B, Z) -> (B,), or (B, m, Z) -> (B, m) (log_weight_broadcasts: the encoder
        runs once a row). A valid importance weight, so L_k ≤ log p(x)."""
        x = batch["x"]
        r = self.proposal(x)
        z = r.sample(noise.to(x.device))
        if z.dim() == 3:  # m draws a row: the decoder sees B·m rows, x repeated to line up with them
            b, m = z.shape[:2]
            pixels = x.unsqueeze(1).expand(b, m, *x.shape[1:]).reshape(b * m, *x.shape[1:])
            return (-self.decoder.nll(z.reshape(b * m, -1), pixels).view(b, m)
                    + log_standard_density(z) - r.log_prob(z))
        return -self.decoder.nll(z, x) + log_standard_density(z) - r.log_prob(z)

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        """batch["x"] (B, C, H, W), noise (B, *loss_noise_shape) -> the objective's groups (module doc).

        AVB: "model" minimises the mean of reconstruction + β·KL term, "adversary" its logistic loss, both from one
        pass. `bound` = reconstruction + KL term, the approximate −ELBO (T is only an estimate of log q − log p);
        `terms` log both parts and the adversary's cost. The baseline: the −ELBO with the analytic KL, a true bound.
        """
        x = batch["x"]
        noise = noise.to(x.device)
        if isinstance(self.encoder, GaussianEncoder):
            return self._vae(x, noise, kl_weight)
        assert self.adversary is not None
        c = self.config
        b = x.shape[0]
        eps, z_p = noise[:, : c.n_basis * c.eps_dim].view(b, c.n_basis, c.eps_dim), noise[:, c.n_basis * c.eps_dim :]
        z0, a = self.encoder.coefficients(x)
        z = self.encoder.sample(z0, a, eps)
        log_p = log_standard_density(z)
        if c.adaptive_contrast:
            seen, log_r = self.contrast(z0, a).whiten_and_log_prob(z)  # z̄ (against N(0, I)), log r_α(z | x)
        else:
            seen, log_r = z, log_p  # T alone is the KL term
        features = self.adversary.features(x)
        t_q, t_p = self.adversary.head(features, seen), self.adversary.head(features, z_p)
        kl = t_q + log_r - log_p  # `KL = Td + logr − logz`: ≈ log q(z | x) − log p(z) at the sample
        reconstruction = bernoulli_nll(self.decoder(z), x)
        cost = adversary_cost(t_q, t_p)
        return Losses(minimise={"model": (reconstruction + kl_weight * kl).mean(), "adversary": cost.mean()},
                      bound=(reconstruction + kl).detach(),
                      terms={"reconstruction": reconstruction.detach(), "kl": kl.detach(),
                             "adversary_cost": cost.detach()})

    def _vae(self, x: Tensor, eps: Tensor, kl_weight: float) -> Losses:
        assert isinstance(self.encoder, GaussianEncoder)
        mu, log_sigma = self.encoder(x)
        z = reparameterise(mu, log_sigma, eps)
        kl = kl_standard_normal(mu, log_sigma)
        reconstruction = bernoulli_nll(self.decoder(z), x)
        log_ratio = log_density(z, mu, log_sigma) - log_standard_density(z)
        return Losses(minimise={"model": (reconstruction + kl_weight * kl).mean()},
                      bound=(reconstruction + kl).detach(), log_weight=(-reconstruction - log_ratio).detach(),
                      terms={"reconstruction": reconstruction.detach(), "kl": kl.detach()})

    def encode_noise(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> E[z | x] (B, Z): the decoder maps z itself, so a walk between images runs between means."""
        return self.proposal(x.to(self._device())).mean

    def generate(self, noise: Tensor, **conditions: Tensor) -> Iterator[Step]:
        """One Step with logits (B, C, H, W): the decoder at z = noise (B, Z) ~ N(0, I), or with `images` (B, C, H, W)
        in {0, 1} the reconstruction at E[z | x] (noise then unused)."""
        unknown = sorted(set(conditions) - {"images"})
        if unknown:
            raise ValueError(f"AVB.generate takes no condition(s) {unknown}; known: ['images']")
        z = self.encode_noise(conditions["images"]) if "images" in conditions else noise.to(self._device())
        return iter((Step(logits=self.decoder(z)),))  # not a generator function: bad conditions raise at the call

    @torch.no_grad()
    def active_units(self, x: Tensor, threshold: float = 1e-2, chunk: int = 500) -> tuple[tuple[int], tuple[Tensor]]:
        """A_u = Var_x(E[z_u | x]) over the N images (Burda et al. §5.2): x (N, C, H, W) -> ((active count,), ((Z,),)),
        the images taken `chunk` at a time (the conv trunk is wide)."""
        means = torch.cat([self.encode_noise(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
        variances = means.var(0, correction=0)
        return (int((variances > threshold).sum()),), (variances,)
