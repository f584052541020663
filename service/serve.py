"""`make serve`: Redis (embedded unless REDIS_URL is set), worker(s) and the API on one machine, supervised.

    python -m service.serve [--host 127.0.0.1] [--port 8000] [--workers 1]     (make serve PORT=8100 WORKERS=2)

A child that exits (a worker killed by the OOM killer, say) is started again at once, or after a backoff when it
keeps dying young; the job it held is requeued by a live worker (worker.heartbeat) and redrawn from its seeds. A
worker whose heartbeat stops while its process lives (hung) is killed, and so restarted.
Children run in their own sessions, so a terminal's Ctrl-C reaches only this launcher, which then stops each
child once and in order: the API (no new jobs), the workers (SIGTERM: finish or requeue the current job within
`shutdown_grace`), then the embedded Redis (saved to disk). Torch-free: the workers import it, not this process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.config import ApiSettings
from service.framing import HTTP_ARG
from worker import redis_conn
from worker.protocol import Keys
from worker.queue import live_workers


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Child:
    """One supervised process: restarted whenever it exits until the launcher stops, backing off when it keeps
    dying young (1 s doubling to 30 s; reset once it has lived `STEADY` s)."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    beating: bool = False  # a worker whose heartbeat this launcher has seen (cleared when it restarts)
    missing_since: float | None = None  # when its beat was first missing from a read, while Redis took writes
    started: float = 0.0
    backoff: float = 1.0
    due: float = 0.0  # when a dead child may start again

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True)
        self.started, self.beating, self.missing_since = time.monotonic(), False, None
        print(f"glimpse: {self.name} pid {self.proc.pid}", flush=True)

    def check(self) -> None:
        """Restart the child if it has died (after its backoff); exit status 2 (usage: no models) is final."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None:
            if self.proc.returncode == FATAL:
                raise ChildFailed(f"{self.name} exited with status {FATAL} (a configuration error); stopping")
            lived = now - self.started
            self.backoff = 1.0 if lived >= STEADY else min(self.backoff * 2, 30.0)
            wait = 0.0 if lived >= STEADY else self.backoff
            print(f"glimpse: {self.name} (pid {self.proc.pid}) exited with status {self.proc.returncode} after "
                  f"{lived:.0f} s; restarting{f' in {wait:.0f} s' if wait else ''}", flush=True)
            self.proc, self.due = None, now + wait
        if self.proc is None and now >= self.due:
            self.start()


STEADY = 10.0  # seconds a child must live for its next restart to be immediate
FATAL = 2  # exit status of a child that cannot work as configured (argparse, no checkpoints): not restarted


class ChildFailed(Exception):
    pass


def kill_hung(workers: list[Child], conn: redis.Redis, settings: ApiSettings) -> None:
    """SIGKILL a worker whose heartbeat has stopped while its process lives (hung, or stopped by a signal): with no
    other worker, nothing would requeue its jobs. Its restart requeues them (a new worker's first sweep).

    Judged only while Redis takes writes (a full Redis refuses the worker's beat, which then waits, as it should),
    and only after the beat has been missing from every read for longer than a beat's TTL and interval: a worker
    whose Redis just came back, or that is exiting, has not lost its beat to a hang."""
    now = time.monotonic()
    try:
        conn.set(Keys(settings.key_prefix).serve_probe, b"1", px=int(settings.heartbeat_ttl * 1000))
        beating = {(b.get("host"), b.get("pid")) for b in live_workers(conn, settings, models=False)}
    except redis.RedisError:
        for c in workers:
            c.missing_since = None  # what was missing before the outage proves nothing after it
        return
    here = socket.gethostname()
    for c in workers:
        if c.proc is None or c.proc.poll() is not None:
            continue
        if (here, c.proc.pid) in beating:
            c.beating, c.missing_since = True, None
        elif c.beating and c.missing_since is None:
            c.missing_since = now
        elif c.missing_since is not None and now - c.missing_since > settings.recovery_bound:
            print(f"glimpse: {c.name} (pid {c.proc.pid}) stopped sending heartbeats while running; killing it",
                  flush=True)
            c.proc.kill()
            c.beating, c.missing_since = False, None


def _stop(children: list[Child], grace: float) -> None:
    procs = [(c.name, c.proc) for c in children if c.proc is not None]
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(f"glimpse: {name} (pid {p.pid}) did not stop in {grace:.0f} s; killing it", flush=True)
            p.kill()
            p.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1, help="worker processes (each loads every model)")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")

    settings = ApiSettings()
    embedded = settings.redis_url is None
    url = redis_conn.redis_url(settings)  # starts the embedded server when REDIS_URL is unset
    print(f"glimpse: redis {url}{' (embedded, data in ' + str(settings.redis_dir) + ')' if embedded else ''}",
          flush=True)
    env = {**os.environ, "REDIS_URL": url}

    stop = {"signal": 0}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    api = Child("api", [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--http", HTTP_ARG,
                        "--host", args.host, "--port", str(args.port), "--log-level", "warning"], env)
    workers = [Child(f"worker-{i}", [sys.executable, "-m", "worker"], env) for i in range(args.workers)]
    children = [api, *workers]  # stopped in this order: no new jobs first, then the workers finish or requeue
    base = f"http://{args.host}:{args.port}"
    rc = 0
    try:
        for c in children:
            c.start()
        deadline = time.monotonic() + args.ready_timeout
        announced = False
        conn = redis.Redis.from_url(url, socket_timeout=2, retry=Retry(NoBackoff(), 0))  # never stalls the loop
        next_watch = 0.0
        while not stop["signal"]:
            try:
                for c in children:
                    c.check()
            except ChildFailed as e:
                print(f"glimpse: {e}", flush=True)
                rc = 1
                break
            if time.monotonic() >= next_watch:
                kill_hung(workers, conn, settings)
                next_watch = time.monotonic() + settings.heartbeat_interval
            if embedded and not redis_conn.embedded_alive(settings.redis_dir):
                # no restart here: clients hold its socket path, which a new server would not have. Its log keeps
                # the jobs it accepted, and the next start takes them up again.
                print(f"glimpse: the embedded Redis died; stopping. Its data is in {settings.redis_dir}: start "
                      "again to take up the jobs it held", flush=True)
                rc = 1
                break
            if not announced:
                if _ready(base):
                    print(f"glimpse: ready at {base} with {args.workers} worker(s)  (API docs: {base}/docs) - "
                          "Ctrl-C to stop", flush=True)
                    announced = True
                elif time.monotonic() > deadline:
                    print(f"glimpse: not ready after {args.ready_timeout:.0f} s; stopping", flush=True)
                    rc = 1
                    break
            time.sleep(0.2)
    finally:
        print("glimpse: stopping", flush=True)
        _stop(children, settings.shutdown_grace + 10)
        if embedded:
            redis_conn.stop_embedded(settings.redis_dir)
        print("glimpse: stopped", flush=True)
    return rc

if __name__ == "__main__":
    raise SystemExit(main())
