"""Dependencies, as `Annotated` aliases: settings, the Redis client, metrics, the caller (auth + rate limit) and
the checked Idempotency-Key."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Annotated

import anyio
import redis
from fastapi import Depends, Header, Request

from service import store
from service.config import ApiSettings
from service.metrics import Metrics
from service.problems import Problem
from worker.protocol import JOB_ID


# The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its thread pool, one trip
# a dependency a request, and such trips were most of the API's own CPU per job (py-spy, bench/README.md).
async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_conn(request: Request) -> redis.Redis:
    return request.app.state.redis


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ConnDep = Annotated[redis.Redis, Depends(get_conn)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is a hash of the API key (never the key itself), "anonymous" with auth off."""

    owner: str
    authenticated: bool


ANONYMOUS = Caller("anonymous", False)  # every caller, when no API keys are configured


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _window(seconds: int) -> tuple[int, int]:
    """The current fixed window of `seconds` -> (its number, seconds until it ends, at least 1)."""
    now = int(time.time())
    return now // seconds, max((now // seconds + 1) * seconds - now, 1)


def authenticate(request: Request, settings: SettingsDep, conn: ConnDep) -> Caller:
    """The bearer check alone (no per-key rate limit): 401 for a bad key, 429 once an address failed too often."""
    if not settings.api_keys:
        return ANONYMOUS
    addr = request.client.host if request.client else "unknown"
    window, retry = _window(settings.auth_fail_window)
    fails = f"{settings.key_prefix}:api:authfail:{addr}:{window}"
    # Checked before the key, so a guessed key cannot be confirmed from a blocked address either.
    if settings.auth_fail_limit and int(conn.get(fails) or 0) >= settings.auth_fail_limit:
        raise Problem(429, "too-many-failed-logins", f"{settings.auth_fail_limit} failed authentications from this "
                      f"address within {settings.auth_fail_window} s; retry when the window ends",
                      title="Too many failed logins", headers={"Retry-After": str(retry)},
                      limit=settings.auth_fail_limit, window_seconds=settings.auth_fail_window)
    header = request.headers.get("authorization")
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not any(
            hmac.compare_digest(token.encode(), k.encode()) for k in settings.api_keys):
        if header is not None and settings.auth_fail_limit:  # no credentials at all is no guess: not counted
            with conn.pipeline() as p:
                p.incr(fails)
                p.expire(fails, settings.auth_fail_window + 1)
                p.execute()
        raise Problem(401, "unauthorized", "send `Authorization: Bearer <api key>`", title="Unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="glimpse"'})
    return Caller(key_hash(token), True)


def _reads_own_job(request: Request, settings: ApiSettings, conn: redis.Redis, caller: Caller) -> bool:
    """GET/HEAD of a job of the caller's or anything under it (status, events, files): polls must not use up the
    rate limit that guards job creation."""
    job_id = request.path_params.get("job_id")
    if request.method not in ("GET", "HEAD") or not isinstance(job_id, str) or not JOB_ID.match(job_id):
        return False
    if not request.url.path.startswith(("/v1/generations/", "/v1/likelihoods/", "/v1/classifications/")):
        return False
    return store.load_owner(conn, settings, job_id) == caller.owner


async def get_caller(request: Request, settings: SettingsDep, conn: ConnDep) -> Caller:
    if not settings.api_keys:  # auth off: authenticate's answer, without Redis or a thread
        return ANONYMOUS
    return await anyio.to_thread.run_sync(_checked_caller, request, settings, conn)


def _checked_caller(request: Request, settings: ApiSettings, conn: redis.Redis) -> Caller:
    """The bearer check, then the per-key rate limit (both may read Redis: run in a thread)."""
    caller = authenticate(request, settings, conn)
    if not caller.authenticated or not settings.rate_limit or _reads_own_job(request, settings, conn, caller):
        return caller
    window, retry = _window(settings.rate_window)
    key = f"{settings.key_prefix}:api:rate:{caller.owner}:{window}"
    with conn.pipeline() as p:
        p.incr(key)
        p.expire(key, settings.rate_window + 1)
        count = p.execute()[0]
    if count > settings.rate_limit:
        raise Problem(429, "rate-limited", f"{settings.rate_limit} requests per {settings.rate_window} s per key",
                      title="Too many requests", headers={"Retry-After": str(retry)},
                      limit=settings.rate_limit, window_seconds=settings.rate_window)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII: no spaces, no control characters


# The rule is declared in the schema (so clients and schemathesis know it) but checked below, for a clear problem.
IdempotencyKeyHeader = Annotated[str | None, Header(
    description="1–200 visible ASCII characters: the same key and body return the same job",
    json_schema_extra={"minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"})]


async def get_idempotency_key(idempotency_key: IdempotencyKeyHeader = None) -> str | None:
    """The `Idempotency-Key` header, checked: an empty key would be one key shared by every anonymous caller."""
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise Problem(422, "bad-idempotency-key", "the Idempotency-Key header must be 1–200 visible ASCII characters "
                      "(no spaces or control characters)", title="Bad idempotency key")
    return idempotency_key


IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]
