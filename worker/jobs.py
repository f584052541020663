"""The job function RQ runs, `generate(payload)`, and the batched sampler run behind it.

A job (the "leader") may take up to B−1 more waiting jobs for the same model out of the queue and draw them in
the same sampler call. Every sampler call has the same shape whatever it serves: exactly `batch_rows` rows
(padding rows fill the rest, seed 0 and a one-word caption) and captions padded to the model's
`max_caption_tokens`. MKL picks its kernels by matrix shape, so a fixed shape is what makes a job's pixels the
same alone and in any batch; rows never mix (every op is row-wise), so neighbours do not matter either
(tests/worker/test_batching.py checks the bytes for several job mixes).

Claimed jobs stay RQ jobs: when the leader is done it has written their files and pushes them back to the front
of the queue; the worker then dequeues each, `generate` finds its result.json, and returns it at once.

After each step: that step's frame PNGs go into the job's files hash, then `job.meta` gets step/T
(`save_meta`, never `save`), then the cancel flags are read (one round trip for the whole batch).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

import numpy as np
import redis
import torch
from rq import Retry, get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from models.sampling import Step, sample
from worker import render
from worker.protocol import (
    JOB_FUNC,
    RESULT_FILE,
    InvalidJobError,
    JobRequest,
    Keys,
    animation_name,
    attention_name,
    frame_name,
    image_name,
    job_bytes_bound,
    parse_request,
    validate_for_model,
)
from worker.queue import CLAIM_LUA, SERIALIZER, make_queue, now_iso, owner_record
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

    @classmethod
    def load(cls, settings: Settings, worker_name: str = "inline") -> Runtime:
        device = pick_device(settings.device)
        return cls(settings, load_models(settings.checkpoints, device), device, worker_name)


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
    # per image: uint8 frames (T', H, W, C), windows (T', 4) or None, alignment (T', K) or None
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    windows: dict[int, np.ndarray | None] = field(default_factory=dict)
    alignments: dict[int, np.ndarray | None] = field(default_factory=dict)


def _to_uint8(canvas: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) in [0, 1] -> (..., H, W, C) uint8 on the CPU."""
    x = (canvas * 255).round_().clamp_(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def _save_meta(job: Job, meta: dict[str, Any], **update: Any) -> None:
    meta.update(update, updated_at=now_iso())
    job.meta = meta
    job.save_meta()


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
    done = conn.hget(keys.files(job.id), RESULT_FILE)
    if done is not None:  # drawn already, inside another job's batch (or by an earlier attempt)
        conn.hdel(keys.running, job.id)
        return json.loads(done)
    try:
        request, lm = _load(rt, payload)
    except InvalidJobError as e:
        _fail(job, "invalid", str(e))
        raise
    meta = job.get_meta(refresh=True)
    leader = Entry(job, request, claimed=False, attempt=int(meta.get("attempt") or 0) + 1, meta=meta)
    conn.hset(keys.running, job.id, owner_record(rt.worker_name, leader.attempt))
    entries = [leader, *_claim_batch(conn, rt, leader, lm)]
    rt.current.update(e.job.id for e in entries)
    try:
        with ShutdownGuard(rt.settings.shutdown_grace) as guard:
            stopped = _run(conn, rt, lm, entries, guard)
    except BaseException as e:
        # A timeout or a bug fails the leader; jobs it claimed did nothing wrong and go back to the queue.
        for other in entries[1:]:
            _release(conn, rt, other)
        kind = "timeout" if isinstance(e, JobTimeoutException) else "error"
        _fail(job, kind, f"{type(e).__name__}: {e}")
        conn.hdel(keys.running, job.id)
        raise
    finally:
        rt.current.difference_update(e.job.id for e in entries)
    if stopped:  # shutdown: requeue everything unfinished (RQ requeues the leader because it returns Retry)
        for other in entries[1:]:
            _release(conn, rt, other)
        _save_meta(job, leader.meta, state="queued", step=0, requeued="worker shutdown")
        conn.hdel(keys.running, job.id)
        return Retry(max=rt.settings.max_attempts)
    summaries = {e.job.id: _finish(conn, rt, lm, e, entries) for e in entries}
    claimed = [e.job.id for e in entries[1:]]
    if claimed:  # the worker dequeues them next and returns their result.json
        conn.lpush(make_queue(conn, job.origin).key, *reversed(claimed))
    conn.hdel(keys.running, *[e.job.id for e in entries])
    return summaries[job.id]


def _claim_batch(conn: redis.Redis, rt: Runtime, leader: Entry, lm: LoadedModel) -> list[Entry]:
    """Take up to B−1 waiting jobs for the same model that fit in the leader's one sampler call."""
    s = rt.settings
    free = s.batch_rows - leader.request.images
    if s.batch_jobs <= 1 or free <= 0:
        return []
    keys = Keys(s.key_prefix)
    queue_key = make_queue(conn, leader.job.origin).key
    ids = [text(i) for i in conn.lrange(queue_key, 0, s.batch_scan - 1)]
    claim = conn.register_script(CLAIM_LUA)
    out: list[Entry] = []
    for job in Job.fetch_many(ids, connection=conn, serializer=SERIALIZER):
        if job is None or job.func_name != JOB_FUNC or conn.exists(keys.cancel(job.id)):
            continue
        try:
            request, _ = _load(rt, job.args[0] if job.args else None)
        except InvalidJobError:
            continue  # it fails on its own, with its own error
        if request.model != leader.request.model or request.images > free:
            continue
        meta = job.get_meta(refresh=True)
        attempt = int(meta.get("attempt") or 0) + 1
        if claim(keys=[queue_key, keys.running], args=[job.id, owner_record(rt.worker_name, attempt)]) != 1:
            continue  # another worker took it first
        out.append(Entry(job, request, claimed=True, attempt=attempt, meta=meta))
        free -= request.images
        if len(out) >= s.batch_jobs - 1 or free <= 0:
            break
    if out:
        log.info("job %s: batching %d waiting job(s) with it", leader.job.id, len(out))
    return out


def _release(conn: redis.Redis, rt: Runtime, entry: Entry) -> None:
    """Give a claimed job back to the queue, untouched (its own attempt will redraw it from step 1)."""
    _save_meta(entry.job, entry.meta, state="queued", step=0)
    conn.lpush(make_queue(conn, entry.job.origin).key, entry.job.id)
    conn.hdel(Keys(rt.settings.key_prefix).running, entry.job.id)


def _run(conn: redis.Redis, rt: Runtime, lm: LoadedModel, entries: list[Entry], guard: ShutdownGuard) -> bool:
    """Sample every entry's images in chunks of exactly `batch_rows` rows. Returns True when stopped by shutdown."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    info = lm.info
    rows: list[tuple[Entry, int]] = []  # (entry, image index within the entry)
    for e in entries:
        e.first_image = len(rows)
        rows += [(e, i) for i in range(e.request.images)]
    n_chunks = math.ceil(len(rows) / s.batch_rows)
    pad_caption = [1]  # any valid word: padding rows are drawn and thrown away
    for e in entries:
        _save_meta(e.job, e.meta, state="running", step=0, steps=info.steps, attempt=e.attempt,
                   worker=rt.worker_name, chunk=1, chunks=n_chunks, progress=0.0, batch_jobs=len(entries))
    ttl = s.result_ttl + max(e.job.timeout or 0 for e in entries)
    for c in range(n_chunks):
        chunk = rows[c * s.batch_rows : (c + 1) * s.batch_rows]
        in_chunk = list(dict.fromkeys(e for e, _ in chunk))
        seeds = [e.request.seeds[i] for e, i in chunk] + [0] * (s.batch_rows - len(chunk))  # type: ignore[index]
        conditions: dict[str, torch.Tensor] = {}
        if info.kind == "aligndraw":
            assert lm.vocab is not None
            k = info.max_caption_tokens or lm.vocab.max_length
            ids = [lm.vocab.encode(e.request.image_captions()[i] or "") for e, i in chunk]
            ids += [pad_caption] * (s.batch_rows - len(chunk))
            conditions["captions"] = torch.tensor([x + [0] * (k - len(x)) for x in ids], dtype=torch.long)
            conditions["lengths"] = torch.tensor([len(x) for x in ids], dtype=torch.long)
        for e in in_chunk:
            if conn.exists(keys.cancel(e.job.id)):
                e.canceled = True
        state = {"stopped": False}
        # Fixed for the chunk: each job's first row (its window and word weights go live in meta) and its word count.
        first_row: dict[Any, int] = {}
        for r, (e, _) in enumerate(chunk):
            first_row.setdefault(e, r)
        n_words = conditions["lengths"].tolist() if "lengths" in conditions else None

        def on_step(step: Step, chunk=chunk, in_chunk=in_chunk, c=c, state=state, first_row=first_row,
                    n_words=n_words) -> bool:
            active = [e for e in in_chunk if not e.canceled]
            frames = _to_uint8(step.canvas[: len(chunk)])
            with conn.pipeline(transaction=False) as p:
                for r, (e, i) in enumerate(chunk):
                    if not e.canceled and e.request.output.frames:
                        p.hset(keys.files(e.job.id), frame_name(i, step.t), render.png(frames[r],
                                                                                     scale=e.request.output.scale))
                for e in active:
                    p.expire(keys.files(e.job.id), int(ttl))
                for e in active:
                    p.exists(keys.cancel(e.job.id))
                flags = p.execute()[-len(active):] if active else []
            for e, flag in zip(active, flags, strict=True):
                e.steps_done = step.t
                progress = (c * step.steps + step.t) / (n_chunks * step.steps)
                r = first_row[e]
                live: dict[str, Any] = {"image": chunk[r][1]}
                if step.window is not None:
                    live["window"] = [round(float(v), 2) for v in step.window[r]]
                if step.alignment is not None and n_words is not None:
                    live["alignment"] = [round(float(v), 4) for v in step.alignment[r, : n_words[r]]]
                _save_meta(e.job, e.meta, step=step.t, chunk=c + 1, progress=round(progress, 4), live=live)
                if flag:
                    e.canceled = True
                    log.info("job %s: canceled after step %d", e.job.id, step.t)
            if s.step_delay:
                time.sleep(s.step_delay)
            if guard.stop:
                state["stopped"] = True
                return False
            return not all(e.canceled for e in in_chunk)

        if all(e.canceled for e in in_chunk):
            continue
        out = sample(lm.model, seeds=seeds, batch_size=s.batch_rows, callback=on_step,
                     **conditions)  # type: ignore[arg-type]  # mypy reads **dict as filling every keyword
        if state["stopped"]:
            return True
        frames = _to_uint8(out.canvases[: len(chunk)])
        windows = out.windows[: len(chunk)].cpu().numpy() if out.windows is not None else None
        aligns = out.alignments[: len(chunk)].cpu().numpy() if out.alignments is not None else None
        for r, (e, i) in enumerate(chunk):
            e.frames[i] = frames[r]
            e.windows[i] = windows[r] if windows is not None else None
            e.alignments[i] = aligns[r] if aligns is not None else None
    return False


def _finish(conn: redis.Redis, rt: Runtime, lm: LoadedModel, e: Entry, entries: list[Entry]) -> dict[str, Any]:
    """Encode and store the entry's final images, animations and attention; then result.json, atomically."""
    s = rt.settings
    keys = Keys(s.key_prefix)
    opts = e.request.output
    info = lm.info
    files: dict[str, bytes] = {}
    complete = not e.canceled and len(e.frames) == e.request.images
    if complete:
        captions = e.request.image_captions()
        for i in range(e.request.images):
            frames = e.frames[i]
            files[image_name(i)] = render.png(frames[-1], scale=opts.scale)
            if opts.gif:
                files[animation_name(i, "gif")] = render.gif(frames, frame_ms=opts.frame_ms, scale=opts.scale)
            if opts.webp:
                files[animation_name(i, "webp")] = render.webp(frames, frame_ms=opts.frame_ms, scale=opts.scale)
            words: list[str] = []
            align = e.alignments[i]
            caption = captions[i]
            if caption is not None and lm.vocab is not None:
                words = [caption[t.start : t.end] for t in lm.vocab.check(caption)]
                align = align[:, : len(words)] if align is not None else None
            files[attention_name(i)] = render.attention(
                e.windows[i], align, words, max_words=info.max_caption_tokens or 0, longest_word=lm.longest_word)
    state = "succeeded" if complete else "canceled"
    names = sorted({text(n) for n in conn.hkeys(keys.files(e.job.id))} | set(files))
    stored = sum(len(v) for v in files.values()) + sum(
        conn.hstrlen(keys.files(e.job.id), n) for n in names if n not in files)
    summary = {
        "job_id": e.job.id, "state": state, "model": info.id, "kind": info.kind, "captions": e.request.captions,
        "n": e.request.n, "seeds": e.request.seeds, "steps": info.steps, "steps_done": e.steps_done if e.canceled
        else info.steps, "files": names, "bytes": stored, "bytes_bound": job_bytes_bound(e.request, info),
        "batch": {"jobs": len(entries), "leader": entries[0].job.id, "rows": s.batch_rows},
        "worker": rt.worker_name, "attempt": e.attempt, "device": str(rt.device), "finished_at": now_iso(),
    }
    with conn.pipeline(transaction=True) as p:
        if files:
            p.hset(keys.files(e.job.id), mapping=cast(Any, files))  # redis-py's Mapping key type is invariant
        p.hset(keys.files(e.job.id), RESULT_FILE, json.dumps(summary))
        p.expire(keys.files(e.job.id), s.result_ttl)
        p.delete(keys.cancel(e.job.id))
        p.execute()
    _save_meta(e.job, e.meta, state=state, step=e.steps_done, progress=1.0 if complete else e.meta.get("progress"))
    if e.canceled:
        log.info("job %s: canceled at step %d", e.job.id, e.steps_done)
    return summary
