"""The API's view of jobs in Redis, on top of worker.queue: ownership records, idempotency keys, queue positions
and the `Generation` body. Our keys live under `{prefix}:api:`; RQ's and the worker's are read, never written
(except through worker.queue)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import redis
from pydantic import ValidationError

from service.config import ApiSettings
from service.schemas import Generation, ImageOutput, Links, Progress
from worker.protocol import TERMINAL, JobRequest, JobResult, Keys, Likelihood, Output, Score, image_name
from worker.queue import JobView, make_queue
from worker.redis_conn import as_bytes, text


def _k(settings: ApiSettings, *parts: str) -> str:
    return ":".join([settings.key_prefix, "api", *parts])


def record_ttl(settings: ApiSettings, job_timeout: int) -> int:
    """The API record outlives the job by `expired_grace`, so a late GET says "expired" rather than 404."""
    return settings.queued_ttl + job_timeout + settings.result_ttl + settings.expired_grace


def save_record(conn: redis.Redis, settings: ApiSettings, job_id: str, owner: str, ttl: int,
                collection: str) -> None:
    """The record the API keeps beside a job for `ttl` (record_ttl): its owner, and its collection, so that once the
    job has expired each of its URLs still answers "expired" under its own collection and 404 under another."""
    with conn.pipeline() as p:
        p.hset(_k(settings, "job", job_id), mapping={"owner": owner, "collection": collection})
        p.expire(_k(settings, "job", job_id), ttl)
        p.execute()


def load_owner(conn: redis.Redis, settings: ApiSettings, job_id: str) -> str | None:
    raw = conn.hget(_k(settings, "job", job_id), "owner")
    return text(raw) if raw else None


def was_under(conn: redis.Redis, settings: ApiSettings, job_id: str, collection: str) -> bool:
    """Whether a job now gone (expired) was created under /v1/{collection}; its record outlives it by expired_grace.
    A record without a collection (written before it was kept) is taken to be anywhere."""
    owner, where = conn.hmget(_k(settings, "job", job_id), ["owner", "collection"])
    return owner is not None and (where is None or text(where) == collection)


# --- idempotency ------------------------------------------------------------------------------------------------

def body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def claim_idempotency(conn: redis.Redis, settings: ApiSettings, owner: str, key: str, digest: str, job_id: str,
                      ttl: int) -> dict[str, str] | None:
    """Bind (owner, key) to (digest, job_id) unless bound already; returns the earlier binding, or None if ours."""
    name = _k(settings, "idem", owner, hashlib.sha256(key.encode()).hexdigest()[:32])
    if conn.set(name, json.dumps({"hash": digest, "job": job_id}), nx=True, ex=ttl):
        return None
    raw = conn.get(name)
    if raw is None:  # expired between the two calls: try once more
        return None if conn.set(name, json.dumps({"hash": digest, "job": job_id}), nx=True, ex=ttl) else {}
    return json.loads(raw)


def release_idempotency(conn: redis.Redis, settings: ApiSettings, owner: str, key: str) -> None:
    conn.delete(_k(settings, "idem", owner, hashlib.sha256(key.encode()).hexdigest()[:32]))


def first_sight_of_end(conn: redis.Redis, settings: ApiSettings, job_id: str) -> bool:
    """True exactly once per finished job (across API replicas): when to count it in the metrics."""
    return bool(conn.set(_k(settings, "ended", job_id), b"1", nx=True, ex=settings.result_ttl + 60))


# --- memory -----------------------------------------------------------------------------------------------------

def room(conn: redis.Redis, settings: ApiSettings, need: int) -> tuple[bool, int, int, int]:
    """Whether a job that may store `need` bytes fits under the fill limit of Redis's maxmemory (no cap: always).
    Returns (fits, used bytes, limit bytes, jobs waiting over all queues), in one round trip. Checked before
    enqueueing, so running jobs keep their headroom."""
    with conn.pipeline(transaction=False) as p:
        p.info("memory")
        for q in settings.queues:
            p.llen(make_queue(conn, q).key)
        info, *lengths = p.execute()
    used, cap = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    limit = int(cap * settings.store_fill_limit)
    return (cap == 0 or used + need <= limit), used, limit, sum(lengths)


def queue_position(conn: redis.Redis, settings: ApiSettings, job_id: str) -> int | None:
    """Jobs ahead of this one over the queues in priority order (0: next), or None when it is not waiting."""
    ahead = 0
    for q in settings.queues:
        key = make_queue(conn, q).key
        pos = conn.lpos(key, job_id)
        if isinstance(pos, int):
            return ahead + pos
        ahead += conn.llen(key)
    return None


# --- the Generation body ----------------------------------------------------------------------------------------

def _parse_time(raw: bytes | str | None) -> datetime | None:
    if not raw:
        return None
    s = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z") if t else None


COLLECTIONS = {"likelihood": "likelihoods", "few_shot": "classifications"}  # condition -> its own collection


def route(condition: str | None) -> str:
    """The collection a job lives under: likelihood jobs under /v1/likelihoods, few-shot ones under
    /v1/classifications, the rest under /v1/generations."""
    return COLLECTIONS.get(condition or "", "generations")


def links(base: str, job_id: str, collection: str) -> Links:
    me = f"{base}/v1/{collection}/{job_id}"
    return Links(self=me, events=f"{me}/events", cancel=me)


def expired(base: str, job_id: str, collection: str = "generations") -> Generation:
    """The body of a job whose records are gone: only its id, and links under the collection it was read from."""
    return Generation(id=job_id, status="expired", links=links(base, job_id, collection))


def lives_under(condition: str | None, collection: str) -> bool:
    """Whether a job of this condition lives under /v1/{collection} (route); one whose condition is unknown (its
    request unreadable) is anywhere; an expired job's is was_under's to say."""
    return condition is None or route(condition) == collection


def in_collection(view: JobView, collection: str) -> bool:
    request = _request(view)
    return lives_under(request.condition.kind if request else None, collection)


def _request(view: JobView) -> JobRequest | None:
    try:
        return JobRequest.model_validate(view.request) if view.request is not None else None
    except ValidationError:  # a payload the worker fails with "invalid": show what the job record has
        return None


def _outputs(request: JobRequest, view: JobView) -> list[Output]:
    """The typed outputs: result.json's once complete; while running, what the worker keeps in meta: the frame counts,
    a likelihood job's scores so far, and a classification's labels so far."""
    if view.result is not None:
        return JobResult.model_validate(view.result).outputs
    counts = view.meta.get("frames") or []
    scored = view.meta.get("scores") or {}  # image index -> [nll, elbo]
    labelled = view.meta.get("labels") or {}  # query index -> [label, {label: score}]
    k = request.condition.k if isinstance(request.condition, Likelihood) else 0
    captions = request.image_captions()
    seeds = request.output_seeds()
    inputs = request.output_inputs()
    return [Output(index=i, caption=captions[i], seed=seeds[i], input=inputs[i],
                   frames=int(counts[i]) if i < len(counts) else 0,
                   score=Score(nll=scored[str(i)][0], elbo=scored[str(i)][1], k=k) if str(i) in scored else None,
                   label=labelled[str(i)][0] if str(i) in labelled else None,
                   scores=labelled[str(i)][1] if str(i) in labelled else None)
            for i in range(request.images)]


def _image_output(out: Output, request: JobRequest, me: str) -> ImageOutput:
    img = f"{me}/images/{out.index}"
    inputs = request.output_inputs()
    return ImageOutput(
        index=out.index, caption=out.caption, seed=out.seed,
        input=inputs.index(out.input) if out.input is not None and out.input in inputs else None,
        image=f"{img}.png" if out.image else None,
        animation_gif=f"{img}/animation.gif" if "gif" in out.animations else None,
        animation_webp=f"{img}/animation.webp" if "webp" in out.animations else None,
        alignment=f"{img}/alignment.json" if out.attention and out.caption is not None else None,
        attention=f"{img}/attention.json" if out.attention else None,
        frames_drawn=out.frames, frames=[f"{img}/frames/{t}.png" for t in range(1, out.frames + 1)],
        nll=out.score.nll if out.score else None, elbo=out.score.elbo if out.score else None,
        k=out.score.k if out.score else None, label=out.label, scores=out.scores, text=out.text,
    )


def final_pngs(conn: redis.Redis, settings: ApiSettings, gen: Generation) -> list[tuple[ImageOutput, bytes]]:
    """The final PNG of every output drawn so far, in one round trip."""
    drawn = [o for o in gen.outputs if o.image]
    if not drawn:
        return []
    pngs = [as_bytes(v) for v in conn.hmget(Keys(settings.key_prefix).files(gen.id),
                                            [image_name(o.index) for o in drawn])]
    return [(o, png) for o, png in zip(drawn, pngs, strict=True) if png is not None]


def _captions(request: JobRequest) -> list[str] | None:
    """The captions as asked: a captioned generation's, or those a likelihood job scores its images under."""
    c = request.condition
    return c.captions if isinstance(c, Likelihood) else request.captions


def build(conn: redis.Redis, settings: ApiSettings, view: JobView, base: str) -> Generation:
    job_id = view.id
    request = _request(view)
    condition = request.condition.kind if request else None
    created, started, ended = (_parse_time(t) for t in view.times)
    started = _parse_time(view.meta.get("started_at")) or started  # the worker's, written once an attempt
    if view.result and view.result.get("finished_at"):
        ended = _parse_time(view.result["finished_at"]) or ended
    if view.status in TERMINAL:
        ended = ended or _parse_time(view.meta.get("updated_at"))
        expires = ended + timedelta(seconds=settings.result_ttl) if ended else None
    else:
        ended = None
        expires = created + timedelta(seconds=settings.queued_ttl) if created and view.status == "queued" else None
    if view.status == "queued":
        started = None
    here = links(base, job_id, route(condition))
    outputs = [_image_output(o, request, here.self) for o in _outputs(request, view)] if request else []
    meta = view.meta
    return Generation(
        id=job_id, status=view.status, model=request.model if request else None, condition=condition,
        captions=_captions(request) if request else None, n=request.n if request else None,
        images=request.images if request else None, seeds=view.seeds or (request.seeds if request else None),
        progress=Progress(step=view.step, steps=view.steps, chunk=meta.get("chunk"), chunks=meta.get("chunks"),
                          fraction=float(meta.get("progress") or (1.0 if view.status == "succeeded" else 0.0))),
        # queued but out of the list: a worker is picking it up right now → next
        queue_position=(queue_position(conn, settings, job_id) or 0) if view.status == "queued" else None,
        created_at=_iso(created), started_at=_iso(started), finished_at=_iso(ended), expires_at=_iso(expires),
        error=view.error, attempt=view.attempt or None, links=here, outputs=outputs,
    )
