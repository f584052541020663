"""alignDRAW's sampler against a peer PyTorch port, in one process, as ratios.

    git clone https://github.com/vicissitude1999/text2image /tmp/text2image   # once; we measured c3428cb
    .venv/bin/python bench/peer_speed.py --peer-src /tmp/text2image/src [--threads 1 2] [--batches 16 64 256]

The peer is the fastest public PyTorch port of alignDRAW we found. None of its code is in this repository: its
`aligndraw.py` is imported from --peer-src, with empty stand-ins for the modules it imports but its sampler never
calls (clip, torchvision.utils, its utils). It runs the paper's MNIST-with-captions config (60×60, T = 32,
dimAlign 512, 300-wide LSTMs, z 150) from random weights on 12-word captions; ours runs the same config ("paper")
and the shipped default checkpoint ("shipped": context-free word values, whose sampler takes a shorter path).

The peer's `generate(caption)` keeps every canvas and returns them all; ours hands each step's canvas to a callback
that does nothing (`keep_canvases=False`, as the worker samples). Both run under torch.inference_mode().

Timing, per thread count and batch: `--pairs` rounds of peer, peer, ours, ours. The second run of each sampler is
timed after a run of itself ("warm"); the first is timed right after the other sampler ("after the other", which
finds the caches and allocator as the other left them). Each ratio is the median over rounds of the peer's seconds
over ours.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker_throughput import cpu_model  # noqa: E402  (bench/, the script's own folder, is on sys.path)

from models.aligndraw import AlignDRAW  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.sampling import sample  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "aligndraw-mnist-captions-blind-keys"
WORDS = 12


def peer_model(src: Path) -> torch.nn.Module:
    """The peer's AlignDraw at the paper's MNIST config, imported from its source folder."""
    stand_ins = [name for name in ("clip", "torchvision", "torchvision.utils", "utils") if name not in sys.modules]
    for name in stand_ins:
        sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(src))
    try:
        module = importlib.import_module("aligndraw")
    finally:
        sys.path.remove(str(src))
        for name in stand_ins:
            del sys.modules[name]
    args = types.SimpleNamespace(channels=1, runSteps=32, dimA=60, dimB=60, dimReadAttent=8, dimY=23, dimLangRNN=128,
                                 dimRNNEnc=300, dimZ=150, dimRNNDec=300, dimAlign=512)
    return module.AlignDraw(args, torch.device("cpu")).eval()


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rounds(peer: torch.nn.Module, ours: torch.nn.Module, ids: torch.Tensor, pairs: int) -> list[tuple[float, ...]]:
    """`pairs` rounds of (peer after ours, peer after peer, ours after peer, ours after ours) seconds."""
    lengths = torch.full((len(ids),), ids.shape[1])

    def run_peer() -> None:
        with torch.inference_mode():
            peer.generate(ids)

    def run_ours() -> None:
        sample(ours, captions=ids, lengths=lengths, seeds=list(range(len(ids))), keep_canvases=False,
               callback=lambda step: None)

    run_peer(), run_ours()
    return [(seconds(run_peer), seconds(run_peer), seconds(run_ours), seconds(run_ours)) for _ in range(pairs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-src", type=Path, required=True, help="the peer's src/ folder (holds aligndraw.py)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--pairs", type=int, default=9)
    args = parser.parse_args()

    torch.manual_seed(0)
    peer = peer_model(args.peer_src)
    ours = {"paper": AlignDRAW().eval().requires_grad_(False),
            "shipped": load_checkpoint(SHIPPED).model.eval().requires_grad_(False)}
    print(f"machine: {cpu_model()}, {torch.__version__}; {args.pairs} rounds each\n")
    print("| torch threads | batch | peer images/s | ours | images/s | warm ratio | after-the-other ratio |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            ids = torch.randint(1, 23, (batch, WORDS), generator=torch.Generator().manual_seed(batch))
            for name, model in ours.items():
                timed = rounds(peer, model, ids, args.pairs)
                peer_s = statistics.median(r[1] for r in timed)
                ours_s = statistics.median(r[3] for r in timed)
                warm = statistics.median(r[1] / r[3] for r in timed)
                after = statistics.median(r[0] / r[2] for r in timed)
                print(f"| {threads} | {batch} | {batch / peer_s:.0f} | {name} | {batch / ours_s:.0f} | {warm:.2f}× "
                      f"| {after:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
