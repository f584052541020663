"""Worker throughput end to end: images/s through the API and one real worker, as a share of the raw sampler's.

    .venv/bin/python bench/worker_throughput.py [--threads 1 2] [--tiny] [--checkpoints DIR --model-id ID]
        [--device cpu|cuda]

For each torch thread count N (default: 1, then 2) one run measures, on this machine:

  raw       the sampler alone, in this process (torch.set_num_threads(N)), at the worker's exact shape: calls of
            `batch_rows` rows (16) with captions padded to the model's max tokens, each step's canvas converted to
            uint8 as the worker does and then dropped. images/s = rows × calls / seconds, median of --raw-repeats.
  no-op     RQ's ceiling: no-op jobs/s through an in-process SimpleWorker on the same Redis.
  1-image   a real `python -m worker` (OMP_NUM_THREADS=N, GLIMPSE_TORCH_THREADS=N) behind a real API (uvicorn):
            --jobs-1 one-caption n=1 jobs posted back to back, then awaited oldest first (long polls, GET …?wait=,
            as the README advises; `--poll S`: plain GETs S s apart, the client before 2026-12-05 with S = 0.2) and
            each final PNG fetched once its job is done. images/s = images / (last PNG fetched − first POST sent).
  64-image  the same with --jobs-64 jobs of 16 captions × n=4.
  latency   open-loop Poisson arrivals of 1-image jobs at half the 1-image rate just measured, for --latency-seconds:
            POST sent → the `done` event of the job's SSE stream (/events), p50 and p99; beside it the job's own
            created → finished timestamps, which leave out the stream's poll interval and the client.
  events    on the idle stack after that, --idle-jobs 1-image jobs one at a time, each followed on its SSE stream:
            how long after the job started (`started_at`, before its first step is drawn) its first step event
            reached the client, and how long after the result (`finished_at`) the `done` event did; target ≤ 50 ms.
  CPU       the CPU seconds the worker, the API, Redis (when ours) and this client spent in each of the last three
            runs (from /proc): where the time went.

Defaults, per thread count: raw 5 repeats of 8 calls, 500 no-op jobs, 128 1-image jobs, 6 64-image jobs (384 images),
40 s of half-load arrivals; 3-5 minutes in all on a 2-core VM, as busy as its neighbours make it. `--tiny` (a random
16×16, T=5 alignDRAW) is a smoke run.

Jobs ask for the API's default outputs (every frame, GIF, WebP); captions are distinct, from the model's training
templates, and seeded. Redis is a redis-server of the benchmark's own (no persistence, maxmemory 1gb as the embedded
one has) on a free loopback port, stopped at the end, or REDIS_URL's server (database --db, flushed before and
after). On a shared VM the clock drifts, so read the ratios, each taken within one run at one thread count.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from rq import SimpleWorker  # noqa: E402

from models.aligndraw import AlignDRAW, AlignDRAWConfig  # noqa: E402
from models.checkpoint import MANIFEST, Checkpoint, save_checkpoint  # noqa: E402
from models.sampling import Step, sample  # noqa: E402
from models.vocab import CaptionError, Vocabulary  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402  (the fault tests' server, without persistence)
from worker import conditions, jobs  # noqa: E402
from worker import queue as q  # noqa: E402
from worker.__main__ import Worker as WorkerMain  # noqa: E402
from worker.protocol import RESULT_FILE, Keys  # noqa: E402
from worker.registry import LoadedModel, load_models  # noqa: E402
from worker.settings import Settings  # noqa: E402

DEFAULT_MODEL = "aligndraw-mnist-captions-blind-keys"  # the shipped default: paper size, 60×60, T=32
# --tiny: a random alignDRAW small enough for a smoke run in seconds, with MNIST-with-Captions' words.
TINY = dict(height=16, width=16, steps=5, enc_size=32, dec_size=32, z_size=8, read_n=4, write_n=4, embed_size=12,
            lang_size=10, align_size=16)
WORDS = [*"0123456789", "the", "digit", "is", "on", "at", "left", "right", "bottom", "top", "of", "image", "."]
NOOP = "os.getpid"  # the cheapest importable job there is: measures the queue's own ceiling
LONG_POLL = 30.0  # the burst runs' status reads: GET …?wait=, held by the API until the job ends (its max_wait)
TARGETS = {"1-image": 0.40, "64-image": 0.70}  # end to end as a share of raw (the targets)
EVENT_TARGET = 0.050  # s: a step's event, and `done`, reach a client on an idle stack within this (the issue's)


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the machine ------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- Redis: our own server, always stopped --------------------------------------------------------------------

def stop_redis(server: RedisServer) -> str:
    """Stop our own server and make sure it is gone (no process, nothing on the port); says what it did."""
    proc = server.proc
    if proc is None:
        return "redis-server was never started"
    server.stop()
    with socket.socket() as s:
        listening = s.connect_ex(("127.0.0.1", server.port)) == 0
    if proc.poll() is None or listening:
        raise RuntimeError(f"redis-server pid {proc.pid} (port {server.port}) is still running")
    return f"redis-server pid {proc.pid} (port {server.port}) stopped: exit {proc.returncode}, port closed"


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}?db={db}"
    return urlunsplit(parts._replace(path=f"/{db}"))


@contextlib.contextmanager
def bench_redis(db: int, data_dir: Path) -> Iterator[tuple[str, str, int | None]]:
    """(url, what it is, its pid when ours): REDIS_URL's server at database `db` (flushed before and after), else
    our own server."""
    given = Settings().redis_url
    if given:
        url = with_db(given, db)
        conn = redis.Redis.from_url(url)
        conn.flushdb()
        try:
            yield url, f"REDIS_URL's server, database {db}", None
        finally:
            conn.flushdb()
            conn.close()
        return
    # No persistence (the benchmark measures the service, not fsync); maxmemory 1gb with noeviction, as the
    # embedded server of `make serve` runs, so the API's storage check works as it does there.
    server = RedisServer(data_dir, maxmemory="1gb", persist=False)
    try:
        server.start()
        assert server.proc is not None
        yield server.url, f"own redis-server on port {server.port}", server.proc.pid
    finally:
        log(stop_redis(server))


# --- the model and its captions ---------------------------------------------------------------------------------

def prepare_checkpoints(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """A directory holding only the model under test (the worker loads every checkpoint it finds), and its id."""
    out = tmp / "checkpoints"
    out.mkdir()
    if args.tiny:
        vocab = Vocabulary(WORDS, max_length=16)
        torch.manual_seed(0)
        model = AlignDRAW(AlignDRAWConfig(vocab_size=len(vocab), **TINY))
        save_checkpoint(out / "bench-tiny", Checkpoint(model, vocab=vocab))
        return out, "bench-tiny"
    src = (args.checkpoints / args.model_id).resolve()
    if not (src / MANIFEST).is_file():
        raise SystemExit(f"no checkpoint at {src}")
    (out / args.model_id).symlink_to(src, target_is_directory=True)
    return out, args.model_id


def caption_pool(lm: LoadedModel, seed: int = 0) -> list[str]:
    """Distinct captions from MNIST with Captions' two templates (240), those the model's vocabulary takes, in a
    seeded order; the model's example captions when none fits."""
    assert lm.vocab is not None, "a captions model has a vocabulary"
    sides = [(v, h) for v in ("top", "bottom") for h in ("left", "right")]
    pool = [f"the digit {d} is at the {v} {h} of the image ." for d in range(10) for v, h in sides]
    pool += [f"the digit {a} is on the {side} of the digit {b} ." for a in range(10) for b in range(10)
             for side in ("left", "right")]

    def fits(caption: str) -> bool:
        try:
            lm.vocab.check(caption)  # type: ignore[union-attr]
            return True
        except CaptionError:
            return False

    usable = [c for c in pool if fits(c)] or [c for c in lm.info.example_captions if fits(c)]
    if not usable:
        raise SystemExit(f"{lm.info.id}: no caption of the MNIST-with-Captions templates fits its vocabulary")
    random.Random(seed).shuffle(usable)
    return usable


def pick(pool: list[str], start: int, count: int) -> list[str]:
    return [pool[(start + i) % len(pool)] for i in range(count)]


# --- in-process measurements: the raw sampler and RQ's no-op ceiling ---------------------------------------------

def raw_images_per_s(lm: LoadedModel, captions: list[str], *, threads: int, rows: int, calls: int, repeats: int,
                     warmup: int) -> float:
    """Images/s of the sampler alone at the worker's call shape (worker.jobs._sample), median of `repeats`."""
    assert lm.vocab is not None
    torch.set_num_threads(threads)
    given = conditions.captions(lm.vocab, captions[:rows], rows, lm.info.max_caption_tokens or lm.vocab.max_length)
    seeds = list(range(rows))

    def on_step(step: Step) -> None:
        jobs._to_uint8(step.canvas)  # the worker's per-step conversion; here the frames go nowhere

    def one_call() -> None:
        sample(lm.model, seeds=seeds, batch_size=rows, callback=on_step, **given)  # type: ignore[arg-type]

    for _ in range(warmup):  # first calls allocate and pick kernels
        one_call()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            one_call()
        rates.append(rows * calls / (time.perf_counter() - t0))
    return statistics.median(rates)


class _NoopWorker(SimpleWorker):
    """RQ's SimpleWorker with our channel teardown: RQ's own may wait out a 60 s read at the end of `work()`, inside
    the timed window (worker.__main__.Worker.unsubscribe)."""

    unsubscribe = WorkerMain.unsubscribe


def noop_jobs_per_s(url: str, count: int) -> float:
    """No-op jobs/s through RQ's SimpleWorker in burst mode: the queue's own ceiling on this Redis."""
    conn = redis.Redis.from_url(url)
    queue = q.make_queue(conn, "bench-noop")
    for _ in range(count):
        queue.enqueue(NOOP, result_ttl=60)
    # RQ installs its own SIGINT/SIGTERM handlers and leaves them behind; keep ours (Ctrl-C must still stop us).
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        t0 = time.perf_counter()
        _NoopWorker([queue], connection=conn, serializer=q.SERIALIZER).work(burst=True, logging_level="WARNING")
        seconds = time.perf_counter() - t0
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        conn.close()
    return count / seconds


# --- the service: a real worker and a real API ------------------------------------------------------------------

def start(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    out = (logs / f"{name}.log").open("w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM (the worker finishes or requeues its job), then SIGKILL after `grace` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pids: dict[str, int], run: Callable[[], dict]) -> dict:
    """run()'s result with the CPU seconds each process spent meanwhile: where a phase's time went. `client` is this
    process (the HTTP client, and in the latency run its stream threads)."""
    def read() -> dict[str, float]:
        return {**{name: cpu_seconds(pid) for name, pid in pids.items()}, "client": time.process_time()}

    before = read()
    result = run()
    after = read()
    result["cpu_s"] = {name: after[name] - before[name] for name in before}
    return result


@contextlib.contextmanager
def service(url: str, checkpoints: Path, model_id: str, threads: int, logs: Path,
            device: str = "cpu") -> Iterator[tuple[str, dict]]:
    """`python -m worker` and the API under uvicorn (what `make serve` runs) on this Redis, the worker's torch held
    to `threads`; yields the API's base URL and both pids once /readyz lists the model. Both are stopped on the way
    out."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "GLIMPSE_REDIS_URL"}
    env.update(REDIS_URL=url, GLIMPSE_CHECKPOINTS=str(checkpoints), GLIMPSE_DEFAULT_MODEL=model_id,
               OMP_NUM_THREADS=str(threads), GLIMPSE_TORCH_THREADS=str(threads), GLIMPSE_DEVICE=device,
               PYTHONPATH=str(ROOT))
    port = free_port()
    procs: dict[str, subprocess.Popen] = {}
    try:
        # The worker logs at INFO, as `make serve` runs it (its logging is part of what it costs).
        procs["worker"] = start("worker", [sys.executable, "-m", "worker", "--name", f"bench-{threads}t"], env, logs)
        procs["api"] = start("api", [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
                                     "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env, logs)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while not ready(base, model_id):
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{dead or 'the service'} did not come up:\n" +
                                   "\n".join(f"--- {n}.log\n{tail(logs / f'{n}.log')}" for n in procs))
            time.sleep(0.2)
        yield base, {name: p.pid for name, p in procs.items()}
    finally:
        for name in ("api", "worker"):  # no new jobs first
            if name in procs:
                stop(procs[name], grace=30)


def ready(base: str, model_id: str) -> bool:
    try:
        r = httpx.get(f"{base}/readyz", timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and model_id in r.json().get("detail", {}).get("models", [])


# --- the client -------------------------------------------------------------------------------------------------

END_EVENTS = {"done", "failed", "canceled", "expired"}


def post_job(client: httpx.Client, model_id: str, captions: list[str], n: int, seed: int) -> str:
    r = client.post("/v1/generations", json={"model": model_id, "captions": captions, "n": n, "seed": seed})
    if r.status_code != 202:
        raise RuntimeError(f"POST /v1/generations: {r.status_code} {r.text[:300]}")
    return r.json()["id"]


def wait_done(client: httpx.Client, job_id: str, interval: float | None, timeout: float = 600,
              b64: bool = False) -> dict:
    """Until the job ends: long polls (`interval` None, as the README advises), or plain reads `interval` s apart;
    with `b64` each read asks for the final PNGs inline (response_format=b64_json)."""
    deadline = time.monotonic() + timeout
    params: dict[str, Any] = {"wait": LONG_POLL} if interval is None else {}
    if b64:
        params["response_format"] = "b64_json"
    while True:
        body = client.get(f"/v1/generations/{job_id}", params=params, timeout=LONG_POLL + 30).json()
        if body["status"] == "succeeded":
            return body
        if body["status"] in ("failed", "canceled", "expired") or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id}: {body['status']} {body.get('error') or ''}")
        if interval is not None:
            time.sleep(interval)


def fetch_png(client: httpx.Client, job_id: str, index: int) -> None:
    r = client.get(f"/v1/generations/{job_id}/images/{index}.png")
    if r.status_code != 200 or not r.content.startswith(b"\x89PNG"):
        raise RuntimeError(f"job {job_id} image {index}: {r.status_code}")


def burst(client: httpx.Client, model_id: str, specs: list[tuple[list[str], int, int]], poll: float | None,
          b64: bool = False) -> dict:
    """Post every job (captions, n, seed) back to back, then wait for each (oldest first: they finish roughly in
    order, so one wait at a time keeps the API quiet) and fetch its final PNGs (with `b64`, decode them from the
    status that says the job ended). The clock runs from the first POST to the last PNG; with plain polls (`poll` s
    apart) a job's end is seen up to `poll` s late."""
    t0 = time.perf_counter()
    posted = [(post_job(client, model_id, captions, n, seed), len(captions) * n) for captions, n, seed in specs]
    t_posted = time.perf_counter()
    for job_id, images in posted:
        body = wait_done(client, job_id, poll, b64=b64)
        if b64:
            pngs = [base64.b64decode(out["b64_json"] or "") for out in body["outputs"]]
            if len(pngs) != images or not all(p.startswith(b"\x89PNG") for p in pngs):
                raise RuntimeError(f"job {job_id}: {len(pngs)} inline images, not {images} PNGs")
            continue
        for i in range(images):
            fetch_png(client, job_id, i)
    seconds = time.perf_counter() - t0
    images = sum(k for _, k in posted)
    return {"jobs": len(posted), "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "post_seconds": t_posted - t0, "ids": [i for i, _ in posted]}


def sampler_calls(url: str, ids: list[str], rows: int) -> int:
    """Sampler calls the worker made for these jobs, from their result.json (each call has one leader job)."""
    conn = redis.Redis.from_url(url)
    try:
        results = [json.loads(conn.hget(Keys(Settings().key_prefix).files(i), RESULT_FILE) or "{}") for i in ids]
    finally:
        conn.close()
    calls = 0
    for leader in {r["batch"]["leader"] for r in results}:  # a leader's call(s) drew all its batch's rows
        batch_images = sum(len(r["outputs"]) for r in results if r["batch"]["leader"] == leader)
        calls += -(-batch_images // rows)
    return calls


def sse(client: httpx.Client, job_id: str) -> Iterator[tuple[str, str, float]]:
    """The job's SSE stream as (event, data, time.time() on arrival), through its end event."""
    with client.stream("GET", f"/v1/generations/{job_id}/events") as r:
        if r.status_code != 200:
            raise RuntimeError(f"events of {job_id}: {r.status_code}")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event is not None:
                yield event, line[len("data: "):], time.time()
                if event in END_EVENTS:
                    return
    raise RuntimeError(f"the event stream of {job_id} ended without an end event")


def await_done_event(client: httpx.Client, job_id: str) -> dict:
    """Read the job's SSE stream until its end event; returns the `done` body."""
    for event, data, _ in sse(client, job_id):
        if event in END_EVENTS:
            if event != "done":
                raise RuntimeError(f"job {job_id} ended {event}")
            return json.loads(data)
    raise AssertionError("unreachable: sse() ends with an end event or raises")


def stamp(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def latency(client: httpx.Client, model_id: str, pool: list[str], *, rate: float, seconds: float, seed: int) -> dict:
    """Open loop: 1-image jobs posted at Poisson arrival times at `rate` jobs/s whatever the service does, each
    followed in its own thread by its SSE stream; POST sent → done event, and the job's created → finished."""
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < seconds:
        arrivals.append(t)
        t = t + rng.expovariate(rate)
    start_at = time.perf_counter()

    def one(i: int, due: float) -> tuple[float, float, float]:
        sent = time.perf_counter()
        job_id = post_job(client, model_id, pick(pool, i, 1), 1, seed + i)
        body = await_done_event(client, job_id)
        done = time.perf_counter()
        return done - sent, stamp(body["finished_at"]) - stamp(body["created_at"]), sent - due

    with ThreadPoolExecutor(max_workers=256) as threads:  # far more than are ever in flight at half load
        futures = []
        for i, at in enumerate(arrivals):
            due = start_at + at
            time.sleep(max(0.0, due - time.perf_counter()))
            futures.append(threads.submit(one, i, due))
        results = [f.result() for f in futures]
    wall = time.perf_counter() - start_at
    observed, server, late = ([r[k] for r in results] for k in range(3))
    return {"offered_jobs_per_s": rate, "seconds": seconds, "wall_s": wall, "jobs": len(results),
            "p50_s": pct(observed, 50), "p99_s": pct(observed, 99), "max_s": max(observed),
            "server_p50_s": pct(server, 50), "server_p99_s": pct(server, 99), "max_send_lag_s": max(late)}


def idle_events(client: httpx.Client, model_id: str, pool: list[str], *, jobs: int, seed: int) -> dict:
    """On an idle stack, one 1-image job at a time followed on its SSE stream (opened as soon as the POST returns):
    how long after the job started (`started_at`: its first step is drawn and stored after that) the first step event
    reached this client, and how long after the result (`finished_at`) the `done` event did. Same clock."""
    first, done = [], []
    for i in range(jobs):
        job_id = post_job(client, model_id, pick(pool, i, 1), 1, seed + i)
        seen: float | None = None
        for event, data, at in sse(client, job_id):
            if event == "step" and seen is None:
                seen = at
            elif event in END_EVENTS:
                body = json.loads(data)
                if event != "done" or seen is None:
                    raise RuntimeError(f"job {job_id} ended {event}" + ("" if seen else " with no step event"))
                first.append(seen - stamp(body["started_at"]))
                done.append(at - stamp(body["finished_at"]))
        time.sleep(0.1)  # idle again before the next job
    return {"jobs": jobs, "first_step_p50_s": statistics.median(first), "first_step_max_s": max(first),
            "done_p50_s": statistics.median(done), "done_max_s": max(done)}


# --- one thread count -------------------------------------------------------------------------------------------

def run_threads(threads: int, args: argparse.Namespace, url: str, redis_pid: int | None, checkpoints: Path,
                lm: LoadedModel, pool: list[str], settings: Settings, logs: Path) -> dict:
    rows = settings.batch_rows
    log(f"threads {threads}: raw sampler")
    raw = raw_images_per_s(lm, pool, threads=threads, rows=rows, calls=args.raw_calls, repeats=args.raw_repeats,
                           warmup=3)
    log(f"threads {threads}: raw {raw:.1f} images/s; RQ no-op ceiling")
    noop = noop_jobs_per_s(url, args.noop_jobs)
    log(f"threads {threads}: no-op {noop:.1f} jobs/s; starting the worker and the API")
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    with service(url, checkpoints, lm.info.id, threads, logs, args.device) as (base, pids), \
            httpx.Client(base_url=base, timeout=httpx.Timeout(120, connect=10), limits=limits) as client:
        pids = {**pids, **({"redis": redis_pid} if redis_pid else {})}
        # Not counted: the worker's first calls allocate and pick kernels, the API's first requests warm up.
        burst(client, lm.info.id, [(pick(pool, 0, rows), 1, 1), ([pool[0]], 1, 2)], args.poll, args.b64)
        log(f"threads {threads}: {args.jobs_1} 1-image jobs")
        one = measured(pids, lambda: burst(client, lm.info.id, [(pick(pool, i, 1), 1, i) for i in range(args.jobs_1)],
                                                   args.poll, args.b64))
        one["sampler_calls"] = sampler_calls(url, one.pop("ids"), rows)
        log(f"threads {threads}: 1-image {one['images_per_s']:.1f} images/s; {args.jobs_64} 64-image jobs")
        big = measured(pids, lambda: burst(client, lm.info.id, [(pick(pool, 16 * j, 16), 4, 1000 * j)
                                                                for j in range(args.jobs_64)], args.poll, args.b64))
        big["sampler_calls"] = sampler_calls(url, big.pop("ids"), rows)
        log(f"threads {threads}: 64-image {big['images_per_s']:.1f} images/s; latency at half load")
        lat = measured(pids, lambda: latency(client, lm.info.id, pool, rate=one["images_per_s"] / 2,
                                             seconds=args.latency_seconds, seed=100_000))
        log(f"threads {threads}: events on an idle stack")
        time.sleep(1.0)  # the half-load jobs' last writes settle: idle means idle
        idle = idle_events(client, lm.info.id, pool, jobs=args.idle_jobs, seed=200_000)
    for r in (one, big):
        r["ratio_to_raw"] = r["images_per_s"] / raw
        # What the sampler alone would need for these calls: the rest of the wall time went elsewhere.
        r["sampler_share"] = r["sampler_calls"] * rows / raw / r["seconds"]
    return {"threads": threads, "raw_images_per_s": raw, "one_image": one, "sixty_four_image": big, "latency": lat,
            "idle_events": idle, "noop_jobs_per_s": noop,
            "client": ("final PNGs inline (response_format=b64_json)" if args.b64 else "a GET a final PNG")
                      + (f", plain polls {args.poll} s apart" if args.poll is not None else ", long polls")}


# --- the report -------------------------------------------------------------------------------------------------

def table(r: dict, rows: int) -> str:
    one, big, lat, idle = r["one_image"], r["sixty_four_image"], r["latency"], r["idle_events"]

    def e2e(label: str, m: dict, target: float) -> str:
        met = "met" if m["ratio_to_raw"] >= target else "not met"
        return (f"| end to end, {label}: {m['jobs']} jobs, {m['images']} images in {m['sampler_calls']} sampler calls "
                f"({m['images'] / m['sampler_calls']:.1f} of {rows} rows used a call), the sampler ≈ "
                f"{100 * m['sampler_share']:.0f}% of the wall time | {m['images_per_s']:.1f} images/s "
                f"| {100 * m['ratio_to_raw']:.1f}% | ≥ {100 * target:.0f}%: {met} |")

    return "\n".join([
        f"torch threads: {r['threads']} (raw: torch.set_num_threads; worker: OMP_NUM_THREADS and "
        f"GLIMPSE_TORCH_THREADS); the burst client: {r['client']}",
        "",
        "| measure | value | share of raw | target |",
        "|---|---:|---:|---|",
        f"| raw sampler ({rows}-row calls, uint8 per step, nothing written) | {r['raw_images_per_s']:.1f} images/s "
        "| 100% | |",
        e2e("1-image jobs", one, TARGETS["1-image"]),
        e2e("64-image jobs (16 captions × n=4)", big, TARGETS["64-image"]),
        f"| POST → done at half load, p50 / p99 ({lat['offered_jobs_per_s']:.1f} 1-image jobs/s offered, Poisson, "
        f"{lat['seconds']:.0f} s, {lat['jobs']} jobs; done seen on each job's SSE stream) | {lat['p50_s']:.2f} s / "
        f"{lat['p99_s']:.2f} s | | |",
        f"| the same jobs' created → finished, p50 / p99 (their own timestamps) | {lat['server_p50_s']:.2f} s / "
        f"{lat['server_p99_s']:.2f} s | | |",
        f"| RQ no-op ceiling (in-process SimpleWorker, same Redis) | {r['noop_jobs_per_s']:.1f} jobs/s | | |",
        idle_row("first step event after the job started", idle["jobs"], idle["first_step_p50_s"],
                 idle["first_step_max_s"]),
        idle_row("done event after the result", idle["jobs"], idle["done_p50_s"], idle["done_max_s"]),
        cpu_row("1-image run", one),
        cpu_row("64-image run", big),
        cpu_row("half-load run", lat),
    ])


def idle_row(label: str, jobs: int, p50: float, worst: float) -> str:
    met = "met" if worst <= EVENT_TARGET else "not met"
    return (f"| idle stack, {jobs} 1-image jobs one at a time: {label}, p50 / max | {1000 * p50:.0f} ms / "
            f"{1000 * worst:.0f} ms | | ≤ {1000 * EVENT_TARGET:.0f} ms: {met} |")


def cpu_row(label: str, m: dict) -> str:
    """Where a phase's CPU went: seconds per process beside the wall seconds the cores offered."""
    cpu, wall = m["cpu_s"], m.get("wall_s", m["seconds"])
    names = [n for n in ("worker", "api", "redis", "client") if n in cpu]
    return (f"| CPU s in the {label}: {' / '.join(names)} (wall {wall:.1f} s × {os.cpu_count()} cores = "
            f"{wall * (os.cpu_count() or 1):.0f} CPU s) | {' / '.join(f'{cpu[n]:.1f}' for n in names)} | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one run each")
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--model-id", default=DEFAULT_MODEL)
    ap.add_argument("--tiny", action="store_true", help="a random tiny alignDRAW instead: a smoke run")
    ap.add_argument("--jobs-1", type=int, default=128, help="1-image jobs in the burst run")
    ap.add_argument("--jobs-64", type=int, default=6, help="64-image jobs in the burst run")
    ap.add_argument("--latency-seconds", type=float, default=40.0, help="length of the half-load arrivals")
    ap.add_argument("--idle-jobs", type=int, default=20, help="1-image jobs, one at a time, for the event latency")
    ap.add_argument("--raw-calls", type=int, default=8, help="sampler calls per raw repeat")
    ap.add_argument("--raw-repeats", type=int, default=5)
    ap.add_argument("--noop-jobs", type=int, default=500)
    ap.add_argument("--db", type=int, default=15, help="database used (flushed) when REDIS_URL is set")
    ap.add_argument("--poll", type=float, default=None,
                    help="the burst client's plain status reads this many s apart (before 2026-12-05: 0.2); "
                         "default: long polls, GET …?wait=")
    ap.add_argument("--b64", action="store_true",
                    help="the burst client takes the final PNGs inline from the status that says a job ended "
                         "(response_format=b64_json) instead of one GET an image")
    ap.add_argument("--device", default="cpu", help="where the raw sampler and the worker draw (cpu or cuda)")
    args = ap.parse_args()

    # SIGTERM (a `timeout`, a CI cancel) unwinds like Ctrl-C, so every `finally` below stops what it started.
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)

    settings = Settings()  # the worker reads the same environment: its batch_rows and batch_jobs are these
    began = dt.datetime.now(dt.UTC)
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="glimpse-bench-"))
    try:
        checkpoints, model_id = prepare_checkpoints(args, tmp)
        lm = load_models(checkpoints, args.device)[model_id]
        info = lm.info
        if "caption" not in info.modes:
            raise SystemExit(f"{model_id} is a {info.kind} model: this benchmark draws captioned jobs")
        pool = caption_pool(lm)
        results = []
        with bench_redis(args.db, tmp / "redis") as (url, redis_what, redis_pid):
            conn = redis.Redis.from_url(url)
            redis_version = conn.info()["redis_version"]
            conn.close()
            for n in args.threads:
                results.append(run_threads(n, args, url, redis_pid, checkpoints, lm, pool, settings,
                                           tmp / f"logs-{n}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    if args.device.startswith("cuda"):
        machine += f"; sampling on {torch.cuda.get_device_name(torch.device(args.device))}"
    print(f"# worker throughput end to end, {began:%Y-%m-%d %H:%M} UTC ({(dt.datetime.now(dt.UTC) - began).seconds} s)")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine}; torch {torch.__version__}; redis {redis_version} ({redis_what}); load average "
          f"{load_before} before, {load_average()} after")
    print(f"model: {model_id} ({info.kind}, {info.height}×{info.width}, T={info.steps}, captions padded to "
          f"{info.max_caption_tokens} tokens); worker: batch_rows={settings.batch_rows}, "
          f"batch_jobs={settings.batch_jobs}; jobs ask for frames, GIF and WebP (the API's defaults)\n")
    for r in results:
        print(table(r, settings.batch_rows) + "\n")
    print(json.dumps({"date": began.isoformat(timespec="seconds"), "machine": machine, "torch": torch.__version__,
                      "redis": redis_version, "model": model_id, "batch_rows": settings.batch_rows,
                      "batch_jobs": settings.batch_jobs, "args": {k: str(v) for k, v in vars(args).items()},
                      "results": results}))


if __name__ == "__main__":
    main()
