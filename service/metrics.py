"""Prometheus metrics: HTTP requests, queue depth and live workers (read from Redis at scrape time), job latency
and outcomes. One registry per app, so tests can build many apps in one process."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.settings import Settings

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("glimpse_http_requests_total", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.request_seconds = Histogram("glimpse_http_request_duration_seconds", "Time to the response start",
                                         ["method", "route"], registry=self.registry)
        self.jobs_created = Counter("glimpse_jobs_created_total", "Jobs accepted", ["model"], registry=self.registry)
        self.jobs_rejected = Counter("glimpse_jobs_rejected_total", "POSTs refused, by reason", ["reason"],
                                     registry=self.registry)
        self.jobs_finished = Counter("glimpse_jobs_finished_total", "Jobs seen ending, by final status",
                                     ["status"], registry=self.registry)
        self.job_failures = Counter("glimpse_job_failures_total", "Jobs seen failing", registry=self.registry)
        self.job_latency = Histogram("glimpse_job_latency_seconds", "Created → finished, for jobs seen ending",
                                     ["status"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def watch_queue(self, conn: redis.Redis, settings: Settings) -> None:
        self.registry.register(_QueueCollector(conn, settings))


class _QueueCollector:
    def __init__(self, conn: redis.Redis, settings: Settings):
        self.conn = conn
        self.settings = settings

    def collect(self):
        from worker.queue import live_workers, make_queue

        depth = GaugeMetricFamily("glimpse_queue_depth", "Jobs waiting, by queue", labels=["queue"])
        workers = GaugeMetricFamily("glimpse_workers_live", "Workers with a live heartbeat")
        try:
            for q in self.settings.queues:
                depth.add_metric([q], self.conn.llen(make_queue(self.conn, q).key))
            workers.add_metric([], len(live_workers(self.conn, self.settings, models=False)))
        except redis.RedisError:
            return  # scrape without these rather than fail the whole scrape
        yield depth
        yield workers

    def describe(self):
        return []


class MetricsMiddleware:
    """Counts every request by its route template (never the raw path: ids would explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                m = self.metrics()
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                m.request_seconds.labels(scope["method"], path).observe(time.perf_counter() - start)
                m.requests.labels(scope["method"], path, str(status["code"])).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)
