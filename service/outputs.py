"""Frame PNGs, animations and attention JSON, rendered from what the worker stored raw (its canvases, its attention
arrays) when a client first asks for them, then kept.

The worker stores each step's canvas as raw uint8 bytes (`raw/{i}/{t}`), so no image is encoded on the sampler's path;
the encoders here are the worker's own (worker.render: Pillow and numpy, no torch), fed the same pixels, so every
PNG, GIF and WebP has the bytes it had when the worker encoded them itself. Two first requests may both render;
they write the same bytes. A kept copy lives in the job's files hash under its TTL; if Redis cannot take it (full),
the bytes are still served.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import numpy as np
import redis

from service.config import ApiSettings
from worker import render
from worker.protocol import (
    JobRequest,
    JobResult,
    Keys,
    animation_name,
    attention_name,
    attention_source_name,
    frame_name,
    raw_name,
)
from worker.queue import JobView, get_file, get_view
from worker.redis_conn import as_bytes


def _keep(conn: redis.Redis, files: str, name: str, data: bytes) -> bytes:
    """Keep a rendered file beside the job's others, under their TTL. A hash that has expired meanwhile is not
    recreated (an HSET alone would bring it back with no TTL, for ever); the bytes are served either way."""
    with contextlib.suppress(redis.RedisError):
        ttl = conn.pttl(files)
        if ttl > 0:
            with conn.pipeline() as p:  # MULTI: should the hash expire in between, it comes back for `ttl` ms at most
                p.hset(files, name, data)
                p.pexpire(files, ttl)
                p.execute()
    return data


def _request(view: JobView) -> JobRequest | None:
    return JobRequest.model_validate(view.request) if view.request is not None else None


def frame(conn: redis.Redis, settings: ApiSettings, job_id: str, index: int, step: int) -> bytes | None:
    """The PNG of image `index` after `step`, or None while (or if) that step is not drawn. A kept PNG costs one
    round trip; the job itself is read only to render one."""
    files = Keys(settings.key_prefix).files(job_id)
    kept, raw = (as_bytes(v) for v in conn.hmget(files, [frame_name(index, step), raw_name(index, step)]))
    if kept is not None or raw is None:
        return kept
    view = get_view(conn, job_id, settings)
    if view is None:
        return None
    request, shape = _request(view), view.meta.get("frame_shape")
    if request is None or shape is None or not request.output.frames:
        return None
    png = render.png(render.unraw(raw, shape), scale=request.output.scale)
    return _keep(conn, files, frame_name(index, step), png)


def animation(conn: redis.Redis, settings: ApiSettings, job_id: str, index: int,
              fmt: Literal["gif", "webp"]) -> bytes | None:
    """The animation of a finished image over all its frames, or None where the job offers none."""
    files = Keys(settings.key_prefix).files(job_id)
    kept = get_file(conn, job_id, animation_name(index, fmt), settings)
    if kept is not None:
        return kept
    view = get_view(conn, job_id, settings)
    if view is None:
        return None
    request, shape = _request(view), view.meta.get("frame_shape")
    if view.result is None or request is None or shape is None:
        return None
    outputs = JobResult.model_validate(view.result).outputs
    if index >= len(outputs) or fmt not in outputs[index].animations:
        return None
    steps = int(view.result.get("steps") or 0)  # a finished image has every step's canvas
    raws = [as_bytes(r) for r in conn.hmget(files, [raw_name(index, t) for t in range(1, steps + 1)])]
    if not raws or any(r is None for r in raws):
        return None
    frames = np.stack([render.unraw(r, shape) for r in raws if r is not None])
    encode = render.gif if fmt == "gif" else render.webp
    data = encode(frames, frame_ms=request.output.frame_ms, scale=request.output.scale)
    return _keep(conn, files, animation_name(index, fmt), data)


def attention(conn: redis.Redis, settings: ApiSettings, job_id: str, index: int) -> bytes | None:
    """The attention JSON of a finished image, encoded from the worker's arrays (worker.render.attention_json), or
    None where the job has none."""
    files = Keys(settings.key_prefix).files(job_id)
    kept, source = (as_bytes(v) for v in conn.hmget(files, [attention_name(index), attention_source_name(index)]))
    if kept is not None:
        return kept
    if source is None:
        return None
    return _keep(conn, files, attention_name(index), render.attention_json(source))
