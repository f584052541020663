"""Pictures a run leaves each epoch: a sample grid, a canvas strip (samples across the T steps), loss curves, and
for caption models the word alignment of each preview sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) uint8."""
    return (images.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1)).cpu().numpy()


def grid(images: Tensor, columns: int, *, pad: int = 2, scale: int = 2) -> Image.Image:
    """Tile (N, C, H, W) images row-major into one picture with a grey gutter."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 96, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = arr[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def save_sample_grid(path: Path, images: Tensor, labels: list[str] | None = None, columns: int = 8) -> None:
    img = grid(images, columns)
    if labels:  # captions listed under the grid, numbered row-major like the tiles
        text = [f"{i}: {s}" for i, s in enumerate(labels)]
        out = Image.new("L", (img.width, img.height + 12 * len(text) + 4), 255)
        out.paste(img, (0, 0))
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default(size=11)
        for i, line in enumerate(text):  # doubled spaces: this font's space is 2 px, words ran together
            draw.text((4, img.height + 2 + 12 * i), line.replace(" ", "  "), fill=0, font=font)
        img = out
    img.save(path)


def save_canvas_strip(path: Path, canvases: Tensor, max_columns: int = 16) -> None:
    """canvases (B, T, C, H, W): one row per sample, columns at evenly spaced steps ending with t = T."""
    b, t = canvases.shape[:2]
    steps = np.unique(np.linspace(0, t - 1, min(t, max_columns)).round().astype(int))
    tiles = canvases[:, steps].reshape(b * len(steps), *canvases.shape[2:])
    grid(tiles, len(steps)).save(path)


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless backend, imported on first use (only the PNG writers need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_alignment_map(path: Path, alignments: Tensor, captions: list[str], columns: int = 4) -> None:
    """alignments (B, T, K): one heat map per caption, steps down and words across (α_t, alignDRAW eq. 4)."""
    plt = _pyplot()

    from models.vocab import tokenize

    b, t, _ = alignments.shape
    rows = -(-b // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), dpi=90, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= b:
            ax.axis("off")
            continue
        words = [tok.text for tok in tokenize(captions[i])]
        ax.imshow(alignments[i, :, : len(words)].float().cpu().numpy(), aspect="auto", cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks(range(len(words)), words, rotation=90, fontsize=7)
        ax.set_yticks([0, t - 1], ["1", str(t)], fontsize=7)
        ax.set_title(f"{i}", fontsize=8)  # numbered like the sample grid's captions
        if i % columns == 0:
            ax.set_ylabel("step t", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


UNITS = {"texts": "nats per sentence", "image_sets": "nats per set"}  # a family's `data` -> its bound's unit


def save_loss_curves(path: Path, history: list[dict[str, Any]], unit: str = "nats per image",
                     bound: str = "−ELBO") -> None:
    """`bound`: what the family trains on (models' `bound_name`; IWAE's is −L_k, not an ELBO)."""
    plt = _pyplot()

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [h["train_nll_bound"] for h in history], label=f"train {bound}")
    ax.plot(epochs, [h["val_nll_bound"] for h in history], label=f"validation {bound}")
    ax.plot(epochs, [h["val_kl"] for h in history], label="validation KL", linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    judged = [h for h in history if "val_fidelity_seen" in h]
    if judged:  # caption fidelity on its own 0-100 % axis
        ax2 = ax.twinx()
        for key, label, style in (("val_fidelity_seen", "fidelity, seen captions", ":"),
                                  ("val_fidelity_held_out", "fidelity, held-out captions", "-.")):
            ax2.plot([h["epoch"] for h in judged], [100 * h[key] for h in judged], style, color="black", label=label)
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("caption fidelity (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # off the lines
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
