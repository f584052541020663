"""The worker's heartbeat thread: publishes liveness (and the models served) and requeues orphaned jobs.

Every `heartbeat_interval` s it rewrites `{p}:worker:{name}` with a TTL of `heartbeat_ttl` s (its models apart, in
`{p}:worker:{name}:models`, written when they change and their TTL renewed each beat), then runs
`worker.queue.requeue_orphans`. A worker killed with SIGKILL stops beating; its key is gone ≤ heartbeat_ttl s
after its last beat, and the next pass of any live worker (≤ heartbeat_interval s later) puts its jobs back at the
front of their queue: `Settings.recovery_bound` = heartbeat_ttl + heartbeat_interval (6 s by default). A worker
sweeps only after its beats and Redis have been up for heartbeat_ttl (`Heartbeat.may_sweep`, which RQ's registry
cleanup asks too), so an outage that expired every beat does not requeue the jobs live workers are still drawing.
Torch-free; a thread, not a process (no fork).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.queue import clear_heartbeat, now_iso, requeue_orphans, write_heartbeat
from worker.settings import Settings

log = logging.getLogger(__name__)


# Held by a sweep and by RQ's registry cleanup (worker.__main__.Worker.clean_registries): in one process a sweep
# that has taken a job's owner record but not yet requeued it must not meet RQ's cleanup, which would fail the job.
SWEEP = threading.Lock()


class Heartbeat(threading.Thread):
    def __init__(self, conn: redis.Redis, settings: Settings, name: str, describe: Callable[[], dict[str, Any]]):
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.conn = conn
        self.settings = settings
        self.worker_name = name
        self.describe = describe  # -> extra fields (models, device, current jobs)
        self.started_at = now_iso()
        self._stop_event = threading.Event()
        self._connected_since: float | None = None  # this thread's first beat since it last lost Redis

    def beat(self) -> None:
        payload = {"name": self.worker_name, "host": socket.gethostname(), "pid": os.getpid(),
                   "started_at": self.started_at, "beat_at": now_iso(), "time": time.time(), **self.describe()}
        write_heartbeat(self.conn, self.settings, self.worker_name, payload)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.beat()
                self._connected_since = self._connected_since or time.monotonic()
                if self.may_sweep():
                    with SWEEP:
                        freed = requeue_orphans(self.conn, self.settings)
                    for job_id, outcome in freed:
                        log.warning("job %s of a dead worker: %s", job_id, outcome)
            except redis.RedisError as e:
                self._connected_since = None
                log.warning("heartbeat: %s", e)
            except Exception:  # noqa: BLE001  a thread that died here would leave a live worker that no API sees
                log.exception("heartbeat: a pass failed; beating on")
            self._stop_event.wait(self.settings.heartbeat_interval)

    def may_sweep(self) -> bool:
        """Whether a missing heartbeat now means a dead worker. After Redis was away longer than heartbeat_ttl (a
        restart, a partition) every beat has expired, live workers' too: the first to reconnect would requeue jobs
        still being drawn, and they would be drawn twice. So sweep only once this worker's beats and Redis have both
        been up for heartbeat_ttl, time for every live worker to beat again (its client's retries back off to 1 s).
        Redis errors propagate (the caller's pass fails and is retried)."""
        ttl = self.settings.heartbeat_ttl
        if self._connected_since is None or time.monotonic() - self._connected_since < ttl:
            return False
        return float(self.conn.info("server").get("uptime_in_seconds", ttl)) >= ttl

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        try:
            clear_heartbeat(self.conn, self.settings, self.worker_name)
        except redis.RedisError as e:
            log.warning("heartbeat: could not clear: %s", e)
