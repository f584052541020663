"""Service fixtures: one real `python -m worker` for the session (tiny alignDRAW + DRAW checkpoints, slowed by
`step_delay` so runs can be watched), on its own Redis database; apps built per test over that database."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.config import ApiSettings
from service.framing import HTTP_ARG
from service.main import create_app
from tests.worker import conftest as worker_fixtures
from tests.worker.conftest import ROOT, flushed_db, settings_env, wait_for

checkpoints = worker_fixtures.checkpoints  # the tiny checkpoints and the Redis of tests/worker, shared
redis_base_url = worker_fixtures.redis_base_url

warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")

SERVICE_DB = 12
STEP_DELAY = 0.15  # T=5 → ~0.75 s a job: long enough to read frames mid-run


@pytest.fixture(scope="session")
def service_redis_url(redis_base_url: str) -> Iterator[str]:
    yield from flushed_db(redis_base_url, SERVICE_DB)


def api_settings(url: str, checkpoints: Path, **kw) -> ApiSettings:
    base = dict(redis_url=url, checkpoints=checkpoints, heartbeat_interval=0.3, heartbeat_ttl=1.5,
                job_timeout_base=60.0, default_model="tiny-align", events_poll_interval=0.05)
    base.update(kw)
    return ApiSettings(**base)


@contextmanager
def offered_without_worker(url: str, checkpoints: Path, name: str) -> Iterator[ApiSettings]:
    """Settings whose key prefix and queue are `name`, whose models a heartbeat offers (the tiny checkpoints') but
    no worker draws: jobs posted there stay queued. The heartbeat, the queue, its jobs and the keys go at the end."""
    from worker.queue import clear_heartbeat, make_queue, write_heartbeat
    from worker.registry import load_models

    settings = api_settings(url, checkpoints, key_prefix=name, queues=[name], heartbeat_interval=1,
                            heartbeat_ttl=3600)
    conn = redis.Redis.from_url(url)
    models = load_models(checkpoints, "cpu")
    write_heartbeat(conn, settings, name, {"name": name, "models": [m.info.model_dump() for m in models.values()],
                                           "device": "cpu", "queues": [name], "state": "idle", "jobs": []})
    try:
        yield settings
    finally:
        clear_heartbeat(conn, settings, name)
        queue = make_queue(conn, name)
        jobs = {*queue.get_job_ids(), *queue.canceled_job_registry.get_job_ids()}
        queue.delete(delete_jobs=True)
        for key in [*conn.scan_iter(f"{name}:*"), *conn.scan_iter(f"rq:*:{name}"), *(f"rq:job:{j}" for j in jobs)]:
            conn.delete(key)
        conn.close()


def stop_process(p: subprocess.Popen, sig: int, grace: float = 30) -> None:
    """Ask a service process to stop with `sig` (it stops what it started: serve its API, workers and Redis), then
    SIGKILL it if it has not exited within `grace` seconds."""
    if p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


@contextmanager
def running_worker(settings: ApiSettings, name: str, log_dir: Path, timeout: float = 60) -> Iterator[subprocess.Popen]:
    """A real `python -m worker` with these settings, up once its heartbeat is in Redis; SIGTERM at the end."""
    log = (log_dir / f"{name}.log").open("w")
    p = subprocess.Popen([sys.executable, "-m", "worker", "--name", name, "--log-level", "INFO"], cwd=ROOT,
                         env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)
    conn = redis.Redis.from_url(settings.redis_url or "")
    try:
        wait_for(lambda: conn.exists(f"{settings.key_prefix}:worker:{name}") or p.poll() is not None, timeout,
                 what="worker heartbeat")
        assert p.poll() is None, f"worker exited: {Path(log.name).read_text()}"
        yield p
    finally:
        stop_process(p, signal.SIGTERM)
        conn.close()


@contextmanager
def running_api(settings: ApiSettings, log_dir: Path, timeout: float = 60) -> Iterator[str]:
    """The API under a real uvicorn (what `make serve` runs) on a free loopback port; yields its base URL."""
    import httpx

    from tests.redis_server import free_port

    port = free_port()
    log = (log_dir / f"api-{port}.log").open("w")
    p = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--http", HTTP_ARG,
                          "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                         env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return p.poll() is not None

    try:
        wait_for(up, timeout, interval=0.1, what="the API")
        assert p.poll() is None, f"uvicorn exited: {Path(log.name).read_text()}"
        yield base
    finally:
        stop_process(p, signal.SIGTERM, grace=10)


@pytest.fixture(scope="session")
def live_worker(service_redis_url: str, checkpoints: Path, tmp_path_factory) -> Iterator[subprocess.Popen]:
    s = api_settings(service_redis_url, checkpoints, step_delay=STEP_DELAY)
    with running_worker(s, "svc-worker", tmp_path_factory.mktemp("worker")) as p:
        yield p


@pytest.fixture
def make_client(service_redis_url: str, checkpoints: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(address: str = "testclient", **kw) -> TestClient:  # address: the client's, as the API sees it
        c = TestClient(create_app(api_settings(service_redis_url, checkpoints, **kw)), client=(address, 50000))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client, live_worker) -> TestClient:
    return make_client()


@pytest.fixture
def conn(service_redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(service_redis_url)
    yield c
    c.close()


def wait_status(client: TestClient, job_id: str, statuses: set[str], timeout: float = 30, **kw) -> dict:
    def check():
        body = client.get(f"/v1/generations/{job_id}", **kw).json()
        return body if body["status"] in statuses else None

    return wait_for(check, timeout, interval=0.05, what=f"{job_id} to reach {statuses}")
