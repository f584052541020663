"""Sampler throughput for DRAW and alignDRAW (default configs), against this machine's measured fp32 matmul peak.

    .venv/bin/python bench/sample_speed.py [--device cpu|cuda] [--batches 1 16 64 256] [--streamed] [--json out.json]

By default every canvas is kept (a (B, T, C, H, W) buffer, as `sample()` returns them); `--streamed` keeps only the
last (`keep_canvases=False`), as the worker samples: it hands each step to its callback and needs no buffer.

The sampler's work is counted with torch.utils.flop_counter (matmuls; the once-per-caption BiLSTM runs in a
fused kernel the counter skips, which makes the fraction a slight underestimate). Weights are untrained
(random init): speed does not depend on their values. Each sampler run is timed back to back with a 2048×2048
fp32 matmul (the peak); the fraction is the median over 9 such pairs of (sampler FLOP/s) / (matmul FLOP/s), and
the peak column is the matmul rate that median implies.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import DRAW, AlignDRAW, sample  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul(device: torch.device, n: int = 2048):
    """One fp32 n×n matmul as a timed callable, and its FLOPs: the reference the sampler is measured against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: a @ b), 2 * n**3


def paired(fn, ref, device: torch.device, *, repeats: int = 9) -> tuple[float, float]:
    """Median seconds of `fn` and median of (seconds of ref / seconds of fn), timing the two back to back.

    On a shared VM the clock speed drifts within seconds, so each sampler timing is paired with a reference
    matmul timed right beside it and the ratio is taken per pair.
    """
    def timed(f) -> float:
        _sync(device)
        t0 = time.perf_counter()
        f()
        _sync(device)
        return time.perf_counter() - t0

    fn(), ref()  # warm-up
    pairs = [(timed(fn), timed(ref)) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(r / s for s, r in pairs)


def conditions(model: torch.nn.Module, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    if isinstance(model, AlignDRAW):  # 12-token captions, as in MNIST with Captions
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, model.config.vocab_size, (batch, 12), generator=g)
        return {"captions": ids.to(device), "lengths": torch.full((batch,), 12, device=device)}
    return {"batch_size": batch}  # type: ignore[dict-item]


def sampler_flops(model: torch.nn.Module, batch: int, device: torch.device) -> int:
    with FlopCounterMode(display=False) as counter:
        sample(model, generator=torch.Generator().manual_seed(0), keep_canvases=False,
               **conditions(model, batch, device))
    return counter.get_total_flops()


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--streamed", action="store_true", help="keep_canvases=False, as the worker samples")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    keep = not args.streamed
    print(f"machine: {machine_name(device)}; torch {torch.__version__}; "
          f"{'every canvas kept' if keep else 'streamed: only the last canvas kept'}\n")
    print("| model | batch | images/s | ms per batch | sampler GFLOP/s | matmul peak GFLOP/s | % of peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ref, ref_flops = peak_matmul(device)
    rows = []
    for name, model in [("DRAW", DRAW()), ("alignDRAW", AlignDRAW())]:
        model = model.to(device).eval().requires_grad_(False)  # frozen, as the worker serves it
        for batch in args.batches:
            cond = conditions(model, batch, device)
            flops = sampler_flops(model, batch, device)
            gen = torch.Generator().manual_seed(0)
            secs, ref_over_fn = paired(lambda m=model, c=cond, g=gen: sample(m, generator=g, keep_canvases=keep, **c),
                                       ref, device)
            fraction = flops / ref_flops * ref_over_fn  # (flops / t_sampler) / (ref_flops / t_ref), per pair
            row = {
                "model": name, "batch": batch, "images_per_s": batch / secs, "ms": secs * 1e3,
                "gflops": flops / secs / 1e9, "peak_gflops": flops / secs / fraction / 1e9,
                "fraction_of_peak": fraction, "canvases_kept": keep,
            }
            rows.append(row)
            print(f"| {name} | {batch} | {row['images_per_s']:.1f} | {row['ms']:.1f} | {row['gflops']:.1f} "
                  f"| {row['peak_gflops']:.1f} | {100 * row['fraction_of_peak']:.1f}% |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_name(device), "device": str(device), "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
