"""Determinism of the served sampler on a device (issue 23: "state determinism on CUDA").

Draws one worker-shaped call (16 rows, captions padded to the model's tokens, one seed a row) and reports, as JSON:
whether the same call gives the same bytes twice; whether a row drawn alone (padded as the worker pads: empty
captions, seed 0) gives the bytes it gives inside the full batch; and how far the device's pixels are from the
CPU's for the same call.

    python3 docs/experiments/2026-12-04-cuda-e2e/determinism.py --device cuda [--checkpoint DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.checkpoint import load_checkpoint  # noqa: E402
from models.sampling import sample  # noqa: E402
from worker import conditions  # noqa: E402
from worker.jobs import _to_uint8  # noqa: E402

ROWS = 16
CAPTIONS = [f"the digit {d} is at the {where} of the image ." for where in ("top left", "bottom right")
            for d in range(10)][:ROWS]


def draw(model, vocab, texts: list[str], seeds: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Final uint8 images (ROWS, H, W, C) and every canvas as uint8 (ROWS, T, H, W, C), on the CPU."""
    given = conditions.captions(vocab, texts, ROWS, vocab.max_length)
    out = sample(model, seeds=seeds + [0] * (ROWS - len(seeds)), batch_size=ROWS,
                 **{k: v.to(device) for k, v in given.items()})

    return torch.from_numpy(_to_uint8(out.images)), torch.from_numpy(_to_uint8(out.canvases))  # the worker's bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--checkpoint", default="checkpoints/aligndraw-mnist-captions-blind-keys")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    model, vocab = ckpt.model.eval(), ckpt.vocab
    seeds = list(range(100, 100 + ROWS))
    images, canvases = draw(model, vocab, CAPTIONS, seeds, device)
    again, again_canvases = draw(model, vocab, CAPTIONS, seeds, device)
    alone = [draw(model, vocab, [CAPTIONS[r]], [seeds[r]], device)[0][0] for r in (0, 5, 15)]
    cpu_model = load_checkpoint(args.checkpoint, device=torch.device("cpu")).model.eval()
    cpu_images, _ = draw(cpu_model, vocab, CAPTIONS, seeds, torch.device("cpu"))
    diff = (images.int() - cpu_images.int()).abs()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "checkpoint": args.checkpoint, "rows": ROWS,
        "same_call_twice_same_bytes": bool(torch.equal(images, again) and torch.equal(canvases, again_canvases)),
        "alone_equals_batched_rows_0_5_15": [bool(torch.equal(a, images[r]))
                                             for a, r in zip(alone, (0, 5, 15), strict=True)],
        "against_cpu": {"max_pixel_levels": int(diff.max()), "pixels_differing": float((diff > 0).float().mean()),
                        "images_identical": int(sum(bool(torch.equal(a, b))
                                                    for a, b in zip(images, cpu_images, strict=True)))},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
