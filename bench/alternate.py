"""Two versions of the stack, measured in alternation: worker_throughput.py run in tree A and tree B in ABBA order.

On a shared VM the absolute speed drifts by a third between runs, so a change is judged by paired differences:
each pair is one run of A and one of B back to back, and the order alternates (ABBA) so that neither side always
runs second. Prints each run's figures, then mean ± standard error over runs and over pair differences (B − A).

    .venv/bin/python bench/alternate.py --a /tmp/before --b . --pairs 4 -- --threads 1 --jobs-1 512 --b64

A tree is a checkout (a `git worktree add /tmp/before <commit>` for an older commit); each runs its own
bench/worker_throughput.py with its own .venv unless --python is given. Arguments after `--` go to every run; `--a-args`
and `--b-args` add arguments to one side only (for example the same tree with and without `--b64`).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_ms(process: str, run: str) -> Callable[[dict], float]:
    return lambda r: 1000 * r[run]["cpu_s"][process] / r[run]["jobs"]


# (label, getter from results[0]) for what a comparison reports
MEASURES = [
    ("raw images/s", lambda r: r["raw_images_per_s"]),
    ("1-image images/s", lambda r: r["one_image"]["images_per_s"]),
    ("1-image share of raw %", lambda r: 100 * r["one_image"]["ratio_to_raw"]),
    ("64-image images/s", lambda r: r["sixty_four_image"]["images_per_s"]),
    ("64-image share of raw %", lambda r: 100 * r["sixty_four_image"]["ratio_to_raw"]),
    *[(f"{p} CPU ms a {run} job", cpu_ms(p, key)) for key, run in (("one_image", "1-image"),
                                                                    ("sixty_four_image", "64-image"))
      for p in ("worker", "api", "redis", "client")],
    ("half load p50 ms", lambda r: 1000 * r["latency"]["p50_s"]),
    ("idle first step p50 ms", lambda r: 1000 * r["idle_events"]["first_step_p50_s"]),
    ("idle done p50 ms", lambda r: 1000 * r["idle_events"]["done_p50_s"]),
]


def run(tree: Path, python: str | None, args: list[str]) -> dict:
    exe = python or str(tree / ".venv" / "bin" / "python")
    if not Path(exe).exists():
        exe = str(ROOT / ".venv" / "bin" / "python")
    cmd = [exe, str(tree / "bench" / "worker_throughput.py"), *args]
    print("$", shlex.join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["results"][0]


def mean_se(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.2f}" if xs else "-"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs) / math.sqrt(len(xs)):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="tree of version A (before)")
    ap.add_argument("--b", type=Path, required=True, help="tree of version B (after)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--python", default=None, help="one interpreter for both trees (default: each tree's .venv)")
    ap.add_argument("--a-args", default="", help="extra arguments for A's runs only")
    ap.add_argument("--b-args", default="", help="extra arguments for B's runs only")
    ap.add_argument("--save", type=Path, default=None, help="write every run's results here (JSON)")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the arguments for every run")
    args = ap.parse_args()
    common = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for i in range(args.pairs):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")  # ABBA: neither side always runs second
        for side in order:
            tree, extra = (args.a, args.a_args) if side == "A" else (args.b, args.b_args)
            r = run(tree.resolve(), args.python, common + shlex.split(extra))
            runs[side].append(r)
            print(f"pair {i + 1} {side}: " + "; ".join(f"{label} {get(r):.2f}" for label, get in MEASURES[:5]),
                  flush=True)

    if args.save is not None:
        args.save.write_text(json.dumps(runs))
    print(f"\n{args.pairs} pairs, ABBA; A = {args.a} {args.a_args}; B = {args.b} {args.b_args}; common: "
          f"{shlex.join(common)}")
    print("| measure | A | B | B − A (paired) |\n|---|---:|---:|---:|")
    for label, get in MEASURES:
        a = [get(r) for r in runs["A"]]
        b = [get(r) for r in runs["B"]]
        print(f"| {label} | {mean_se(a)} | {mean_se(b)} | {mean_se([y - x for x, y in zip(a, b, strict=True)])} |")


if __name__ == "__main__":
    main()
