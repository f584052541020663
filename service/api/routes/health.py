"""/healthz (the process answers), /readyz (Redis and a live worker), /metrics (Prometheus; behind the API keys
when they are set, while the two probes stay open for load balancers)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import ConnDep, MetricsDep, SettingsDep, authenticate
from service.problems import PROBLEM_JSON, Problem
from service.schemas import Health
from worker.queue import live_workers

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"content": {PROBLEM_JSON: {}}}},
            summary="Readiness: Redis answers and at least one worker sends heartbeats")
def readyz(settings: SettingsDep, conn: ConnDep) -> Health:
    try:
        conn.ping()
        workers = live_workers(conn, settings)
    except redis.RedisError as e:
        raise Problem(503, "not-ready", f"redis unreachable: {e}", title="Not ready", redis="down") from None
    if not workers:
        raise Problem(503, "not-ready", "no live worker", title="Not ready", redis="ok", workers=0,
                      headers={"Retry-After": "2"})
    return Health(status="ready", detail={"redis": "ok", "workers": len(workers),
                                          "models": sorted({m["id"] for w in workers for m in w.get("models", [])})})


# A scraper needs a key like any client, but its scrapes do not use up that key's rate limit.
@router.get("/metrics", response_class=Response, summary="Prometheus metrics (a bearer key when API keys are set)",
            dependencies=[Depends(authenticate)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                       **{code: {"content": {PROBLEM_JSON: {}}} for code in (401, 429)}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
