"""Health, readiness, metrics, OpenAPI, and the no-torch rule."""

from __future__ import annotations

import subprocess
import sys

from tests.service.conftest import wait_status
from tests.worker.conftest import ROOT


def test_service_never_imports_torch():
    code = ("import sys; import service.main, service.serve; from fastapi.testclient import TestClient; "
            "c = TestClient(service.main.create_app()); assert c.get('/healthz').status_code == 200; "
            "assert c.get('/readyz').status_code == 503; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_healthz_and_readyz_without_worker(make_client):
    c = make_client(key_prefix="nobody")
    assert c.get("/healthz").json()["status"] == "ok"
    r = c.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"


def test_readyz_redis_down(make_client):
    c = make_client(redis_url="redis://127.0.0.1:1/0")
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["redis"] == "down"
    r = c.get("/v1/models")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"


def test_readyz_with_worker(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["detail"]["workers"] >= 1


def test_metrics(client):
    jid = client.post("/v1/generations", json={"caption": "the digit 1 is at the left"}).json()["id"]
    wait_status(client, jid, {"succeeded"})
    client.get("/v1/generations/0123456789abcdef")
    text = client.get("/metrics").text
    for name in ("glimpse_http_requests_total", "glimpse_http_request_duration_seconds", "glimpse_queue_depth",
                 "glimpse_workers_live", "glimpse_jobs_created_total", "glimpse_job_latency_seconds_bucket",
                 "glimpse_job_failures_total"):
        assert name in text, name
    assert 'route="/v1/generations/{job_id}",status="404"' in text
    assert 'glimpse_job_latency_seconds_count{status="succeeded"} 1.0' in text


def test_openapi_has_examples_and_docs(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/generations" in spec["paths"] and "/v1/generations/{job_id}/events" in spec["paths"]
    assert spec["components"]["schemas"]["GenerationCreate"]["examples"]
    assert client.get("/docs").status_code == 200
