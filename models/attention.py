"""DRAW's selective attention: an N×N grid of 2-D Gaussian filters (Gregor et al. 2015, §3.2).

Coordinates follow the paper: pixel a of an A-wide image has centre a ∈ {1..A} (1-based), so g̃ = 0 is the
exact image centre (A+1)/2. Filter centres μ_i = g + (i − N/2 − 0.5)·δ for i = 1..N average to g (eq. 19-20):
the grid is centred, unlike ports that index i from 0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AttentionParams:
    """The five attention parameters in image units, each (B,)."""

    g_x: Tensor  # grid centre, 1-based pixel coordinates (eq. 22)
    g_y: Tensor
    delta: Tensor  # stride between filter centres, pixels (eq. 24)
    sigma2: Tensor  # isotropic filter variance, pixels²
    gamma: Tensor  # intensity: read multiplies by γ, write divides by γ
    n: int  # filters per side

    def box(self) -> Tensor:
        """The window as (x0, y0, x1, y1) in continuous pixel coordinates of [0, W) × [0, H), (B, 4).

        N filters δ apart cover N·δ pixels around the centre; 1-based centre g sits at g − 0.5 in that frame.
        """
        centre = torch.stack([self.g_x, self.g_y], dim=-1) - 0.5
        half = (0.5 * self.n * self.delta)[..., None]
        return torch.cat([centre - half, centre + half], dim=-1)


def attention_params(raw: Tensor, height: int, width: int, n: int) -> AttentionParams:
    """Map the linear layer's output (B, 5) = (g̃_X, g̃_Y, log σ², log δ̃, log γ) to image units (eq. 21-24)."""
    # g = (A + 1)/2 · (g̃ + 1), δ = (max(A, B) − 1)/(N − 1) · exp(log δ̃), σ², γ = exp: one pass each over (B, 5)
    # (the sampler runs this every step), the same products as five separate ones
    scale = _param_scale(height, width, n, raw.dtype, raw.device)
    g_x, g_y, sigma2, delta, gamma = (torch.cat([raw[..., :2] + 1, raw[..., 2:].exp()], dim=-1) * scale).unbind(-1)
    return AttentionParams(g_x, g_y, delta, sigma2, gamma, n)


@functools.cache
def _param_scale(height: int, width: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """attention_params' five factors, made once per shape and device: a tensor built from a list every step would
    be a blocking host-to-device copy on a GPU. A normal tensor even when first asked for by a sampler in inference
    mode, so that training may save it for backward later."""
    factors = [0.5 * (width + 1), 0.5 * (height + 1), 1.0, (max(height, width) - 1) / max(n - 1, 1), 1.0]
    with torch.inference_mode(False):
        return torch.tensor(factors, dtype=dtype, device=device)


@torch.no_grad()
def start_tiled(bias: Tensor, height: int, width: int, n: int) -> None:
    """Set a window's 5 biases so the first glimpse tiles the image: centred, stride max(H, W)/N, σ half a stride.

    With zero biases DRAW's 2×2 read on MNIST starts as two 1-px-wide filters 27 px apart, on the blank border:
    the encoder sees nothing, the KL collapses to 0 and training stalls at the pixel-marginal loss (measured).
    """
    side = max(height, width)
    stride = side / n
    bias.copy_(torch.tensor([0.0, 0.0, 2 * math.log(stride / 2), math.log(stride * max(n - 1, 1) / (side - 1)), 0.0]))


def filterbank(params: AttentionParams, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Row-normalised filterbanks F_Y (B, N, H) and F_X (B, N, W) (eq. 25-26)."""
    n = params.n
    # i − N/2 − 0.5 for i = 1..N: sums to zero, the grid is centred on g
    offsets = torch.arange(n, dtype=params.g_x.dtype, device=params.g_x.device) - (n - 1) / 2
    spread = offsets * params.delta[:, None]  # (B, N)
    if height == width:  # both banks in one pass of half as many ops (the sampler runs this every step)
        mu = torch.stack([params.g_y, params.g_x], 1)[:, :, None] + spread[:, None]  # (B, 2, N)
        f_y, f_x = _bank(mu.flatten(1), params.sigma2, height).unflatten(1, (2, n)).unbind(1)
        return f_y, f_x
    return _bank(params.g_y[:, None] + spread, params.sigma2, height), _bank(params.g_x[:, None] + spread,
                                                                             params.sigma2, width)


def _bank(mu: Tensor, sigma2: Tensor, size: int) -> Tensor:
    a = torch.arange(1, size + 1, dtype=mu.dtype, device=mu.device)
    d = a - mu[..., None]  # (B, N, size)
    # exp(−(a−μ)²/2σ²) / Σ_a exp(…) is a softmax over pixels: max-subtracted, so rows sum to 1 even for a filter
    # off the image (its weight goes to the nearest edge).
    scale = (-0.5 / sigma2)[:, None]
    x = d.square() * scale[..., None]
    # Tails held at e^−30 of the row's peak (~1e-13 of its unit sum, below any float32 sum they enter): a sharp
    # filter's far tail sends exp below −87, where this CPU's exp is 20–190× slower (its denormal and zero
    # results), and its denormal weights slow read's and write's matmuls the same way (bench/README.md).
    # The peak is at the pixel nearest μ, the very value x holds there: no max over rows of 60 (slow on a CPU).
    nearest = mu.round().clamp(1, size) - mu
    return torch.softmax(x.clamp(min=(nearest.square() * scale - 30.0)[..., None]), dim=-1)


def read_glimpse(image: Tensor, f_y: Tensor, f_x: Tensor) -> Tensor:
    """F_Y x F_Xᵀ on every channel: (B, C, H, W) -> (B, C, N, N)."""
    return f_y[:, None] @ image @ f_x[:, None].transpose(-1, -2)


def write_patch(patch: Tensor, f_y: Tensor, f_x: Tensor) -> Tensor:
    """F_Yᵀ w F_X on every channel: (B, C, N, N) -> (B, C, H, W)."""
    return f_y[:, None].transpose(-1, -2) @ patch @ f_x[:, None]


class Read(nn.Module):
    """read(x, x̂, h) = γ · [F_Y x F_Xᵀ, F_Y x̂ F_Xᵀ] (eq. 27); without attention, [x, x̂] flattened (eq. 17)."""

    def __init__(self, hidden_size: int, channels: int, height: int, width: int, n: int | None):
        super().__init__()
        self.channels, self.height, self.width, self.n = channels, height, width, n
        self.params = nn.Linear(hidden_size, 5) if n is not None else None
        if self.params is not None and n is not None:
            start_tiled(self.params.bias, height, width, n)

    @property
    def out_features(self) -> int:
        side = self.height * self.width if self.n is None else self.n * self.n
        return 2 * self.channels * side

    def forward(self, x: Tensor, x_hat: Tensor, h: Tensor) -> Tensor:
        """x, x̂: (B, C, H, W); h: (B, hidden) -> (B, out_features)."""
        if self.params is None or self.n is None:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1)
        p = attention_params(self.params(h), self.height, self.width, self.n)
        f_y, f_x = filterbank(p, self.height, self.width)
        both = read_glimpse(torch.cat([x, x_hat], dim=1), f_y, f_x)  # one batched matmul for x and x̂
        return p.gamma[:, None] * both.flatten(1)


class Write(nn.Module):
    """write(h) = (1/γ̂) · F̂_Yᵀ w F̂_X with w = W h + b (eq. 28-29); without attention, a full-canvas linear map."""

    def __init__(self, hidden_size: int, channels: int, height: int, width: int, n: int | None):
        super().__init__()
        self.channels, self.height, self.width, self.n = channels, height, width, n
        side = height * width if n is None else n * n
        # Patch and window parameters from one matmul: the write runs once per step in the sampler's hot loop.
        self.linear = nn.Linear(hidden_size, channels * side + (5 if n is not None else 0))
        if n is not None:
            start_tiled(self.linear.bias[-5:], height, width, n)

    def _patch(self, out: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, AttentionParams]:
        """The linear layer's output -> the patch w / γ̂ (B, C, N, N), F̂_Y, F̂_X and the window."""
        p = attention_params(out[:, -5:], self.height, self.width, n)
        f_y, f_x = filterbank(p, self.height, self.width)
        return out[:, :-5].reshape(-1, self.channels, n, n) / p.gamma[:, None, None, None], f_y, f_x, p

    def forward(self, h: Tensor) -> tuple[Tensor, AttentionParams | None]:
        """h: (B, hidden) -> canvas increment (B, C, H, W) and the window (None without attention)."""
        out = self.linear(h)
        if self.n is None:
            return out.view(-1, self.channels, self.height, self.width), None
        patch, f_y, f_x, p = self._patch(out, self.n)
        return write_patch(patch, f_y, f_x), p

    def add_to(self, canvas: Tensor, h: Tensor) -> AttentionParams | None:
        """canvas += write(h) in place, the write's last matmul accumulating straight into the canvas: the
        sampler's path, with no (B, C, H, W) temporary a step. The same values as canvas + forward(h)[0] (tested)."""
        out = self.linear(h)
        if self.n is None:
            canvas.add_(out.view_as(canvas))
            return None
        patch, f_y, f_x, p = self._patch(out, self.n)
        left = (f_y[:, None].transpose(-1, -2) @ patch).flatten(0, 1)  # F̂_Yᵀ w: (B·C, H, N), as write_patch
        right = f_x[:, None].expand(-1, self.channels, -1, -1).flatten(0, 1)  # F̂_X: (B·C, N, W)
        canvas.view(-1, self.height, self.width).baddbmm_(left, right)
        return p
