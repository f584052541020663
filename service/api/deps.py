"""Dependencies, as `Annotated` aliases: settings, the Redis client, metrics and the caller (auth + rate limit)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request

from service.config import ApiSettings
from service.metrics import Metrics
from service.problems import Problem


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_conn(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ConnDep = Annotated[redis.Redis, Depends(get_conn)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is a hash of the API key (never the key itself), "anonymous" with auth off."""

    owner: str
    authenticated: bool


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def get_caller(request: Request, settings: SettingsDep, conn: ConnDep) -> Caller:
    if not settings.api_keys:
        return Caller("anonymous", False)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not any(
            hmac.compare_digest(token.encode(), k.encode()) for k in settings.api_keys):
        raise Problem(401, "unauthorized", "send `Authorization: Bearer <api key>`", title="Unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="glimpse"'})
    caller = Caller(key_hash(token), True)
    if settings.rate_limit:
        window = int(time.time()) // settings.rate_window
        key = f"{settings.key_prefix}:api:rate:{caller.owner}:{window}"
        with conn.pipeline() as p:
            p.incr(key)
            p.expire(key, settings.rate_window + 1)
            count = p.execute()[0]
        if count > settings.rate_limit:
            retry = (window + 1) * settings.rate_window - int(time.time())
            raise Problem(429, "rate-limited", f"{settings.rate_limit} requests per {settings.rate_window} s per key",
                          title="Too many requests", headers={"Retry-After": str(max(retry, 1))},
                          limit=settings.rate_limit, window_seconds=settings.rate_window)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
