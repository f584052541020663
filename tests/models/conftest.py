import math

import pytest
import torch
import torch.nn.functional as F

from models.aligndraw import AlignDRAW, AlignDRAWConfig
from models.bounds import log_mean_exp, log_weights
from models.draw import DRAW, DRAWConfig

# Small configs keep the suite fast on 2 cores; the paper configs are checked for construction and shapes.
TINY_DRAW = DRAWConfig(height=12, width=10, steps=6, enc_size=32, dec_size=32, z_size=8, read_n=3, write_n=4)
TINY_ALIGN = AlignDRAWConfig(vocab_size=15, height=16, width=16, steps=5, enc_size=32, dec_size=32, z_size=8,
                             read_n=4, write_n=4, embed_size=12, lang_size=10, align_size=16)


@pytest.fixture
def tiny_draw() -> DRAW:
    torch.manual_seed(0)
    return DRAW(TINY_DRAW)


@pytest.fixture
def tiny_align() -> AlignDRAW:
    torch.manual_seed(0)
    return AlignDRAW(TINY_ALIGN)


def random_captions(batch: int, max_len: int, vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, K) with padding id 0, lengths (B,) in 1..max_len."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=g)
    ids = torch.randint(1, vocab_size, (batch, max_len), generator=g)
    ids[torch.arange(max_len) >= lengths[:, None]] = 0
    return ids, lengths


def block_images(batch: int, height: int, width: int) -> torch.Tensor:
    """Binary images each holding one filled rectangle at its own place: (B, 1, H, W).

    Eight such images take ~2 nats to tell apart, so a model that learns drives −ELBO far below its starting
    ~0.69 nats per pixel; random pixels would not allow that (their information content is the floor).
    """
    x = torch.zeros(batch, 1, height, width)
    for i in range(batch):
        top, left = (i * 3) % (height - 4), (i * 5) % (width - 4)
        x[i, 0, top : top + 4, left : left + 4] = 1
    return x


def log_px_by_quadrature(decoder_logits, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ p(x | z) N(z; 0, 1) dz for a 1-d latent, on a fine grid in float64: decoder_logits maps the
    grid (G, 1) to Bernoulli logits (G, ...), x (N, ...) binary -> (N,). Independent of models.bounds."""
    grid = torch.linspace(-10, 10, 20_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        logits = decoder_logits(grid).flatten(1)
    log_prior = -0.5 * grid[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    step = math.log(float(grid[1, 0] - grid[0, 0]))
    return torch.stack([torch.logsumexp(log_prior - F.binary_cross_entropy_with_logits(
        logits, row.double().flatten().expand_as(logits), reduction="none").sum(1), 0) + step for row in x])


def assert_lk_closes_on(model, x: torch.Tensor, log_px: torch.Tensor, max_stderr: float, k: int = 2000) -> None:
    """The mean log-weight (an ELBO) lies below log p(x) and L_k within 4 standard errors of it (delta method), each
    standard error under max_stderr so that a constant off in L_k or in the proposal density cannot hide."""
    log_w = log_weights(model, {"x": x}, k, generator=torch.Generator().manual_seed(8))
    l_k = log_mean_exp(log_w, dim=1)
    stderr = torch.exp(log_w - l_k[:, None]).std(1) / math.sqrt(k)  # of w_i / mean w
    assert (stderr < max_stderr).all(), stderr
    assert (log_w.mean(1) < log_px).all()  # Jensen's gap, above its noise here
    assert ((l_k - log_px).abs() < 4 * stderr).all(), (l_k, log_px, stderr)
