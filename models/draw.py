"""DRAW: a recurrent VAE that paints a canvas over T glimpses (Gregor et al. 2015, §2-3).

Per step (eq. 3-8): x̂ = x − σ(c_{t−1}); r = read(x, x̂, h^dec_{t−1}); h^enc = LSTM^enc([r, h^dec_{t−1}]);
z ~ q(z | h^enc); h^dec = LSTM^dec(z); c_t = c_{t−1} + write(h^dec). Likelihood: Bernoulli(x | σ(c_T)).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from models.attention import Read, Write
from models.elbo import ELBO, bernoulli_nll
from models.family import Losses, Step
from models.gaussian import kl_standard_normal, log_density, log_standard_density, reparameterise
from models.lstm import LSTMCell, LSTMState


@dataclass(frozen=True)
class DRAWConfig:
    """Defaults: the paper's MNIST generation model (Table 3)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    steps: int = 64  # T glimpses
    enc_size: int = 256
    dec_size: int = 256
    z_size: int = 100
    read_n: int = 2  # 2×2 read grid: a small read suffices when the decoder does the drawing
    write_n: int = 5  # 5×5 write patch
    attention: bool = True  # False: read = [x, x̂], write = full-canvas linear map (the paper's ≤ 87.40 model)

    def __post_init__(self) -> None:
        small = [f"{name}={getattr(self, name)}" for name in ("height", "width", "channels", "steps", "enc_size",
                                                             "dec_size", "z_size", "read_n", "write_n")
                 if getattr(self, name) < 1]
        if small:  # steps = 0 would train a model that draws nothing; a size < 1 fails deep in torch
            raise ValueError(f"need every size and the steps ≥ 1: {', '.join(small)}")

    def to_dict(self) -> dict:
        return asdict(self)


class InitialState(nn.Module):
    """A learned LSTM state (h_0, c_0), broadcast over the batch (DRAW treats initial states as biases)."""

    def __init__(self, size: int):
        super().__init__()
        self.h = nn.Parameter(torch.zeros(size))
        self.c = nn.Parameter(torch.zeros(size))

    def forward(self, batch_size: int) -> LSTMState:
        return self.h.expand(batch_size, -1), self.c.expand(batch_size, -1)


class Posterior(nn.Module):
    """The inference network shared by DRAW and alignDRAW: read, encoder LSTM, q(z_t | h^enc_t) (eq. 3-6)."""

    def __init__(self, *, dec_size: int, enc_size: int, z_size: int, channels: int, height: int, width: int,
                 read_n: int | None):
        super().__init__()
        self.read = Read(dec_size, channels, height, width, read_n)
        self.encoder = LSTMCell(self.read.out_features + dec_size, enc_size)
        self.initial = InitialState(enc_size)
        self.q = nn.Linear(enc_size, 2 * z_size)  # μ and log σ of the diagonal Gaussian (eq. 6)

    def forward(self, x: Tensor, canvas: Tensor, h_dec: Tensor, state: LSTMState) -> tuple[Tensor, Tensor, LSTMState]:
        """x, canvas: (B, C, H, W); h_dec: h^dec_{t−1} (B, D) -> μ, log σ (B, Z) and the new encoder state."""
        x_hat = x - torch.sigmoid(canvas)  # error image (eq. 3)
        r = self.read(x, x_hat, h_dec)
        state = self.encoder(torch.cat([r, h_dec], dim=1), state)
        mu, log_sigma = self.q(state[0]).chunk(2, dim=1)
        return mu, log_sigma, state


class DRAW(nn.Module):
    Config = DRAWConfig
    kind = "draw"
    modes = {"none": "frames"}  # models/family.py: condition -> output
    data = "images"
    likelihood = True
    train_defaults = {"optimizer": "adam", "kl_warmup": 1000}  # Adam (Gregor et al.); the warm-up: training/config.py
    optimizer_options: dict = {}
    # (selector over dataset and config fields, measurement, published value): the numbers a card sets beside ours
    paper_results = [
        ({"dataset": "binarized-mnist", "attention": True}, "test −ELBO", "≤ 80.97 (Gregor et al. 2015, Table 2)"),
        ({"dataset": "binarized-mnist", "attention": False}, "test −ELBO", "≤ 87.40 (Gregor et al. 2015, Table 2)"),
    ]

    def __init__(self, config: DRAWConfig | None = None):
        super().__init__()
        self.config = c = config or DRAWConfig()
        read_n, write_n = (c.read_n, c.write_n) if c.attention else (None, None)
        self.posterior = Posterior(dec_size=c.dec_size, enc_size=c.enc_size, z_size=c.z_size,
                                   channels=c.channels, height=c.height, width=c.width, read_n=read_n)
        self.decoder = LSTMCell(c.z_size, c.dec_size)
        self.decoder_initial = InitialState(c.dec_size)
        self.write = Write(c.dec_size, c.channels, c.height, c.width, write_n)
        self.canvas0 = nn.Parameter(torch.zeros(c.channels, c.height, c.width))  # c_0, a learned bias

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def z_size(self) -> int:
        return self.config.z_size

    def noise_shape(self) -> tuple[int, ...]:
        return (self.steps, self.z_size)  # one ε_t per glimpse

    loss_noise_shape = noise_shape

    def loss(self, batch: Mapping[str, Tensor], noise: Tensor, *, kl_weight: float = 1.0) -> Losses:
        return elbo_losses(self(batch["x"], noise=noise), kl_weight)

    def log_weight(self, batch: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        return self(batch["x"], noise=noise).log_weight

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None, noise: Tensor | None = None) -> ELBO:
        """x: (B, C, H, W) in [0, 1] -> the ELBO's terms, one z sample per step (eq. 9-12).

        ε (B, T, Z) comes from `noise` when given (so data-parallel ranks can share one draw), else `generator`.
        """
        b = x.shape[0]
        h_dec, c_dec = self.decoder_initial(b)
        enc_state = self.posterior.initial(b)
        canvas = self.canvas0.expand(b, -1, -1, -1)
        if noise is None:
            noise = torch.randn(b, self.steps, self.z_size, generator=generator)
        eps = noise.to(x.device)
        kls, log_ratios = [], []
        for t in range(self.steps):
            mu, log_sigma, enc_state = self.posterior(x, canvas, h_dec, enc_state)
            z = reparameterise(mu, log_sigma, eps[:, t])
            kls.append(kl_standard_normal(mu, log_sigma))
            log_ratios.append(log_density(z, mu, log_sigma) - log_standard_density(z))
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            canvas = canvas + self.write(h_dec)[0]
        return ELBO(bernoulli_nll(canvas, x), torch.stack(kls, 1), torch.stack(log_ratios, 1))

    def generate(self, noise: Tensor) -> Iterator[Step]:
        """Decoder only, z_t = ε_t ~ N(0, I): noise (B, T, Z) -> one Step per glimpse."""
        b = noise.shape[0]
        h_dec, c_dec = self.decoder_initial(b)
        # written in place (models.family.Step); a clone even at b = 1, where expand alone would alias c_0
        canvas = self.canvas0.expand(b, -1, -1, -1).clone(memory_format=torch.contiguous_format)
        decoder = self.decoder.stepper()
        for t in range(self.steps):
            h_dec, c_dec = decoder(noise[:, t], (h_dec, c_dec))
            window = self.write.add_to(canvas, h_dec)
            yield Step(logits=canvas, window=window.box() if window is not None else None)


def elbo_losses(elbo: ELBO, kl_weight: float = 1.0) -> Losses:
    """The DRAW family's contract terms: −ELBO (β-weighted KL during a warm-up) as the one group's loss."""
    return Losses(minimise={"model": elbo.annealed_loss(kl_weight)}, bound=elbo.nll_bound, log_weight=elbo.log_weight,
                  terms={"reconstruction": elbo.reconstruction, "kl": elbo.kl.sum(1)})
