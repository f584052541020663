"""The FastAPI app: wiring only (settings, Redis, middleware, problem handlers, routers, the OpenAPI document).

Run: `uvicorn --factory service.main:create_app --http service.framing:ProblemHttpToolsProtocol` (or `make serve`,
which also starts Redis and a worker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service import openapi, problems
from service.api.routes import classifications, generations, health, likelihoods, models
from service.catchall import CatchAllMiddleware
from service.config import ApiSettings, get_api_settings
from service.events import JobEvents
from service.head import HeadMiddleware
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from worker import redis_conn

STATIC = Path(__file__).resolve().parent / "static"

DESCRIPTION = """Text to image with alignDRAW and its companion generators: post captions (or nothing, images, a
latent walk, a set of examples), poll or stream the job, fetch images, every step's frame, animations and the caption
alignment; score images' likelihood under a model; classify images few-shot. Errors are `application/problem+json`
(RFC 9457)."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_api_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.events.start()
        yield
        await app.state.events.stop()
        app.state.redis.close()

    app = FastAPI(title="glimpse", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    # Client only; it connects on first use (the embedded server is started here when REDIS_URL is unset).
    app.state.redis = redis_conn.retrying(redis_conn.redis_url(settings), settings.request_redis_retry_seconds,
                                          socket_timeout=10, socket_connect_timeout=5)
    app.state.events = JobEvents(redis_conn.redis_url(settings), settings.key_prefix)  # wakes streams, long polls
    app.state.metrics = Metrics()
    app.state.metrics.watch_queue(app.state.redis, settings)
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, image_limit=settings.max_image_body_bytes,
                       image_paths=("/v1/generations", "/v1/likelihoods", "/v1/classifications"))
    app.add_middleware(MetricsMiddleware, metrics=lambda: app.state.metrics)
    app.add_middleware(HeadMiddleware)  # outside the metrics: a HEAD counts as the GET it runs
    app.add_middleware(CatchAllMiddleware)  # added last, so outermost of ours: a bug never drops the connection
    app.include_router(generations.router)
    app.include_router(likelihoods.router)
    app.include_router(classifications.router)
    app.include_router(models.router)
    app.include_router(health.router)
    # The web page: plain HTML/JS/CSS served as files (no build step, no CDN).
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # browsers ask for it at the root, whatever the page links
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=604800"})

    openapi.install(app)
    return app
