"""Enqueue jobs and read their state, progress, files and the workers' heartbeats. Torch-free: the API's side.

Statuses (JobView.status): queued, running, succeeded, failed, canceled; `get_view` returns None for a job that
never existed or has expired (its RQ record and files share the result TTL).

Retry policy: a job that raises is not retried (same seed → same failure); a job whose worker dies (SIGKILL,
OOM, power) is requeued by a live worker within `Settings.recovery_bound` seconds (`requeue_orphans`); a job cut
short by SIGTERM requeues itself (RQ `Retry` returned by the job). Both count towards `max_attempts`.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from worker.protocol import (
    JOB_FUNC,
    RESULT_FILE,
    InvalidJobError,
    JobRequest,
    Keys,
    ModelInfo,
    check_job_id,
    padded_rows,
)
from worker.redis_conn import as_bytes, text
from worker.settings import Settings

SERIALIZER = JSONSerializer


def new_job_id() -> str:
    return uuid.uuid4().hex


def now_iso() -> str:
    now = time.time()  # one reading: seconds and milliseconds read apart could straddle a second (1 s off)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def make_queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=SERIALIZER)


def fetch_job(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    except NoSuchJobError:
        return None


def job_timeout(request: JobRequest, settings: Settings, steps: int | None = None) -> int:
    """Seconds from the cost: padded model rows (images; walk points; images × k when scoring) × T steps."""
    t = steps or settings.default_steps
    rows = padded_rows(request.rows, settings.batch_rows)
    return math.ceil(settings.job_timeout_base + settings.job_timeout_per_row_step * rows * t)


def enqueue_generation(conn: redis.Redis, request: JobRequest, settings: Settings,
                       **options: Any) -> tuple[str, JobRequest]:
    """enqueue_view (its keyword options: job_id, queue_name, steps, unique) for a caller that wants only the job's
    id: returns (job id, the request with its seeds)."""
    view, request = enqueue_view(conn, request, settings, **options)
    return view.id, request


def enqueue_view(
    conn: redis.Redis,
    request: JobRequest,
    settings: Settings,
    *,
    job_id: str | None = None,
    queue_name: str | None = None,
    steps: int | None = None,
    unique: bool = True,
) -> tuple[JobView, JobRequest]:
    """Put a job on the queue; returns the job as get_view would show it just after (queued), which the POST answers
    without reading the job back, and the request with its seeds. Validate with
    `protocol.validate_for_model(request, model_catalog(conn, settings)[request.model], ...)` first.

    With `unique` a second enqueue with the same job id raises rq.exceptions.DuplicateJobError while the first
    job exists (idempotency keys map onto job ids).
    """
    request = request.with_seeds()
    job_id = check_job_id(job_id or new_job_id())
    queue = make_queue(conn, queue_name or settings.queues[0])
    job = queue.enqueue(
        JOB_FUNC,
        request.model_dump(mode="json"),
        job_id=job_id,
        job_timeout=job_timeout(request, settings, steps),
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        ttl=settings.queued_ttl,
        meta={"state": "queued", "step": 0, "steps": steps, "attempt": 0, "seeds": request.seeds,
              "images": request.images,
              "updated_at": now_iso()},
        unique=unique,
    )
    return _view(job, None, (utcformat(job.created_at), None, None)), request


def announce(conn: redis.Redis | redis.client.Pipeline, settings: Settings, job_id: str, state: str) -> None:
    """Tell whoever listens that the job changed (a step, its end). Fire and forget: a reader that misses it still
    polls now and then, so a lost message costs latency, never correctness."""
    conn.publish(Keys(settings.key_prefix).events(job_id), state)


def cancel(conn: redis.Redis, job_id: str, settings: Settings) -> bool:
    """Ask a job to stop. A waiting job is canceled at once; a running one stops after its current DRAW step.

    Returns False when the job does not exist (or has expired) or has already ended.
    """
    keys = Keys(settings.key_prefix)
    job = fetch_job(conn, job_id)
    if job is None or job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED):
        return False
    conn.set(keys.cancel(job_id), b"1", ex=int(settings.result_ttl + (job.timeout or 0) + settings.queued_ttl))
    # Still waiting in RQ's list: take it out ourselves so no worker can start it, then mark it canceled.
    if conn.lrem(make_queue(conn, job.origin).key, 1, job_id):
        job.cancel()
        meta = job.get_meta(refresh=True)
        meta.update(state="canceled", updated_at=now_iso())
        job.meta = meta
        job.save_meta()
        announce(conn, settings, job_id, "canceled")
    return True


@dataclass
class JobView:
    """What the API shows for a job."""

    id: str
    status: str  # protocol.JobState
    step: int  # steps drawn so far of the current chunk (0 before the first)
    steps: int | None  # T
    attempt: int  # 1 on the first run; higher after a crash or shutdown requeue
    seeds: list[int] | None
    request: dict[str, Any] | None
    error: str | None = None
    result: dict[str, Any] | None = None  # result.json once complete
    meta: dict[str, Any] = field(default_factory=dict)
    times: tuple[str | None, str | None, str | None] = (None, None, None)  # RQ's created_at, started_at, ended_at


TIMES = (b"created_at", b"started_at", b"ended_at")


def get_view(conn: redis.Redis, job_id: str, settings: Settings) -> JobView | None:
    with conn.pipeline(transaction=False) as p:  # the job's record and its result in one round trip
        p.hgetall(Job.key_for(job_id))
        p.hget(Keys(settings.key_prefix).files(job_id), RESULT_FILE)
        record, raw = p.execute()
    if not record:
        return None
    job = Job(job_id, connection=conn, serializer=SERIALIZER)
    try:
        job.restore(record)  # what Job.fetch does after its own HGETALL
    except NoSuchJobError:
        return None
    times = tuple(text(record[k]) if record.get(k) else None for k in TIMES)
    return _view(job, json.loads(raw) if raw else None, times)  # type: ignore[arg-type]


def _view(job: Job, result: dict[str, Any] | None, times: tuple[str | None, str | None, str | None]) -> JobView:
    """The API's view of an RQ job, its result.json (None until written) and RQ's (created, started, ended)."""
    meta = job.get_meta(refresh=False)
    rq_status = job.get_status(refresh=False)
    error = None
    if result is not None:
        status = result["state"]
    elif rq_status == JobStatus.FAILED:
        status = "failed"
        error = (meta.get("error") or {}).get("message")
        if error is None:
            exc = job.latest_result()
            error = (exc.exc_string or "").strip().splitlines()[-1] if exc and exc.exc_string else "failed"
        error = printable(error)
    elif rq_status in (JobStatus.CANCELED, JobStatus.STOPPED) or meta.get("state") == "canceled":
        status = "canceled"
    elif rq_status == JobStatus.STARTED or meta.get("state") == "running":
        status = "running"  # a queued job claimed into another job's batch also shows as running
    else:
        status = "queued"
    args = job.args
    step, steps, attempt = int(meta.get("step") or 0), meta.get("steps"), int(meta.get("attempt") or 0)
    if result is not None:  # the result is the record; a recovery may have reset the meta after it was written
        step, steps, attempt = result["steps_done"], result["steps"], result["attempt"]
    return JobView(
        id=job.id, status=status, step=step, steps=steps, attempt=attempt, seeds=meta.get("seeds"),
        request=args[0] if args and isinstance(args[0], dict) else None, error=error, result=result, meta=meta,
        times=times,
    )


def printable(message: str, limit: int = 300) -> str:
    """A job's error as a client may read it: one short line of printable characters (never bytes a Redis error
    quoted from a command)."""
    line = (message.strip().splitlines() or [""])[0]
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def get_file(conn: redis.Redis, job_id: str, name: str, settings: Settings) -> bytes | None:
    """One result file (see protocol: frames/{i}/{t}.png, images/{i}.png, animations/{i}.gif|webp, ...)."""
    return as_bytes(conn.hget(Keys(settings.key_prefix).files(job_id), name))


def list_files(conn: redis.Redis, job_id: str, settings: Settings) -> list[str]:
    return sorted(text(k) for k in conn.hkeys(Keys(settings.key_prefix).files(job_id)))


# --- heartbeats -------------------------------------------------------------------------------------------------

def _beats(conn: redis.Redis, settings: Settings, models: bool = True) -> list[tuple[bytes, bytes]]:
    """The raw heartbeats of live workers, each with its models' JSON (b"[]" when gone, or not asked for: then not
    read at all); prunes the names whose beat has expired."""
    keys = Keys(settings.key_prefix)
    names = sorted(text(n) for n in conn.smembers(keys.workers))
    if not names:
        return []
    per = 2 if models else 1
    raw = conn.mget([k for n in names for k in (keys.worker(n), keys.worker_models(n))[:per]])
    beats, listed = raw[::per], (raw[1::2] if models else [None] * len(names))
    dead = [n for n, b in zip(names, beats, strict=True) if b is None]
    if dead:
        conn.srem(keys.workers, *dead)
    return [(b, as_bytes(m) or b"[]") for b, m in zip(map(as_bytes, beats), listed, strict=True) if b is not None]


def live_workers(conn: redis.Redis, settings: Settings, *, models: bool = True) -> list[dict[str, Any]]:
    """Heartbeats of live workers (readiness: at least one, serving the model wanted). Prunes dead names. Without
    `models` the ~150 KB model lists are neither read nor parsed (a count or the pids need only the beats)."""
    return [json.loads(beat) | ({"models": json.loads(listed)} if models else {})
            for beat, listed in _beats(conn, settings, models)]


# A worker's models, parsed, by their bytes: the API looks the catalog up on every POST (parsing 13 models' JSON
# took 0.6 ms). Holds only the model lists last seen.
_parsed_beats: dict[bytes, list[ModelInfo]] = {}


def _beat_models(raw: bytes) -> list[ModelInfo]:
    from pydantic import ValidationError

    infos = []
    for info in json.loads(raw):
        try:
            infos.append(ModelInfo.model_validate(info))
        except (ValidationError, KeyError, TypeError):
            continue  # a worker of another version: its models are not offered, the rest still are
    return infos


def model_catalog(conn: redis.Redis, settings: Settings) -> dict[str, ModelInfo]:
    """Models some live worker serves, by id (shared, frozen objects: not to be changed)."""
    global _parsed_beats
    lists = [models for _, models in _beats(conn, settings)]
    memo = _parsed_beats
    seen = {raw: memo[raw] if raw in memo else _beat_models(raw) for raw in lists}
    _parsed_beats = seen  # one dict swap: safe beside other request threads
    catalog: dict[str, ModelInfo] = {}
    for raw in lists:
        for info in seen[raw]:
            catalog.setdefault(info.id, info)
    return catalog


_written_models: dict[str, bytes] = {}  # worker name -> the models JSON last written under Keys.worker_models


def write_heartbeat(conn: redis.Redis, settings: Settings, name: str, payload: dict[str, Any]) -> None:
    """The beat (`payload` less its "models") each time; the models only when they differ from the last written,
    else their TTL renewed (written again if that finds them gone: a Redis restarted without them)."""
    keys = Keys(settings.key_prefix)
    ttl = int(settings.heartbeat_ttl * 1000)
    beat = {k: v for k, v in payload.items() if k != "models"}
    models = json.dumps(payload.get("models", [])).encode()
    fresh = _written_models.get(name) != models
    with conn.pipeline() as p:
        p.set(keys.worker(name), json.dumps(beat), px=ttl)
        if fresh:
            p.set(keys.worker_models(name), models, px=ttl)
        else:
            p.pexpire(keys.worker_models(name), ttl)
        p.sadd(keys.workers, name)
        renewed = p.execute()[1]
    if not fresh and not renewed:
        conn.set(keys.worker_models(name), models, px=ttl)
    _written_models[name] = models


def clear_heartbeat(conn: redis.Redis, settings: Settings, name: str) -> None:
    keys = Keys(settings.key_prefix)
    with conn.pipeline() as p:
        p.delete(keys.worker(name), keys.worker_models(name))
        p.srem(keys.workers, name)
        p.execute()
    _written_models.pop(name, None)


# --- ownership and recovery -------------------------------------------------------------------------------------

# Take a waiting job out of RQ's list, record its owner and count its attempt in one step: only one worker can win
# it, and a crash between them can neither lose it nor leave the attempt unspent. KEYS: queue list, running hash,
# the job's hash, whose queued TTL goes (as RQ's prepare_job_execution does for a job it dequeues), so a job claimed
# near its queued_ttl cannot expire mid-run. ARGV: job id, owner record, the job's meta with the attempt counted,
# the meta as read when it was counted: a job another worker took and gave back meanwhile is left (its count moved).
# A claim already ours (the same owner record: redis-py resent the pipeline after a lost reply) is won, not stranded.
CLAIM_LUA = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  return 1
end
if (redis.call('HGET', KEYS[3], 'meta') or '') ~= ARGV[4] then
  return 0
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[3], 'meta', ARGV[3])
  redis.call('PERSIST', KEYS[3])
  return 1
end
return 0
"""


def finish_claimed(conn: redis.Redis, finished: list[tuple[Job, dict[str, Any]]], settings: Settings,
                   worker: str) -> None:
    """Close jobs drawn inside another job's sampler call as RQ's worker closes a job that returned (finished, its
    result kept for result_ttl, in the finished registry, the job expiring with it), in one round trip: RQ never
    dequeues them only to return the result.json they already have (a no-op RQ cycle cost about a third of a
    16-job call's time here)."""
    from datetime import UTC, datetime

    from rq.registry import FinishedJobRegistry
    from rq.results import Result

    ended = datetime.now(UTC)
    with conn.pipeline() as p:
        for job, result in finished:
            ttl = job.get_result_ttl(settings.result_ttl)
            job.started_at = job.started_at or ended  # the claim's time (worker.jobs._claim_batch)
            job.ended_at = ended
            job.set_status(JobStatus.FINISHED, pipeline=p)
            job.save(pipeline=p, include_meta=False, include_result=False)
            Result.create(job, Result.Type.SUCCESSFUL, return_value=result, ttl=ttl, worker_name=worker, pipeline=p)
            FinishedJobRegistry(job.origin, connection=conn, serializer=SERIALIZER).add(job, ttl, p)
            job.cleanup(ttl, pipeline=p, remove_from_queue=False)
        p.execute()


def owner_record(worker: str, attempt: int) -> str:
    return json.dumps({"worker": worker, "attempt": attempt, "since": now_iso()})


def queued_again() -> dict[str, Any]:
    """The meta fields of a job put back on the queue: nothing of the cut attempt's progress, scores or labels
    shows (new dicts each call, as meta is updated in place)."""
    return {"state": "queued", "step": 0, "progress": 0.0, "scores": {}, "labels": {}}


def gave_up(attempt: int, reason: str) -> str:
    """The error of a job failed for running out of attempts, whichever path cut its last one short."""
    return f"gave up after {attempt} attempts; last: {reason}"


def requeue(conn: redis.Redis, job_id: str, settings: Settings, reason: str, *, alone: bool = False) -> str:
    """Put a job whose run was cut short back at the front of its queue, or fail it after max_attempts. `alone`:
    its worker died under it, so it may be what killed the worker: it runs in no batch from now on (a job that
    crashes its workers would otherwise spend the attempts of the waiting jobs batched with it).

    Returns "requeued", "failed" or "skipped" (gone, already ended, or already waiting).
    """
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    job = fetch_job(conn, job_id)
    if job is None:
        return "skipped"
    status = job.get_status()
    if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
        return "skipped"
    queue = make_queue(conn, job.origin)
    if status == JobStatus.STARTED:
        # RQ's remove_executions fetches each execution's hash first and raises when one has expired (its registry
        # entry outlives it by a minute): the composite members are removed from the ids alone.
        members = [f"{job.id}:{e}" for e in job.execution_registry.get_execution_ids()]
        if members:
            conn.zrem(StartedJobRegistry(queue=queue).key, *members)
    elif conn.lpos(queue.key, job_id) is not None:
        return "skipped"
    meta = job.get_meta(refresh=True)
    attempt = int(meta.get("attempt") or 0)
    if attempt >= settings.max_attempts:
        message = gave_up(attempt, reason)
        meta.update(state="failed", error={"type": "lost", "message": message}, updated_at=now_iso())
        job.meta = meta
        job.save_meta()
        with conn.pipeline() as p:
            job.set_status(JobStatus.FAILED, pipeline=p)
            FailedJobRegistry(queue=queue).add(job, ttl=job.failure_ttl or settings.result_ttl,
                                               exc_string=message, pipeline=p)
            p.execute()
        return "failed"
    meta.update(queued_again(), requeued=reason, updated_at=now_iso())
    if alone:
        meta["alone"] = True
    job.meta = meta
    job.save_meta()
    queue.enqueue_job(job, at_front=True)
    return "requeued"


def _requeue_owned(conn: redis.Redis, settings: Settings, free: Callable[[str], str | None], *,
                   alone: bool = False) -> list[tuple[str, str]]:
    """Requeue each job whose owner's name `free` answers with a reason (None: leave it). Safe to run from many
    workers at once: HDEL of the owner record elects exactly one of them per job. Returns [(job id, outcome)]."""
    keys = Keys(settings.key_prefix)
    done = []
    for raw_id, raw_owner in conn.hgetall(keys.running).items():
        job_id = text(raw_id)
        try:
            worker = json.loads(raw_owner)["worker"]
        except (ValueError, KeyError):
            worker = ""
        reason = free(worker)
        if reason is not None and conn.hdel(keys.running, job_id) == 1:
            try:
                done.append((job_id, requeue(conn, job_id, settings, reason, alone=alone)))
            except Exception:
                conn.hset(keys.running, job_id, raw_owner)  # elected but not requeued: the next sweep tries again
                raise
    return done


def requeue_orphans(conn: redis.Redis, settings: Settings) -> list[tuple[str, str]]:
    """Requeue every job whose owner's heartbeat has expired."""
    keys = Keys(settings.key_prefix)
    return _requeue_owned(conn, settings, lambda worker: None if worker and conn.exists(keys.worker(worker)) else
                          f"worker {worker} stopped sending heartbeats", alone=True)


def requeue_own(conn: redis.Redis, settings: Settings, worker: str, reason: str) -> list[tuple[str, str]]:
    """Requeue the jobs this worker's owner records name: after its RQ loop was cut short by a Redis error, the
    worker still beats, so `requeue_orphans` would never free them."""
    return _requeue_owned(conn, settings, lambda owner: reason if owner == worker else None)


def validate_request(conn: redis.Redis, request: JobRequest, settings: Settings) -> ModelInfo:
    """The API-side check against what live workers serve; raises InvalidJobError."""
    from worker.protocol import validate_for_model

    catalog = model_catalog(conn, settings)
    if request.model not in catalog:
        raise InvalidJobError(f"unknown model {request.model!r}; served: {sorted(catalog)}")
    info = catalog[request.model]
    validate_for_model(request, info, max_job_bytes=settings.max_job_bytes)
    return info
