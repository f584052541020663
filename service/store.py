"""The API's view of jobs in Redis, on top of worker.queue: ownership records, idempotency keys, queue positions
and the `Generation` body. Our keys live under `{prefix}:api:`; RQ's and the worker's are read, never written
(except through worker.queue)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import Any

import redis
from rq.job import Job

from service.config import ApiSettings
from service.schemas import Generation, ImageOutput, Links, Progress
from worker.protocol import TERMINAL, Keys
from worker.queue import JobView, make_queue

_FILE = re.compile(r"^(frames/(\d+)/(\d+)\.png|images/(\d+)\.png|animations/(\d+)\.(gif|webp)|attention/(\d+)\.json)$")


def _k(settings: ApiSettings, *parts: str) -> str:
    return ":".join([settings.key_prefix, "api", *parts])


def record_ttl(settings: ApiSettings, job_timeout: int) -> int:
    """The API record outlives the job by `expired_grace`, so a late GET says "expired" rather than 404."""
    return settings.queued_ttl + job_timeout + settings.result_ttl + settings.expired_grace


def save_record(conn: redis.Redis, settings: ApiSettings, job_id: str, owner: str, ttl: int) -> None:
    with conn.pipeline() as p:
        p.hset(_k(settings, "job", job_id), mapping={"owner": owner})
        p.expire(_k(settings, "job", job_id), ttl)
        p.execute()


def load_owner(conn: redis.Redis, settings: ApiSettings, job_id: str) -> str | None:
    raw = conn.hget(_k(settings, "job", job_id), "owner")
    return raw.decode() if raw else None


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


# --- queue ------------------------------------------------------------------------------------------------------

def queue_depth(conn: redis.Redis, settings: ApiSettings) -> int:
    with conn.pipeline(transaction=False) as p:
        for q in settings.queues:
            p.llen(make_queue(conn, q).key)
        return sum(p.execute())


def queue_position(conn: redis.Redis, settings: ApiSettings, job_id: str) -> int | None:
    """Jobs ahead of this one over the queues in priority order (0: next), or None when it is not waiting."""
    ahead = 0
    for q in settings.queues:
        key = make_queue(conn, q).key
        pos = conn.lpos(key, job_id)
        if pos is not None:
            return ahead + int(pos)
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


def links(base: str, job_id: str) -> Links:
    me = f"{base}/v1/generations/{job_id}"
    return Links(self=me, events=f"{me}/events", cancel=me)


def expired(base: str, job_id: str) -> Generation:
    return Generation(id=job_id, status="expired", links=links(base, job_id))


def file_names(conn: redis.Redis, settings: ApiSettings, job_id: str) -> list[str]:
    return [n.decode() for n in conn.hkeys(Keys(settings.key_prefix).files(job_id))]


def build(conn: redis.Redis, settings: ApiSettings, view: JobView, base: str) -> Generation:
    job_id = view.id
    req = view.request or {}
    captions = req.get("captions")
    n = req.get("n")
    images = n * (len(captions) if captions else 1) if n else None
    with conn.pipeline(transaction=False) as p:
        p.hmget(Job.key_for(job_id), ["created_at", "started_at", "ended_at"])
        p.hkeys(Keys(settings.key_prefix).files(job_id))
        times, names = p.execute()
    created, started, ended = (_parse_time(t) for t in times)
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

    found: dict[int, dict[str, Any]] = {}
    for raw in names:
        name = raw.decode() if isinstance(raw, bytes) else raw
        m = _FILE.match(name)
        if not m:
            continue
        if m.group(2):
            found.setdefault(int(m.group(2)), {}).setdefault("frames", []).append(int(m.group(3)))
        elif m.group(4):
            found.setdefault(int(m.group(4)), {})["image"] = True
        elif m.group(5):
            found.setdefault(int(m.group(5)), {})[m.group(6)] = True
        else:
            found.setdefault(int(m.group(7)), {})["attention"] = True
    seeds = view.seeds or req.get("seeds")
    me = f"{base}/v1/generations/{job_id}"
    outputs = []
    per_image = [c for c in captions for _ in range(n)] if captions and n else [None] * (images or 0)
    for i, caption in enumerate(per_image):
        f = found.get(i, {})
        img = f"{me}/images/{i}"
        frames = sorted(f.get("frames", []))
        outputs.append(ImageOutput(
            index=i, caption=caption, seed=seeds[i] if seeds and i < len(seeds) else None,
            image=f"{img}.png" if f.get("image") else None,
            animation_gif=f"{img}/animation.gif" if f.get("gif") else None,
            animation_webp=f"{img}/animation.webp" if f.get("webp") else None,
            alignment=f"{img}/alignment.json" if f.get("attention") and caption is not None else None,
            attention=f"{img}/attention.json" if f.get("attention") else None,
            frames_drawn=len(frames), frames=[f"{img}/frames/{t}.png" for t in frames],
        ))
    meta = view.meta
    return Generation(
        id=job_id, status=view.status, model=req.get("model"), captions=captions, n=n, images=images, seeds=seeds,
        progress=Progress(step=view.step, steps=view.steps, chunk=meta.get("chunk"), chunks=meta.get("chunks"),
                          fraction=float(meta.get("progress") or (1.0 if view.status == "succeeded" else 0.0))),
        # queued but out of the list: a worker is picking it up right now → next
        queue_position=(queue_position(conn, settings, job_id) or 0) if view.status == "queued" else None,
        created_at=_iso(created), started_at=_iso(started), finished_at=_iso(ended), expires_at=_iso(expires),
        error=view.error, attempt=view.attempt or None, links=links(base, job_id), outputs=outputs,
    )


def served_models(conn: redis.Redis, settings: ApiSettings) -> dict[str, dict[str, Any]]:
    """Heartbeat model entries of live workers by id, as published (extra fields such as `example_captions` and
    `held_out_captions` kept; worker.queue.model_catalog parses them into ModelInfo, which drops extras)."""
    from worker.queue import live_workers

    catalog: dict[str, dict[str, Any]] = {}
    for beat in live_workers(conn, settings):
        for info in beat.get("models", []):
            catalog.setdefault(info["id"], info)
    return catalog
