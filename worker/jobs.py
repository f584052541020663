"""The job function RQ runs, `generate(payload)`, and what runs behind it: the batched sampler for samples,
reconstructions and samples of a set's concept, a latent walk, likelihood scoring, few-shot classification, or the
sentences of a text family, as the request's condition says (worker.protocol).

A sampling job (the "leader") may take up to B−1 more waiting jobs for the same model and condition kind out of
the queue and draw them in the same sampler call. Every sampler call has the same shape whatever it serves:
exactly `batch_rows` rows (padding rows fill the rest, seed 0 and a one-word caption) and captions padded to the
model's `max_caption_tokens` (worker.conditions). MKL picks its kernels by matrix shape, so a fixed shape is what
makes a job's pixels the same alone and in any batch; rows never mix (every op is row-wise), so neighbours do not
matter either (tests/worker/test_batching.py checks the bytes for several job mixes). Image_set jobs batched together
pad their sets to the chunk's largest with a mask: the masked items add exact zeros to the set's mean, though the
encoder then runs on more items, a shape change the fixed-shape rule does not cover (same bytes on the tiny test
model; on another, expect agreement to float rounding).

Claimed jobs stay RQ jobs: when the leader is done it has written their files and closes them as RQ closes a job
that returned (worker.queue.finish_claimed), so RQ never runs them. A claimed job that comes back to the queue (a
crash, then recovery) finds its result.json in `generate` and returns it at once.

After each step, in one pipelined round trip for the whole batch: that step's canvases go into each job's files hash
as raw uint8 (`raw/{i}/{t}`; the API renders PNGs and animations from them on request), each job's meta gets step/T
(the meta field only, never the whole job) with an announcement on its events channel, and the cancel flags are read.
A writer thread sends that round trip while the sampler draws on; the sampler waits for it only before sending the
next (writes keep their order, one in flight at most), and acts on the cancel flags it read at the first step after
it landed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any, cast

import numpy as np
import redis
import torch
from rq import Retry, get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from models.bounds import Interrupted, importance_weighted
from models.sampling import Step, draw_noise, lerp, sample
from worker import conditions, render
from worker.protocol import (
    JOB_FUNC,
    RESULT_FILE,
    Decoding,
    FewShot,
    Images,
    ImageSet,
    InvalidJobError,
    JobRequest,
    JobResult,
    Keys,
    Likelihood,
    Output,
    Score,
    TextPair,
    Walk,
    attention_source_name,
    image_name,
    job_bytes_bound,
    parse_request,
    raw_bound,
    raw_name,
    validate_for_model,
    word_seed,
)
from worker.queue import (
    CLAIM_LUA,
    SERIALIZER,
    announce,
    finish_claimed,
    gave_up,
    make_queue,
    now_iso,
    owner_record,
    printable,
    queued_again,
    requeue_own,
)
from worker.redis_conn import text
from worker.registry import LoadedModel, load_models, pick_device
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a worker process holds: settings, the loaded models and its name (for owner records)."""

    settings: Settings
    models: dict[str, LoadedModel]
    device: torch.device
    worker_name: str = "inline"
    current: set[str] = field(default_factory=set)  # job ids being drawn now (for the heartbeat)
    # One thread that sends each sampler step's Redis pipeline while the sampler draws the next step (socket waits
    # release the GIL): the step's round trip leaves the sampler's path. One thread keeps the writes in order.
    writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="steps"))

    @classmethod
    def load(cls, settings: Settings, worker_name: str = "inline") -> Runtime:
        set_threads(settings)
        device = pick_device(settings.device)
        return cls(settings, load_models(settings.checkpoints, device), device, worker_name)


def set_threads(settings: Settings) -> None:
    """torch's thread pools, set once before the first op (inter-op threads cannot change after it)."""
    torch.set_num_threads(settings.threads)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work has run (in-process workers): keep it
        torch.set_num_interop_threads(settings.torch_interop_threads)
    log.info("torch threads: %d intra-op, %d inter-op", torch.get_num_threads(), torch.get_num_interop_threads())


_runtime: Runtime | None = None


def install_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    """The installed runtime; a plain `rq worker` without `python -m worker` loads one lazily, once."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime.load(get_settings())
    return _runtime


# --- shutdown ---------------------------------------------------------------------------------------------------

class ShutdownGuard:
    """SIGTERM/SIGINT while a job runs: the first signal is passed on to RQ (warm shutdown: the worker exits after
    this job) and starts a grace period; when it has passed, or on a second signal, the job stops after its
    current step and is requeued. RQ's own second-signal handler (cold shutdown: SystemExit in the middle of the
    job, which RQ then records as failed) is never reached while a job runs."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, grace: float):
        self.grace = grace
        self.first_at: float | None = None
        self.forced = False
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> ShutdownGuard:
        try:
            for s in self.SIGNALS:
                self.saved[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no signals to guard
            self.saved.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.first_at is not None:
            self.forced = True
            return
        self.first_at = time.monotonic()
        log.warning("signal %d: finishing the current job within %.1f s, else requeueing it", signum, self.grace)
        previous = self.saved.get(signum)
        if callable(previous):
            try:
                previous(signum, frame)  # RQ: stop after this job; it swaps its handlers for the cold-stop ones
            finally:
                for s in self.SIGNALS:  # keep ours in place, and restore RQ's current ones on exit
                    self.saved[s] = signal.signal(s, self._handle)

    @property
    def stop(self) -> bool:
        return self.forced or (self.first_at is not None and time.monotonic() - self.first_at >= self.grace)


# --- one job inside a batch -------------------------------------------------------------------------------------

@dataclass(eq=False)  # identity: an entry is one job of this run
class Entry:
    job: Job
    request: JobRequest
    claimed: bool  # taken out of the queue by the leader (False for the leader itself)
    attempt: int = 1
    first_image: int = 0  # index of this entry's first image among all rows of the run
    steps_done: int = 0
    canceled: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    # per finished output (every step drawn): its final uint8 image (H, W, C), windows (T, 4) or None, alignment
    # (T, K) or None; per scored image its score. Intermediate canvases live in Redis only (raw/), never here.
    finals: dict[int, np.ndarray] = field(default_factory=dict)
    windows: dict[int, np.ndarray | None] = field(default_factory=dict)
    alignments: dict[int, np.ndarray | None] = field(default_factory=dict)
    stored: dict[int, int] = field(default_factory=dict)  # raw canvases stored so far, per output
    steps_total: int = 0  # steps this run counts: T, a walk's points, the images scored
    scores: dict[int, Score] = field(default_factory=dict)
    # per classified query image (few_shot): its predicted label and every class's score
    predictions: dict[int, tuple[str, dict[str, float]]] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)  # per decoded output of a text family: its sentence

    def frames_offered(self, i: int) -> int:
        """Frame PNGs a client may fetch for output i: its raw canvases stored, if the request wants frames."""
        return self.stored.get(i, 0) if self.request.output.frames else 0

    def returns(self, lm: LoadedModel) -> str:
        return lm.info.modes[self.request.condition.kind]


def _to_uint8(canvas: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) in [0, 1] (the sampler's sigmoids) -> (..., H, W, C) uint8 on the CPU, rounded half to even."""
    if canvas.device.type != "cpu":  # converted where it lies: a quarter of the bytes cross to the host
        return (canvas * 255).round_().to(torch.uint8).movedim(-3, -1).cpu().numpy()
    # numpy's three passes took 17 µs at (16, 1, 60, 60), torch's four small ops 52 µs: each step whose canvases
    # are kept, and each chunk's finals
    return np.rint(canvas.numpy() * 255).astype(np.uint8).transpose(*range(canvas.dim() - 3), -2, -1, -3)


def _save_meta(job: Job, meta: dict[str, Any], pipeline: redis.client.Pipeline | None = None, **update: Any) -> None:
    """Write the job's progress, then announce it: the API's event streams and long polls wake on the message.
    With `pipeline` both are queued on it (RQ's save_meta is this same HSET of the serialised meta)."""
    meta.update(update, updated_at=now_iso())
    job.meta = meta
    target = pipeline if pipeline is not None else job.connection
    target.hset(job.key, "meta", job.serializer.dumps(meta))
    announce(target, get_runtime().settings, job.id, str(meta.get("state", "")))


def _set_meta(job: Job, stored: bytes | None) -> dict[str, Any]:
    """The job's meta from its stored hash field, read in a caller's pipeline: what job.get_meta(refresh=True)
    would fetch and keep, without its own round trip."""
    job.meta = job.serializer.loads(stored) if stored else {}
    return job.meta


def _fail(job: Job, kind: str, message: str) -> None:
    meta = job.get_meta(refresh=True)
    _save_meta(job, meta, state="failed", error={"type": kind, "message": message})


def _load(rt: Runtime, payload: object) -> tuple[JobRequest, LoadedModel]:
    request = parse_request(payload)
    lm = rt.models.get(request.model)
    if lm is None:
        raise InvalidJobError(f"unknown model {request.model!r}; this worker serves {sorted(rt.models)}")
    validate_for_model(request, lm.info, max_job_bytes=rt.settings.max_job_bytes)
    return request, lm


def generate(payload: dict[str, Any]) -> dict[str, Any] | Retry:
    """The RQ job: draw the request's images (and maybe other waiting jobs' in the same call)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("worker.jobs.generate runs inside an RQ worker")
    rt = get_runtime()
    conn: redis.Redis = job.connection
    keys = Keys(rt.settings.key_prefix)
    with conn.pipeline(transaction=False) as p:  # whether it is drawn already, and its progress record: one trip
        p.hget(keys.files(job.id), RESULT_FILE)
        p.hget(job.key, "meta")
        done, stored_meta = p.execute()
    if done is not None:  # drawn already, inside another job's batch (or by an earlier attempt)
        conn.hdel(keys.running, job.id)
        return json.loads(done)
    try:
        request, lm = _load(rt, payload)
    except InvalidJobError as e:
        _fail(job, "invalid", str(e))
        conn.hdel(keys.running, job.id)  # the worker's loop wrote an owner record before it ran this
        raise
    meta = _set_meta(job, stored_meta)
    attempt = int(meta.get("attempt") or 0)  # counted when the worker took the job (worker.__main__.Worker)
    if attempt < 1:
        raise RuntimeError("worker.jobs.generate runs inside glimpse's worker, which counts each job's attempts")
    leader = Entry(job, request, claimed=False, attempt=attempt, meta=meta)  # owned since the take, too
    entries = [leader]
    try:
        entries += _claim_batch(conn, rt, leader, lm)  # inside: a store error here hands back what it took
        rt.current.update(e.job.id for e in entries)
        with ShutdownGuard(rt.settings.shutdown_grace) as guard:
            stopped = _run(conn, rt, lm, entries, guard)
        summaries = {} if stopped else _finish(conn, rt, lm, entries)
        if summaries and entries[1:]:  # closed here: RQ has nothing left to run for them
            finish_claimed(conn, [(e.job, summaries[e.job.id]) for e in entries[1:]], rt.settings, rt.worker_name)
    except redis.RedisError as e:
        # The job store failed for longer than the client retries (down, or full): not the job's fault. Hand the
        # jobs back like a shutdown does; if Redis cannot take even that, the worker's loop ends and requeues them
        # once it can (worker.__main__.recover).
        log.warning("job %s: job store error (%s); requeueing", job.id, store_error(e))
        with contextlib.suppress(redis.RedisError):
            _requeue_all(conn, rt, entries, reason="job store error")
            # a claim whose reply was lost: owned by this live worker, so no sweep would free it
            requeue_own(conn, rt.settings, rt.worker_name, "job store error")
        return _retry_or_give_up(rt, leader, "job store error")
    except BaseException as e:
        # A timeout or a bug fails the leader; jobs it claimed did nothing wrong and go back to the queue.
        for other in entries[1:]:
            _release(conn, rt, other)
        kind = "timeout" if isinstance(e, JobTimeoutException) else "error"
        _fail(job, kind, public_error(e))
        conn.hdel(keys.running, job.id)
        raise
    finally:
        rt.current.difference_update(e.job.id for e in entries)
    if stopped:  # shutdown: requeue everything unfinished (RQ requeues the leader because it returns Retry)
        _requeue_all(conn, rt, entries, reason="worker shutdown")
        return _retry_or_give_up(rt, leader, "worker shutdown")
    conn.hdel(keys.running, *[e.job.id for e in entries])
    return summaries[job.id]


def _requeue_all(conn: redis.Redis, rt: Runtime, entries: list[Entry], reason: str) -> None:
    """Claimed jobs back to the queue; the leader marked queued (RQ requeues it because the job returns Retry)."""
    for other in entries[1:]:
        _release(conn, rt, other)
    leader = entries[0]
    _save_meta(leader.job, leader.meta, **queued_again(), requeued=reason)
    conn.hdel(Keys(rt.settings.key_prefix).running, leader.job.id)


class GaveUp(Exception):
    """A job cut short on its last allowed attempt: RQ fails it, and its record says why."""


def _retry_or_give_up(rt: Runtime, leader: Entry, reason: str) -> Retry:
    """RQ's Retry for a leader cut short before its last allowed attempt; on that attempt the job fails as a dead
    worker's does (worker.queue.requeue): the limit is glimpse's attempt count on every path, not RQ's count of
    Retry returns, which a crash's requeue never raises (a job could otherwise run past max_attempts)."""
    attempt, limit = leader.attempt, rt.settings.max_attempts
    if attempt < limit:
        return Retry(max=limit)  # its Retry returns so far ≤ attempt − 1 < limit: RQ never fails it first
    message = gave_up(attempt, reason)
    with contextlib.suppress(redis.RedisError):
        _save_meta(leader.job, leader.meta, state="failed", error={"type": "lost", "message": message})
    raise GaveUp(message)


def store_error(e: redis.RedisError) -> str:
    """A Redis error in words fit for a job record: never its message, which may quote a command's (PNG) bytes."""
    if isinstance(e, redis.exceptions.OutOfMemoryError):
        return "the job store is full (Redis maxmemory reached)"
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return "the job store (Redis) could not be reached"
    return f"job store error ({type(e).__name__})"


def public_error(e: BaseException, limit: int = 300) -> str:
    """What a client reads in `error`: the exception's type and the first line of its message, printable and short."""
    if isinstance(e, redis.RedisError):
        return store_error(e)
    return printable(f"{type(e).__name__}: {e}", limit)


CANCEL_POLL = 0.25  # seconds between a likelihood job's reads of its cancel flag within one image
BATCHED = ("none", "caption", "images", "image_set")  # conditions whose rows share sampler calls across jobs


def _claim_batch(conn: redis.Redis, rt: Runtime, leader: Entry, lm: LoadedModel) -> list[Entry]:
    """Take up to B−1 waiting jobs for the same model that fit in the leader's one sampler call."""
    s = rt.settings
    free = s.batch_rows - leader.request.images
    kind = leader.request.condition.kind
    if s.batch_jobs <= 1 or free <= 0 or kind not in BATCHED or leader.returns(lm) == "text":
        return []  # a text family's sentences take one decoding call: nothing to share
    if leader.meta.get("alone"):
        return []  # its worker died under it (queue.requeue): it draws alone, risking no other job's attempt
    keys = Keys(s.key_prefix)
    queue_key = make_queue(conn, leader.job.origin).key
    ids = [text(i) for i in conn.lrange(queue_key, 0, s.batch_scan - 1)]
    # Choose first, then claim in two round trips for all of them, not three a job: a job whose claim fails
    # (canceled, or another worker took it first) only leaves its rows unused in this call.
    chosen: list[tuple[Job, JobRequest]] = []

    def waiting() -> Iterator[Job | None]:
        """The waiting jobs a page at a time, each page as many as could still fit (one row each at least, 4 at
        least), not all batch_scan at once: every job read is decoded."""
        start = 0
        while start < len(ids):
            page = ids[start : start + max(min(free, s.batch_jobs - 1 - len(chosen)), 4)]
            start += len(page)
            yield from Job.fetch_many(page, connection=conn, serializer=SERIALIZER)

    for job in waiting():
        if job is None or job.func_name != JOB_FUNC or job.meta.get("alone"):
            continue
        try:
            request, _ = _load(rt, job.args[0] if job.args else None)
        except InvalidJobError:
            continue  # it fails on its own, with its own error
        if request.model != leader.request.model or request.condition.kind != kind or request.images > free:
            continue
        chosen.append((job, request))
        free -= request.images
        if len(chosen) >= s.batch_jobs - 1 or free <= 0:
            break
    if not chosen:
        return []
    with conn.pipeline(transaction=False) as p:
        for job, _ in chosen:
            p.exists(keys.cancel(job.id))
            p.hget(job.key, "meta")
        looked = p.execute()
    claim = conn.register_script(CLAIM_LUA)
    claimed: list[Entry] = []
    with conn.pipeline(transaction=False) as p:
        for (job, request), canceled, meta in zip(chosen, looked[::2], looked[1::2], strict=True):
            if canceled:
                continue
            counted = _set_meta(job, meta)
            counted["attempt"] = attempt = int(counted.get("attempt") or 0) + 1  # spent by the claim, as by a take
            claim(keys=[queue_key, keys.running, job.key],
                  args=[job.id, owner_record(rt.worker_name, attempt), job.serializer.dumps(counted), meta or b""],
                  client=p)
            claimed.append(Entry(job, request, claimed=True, attempt=attempt, meta=counted))
        won = p.execute() if claimed else []
    started = datetime.now(UTC)  # kept by finish_claimed, as RQ keeps a dequeued job's start
    out = [e for e, ok in zip(claimed, won, strict=True) if ok == 1]
    for e in out:
        e.job.started_at = started
    if out:
        log.info("job %s: batching %d waiting job(s) with it", leader.job.id, len(out))
    return out


def _release(conn: redis.Redis, rt: Runtime, entry: Entry) -> None:
    """Give a claimed job back to the queue, its progress reset (its next attempt redraws it from step 1; the
    claim's attempt stays spent, as a take's does)."""
    _save_meta(entry.job, entry.meta, **queued_again())
    conn.lpush(make_queue(conn, entry.job.origin).key, entry.job.id)
    conn.hdel(Keys(rt.settings.key_prefix).running, entry.job.id)


def _run(conn: redis.Redis, rt: Runtime, lm: LoadedModel, entries: list[Entry], guard: ShutdownGuard) -> bool:
    """Run the entries' job(s) as their condition says. Returns True when stopped by shutdown."""
    condition = entries[0].request.condition
    if entries[0].returns(lm) == "text":
        return _write(conn, rt, lm, entries[0], guard)
    if isinstance(condition, Likelihood):
        return _score(conn, rt, lm, entries[0], condition, guard)
    if isinstance(condition, Walk):
        return _walk(conn, rt, lm, entries[0], condition, guard)
    if isinstance(condition, FewShot):
        return _classify(conn, rt, lm, entries[0], condition, guard)
    return _sample(conn, rt, lm, entries, guard)


def _start(e: Entry, rt: Runtime, steps: int, chunks: int, batch_jobs: int, lm: LoadedModel,
           pipeline: redis.client.Pipeline | None = None) -> None:
    e.steps_total = steps
    # the shape of raw/ frames, which the API renders; a text family draws none, so its jobs record none
    frames: dict[str, Any] = {"frame_shape": list(lm.info.shape)} if lm.info.height is not None else {}
    # started_at: this attempt's start, written once. RQ's own record of it moves when RQ saves the job at its end
    # (it resets started_at after writing it), which changed a finished job's body and ETag a millisecond later.
    _save_meta(e.job, e.meta, pipeline, state="running", step=0, steps=steps, attempt=e.attempt, worker=rt.worker_name,
               chunk=1, chunks=chunks, progress=0.0, batch_jobs=batch_jobs, returns=e.returns(lm),
               started_at=now_iso(), scores={}, labels={}, **frames)  # scores: a requeued job's are of its cut attempt


def _canceled(conn: redis.Redis, keys: Keys, e: Entry) -> bool:
    _read_cancels(conn, keys, [e])
    return e.canceled


def _read_cancels(conn: redis.Redis, keys: Keys, entries: list[Entry]) -> None:
    """Mark the entries whose job a client asked to cancel, in one round trip for all of them."""
    asking = [e for e in entries if not e.canceled]
    if not asking:
        return
    with conn.pipeline(transaction=False) as p:
        for e in asking:
            p.exists(keys.cancel(e.job.id))
        flags = p.execute()
    for e, flag in zip(asking, flags, strict=True):
        if flag:
            e.canceled = True
            log.info("job %s: canceled after step %d", e.job.id, e.steps_done)


def _sample(conn: redis.Redis, rt: Runtime, lm: LoadedModel, entries: list[Entry], guard: ShutdownGuard) -> bool:
    """Sample (or reconstruct) every entry's images in chunks of exactly `batch_rows` rows. An image_set job's rows
    all read its set of examples (`sets`, `set_mask`)."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    info = lm.info
    rows: list[tuple[Entry, int]] = []  # (entry, image index within the entry)
    uploads: dict[Entry, torch.Tensor] = {}
    sets: dict[Entry, torch.Tensor] = {}  # image_set: the job's examples (S, C, H, W)
    for e in entries:
        e.first_image = len(rows)
        rows += [(e, i) for i in range(e.request.images)]
        if isinstance(e.request.condition, Images):
            uploads[e] = conditions.read_images(conn, keys, e.job.id, e.request.inputs, info)
        if isinstance(e.request.condition, ImageSet):
            sets[e] = conditions.read_images(conn, keys, e.job.id, e.request.inputs, info)
    n_chunks = math.ceil(len(rows) / s.batch_rows)
    with conn.pipeline(transaction=False) as p:  # every job's start in one round trip
        for e in entries:
            _start(e, rt, info.steps, n_chunks, len(entries), lm, pipeline=p)
        p.execute()
    ttl = s.result_ttl + max(e.job.timeout or 0 for e in entries)
    for c in range(n_chunks):
        chunk = rows[c * s.batch_rows : (c + 1) * s.batch_rows]
        in_chunk = list(dict.fromkeys(e for e, _ in chunk))
        # noise seeds, one a row: 0 for a reconstruction's rows and the padding (their noise is drawn but unused)
        seeds = [e.request.seeds[i] if e.request.seed_count else 0  # type: ignore[index]
                 for e, i in chunk] + [0] * (s.batch_rows - len(chunk))
        given: dict[str, torch.Tensor] = {}
        if "caption" in info.modes:
            assert lm.vocab is not None
            given = conditions.captions(lm.vocab, [e.request.image_captions()[i] or "" for e, i in chunk],
                                        s.batch_rows, info.max_caption_tokens or lm.vocab.max_length)
        if uploads:
            given["images"] = conditions.pad_rows(torch.stack([uploads[e][i] for e, i in chunk]), s.batch_rows)
        if sets:
            given["sets"], given["set_mask"] = conditions.stack_sets([sets[e] for e, _ in chunk], s.batch_rows)
        _read_cancels(conn, keys, in_chunk)
        # "drawn": the jobs whose canvases the chunk's last step stored (a cancel read by that very write comes after
        # their images were finished: they are kept)
        state: dict[str, Any] = {"stopped": False, "drawn": set()}
        sent: list[tuple[Future, list[Entry]]] = []  # the write in flight while the sampler draws on: ≤ 1

        def settle(sent: list[tuple[Future, list[Entry]]] = sent, in_chunk: list[Entry] = in_chunk,
                   block: bool = True) -> bool:
            """Act on the cancel flags the write in flight read, once it is written: waiting for it, or with
            `block=False` only if it is already done. True when every job of the chunk is canceled."""
            while sent and (block or sent[0][0].done()):
                future, active = sent[0]
                result = future.result()  # popped only once written: a timeout here leaves it for the handler
                sent.pop(0)
                flags = result[-1] if active else []
                for e, flag in zip(active, flags, strict=True):
                    if flag and not e.canceled:
                        e.canceled = True
                        log.info("job %s: canceled after step %d", e.job.id, e.steps_done)
            return all(e.canceled for e in in_chunk)

        # Fixed for the chunk: each job's first row (its window and word weights go live in meta) and its word count.
        first_row: dict[Any, int] = {}
        for r, (e, _) in enumerate(chunk):
            first_row.setdefault(e, r)
        n_words = given["lengths"].tolist() if "lengths" in given else None
        # the rows whose canvases are kept, as (row, entry, image); the canvases of the steps drawn since the last
        # write, per job; and when that write was sent
        keeps = [(r, e, i) for r, (e, i) in enumerate(chunk) if e.request.output.canvases and e.returns(lm) == "frames"]
        pending: dict[Entry, dict[str, bytes]] = {}
        flushed: dict[str, float] = {"at": 0.0}

        def on_step(step: Step, chunk=chunk, in_chunk=in_chunk, c=c, state=state, first_row=first_row,
                    n_words=n_words, settle=settle, sent=sent, keeps=keeps, pending=pending,
                    flushed=flushed) -> bool:
            if settle(block=False):  # the write sent while later steps were drawn, if it landed: its flags count
                return False
            if keeps:
                raws = render.raw_rows(_to_uint8(step.canvas[: len(chunk)]))
                for r, e, i in keeps:
                    if not e.canceled:
                        pending.setdefault(e, {})[raw_name(i, step.t)] = raws[r]
            now = time.perf_counter()
            if not (step.t in (1, step.steps) or guard.stop or s.step_delay
                    or now - flushed["at"] >= s.step_flush_ms / 1000):
                return True
            if settle():  # one write in flight at most (they land in order; a slow store slows the sampler)
                return False
            flushed["at"] = now
            active = [e for e in in_chunk if not e.canceled]
            # One round trip for the steps since the last: the canvases, then each job's progress and its
            # announcement (in that order, so a reader woken by the announcement finds the canvases), then the
            # cancel flags.
            canvases = {e: named for e, named in pending.items() if not e.canceled}
            pending.clear()
            for e, i in chunk:
                if e in canvases:
                    e.stored[i] = step.t
            # the live window and word weights as Python floats in one conversion a write, not one per value
            windows = step.window.tolist() if step.window is not None else None
            alignments = step.alignment.tolist() if step.alignment is not None else None
            p = conn.pipeline(transaction=False)
            for e, named in canvases.items():  # one HSET a job, whatever its rows in this call
                p.hset(keys.files(e.job.id), mapping=cast(Any, named))
            for e in active:
                if step.t == 1:  # the files outlive the run by result_ttl: set once a call, not every step
                    p.expire(keys.files(e.job.id), int(ttl))
                e.steps_done = step.t
                progress = (c * step.steps + step.t) / (n_chunks * step.steps)
                r = first_row[e]
                live: dict[str, Any] = {"image": chunk[r][1]}
                if windows is not None:
                    live["window"] = [round(v, 2) for v in windows[r]]
                if alignments is not None and n_words is not None:
                    live["alignment"] = [round(v, 4) for v in alignments[r][: n_words[r]]]
                _save_meta(e.job, e.meta, pipeline=p, step=step.t, chunk=c + 1, progress=round(progress, 4),
                           live=live, frames=[e.frames_offered(i) for i in range(e.request.images)])
            if active:
                p.mget([keys.cancel(e.job.id) for e in active])
            if step.t == step.steps:
                state["drawn"] = set(active)
            sent.append((rt.writer.submit(p.execute), active))
            if s.step_delay:
                time.sleep(s.step_delay)
            if guard.stop:
                state["stopped"] = True
                return False
            return True

        if all(e.canceled for e in in_chunk):
            continue
        # keep_canvases=False: the callback streams every step to Redis, so no (B, T, C, H, W) buffer is needed.
        try:
            out = sample(lm.model, seeds=seeds, batch_size=s.batch_rows, callback=on_step, keep_canvases=False,
                         **given)  # type: ignore[arg-type]  # mypy reads **dict as filling every keyword
            settle()  # the last step's write lands before the chunk's results (and the job's end) are written
        except BaseException:
            # the step in flight lands before any failure or requeue is written (bounded: a stuck store still fails)
            wait([future for future, _ in sent], timeout=s.shutdown_grace)
            raise
        if state["stopped"]:
            return True
        if out.steps_done < out.steps:  # every row of the chunk was canceled
            continue
        finals = _to_uint8(out.images[: len(chunk)])
        windows = out.windows[: len(chunk)].cpu().numpy() if out.windows is not None else None
        aligns = out.alignments[: len(chunk)].cpu().numpy() if out.alignments is not None else None
        for r, (e, i) in enumerate(chunk):
            if e.canceled and e not in state["drawn"]:  # canceled before this chunk's last step: unfinished rows
                continue
            e.finals[i] = finals[r]
            e.windows[i] = windows[r] if windows is not None else None
            e.alignments[i] = aligns[r] if aligns is not None else None
    return False


def _walk(conn: redis.Redis, rt: Runtime, lm: LoadedModel, e: Entry, walk: Walk, guard: ShutdownGuard) -> bool:
    """One output whose frames are the decoded points of a latent path (worker.conditions.walk_path)."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    ends = conditions.read_images(conn, keys, e.job.id, walk.inputs, lm.info) if walk.inputs else None
    path = conditions.walk_path(lm.model, e.request.seeds or [], ends, walk.points)
    _start(e, rt, walk.points, 1, 1, lm)
    ttl = s.result_ttl + (e.job.timeout or 0)
    for lo in range(0, walk.points, s.batch_rows):
        if _canceled(conn, keys, e):
            break
        hi = min(walk.points, lo + s.batch_rows)
        out = sample(lm.model, noise=conditions.pad_rows(path[lo:hi], s.batch_rows), keep_canvases=False)
        images = _to_uint8(out.images[: hi - lo])
        if e.request.output.canvases:
            with conn.pipeline(transaction=False) as p:
                for j, pixels in enumerate(images):
                    p.hset(keys.files(e.job.id), raw_name(0, lo + j + 1), render.raw(pixels))
                p.expire(keys.files(e.job.id), int(ttl))
                p.execute()
            e.stored[0] = hi
        e.steps_done = hi
        if hi == walk.points:  # the whole path drawn: its last point is the output's image
            e.finals[0], e.windows[0], e.alignments[0] = images[-1], None, None
        _save_meta(e.job, e.meta, step=hi, progress=round(hi / walk.points, 4), frames=[e.frames_offered(0)])
        if s.step_delay:
            time.sleep(s.step_delay)
        if guard.stop:
            return True
    return False


def _score(conn: redis.Redis, rt: Runtime, lm: LoadedModel, e: Entry, job: Likelihood, guard: ShutdownGuard) -> bool:
    """−L_k and the ELBO per uploaded image (models.bounds), the k samples from the job's one seed."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    x = conditions.read_images(conn, keys, e.job.id, job.inputs, lm.info)
    given: dict[str, torch.Tensor] = {}
    captions = e.request.image_captions()
    if captions[0] is not None:
        assert lm.vocab is not None
        given = conditions.captions(lm.vocab, [c or "" for c in captions], len(captions),
                                    lm.info.max_caption_tokens or lm.vocab.max_length)
    _start(e, rt, len(job.inputs), 1, 1, lm)
    generator = torch.Generator().manual_seed((e.request.seeds or [0])[0])
    asked = time.monotonic()

    def stopping() -> bool:
        """Between two passes of one image's k samples (k = 5000 is ten passes, seconds for a conv net on a CPU):
        the shutdown grace is over, or a client cancelled (Redis read at most every CANCEL_POLL seconds)."""
        nonlocal asked
        if guard.stop:
            return True
        if time.monotonic() - asked < CANCEL_POLL:
            return False
        asked = time.monotonic()
        return _canceled(conn, keys, e)

    for j in range(len(job.inputs)):
        if _canceled(conn, keys, e):
            break
        batch = {"x": x[j : j + 1], **{name: v[j : j + 1] for name, v in given.items()}}
        try:
            lk, mean = importance_weighted(lm.model, batch, job.k, generator=generator, stop=stopping)
        except Interrupted:  # this image's score is dropped: a cancelled job ends here, a shut-down one is requeued
            if e.canceled:
                break
            return True
        e.scores[j] = Score(nll=-float(lk[0]), elbo=float(mean[0]), k=job.k)
        e.steps_done = j + 1
        _save_meta(e.job, e.meta, step=j + 1, progress=round((j + 1) / len(job.inputs), 4),  # readable as they come
                   scores={str(i): [s.nll, s.elbo] for i, s in e.scores.items()})
        if guard.stop:
            return True
    return False


def _write(conn: redis.Redis, rt: Runtime, lm: LoadedModel, e: Entry, guard: ShutdownGuard) -> bool:
    """A text family's sentences, each the decoding of one z (greedy unless the request's `decoding` says otherwise):
    n prior samples (z from each output's seed), or the points of the straight line between two sentences' posterior
    means (the ends: their reconstructions). Greedy and beam rows go through the decoder in chunks of exactly
    `batch_rows` (padding rows after); sampled rows one by one, each with its own word generator; either way a
    sentence never depends on the job's size. Cancellation is checked between chunks."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    model, vocab = lm.model, lm.vocab
    assert vocab is not None  # the registry loads no text family without one
    device = next(model.parameters()).device
    c = e.request.condition
    decoding = e.request.decoding or Decoding()
    if isinstance(c, TextPair):
        given = conditions.sentences(vocab, c.texts)
        with torch.inference_mode():
            ends = model.encode_noise(given["texts"].to(device), given["lengths"].to(device)).cpu()
        path = lerp(ends[0], ends[1], c.points)
    else:
        path = draw_noise(e.request.images, *model.noise_shape(), seeds=list(e.request.seeds or []))
    _start(e, rt, len(path), 1, 1, lm)
    for lo in range(0, len(path), s.batch_rows):
        if _canceled(conn, keys, e):
            break
        hi = min(len(path), lo + s.batch_rows)
        with torch.inference_mode():
            if decoding.strategy == "sample":
                words = [torch.Generator().manual_seed(word_seed(seed)) for seed in (e.request.seeds or [])[lo:hi]]
                (step,) = model.generate(path[lo:hi].to(device), strategy="sample",
                                         temperature=decoding.temperature, generators=words)
            else:
                (step,) = model.generate(conditions.pad_rows(path[lo:hi], s.batch_rows).to(device),
                                         strategy=decoding.strategy, beam=decoding.beam)
        for j, row in enumerate(step.tokens[: hi - lo].tolist()):
            # every sentence returned is one the model, and the API, would read: at most max_length words
            e.texts[lo + j] = vocab.sentence(row, max_words=vocab.max_length)
        e.steps_done = hi
        _save_meta(e.job, e.meta, step=hi, progress=round(hi / len(path), 4))
        if guard.stop:
            return True
    return False


def _classify(conn: redis.Redis, rt: Runtime, lm: LoadedModel, e: Entry, job: FewShot, guard: ShutdownGuard) -> bool:
    """Per query image every class's score −KL(q(c | {x}) ‖ q(c | D_n)) (the family's `class_scores`) and the label
    of the best, in chunks of at most `batch_rows` queries; cancellation is checked between chunks."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    shots = [conditions.read_images(conn, keys, e.job.id, c.inputs, lm.info) for c in job.classes]
    query = conditions.read_images(conn, keys, e.job.id, job.query, lm.info)
    support, mask = conditions.stack_sets(shots)  # (N, K_max, C, H, W), (N, K_max): classes with fewer shots
    labels = [c.label for c in job.classes]
    _start(e, rt, len(job.query), 1, 1, lm)
    device = next(lm.model.parameters()).device
    support, mask = support.to(device), mask.to(device)
    for lo in range(0, len(job.query), s.batch_rows):
        if _canceled(conn, keys, e):
            break
        hi = min(len(job.query), lo + s.batch_rows)
        with torch.inference_mode():
            scores = lm.model.class_scores(support, query[lo:hi].to(device), support_mask=mask).cpu().tolist()
        for j, row in enumerate(scores):
            best = max(range(len(labels)), key=row.__getitem__)  # the first of equal scores
            e.predictions[lo + j] = labels[best], dict(zip(labels, map(float, row), strict=True))
        e.steps_done = hi
        _save_meta(e.job, e.meta, step=hi, progress=round(hi / len(job.query), 4),  # readable as they come
                   labels={str(i): [label, row] for i, (label, row) in e.predictions.items()})
        if guard.stop:
            return True
    return False


def _finish(conn: redis.Redis, rt: Runtime, lm: LoadedModel, entries: list[Entry]) -> dict[str, dict[str, Any]]:
    """Store every entry's final images and attention, then its result.json, all in one transaction (a reader sees a
    job's result and its final progress together); two round trips for the whole call, not two a job. Returns each
    job's result by id."""
    keys = Keys(rt.settings.key_prefix)
    with conn.pipeline(transaction=False) as p:  # what each job already holds: its raw canvases, inputs, ...
        for e in entries:
            p.hkeys(keys.files(e.job.id))
        held = p.execute()
    results = [_result(conn, rt, lm, e, entries, {text(n) for n in names}) for e, names in zip(entries, held,
                                                                                             strict=True)]
    with conn.pipeline(transaction=True) as p:
        for e, (files, summary) in zip(entries, results, strict=True):
            if files:
                p.hset(keys.files(e.job.id), mapping=cast(Any, files))  # redis-py's Mapping key type is invariant
            p.hset(keys.files(e.job.id), RESULT_FILE, json.dumps(summary))
            p.expire(keys.files(e.job.id), rt.settings.result_ttl)
            p.delete(keys.cancel(e.job.id))
            # announced after its result is written, in the same transaction
            _save_meta(e.job, e.meta, pipeline=p, state=summary["state"], step=e.steps_done,
                       progress=1.0 if summary["state"] == "succeeded" else e.meta.get("progress"))
        p.execute()
    for e in entries:
        if e.canceled:
            log.info("job %s: canceled at step %d", e.job.id, e.steps_done)
    return {e.job.id: summary for e, (_, summary) in zip(entries, results, strict=True)}


def _result(conn: redis.Redis, rt: Runtime, lm: LoadedModel, e: Entry, entries: list[Entry],
            held: set[str]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The entry's final images encoded, its attention arrays kept, and its result.json; `held` names what the job's
    files hash already holds."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    opts = e.request.output
    info = lm.info
    returns = e.returns(lm)
    files: dict[str, bytes] = {}
    done = {"scores": len(e.scores), "labels": len(e.predictions), "text": len(e.texts)}.get(returns, len(e.finals))
    complete = not e.canceled and done == e.request.images
    captions = e.request.image_captions()
    inputs = e.request.output_inputs()
    seeds = e.request.output_seeds()
    outputs = [Output(index=i, seed=seeds[i], caption=captions[i], input=inputs[i], frames=e.frames_offered(i),
                      score=e.scores.get(i)) for i in range(e.request.images)]
    for i, (label, scores) in e.predictions.items():
        outputs[i].label, outputs[i].scores = label, scores
    for i, sentence in e.texts.items():
        outputs[i].text = sentence
    for i, out in enumerate(outputs):
        # A canceled job keeps every image it finished (all its steps drawn): only unfinished ones are dropped.
        if i not in e.finals:
            continue
        files[image_name(i)] = render.png(e.finals[i], scale=opts.scale)
        out.image = True
        if returns != "frames":
            continue
        # Offered, not encoded: the API renders an animation from the raw frames when a client first asks for it.
        if opts.gif:
            out.animations.append("gif")
        if opts.webp:
            out.animations.append("webp")
        align, windows = e.alignments[i], e.windows[i]
        if windows is None and align is None:
            continue  # a walk: no attention to record
        words: list[str] = []
        caption = captions[i]
        if caption is not None and lm.vocab is not None:
            words = [caption[t.start : t.end] for t in lm.vocab.check(caption)]
            align = align[:, : len(words)] if align is not None else None
        files[attention_source_name(i)] = render.attention_source(
            windows, align, words, max_words=info.max_caption_tokens or 0, longest_word=lm.longest_word)
        out.attention = True
    state = "succeeded" if complete else "canceled"
    names = sorted(held | set(files))
    earlier = [n for n in names if n not in files and not n.startswith("inputs/")]  # the raw canvases, mostly
    # A raw canvas is exactly height × width × channels bytes (worker.render.raw); only other earlier files (an
    # earlier attempt's) are measured in Redis, in one round trip: a 64-image job holds 2,048 canvases.
    raw_size = raw_bound(*info.shape) if info.height is not None else 0
    others = [n for n in earlier if not n.startswith("raw/")]
    stored = sum(len(v) for v in files.values()) + raw_size * (len(earlier) - len(others))
    if others:
        with conn.pipeline(transaction=False) as p:
            for n in others:
                p.hstrlen(keys.files(e.job.id), n)
            stored += sum(p.execute())
    summary = JobResult(
        job_id=e.job.id, state=state, model=info.id, kind=info.kind, condition=e.request.condition.kind,
        captions=e.request.captions, n=e.request.n, seeds=e.request.seeds, steps=e.steps_total,
        steps_done=e.steps_done if e.canceled else e.steps_total, outputs=outputs, files=names, bytes=stored,
        bytes_bound=job_bytes_bound(e.request, info),
        batch={"jobs": len(entries), "leader": entries[0].job.id, "rows": s.batch_rows},
        worker=rt.worker_name, attempt=e.attempt, device=str(rt.device), finished_at=now_iso(),
    ).model_dump(mode="json")
    return files, summary
