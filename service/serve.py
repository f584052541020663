"""`make serve`: Redis (embedded unless REDIS_URL is set), worker(s) and the API on one machine, stopped together.

    python -m service.serve [--host 127.0.0.1] [--port 8000] [--workers 1]

Children run in their own sessions, so a terminal's Ctrl-C reaches only this launcher, which then stops each
child once and in order: the API (no new jobs), the workers (SIGTERM: finish or requeue the current job within
`shutdown_grace`), then the embedded Redis (saved to disk). Torch-free: the workers import it, not this process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import redis

from service.config import ApiSettings
from worker import redis_conn


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(procs: list[tuple[str, subprocess.Popen]], grace: float) -> None:
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
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    args = ap.parse_args(argv)

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

    def spawn(name: str, cmd: list[str]) -> tuple[str, subprocess.Popen]:
        p = subprocess.Popen(cmd, env=env, start_new_session=True)
        print(f"glimpse: {name} pid {p.pid}", flush=True)
        return name, p

    workers = [spawn(f"worker-{i}", [sys.executable, "-m", "worker"]) for i in range(args.workers)]
    api = spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--host", args.host,
                        "--port", str(args.port), "--log-level", "warning"])
    procs = [api, *workers]
    base = f"http://{args.host}:{args.port}"
    rc = 0
    try:
        deadline = time.monotonic() + args.ready_timeout
        announced = False
        while not stop["signal"]:
            dead = [(n, p) for n, p in procs if p.poll() is not None]
            if dead:
                name, p = dead[0]
                print(f"glimpse: {name} exited with status {p.returncode}; stopping", flush=True)
                rc = 1
                break
            if not announced:
                if _ready(base):
                    print(f"glimpse: ready at {base}  (API docs: {base}/docs) - Ctrl-C to stop", flush=True)
                    announced = True
                elif time.monotonic() > deadline:
                    print(f"glimpse: not ready after {args.ready_timeout:.0f} s; stopping", flush=True)
                    rc = 1
                    break
            time.sleep(0.2)
    finally:
        print("glimpse: stopping", flush=True)
        _stop(procs, settings.shutdown_grace + 10)
        if embedded:
            with contextlib.suppress(redis.RedisError):  # SHUTDOWN closes the connection as it succeeds
                redis.Redis.from_url(url).shutdown(save=True)
        print("glimpse: stopped", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
