"""The sampler: runs a generator's steps without gradients and keeps every canvas.

Families only define `generate(noise, **conditions)`, an iterator of `models.family.Step`s (T for the DRAW family,
one for one-shot decoders); this module owns the noise, the output buffers, the per-step callback and early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.family import Generator


@dataclass(frozen=True)
class Step:
    """Handed to the callback after each step; tensors are views into the sampler's buffers."""

    t: int  # 1-based step index
    steps: int  # T
    canvas: Tensor  # (B, C, H, W) σ(c_t) in [0, 1]
    window: Tensor | None  # (B, 4) write window (x0, y0, x1, y1) in pixels
    alignment: Tensor | None  # (B, K)


# Return False to stop after this step (cancellation); None or True to go on.
StepCallback = Callable[[Step], bool | None]


@dataclass(frozen=True)
class SampleOutput:
    images: Tensor  # (B, C, H, W) σ(c_T) of the last step run, in [0, 1]
    canvases: Tensor  # (B, T', C, H, W) σ(c_t) for t = 1..T' (a view of a step-major buffer)
    windows: Tensor | None  # (B, T', 4) write windows in pixels, None without attention
    alignments: Tensor | None  # (B, T', K) word alignment (alignDRAW)
    steps_done: int  # T' (< T when the callback stopped early)
    steps: int  # T

    @property
    def completed(self) -> bool:
        return self.steps_done == self.steps


def draw_noise(
    batch_size: int,
    *shape: int,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> Tensor:
    """ε of one latent sample per image (`shape`, e.g. the family's noise_shape() (T, Z)), drawn up front on the
    CPU: (B, *shape).

    With `seeds`, image i's noise comes from its own seed alone, so its image does not depend on what else
    shares the batch beyond float rounding (~1e-7: matmul blocking varies with batch size). Noise is drawn on
    the CPU so a seed gives the same ε on CPU and CUDA.
    """
    if seeds is not None:
        if generator is not None:
            raise ValueError("pass either generator or seeds, not both")
        if len(seeds) != batch_size:
            raise ValueError(f"need one seed per image: got {len(seeds)} for {batch_size} images")
        return torch.stack(
            [torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
    return torch.randn(batch_size, *shape, generator=generator)


@torch.inference_mode()
def sample(
    model: Generator,
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    callback: StepCallback | None = None,
    keep_canvases: bool = True,
    temperature: float = 1.0,
    noise: Tensor | None = None,
    **conditions: Tensor,
) -> SampleOutput:
    """Generate a batch and every intermediate canvas.

    Conditions are the family's tensors (alignDRAW: `captions` (B, K) ids, `lengths` (B,)); they fix the batch
    size when given. Same seed(s) and inputs give bit-identical outputs on the CPU.
    `keep_canvases=False` keeps only the final image and the small per-step records. `temperature` scales ε, so
    z_t = μ_t + temperature · σ_t ε_t: 1 samples the model's prior, 0 takes its mean at every step. `noise`
    (B, *noise_shape) replaces the seeded draw (a latent walk's path).
    """
    if not 0.0 <= temperature < math.inf:
        raise ValueError(f"temperature must be finite and ≥ 0; got {temperature}")
    device = next(model.parameters()).device
    conditions = {k: v.to(device) for k, v in conditions.items()}
    if conditions:
        b = next(iter(conditions.values())).shape[0]
        if batch_size is not None and batch_size != b:
            raise ValueError(f"batch_size={batch_size} but conditions hold {b} rows")
        batch_size = b
    if noise is not None:
        if batch_size is not None and batch_size != noise.shape[0]:
            raise ValueError(f"batch_size={batch_size} but noise holds {noise.shape[0]} rows")
        batch_size = noise.shape[0]
        noise = (noise * temperature).to(device)
    if batch_size is None:
        batch_size = len(seeds) if seeds is not None else 1
    t_total = model.steps
    if noise is None:
        noise = draw_noise(batch_size, *model.noise_shape(), generator=generator, seeds=seeds).mul_(temperature)
        noise = noise.to(device)

    canvases: Tensor | None = None
    windows: list[Tensor] = []
    alignments: list[Tensor] = []
    frame: Tensor | None = None
    steps_done = 0
    for t, out in enumerate(model.generate(noise, **conditions)):
        if out.logits is None:
            raise TypeError(f"{type(model).__name__}.generate yields no image logits: not an image generator")
        if canvases is None:
            # Step-major, so each step's frame is contiguous: one elementwise kernel (bit-identical results
            # whatever keep_canvases is) and a frame a caller can encode without a copy.
            shape = (t_total if keep_canvases else 1, batch_size, *out.logits.shape[1:])
            canvases = torch.empty(shape, device=device)
        frame = canvases[t if keep_canvases else 0]
        torch.sigmoid(out.logits, out=frame)
        box = out.window
        if box is not None:
            windows.append(box)
        if out.alignment is not None:
            alignments.append(out.alignment)
        steps_done = t + 1
        if callback is not None:
            step = Step(t + 1, t_total, frame, box, out.alignment)
            if callback(step) is False:
                break
    assert canvases is not None and frame is not None, "a model must run at least one step"
    return SampleOutput(
        images=frame.clone(),
        canvases=(canvases[:steps_done] if keep_canvases else canvases[:0]).transpose(0, 1),
        windows=torch.stack(windows, 1) if windows else None,
        alignments=torch.stack(alignments, 1) if alignments else None,
        steps_done=steps_done,
        steps=t_total,
    )


def prior_images(model: Generator, n: int, *, chunk: int = 500) -> Tensor:
    """Final images of prior samples with seeds 0..n−1, on the CPU, drawn `chunk` at a time so memory stays flat;
    seeded per sample, so the chunk size does not change them."""
    return torch.cat([sample(model, seeds=list(range(i, min(i + chunk, n))), keep_canvases=False).images.cpu()
                      for i in range(0, n, chunk)])


def reconstructions(model: Generator, x: Tensor, *, chunk: int = 500) -> Tensor:
    """The family's reconstruction of every image of x (condition "images"), on the CPU, `chunk` at a time."""
    return torch.cat([sample(model, images=x[i : i + chunk], keep_canvases=False).images.cpu()
                      for i in range(0, len(x), chunk)])


def slerp(a: Tensor, b: Tensor, points: int) -> Tensor:
    """`points` spherical interpolants of two noise draws, ends included, (points, *a.shape): every point keeps the
    norm of a typical N(0, I) draw, where the straight line's middle falls towards the origin (White 2016)."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)[:, None]
    fa, fb = a.flatten().double(), b.flatten().double()
    omega = torch.arccos((fa @ fb / (fa.norm() * fb.norm())).clamp(-1, 1))
    if omega.abs() < 1e-6:  # parallel ends: the line is the arc
        path = (1 - t) * fa + t * fb
    else:
        path = (torch.sin((1 - t) * omega) * fa + torch.sin(t * omega) * fb) / math.sin(omega.item())
    return path.to(a.dtype).view(points, *a.shape)


def seed_walks(model: Generator, walks: int = 8, points: int = 10) -> Tensor:
    """`walks` latent walks of `points` images each, (walks, points, C, H, W): walk i slerps between the noise of
    seeds 2i and 2i + 1 and decodes every point (the pictures of a run's previews and of a card)."""
    ends = draw_noise(2 * walks, *model.noise_shape(), seeds=list(range(2 * walks)))
    path = torch.cat([slerp(ends[2 * i], ends[2 * i + 1], points) for i in range(walks)])
    images = sample(model, noise=path, keep_canvases=False).images
    return images.view(walks, points, *images.shape[1:])


def lerp(a: Tensor, b: Tensor, points: int) -> Tensor:
    t = torch.linspace(0, 1, points, dtype=a.dtype).view(points, *([1] * a.dim()))
    return (1 - t) * a + t * b
