"""What writing a sampler call's steps to Redis costs the worker: `GLIMPSE_STEP_FLUSH_MS` 0 (a round trip every
step) against coalesced writes (20 ms, the default), interleaved in one process so that the machine's drift between
runs (a third on the shared VMs) falls on both alike.

    .venv/bin/python bench/step_writes.py [--flush 0 20] [--repeats 5] [--jobs 3] [--checkpoints DIR --model-id ID]

Each repeat runs, for each setting, `--jobs` 64-image jobs (16 captions × n=4, fixed seeds) through the served
Worker class in burst mode, in this process (one torch thread), against the benchmark's own redis-server (or
`REDIS_URL`'s database 15); it reports the process's CPU seconds (the worker and its writer thread; Redis's own
CPU is not counted) and the wall time, mean ± standard error over repeats, beside the raw sampler's time for the
same images (bench/worker_throughput.py's measurement: 16-row calls, uint8 per step, nothing written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
import torch  # noqa: E402
from worker_throughput import (  # noqa: E402
    ROOT,
    bench_redis,
    caption_pool,
    cpu_model,
    load_average,
    log,
    pick,
    raw_images_per_s,
)

from worker import jobs  # noqa: E402
from worker import queue as q  # noqa: E402
from worker.__main__ import Worker  # noqa: E402
from worker.protocol import JobRequest  # noqa: E402
from worker.queue import SERIALIZER, make_queue  # noqa: E402
from worker.registry import load_models  # noqa: E402
from worker.settings import Settings  # noqa: E402

ROWS = 16


def run_jobs(conn: redis.Redis, url: str, checkpoints: Path, models: dict, model_id: str, captions: list[str],
             flush_ms: float, count: int) -> tuple[float, float]:
    """(CPU s, wall s) of this process while the served Worker runs `count` 64-image jobs in burst mode."""
    s = Settings(redis_url=url, checkpoints=checkpoints, step_flush_ms=flush_ms, job_timeout_base=600)
    for j in range(count):
        request = JobRequest(model=model_id, captions=captions, n=4, seeds=list(range(64 * j, 64 * j + 64)))
        q.enqueue_generation(conn, request, s)
    jobs.install_runtime(jobs.Runtime(s, models, torch.device("cpu"), worker_name="bench"))
    worker = Worker([make_queue(conn, name) for name in s.queues], connection=conn, serializer=SERIALIZER,
                    name=f"bench-{time.monotonic_ns()}")
    worker.settings = s
    cpu, wall = time.process_time(), time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--model-id", default="aligndraw-mnist-captions-blind-keys")
    parser.add_argument("--flush", type=float, nargs="+", default=[0.0, 20.0], help="GLIMPSE_STEP_FLUSH_MS values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=3, help="64-image jobs per setting and repeat")
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = load_average()
    started = dt.datetime.now(dt.UTC)
    models = {k: v for k, v in load_models(args.checkpoints, "cpu").items() if k == args.model_id}
    if not models:
        raise SystemExit(f"no generator {args.model_id!r} in {args.checkpoints}")
    lm = models[args.model_id]
    captions = pick(caption_pool(lm), 0, ROWS)
    with tempfile.TemporaryDirectory() as tmp, bench_redis(15, Path(tmp)) as (url, what, _):
        conn = redis.Redis.from_url(url)
        raw = raw_images_per_s(lm, captions, threads=1, rows=ROWS, calls=4, repeats=3, warmup=2)
        run_jobs(conn, url, args.checkpoints, models, args.model_id, captions, args.flush[-1], 1)  # warm-up
        runs: dict[float, list[tuple[float, float]]] = {f: [] for f in args.flush}
        for r in range(args.repeats):
            for f in args.flush:
                runs[f].append(run_jobs(conn, url, args.checkpoints, models, args.model_id, captions, f, args.jobs))
            log(f"repeat {r + 1}/{args.repeats}")
        conn.close()
    images = 64 * args.jobs
    raw_s = images / raw

    def mean_se(values: list[float]) -> str:
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return f"{statistics.mean(values):.3f} ± {se:.3f}"

    print(f"# worker step writes, {started:%Y-%m-%d %H:%M} UTC")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {cpu_model()}, torch {torch.__version__}, one thread; Redis: {what}; load average {before} "
          f"before, {load_average()} after")
    print(f"model: {args.model_id}; {args.jobs} 64-image jobs a run, {args.repeats} repeats, settings interleaved; "
          f"raw sampler {raw:.1f} images/s, so {raw_s:.3f} s for these {images} images\n")
    print("| GLIMPSE_STEP_FLUSH_MS | worker CPU s | wall s | raw sampler time / wall |")
    print("|---:|---:|---:|---:|")
    for f, values in runs.items():
        cpu, wall = [c for c, _ in values], [w for _, w in values]
        print(f"| {f:g} | {mean_se(cpu)} | {mean_se(wall)} | {raw_s / statistics.mean(wall):.1%} |")


if __name__ == "__main__":
    main()
