"""The sampler: runs a model's T generation steps without gradients and keeps every canvas.

Models only define `generation_steps(noise, **conditions)`, an iterator of `CanvasStep`s built from locals;
this module owns the noise, the output buffers, the per-step callback and early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from models.attention import AttentionParams


@dataclass(frozen=True)
class CanvasStep:
    """What a model yields after generation step t: the raw canvas c_t and what drew it."""

    canvas_logits: Tensor  # (B, C, H, W) c_t before the sigmoid
    window: AttentionParams | None  # write attention of step t (None without attention)
    alignment: Tensor | None  # (B, K) word weights α_t (alignDRAW only)


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


class Generator(Protocol):
    """What the sampler needs from a model."""

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    @property
    def generation_steps(self) -> Callable[..., Iterator[CanvasStep]]:
        """(noise (B, T, Z), **conditions) -> one CanvasStep per step; each model names its own conditions."""

    @property
    def steps(self) -> int: ...

    @property
    def z_size(self) -> int: ...


def draw_noise(
    batch_size: int,
    steps: int,
    z_size: int,
    *,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> Tensor:
    """ε for every step, drawn up front on the CPU: (B, T, Z).

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
            [torch.randn(steps, z_size, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
    return torch.randn(batch_size, steps, z_size, generator=generator)


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
    **conditions: Tensor,
) -> SampleOutput:
    """Generate a batch and every intermediate canvas.

    Conditions are model-specific tensors (alignDRAW: `captions` (B, K) ids, `lengths` (B,)); they fix the
    batch size when given. Same seed(s) and inputs give bit-identical outputs on the CPU.
    `keep_canvases=False` keeps only the final image and the small per-step records. `temperature` scales ε, so
    z_t = μ_t + temperature · σ_t ε_t: 1 samples the model's prior, 0 takes its mean at every step.
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
    if batch_size is None:
        batch_size = len(seeds) if seeds is not None else 1
    t_total = model.steps
    noise = draw_noise(batch_size, t_total, model.z_size, generator=generator, seeds=seeds).mul_(temperature).to(device)

    canvases: Tensor | None = None
    windows: list[Tensor] = []
    alignments: list[Tensor] = []
    frame: Tensor | None = None
    steps_done = 0
    for t, out in enumerate(model.generation_steps(noise, **conditions)):
        if canvases is None:
            # Step-major, so each step's frame is contiguous: one elementwise kernel (bit-identical results
            # whatever keep_canvases is) and a frame a caller can encode without a copy.
            shape = (t_total if keep_canvases else 1, batch_size, *out.canvas_logits.shape[1:])
            canvases = torch.empty(shape, device=device)
        frame = canvases[t if keep_canvases else 0]
        torch.sigmoid(out.canvas_logits, out=frame)
        box = None
        if out.window is not None:
            box = out.window.box()
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

